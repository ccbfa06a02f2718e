//! A real `docker-registry serve` (distribution 2.8) with filesystem storage in the test's
//! temp dir, listening on 127.0.0.1 or on a unix socket. Killed on drop.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::image::{skopeo_ok, OciImage};
use super::{free_port, read_text, require_tool, wait_until, write_file};

/// How long a registry may take to answer its first `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Registry {
    child: Child,
    /// `http://127.0.0.1:PORT` or `unix:///path/registry.sock`: the gate's `[upstream] url`.
    pub url: String,
    /// Set for a TCP registry.
    pub addr: Option<SocketAddr>,
    /// Set for a unix-socket registry.
    pub socket: Option<PathBuf>,
    pub log: PathBuf,
}

enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Registry {
    /// A registry on 127.0.0.1 and a free port, storing under `<tmp>/registry`.
    /// `docker-registry` cannot report a port of its own choosing, so its port is found free
    /// and released first; when another process takes it in between, the registry exits
    /// with "address already in use" and is started again on another port.
    pub fn start(tmp: &Path) -> Registry {
        let mut attempts = 0;
        loop {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            match Registry::spawn(tmp, Listen::Tcp(addr), None) {
                Ok(registry) => return registry,
                Err(log) if attempts < 5 && log.contains("address already in use") => {
                    attempts += 1;
                }
                Err(log) => panic!("docker-registry on {addr} did not start:\n{log}"),
            }
        }
    }

    /// A registry on 127.0.0.1 that checks credentials itself: distribution's own htpasswd
    /// auth (realm `registry-realm`) with these users, for a gate in `[auth] mode = "none"`.
    pub fn start_with_htpasswd(tmp: &Path, users: &[(&str, &str)]) -> Registry {
        let htpasswd = tmp.join("registry-htpasswd");
        let users: Vec<(String, String)> = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        super::gate::write_htpasswd(&htpasswd, &users);
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Registry::spawn(tmp, Listen::Tcp(addr), Some(&htpasswd))
            .unwrap_or_else(|log| panic!("docker-registry on {addr} did not start:\n{log}"))
    }

    /// A registry listening on `<tmp>/registry.sock`.
    pub fn start_unix(tmp: &Path) -> Registry {
        let socket = tmp.join("registry.sock");
        assert!(
            socket.as_os_str().len() < 108,
            "unix socket path too long: {}",
            socket.display()
        );
        Registry::spawn(tmp, Listen::Unix(socket), None)
            .unwrap_or_else(|log| panic!("docker-registry did not start:\n{log}"))
    }

    /// The running registry, or its log when it exited or never answered.
    fn spawn(tmp: &Path, listen: Listen, htpasswd: Option<&Path>) -> Result<Registry, String> {
        require_tool("docker-registry", "docker-registry");
        let dir = tmp.join("registry");
        std::fs::create_dir_all(dir.join("storage")).expect("mkdir registry storage");

        let (net, addr) = match &listen {
            Listen::Tcp(addr) => ("tcp", addr.to_string()),
            Listen::Unix(path) => ("unix", path.display().to_string()),
        };
        let config = dir.join("config.yml");
        write_file(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
                 \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  net: {net}\n  addr: {addr}\n  secret: registry-gate-tests\n{auth}",
                storage = dir.join("storage").display(),
                auth = htpasswd.map_or(String::new(), |path| format!(
                    "auth:\n  htpasswd:\n    realm: registry-realm\n    path: {}\n",
                    path.display()
                )),
            ),
        );

        let log = dir.join("registry.log");
        let log_file = File::create(&log).expect("create registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .expect("spawn docker-registry");

        let (url, addr, socket) = match listen {
            Listen::Tcp(addr) => (format!("http://{addr}"), Some(addr), None),
            Listen::Unix(path) => (format!("unix://{}", path.display()), None, Some(path)),
        };
        let mut registry = Registry {
            child,
            url,
            addr,
            socket,
            log,
        };
        let mut exited = false;
        let up = wait_until(START_TIMEOUT, || {
            exited = registry.child.try_wait().ok().flatten().is_some();
            exited || registry.ping()
        });
        if !up || exited {
            return Err(format!(
                "no answer to GET /v2/ within {START_TIMEOUT:?} ({}):\n{}",
                registry.url,
                read_text(&registry.log)
            ));
        }
        Ok(registry)
    }

    /// True when `GET /v2/` answers, over TCP or the socket: 200, or 401 when the registry
    /// checks credentials itself.
    pub fn ping(&self) -> bool {
        let request = b"GET /v2/ HTTP/1.0\r\nHost: registry\r\n\r\n";
        let response = match (&self.addr, &self.socket) {
            (Some(addr), _) => TcpStream::connect_timeout(addr, Duration::from_millis(200))
                .and_then(|stream| {
                    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                    exchange(stream, request)
                }),
            (None, Some(path)) => UnixStream::connect(path).and_then(|stream| {
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                exchange(stream, request)
            }),
            (None, None) => unreachable!("a registry listens somewhere"),
        };
        matches!(response, Ok(text) if ["HTTP/1.1 200", "HTTP/1.0 200", "HTTP/1.1 401", "HTTP/1.0 401"]
            .iter()
            .any(|status| text.starts_with(status)))
    }

    /// The blob files the registry stored: `sha256:<hex>` for every blob in its storage.
    pub fn stored_blob_digests(&self) -> Vec<String> {
        let root = self
            .log
            .parent()
            .expect("log lives in the registry dir")
            .join("storage/docker/registry/v2/blobs/sha256");
        let mut digests = Vec::new();
        for prefix in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for blob in std::fs::read_dir(prefix.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                digests.push(format!("sha256:{}", blob.file_name().to_string_lossy()));
            }
        }
        digests
    }

    /// Puts `image` into this (TCP) registry as `target` (`repository:tag`) directly, not
    /// through a gate: what a test needs to find there already. Panics unless skopeo succeeds.
    pub fn push_directly(&self, image: &OciImage, target: &str) {
        let addr = self.addr.expect("a TCP registry");
        skopeo_ok(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &image.reference(),
            &format!("docker://{addr}/{target}"),
        ]);
    }

    pub fn log_text(&self) -> String {
        read_text(&self.log)
    }
}

fn exchange(mut stream: impl Read + Write, request: &[u8]) -> std::io::Result<String> {
    stream.write_all(request)?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- docker-registry log ({}) ---\n{}",
                self.url,
                self.log_text()
            );
        }
    }
}
