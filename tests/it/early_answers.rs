//! No request is lost after an answer the gate gives before reading a request body (401,
//! 403, 405, 429, ...). The pattern is the OCI conformance suite's: a PUT with a body sent
//! without credentials, the 401, then the same PUT with credentials on the same connection.
//! Through the gate one such PUT in a run got no answer at all (issue 13): the 401 went out
//! as keep-alive and the connection was closed behind it, so a client reusing it at once
//! lost its next request.
//!
//! A correct client only reuses a connection the server did not announce closing; the
//! raw clients here do exactly that, and count every request that got no answer.

use crate::util;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use util::client::{full, request, tls_config};
use util::docker::Dockerd;
use util::gate::{Gate, GateConfig};
use util::image::oci_image;
use util::recorder::{Recorder, Reply};
use util::registry::Registry;
use util::{describe, temp_dir};

const ROUNDS: usize = 500;
const USER: &str = "ci";
const PASSWORD: &str = "ci-secret";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn basic() -> String {
    use base64::Engine;
    let pair = format!("{USER}:{PASSWORD}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A gate with one user in front of a recorder that accepts every manifest.
fn gate_with_recorder(tmp: &Path) -> (Recorder, Gate) {
    let recorder = Recorder::start(|r| match r.method.as_str() {
        "PUT" => Reply::status(201).body(b"created".to_vec()),
        _ => Reply::ok_json(),
    });
    let gate = Gate::start(
        tmp,
        GateConfig::new(recorder.url()).basic_auth(&[(USER, PASSWORD)]),
    );
    (recorder, gate)
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1, written byte by byte

/// How the client sends a request body, chosen to hit every way the gate can see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sending {
    /// Head and body in one write: the body is already buffered with the head.
    Together,
    /// The body a moment after the head: still in flight when the head is classified.
    Late,
    /// Chunked, in two chunks with a pause between them.
    Chunked,
    /// A body larger than the gate will discard, still being written.
    Large,
    /// `Expect: 100-continue`: the body only after the interim answer.
    ExpectContinue,
}

const SENDINGS: [Sending; 5] = [
    Sending::Together,
    Sending::Late,
    Sending::Chunked,
    Sending::Large,
    Sending::ExpectContinue,
];

/// One HTTP/1.1 answer as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The server said `Connection: close`: a correct client opens a new connection.
    close: bool,
}

struct H1Conn {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl H1Conn {
    async fn open(addr: SocketAddr, ca_pem: &Path) -> io::Result<H1Conn> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(ca_pem)));
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = connector.connect(name, tcp).await?;
        Ok(H1Conn {
            tls,
            buf: Vec::new(),
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tls.write_all(bytes).await?;
        self.tls.flush().await
    }

    /// Reads one response head and its Content-Length body; interim 1xx answers are
    /// returned as they come (the caller decides what to do next).
    async fn read_answer(&mut self) -> io::Result<Answer> {
        let head_end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, head.clone()))?;
        let field = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .filter(|(n, _)| n.trim() == name)
                .map(|(_, v)| v.trim().to_string())
                .collect::<Vec<_>>()
        };
        let close = field("connection").iter().any(|v| v.contains("close"));
        let length: usize = if status < 200 {
            0
        } else {
            let values = field("content-length");
            assert!(
                field("transfer-encoding").is_empty() && values.len() == 1,
                "expected one Content-Length in:\n{head}"
            );
            values[0].parse().expect("Content-Length value")
        };
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        self.buf.drain(..head_end + length);
        Ok(Answer { status, close })
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.tls.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Sends one manifest PUT the way `sending` says and returns its final answer.
    async fn put(
        &mut self,
        path: &str,
        credentials: Option<&str>,
        body: &[u8],
        sending: Sending,
    ) -> io::Result<Answer> {
        let mut head = format!(
            "PUT {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: early-answers-test\r\n\
             Content-Type: {MANIFEST_TYPE}\r\n"
        );
        if let Some(credentials) = credentials {
            head.push_str(&format!("Authorization: {credentials}\r\n"));
        }
        if sending == Sending::Chunked {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        } else {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            if sending == Sending::ExpectContinue {
                head.push_str("Expect: 100-continue\r\n");
            }
            head.push_str("\r\n");
        }
        match sending {
            Sending::Together => {
                let mut all = head.into_bytes();
                all.extend_from_slice(body);
                self.write(&all).await?;
            }
            Sending::Late | Sending::Large => {
                self.write(head.as_bytes()).await?;
                tokio::time::sleep(Duration::from_millis(2)).await;
                self.write(body).await?;
            }
            Sending::Chunked => {
                let (first, second) = body.split_at(body.len() / 2);
                self.write(head.as_bytes()).await?;
                self.write(format!("{:x}\r\n", first.len()).as_bytes())
                    .await?;
                self.write(first).await?;
                tokio::time::sleep(Duration::from_millis(2)).await;
                let mut rest = format!("\r\n{:x}\r\n", second.len()).into_bytes();
                rest.extend_from_slice(second);
                rest.extend_from_slice(b"\r\n0\r\n\r\n");
                self.write(&rest).await?;
            }
            Sending::ExpectContinue => {
                self.write(head.as_bytes()).await?;
                let answer = self.read_answer().await?;
                if answer.status != 100 {
                    // A final answer instead of 100: the body is not sent (RFC 9110 §10.1.1);
                    // the server must then close, since it cannot know that.
                    return Ok(answer);
                }
                self.write(body).await?;
            }
        }
        loop {
            let answer = self.read_answer().await?;
            if answer.status >= 200 {
                return Ok(answer);
            }
        }
    }
}

