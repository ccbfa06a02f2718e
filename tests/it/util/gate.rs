//! The `registry-gate` binary under test: writes its `proxy.toml` and PKI, spawns it with
//! stderr in a log file, and gives tests its pid, log, exit status and peak memory.
//! Killed on drop; a failing test gets the gate's log printed.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::client::{HttpsClient, Proto};
use super::image::RegistryHost;
use super::netns::Netns;
use super::pki::Pki;
use super::{
    accepts_tcp, describe, free_port, read_text, require_tool, run, wait_until, write_file,
};

/// What the gate logs when a watched file changed and it reloaded. Not the bare "a watched
/// file changed": a reload that found a half-written file logs that too, and failed.
pub const RELOADED: &str = "a watched file changed: configuration";

/// The gate must accept TCP this soon after spawn.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test, built by cargo for this test crate, or the one that
/// `TEST_GATE_BINARY` names: an older commit's build, to show that a new test fails
/// without the change it guards.
pub fn gate_command() -> Command {
    match std::env::var_os("TEST_GATE_BINARY") {
        Some(binary) => Command::new(binary),
        None => Command::new(env!("CARGO_BIN_EXE_registry-gate")),
    }
}

/// What goes into `proxy.toml`, beyond the listen address and TLS files `Gate::start` fills
/// in. Builder-style so a test states only what it cares about.
#[derive(Clone, Debug)]
pub struct GateConfig {
    pub upstream: String,
    pub shutdown_grace: String,
    pub read_timeout: String,
    pub trusted_proxies: Option<Vec<String>>,
    pub auth: Auth,
    /// Extra `key = value` lines inside `[server]` and `[tls]`.
    pub server_toml: String,
    pub tls_toml: String,
    /// Raw TOML appended after the generated tables (new tables only: TOML forbids
    /// reopening one). An `[auth]` table here replaces the generated one.
    pub extra_toml: String,
    /// A fixed listen address (a restart on the same port); a free port when `None`.
    pub listen: Option<SocketAddr>,
}

impl GateConfig {
    pub fn new(upstream_url: impl Into<String>) -> GateConfig {
        GateConfig {
            upstream: upstream_url.into(),
            shutdown_grace: "30s".into(),
            read_timeout: "900s".into(),
            trusted_proxies: None,
            auth: Auth::None,
            server_toml: String::new(),
            tls_toml: String::new(),
            extra_toml: String::new(),
            listen: None,
        }
    }

    pub fn listen_on(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// A port written into the config file, for commands that read it from there
    /// (`healthcheck`, `doctor`): they cannot learn a port the kernel picked at start.
    pub fn fixed_port(self) -> Self {
        self.listen_on(SocketAddr::from(([127, 0, 0, 1], free_port())))
    }

    pub fn shutdown_grace(mut self, grace: &str) -> Self {
        self.shutdown_grace = grace.into();
        self
    }

    pub fn trusted_proxies(mut self, nets: &[&str]) -> Self {
        self.trusted_proxies = Some(nets.iter().map(|n| n.to_string()).collect());
        self
    }

    /// HTTP Basic with these users, in an htpasswd file written by Apache's `htpasswd -B`.
    pub fn basic_auth(mut self, users: &[(&str, &str)]) -> Self {
        self.auth = Auth::Basic(
            users
                .iter()
                .map(|(user, password)| (user.to_string(), password.to_string()))
                .collect(),
        );
        self
    }

    pub fn server_toml(mut self, lines: &str) -> Self {
        self.server_toml = lines.into();
        self
    }

    pub fn tls_toml(mut self, lines: &str) -> Self {
        self.tls_toml = lines.into();
        self
    }

    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml = toml.into();
        self
    }

    /// The file's text. `cert` and `key` (and the htpasswd file, `htpasswd` next to the
    /// config) are written as given, so relative paths exercise resolution against the config
    /// file's directory.
    pub fn to_toml(&self, listen: SocketAddr, cert: &str, key: &str) -> String {
        // A test that writes its own `[auth]` (hand-made htpasswd files in other formats)
        // gets exactly that: TOML forbids the table twice.
        let own_auth = self.extra_toml.lines().any(|l| l.trim() == "[auth]");
        let auth = match &self.auth {
            _ if own_auth => "",
            Auth::None => "\n[auth]\nmode = \"none\"\n",
            Auth::Basic(_) => "\n[auth]\nmode = \"basic\"\nhtpasswd = [\"htpasswd\"]\n",
        };
        let trusted = match &self.trusted_proxies {
            Some(nets) => format!("trusted_proxies = {nets:?}\n"),
            None => String::new(),
        };
        format!(
            "[server]\n\
             listen = \"{listen}\"\n\
             shutdown_grace = \"{grace}\"\n\
             {trusted}\
             {server_extra}\
             \n[upstream]\n\
             url = \"{upstream}\"\n\
             connect_timeout = \"5s\"\n\
             read_timeout = \"{read_timeout}\"\n\
             \n[tls]\n\
             {files}\
             {tls_extra}\
             \n[log]\n\
             level = \"info\"\n\
             format = \"text\"\n\
             {auth}\
             {extra}",
            grace = self.shutdown_grace,
            upstream = self.upstream,
            read_timeout = self.read_timeout,
            // With ACME the certificate comes from the CA, and the gate refuses both.
            files = if self.extra_toml.contains("[tls.acme]") {
                String::new()
            } else {
                format!("cert = \"{cert}\"\nkey = \"{key}\"\n")
            },
            tls_extra = self.tls_toml,
            server_extra = self.server_toml,
            extra = self.extra_toml,
        )
    }
}

