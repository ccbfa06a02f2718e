//! `scripts/quickstart`, the README's first command, run as a user runs it: with the real
//! `docker-registry` it starts on a unix socket (or one it finds), the gate binary built for
//! this test, a push and a pull by skopeo with the generated password and CA, and a stop
//! that must leave no process behind.

use crate::util;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use util::image::{oci_image, read_oci_layout, RegistryHost};
use util::registry::Registry;
use util::{describe, free_port, read_text, require_tool, run, temp_dir, wait_until};

/// Building nothing, the script needs a few seconds: the registry's socket, the gate's
/// first start (a CA, a certificate, a bcrypt hash) and its readiness probe.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// After SIGTERM/SIGINT the gate drains (nothing is in flight here) and the script then
/// stops the registry.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

/// The script running in a process group of its own, so the test can list everything it
/// started and, on drop (a failed assertion included), kill all of it at once.
struct Quickstart {
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Quickstart {
    /// Runs the script with its state in `data`, the gate on 127.0.0.1:`port`, and
    /// `upstream` as the registry to look for first (empty: always start one).
    fn start(tmp: &Path, data: &Path, port: u16, upstream: &str) -> Quickstart {
        require_tool("docker-registry", "docker-registry");
        let log = tmp.join("quickstart.log");
        let out = File::create(&log).expect("create quickstart log");
        let child = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/quickstart"))
            .env("QUICKSTART_DIR", data)
            .env("QUICKSTART_LISTEN", format!("127.0.0.1:{port}"))
            .env("QUICKSTART_UPSTREAM", upstream)
            .env("QUICKSTART_GATE_BIN", env!("CARGO_BIN_EXE_registry-gate"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("spawn scripts/quickstart");
        let mut quickstart = Quickstart {
            child,
            log,
            exit: None,
        };
        let ready = wait_until(READY_TIMEOUT, || {
            quickstart.try_exit().is_none() && quickstart.output().contains("quickstart: ready:")
        });
        assert!(
            ready,
            "scripts/quickstart was not ready within {READY_TIMEOUT:?} (exit {:?}):\n{}",
            quickstart.exit,
            quickstart.output()
        );
        quickstart
    }

    fn output(&self) -> String {
        read_text(&self.log)
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait on the script");
        }
        self.exit
    }

    /// The password of the generated `admin` user, which the gate prints once.
    fn admin_password(&self) -> String {
        let output = self.output();
        let marker = "created user \"admin\" with password \"";
        let start = output
            .find(marker)
            .unwrap_or_else(|| panic!("no generated password in the output:\n{output}"))
            + marker.len();
        let len = output[start..].find('"').expect("closing quote");
        output[start..start + len].to_string()
    }

    /// Names (`comm`) of the processes left in the script's process group.
    fn group(&self) -> Vec<String> {
        processes_in_group(self.child.id())
            .into_iter()
            .map(|(_, name)| name)
            .collect()
    }

    /// The pid of the process named `name` in the script's group.
    fn pid_of(&self, name: &str) -> u32 {
        processes_in_group(self.child.id())
            .into_iter()
            .find(|(_, n)| n == name)
            .unwrap_or_else(|| panic!("no {name} in the script's process group"))
            .0
    }

    /// Waits for the script to exit on its own.
    fn wait_exit(&mut self, why: &str) -> ExitStatus {
        let exited = wait_until(STOP_TIMEOUT, || self.try_exit().is_some());
        assert!(
            exited,
            "scripts/quickstart still runs {STOP_TIMEOUT:?} after {why}:\n{}",
            self.output()
        );
        self.exit.expect("exit status")
    }

    /// Sends `signal` (`TERM`, `INT`) to the script alone or, with `whole_group`, to the
    /// whole group as a terminal's Ctrl-C does; waits for the script to exit.
    fn stop(&mut self, signal: &str, whole_group: bool) -> ExitStatus {
        let pid = self.child.id().to_string();
        let target = if whole_group { format!("-{pid}") } else { pid };
        let out = run(Command::new("kill").args([&format!("-{signal}"), "--", &target]));
        assert!(out.status.success(), "kill: {}", describe(&out));
        self.wait_exit(&format!("SIG{signal}"))
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- scripts/quickstart output ---\n{}", self.output());
        }
    }
}

/// Pid and `comm` of every live process whose process group is `pgid`, from /proc.
fn processes_in_group(pgid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split
        // at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next();
        let pgrp = rest.nth(1).and_then(|p| p.parse::<u32>().ok());
        // A zombie has exited; only its parent's wait is missing.
        if pgrp == Some(pgid) && state != Some("Z") {
            let pid = stat[..open].trim().parse().unwrap_or(0);
            found.push((pid, stat[open + 1..close].to_string()));
        }
    }
    found
}

/// The gate at `port` as skopeo reaches it, trusting the generated CA (as `ca.crt`).
fn gate_host(tmp: &Path, data: &Path, port: u16) -> RegistryHost {
    let trust = tmp.join("trust");
    std::fs::create_dir_all(&trust).expect("mkdir trust");
    std::fs::copy(data.join("certs/ca.pem"), trust.join("ca.crt"))
        .expect("copy the generated ca.pem");
    RegistryHost {
        authority: format!("127.0.0.1:{port}"),
        cert_dir: trust,
    }
}