#[derive(Default, Debug)]
struct Tally {
    /// Requests that got no answer at all: what issue 13 is about.
    lost: Vec<String>,
    /// Requests answered with another status than 401 (without credentials) or 201.
    wrong: Vec<String>,
    /// 401s answered keep-alive / with `Connection: close`, per sending.
    kept: [usize; 5],
    closed: [usize; 5],
    created: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_put_is_lost_after_a_401_on_http1() {
    let tmp = temp_dir();
    let (recorder, gate) = gate_with_recorder(tmp.path());
    let small = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec();
    let large = vec![b' '; 256 * 1024];
    let credentials = basic();
    let mut tally = Tally::default();
    let mut conn: Option<H1Conn> = None;
    let started = Instant::now();

    for round in 0..ROUNDS {
        let which = round % SENDINGS.len();
        let sending = SENDINGS[which];
        let body = if sending == Sending::Large {
            &large
        } else {
            &small
        };
        let path = format!("/v2/team/app/manifests/r{round}");
        for credentials in [None, Some(credentials.as_str())] {
            let what = format!(
                "round {round} ({sending:?}), {}",
                if credentials.is_some() {
                    "authenticated PUT"
                } else {
                    "PUT without credentials"
                }
            );
            let mut open = match conn.take() {
                Some(open) => open,
                None => H1Conn::open(gate.addr, &gate.pki.ca_pem)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: connect: {e}")),
            };
            let answer = tokio::time::timeout(
                Duration::from_secs(20),
                open.put(&path, credentials, body, sending),
            )
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
            match answer {
                Err(e) => tally.lost.push(format!("{what}: {e}")),
                Ok(answer) => {
                    match credentials {
                        None => {
                            if answer.status != 401 {
                                tally
                                    .wrong
                                    .push(format!("{what}: {} for 401", answer.status));
                            }
                            if answer.close {
                                tally.closed[which] += 1;
                            } else {
                                tally.kept[which] += 1;
                            }
                        }
                        Some(_) => {
                            if answer.status == 201 {
                                tally.created += 1;
                            } else {
                                tally
                                    .wrong
                                    .push(format!("{what}: {} for 201", answer.status));
                            }
                        }
                    }
                    if !answer.close {
                        conn = Some(open);
                    }
                }
            }
        }
    }
    eprintln!(
        "{ROUNDS} rounds in {:?}; 401 kept alive per sending {SENDINGS:?}: {:?}, closed: {:?}",
        started.elapsed(),
        tally.kept,
        tally.closed
    );
    // Every check is made, whichever fail: a lost request and a wrong keep-alive tell
    // different stories.
    let mut failures = Vec::new();
    if !tally.lost.is_empty() {
        failures.push(format!(
            "{} requests got no answer, first ones: {:#?}",
            tally.lost.len(),
            &tally.lost[..tally.lost.len().min(5)],
        ));
    }
    if !tally.wrong.is_empty() {
        failures.push(format!(
            "{} requests got the wrong status, first ones: {:#?}",
            tally.wrong.len(),
            &tally.wrong[..tally.wrong.len().min(5)],
        ));
    }
    if tally.created != ROUNDS {
        failures.push(format!("{} of {ROUNDS} PUTs created", tally.created));
    }
    let forwarded = recorder.requests().len();
    if forwarded != ROUNDS {
        failures.push(format!(
            "refused PUTs were forwarded: {forwarded} requests upstream for {ROUNDS} rounds"
        ));
    }
    // A small body is read and discarded, so the connection goes on; a large one or one
    // behind `Expect: 100-continue` is not read, and the answer says so.
    for (i, sending) in SENDINGS.iter().enumerate() {
        let small_body = matches!(
            sending,
            Sending::Together | Sending::Late | Sending::Chunked
        );
        if small_body && tally.closed[i] != 0 {
            failures.push(format!(
                "{sending:?}: a small body closed the connection ({} times)",
                tally.closed[i]
            ));
        }
        if !small_body && tally.kept[i] != 0 {
            failures.push(format!(
                "{sending:?}: an unread body was answered keep-alive ({} times)",
                tally.kept[i]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{failures:#?}\ngate log:\n{}",
        gate.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_gets_its_401_with_connection_close() {
    let tmp = temp_dir();
    let (_recorder, gate) = gate_with_recorder(tmp.path());
    let mut conn = H1Conn::open(gate.addr, &gate.pki.ca_pem)
        .await
        .expect("connect");
    // 100 bytes promised, 10 sent, then silence: the gate cannot find the next request's
    // start, so it must say it closes, and not keep the answer back for long.
    conn.write(
        b"PUT /v2/team/app/manifests/stall HTTP/1.1\r\nHost: localhost\r\n\
          Content-Length: 100\r\n\r\n0123456789",
    )
    .await
    .expect("write");
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), conn.read_answer())
        .await
        .expect("an answer within 10 s")
        .expect("an answer");
    assert_eq!(answer.status, 401);
    assert!(answer.close, "a stalled body was answered keep-alive");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the answer waited {:?} for a body that never came",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// HTTP/2: one connection, many streams answered before their bodies ended

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_put_is_lost_after_a_401_on_http2() {
    let tmp = temp_dir();
    let (recorder, gate) = gate_with_recorder(tmp.path());
    let mut config = tls_config(&gate.pki.ca_pem);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(gate.addr).await.expect("connect");
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let url = |round: usize| format!("https://localhost/v2/team/app/manifests/r{round}");
    let manifest = Bytes::from_static(br#"{"schemaVersion":2,"layers":[]}"#);
    let credentials = basic();
    let mut lost = Vec::new();

    for round in 0..ROUNDS {
        // Without credentials, the body still in flight: the first part sent, the rest held
        // back until the 401 is in (for every other round, a larger part than a window).
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let first = if round % 2 == 0 {
            manifest.slice(..10)
        } else {
            Bytes::from(vec![b' '; 96 * 1024])
        };
        let body = ChannelBody(rx).boxed();
        let feeder = tokio::spawn(async move {
            let _ = tx.send(first).await;
            // Held open until dropped after the answer.
            tx
        });
        let unauthenticated = request("PUT", &url(round))
            .header("content-type", MANIFEST_TYPE)
            .body(body)
            .expect("request");
        match tokio::time::timeout(
            Duration::from_secs(20),
            sender.send_request(unauthenticated),
        )
        .await
        {
            Ok(Ok(response)) => assert_eq!(response.status(), 401, "round {round}"),
            Ok(Err(e)) => lost.push(format!("round {round}, without credentials: {e}")),
            Err(_) => lost.push(format!("round {round}, without credentials: timed out")),
        }
        drop(feeder.await);

        let authenticated = request("PUT", &url(round))
            .header("content-type", MANIFEST_TYPE)
            .header("authorization", &credentials)
            .body(full(manifest.clone()))
            .expect("request");
        match tokio::time::timeout(Duration::from_secs(20), sender.send_request(authenticated))
            .await
        {
            Ok(Ok(response)) => assert_eq!(response.status(), 201, "round {round}"),
            Ok(Err(e)) => lost.push(format!("round {round}, authenticated: {e}")),
            Err(_) => lost.push(format!("round {round}, authenticated: timed out")),
        }
        if !lost.is_empty() {
            break;
        }
    }
    assert!(
        lost.is_empty(),
        "requests lost on one HTTP/2 connection: {lost:#?}\ngate log:\n{}",
        gate.log()
    );
    assert!(!connection.is_finished(), "the HTTP/2 connection ended");
    assert_eq!(recorder.requests().len(), ROUNDS);
}

/// A request body fed by hand through a channel; it ends when the sender is dropped.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

// ---------------------------------------------------------------------------------------
// Parallel cold logins

/// A gate whose one user's hash costs what a production bcrypt hash costs (cost 12, a few
/// hundred milliseconds here), so a login's price shows in its time.
fn gate_with_costly_hash(tmp: &Path) -> (Recorder, Gate) {
    let recorder = Recorder::start(|_| Reply::ok_json());
    std::fs::create_dir_all(tmp).expect("mkdir");
    let file = tmp.join("costly.htpasswd");
    let out = util::run(
        std::process::Command::new("htpasswd")
            .args(["-b", "-B", "-C", "12", "-c"])
            .arg(&file)
            .args([USER, PASSWORD]),
    );
    assert!(out.status.success(), "htpasswd: {}", describe(&out));
    let gate = Gate::start(
        tmp,
        GateConfig::new(recorder.url()).extra_toml(&format!(
            "\n[auth]\nmode = \"basic\"\nhtpasswd = [\"{}\"]\n",
            file.display()
        )),
    );
    (recorder, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_parallel_cold_logins_cost_one_verification() {
    let tmp = temp_dir();
    let login = |client: util::client::HttpsClient, url: String| async move {
        let response = client
            .send(
                request("GET", &url)
                    .header("authorization", basic())
                    .body(util::client::empty())
                    .expect("request"),
            )
            .await;
        response.status().as_u16()
    };
    // One verification alone, as the yardstick: a fresh gate's first login. The gate's CPU
    // time, not the wall clock, so that a machine busy with other tests cannot skew it.
    let (_recorder, gate) = gate_with_costly_hash(&tmp.path().join("one"));
    let cpu_before = gate.cpu_time();
    assert_eq!(
        login(gate.client(util::client::Proto::Http1), gate.url("/v2/")).await,
        200
    );
    let one = gate.cpu_time() - cpu_before;
    drop(gate);

    // A new gate (empty credential cache), 16 clients at once, each on its own connection,
    // as `docker compose pull` starts them.
    let (_recorder, gate) = gate_with_costly_hash(&tmp.path().join("cold"));
    let cpu_before = gate.cpu_time();
    let logins = (0..16).map(|_| {
        let attempt = login(gate.client(util::client::Proto::Http1), gate.url("/v2/"));
        tokio::spawn(attempt)
    });
    for login in logins.collect::<Vec<_>>() {
        let status = login.await.expect("login task");
        assert_eq!(status, 200, "a parallel cold login was refused");
    }
    let sixteen = gate.cpu_time() - cpu_before;
    let log = gate.log();
    eprintln!("gate CPU for one cold login: {one:?}; for 16 parallel cold logins: {sixteen:?}");
    assert!(
        !log.contains("throttl"),
        "a correct login was throttled:\n{log}"
    );
    // bcrypt at cost 12 is most of a login's CPU: one verification plus 16 handshakes stays
    // well under the 16 verifications the logins cost when each verified on its own.
    assert!(
        one >= Duration::from_millis(50),
        "one cost-12 bcrypt login took only {one:?} of CPU: the yardstick measures nothing"
    );
    assert!(
        sixteen < one * 3,
        "16 parallel logins took {sixteen:?} of CPU, one takes {one:?}: they were verified one by one"
    );
}

// ---------------------------------------------------------------------------------------
// Real clients and the real registry

#[test]
fn skopeo_and_docker_push_twenty_images_in_parallel_through_auth() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url).basic_auth(&[(USER, PASSWORD)]),
    );
    let creds = format!("{USER}:{PASSWORD}");

    // skopeo: 20 images at once, each copied back and compared by manifest digest.
    let images: Vec<_> = (0..20)
        .map(|i| oci_image(&tmp.path().join(format!("skopeo-{i}")), 2, 64 * 1024))
        .collect();
    std::thread::scope(|scope| {
        let pushes: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, image)| {
                let (gate, creds) = (&gate, &creds);
                let target = format!("parallel/skopeo-{i}:v1");
                scope.spawn(move || gate.push(creds, &image.reference(), &target))
            })
            .collect();
        for (i, push) in pushes.into_iter().enumerate() {
            let out = push.join().expect("skopeo thread");
            assert!(
                out.status.success(),
                "skopeo push {i}: {}\ngate log:\n{}",
                describe(&out),
                gate.log()
            );
        }
    });
    for (i, image) in images.iter().enumerate() {
        let reference = format!("parallel/skopeo-{i}:v1");
        assert_eq!(
            gate.host().manifest_digest(&creds, &reference),
            Some(image.manifest_digest.clone()),
            "image {i}"
        );
    }

    // docker: 20 images pushed at once by one daemon, removed, pulled back, compared.
    let dockerd = Dockerd::start(tmp.path());
    dockerd.docker_ok(&["login", "-u", USER, "-p", PASSWORD, &gate.authority()]);
    let names: Vec<String> = (0..20)
        .map(|i| format!("{}/parallel/docker-{i:02}:v1", gate.authority()))
        .collect();
    let ids: Vec<String> = names.iter().map(|n| dockerd.import_image(n)).collect();
    std::thread::scope(|scope| {
        let pushes: Vec<_> = names
            .iter()
            .map(|name| scope.spawn(|| dockerd.docker(&["push", name])))
            .collect();
        for (name, push) in names.iter().zip(pushes) {
            let out = push.join().expect("docker push thread");
            assert!(
                out.status.success(),
                "docker push {name}: {}\ngate log:\n{}",
                describe(&out),
                gate.log()
            );
        }
    });
    let mut rmi = vec!["rmi"];
    rmi.extend(names.iter().map(String::as_str));
    dockerd.docker_ok(&rmi);
    for (name, id) in names.iter().zip(&ids) {
        dockerd.docker_ok(&["pull", name]);
        assert_eq!(&dockerd.image_id(name), id, "{name} pulled back differs");
    }
}
