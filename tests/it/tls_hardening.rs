//! The gate's TLS as an outside scanner sees it: TLS 1.0 and 1.1 and weak suites refused
//! (checked with openssl, which rustls clients cannot be made to offer), what a client with no
//! SNI or an unknown name gets, and testssl.sh with no finding rated MEDIUM or worse.
//!
//! TLS 1.2/1.3 negotiation is proved in `promise.rs`; handshakes that never finish in
//! `faults.rs`.

use crate::util;

use std::process::{Command, Output, Stdio};
use std::time::Instant;

use util::gate::{Gate, GateConfig};
use util::recorder::{Recorder, Reply};
use util::{describe, require_tool, run, temp_dir};

/// `openssl s_client` against the gate with `args`, no input: the handshake and nothing more.
fn s_client(gate: &Gate, args: &[&str]) -> Output {
    require_tool("openssl", "openssl");
    run(Command::new("openssl")
        .args(["s_client", "-connect", &gate.authority()])
        .args(args)
        .stdin(Stdio::null()))
}

fn combined(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// True when openssl finished a handshake (it prints the negotiated cipher).
fn handshake_done(out: &Output) -> bool {
    let text = combined(out);
    out.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)")
}

fn gate() -> (util::TempDir, Recorder, Gate) {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(tmp.path(), GateConfig::new(recorder.url()));
    (tmp, recorder, gate)
}

#[test]
fn tls_1_0_and_1_1_are_refused_by_the_server() {
    let (_tmp, _recorder, gate) = gate();
    for version in ["-tls1", "-tls1_1"] {
        // Security level 0, or openssl refuses to offer the old versions itself and the
        // server is never asked.
        let out = s_client(
            &gate,
            &[
                version,
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
                "-servername",
                "localhost",
            ],
        );
        let text = combined(&out);
        assert!(!handshake_done(&out), "{version} negotiated:\n{text}");
        // rustls answers an old-only ClientHello with a handshake_failure alert: the
        // refusal comes from the server, after openssl really offered the version.
        assert!(
            text.contains("SSL alert number"),
            "{version}: not refused by an alert from the server:\n{text}"
        );
    }
    let modern = s_client(&gate, &["-tls1_2", "-servername", "localhost"]);
    assert!(handshake_done(&modern), "TLS 1.2: {}", describe(&modern));
}

#[test]
fn suites_without_forward_secrecy_or_aead_are_refused() {
    let (_tmp, _recorder, gate) = gate();
    // RSA key exchange, CBC with SHA-1 or SHA-256 MACs, 3DES, finite-field DHE, RC4, NULL.
    for suite in [
        "AES128-SHA",
        "AES256-SHA256",
        "AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "DES-CBC3-SHA",
        "DHE-RSA-AES128-GCM-SHA256",
        "RC4-SHA",
        "NULL-SHA",
    ] {
        let out = s_client(
            &gate,
            &[
                "-tls1_2",
                "-cipher",
                &format!("{suite}:@SECLEVEL=0"),
                "-servername",
                "localhost",
            ],
        );
        assert!(
            !handshake_done(&out),
            "{suite} negotiated:\n{}",
            combined(&out)
        );
    }
    // The control: an ECDHE + AEAD suite for the test's ECDSA certificate does negotiate.
    let good = s_client(
        &gate,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "-servername",
            "localhost",
        ],
    );
    assert!(handshake_done(&good), "{}", describe(&good));
}

/// Session tickets are issued and honoured (S6 in BENCHMARKS.md counts on it): a second
/// connection offering the first one's ticket resumes the session. The server's suite order
/// wins over OpenSSL's, which lists AES-256-GCM first.
#[test]
fn sessions_resume_from_a_ticket_and_the_server_picks_aes_128_gcm() {
    require_tool("openssl", "openssl");
    let (tmp, _recorder, gate) = gate();
    let session = tmp.path().join("session.pem");
    // A request with `Connection: close` and -ign_eof: openssl reads until the gate closes,
    // so it has seen the ticket, which TLS 1.3 sends after the handshake.
    let connect = |session_flag: &str| {
        let script = format!(
            "printf 'GET /v2/ HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' \\
             | openssl s_client -connect {} -servername localhost -ign_eof {} {} 2>&1",
            gate.authority(),
            session_flag,
            session.display()
        );
        combined(&run(Command::new("sh").args(["-c", &script])))
    };
    let first = connect("-sess_out");
    assert!(
        first.contains("New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256"),
        "first connection:\n{first}"
    );
    assert!(
        first.contains("HTTP/1.1 "),
        "no answer on the first connection:\n{first}"
    );
    assert!(session.exists(), "openssl saved no session:\n{first}");
    let second = connect("-sess_in");
    assert!(
        second.contains("Reused, TLSv1.3"),
        "the ticket was not accepted:\n{second}"
    );
}