/// Pushes a two-layer image with `creds` through the gate at `host`, pulls it back and
/// checks the digests; returns the pushed image's layer digests.
fn push_and_pull(tmp: &Path, host: &RegistryHost, creds: &str) -> Vec<String> {
    let image = oci_image(&tmp.join("pushed"), 2, 256 * 1024);
    host.push_ok(creds, &image.reference(), "quick/start:v1");
    let pulled_dir = tmp.join("pulled");
    host.pull_ok(creds, "quick/start:v1", &pulled_dir);
    // read_oci_layout re-hashes every blob it lists.
    let pulled = read_oci_layout(&pulled_dir);
    assert_eq!(pulled.manifest_digest, image.manifest_digest);
    assert_eq!(pulled.config_digest, image.config_digest);
    assert_eq!(pulled.layer_digests, image.layer_digests);
    image.layer_digests
}

#[test]
fn quickstart_serves_a_registry_on_a_socket_behind_the_gate_and_stops_both() {
    require_tool("skopeo", "skopeo");
    let tmp = temp_dir();
    let data = tmp.path().join("qs");
    let port = free_port();
    let mut quickstart = Quickstart::start(tmp.path(), &data, port, "");

    let running = quickstart.group();
    for name in ["registry-gate", "docker-registry"] {
        assert!(
            running.iter().any(|n| n == name),
            "{name} is not running: {running:?}"
        );
    }
    let socket = data.join("registry.sock");
    assert!(
        read_text(&data.join("proxy.toml"))
            .contains(&format!("url = \"unix://{}\"", socket.display())),
        "the gate does not use the registry's socket:\n{}",
        read_text(&data.join("proxy.toml"))
    );

    let password = quickstart.admin_password();
    let host = gate_host(tmp.path(), &data, port);
    let layers = push_and_pull(tmp.path(), &host, &format!("admin:{password}"));
    // The blobs landed in the state directory's storage, through the socket.
    let blobs = data.join("registry/storage/docker/registry/v2/blobs/sha256");
    for digest in &layers {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        assert!(
            blobs.join(&hex[..2]).join(hex).join("data").is_file(),
            "layer {digest} not stored under {}",
            blobs.display()
        );
    }
    // And the password is what lets one in.
    assert_eq!(
        host.manifest_digest("admin:not-the-password", "quick/start:v1"),
        None,
        "a wrong password was accepted"
    );

    let status = quickstart.stop("TERM", false);
    assert!(
        status.success(),
        "the script exited with {status} after SIGTERM:\n{}",
        quickstart.output()
    );
    let left = quickstart.group();
    assert!(left.is_empty(), "processes left after the stop: {left:?}");
}

#[test]
fn quickstart_uses_a_registry_that_answers_and_leaves_it_running_after_ctrl_c() {
    require_tool("skopeo", "skopeo");
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let data = tmp.path().join("qs");
    let port = free_port();
    let mut quickstart = Quickstart::start(tmp.path(), &data, port, &registry.url);

    assert!(
        quickstart.output().contains(&format!(
            "using the registry that answers at {}",
            registry.url
        )),
        "the script did not take the running registry:\n{}",
        quickstart.output()
    );
    let running = quickstart.group();
    assert!(
        running.iter().any(|n| n == "registry-gate"),
        "the gate is not running: {running:?}"
    );
    assert!(
        !running.iter().any(|n| n == "docker-registry"),
        "a second registry was started: {running:?}"
    );

    let password = quickstart.admin_password();
    let host = gate_host(tmp.path(), &data, port);
    let layers = push_and_pull(tmp.path(), &host, &format!("admin:{password}"));
    let stored = registry.stored_blob_digests();
    for digest in &layers {
        assert!(stored.contains(digest), "registry lacks {digest}");
    }

    // Ctrl-C reaches the whole foreground process group.
    let status = quickstart.stop("INT", true);
    assert!(
        status.success(),
        "the script exited with {status} after Ctrl-C:\n{}",
        quickstart.output()
    );
    let left = quickstart.group();
    assert!(left.is_empty(), "processes left after Ctrl-C: {left:?}");
    assert!(
        registry.ping(),
        "the registry the script found was stopped with the gate"
    );
}

#[test]
fn quickstart_stops_the_gate_when_its_registry_dies() {
    let tmp = temp_dir();
    let data = tmp.path().join("qs");
    let mut quickstart = Quickstart::start(tmp.path(), &data, free_port(), "");

    let registry = quickstart.pid_of("docker-registry").to_string();
    let out = run(Command::new("kill").args(["-KILL", &registry]));
    assert!(out.status.success(), "kill: {}", describe(&out));

    // A gate answering 502 for a registry that is gone would look alive to the user.
    let status = quickstart.wait_exit("its registry was killed");
    assert_eq!(
        status.code(),
        Some(1),
        "the script should fail when its registry dies:\n{}",
        quickstart.output()
    );
    assert!(
        quickstart.output().contains("docker-registry exited"),
        "no word of the registry's exit:\n{}",
        quickstart.output()
    );
    let left = quickstart.group();
    assert!(left.is_empty(), "processes left: {left:?}");
}
