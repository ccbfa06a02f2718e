//! Certificates from a real ACME server (pebble): ordered over tls-alpn-01 and http-01,
//! cached and reused across restarts, renewed and swapped during a transfer, and the failures
//! an operator meets (CA unreachable, order refused, corrupt cache) logged without a crash.
//! With `[cluster]`, three gates order one certificate, and the CA's challenge is answered
//! by a gate that did not order it.

use crate::util;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use util::client::{HttpsClient, Proto};
use util::gate::{Gate, GateConfig};
use util::image::{oci_image, skopeo_ok};
use util::pebble::{PebbleOptions, PebbleSetup};
use util::recorder::{Recorder, Reply};
use util::redis::Redis;
use util::registry::Registry;
use util::{free_port, pseudo_random_digest, temp_dir, wait_until, write_file};

/// `[tls.acme]` for `localhost` against this pebble; quick retries so tests need not wait.
fn acme_toml(setup: &PebbleSetup, extra: &str) -> String {
    format!(
        "\n[tls.acme]\ndomains = [\"localhost\"]\ndirectory = \"{}\"\ndirectory_ca = \"{}\"\nretry_interval = \"1s\"\n{extra}",
        setup.directory,
        setup.tls_ca.display()
    )
}

/// The serial (lowercase hex, as pebble logs it) of the certificate the gate serves for
/// `localhost`, verified against `root`.
async fn served_serial(port: u16, root: &Path) -> Result<String, String> {
    let config = util::client::tls_config(root);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?
        .clone();
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    Ok(format!("{:x}", cert.tbs_certificate.serial))
}

