//! Certificates without openssl: `registry-gate gencert` output checked by openssl and used
//! by skopeo with strict verification, client certificates it makes, and certificate files
//! replaced on disk while the gate runs.

use crate::util;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use util::gate::{gate_command, reported_listener};
use util::image::{oci_image, skopeo};
use util::registry::Registry;
use util::{accepts_tcp, describe, read_text, run, temp_dir, wait_until, write_file, KillOnDrop};

fn gencert(args: &[&str]) -> std::process::Output {
    run(gate_command().arg("gencert").args(args))
}

/// A CA and a server certificate for localhost and 127.0.0.1 in `dir`.
fn gencert_localhost(dir: &str) {
    let out = gencert(&["--dir", dir, "--dns", "localhost", "--ip", "127.0.0.1"]);
    assert!(out.status.success(), "{}", describe(&out));
}

fn openssl(args: &[&str]) -> std::process::Output {
    run(Command::new("openssl").args(args))
}

/// The SHA-256 fingerprint of the certificate the gate serves now.
fn served_fingerprint(port: u16) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null \
         | openssl x509 -noout -fingerprint -sha256"
    );
    let out = run(Command::new("sh").args(["-c", &script]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn file_fingerprint(cert: &Path) -> String {
    let out = openssl(&[
        "x509",
        "-in",
        cert.to_str().expect("utf-8"),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn start_gate(dir: &Path, registry_url: &str, extra_tls: &str, auth: &str) -> (KillOnDrop, u16) {
    let config = dir.join("proxy.toml");
    write_file(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{registry_url}\"\n\
             [tls]\ncert = \"certs/cert.pem\"\nkey = \"certs/key.pem\"\n{extra_tls}\n{auth}"
        ),
    );
    let log = std::fs::File::create(dir.join("gate.log")).expect("log");
    let child = gate_command()
        .args(["run", "--config"])
        .arg(&config)
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .spawn()
        .expect("spawn gate");
    let gate = KillOnDrop(child);
    let mut addr = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            addr = reported_listener(&read_text(&dir.join("gate.log")), "https");
            addr.is_some_and(accepts_tcp)
        }),
        "gate did not start:\n{}",
        read_text(&dir.join("gate.log"))
    );
    (gate, addr.expect("reported").port())
}

#[test]
fn gencert_output_verifies_and_skopeo_trusts_it_on_an_ip_and_a_dns_name() {
    let tmp = temp_dir();
    let certs = tmp.path().join("certs");
    let dir = certs.to_str().expect("utf-8");
    let out = gencert(&["--dir", dir, "--dns", "localhost", "--ip", "127.0.0.1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("/etc/docker/certs.d/localhost/ca.crt"),
        "{printed}"
    );
    assert!(printed.contains("update-ca-certificates"), "{printed}");

    let verify = openssl(&[
        "verify",
        "-CAfile",
        &format!("{dir}/ca.pem"),
        &format!("{dir}/cert.pem"),
    ]);
    assert!(
        verify.status.success(),
        "openssl verify: {}",
        describe(&verify)
    );
    let text = openssl(&["x509", "-in", &format!("{dir}/cert.pem"), "-noout", "-text"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("DNS:localhost") && text.contains("IP Address:127.0.0.1"),
        "{text}"
    );
    assert!(
        text.contains("id-ecPublicKey"),
        "not ECDSA by default:\n{text}"
    );
    for key in ["ca-key.pem", "key.pem"] {
        let mode = std::fs::metadata(certs.join(key))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }

    // A key is never overwritten by accident; with --force the CA stays and the leaf changes.
    let again = gencert(&["--dir", dir]);
    assert!(!again.status.success(), "overwrote a key without --force");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--force"),
        "{}",
        describe(&again)
    );
    let ca_before = read_text(&certs.join("ca.pem"));
    let leaf_before = read_text(&certs.join("cert.pem"));
    let forced = gencert(&[
        "--dir",
        dir,
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
        "--force",
        "--rsa",
    ]);
    assert!(forced.status.success(), "{}", describe(&forced));
    assert_eq!(
        read_text(&certs.join("ca.pem")),
        ca_before,
        "the CA was replaced"
    );
    assert_ne!(read_text(&certs.join("cert.pem")), leaf_before);

    let registry = Registry::start(tmp.path());
    let (_gate, port) = start_gate(tmp.path(), &registry.url, "", "[auth]\nmode = \"none\"\n");
    let trust = tmp.path().join("trust");
    std::fs::create_dir_all(&trust).expect("mkdir");
    std::fs::copy(certs.join("ca.pem"), trust.join("ca.crt")).expect("copy CA");
    let image = oci_image(&tmp.path().join("image"), 1, 16 * 1024);
    for host in ["127.0.0.1", "localhost"] {
        let dest = format!("docker://{host}:{port}/gencert/app:v1");
        let out = skopeo(&[
            "copy",
            "--dest-cert-dir",
            trust.to_str().expect("utf-8"),
            &image.reference(),
            &dest,
        ]);
        assert!(
            out.status.success(),
            "skopeo via {host}: {}",
            describe(&out)
        );
    }
}

#[test]
fn gencert_client_certificates_are_accepted_by_the_gate() {
    let tmp = temp_dir();
    let certs = tmp.path().join("certs");
    let dir = certs.to_str().expect("utf-8");
    gencert_localhost(dir);
    let out = gencert(&["--dir", dir, "client", "builder1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let client_dir = certs.join("clients/builder1");
    let verify = openssl(&[
        "verify",
        "-CAfile",
        &format!("{dir}/ca.pem"),
        client_dir.join("client.cert").to_str().expect("utf-8"),
    ]);
    assert!(verify.status.success(), "{}", describe(&verify));

    let registry = Registry::start(tmp.path());
    let (_gate, port) = start_gate(
        tmp.path(),
        &registry.url,
        "client_ca = \"certs/ca.pem\"\nclient_auth = \"required\"\n",
        "[auth]\nmode = \"none\"\n[[rules]]\nusers = [\"builder1\"]\nrepositories = [\"**\"]\nactions = [\"*\"]\n",
    );
    std::fs::copy(certs.join("ca.pem"), client_dir.join("ca.crt")).expect("copy CA");
    let image = oci_image(&tmp.path().join("image"), 1, 16 * 1024);
    let dest = format!("docker://localhost:{port}/mtls/app:v1");
    let out = skopeo(&[
        "copy",
        "--dest-cert-dir",
        client_dir.to_str().expect("utf-8"),
        &image.reference(),
        &dest,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(read_text(&tmp.path().join("gate.log")).contains("user=builder1"));
}

#[test]
fn certificate_files_replaced_on_disk_are_served_and_a_bad_pair_is_refused() {
    let tmp = temp_dir();
    let certs = tmp.path().join("certs");
    let dir = certs.to_str().expect("utf-8");
    gencert_localhost(dir);
    let registry = Registry::start(tmp.path());
    let (_gate, port) = start_gate(tmp.path(), &registry.url, "", "[auth]\nmode = \"none\"\n");
    let first = served_fingerprint(port);
    assert_eq!(first, file_fingerprint(&certs.join("cert.pem")));

    // A renewal, as certbot does it: new files in place.
    assert!(gencert(&[
        "--dir",
        dir,
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
        "--force"
    ])
    .status
    .success());
    let renewed = file_fingerprint(&certs.join("cert.pem"));
    assert_ne!(renewed, first);
    assert!(
        wait_until(Duration::from_secs(10), || served_fingerprint(port)
            == renewed),
        "the renewed certificate is not served:\n{}",
        read_text(&tmp.path().join("gate.log"))
    );

    // A certificate whose key is elsewhere: refused, the renewed one keeps serving. (The
    // renewal itself may have logged a mismatch for a moment, between its two file writes.)
    let log = tmp.path().join("gate.log");
    let mismatches = || {
        read_text(&log)
            .matches("does not belong to the certificate")
            .count()
    };
    let before = mismatches();
    let other = tmp.path().join("other");
    assert!(gencert(&[
        "--dir",
        other.to_str().expect("utf-8"),
        "--dns",
        "localhost"
    ])
    .status
    .success());
    std::fs::copy(other.join("cert.pem"), certs.join("cert.pem")).expect("copy mismatched cert");
    assert!(
        wait_until(Duration::from_secs(10), || mismatches() > before),
        "the bad pair was not reported:\n{}",
        read_text(&tmp.path().join("gate.log"))
    );
    assert_eq!(
        served_fingerprint(port),
        renewed,
        "a bad pair replaced the good one"
    );
}

/// Completes a handshake to 127.0.0.1:`port` asking for `name` and trusting only `ca`.
fn handshake_as(port: u16, name: &str, ca: &Path) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let connector =
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(util::client::tls_config(ca)));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let server_name =
            rustls_pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
        connector
            .connect(server_name, tcp)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

#[test]
fn further_certificates_are_chosen_by_sni_and_the_default_serves_the_rest() {
    let tmp = temp_dir();
    let main = tmp.path().join("certs");
    gencert_localhost(main.to_str().expect("utf-8"));
    let other = tmp.path().join("other");
    let out = gencert(&[
        "--dir",
        other.to_str().expect("utf-8"),
        "--dns",
        "registry.other.test",
        "--dns",
        "*.apps.test",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let registry = Registry::start(tmp.path());
    let (_gate, port) = start_gate(
        tmp.path(),
        &registry.url,
        "\n[[tls.certificates]]\ncert = \"other/cert.pem\"\nkey = \"other/key.pem\"\n",
        "[auth]\nmode = \"none\"\n",
    );
    let (main_ca, other_ca) = (main.join("ca.pem"), other.join("ca.pem"));
    assert_eq!(handshake_as(port, "localhost", &main_ca), Ok(()));
    assert_eq!(handshake_as(port, "registry.other.test", &other_ca), Ok(()));
    assert_eq!(handshake_as(port, "x.apps.test", &other_ca), Ok(()));
    // Each name got the other CA's certificate, not the default one, and vice versa.
    assert!(handshake_as(port, "registry.other.test", &main_ca).is_err());
    assert!(handshake_as(port, "localhost", &other_ca).is_err());
    // A wildcard covers one label only: a deeper name falls back to the default.
    assert!(handshake_as(port, "a.b.apps.test", &other_ca).is_err());
}
