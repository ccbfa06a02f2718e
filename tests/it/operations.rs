//! What an operator runs the gate with day to day: Prometheus metrics after real traffic,
//! per-action address rules, and the PROXY protocol behind a balancer (headers written by
//! hand, as HAProxy or a cloud L4 balancer sends them).

use crate::util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use util::client::Proto;
use util::gate::{Gate, GateConfig};
use util::image::oci_image;
use util::netns::Netns;
use util::recorder::{Recorder, Reply};
use util::registry::Registry;
use util::{describe, run, runtime, temp_dir, wait_until};

/// `GET /metrics` over plain HTTP, parsed into series -> value.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let mut tcp = TcpStream::connect(addr).expect("connect to the metrics listener");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .expect("write scrape");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("read scrape");
    assert!(text.starts_with("HTTP/1.1 200"), "scrape failed:\n{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every series of `name` whose labels contain all of `labels`.
fn sum(metrics: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            (series.as_str() == name || series.starts_with(&format!("{name}{{")))
                && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

/// The real registry behind a gate with one user, at most three connections per address and
/// a metrics listener; returns them with the listener's address.
fn metered_gate(tmp: &Path) -> (Registry, Gate, SocketAddr) {
    let registry = Registry::start(tmp);
    let gate = Gate::start(
        tmp,
        GateConfig::new(&registry.url)
            .basic_auth(&[("builder", "builder-secret")])
            .server_toml("max_connections_per_ip = 3\n")
            .extra_toml("\n[metrics]\nlisten = \"127.0.0.1:0\"\n"),
    );
    // Port 0: the gate says which port the kernel gave its metrics listener.
    let mut metrics_addr = None;
    util::wait_until(Duration::from_secs(5), || {
        metrics_addr = gate.listener("metrics");
        metrics_addr.is_some()
    });
    let metrics_addr = metrics_addr.expect("the gate logs its metrics listener's address");
    (registry, gate, metrics_addr)
}

#[test]
fn metrics_start_with_no_requests_and_the_certificate_expiry() {
    let tmp = temp_dir();
    let (_registry, _gate, metrics_addr) = metered_gate(tmp.path());
    let before = scrape(metrics_addr);
    assert_eq!(sum(&before, "registry_gate_requests_total", &[]), 0.0);
    let expiry = sum(&before, "registry_gate_certificate_expiry_seconds", &[]);
    // The test PKI's certificates run to rcgen's default, the year 4096.
    assert!(
        expiry > 1_000.0 * 365.0 * 86_400.0,
        "certificate expiry {expiry} s is not the test certificate's"
    );
}

#[test]
fn metrics_count_a_real_push_and_pull_and_a_wrong_password() {
    let tmp = temp_dir();
    let (_registry, gate, metrics_addr) = metered_gate(tmp.path());

    // A real push and pull, and a push with a wrong password.
    let image = oci_image(&tmp.path().join("image"), 2, 256 * 1024);
    gate.push_ok("builder:builder-secret", &image.reference(), "team/app:1");
    gate.pull_ok(
        "builder:builder-secret",
        "team/app:1",
        &tmp.path().join("pulled"),
    );
    let refused = gate.push("builder:wrong", &image.reference(), "team/other:1");
    assert!(!refused.status.success(), "{}", describe(&refused));

    let after = scrape(metrics_addr);
    let layer_bytes: u64 = image
        .layer_digests
        .iter()
        .map(|d| {
            std::fs::metadata(image.dir.join("blobs/sha256").join(&d["sha256:".len()..]))
                .expect("layer blob")
                .len()
        })
        .sum();
    // Every counter is checked, whichever fail.
    let mut failures = Vec::new();
    let mut at_least = |what: &str, name: &str, labels: &[&str], least: f64| {
        let counted = sum(&after, name, labels);
        if counted < least {
            failures.push(format!(
                "{what}: {name}{labels:?} is {counted}, not at least {least}"
            ));
        }
    };
    let (push, pull) = (&["action=\"push\""], &["action=\"pull\""]);
    at_least("push requests", "registry_gate_requests_total", push, 4.0);
    at_least("pull requests", "registry_gate_requests_total", pull, 3.0);
    let created = &["status=\"201\""];
    at_least(
        "no 201 Created counted",
        "registry_gate_requests_total",
        created,
        3.0,
    );
    let pushed = format!("pushed {layer_bytes} layer bytes");
    let bytes = "registry_gate_body_bytes_total";
    at_least(&pushed, bytes, &["direction=\"in\""], layer_bytes as f64);
    at_least(&pushed, bytes, &["direction=\"out\""], layer_bytes as f64);
    at_least(
        "the wrong password was not counted",
        "registry_gate_auth_failures_total",
        &["reason=\"bad_credentials\""],
        1.0,
    );
    let durations = "registry_gate_request_duration_seconds_count";
    at_least("push durations", durations, push, 4.0);
    assert!(failures.is_empty(), "{failures:#?}\n{after:#?}");
}

#[test]
fn metrics_count_a_connection_refused_over_the_per_address_limit() {
    let tmp = temp_dir();
    let (_registry, gate, metrics_addr) = metered_gate(tmp.path());
    // One address holding three connections: the fourth is refused and counted. Earlier
    // connections must be gone first, or one would take a held one's slot: the harness's
    // readiness probe may still wait in the accept queue, where the gauge cannot see it. An
    // answered request was accepted after it (the queue is in order), and its connection
    // closes with the runtime.
    let answered = runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        client.get(&gate.url("/healthz")).await.status()
    });
    assert_eq!(answered, 200, "/healthz");
    let open = || sum(&scrape(metrics_addr), "registry_gate_open_connections", &[]);
    assert!(
        wait_until(Duration::from_secs(10), || open() == 0.0),
        "earlier connections still open: {}",
        open()
    );
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(gate.addr).expect("connect"))
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || open() >= 3.0),
        "open connections {} while three were held",
        open()
    );
    let mut fourth = TcpStream::connect(gate.addr).expect("connect");
    fourth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert!(
        matches!(util::read_some(&mut fourth, &mut byte), Ok(0) | Err(_)),
        "the fourth connection was served"
    );
    drop(held);

    let after = scrape(metrics_addr);
    assert_eq!(
        sum(
            &after,
            "registry_gate_refused_connections_total",
            &["reason=\"max_connections_per_ip\""]
        ),
        1.0
    );
}

