//! The core promise, proved with real processes: the gate terminates TLS in front of a real
//! distribution registry, real clients (skopeo, dockerd) push and pull through it, large
//! blobs stream without buffering, forwarding headers are the gate's and not the client's,
//! errors speak the registry's JSON, shutdown is graceful, and bad configs fail clearly.

use crate::util;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use util::client::{
    empty, full, header, raw_https_exchange, read_hashing, request, text, tls_handshake, Framing,
    HttpsClient, Negotiated, Proto, PseudoRandomBody,
};
use util::docker::Dockerd;
use util::gate::{gate_command, Gate, GateConfig};
use util::image::{oci_image, read_oci_layout, skopeo};
use util::pki::Pki;
use util::recorder::{Recorder, Reply};
use util::registry::Registry;
use util::{describe, pseudo_random_digest, run, sha256_digest, temp_dir, write_file};

const GIB: u64 = 1 << 30;
/// The gate streams; a 1 GiB transfer must not show up in its peak RSS.
const MAX_GATE_HWM_KIB: u64 = 64 * 1024;

/// Fails the test with `what` if `future` takes longer than `secs`: a hang is a failure with a
/// name, not a CI timeout.
async fn within<T>(secs: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {secs}s"))
}

/// `url` with `key=value` added to its query.
fn with_query(url: &str, key: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{key}={value}")
}

fn assert_gate_memory_bounded(gate: &Gate) {
    let hwm = gate.vm_hwm_kib();
    // Visible with --nocapture: the margin matters as much as the verdict.
    eprintln!("gate VmHWM: {hwm} KiB");
    assert!(
        hwm < MAX_GATE_HWM_KIB,
        "gate peak RSS {hwm} KiB >= {MAX_GATE_HWM_KIB} KiB: it buffers bodies instead of streaming"
    );
}

// ---------------------------------------------------------------------------------------
// Real clients through the gate

#[test]
fn skopeo_pushes_and_pulls_a_three_layer_image_with_strict_tls() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url).basic_auth(&[("pusher", "pusher-secret")]),
    );
    let image = oci_image(&tmp.path().join("pushed"), 3, 2 << 20);
    let creds = "pusher:pusher-secret";

    // --preserve-digests: skopeo must fail rather than silently convert what it copies.
    gate.push_ok(creds, &image.reference(), "gate-test/skopeo:v1");
    let stored = registry.stored_blob_digests();
    for digest in image.layer_digests.iter().chain([&image.config_digest]) {
        assert!(
            stored.contains(digest),
            "registry lacks blob {digest}: {stored:?}"
        );
    }

    assert_eq!(
        gate.host().manifest_digest(creds, "gate-test/skopeo:v1"),
        Some(image.manifest_digest.clone()),
        "manifest bytes changed on the way through the gate"
    );

    let pulled_dir = tmp.path().join("pulled");
    gate.pull_ok(creds, "gate-test/skopeo:v1", &pulled_dir);
    // read_oci_layout re-hashes every blob it lists.
    let pulled = read_oci_layout(&pulled_dir);
    assert_eq!(pulled.manifest_digest, image.manifest_digest);
    assert_eq!(pulled.config_digest, image.config_digest);
    assert_eq!(pulled.layer_digests, image.layer_digests);

    // Strict means strict: without the test CA the gate's certificate is refused.
    let remote = format!("docker://{}/gate-test/skopeo:v1", gate.authority());
    let untrusted = skopeo(&["inspect", "--raw", "--creds", creds, &remote]);
    assert!(
        !untrusted.status.success(),
        "skopeo trusted the gate without the test CA:\n{}",
        describe(&untrusted)
    );
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("certificate"),
        "expected a certificate error:\n{}",
        describe(&untrusted)
    );
}

