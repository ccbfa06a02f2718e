//! Test harness: starts the real processes an integration test needs (the gate binary, a
//! `docker-registry`, `dockerd`, a recording upstream) and the real clients that talk to them.
//!
//! Every helper owns what it starts: the gate binds port 0 and reports it, other children get
//! a port from `free_port`, files live in the test's own `TempDir`, and `Drop` kills the child.
//! Nothing here skips a test: a missing tool is a panic naming the package to install
//! (the style guide, convention 13).
//!
//! Layout:
//! - `pki`      a CA and a server certificate per test (rcgen), written as PEM
//! - `gate`     the `registry-gate` binary: config file, spawn, log, signals, memory
//! - `registry` `docker-registry serve` on TCP or a unix socket
//! - `recorder` an HTTP/1.1 upstream that records what the gate forwards
//! - `client`   an HTTPS client trusting the test CA, streaming pseudo-random bodies
//! - `docker`   a private `dockerd` and its CLI
//! - `image`    OCI image layouts made by hand, and `skopeo` with its one push and one pull
//! - `netns`    a network namespace with a non-loopback address, for docker's secure mode
//! - `pebble`   the ACME test server
//! - `rawh2`    HTTP/2 frames written byte for byte, for requests real clients refuse to send
//! - `webdriver` a headless Chromium driven over WebDriver (chromedriver), with screenshots

pub mod client;
pub mod docker;
pub mod gate;
pub mod image;
pub mod netns;
pub mod pebble;
pub mod peer;
pub mod pki;
pub mod rawh2;
pub mod recorder;
pub mod redis;
pub mod registry;
pub mod webdriver;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

/// How many ports below the kernel's ephemeral range `free_port` hands out from.
const PORT_POOL: u16 = 10_000;

/// A port on 127.0.0.1 for a child process that must be told its port (registry, pebble,
/// chromedriver, openssl): the gate itself binds port 0 and reports its address.
///
/// Ports come from just below the kernel's ephemeral range, each one once per test process.
/// A port found by binding port 0 and releasing it lies inside that range, where any
/// outgoing connection or another test's bind may take it before the child binds: CI lost a
/// test to exactly that. Below the range nothing is handed out by the kernel, and the counter
/// keeps this process's tests apart; the bind check skips ports a service already holds.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low();
    let base = low.saturating_sub(PORT_POOL).max(1024);
    let pool = u32::from(low - base);
    let start = std::process::id() % pool;
    for _ in 0..pool {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % pool;
        let port = base + u16::try_from(offset).expect("offset below the pool size");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {base}..{low}");
}

/// The first port of the kernel's ephemeral range (`ip_local_port_range`), 32768 by default.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .filter(|low| *low > 1024 + PORT_POOL / 2)
        .unwrap_or(32768)
}

/// A fresh directory for one test. It sits directly under /tmp with a short name because
/// unix socket paths (dockerd, registry) must stay under 108 bytes.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("rg")
        .tempdir_in("/tmp")
        .expect("create a temp dir under /tmp")
}

/// Panics with the install command when `tool` is not on PATH; a test never skips silently.
pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    if !found {
        panic!(
            "{tool} not found: run `apt-get install -y {package}` (or scripts/install-test-deps.sh)"
        );
    }
}

/// Polls `ready` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Takes a login brake that has just locked an address out for one second (the sixth
/// failure) to a four-second lockout: waits out each lockout and fails once more, twice.
/// Tests that assert what happens during a lockout then have four seconds, not one, before
/// a stalled machine lets the lockout end under them. `fail` makes one failing login and
/// returns its status, which must be `failed` (the brake counted it).
pub async fn lengthen_lockout<F, Fut>(failed: u16, mut fail: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    for (round, lockout) in [1, 2].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(lockout) + Duration::from_millis(200)).await;
        let status = fail().await;
        assert_eq!(
            status, failed,
            "a failing login after the {lockout} s lockout (round {round})"
        );
    }
}

/// True when something accepts TCP connections on `addr`.
pub fn accepts_tcp(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// `Read::read` that reads again when a signal interrupted it. A socket with a read timeout
/// fails with EINTR whatever SA_RESTART says (signal(7)), and a stop/continue of the test
/// process does it even without a handler: CI saw a WebDriver read end that way.
pub fn read_some(stream: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `wait_until` for a check that must await: polls every 50 ms.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut ready: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if ready().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For the tests that drive blocking CLIs: a runtime for the HTTP checks among them.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A child process killed (and reaped) when this goes out of scope, panicking tests included.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command to completion, panicking (with the command line) only if it cannot start.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"))
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Reads a whole (small) text file, naming it when that fails.
pub fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

/// Writes a file, naming it when that fails.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of a byte slice, the registry's digest form.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// A deterministic, fast byte generator (xorshift64*): bodies of any size without holding
/// them, reproducible from the seed so both ends can agree on the content.
#[derive(Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // Zero is xorshift's fixed point.
        XorShift(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` completely. A partial last word is dropped, so a stream is the same however
    /// it is cut only if every piece but the last has a length that is a multiple of 8.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let last = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&last[..rest.len()]);
        }
    }
}

/// sha256 and length of `len` pseudo-random bytes from `seed`, computed without holding them;
/// what a client must know before a monolithic `PUT ?digest=`.
pub fn pseudo_random_digest(seed: u64, len: u64) -> String {
    use sha2::{Digest, Sha256};
    let mut rng = XorShift::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    format!("sha256:{}", hex(&hasher.finalize()))
}