/// Waits until the gate serves a certificate chaining to `root`.
async fn wait_for_certificate(gate: &Gate, root: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        match served_serial(gate.port(), root).await {
            Ok(serial) => return serial,
            Err(e) if Instant::now() >= deadline => panic!(
                "no ACME certificate served within {timeout:?} (last error: {e}); gate log:\n{}",
                gate.log()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn_01_orders_a_certificate_that_survives_restarts_and_a_corrupt_cache() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let setup = PebbleSetup::new(&tmp.path().join("pebble"));
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = GateConfig::new(&registry.url)
        .listen_on(listen)
        .extra_toml(&acme_toml(&setup, ""));

    // The CA is not up yet: the gate runs, refuses handshakes and says why.
    let mut gate = Gate::start(tmp.path(), config.clone());
    assert!(
        wait_until(Duration::from_secs(10), || gate
            .log()
            .contains("cannot reach the ACME directory")),
        "no clear error for an unreachable directory:\n{}",
        gate.log()
    );
    assert!(
        served_serial(gate.port(), &setup.tls_ca).await.is_err(),
        "a handshake succeeded without a certificate"
    );
    assert!(
        gate.try_exit().is_none(),
        "the gate exited:\n{}",
        gate.log()
    );

    // The CA comes up: the next retry orders, pebble validates on the TLS port itself.
    let pebble = setup.start(gate.port(), free_port(), PebbleOptions::default());
    let root = tmp.path().join("pebble-root.pem");
    pebble.write_issuing_root(&root);
    let serial = wait_for_certificate(&gate, &root, Duration::from_secs(30)).await;
    assert_eq!(pebble.issued_serials(), vec![serial.clone()]);

    // A real client with strict TLS against the ACME certificate, through to the registry.
    let cert_dir = tmp.path().join("trust");
    std::fs::create_dir_all(&cert_dir).expect("mkdir trust");
    std::fs::copy(&root, cert_dir.join("ca.crt")).expect("copy root");
    let image = oci_image(&tmp.path().join("image"), 2, 64 * 1024);
    let target = format!("docker://localhost:{}/acme/app:1", gate.port());
    let cert_dir_arg = cert_dir.to_str().expect("UTF-8 path");
    skopeo_ok(&[
        "copy",
        "--dest-cert-dir",
        cert_dir_arg,
        &image.reference(),
        &target,
    ]);
    let inspect = skopeo_ok(&["inspect", "--cert-dir", cert_dir_arg, &target]);
    assert!(
        String::from_utf8_lossy(&inspect.stdout).contains(&image.manifest_digest),
        "pulled manifest differs"
    );

    // A restart serves the cached certificate at once and orders nothing.
    drop(gate);
    let gate = Gate::start(tmp.path(), config.clone());
    assert_eq!(served_serial(gate.port(), &root).await, Ok(serial.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pebble.orders(), 1, "a restart ordered again");

    // A corrupt cache is reported, replaced by a new order, and never crashes the gate.
    drop(gate);
    let cache = tmp.path().join("gate/certs/acme");
    let mut corrupted = 0;
    for entry in std::fs::read_dir(&cache).expect("read the ACME cache") {
        let path = entry.expect("cache entry").path();
        if path.extension().is_some_and(|e| e == "pem") {
            write_file(&path, "-----BEGIN CERTIFICATE-----\nnot base64\n");
            corrupted += 1;
        }
    }
    assert_eq!(corrupted, 1, "one cached certificate expected in {cache:?}");
    let gate = Gate::start(tmp.path(), config.clone());
    let renewed = wait_for_certificate(&gate, &root, Duration::from_secs(30)).await;
    assert_ne!(renewed, serial);
    assert_eq!(pebble.orders(), 2);
    assert!(
        gate.log().contains("unusable cached certificate"),
        "the corrupt cache was not reported:\n{}",
        gate.log()
    );

    // The CA goes away: a restart still serves the cached certificate.
    drop(gate);
    drop(pebble);
    let gate = Gate::start(tmp.path(), config);
    assert_eq!(served_serial(gate.port(), &root).await, Ok(renewed));
}

#[tokio::test(flavor = "multi_thread")]
async fn http_01_is_answered_on_http_listen_which_redirects_everything_else() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let setup = PebbleSetup::new(&tmp.path().join("pebble"));
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Nothing listens on the tls-alpn-01 port pebble is given: only http-01 can succeed.
    let pebble = setup.start(free_port(), http.port(), PebbleOptions::default());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url)
            .listen_on(listen)
            .server_toml(&format!("http_listen = \"{http}\"\n"))
            .extra_toml(&acme_toml(&setup, "challenge = \"http-01\"\n")),
    );
    let root = tmp.path().join("pebble-root.pem");
    pebble.write_issuing_root(&root);
    let serial = wait_for_certificate(&gate, &root, Duration::from_secs(30)).await;
    assert_eq!(pebble.issued_serials(), vec![serial]);

    // Everything else on the plain port is a 308 to the same path on https, method kept.
    let mut tcp = tokio::net::TcpStream::connect(http)
        .await
        .expect("connect to http_listen");
    tcp.write_all(
        format!(
            "POST /v2/app/blobs/uploads/?mount=x HTTP/1.1\r\nHost: localhost:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            http.port()
        )
        .as_bytes(),
    )
    .await
    .expect("write request");
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .await
        .expect("read response");
    assert!(response.starts_with("HTTP/1.1 308"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains(&format!(
            "location: https://localhost:{}/v2/app/blobs/uploads/?mount=x\r\n",
            listen.port()
        )),
        "{response}"
    );
    assert!(
        !registry.log_text().contains("/v2/app/blobs/uploads"),
        "a plain-HTTP request reached the registry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_lived_certificate_is_renewed_and_swapped_during_a_long_download() {
    const LEN: u64 = 48 * 1024 * 1024;
    let tmp = temp_dir();
    let upstream = Recorder::start(|_| Reply::ok_json().pseudo_random(7, LEN));
    let setup = PebbleSetup::new(&tmp.path().join("pebble"));
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // 15 s certificates: renewed 10 s after issue, a third of the lifetime before expiry.
    let pebble = setup.start(
        listen.port(),
        free_port(),
        PebbleOptions {
            validity_secs: Some(15),
            ..PebbleOptions::default()
        },
    );
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(upstream.url())
            .listen_on(listen)
            .extra_toml(&acme_toml(&setup, "")),
    );
    let root = tmp.path().join("pebble-root.pem");
    pebble.write_issuing_root(&root);
    let first = wait_for_certificate(&gate, &root, Duration::from_secs(30)).await;

    // A download on a connection made with the first certificate, paced to 1 MiB/s (48 s at
    // most) until the gate serves a renewed certificate, then read to its end: the swap
    // happens while it runs however long ordering takes on a busy machine.
    let client = HttpsClient::new(&root, Proto::Http1);
    let url = format!(
        "https://localhost:{}/v2/app/blobs/{}",
        listen.port(),
        pseudo_random_digest(7, LEN)
    );
    let response = client.get(&url).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let (mut len, mut hasher) = (0u64, <sha2::Sha256 as sha2::Digest>::new());
    let started = Instant::now();
    let mut renewed_at = None;
    let mut next_look = Instant::now();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| panic!("download broke after {len} bytes: {e}"));
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            sha2::Digest::update(&mut hasher, &data);
            if renewed_at.is_some() {
                continue;
            }
            if Instant::now() >= next_look {
                next_look = Instant::now() + Duration::from_millis(500);
                if let Ok(serial) = served_serial(listen.port(), &root).await {
                    if serial != first {
                        renewed_at = Some(len);
                        continue;
                    }
                }
            }
            let due = Duration::from_secs_f64(len as f64 / (1024.0 * 1024.0));
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
    }
    assert_eq!(len, LEN);
    assert_eq!(
        format!("sha256:{}", util::hex(&sha2::Digest::finalize(hasher))),
        pseudo_random_digest(7, LEN)
    );
    let renewed_at = renewed_at.unwrap_or_else(|| {
        panic!(
            "no renewed certificate served during the download ({:?}): {:?}\n{}",
            started.elapsed(),
            pebble.issued_serials(),
            gate.log()
        )
    });
    assert!(renewed_at < LEN, "the renewal came with the download's end");

    let issued = pebble.issued_serials();
    let now = served_serial(listen.port(), &root)
        .await
        .expect("handshake");
    assert_ne!(now, first, "the renewed certificate is not served");
    assert!(
        issued.len() >= 2 && issued.contains(&now),
        "served {now}, pebble issued {issued:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_order_is_logged_and_retried_without_serving_anything() {
    let tmp = temp_dir();
    let setup = PebbleSetup::new(&tmp.path().join("pebble"));
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let pebble = setup.start(
        listen.port(),
        free_port(),
        PebbleOptions {
            blocklist: vec!["localhost".into()],
            ..PebbleOptions::default()
        },
    );
    let mut gate = Gate::start(
        tmp.path(),
        GateConfig::new("http://127.0.0.1:9")
            .listen_on(listen)
            .extra_toml(&acme_toml(&setup, "")),
    );
    assert!(
        wait_until(Duration::from_secs(10), || gate
            .log()
            .matches("the ACME server refused the order for localhost")
            .count()
            >= 2),
        "no clear, retried error for a refused order:\n{}\npebble:\n{}",
        gate.log(),
        pebble.log()
    );
    assert!(gate
        .log()
        .contains("no certificate yet: TLS handshakes are refused"));
    assert!(served_serial(listen.port(), &setup.tls_ca).await.is_err());
    assert!(
        gate.try_exit().is_none(),
        "the gate exited:\n{}",
        gate.log()
    );
}

