//! Issue 7: the gate under abuse and failure. Resource limits (slow heads, handshakes that
//! never finish, idle keep-alive, oversized heads, connection limits, ten thousand idle
//! connections), a registry that is down, dies mid-response or stalls, clients that abort
//! uploads and downloads (nothing committed, nothing leaked), reloads during a 1 GiB
//! transfer, and certificate generation on a read-only or full filesystem.
//!
//! Already proved elsewhere and not repeated here: 431 for a head over the default limit,
//! the idle timeout of a connection that never sends a request, 504 over HTTP/1.1 and the
//! per-address limit (`promise.rs`); users changed on disk (`lifecycle.rs`); certificate files
//! replaced on disk (`certificates.rs`).

use crate::util;

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use util::client::{
    empty, header, read_hashing, request, text, Framing, HttpsClient, Proto, PseudoRandomBody,
    ReqBody,
};
use util::gate::{gate_command, Gate, GateConfig};
use util::pki::Pki;
use util::recorder::{Recorder, Reply};
use util::registry::Registry;
use util::{describe, pseudo_random_digest, run, temp_dir, wait_until, write_file};

const MIB: u64 = 1 << 20;

/// Fails the test with `what` if `future` takes longer than `secs`: a hang is a failure with a
/// name, not a CI timeout.
async fn within<T>(secs: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {secs}s"))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A finished TLS handshake with the gate from `local` (any 127.0.0.0/8 address), no ALPN:
/// HTTP/1.1.
async fn tls_from(gate: &Gate, local: [u8; 4]) -> std::io::Result<Tls> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((local, 0)))?;
    let tcp = socket.connect(gate.addr).await?;
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(util::client::tls_config(&gate.pki.ca_pem)));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    connector.connect(name, tcp).await
}

/// Reads until the peer closes (EOF or an error): how long that took, and what was read.
async fn until_closed(mut stream: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// `/proc/<pid>/fd` entries: every socket and file the gate holds.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("list /proc/{pid}/fd: {e}"))
}

/// A blob path the gate classifies as a pull of `repo`.
fn blob_path(repo: &str, digest: &str) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

const SOME_DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