#[test]
fn docker_logs_in_pushes_and_pulls_through_the_gate() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url).basic_auth(&[("builder", "builder-secret")]),
    );
    let dockerd = Dockerd::start(tmp.path());
    let name = format!("{}/gate-test/docker:v1", gate.authority());
    let image_id = dockerd.import_image(&name);

    let wrong = dockerd.docker(&["login", "-u", "builder", "-p", "wrong", &gate.authority()]);
    assert!(
        !wrong.status.success(),
        "login with a wrong password succeeded:\n{}",
        describe(&wrong)
    );
    dockerd.docker_ok(&[
        "login",
        "-u",
        "builder",
        "-p",
        "builder-secret",
        &gate.authority(),
    ]);
    dockerd.docker_ok(&["push", &name]);
    dockerd.docker_ok(&["rmi", &name]);
    assert!(
        !dockerd
            .docker(&["image", "inspect", &name])
            .status
            .success(),
        "image still present after rmi; the pull would prove nothing"
    );
    dockerd.docker_ok(&["pull", &name]);
    assert_eq!(
        dockerd.image_id(&name),
        image_id,
        "pulled image differs from pushed"
    );
}

// ---------------------------------------------------------------------------------------
// Large blobs stream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_blob_uploaded_in_a_chunked_patch_streams_through_the_gate() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(tmp.path(), GateConfig::new(&registry.url));
    let client = gate.client(Proto::Http1);

    let location = start_upload(&gate, &client, "gate-test/chunked").await;
    let (body, digest) = PseudoRandomBody::new(0xC0FFEE, GIB, Framing::Chunked);
    let patch = request("PATCH", &location)
        .header("content-type", "application/octet-stream")
        .body(body.boxed())
        .expect("PATCH request");
    let response = within(600, "chunked PATCH of 1 GiB", client.send(patch)).await;
    assert_eq!(response.status(), 202, "PATCH: {}", text(response).await);
    assert_eq!(header(&response, "range"), Some("0-1073741823"));
    let location = header(&response, "location")
        .expect("PATCH answer has a Location")
        .to_string();
    let (sent, digest) = digest.finish();
    assert_eq!(sent, GIB);

    let put = request("PUT", &with_query(&location, "digest", &digest))
        .body(empty())
        .expect("PUT request");
    let response = within(120, "PUT ?digest=", client.send(put)).await;
    assert_eq!(response.status(), 201, "PUT: {}", text(response).await);
    assert_eq!(
        header(&response, "docker-content-digest"),
        Some(digest.as_str())
    );
    assert_gate_memory_bounded(&gate);

    assert_blob_downloads(&gate, &client, "gate-test/chunked", &digest, GIB).await;
    assert_gate_memory_bounded(&gate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_blob_uploaded_in_a_monolithic_put_streams_through_the_gate() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(tmp.path(), GateConfig::new(&registry.url));
    let client = gate.client(Proto::Http1);
    let seed = 0xBEEF;
    let digest = tokio::task::spawn_blocking(move || pseudo_random_digest(seed, GIB))
        .await
        .expect("digest task");

    let location = start_upload(&gate, &client, "gate-test/monolithic").await;
    let (body, sent) = PseudoRandomBody::new(seed, GIB, Framing::ContentLength);
    let put = request("PUT", &with_query(&location, "digest", &digest))
        .header("content-type", "application/octet-stream")
        .body(body.boxed())
        .expect("PUT request");
    let response = within(600, "monolithic PUT of 1 GiB", client.send(put)).await;
    assert_eq!(response.status(), 201, "PUT: {}", text(response).await);
    assert_eq!(sent.finish(), (GIB, digest.clone()));
    assert_gate_memory_bounded(&gate);

    // Down over HTTP/2, so both protocols carry a large body.
    let h2 = gate.client(Proto::Http2);
    assert_blob_downloads(&gate, &h2, "gate-test/monolithic", &digest, GIB).await;
    assert_gate_memory_bounded(&gate);
}