/// Three gates sharing a Redis: A orders (it is alone when it takes the fleet's ACME lock),
/// pebble validates tls-alpn-01 on C, which never ordered and answers from what A put in
/// Redis, and all three serve the one certificate pebble issued.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_orders_one_certificate_and_a_gate_that_did_not_order_answers_the_challenge() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let redis = Redis::start(tmp.path());
    let setup = PebbleSetup::new(&tmp.path().join("pebble"));
    let listens: Vec<SocketAddr> = (0..4)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let pebble = setup.start(listens[2].port(), free_port(), PebbleOptions::default());
    let cluster = format!("\n[cluster]\nredis = \"{}\"\n", redis.url());
    let start = |i: usize, name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir gate dir");
        Gate::start(
            &dir,
            GateConfig::new(&registry.url)
                .listen_on(listens[i])
                .extra_toml(&format!("{}{cluster}", acme_toml(&setup, ""))),
        )
    };

    let a = start(0, "a");
    assert!(
        wait_until(Duration::from_secs(10), || a
            .log()
            .contains("ordering a certificate for the fleet")),
        "A did not order:\n{}",
        a.log()
    );
    let b = start(1, "b");
    let c = start(2, "c");
    let root = tmp.path().join("pebble-root.pem");
    pebble.write_issuing_root(&root);
    let serial = wait_for_certificate(&a, &root, Duration::from_secs(30)).await;
    for gate in [&b, &c] {
        assert_eq!(
            wait_for_certificate(gate, &root, Duration::from_secs(10)).await,
            serial
        );
    }
    assert_eq!(pebble.orders(), 1, "pebble:\n{}", pebble.log());
    assert_eq!(pebble.issued_serials(), vec![serial.clone()]);
    for gate in [&b, &c] {
        let log = gate.log();
        assert!(!log.contains("ordering a certificate"), "{log}");
        assert!(
            log.contains("serving the certificate another gate of the fleet ordered"),
            "{log}"
        );
    }
    // The account and the certificate are the fleet's; the challenge answers are gone.
    let keys = redis.command(&["KEYS", "registry-gate:acme:*"]);
    assert!(keys.contains(":certificate"), "{keys}");
    assert!(keys.contains(":acme:account:"), "{keys}");
    assert!(!keys.contains(":challenges"), "{keys}");

    // A gate that joins later serves the fleet's certificate at once, ordering nothing.
    let d = start(3, "d");
    assert_eq!(
        wait_for_certificate(&d, &root, Duration::from_secs(10)).await,
        serial
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pebble.orders(), 1, "a joining gate ordered");
}