#[test]
fn a_from_rule_lets_ci_push_only_from_its_network() {
    let tmp = temp_dir();
    let netns = Netns::create();
    let registry = Registry::start_unix(tmp.path());
    // The gate in the namespace sees the host's side of the veth as the build network, and
    // a client inside the namespace as some other network.
    let gate = Gate::start_in(
        tmp.path(),
        GateConfig::new(&registry.url)
            .basic_auth(&[("builder", "builder-secret")])
            .extra_toml(&format!(
                "\n[[rules]]\nusers = [\"builder\"]\nrepositories = [\"**\"]\nactions = [\"pull\", \"push\"]\nfrom = [\"{}/32\"]\n\
                 \n[[rules]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
                netns.host_ip
            )),
        &netns,
    );
    let image = oci_image(&tmp.path().join("image"), 1, 64 * 1024);
    let certs = gate.pki.cert_dir.to_str().expect("UTF-8 path");
    let push_args = |tag: &str| {
        vec![
            "--insecure-policy".to_string(),
            "copy".into(),
            "--dest-cert-dir".into(),
            certs.into(),
            "--dest-creds".into(),
            "builder:builder-secret".into(),
            image.reference(),
            format!("docker://{}/team/app:{tag}", gate.authority()),
        ]
    };

    // From the build network: allowed.
    let from_build = run(Command::new("skopeo").args(push_args("build")));
    assert!(from_build.status.success(), "{}", describe(&from_build));

    // The same user and password from elsewhere: pull yes, push no.
    let skopeo_path = Path::new("/usr/bin/skopeo");
    let elsewhere = run(netns.command(skopeo_path).args(push_args("elsewhere")));
    assert!(
        !elsewhere.status.success(),
        "a push from outside the build network succeeded"
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&elsewhere.stdout),
        String::from_utf8_lossy(&elsewhere.stderr)
    );
    assert!(text.contains("builder may not push team/app"), "{text}");
    let pulled = tmp.path().join("pulled");
    let pull = run(netns.command(skopeo_path).args([
        "--insecure-policy",
        "copy",
        "--src-cert-dir",
        certs,
        "--src-creds",
        "builder:builder-secret",
        &format!("docker://{}/team/app:build", gate.authority()),
        &format!("oci:{}:app", pulled.display()),
    ]));
    assert!(pull.status.success(), "{}", describe(&pull));
    assert!(
        gate.log().contains("decision=\"deny\" rule=rules[1]"),
        "the access log does not name the deciding rule:\n{}",
        gate.log()
    );
}