// ---------------------------------------------------------------------------------------
// Resource limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_head_is_cut_at_the_header_timeout() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    // The idle timeout is far away: bytes keep moving, so only the header timeout can act.
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url())
            .server_toml("header_timeout = \"2s\"\nidle_timeout = \"120s\"\n"),
    );
    let tls = within(10, "handshake", tls_from(&gate, [127, 0, 0, 1]))
        .await
        .expect("handshake");
    let (reader, mut writer) = tokio::io::split(tls);
    let head = format!(
        "GET /v2/ HTTP/1.1\r\nHost: localhost\r\nX-Slow: {}",
        "a".repeat(100)
    );
    let dribble = tokio::spawn(async move {
        let mut sent = 0;
        for byte in head.as_bytes() {
            if writer.write_all(&[*byte]).await.is_err() || writer.flush().await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        sent
    });
    let started = Instant::now();
    let answer = within(20, "the gate cutting a slow head", until_closed(reader)).await;
    let waited = started.elapsed();
    let sent = dribble.await.expect("dribbler");
    assert!(
        waited >= Duration::from_millis(1500),
        "cut after {waited:?}, before the header timeout"
    );
    assert!(sent < 30, "the whole head went through: {sent} bytes");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "unexpected answer to a slow head: {answer:.200}"
    );
    assert!(recorder.requests().is_empty(), "a slow head was forwarded");
    eprintln!("slowloris connection closed after {waited:?} ({sent} bytes sent)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_cut_at_the_handshake_timeout() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url())
            .server_toml("handshake_timeout = \"2s\"\nidle_timeout = \"120s\"\n"),
    );
    // Silence after connecting; a record header announcing a ClientHello that never comes
    // whole; and a real ClientHello start dribbled a byte a second.
    let partial_hello: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    for (what, bytes, dribble) in [
        ("silent", &[][..], false),
        ("partial ClientHello", partial_hello, false),
        ("dribbled ClientHello", partial_hello, true),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(gate.addr)
            .await
            .expect("connect");
        let started = Instant::now();
        if !dribble {
            tcp.write_all(bytes).await.expect("write");
            let rest = within(20, what, until_closed(&mut tcp)).await;
            assert!(rest.is_empty(), "{what}: the gate answered {rest:?}");
        } else {
            let closed = within(20, what, async {
                for byte in bytes {
                    if tcp.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    let mut one = [0u8; 1];
                    if let Ok(Ok(0)) =
                        tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut one)).await
                    {
                        return;
                    }
                }
                until_closed(&mut tcp).await;
            });
            closed.await;
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1500),
            "{what}: cut after {waited:?}, before the handshake timeout"
        );
        eprintln!("{what}: closed after {waited:?}");
    }
    // And the gate still serves.
    let client = gate.client(Proto::Http1);
    let response = within(10, "GET /v2/", client.get(&gate.url("/v2/"))).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_is_closed_after_the_idle_timeout_on_http1_and_http2() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url()).server_toml("idle_timeout = \"2s\"\n"),
    );

    // HTTP/1.1: one request answered on a keep-alive connection, then silence.
    let mut tls = within(10, "handshake", tls_from(&gate, [127, 0, 0, 1]))
        .await
        .expect("handshake");
    tls.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write request");
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&head).ends_with("{}") {
        let n = within(10, "response", tls.read(&mut buf))
            .await
            .expect("read response");
        assert!(n > 0, "closed before answering");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    let answered = Instant::now();
    within(20, "idle keep-alive close", until_closed(&mut tls)).await;
    let h1_waited = answered.elapsed();
    assert!(
        h1_waited >= Duration::from_millis(1500),
        "HTTP/1.1: closed {h1_waited:?} after the answer"
    );

    // HTTP/2: same, watched through the client connection's own future.
    let mut config = util::client::tls_config(&gate.pki.ca_pem);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("h2 handshake");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 connection");
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(
            request("GET", &gate.url("/v2/"))
                .body(empty())
                .expect("request"),
        )
        .await
        .expect("h2 response");
    assert_eq!(response.status(), 200);
    text(response).await;
    let answered = Instant::now();
    let _ = within(20, "idle h2 close", driver).await;
    let h2_waited = answered.elapsed();
    assert!(
        h2_waited >= Duration::from_millis(1500),
        "HTTP/2: closed {h2_waited:?} after the answer"
    );
    eprintln!("idle keep-alive closed after {h1_waited:?} (HTTP/1.1), {h2_waited:?} (HTTP/2)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_over_the_configured_max_header_bytes_get_431_on_http1_and_http2() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url()).server_toml("max_header_bytes = 8192\n"),
    );
    // 16 KiB passes the default limit (64 KiB): a 431 means the configured one applies.
    let big = "a".repeat(16 * 1024);
    let small = "a".repeat(2 * 1024);
    for proto in [Proto::Http1, Proto::Http2] {
        let client = gate.client(proto);
        let ok = client
            .send(
                request("GET", &gate.url("/v2/"))
                    .header("x-fill", &small)
                    .body(empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(ok.status(), 200, "{proto:?}: a 2 KiB header");
        let response = within(
            10,
            "oversized head",
            client.try_send(
                request("GET", &gate.url("/v2/"))
                    .header("x-fill", &big)
                    .body(empty())
                    .expect("request"),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{proto:?}: no answer to an oversized head: {e:?}"));
        assert_eq!(response.status(), 431, "{proto:?}");
    }
    assert_eq!(
        recorder.requests().len(),
        2,
        "an oversized head was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_total_and_per_address_limits_are_refused_and_logged() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url())
            .server_toml("max_connections = 3\nmax_connections_per_ip = 2\n"),
    );
    let a1 = tls_from(&gate, [127, 0, 0, 1]).await.expect("127.0.0.1 #1");
    let a2 = tls_from(&gate, [127, 0, 0, 1]).await.expect("127.0.0.1 #2");
    let refused_started = Instant::now();
    let a3 = within(10, "third from 127.0.0.1", tls_from(&gate, [127, 0, 0, 1])).await;
    assert!(a3.is_err(), "a third connection from 127.0.0.1 was served");
    let b1 = tls_from(&gate, [127, 0, 0, 2]).await.expect("127.0.0.2 #1");
    let c1 = within(10, "fourth in all", tls_from(&gate, [127, 0, 0, 3])).await;
    assert!(c1.is_err(), "a fourth connection in all was served");
    // Refused at once: no handshake timeout (10 s) waited out.
    assert!(
        refused_started.elapsed() < Duration::from_secs(8),
        "refusals took {:?}",
        refused_started.elapsed()
    );
    let log = gate.log();
    for peer in ["127.0.0.1", "127.0.0.3"] {
        assert!(
            log.lines()
                .any(|l| l.contains("connection limit reached") && l.contains(peer)),
            "refusal of {peer} not logged:\n{log}"
        );
    }

    // A served connection still works, and a freed slot is taken by the next client.
    drop(b1);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = tls_from(&gate, [127, 0, 0, 3]).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = again.expect("the freed slot never came back");
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = within(10, "answer", until_closed(&mut c)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    drop((a1, a2));
}

/// Idle TLS connections held open at once by `ten_thousand_idle_connections_…`.
const IDLE_CONNECTIONS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_tls_connections_leave_the_gate_responsive() {
    // Each connection costs this process one descriptor and the gate one.
    raise_own_nofile(IDLE_CONNECTIONS as u64 + 1024);
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url()).server_toml(
            "max_connections = 20000\nmax_connections_per_ip = 20000\nidle_timeout = \"300s\"\n",
        ),
    );
    let limits = util::read_text(Path::new(&format!("/proc/{}/limits", gate.pid())));
    let gate_nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .to_string();
    eprintln!("gate: {gate_nofile}");
    let client = gate.client(Proto::Http1);
    let warm = within(10, "warm-up", client.get(&gate.url("/v2/"))).await;
    assert_eq!(warm.status(), 200);
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = gate.vm_rss_kib();

    let started = Instant::now();
    let gate = Arc::new(gate);
    let mut held = Vec::with_capacity(IDLE_CONNECTIONS);
    let mut pending = tokio::task::JoinSet::new();
    let mut next = 0;
    // A hundred handshakes in flight at once: well inside the listen backlog.
    while held.len() < IDLE_CONNECTIONS {
        while next < IDLE_CONNECTIONS && pending.len() < 100 {
            let gate = gate.clone();
            pending.spawn(async move { tls_from(&gate, [127, 0, 0, 1]).await });
            next += 1;
        }
        let done = pending.join_next().await.expect("a pending handshake");
        let tls = done.expect("handshake task").unwrap_or_else(|e| {
            panic!(
                "handshake {} of {IDLE_CONNECTIONS} failed: {e}\n{}",
                held.len() + 1,
                gate.log()
            )
        });
        held.push(tls);
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "only {} connections after 90 s",
            held.len()
        );
    }
    let setup = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = gate.vm_rss_kib();
    let fds = open_fds(gate.pid());

    let asked = Instant::now();
    let client = gate.client(Proto::Http2);
    let response = within(
        10,
        "a new client among 10,000 idle ones",
        client.get(&gate.url("/v2/")),
    )
    .await;
    assert_eq!(response.status(), 200);
    let answered = asked.elapsed();
    assert!(
        fds > IDLE_CONNECTIONS,
        "the gate holds only {fds} descriptors"
    );
    let per_conn = (rss_after.saturating_sub(rss_before)) as f64 / IDLE_CONNECTIONS as f64;
    println!(
        "{IDLE_CONNECTIONS} idle TLS connections: set up in {setup:?}; gate VmRSS {rss_before} KiB -> \
         {rss_after} KiB ({per_conn:.1} KiB per connection), {fds} fds; a new client answered in {answered:?}"
    );
    assert!(
        !gate.log().contains("accept failed"),
        "the gate ran out of descriptors:\n{gate_nofile}"
    );
    drop(held);
}

/// Raises this test process's soft open-file limit to at least `want` (up to the hard limit).
fn raise_own_nofile(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the struct is a valid out-parameter.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    if limit.rlim_cur >= want {
        return;
    }
    assert!(
        limit.rlim_max >= want,
        "the hard open-file limit {} is below {want}: raise it (ulimit -Hn) to run this test",
        limit.rlim_max
    );
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

// ---------------------------------------------------------------------------------------
// The registry failing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_goes_down_gets_502_at_once_and_is_served_again_when_back() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let addr = recorder.addr;
    let gate = Gate::start(tmp.path(), GateConfig::new(recorder.url()));
    let clients = [gate.client(Proto::Http1), gate.client(Proto::Http2)];
    for client in &clients {
        assert_eq!(client.get(&gate.url("/v2/")).await.status(), 200);
    }
    // Down, with keep-alive connections to it in the gate's pool.
    drop(recorder);
    for (client, proto) in clients.iter().zip([Proto::Http1, Proto::Http2]) {
        let asked = Instant::now();
        let response = within(
            10,
            "GET /v2/ with the registry down",
            client.get(&gate.url("/v2/")),
        )
        .await;
        assert_eq!(response.status(), 502, "{proto:?}");
        assert!(
            asked.elapsed() < Duration::from_millis(4500),
            "{proto:?}: 502 took {:?}",
            asked.elapsed()
        );
        let body = text(response).await;
        let json: serde_json::Value = serde_json::from_str(&body).expect("502 body is JSON");
        assert_eq!(json["errors"][0]["code"], "UNAVAILABLE", "{body}");
    }
    // Back on the same address: served without restarting the gate.
    let back = Recorder::start_on(addr, |_| Reply::ok_json());
    for (client, proto) in clients.iter().zip([Proto::Http1, Proto::Http2]) {
        let response = within(
            10,
            "GET /v2/ with the registry back",
            client.get(&gate.url("/v2/")),
        )
        .await;
        assert_eq!(response.status(), 200, "{proto:?}");
    }
    assert_eq!(back.requests().len(), 2);
}

/// How the fault injector breaks its answer.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `Content-Length: len`, then half of it, then the socket closed.
    DieMidLength { len: usize },
    /// Chunked, a few chunks, then closed without the last chunk.
    DieMidChunked,
    /// `Content-Length: len`, half of it, then silence with the socket open.
    StallMidBody { len: usize },
}

/// A registry that fails mid-response: a raw TCP server that reads a request head and
/// answers it the broken way `fault` says. A fault injector, not a registry.
struct FaultyUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultyUpstream {
    fn start(fault: Fault) -> FaultyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault injector");
        let addr = listener.local_addr().expect("address");
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let stopped = stopped.clone();
                        std::thread::spawn(move || answer_broken(stream, fault, &stopped));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FaultyUpstream {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer_broken(mut stream: TcpStream, fault: Fault, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let fill = |n: usize| vec![b'x'; n];
    let _ = match fault {
        Fault::DieMidLength { len } => stream
            .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes())
            .and_then(|()| stream.write_all(&fill(len / 2))),
        Fault::DieMidChunked => {
            let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for _ in 0..8 {
                out.extend_from_slice(b"10000\r\n");
                out.extend_from_slice(&fill(0x10000));
                out.extend_from_slice(b"\r\n");
            }
            stream.write_all(&out)
        }
        Fault::StallMidBody { len } => {
            let sent = stream
                .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes())
                .and_then(|()| stream.write_all(&fill(len / 2)));
            // Open and silent until the test ends.
            for _ in 0..600 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            sent
        }
    };
    // Dropped here: the registry "dies" (FIN after the partial answer).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_dying_mid_response_is_a_broken_transfer_never_a_short_complete_body() {
    let tmp = temp_dir();
    for fault in [Fault::DieMidLength { len: 4 << 20 }, Fault::DieMidChunked] {
        let upstream = FaultyUpstream::start(fault);
        let gate = Gate::start(
            &tmp.path()
                .join(format!("{fault:?}").replace([' ', '{', '}', ':'], "")),
            GateConfig::new(upstream.url()),
        );
        for proto in [Proto::Http1, Proto::Http2] {
            let client = gate.client(proto);
            let response = within(
                10,
                "GET",
                client.get(&gate.url(&blob_path("a/b", SOME_DIGEST))),
            )
            .await;
            assert_eq!(response.status(), 200, "{fault:?} {proto:?}");
            let body = within(10, "body", read_hashing(response.into_body())).await;
            assert!(
                body.is_err(),
                "{fault:?} over {proto:?}: a cut body arrived as complete: {body:?}"
            );
            eprintln!("{fault:?} over {proto:?}: client saw {:?}", body.err());
        }
        // The access log says so too.
        assert!(
            wait_until(Duration::from_secs(5), || gate
                .log()
                .matches("aborted")
                .count()
                >= 2),
            "{fault:?}: the cut transfers are not logged as aborted:\n{}",
            gate.log()
        );
    }
    // The raw HTTP/1.1 view of a cut chunked answer: closed without the last chunk.
    let upstream = FaultyUpstream::start(Fault::DieMidChunked);
    let gate = Gate::start(&tmp.path().join("raw"), GateConfig::new(upstream.url()));
    let mut tls = tls_from(&gate, [127, 0, 0, 1]).await.expect("handshake");
    tls.write_all(
        format!(
            "GET {} HTTP/1.1\r\nHost: localhost\r\n\r\n",
            blob_path("a/b", SOME_DIGEST)
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let raw = within(10, "raw cut answer", until_closed(&mut tls)).await;
    let shown = String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{shown}");
    assert!(
        !raw.ends_with(b"0\r\n\r\n"),
        "the cut chunked answer ended with a last chunk: looks complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_stalling_past_the_read_timeout_gets_504_or_a_broken_transfer() {
    let tmp = temp_dir();
    // Silent before the head, over HTTP/2 (promise.rs proves HTTP/1.1): 504.
    let slow = Recorder::start(|_| Reply::ok_json().delay(Duration::from_secs(5)));
    let mut config = GateConfig::new(slow.url());
    config.read_timeout = "1s".into();
    let gate = Gate::start(&tmp.path().join("head"), config);
    let response = within(10, "GET", gate.client(Proto::Http2).get(&gate.url("/v2/"))).await;
    assert_eq!(response.status(), 504);
    let body = text(response).await;
    assert!(body.contains("UNAVAILABLE"), "{body}");

    // Silent mid-body: the transfer is cut, on both protocols.
    let upstream = FaultyUpstream::start(Fault::StallMidBody { len: 1 << 20 });
    let mut config = GateConfig::new(upstream.url());
    config.read_timeout = "1s".into();
    let gate = Gate::start(&tmp.path().join("body"), config);
    for proto in [Proto::Http1, Proto::Http2] {
        let response = within(
            10,
            "GET",
            gate.client(proto)
                .get(&gate.url(&blob_path("a/b", SOME_DIGEST))),
        )
        .await;
        assert_eq!(response.status(), 200);
        let body = within(15, "a stalled body", read_hashing(response.into_body())).await;
        assert!(
            body.is_err(),
            "{proto:?}: a stalled body arrived as complete"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Clients aborting, against the real registry

/// `len` pseudo-random bytes announced with Content-Length (or chunked), of which only
/// `abort_at` are sent before the body fails: a client that gives up half-way.
struct AbortingBody {
    inner: PseudoRandomBody,
    sent: u64,
    abort_at: u64,
}

impl http_body::Body for AbortingBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.sent >= self.abort_at {
            return std::task::Poll::Ready(Some(Err(std::io::Error::other("the client gives up"))));
        }
        let frame = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(f))) = &frame {
            let n = f.data_ref().map_or(0, |d| d.len() as u64);
            self.sent += n;
        }
        frame
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn aborting_body(seed: u64, len: u64, abort_at: u64, framing: Framing) -> ReqBody {
    let (inner, _) = PseudoRandomBody::new(seed, len, framing);
    AbortingBody {
        inner,
        sent: 0,
        abort_at,
    }
    .boxed()
}

/// Starts an upload on the gate and returns its (gate-side) URL.
async fn start_upload(gate: &Gate, client: &HttpsClient, repo: &str) -> String {
    let response = client
        .send(
            request("POST", &gate.url(&format!("/v2/{repo}/blobs/uploads/")))
                .body(empty())
                .expect("POST"),
        )
        .await;
    assert_eq!(response.status(), 202, "start upload");
    header(&response, "location")
        .expect("upload location")
        .to_string()
}

/// `url` with `key=value` added to its query.
fn with_query(url: &str, key: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{key}={value}")
}

async fn blob_status(gate: &Gate, client: &HttpsClient, repo: &str, digest: &str) -> u16 {
    client
        .send(
            request("HEAD", &gate.url(&blob_path(repo, digest)))
                .body(empty())
                .expect("HEAD"),
        )
        .await
        .status()
        .as_u16()
}

/// Waits until the gate holds no more descriptors than `limit` (client and registry
/// connections of finished or aborted requests are closed asynchronously).
fn settle_fds(gate: &Gate, limit: usize) -> usize {
    let mut now = open_fds(gate.pid());
    wait_until(Duration::from_secs(10), || {
        now = open_fds(gate.pid());
        now <= limit
    });
    now
}

const UPLOAD_LEN: u64 = 64 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_aborted_half_way_is_aborted_upstream_and_never_committed() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(tmp.path(), GateConfig::new(&registry.url));
    let warm = gate.client(Proto::Http1);
    assert_eq!(warm.get(&gate.url("/v2/")).await.status(), 200);
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = open_fds(gate.pid());

    let digest = pseudo_random_digest(7, UPLOAD_LEN);
    // A monolithic PUT over HTTP/1.1 and a chunked PATCH over HTTP/1.1 and HTTP/2, each
    // abandoned at 32 MiB of 64.
    for (proto, method, framing) in [
        (Proto::Http1, "PUT", Framing::ContentLength),
        (Proto::Http1, "PATCH", Framing::Chunked),
        (Proto::Http2, "PATCH", Framing::Chunked),
    ] {
        let client = gate.client(proto);
        let upload = start_upload(&gate, &client, "faults/abort").await;
        let url = if method == "PUT" {
            with_query(&upload, "digest", &digest)
        } else {
            upload.clone()
        };
        let result = within(
            60,
            "aborted upload",
            client.try_send(
                request(method, &url)
                    .header("content-type", "application/octet-stream")
                    .body(aborting_body(7, UPLOAD_LEN, UPLOAD_LEN / 2, framing))
                    .expect("upload request"),
            ),
        )
        .await;
        // A registry that answered before the end would have accepted a short body.
        assert!(
            result.is_err()
                || result
                    .as_ref()
                    .is_ok_and(|r| r.status().is_client_error() || r.status().is_server_error()),
            "{proto:?} {method}: an aborted upload was answered {:?}",
            result.map(|r| r.status())
        );
        if method == "PATCH" {
            // Closing the upload with the digest of the whole blob must fail: the registry
            // holds at most what arrived, never the full blob.
            let put = client
                .send(
                    request("PUT", &with_query(&upload, "digest", &digest))
                        .body(empty())
                        .expect("PUT"),
                )
                .await;
            assert!(
                put.status().is_client_error(),
                "{proto:?}: the aborted chunked upload completed: {}",
                put.status()
            );
        }
        drop(client);
        let status = blob_status(&gate, &gate.client(Proto::Http1), "faults/abort", &digest).await;
        assert_eq!(status, 404, "{proto:?} {method}: the aborted blob is known");
    }
    assert!(
        !registry.stored_blob_digests().contains(&digest),
        "the registry stored the aborted blob"
    );
    // The upstream side of each aborted request was closed too: nothing is left open.
    let after = settle_fds(&gate, baseline + 4);
    assert!(
        after <= baseline + 4,
        "the gate holds {after} descriptors after the aborts, {baseline} before"
    );
    // The client's doing, logged as such: not a 502 and a warning about the registry.
    let log = gate.log();
    let uploads: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("access") && (l.contains("method=PUT") || l.contains("method=PATCH"))
        })
        // The aborted bodies: megabytes in (how many depends on flow control and timing),
        // unlike the zero-byte PUTs that try to finish an upload.
        .filter(|l| {
            l.split("bytes_in=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > 1_000_000)
        })
        .collect();
    assert_eq!(uploads.len(), 3, "{log}");
    for line in uploads {
        assert!(line.contains("outcome=\"aborted\""), "{line}");
        assert!(!line.contains("status=502"), "{line}");
    }
    assert!(!log.contains("upstream error"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_aborted_uploads_and_downloads_leave_no_descriptors_or_memory_behind() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(tmp.path(), GateConfig::new(&registry.url));
    let repo = "faults/leak";
    // One complete 64 MiB blob to download.
    let digest = pseudo_random_digest(11, UPLOAD_LEN);
    {
        let client = gate.client(Proto::Http1);
        let upload = start_upload(&gate, &client, repo).await;
        let (body, _) = PseudoRandomBody::new(11, UPLOAD_LEN, Framing::ContentLength);
        let response = within(
            120,
            "64 MiB upload",
            client.send(
                request("PUT", &with_query(&upload, "digest", &digest))
                    .body(body.boxed())
                    .expect("PUT"),
            ),
        )
        .await;
        assert_eq!(response.status(), 201);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_before = open_fds(gate.pid());
    let rss_before = gate.vm_rss_kib();

    let shared = Arc::new(gate);
    let abort_at = 4 * MIB;
    let mut tasks = tokio::task::JoinSet::new();
    let mut exchanges = Vec::new();
    for i in 0..100u64 {
        let gate = shared.clone();
        tasks.spawn(async move {
            let proto = if i % 2 == 0 {
                Proto::Http1
            } else {
                Proto::Http2
            };
            let client = gate.client(proto);
            let upload = start_upload(&gate, &client, "faults/leak").await;
            let url = with_query(&upload, "digest", &pseudo_random_digest(1000 + i, 0));
            let _ = client
                .try_send(
                    request("PUT", &url)
                        .body(aborting_body(
                            1000 + i,
                            UPLOAD_LEN,
                            abort_at,
                            Framing::ContentLength,
                        ))
                        .expect("PUT"),
                )
                .await;
            Ok::<(), String>(())
        });
        let gate = shared.clone();
        let digest = digest.clone();
        tasks.spawn(async move {
            let proto = if i % 2 == 0 {
                Proto::Http2
            } else {
                Proto::Http1
            };
            let client = gate.client(proto);
            let response = client
                .get(&gate.url(&blob_path("faults/leak", &digest)))
                .await;
            if response.status() != 200 {
                return Err(format!("download {i}: {}", response.status()));
            }
            let mut body = response.into_body();
            let mut got = 0u64;
            while got < abort_at {
                match body.frame().await {
                    Some(Ok(frame)) => got += frame.data_ref().map_or(0, |d| d.len() as u64),
                    other => return Err(format!("download {i} ended early: {other:?}")),
                }
            }
            // Dropped with the client: the download is abandoned.
            Ok(())
        });
        // Four exchanges at a time: a steady load, not a stampede.
        while tasks.len() >= 4 {
            exchanges.push(tasks.join_next().await.expect("task"));
        }
    }
    while let Some(done) = tasks.join_next().await {
        exchanges.push(done);
    }
    // Every check is made, whichever fail: a leak of descriptors, of memory and a transfer
    // that went wrong tell different stories.
    let mut failures: Vec<String> = exchanges
        .into_iter()
        .filter_map(|done| match done {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => Some(failure),
            Err(panicked) => Some(format!("an exchange panicked: {panicked}")),
        })
        .collect();
    let gate = shared;
    let fds_after = settle_fds(&gate, fds_before + 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = gate.vm_rss_kib();
    println!(
        "after 100 aborted uploads and 100 aborted downloads: fds {fds_before} -> {fds_after}, \
         VmRSS {rss_before} KiB -> {rss_after} KiB"
    );
    if fds_after > fds_before + 4 {
        failures.push(format!("descriptors leaked: {fds_before} -> {fds_after}"));
    }
    // Allocator caches keep some, more when more bodies were in flight at the aborts; a leak
    // of the 64 MiB bodies (aborted a few MiB in, 200 times) would show far beyond this.
    if rss_after > rss_before + 32 * 1024 {
        failures.push(format!(
            "memory not given back: {rss_before} KiB -> {rss_after} KiB"
        ));
    }
    let aborted = gate.log().lines().filter(|l| l.contains("aborted")).count();
    if aborted < 150 {
        failures.push(format!("only {aborted} aborted transfers logged"));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------
// Reloads during a transfer

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_and_user_reloads_during_a_1_gib_download_break_nothing() {
    const GIB: u64 = 1 << 30;
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::status(200).pseudo_random(42, GIB));
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url()).basic_auth(&[("alice", "alice-pw")]),
    );
    let alice = format!("Basic {}", b64("alice:alice-pw"));
    let bob = format!("Basic {}", b64("bob:bob-pw"));
    let expected = tokio::task::spawn_blocking(|| pseudo_random_digest(42, GIB));

    let before = served_fingerprint(gate.port());
    let mut downloads = Vec::new();
    for proto in [Proto::Http1, Proto::Http2] {
        let client = gate.client(proto);
        let response = client
            .send(
                request("GET", &gate.url(&blob_path("a/b", SOME_DIGEST)))
                    .header("authorization", &alice)
                    .body(empty())
                    .expect("GET"),
            )
            .await;
        assert_eq!(response.status(), 200, "{proto:?}");
        downloads.push(tokio::spawn(read_hashing(response.into_body())));
    }

    // While both run: a new certificate and key on disk, a new user, and a SIGHUP.
    let renewed = Pki::localhost(&tmp.path().join("renewed"));
    let pki_dir = gate.pki.cert_pem.parent().expect("pki dir").to_path_buf();
    std::fs::copy(&renewed.key_pem, pki_dir.join("key.pem.new")).expect("copy key");
    std::fs::copy(&renewed.cert_pem, pki_dir.join("cert.pem.new")).expect("copy cert");
    std::fs::rename(pki_dir.join("key.pem.new"), &gate.pki.key_pem).expect("rename key");
    std::fs::rename(pki_dir.join("cert.pem.new"), &gate.pki.cert_pem).expect("rename cert");
    let htpasswd = gate.config_path.with_file_name("htpasswd");
    let out = run(Command::new("htpasswd")
        .args(["-b", "-B", "-C", "4"])
        .arg(&htpasswd)
        .args(["bob", "bob-pw"]));
    assert!(out.status.success(), "{}", describe(&out));
    gate.signal("HUP");

    let after = renewed_fingerprint(&renewed.cert_pem);
    assert!(
        wait_until(Duration::from_secs(15), || served_fingerprint(gate.port())
            == after),
        "the renewed certificate is not served (still {before})"
    );
    assert!(
        downloads.iter().all(|d| !d.is_finished()),
        "a download finished before the reload took effect: nothing was proved"
    );
    let fresh = HttpsClient::new(&renewed.ca_pem, Proto::Http1);
    let bob_status = fresh
        .send(
            request("GET", &gate.url("/v2/"))
                .header("authorization", &bob)
                .body(empty())
                .expect("GET"),
        )
        .await
        .status();
    assert_eq!(bob_status, 200, "the new user is not accepted");

    let expected = expected.await.expect("digest");
    for (download, proto) in downloads.into_iter().zip([Proto::Http1, Proto::Http2]) {
        let (len, digest) = within(240, "1 GiB download", download)
            .await
            .expect("download task")
            .unwrap_or_else(|e| panic!("{proto:?}: the download broke during the reload: {e}"));
        assert_eq!(len, GIB, "{proto:?}");
        assert_eq!(digest, expected, "{proto:?}");
    }
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The SHA-256 fingerprint of the certificate the gate serves now (openssl, no SNI check).
fn served_fingerprint(port: u16) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null \
         | openssl x509 -noout -fingerprint -sha256"
    );
    let out = run(Command::new("sh").args(["-c", &script]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn renewed_fingerprint(cert: &Path) -> String {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------------------
// Certificate generation on a filesystem that refuses writes

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at));
        assert!(
            out.status.success(),
            "mount tmpfs ({options}) needs root: {}",
            describe(&out)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg(&self.0));
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn gencert(dir: &Path) -> std::process::Output {
    run(gate_command()
        .args([
            "gencert",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--dir",
        ])
        .arg(dir))
}

#[test]
fn gencert_on_a_read_only_filesystem_fails_naming_the_path() {
    let tmp = temp_dir();
    let ro = Tmpfs::mount(&tmp.path().join("ro"), "ro,size=64k");
    for dir in [ro.0.clone(), ro.0.join("certs")] {
        let out = gencert(&dir);
        assert!(!out.status.success(), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&*dir.to_string_lossy()) && stderr.contains("Read-only file system"),
            "the error does not name the path and the cause: {stderr}"
        );
    }
    assert!(names_in(&ro.0).is_empty(), "{:?}", names_in(&ro.0));

    // The zero-config start: exit 2 naming the directory, nothing listening.
    let port = util::free_port();
    let config = tmp.path().join("proxy.toml");
    write_file(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[tls]\ndir = \"{}\"\n[auth]\nmode = \"none\"\n",
            ro.0.display()
        ),
    );
    let mut child = gate_command()
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let exited = wait_until(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("gate output");
    assert!(exited, "the gate ran without a writable [tls] dir");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&*ro.0.to_string_lossy()), "{stderr}");
}

#[test]
fn gencert_on_a_full_filesystem_leaves_no_partial_pair_and_succeeds_once_there_is_room() {
    let tmp = temp_dir();
    let full = Tmpfs::mount(&tmp.path().join("full"), "size=16k");
    let certs = full.0.join("certs");
    // 16 KiB is four pages and every file takes one: with one page held by a filler, the
    // CA pair fits and the server key does, but its certificate does not.
    write_file(&full.0.join("filler"), vec![0u8; 4096]);
    let out = gencert(&certs);
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&*certs.to_string_lossy()) && stderr.contains("No space left"),
        "the error does not name the path and the cause: {stderr}"
    );
    let left = names_in(&certs);
    assert!(
        left.is_empty() || left == ["ca-key.pem", "ca.pem"],
        "a partial set of files was left: {left:?}"
    );

    // Room again: the same command succeeds, no --force needed.
    std::fs::remove_file(full.0.join("filler")).expect("remove filler");
    let out = gencert(&certs);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        names_in(&certs),
        ["ca-key.pem", "ca.pem", "cert.pem", "key.pem"]
    );
}

/// A TLS connection that negotiated HTTP/2.
async fn h2_tls(gate: &Gate) -> Tls {
    let mut config = util::client::tls_config(&gate.pki.ca_pem);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gate.addr)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_or_ping_trickle_is_cut_like_a_slow_http1_head() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    // Bytes keep moving the whole time; only a timeout that counts requests, not bytes, can
    // end these connections.
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url())
            .server_toml("header_timeout = \"2s\"\nidle_timeout = \"3s\"\n"),
    );

    // The connection preface, one byte every 300 ms.
    let (reader, mut writer) = tokio::io::split(h2_tls(&gate).await);
    let dribble = tokio::spawn(async move {
        for byte in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
            if writer.write_all(&[*byte]).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let started = Instant::now();
    within(
        15,
        "the gate cutting a trickled preface",
        until_closed(reader),
    )
    .await;
    let waited = started.elapsed();
    dribble.abort();
    assert!(
        // Under the 10 s at which the idle timeout would end it once the preface is in.
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8),
        "trickled preface cut after {waited:?}, expected about the 2 s header timeout"
    );

    // A full preface and SETTINGS, then PING frames every 500 ms and never a request.
    let (reader, mut writer) = tokio::io::split(h2_tls(&gate).await);
    let pinger = tokio::spawn(async move {
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // empty SETTINGS
        if writer.write_all(&hello).await.is_err() {
            return;
        }
        let ping = [0, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        while writer.write_all(&ping).await.is_ok() && writer.flush().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let started = Instant::now();
    within(
        15,
        "the gate cutting a ping-only connection",
        until_closed(reader),
    )
    .await;
    let waited = started.elapsed();
    pinger.abort();
    assert!(
        waited < Duration::from_secs(10),
        "a connection sending only pings stayed open {waited:?}"
    );
    assert!(recorder.requests().is_empty());
    eprintln!("trickled preface cut after {waited:?}");
}