/// A fleet backs off as one gate would: while the CA refuses the order, two gates sharing a
/// Redis place the orders one gate would (1 s, then 2, 4, 8 s apart), not twice as many.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_backs_off_a_refused_order_as_one_gate() {
    let tmp = temp_dir();
    let redis = Redis::start(tmp.path());
    let setup = PebbleSetup::new(&tmp.path().join("pebble"));
    let listens: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let pebble = setup.start(
        listens[0].port(),
        free_port(),
        PebbleOptions {
            blocklist: vec!["localhost".into()],
            ..PebbleOptions::default()
        },
    );
    let cluster = format!("\n[cluster]\nredis = \"{}\"\n", redis.url());
    let gates: Vec<Gate> = listens
        .iter()
        .enumerate()
        .map(|(i, listen)| {
            let dir = tmp.path().join(format!("g{i}"));
            std::fs::create_dir_all(&dir).expect("mkdir gate dir");
            Gate::start(
                &dir,
                GateConfig::new("http://127.0.0.1:9")
                    .listen_on(*listen)
                    .extra_toml(&format!("{}{cluster}", acme_toml(&setup, ""))),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let refused: usize = gates
        .iter()
        .map(|g| {
            g.log()
                .matches("the ACME server refused the order for localhost")
                .count()
        })
        .sum();
    // One gate alone: at 0, 1, 3 and 7 s (the next at 15 s); allow one for timing.
    assert!(
        (2..=5).contains(&refused),
        "{refused} refused orders in 12 s from two gates; pebble:\n{}",
        pebble.log()
    );
}