/// `POST /v2/<repo>/blobs/uploads/` and the upload URL it returns, which must already point
/// at the gate (the registry builds it from the Host and X-Forwarded-Proto it was given).
async fn start_upload(gate: &Gate, client: &HttpsClient, repo: &str) -> String {
    let post = request("POST", &gate.url(&format!("/v2/{repo}/blobs/uploads/")))
        .body(empty())
        .expect("POST request");
    let response = within(30, "POST upload", client.send(post)).await;
    assert_eq!(response.status(), 202, "POST: {}", text(response).await);
    let location = header(&response, "location")
        .expect("POST answer has a Location")
        .to_string();
    assert!(
        location.starts_with(&gate.url("/v2/")),
        "upload Location does not point at the gate: {location}"
    );
    location
}

async fn assert_blob_downloads(
    gate: &Gate,
    client: &HttpsClient,
    repo: &str,
    digest: &str,
    len: u64,
) {
    let url = gate.url(&format!("/v2/{repo}/blobs/{digest}"));
    let response = within(30, "GET blob", client.get(&url)).await;
    assert_eq!(response.status(), 200, "GET blob: {}", text(response).await);
    let (got_len, got_digest) = within(600, "download blob", read_hashing(response.into_body()))
        .await
        .expect("blob download interrupted");
    assert_eq!((got_len, got_digest.as_str()), (len, digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_both_negotiate_h2_and_http_1_1() {
    use rustls::version::{TLS12, TLS13};
    use rustls::ProtocolVersion;

    let recorder = Recorder::start(|_| Reply::ok_json());
    let tmp = temp_dir();
    let gate = Gate::start(tmp.path(), GateConfig::new(recorder.url()));
    for (offered, expected) in [
        (&TLS12, ProtocolVersion::TLSv1_2),
        (&TLS13, ProtocolVersion::TLSv1_3),
    ] {
        for alpn in [b"h2".as_slice(), b"http/1.1".as_slice()] {
            let negotiated = within(
                10,
                "TLS handshake",
                tls_handshake(gate.addr, &gate.pki.ca_pem, &[offered], &[alpn]),
            )
            .await
            .unwrap_or_else(|e| panic!("{expected:?} with ALPN {alpn:?}: {e}"));
            assert_eq!(
                negotiated,
                Negotiated {
                    version: expected,
                    alpn: Some(alpn.to_vec())
                }
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the upstream sees

/// A request carrying every header a client must not be able to forge or push through.
fn spoofing_request(host: &str) -> String {
    format!(
        "GET /v2/ HTTP/1.1\r\n\
         Host: {host}\r\n\
         User-Agent: registry-gate-tests\r\n\
         X-Forwarded-For: 6.6.6.6\r\n\
         X-Real-IP: 6.6.6.6\r\n\
         X-Forwarded-Proto: http\r\n\
         X-Forwarded-Host: evil.example\r\n\
         X-Forwarded-Port: 1\r\n\
         Forwarded: for=6.6.6.6;proto=http;host=evil.example\r\n\
         Connection: close, x-foo\r\n\
         X-Foo: named-by-connection\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         X-End-To-End: kept\r\n\
         \r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_the_gates_forwarding_headers_and_no_hop_by_hop_headers() {
    let recorder = Recorder::start(|_| Reply::ok_json());
    let tmp = temp_dir();
    let gate = Gate::start(tmp.path(), GateConfig::new(recorder.url()));
    let host = format!("registry.test:{}", gate.port());

    let response = raw_https_exchange(
        gate.addr,
        &gate.pki.ca_pem,
        "registry.test",
        spoofing_request(&host).as_bytes(),
        Duration::from_secs(10),
    )
    .await
    .expect("raw request through the gate");
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "response:\n{response}"
    );
    assert!(
        response
            .to_ascii_lowercase()
            .contains("docker-distribution-api-version: registry/2.0"),
        "the gate must add the API version header to /v2/ answers:\n{response}"
    );

    let seen = recorder.single_request();
    assert_eq!(
        seen.header("host"),
        Some(host.as_str()),
        "Host must be preserved: {seen:#?}"
    );
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "{seen:#?}"
    );
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"), "{seen:#?}");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{seen:#?}");
    let forwarded_host = seen
        .header("x-forwarded-host")
        .expect("X-Forwarded-Host set");
    assert!(
        forwarded_host == host || forwarded_host == "registry.test",
        "X-Forwarded-Host {forwarded_host:?} is not the client's Host {host:?}"
    );
    let port = gate.port().to_string();
    assert_eq!(
        seen.header("x-forwarded-port"),
        Some(port.as_str()),
        "{seen:#?}"
    );
    for (name, value) in &seen.headers {
        assert!(
            !value.contains("6.6.6.6") && !value.contains("evil.example"),
            "spoofed value reached the upstream in {name}: {value}"
        );
    }
    for hop in ["keep-alive", "te", "proxy-authorization", "x-foo"] {
        assert!(
            seen.header_all(hop).is_empty(),
            "hop-by-hop header {hop} reached the upstream: {seen:#?}"
        );
    }
    // The gate may manage its own upstream connection, but not with the client's tokens.
    for value in seen.header_all("connection") {
        assert!(
            !value.contains("x-foo"),
            "client's Connection forwarded: {value}"
        );
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    assert_eq!(seen.header("user-agent"), Some("registry-gate-tests"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_forwarded_for_is_extended_not_replaced() {
    let recorder = Recorder::start(|_| Reply::ok_json());
    let tmp = temp_dir();
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url()).trusted_proxies(&["127.0.0.0/8"]),
    );
    let client = gate.client(Proto::Http1);
    let get = request("GET", &gate.url("/v2/"))
        .header("x-forwarded-for", "203.0.113.7")
        .body(empty())
        .expect("GET request");
    let response = within(30, "GET /v2/", client.send(get)).await;
    assert_eq!(response.status(), 200);

    let seen = recorder.single_request();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1"),
        "{seen:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Answers the gate shapes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_on_the_upstream_origin_is_rewritten_to_the_clients_host() {
    let recorder = Recorder::start(|req| {
        if req.method == "POST" {
            let upstream = req.local_addr;
            Reply::status(202).header(
                "Location",
                &format!("http://{upstream}/v2/x/blobs/uploads/abc?_state=s1"),
            )
        } else {
            // Redirects to blob storage elsewhere (S3 and the like) must pass untouched.
            Reply::status(307).header("Location", "https://storage.example/bucket/blob?sig=1")
        }
    });
    let tmp = temp_dir();
    let gate = Gate::start(tmp.path(), GateConfig::new(recorder.url()));
    let client = gate.client(Proto::Http1);
    let host = format!("registry.test:{}", gate.port());

    let post = request("POST", &gate.url("/v2/x/blobs/uploads/"))
        .header("host", &host)
        .body(empty())
        .expect("POST request");
    let response = within(30, "POST", client.send(post)).await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        header(&response, "location"),
        Some(format!("https://{host}/v2/x/blobs/uploads/abc?_state=s1").as_str())
    );

    let blob = sha256_digest(b"stored elsewhere");
    let get = request("GET", &gate.url(&format!("/v2/x/blobs/{blob}")))
        .header("host", &host)
        .body(empty())
        .expect("GET request");
    let response = within(30, "GET", client.send(get)).await;
    assert_eq!(response.status(), 307);
    assert_eq!(
        header(&response, "location"),
        Some("https://storage.example/bucket/blob?sig=1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_answers_502_in_the_registry_error_format() {
    let closed_port = util::free_port();
    let tmp = temp_dir();
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(format!("http://127.0.0.1:{closed_port}")),
    );
    for proto in [Proto::Http1, Proto::Http2] {
        let client = gate.client(proto);
        let response = within(30, "GET /v2/", client.get(&gate.url("/v2/"))).await;
        assert_eq!(response.status(), 502, "{proto:?}");
        assert_eq!(
            header(&response, "docker-distribution-api-version"),
            Some("registry/2.0"),
            "{proto:?}"
        );
        let content_type = header(&response, "content-type")
            .unwrap_or_default()
            .to_string();
        assert!(
            content_type.contains("json"),
            "{proto:?}: content-type {content_type:?}"
        );
        let body = text(response).await;
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{proto:?}: 502 body is not JSON ({e}): {body}"));
        let error = &json["errors"][0];
        assert!(
            error["code"].is_string(),
            "{proto:?}: no errors[0].code: {body}"
        );
        assert!(
            error["message"].is_string(),
            "{proto:?}: no errors[0].message: {body}"
        );
        assert!(
            error.get("detail").is_some(),
            "{proto:?}: no errors[0].detail: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_download_finish_then_exits_zero() {
    const LEN: u64 = 48 << 20;
    const SEED: u64 = 0x5EED;
    /// Slow enough that the transfer outlasts every buffer between the gate and us.
    const BYTES_PER_SEC: f64 = 16.0 * 1024.0 * 1024.0;
    let recorder = Recorder::start(|_| {
        Reply::status(200)
            .header("Content-Type", "application/octet-stream")
            .pseudo_random(SEED, LEN)
    });
    let tmp = temp_dir();
    let mut gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url()).shutdown_grace("30s"),
    );
    let client = gate.client(Proto::Http1);
    let expected = pseudo_random_digest(SEED, LEN);

    let url = gate.url(&format!("/v2/gate-test/slow/blobs/{expected}"));
    let response = within(30, "GET slow blob", client.get(&url)).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut received = 0u64;
    let mut signalled = false;
    let started = Instant::now();
    while let Some(frame) = within(30, "next frame", body.frame()).await {
        let frame = frame.unwrap_or_else(|e| panic!("download cut at {received} bytes: {e}"));
        let Some(data) = frame.data_ref() else {
            continue;
        };
        sha2::Digest::update(&mut hasher, data);
        received += data.len() as u64;

        if !signalled && received >= 2 << 20 {
            signalled = true;
            gate.signal("TERM");
            // The listener closes once the gate has handled the signal, which a busy machine
            // may delay: wait for that rather than for a fixed time.
            let closed_by = Instant::now() + Duration::from_secs(10);
            while util::accepts_tcp(gate.addr) && Instant::now() < closed_by {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                gate.try_exit().is_none(),
                "gate exited with a transfer in flight"
            );
            let probe = gate.client(Proto::Http1);
            let late_request = request("GET", &gate.url("/v2/"))
                .body(empty())
                .expect("GET request");
            let late =
                tokio::time::timeout(Duration::from_secs(3), probe.try_send(late_request)).await;
            assert!(
                !matches!(late, Ok(Ok(_))),
                "gate accepted a new request after SIGTERM"
            );
        }
        let due = Duration::from_secs_f64(received as f64 / BYTES_PER_SEC);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    assert!(signalled, "the body ended before the signal was sent");
    let digest = format!("sha256:{}", util::hex(&sha2::Digest::finalize(hasher)));
    assert_eq!((received, digest), (LEN, expected), "download not intact");

    let status = gate
        .wait_exit(Duration::from_secs(10))
        .expect("gate still running 10 s after its last transfer finished");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_on_a_unix_socket_is_reachable_through_the_gate() {
    let tmp = temp_dir();
    let registry = Registry::start_unix(tmp.path());
    let gate = Gate::start(tmp.path(), GateConfig::new(&registry.url));
    let client = gate.client(Proto::Http2);

    let response = within(30, "GET /v2/", client.get(&gate.url("/v2/"))).await;
    assert_eq!(response.status(), 200);

    let blob = b"a small blob over a unix socket".to_vec();
    let digest = sha256_digest(&blob);
    // distribution 2.8 ignores a body on POST (single-request upload is unimplemented), so
    // a monolithic upload is POST then PUT ?digest= with the body.
    let location = start_upload(&gate, &client, "gate-test/unix").await;
    let put = request("PUT", &with_query(&location, "digest", &digest))
        .header("content-type", "application/octet-stream")
        .body(full(blob.clone()))
        .expect("PUT request");
    let response = within(30, "monolithic PUT", client.send(put)).await;
    assert_eq!(response.status(), 201, "PUT: {}", text(response).await);
    assert_blob_downloads(&gate, &client, "gate-test/unix", &digest, blob.len() as u64).await;
}

// ---------------------------------------------------------------------------------------
// Configuration and start-up failures

/// A valid config for a gate that is never started: PKI in `dir/pki`, upstream nowhere.
fn write_config(dir: &Path, edit: impl FnOnce(String) -> String) -> std::path::PathBuf {
    Pki::localhost(&dir.join("pki"));
    let listen = SocketAddr::from(([127, 0, 0, 1], util::free_port()));
    let toml =
        GateConfig::new("http://127.0.0.1:5000").to_toml(listen, "pki/cert.pem", "pki/key.pem");
    let path = dir.join("proxy.toml");
    write_file(&path, edit(toml));
    path
}

fn check(config: &Path) -> std::process::Output {
    run(gate_command().arg("check").arg("--config").arg(config))
}

fn assert_config_rejected(output: &std::process::Output, needles: &[&str]) {
    assert_eq!(output.status.code(), Some(2), "{}", describe(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr does not name {needle:?}:\n{}",
            describe(output)
        );
    }
}

#[test]
fn check_accepts_a_good_config_with_one_summary_line() {
    let tmp = temp_dir();
    let config = write_config(tmp.path(), |toml| toml);
    let output = check(&config);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = all.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one summary line:\n{}",
        describe(&output)
    );
}

#[test]
fn check_names_an_unknown_key() {
    let tmp = temp_dir();
    let config = write_config(tmp.path(), |toml| {
        toml.replace("[server]\n", "[server]\nshutdown_grase = \"10s\"\n")
    });
    assert_config_rejected(&check(&config), &["shutdown_grase"]);
}

#[test]
fn check_names_the_line_of_a_toml_syntax_error() {
    let tmp = temp_dir();
    let mut broken_line = 0;
    let config = write_config(tmp.path(), |toml| {
        let lines: Vec<String> = toml
            .lines()
            .enumerate()
            .map(|(i, line)| {
                if line.starts_with("read_timeout") {
                    broken_line = i + 1;
                    "read_timeout = \"900s".to_string() // unterminated string
                } else {
                    line.to_string()
                }
            })
            .collect();
        lines.join("\n") + "\n"
    });
    assert!(broken_line > 0, "the template has a read_timeout line");
    let output = check(&config);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("line {broken_line}"))
            || stderr.contains(&format!(":{broken_line}:")),
        "stderr does not name line {broken_line}:\n{}",
        describe(&output)
    );
}

#[test]
fn check_names_a_missing_certificate_file() {
    let tmp = temp_dir();
    let config = write_config(tmp.path(), |toml| {
        toml.replace("pki/cert.pem", "pki/missing.pem")
    });
    assert_config_rejected(&check(&config), &["pki/missing.pem"]);
}

#[test]
fn check_reports_every_error_not_just_the_first() {
    let tmp = temp_dir();
    let config = write_config(tmp.path(), |toml| {
        toml.replace("shutdown_grace = \"30s\"", "shutdown_grace = \"soon\"")
            .replace("connect_timeout = \"5s\"", "connect_timeout = \"later\"")
    });
    assert_config_rejected(&check(&config), &["shutdown_grace", "connect_timeout"]);
}

#[test]
fn run_exits_2_when_the_port_is_taken_and_leaves_nothing_running() {
    let tmp = temp_dir();
    let holder = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let taken = holder.local_addr().expect("held address");
    let config = write_config(tmp.path(), |toml| {
        let listen = toml
            .lines()
            .find(|l| l.starts_with("listen"))
            .expect("listen line")
            .to_string();
        toml.replace(&listen, &format!("listen = \"{taken}\""))
    });

    let mut child = gate_command()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn registry-gate");
    let exited = util::wait_until(Duration::from_secs(10), || {
        child.try_wait().expect("try_wait").is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("gate output");
    assert!(
        exited,
        "gate kept running on a taken port:\n{}",
        describe(&output)
    );
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&taken.port().to_string()),
        "the error does not name the address:\n{}",
        describe(&output)
    );
    assert!(
        processes_mentioning(&config).is_empty(),
        "a process still runs with {}",
        config.display()
    );
}

/// Each listener's taken port is reported with the key that names it: the message used to
/// send the operator to `[server] listen` whichever listener failed.
#[test]
fn a_taken_port_is_reported_with_the_key_of_its_listener() {
    let mut checked = 0;
    for key in [
        "[server] listen",
        "[server] http_listen",
        "[metrics] listen",
    ] {
        let tmp = temp_dir();
        let holder = TcpListener::bind("127.0.0.1:0").expect("hold a port");
        let taken = holder.local_addr().expect("held address");
        let config = write_config(tmp.path(), |toml| {
            let listen = toml
                .lines()
                .find(|l| l.starts_with("listen"))
                .expect("listen line")
                .to_string();
            match key {
                "[server] listen" => toml.replace(&listen, &format!("listen = \"{taken}\"")),
                "[server] http_listen" => {
                    toml.replace(&listen, &format!("{listen}\nhttp_listen = \"{taken}\""))
                }
                _ => format!("{toml}\n[metrics]\nlisten = \"{taken}\"\n"),
            }
        });
        let output = run(gate_command()
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null()));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{key}: {}",
            describe(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let change = format!("change {key})");
        assert!(
            stderr.contains(&change) && stderr.contains(&taken.to_string()),
            "{key}: the message does not say {change:?} for {taken}:\n{}",
            describe(&output)
        );
        for other in [
            "[server] listen",
            "[server] http_listen",
            "[metrics] listen",
        ] {
            assert!(
                other == key || !stderr.contains(&format!("change {other})")),
                "{key}: the message names {other}:\n{}",
                describe(&output)
            );
        }
        drop(holder);
        checked += 1;
    }
    assert_eq!(checked, 3);
}

/// Pids whose command line mentions `path`.
fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&needle)
                .then_some(pid)
        })
        .collect()
}

#[test]
fn check_names_a_key_that_does_not_belong_to_the_certificate() {
    let tmp = temp_dir();
    // A second PKI's key: valid PEM, wrong key.
    let other = Pki::localhost(&tmp.path().join("other"));
    let config = write_config(tmp.path(), |toml| {
        toml.replace("pki/key.pem", &other.key_pem.display().to_string())
    });
    assert_config_rejected(&check(&config), &["does not belong to the certificate"]);
}

/// Everything the gate answers to `request` on a fresh connection, or the error the client
/// saw (so a failed assertion shows a reset as a reset, not as an empty answer).
async fn raw_answer(gate: &Gate, request: &[u8], timeout_secs: u64) -> String {
    raw_https_exchange(
        gate.addr,
        &gate.pki.ca_pem,
        "localhost",
        request,
        Duration::from_secs(timeout_secs),
    )
    .await
    .unwrap_or_else(|e| format!("an error: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431_and_the_gate_keeps_serving() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(tmp.path(), GateConfig::new(recorder.url()));
    let huge = "a".repeat(128 * 1024);
    let request = format!("GET /v2/ HTTP/1.1\r\nHost: localhost\r\nX-Big: {huge}\r\n\r\n");
    let answer = raw_answer(&gate, request.as_bytes(), 10).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "expected 431, got: {answer:.200}"
    );
    assert!(
        recorder.requests().is_empty(),
        "the oversized request was forwarded"
    );

    let client = gate.client(Proto::Http1);
    let response = within(30, "GET /v2/ after", client.get(&gate.url("/v2/"))).await;
    assert_eq!(
        response.status(),
        200,
        "the gate stopped serving after a bad request"
    );
}

/// A refused upload is answered before its body is read; the client, still sending, must see
/// the 401 rather than a reset (the gate lingers on close as nginx does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_gets_its_answer_while_the_client_is_still_sending() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url()).basic_auth(&[("alice", "secret")]),
    );
    let body_len = 16 * 1024 * 1024;
    let mut request = format!(
        "PUT /v2/team/app/blobs/uploads/0b1e?digest=sha256:{} HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {body_len}\r\n\r\n",
        "0".repeat(64)
    )
    .into_bytes();
    request.resize(request.len() + body_len, b'x');
    let answer = raw_answer(&gate, &request, 30).await;
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "expected 401, got: {answer:.200}"
    );
    assert!(
        recorder.requests().is_empty(),
        "the refused upload was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_request_is_closed_at_the_idle_timeout() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url()).server_toml("idle_timeout = \"2s\"\n"),
    );
    let started = Instant::now();
    // Handshake, then silence: the gate must hang up by itself.
    let result = raw_https_exchange(
        gate.addr,
        &gate.pki.ca_pem,
        "localhost",
        b"",
        Duration::from_secs(20),
    )
    .await;
    let waited = started.elapsed();
    assert!(
        !matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "the idle connection was still open after 20 s"
    );
    assert!(
        waited >= Duration::from_millis(1500),
        "closed too early: {waited:?}"
    );

    // A request in flight is not idle: a 4 s answer on a 2 s idle timeout still arrives.
    let slow = Recorder::start(|_| Reply::ok_json().delay(Duration::from_secs(4)));
    let gate = Gate::start(
        &tmp.path().join("slow"),
        GateConfig::new(slow.url()).server_toml("idle_timeout = \"2s\"\n"),
    );
    let client = gate.client(Proto::Http1);
    let response = within(30, "slow answer", client.get(&gate.url("/v2/"))).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_silent_past_the_read_timeout_gets_504_in_the_registry_format() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json().delay(Duration::from_secs(15)));
    let mut config = GateConfig::new(recorder.url());
    config.read_timeout = "1s".into();
    let gate = Gate::start(tmp.path(), config);
    let client = gate.client(Proto::Http1);
    let started = Instant::now();
    let response = within(30, "GET /v2/", client.get(&gate.url("/v2/"))).await;
    assert_eq!(response.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "504 came only after the registry answered"
    );
    assert_eq!(
        header(&response, "docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let body = text(response).await;
    let json: serde_json::Value = serde_json::from_str(&body).expect("504 body is JSON");
    assert_eq!(json["errors"][0]["code"], "UNAVAILABLE", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_address_limit_are_closed_and_slots_come_back() {
    use std::sync::Arc;
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url()).server_toml("max_connections_per_ip = 2\n"),
    );
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(util::client::tls_config(&gate.pki.ca_pem)));
    let connect = || {
        let connector = connector.clone();
        let addr = gate.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            connector.connect(name, tcp).await
        }
    };
    let first = within(10, "first", connect())
        .await
        .expect("first connection");
    let second = within(10, "second", connect())
        .await
        .expect("second connection");
    let third = within(10, "third", connect()).await;
    assert!(
        third.is_err(),
        "a third connection from one address was served"
    );
    assert!(
        gate.log().contains("connection limit reached"),
        "{}",
        gate.log()
    );

    drop(first);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = connect().await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        again.is_some(),
        "the slot of a closed connection never came back"
    );
    drop(second);
}
