//! The harness itself, checked without the gate: the registry, the recorder, the hand-made
//! OCI images and dockerd work directly, so a failure in `promise.rs` is the gate's.

use crate::util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use http_body_util::BodyExt;
use util::client::{Framing, PseudoRandomBody};
use util::docker::Dockerd;
use util::image::{oci_image, read_oci_layout, skopeo_ok, ustar};
use util::recorder::{Recorder, Reply};
use util::registry::Registry;
use util::{pseudo_random_digest, run, temp_dir};

#[test]
fn registry_answers_on_tcp_and_on_a_unix_socket() {
    let tmp = temp_dir();
    let tcp = Registry::start(tmp.path());
    let unix = Registry::start_unix(tmp.path());
    assert!(tcp.url.starts_with("http://127.0.0.1:"));
    assert!(unix.url.starts_with("unix:///tmp/"));
    assert!(tcp.ping() && unix.ping());
}

#[test]
fn hand_made_oci_image_round_trips_through_a_plain_registry() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let image = oci_image(&tmp.path().join("image"), 3, 64 * 1024);
    let addr = registry.addr.expect("TCP registry");
    let remote = format!("docker://{addr}/harness/image:v1");
    skopeo_ok(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &image.reference(),
        &remote,
    ]);
    let back = tmp.path().join("back");
    skopeo_ok(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &remote,
        &format!("oci:{}:latest", back.display()),
    ]);
    let pulled = read_oci_layout(&back);
    assert_eq!(pulled.manifest_digest, image.manifest_digest);
    assert_eq!(pulled.layer_digests, image.layer_digests);
}

#[test]
fn ustar_archive_lists_with_tar() {
    let tmp = temp_dir();
    let archive = tmp.path().join("a.tar");
    util::write_file(
        &archive,
        ustar(&[("dir/file.bin", b"hello"), ("other", &[7u8; 1000])]),
    );
    let out = run(std::process::Command::new("tar").arg("-tvf").arg(&archive));
    assert!(out.status.success(), "{}", util::describe(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("dir/file.bin") && listing.contains("1000"),
        "{listing}"
    );
}

#[test]
fn recorder_records_the_request_and_answers_the_reply() {
    let recorder = Recorder::start(|req| {
        Reply::status(201)
            .header("X-Seen", &req.method)
            .body(b"done".to_vec())
    });
    let mut stream = TcpStream::connect(recorder.addr).expect("connect to recorder");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    stream
        .write_all(
            b"PUT /v2/x?y=1 HTTP/1.1\r\nHost: up\r\nX-A: 1\r\nX-A: 2\r\n\
              Content-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("x-seen: put"),
        "{response}"
    );
    assert!(response.ends_with("done"), "{response}");

    let seen = recorder.single_request();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.uri, "/v2/x?y=1");
    assert_eq!(seen.header_all("x-a"), ["1", "2"]);
    assert_eq!(seen.body_len, 3);
}

#[tokio::test]
async fn streamed_body_and_precomputed_digest_agree() {
    // Lengths that are not multiples of the frame or word size.
    for len in [0u64, 5, 64 * 1024 + 3, 3 << 20] {
        let (mut body, digest) = PseudoRandomBody::new(42, len, Framing::Chunked);
        while let Some(frame) = body.frame().await {
            frame.expect("generated frame");
        }
        assert_eq!(
            digest.finish(),
            (len, pseudo_random_digest(42, len)),
            "len {len}"
        );
    }
}

#[test]
fn dockerd_imports_pushes_and_pulls_against_a_plain_registry() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let dockerd = Dockerd::start(tmp.path());
    let name = format!("{}/harness/docker:v1", registry.addr.expect("TCP registry"));
    let id = dockerd.import_image(&name);
    dockerd.docker_ok(&["push", &name]);
    dockerd.docker_ok(&["rmi", &name]);
    dockerd.docker_ok(&["pull", &name]);
    assert_eq!(dockerd.image_id(&name), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_client_trusts_the_test_ca_and_no_other() {
    use util::client::{empty, request, HttpsClient, Proto};
    use util::pki::Pki;

    util::require_tool("openssl", "openssl");
    let tmp = temp_dir();
    let pki = Pki::localhost(&tmp.path().join("pki"));
    let stranger = Pki::localhost(&tmp.path().join("other-pki"));
    let port = util::free_port();
    let server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&pki.cert_pem)
        .arg("-key")
        .arg(&pki.key_pem)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn openssl s_server");
    let mut server = util::KillOnDrop(server);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let up = util::wait_until(Duration::from_secs(10), || util::accepts_tcp(addr));
    if !up {
        let exited = server.0.try_wait().expect("poll openssl s_server");
        let mut stderr = String::new();
        if exited.is_some() {
            use std::io::Read;
            if let Some(mut pipe) = server.0.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
        }
        panic!("openssl s_server on {addr} never accepted (exit: {exited:?}): {stderr}");
    }

    let url = format!("https://127.0.0.1:{port}/");
    let trusted = HttpsClient::new(&pki.ca_pem, Proto::Http1);
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        trusted.try_send(request("GET", &url).body(empty()).expect("request")),
    )
    .await;
    // s_server serves one connection at a time: finish this one before the next.
    let status = match response {
        Ok(Ok(response)) => {
            let status = response.status();
            let _ = response.into_body().collect().await;
            Ok(status)
        }
        Ok(Err(e)) => Err(format!("trusted client gets no answer: {e:?}")),
        Err(_) => Err("trusted client: timed out".to_string()),
    };
    drop(trusted);
    let untrusted = HttpsClient::new(&stranger.ca_pem, Proto::Http1);
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        untrusted.try_send(request("GET", &url).body(empty()).expect("request")),
    )
    .await;
    assert_eq!(status, Ok(http::StatusCode::OK));
    let refused = refused.expect("untrusted client: timed out");
    assert!(
        refused.is_err(),
        "a client with another CA accepted the certificate"
    );
}
