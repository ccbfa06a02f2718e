//! Let's Encrypt's test ACME server, `pebble` (Debian package), on loopback: a directory the
//! gate orders from, validating challenges against the gate's own ports.
//!
//! Pebble's listener uses a certificate from a per-test `Pki` (its CA is what the gate gets as
//! `[tls.acme] directory_ca`); the certificates it issues chain to a root it makes at start,
//! fetched from its management interface for clients to trust. The log says which orders and
//! certificates it handled, which tests count.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::pki::Pki;
use super::{
    accepts_tcp, describe, free_port, read_text, require_tool, run, wait_until, KillOnDrop,
};

pub struct Pebble {
    _child: KillOnDrop,
    tls_ca: PathBuf,
    management: SocketAddr,
    log: PathBuf,
}

/// What the test wants pebble to do differently from its defaults.
#[derive(Default)]
pub struct PebbleOptions {
    /// Lifetime of issued certificates in seconds (pebble's default is five years).
    pub validity_secs: Option<u64>,
    /// Names pebble refuses to issue for.
    pub blocklist: Vec<String>,
}

/// Pebble's addresses and TLS files, fixed before it runs: the gate's configuration names
/// the directory before pebble knows which gate ports to validate against.
pub struct PebbleSetup {
    dir: PathBuf,
    pub directory: String,
    /// The CA of pebble's own HTTPS listener, for `directory_ca`.
    pub tls_ca: PathBuf,
    pki: Pki,
    listen: SocketAddr,
    management: SocketAddr,
}

impl PebbleSetup {
    pub fn new(dir: &Path) -> PebbleSetup {
        require_tool("pebble", "pebble");
        std::fs::create_dir_all(dir).expect("mkdir pebble dir");
        let pki = Pki::new(
            &dir.join("pki"),
            &["localhost"],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        );
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        PebbleSetup {
            dir: dir.to_path_buf(),
            directory: format!("https://{listen}/dir"),
            tls_ca: pki.ca_pem.clone(),
            pki,
            listen,
            management: SocketAddr::from(([127, 0, 0, 1], free_port())),
        }
    }

    /// Runs pebble, validating tls-alpn-01 on `tls_port` and http-01 on `http_port` of
    /// 127.0.0.1 (what `localhost` resolves to).
    pub fn start(&self, tls_port: u16, http_port: u16, options: PebbleOptions) -> Pebble {
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": self.listen.to_string(),
                "managementListenAddress": self.management.to_string(),
                "certificate": self.pki.cert_pem,
                "privateKey": self.pki.key_pem,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "domainBlocklist": options.blocklist,
                "certificateValidityPeriod": options.validity_secs.unwrap_or(0),
            }
        });
        let config_path = self.dir.join("pebble.json");
        super::write_file(&config_path, config.to_string());
        let log = self.dir.join("pebble.log");
        let log_file = File::create(&log).expect("create pebble log");
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .arg("-strict=false")
            // No random validation delays and no deliberately rejected nonces: tests want
            // the protocol, not pebble's chaos.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .expect("spawn pebble");
        let pebble = Pebble {
            _child: KillOnDrop(child),
            tls_ca: self.tls_ca.clone(),
            management: self.management,
            log,
        };
        let (listen, management) = (self.listen, self.management);
        if !wait_until(Duration::from_secs(10), || {
            accepts_tcp(listen) && accepts_tcp(management)
        }) {
            panic!("pebble did not start:\n{}", pebble.log());
        }
        pebble
    }
}

impl Pebble {
    /// Writes the root that issued certificates chain to, for clients to trust.
    pub fn write_issuing_root(&self, path: &Path) {
        require_tool("curl", "curl");
        let out = run(Command::new("curl")
            .args(["-sSf", "--cacert"])
            .arg(&self.tls_ca)
            .arg(format!("https://{}/roots/0", self.management)));
        assert!(
            out.status.success(),
            "fetch pebble root: {}",
            describe(&out)
        );
        super::write_file(path, &out.stdout);
    }

    /// Orders pebble has accepted so far.
    pub fn orders(&self) -> usize {
        self.log().matches("Added order").count()
    }

    /// Serials of the certificates pebble issued, in order, as lowercase hex without
    /// leading zeros.
    pub fn issued_serials(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split("Issued certificate serial ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            // Pebble pads to 16 hex digits; certificates carry no leading zeros.
            .map(|serial| serial.trim_start_matches('0').to_string())
            .collect()
    }

    pub fn log(&self) -> String {
        read_text(&self.log)
    }
}