/// Who the gate lets in.
#[derive(Clone, Debug)]
pub enum Auth {
    /// `mode = "none"`: the tests of forwarding and streaming need no credentials. Explicit,
    /// because the gate's default is Basic with a generated user.
    None,
    /// `mode = "basic"` with these (user, password) pairs.
    Basic(Vec<(String, String)>),
}

/// Writes an htpasswd file with Apache's own tool (bcrypt, lowest cost: tests log in often),
/// so the gate is tested against the files operators really have.
pub fn write_htpasswd(path: &Path, users: &[(String, String)]) {
    require_tool("htpasswd", "apache2-utils");
    for (i, (user, password)) in users.iter().enumerate() {
        let mut command = Command::new("htpasswd");
        command.args(["-b", "-B", "-C", "4"]);
        if i == 0 {
            command.arg("-c");
        }
        let out = run(command.arg(path).arg(user).arg(password));
        assert!(out.status.success(), "htpasswd {user}: {}", describe(&out));
    }
}

/// The address a gate's log reports for one of its listeners (`https`, `http`, `metrics`),
/// from its start-up line, in either log format: `listening listener=NAME addr=IP:PORT`
/// (text) or `{…,"message":"listening","listener":NAME,"addr":"IP:PORT",…}` (JSON, fields
/// flattened into the event). `None` before it is logged.
pub fn reported_listener(log: &str, name: &str) -> Option<SocketAddr> {
    let wanted = format!("listener={name} ");
    log.lines().find_map(|line| {
        if line.starts_with('{') {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            let fields = &value;
            if fields.get("message")?.as_str()? != "listening"
                || fields.get("listener")?.as_str()? != name
            {
                return None;
            }
            return fields.get("addr")?.as_str()?.parse().ok();
        }
        if !(line.contains(" listening ") && line.contains(&wanted)) {
            return None;
        }
        line.split("addr=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

pub struct Gate {
    child: Child,
    pub addr: SocketAddr,
    pub pki: Pki,
    pub config_path: PathBuf,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Gate {
    /// Generates a PKI in `<tmp>/gate/pki`, writes `<tmp>/gate/proxy.toml` (TLS paths
    /// relative to it) and runs `registry-gate run --config` until it accepts TCP.
    pub fn start(tmp: &Path, config: GateConfig) -> Gate {
        Gate::start_at(tmp, config, None)
    }

    /// The gate inside `netns`, on port 443 of the namespace's address, with that address
    /// in its certificate: what docker sees as a normal, secure registry. The upstream must
    /// be reachable from inside (a unix socket).
    pub fn start_in(tmp: &Path, config: GateConfig, netns: &Netns) -> Gate {
        Gate::start_at(tmp, config, Some(netns))
    }

    fn start_at(tmp: &Path, config: GateConfig, netns: Option<&Netns>) -> Gate {
        let dir = tmp.join("gate");
        // Without a fixed address the gate binds port 0 and reports the port it got: no
        // window in which another test could take a port found free a moment earlier.
        let (pki, listen) = match netns {
            None => (
                Pki::localhost(&dir.join("pki")),
                config
                    .listen
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            ),
            Some(ns) => (
                Pki::new(&dir.join("pki"), &["registry.test"], &[IpAddr::V4(ns.ip)]),
                SocketAddr::from((ns.ip, 443)),
            ),
        };
        let config_path = dir.join("proxy.toml");
        write_file(
            &config_path,
            config.to_toml(listen, "pki/cert.pem", "pki/key.pem"),
        );
        if let Auth::Basic(users) = &config.auth {
            write_htpasswd(&dir.join("htpasswd"), users);
        }

        let log_path = dir.join("gate.log");
        let log = File::create(&log_path).expect("create gate log");
        let mut command = match netns {
            None => gate_command(),
            Some(ns) => ns.command(Path::new(env!("CARGO_BIN_EXE_registry-gate"))),
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn registry-gate");

        let mut gate = Gate {
            child,
            addr: listen,
            pki,
            config_path,
            log_path,
            exit: None,
        };
        let up = wait_until(START_TIMEOUT, || {
            if gate.try_exit().is_some() {
                return false;
            }
            match gate.listener("https") {
                Some(bound) => {
                    gate.addr = bound;
                    accepts_tcp(bound)
                }
                None => false,
            }
        });
        if !up {
            // Drop prints the log only while panicking; say what happened first.
            panic!(
                "registry-gate did not report and accept TCP on {listen} within {START_TIMEOUT:?} (exit: {:?})",
                gate.try_exit()
            );
        }
        gate
    }

    /// The address the gate reported for one of its listeners; see `reported_listener`.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        reported_listener(&self.log(), name)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT`, the registry name clients use.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// `https://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// An HTTPS client trusting this gate's CA.
    pub fn client(&self, proto: Proto) -> HttpsClient {
        HttpsClient::new(&self.pki.ca_pem, proto)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the gate wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        read_text(&self.log_path)
    }

    /// How many times the gate reloaded because a watched file changed.
    pub fn reloads(&self) -> usize {
        self.log().matches(RELOADED).count()
    }

    /// Waits until the gate has reloaded more than `before` times.
    pub fn wait_for_reload(&self, before: usize) {
        assert!(
            wait_until(Duration::from_secs(20), || self.reloads() > before),
            "the gate did not reload the changed file:\n{}",
            self.log()
        );
    }

    /// This gate as skopeo reaches it, trusting its CA.
    pub fn host(&self) -> RegistryHost {
        RegistryHost {
            authority: self.authority(),
            cert_dir: self.pki.cert_dir.clone(),
        }
    }

    /// `RegistryHost::push` of `source` to `target` on this gate as `creds` (`user:password`).
    pub fn push(&self, creds: &str, source: &str, target: &str) -> std::process::Output {
        self.host().push(creds, source, target)
    }

    /// `RegistryHost::push_ok`: the push, which must succeed.
    /// A new one-layer OCI image of `layer_size` bytes, written in `dir` and pushed with
    /// skopeo through this gate as `target` (off the async runtime's threads).
    pub async fn push_new_image(
        &self,
        dir: &Path,
        layer_size: usize,
        creds: &str,
        target: &str,
    ) -> super::image::OciImage {
        let image = super::image::oci_image(dir, 1, layer_size);
        let (host, source, creds, target) = (
            self.host(),
            image.reference(),
            creds.to_string(),
            target.to_string(),
        );
        let pushed = tokio::task::spawn_blocking(move || host.push(&creds, &source, &target))
            .await
            .expect("skopeo thread");
        assert!(pushed.status.success(), "{}", super::describe(&pushed));
        image
    }

    pub fn push_ok(&self, creds: &str, source: &str, target: &str) {
        self.host().push_ok(creds, source, target);
    }

    /// `RegistryHost::pull_ok`: the pull, which must succeed.
    pub fn pull_ok(&self, creds: &str, reference: &str, into: &Path) {
        self.host().pull_ok(creds, reference, into);
    }

    /// Runs `registry-gate ARGS --config <this gate's config>`, a command that edits a file
    /// the gate watches (`token create`, `token revoke`), and waits until the gate has
    /// reloaded it. Panics with the output unless the command succeeded.
    pub fn change_with(&self, args: &[&str]) -> std::process::Output {
        let before = self.reloads();
        let out = run(gate_command()
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null()));
        assert!(
            out.status.success(),
            "registry-gate {args:?}: {}",
            describe(&out)
        );
        self.wait_for_reload(before);
        out
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let out = run(Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string()));
        assert!(
            out.status.success(),
            "kill -{name} {}: {}",
            self.pid(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The exit status if the gate has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait on the gate");
        }
        self.exit
    }

    /// Waits up to `timeout` for the gate to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// CPU time the gate has used so far, user and system, from /proc/PID/stat. Unlike wall
    /// time it does not grow while the gate waits for a machine busy with other tests.
    pub fn cpu_time(&self) -> Duration {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = read_text(Path::new(&path));
        // The command name may hold spaces; the fields after it are plain numbers.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
        let ticks: u64 = [11, 12]
            .iter()
            .map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
            .sum::<Option<u64>>()
            .unwrap_or_else(|| panic!("no utime/stime in {path}: {stat}"));
        // USER_HZ is 100 on every Linux ABI this runs on (sysconf(_SC_CLK_TCK)).
        Duration::from_millis(ticks * 10)
    }

    /// Peak resident set size (VmHWM) in KiB, read from /proc while the gate runs.
    pub fn vm_hwm_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Resident set size now (VmRSS) in KiB.
    pub fn vm_rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// A `kB` line of /proc/PID/status.
    fn status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = read_text(Path::new(&path));
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} line in {path}:\n{status}"))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- registry-gate log ({}, exit {:?}) ---\n{}",
                self.addr,
                self.exit,
                self.log()
            );
        }
    }
}