/// One HTTPS request over a TCP connection that first carries `preamble` (a PROXY protocol
/// header written by hand), as a balancer would send it. The status line, or the error.
async fn request_behind_balancer(gate: &Gate, preamble: &[u8]) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(gate.addr)
        .await
        .map_err(|e| e.to_string())?;
    tcp.write_all(preamble).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        util::client::tls_config(&gate.pki.ca_pem),
    ));
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /v2/app/manifests/1 HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    text.lines()
        .next()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| "no response".to_string())
}

fn proxy_v2(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_names_the_client_only_when_a_trusted_balancer_sends_it() {
    let tmp = temp_dir();
    let upstream = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(upstream.url())
            .trusted_proxies(&["127.0.0.1"])
            .server_toml("proxy_protocol = true\n")
            .extra_toml("\n[filter]\ndeny = [\"203.0.113.66\"]\n"),
    );

    // v1 and v2: the registry hears of the client the header names, and never of the
    // X-Forwarded-For that client wrote itself.
    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 443\r\n";
    assert_eq!(
        request_behind_balancer(&gate, v1).await.as_deref(),
        Ok("HTTP/1.1 200 OK")
    );
    assert_eq!(
        request_behind_balancer(&gate, &proxy_v2([203, 0, 113, 8], 40002))
            .await
            .as_deref(),
        Ok("HTTP/1.1 200 OK")
    );
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[0].header("x-forwarded-for"), Some("203.0.113.7"));
    assert_eq!(seen[0].header("x-real-ip"), Some("203.0.113.7"));
    assert_eq!(seen[1].header("x-forwarded-for"), Some("203.0.113.8"));
    assert!(gate.log().contains("peer=203.0.113.7"), "{}", gate.log());

    // The named client is the one [filter] judges.
    assert_eq!(
        request_behind_balancer(&gate, b"PROXY TCP4 203.0.113.66 127.0.0.1 40003 443\r\n")
            .await
            .as_deref(),
        Ok("HTTP/1.1 403 Forbidden")
    );

    // No header, or a broken one: the connection is closed before TLS.
    assert!(request_behind_balancer(&gate, b"").await.is_err());
    assert!(
        request_behind_balancer(&gate, b"PROXY TCP4 203.0.113.7\r\n")
            .await
            .is_err()
    );
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_protocol_header_from_an_untrusted_peer_is_refused() {
    let tmp = temp_dir();
    let upstream = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(upstream.url())
            .trusted_proxies(&["127.0.0.2"])
            .server_toml("proxy_protocol = true\n"),
    );
    let spoofed = b"PROXY TCP4 10.0.0.1 127.0.0.1 40001 443\r\n";
    assert!(request_behind_balancer(&gate, spoofed).await.is_err());
    assert!(upstream.requests().is_empty());
    assert!(
        gate.log().contains("not in [server] trusted_proxies"),
        "{}",
        gate.log()
    );
}

#[test]
fn doctor_passes_a_working_setup_and_names_what_breaks() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url)
            .basic_auth(&[("builder", "builder-secret")])
            .fixed_port(),
    );
    let doctor = || {
        run(util::gate::gate_command()
            .arg("doctor")
            .arg("--config")
            .arg(&gate.config_path))
    };
    let healthy = doctor();
    let text = String::from_utf8_lossy(&healthy.stdout).into_owned();
    assert!(healthy.status.success(), "{}", describe(&healthy));
    for line in [
        "ok    htpasswd: 1 usable users",
        "ok    registry at http://",
        "ok    upload URLs reach clients as",
        "with a login challenge",
        "0 failure(s)",
    ] {
        assert!(text.contains(line), "missing {line:?}:\n{text}");
    }
    // The probe upload was cancelled: nothing is left in the registry.
    assert!(registry.stored_blob_digests().is_empty());

    // An htpasswd line the gate cannot use, and a registry that is gone.
    let htpasswd = gate.config_path.with_file_name("htpasswd");
    let mut lines = std::fs::read_to_string(&htpasswd).expect("htpasswd");
    lines.push_str("olduser:abJnggxhB/yWI\n");
    std::fs::write(&htpasswd, lines).expect("write htpasswd");
    drop(registry);
    let broken = doctor();
    let text = String::from_utf8_lossy(&broken.stdout).into_owned();
    assert_eq!(broken.status.code(), Some(1), "{}", describe(&broken));
    assert!(
        text.contains("FAIL  htpasswd:") && text.contains(":2:"),
        "the bad line is not named with its file and line:\n{text}"
    );
    assert!(
        text.contains("FAIL  registry at http://") && text.contains("is it running"),
        "{text}"
    );
}