#[test]
fn no_sni_and_an_unknown_name_get_the_default_certificate() {
    let (_tmp, _recorder, gate) = gate();
    let subject = |args: &[&str]| {
        let out = s_client(&gate, args);
        assert!(handshake_done(&out), "{args:?}: {}", describe(&out));
        let text = combined(&out);
        text.lines()
            .find(|l| l.starts_with("subject="))
            .unwrap_or_else(|| panic!("no subject line:\n{text}"))
            .to_string()
    };
    let named = subject(&["-servername", "localhost"]);
    // docker and skopeo send no SNI when they connect to an IP address.
    assert_eq!(subject(&["-noservername"]), named);
    assert_eq!(subject(&["-servername", "unknown.example"]), named);
}

/// testssl.sh against the gate on 127.0.0.1: protocols, suites, known vulnerabilities,
/// server preferences and the HTTP headers. Any finding rated MEDIUM, HIGH or CRITICAL fails.
#[test]
fn testssl_finds_nothing_rated_medium_or_worse() {
    require_tool("testssl", "testssl.sh");
    let (tmp, _recorder, gate) = gate();
    // Scan what a zero-config gate serves: `gencert`'s CA and certificate, swapped in on disk.
    let pki = gate.pki.cert_pem.parent().expect("pki dir").to_path_buf();
    let out = run(util::gate::gate_command()
        .args([
            "gencert",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--force",
            "--dir",
        ])
        .arg(&pki));
    assert!(out.status.success(), "{}", describe(&out));
    let file_print = fingerprint_of_file(&gate.pki.cert_pem);
    assert!(
        util::wait_until(std::time::Duration::from_secs(15), || served_fingerprint(
            &gate
        ) == file_print),
        "the generated certificate is not served"
    );
    let json = tmp.path().join("testssl.json");
    let started = Instant::now();
    let out = run(Command::new("testssl")
        .args([
            "--quiet",
            "--warnings",
            "batch",
            "--color",
            "0",
            "--fast",
            "--ip",
            "127.0.0.1",
            "-p",
            "-s",
            "-S",
            "-P",
            "-h",
            "-U",
            "--add-ca",
        ])
        .arg(&gate.pki.ca_pem)
        .arg("--jsonfile")
        .arg(&json)
        .arg(format!("localhost:{}", gate.port()))
        .stdin(Stdio::null()));
    let took = started.elapsed();
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON from testssl ({e}): {}", describe(&out)));
    let findings: Vec<serde_json::Value> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("testssl JSON ({e}): {text}"));
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL")))
        // A private CA has no CRL or OCSP responder to name, and naming one that does not
        // exist would be worse; certificates from a public CA (certbot) carry them. The one
        // finding about the certificate's issuer rather than the gate (see docs/testssl.md).
        .filter(|f| f["id"] != "cert_revocation")
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for f in &findings {
        *counts
            .entry(f["severity"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    println!("testssl took {took:?}; findings by severity: {counts:?}");
    for f in &findings {
        if !matches!(f["severity"].as_str(), Some("OK" | "INFO")) {
            println!("  {} {}: {}", f["severity"], f["id"], f["finding"]);
        }
    }
    assert!(
        findings.len() > 20,
        "testssl checked almost nothing: {}",
        describe(&out)
    );
    assert!(bad.is_empty(), "testssl findings:\n{}", bad.join("\n"));
}

/// The SHA-256 fingerprint of the certificate the gate serves now.
fn served_fingerprint(gate: &Gate) -> String {
    let script = format!(
        "openssl s_client -connect {} -servername localhost </dev/null 2>/dev/null \
         | openssl x509 -noout -fingerprint -sha256",
        gate.authority()
    );
    let out = run(Command::new("sh").args(["-c", &script]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn fingerprint_of_file(cert: &std::path::Path) -> String {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
