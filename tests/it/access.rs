//! Who gets in and what they may do, proved with real processes: docker and skopeo against
//! the access rules, htpasswd files written by Apache's own tool in every format the gate
//! reads, the filtered catalog, read-only mode, the failed-login brake, the `htpasswd`
//! subcommand, and raw byte-exact requests that try to slip past the rules (none of which
//! may reach the registry).

use crate::util;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use util::client::{empty, header, request, text, tls_config, HttpsClient, Proto};
use util::docker::Dockerd;
use util::gate::{gate_command, Gate, GateConfig};
use util::image::oci_image;
use util::pki::Pki;
use util::recorder::{Recorder, Reply};
use util::registry::Registry;
use util::{describe, free_port, require_tool, run, runtime, temp_dir, write_file};

// ---------------------------------------------------------------------------------------
// Helpers

/// `Basic base64(user:password)`.
fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// `GET url`, with Basic credentials when given.
async fn get_as(
    client: &HttpsClient,
    url: &str,
    creds: Option<(&str, &str)>,
) -> Response<Incoming> {
    let mut builder = request("GET", url);
    if let Some((user, password)) = creds {
        builder = builder.header("Authorization", basic(user, password));
    }
    client
        .send(builder.body(empty()).expect("GET request"))
        .await
}

/// The status and body of `GET url` as `user`.
async fn status_and_body(
    client: &HttpsClient,
    url: &str,
    creds: Option<(&str, &str)>,
) -> (StatusCode, String) {
    let response = get_as(client, url, creds).await;
    let status = response.status();
    (status, text(response).await)
}

/// `[[rules]]` tables from `(users, repositories, actions)`.
fn rules(list: &[(&[&str], &[&str], &[&str])]) -> String {
    list.iter()
        .map(|(users, repositories, actions)| {
            format!(
                "\n[[rules]]\nusers = {users:?}\nrepositories = {repositories:?}\nactions = {actions:?}\n"
            )
        })
        .collect()
}

/// The first error code and message of a registry JSON error body.
fn registry_error(body: &str) -> (String, String) {
    let value: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    let first = &value["errors"][0];
    (
        first["code"].as_str().unwrap_or_default().to_string(),
        first["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// A docker or skopeo output, lowercased, for "the message reached the user" checks.
fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .to_lowercase()
}

/// How long a raw connection may stay silent before we stop reading: the gate keeps a
/// connection open after a response unless the request said `Connection: close`.
const RAW_QUIET: Duration = Duration::from_secs(3);

/// Writes `request` byte for byte over a fresh TLS connection (HTTP/1.1, no ALPN) and returns
/// everything the gate sends back until it closes or goes quiet for `RAW_QUIET`. Unlike the
/// harness's `raw_https_exchange`, a kept-open connection still yields what was answered, so
/// pipelined (smuggled) requests can be inspected.
async fn raw_exchange(addr: SocketAddr, ca_pem: &Path, request: &[u8]) -> String {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(ca_pem)));
    let name = ServerName::try_from("localhost").expect("server name");
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to the gate at {addr}: {e}"));
    let mut tls = connector
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with the gate: {e}"));
    tls.write_all(request).await.expect("write the raw request");
    tls.flush().await.expect("flush the raw request");
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(RAW_QUIET, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            // A close without close_notify, or a reset after a refusal: keep what we have.
            Ok(Err(_)) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of every response in a raw HTTP/1.1 exchange, in order. Found anywhere,
/// not only at line starts: a body without a final CR LF (the recorder's `{}`) runs straight
/// into the next response's status line, which a line-start search would miss.
fn statuses(raw: &str) -> Vec<u16> {
    raw.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| raw.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

/// Writes an htpasswd file with Apache's `htpasswd -b <flag>`, one call per user.
fn apache_htpasswd(path: &Path, users: &[(&str, &str, &str)]) {
    require_tool("htpasswd", "apache2-utils");
    for (i, (flag, user, password)) in users.iter().enumerate() {
        let mut command = Command::new("htpasswd");
        command.arg("-b").arg(flag);
        if *flag == "-B" {
            // The lowest bcrypt cost: tests log in often.
            command.args(["-C", "4"]);
        }
        if i == 0 && !path.exists() {
            command.arg("-c");
        }
        let out = run(command.arg(path).arg(user).arg(password));
        assert!(
            out.status.success(),
            "htpasswd {flag} {user}: {}",
            describe(&out)
        );
    }
}

/// An `{SSHA}` line as OpenLDAP's slappasswd writes it (Apache's htpasswd has no `{SSHA}`):
/// base64(sha1(password + salt) + salt).
fn ssha_line(user: &str, password: &str, salt: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    let mut hasher = Sha1::new();
    hasher.update(password.as_bytes());
    hasher.update(salt);
    let mut bytes = hasher.finalize().to_vec();
    bytes.extend_from_slice(salt);
    format!(
        "{user}:{{SSHA}}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Turns `read_only` on in a running gate's config and reloads it (SIGHUP); returns once a
/// push is refused, so the test does not race the reload.
async fn switch_to_read_only(gate: &Gate, client: &HttpsClient, creds: (&str, &str)) {
    // An answered request means the accept loop runs, and so the SIGHUP handler is in place:
    // the gate accepts TCP (the harness's readiness test) before it installs its handlers.
    let (status, body) = status_and_body(client, &gate.url("/v2/"), Some(creds)).await;
    assert_eq!(status, StatusCode::OK, "before the reload: {body}");
    let config = std::fs::read_to_string(&gate.config_path).expect("read proxy.toml");
    assert!(
        config.contains("[server]\n"),
        "no [server] table in:\n{config}"
    );
    write_file(
        &gate.config_path,
        config.replacen("[server]\n", "[server]\nread_only = true\n", 1),
    );
    gate.signal("HUP");
    let url = gate.url("/v2/team/probe/blobs/uploads/");
    for _ in 0..100 {
        let response = client
            .send(
                request("POST", &url)
                    .header("Authorization", basic(creds.0, creds.1))
                    .header("Content-Length", "0")
                    .body(empty())
                    .expect("POST request"),
            )
            .await;
        if response.status() == StatusCode::METHOD_NOT_ALLOWED {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gate did not turn read-only within 10 s of SIGHUP");
}

// ---------------------------------------------------------------------------------------
// Real clients against the rules

#[test]
fn docker_login_push_and_pull_follow_the_rules() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url)
            .basic_auth(&[("admin", "admin-secret"), ("reader", "reader-secret")])
            .extra_toml(&rules(&[
                (&["admin"], &["**"], &["*"]),
                (&["reader"], &["**"], &["pull"]),
            ])),
    );
    let dockerd = Dockerd::start(tmp.path());
    let host = gate.authority();
    let name = format!("{host}/team/app:1");
    let image_id = dockerd.import_image(&name);

    let wrong = dockerd.docker(&["login", "-u", "reader", "-p", "wrong", &host]);
    assert!(
        !wrong.status.success(),
        "login with a wrong password succeeded:\n{}",
        describe(&wrong)
    );
    assert!(
        output_text(&wrong).contains("unauthorized"),
        "docker does not say unauthorized:\n{}",
        describe(&wrong)
    );

    dockerd.docker_ok(&["login", "-u", "reader", "-p", "reader-secret", &host]);
    let refused = dockerd.docker(&["push", &name]);
    assert!(
        !refused.status.success(),
        "a pull-only user pushed:\n{}",
        describe(&refused)
    );
    assert!(
        output_text(&refused).contains("may not push"),
        "docker does not show the gate's message:\n{}",
        describe(&refused)
    );

    dockerd.docker_ok(&["login", "-u", "admin", "-p", "admin-secret", &host]);
    dockerd.docker_ok(&["push", &name]);
    dockerd.docker_ok(&["rmi", &name]);
    dockerd.docker_ok(&["login", "-u", "reader", "-p", "reader-secret", &host]);
    dockerd.docker_ok(&["pull", &name]);
    assert_eq!(dockerd.image_id(&name), image_id, "pulled image differs");
}

#[test]
fn skopeo_push_is_allowed_for_ci_and_refused_for_a_reader() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url)
            .basic_auth(&[("builder", "builder-secret"), ("reader", "reader-secret")])
            .extra_toml(&format!(
                "\n[groups]\nci = [\"builder\"]\n{}",
                rules(&[
                    (&["@ci"], &["**"], &["pull", "push"]),
                    (&["reader"], &["**"], &["pull"]),
                ])
            )),
    );
    let image = oci_image(&tmp.path().join("image"), 1, 64 * 1024);

    let refused = gate.push("reader:reader-secret", &image.reference(), "ci/app:1");
    assert!(
        !refused.status.success(),
        "a reader pushed with skopeo:\n{}",
        describe(&refused)
    );
    assert!(
        output_text(&refused).contains("reader may not push ci/app"),
        "skopeo does not show the gate's message:\n{}",
        describe(&refused)
    );
    assert!(
        registry.stored_blob_digests().is_empty(),
        "a refused push left blobs in the registry: {:?}",
        registry.stored_blob_digests()
    );

    gate.push_ok("builder:builder-secret", &image.reference(), "ci/app:1");
    gate.pull_ok(
        "reader:reader-secret",
        "ci/app:1",
        &tmp.path().join("pulled"),
    );
}

// ---------------------------------------------------------------------------------------
// htpasswd files

/// Users in every format the gate reads, in two htpasswd files next to the config: bcrypt,
/// apr1 and SHA-1 in one, sha256-crypt, sha512-crypt (all by Apache's own tool) and `{SSHA}`
/// (as slappasswd writes it) in the other. Returns the (user, password) pairs.
fn htpasswd_in_every_format(dir: &Path) -> Vec<(&'static str, &'static str)> {
    std::fs::create_dir_all(dir).expect("mkdir gate dir");
    let users: &[(&str, &str, &str)] = &[
        ("-B", "u-bcrypt", "pw-bcrypt"),
        ("-m", "u-apr1", "pw-apr1"),
        ("-s", "u-sha1", "pw-sha1"),
    ];
    apache_htpasswd(&dir.join("apache.htpasswd"), users);
    let sha_crypt: &[(&str, &str, &str)] = &[
        ("-2", "u-sha256", "pw-sha256"),
        ("-5", "u-sha512", "pw-sha512"),
    ];
    apache_htpasswd(&dir.join("shacrypt.htpasswd"), sha_crypt);
    let existing = std::fs::read_to_string(dir.join("shacrypt.htpasswd")).expect("read file");
    write_file(
        &dir.join("shacrypt.htpasswd"),
        format!("{existing}{}\n", ssha_line("u-ssha", "pw-ssha", b"s4lt!x")),
    );
    // What Apache wrote is what we meant to test.
    let written = format!(
        "{}{}",
        std::fs::read_to_string(dir.join("apache.htpasswd")).expect("read"),
        std::fs::read_to_string(dir.join("shacrypt.htpasswd")).expect("read")
    );
    for prefix in [
        "u-bcrypt:$2y$",
        "u-apr1:$apr1$",
        "u-sha1:{SHA}",
        "u-sha256:$5$",
        "u-sha512:$6$",
        "u-ssha:{SSHA}",
    ] {
        assert!(written.contains(prefix), "no {prefix} line in:\n{written}");
    }
    users
        .iter()
        .chain(sha_crypt)
        .map(|(_, u, p)| (*u, *p))
        .chain([("u-ssha", "pw-ssha")])
        .collect()
}

#[test]
fn every_htpasswd_format_logs_in_and_a_wrong_password_gets_the_registry_401() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    // Two files, relative to the config file: both are read.
    let all = htpasswd_in_every_format(&tmp.path().join("gate"));
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url()).extra_toml(
            "\n[auth]\nmode = \"basic\"\nhtpasswd = [\"apache.htpasswd\", \"shacrypt.htpasswd\"]\n",
        ),
    );
    // Every format is checked, whichever fail.
    let mut failures = Vec::new();
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        let url = gate.url("/v2/");
        for &(user, password) in &all {
            let (status, body) = status_and_body(&client, &url, Some((user, password))).await;
            if status != StatusCode::OK {
                failures.push(format!("{user} with the right password: {status} {body}"));
            }
            let response = get_as(&client, &url, Some((user, "not-the-password"))).await;
            let wrong = (
                response.status(),
                header(&response, "www-authenticate").map(str::to_string),
                header(&response, "docker-distribution-api-version").map(str::to_string),
            );
            let expected = (
                StatusCode::UNAUTHORIZED,
                Some("Basic realm=\"registry-gate\"".to_string()),
                Some("registry/2.0".to_string()),
            );
            if wrong != expected {
                failures.push(format!(
                    "{user} with a wrong password: (status, www-authenticate, api version) \
                     {wrong:?}, expected {expected:?}"
                ));
            }
            let (code, _) = registry_error(&text(response).await);
            if code != "UNAUTHORIZED" {
                failures.push(format!("{user} with a wrong password: error code {code}"));
            }
        }
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn check_refuses_a_des_htpasswd_line_naming_its_file_and_line() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    // A DES line (htpasswd -d) is refused by `check`, naming file and line.
    let check_dir = tmp.path().join("check");
    let pki = Pki::localhost(&check_dir.join("pki"));
    let des = check_dir.join("des.htpasswd");
    apache_htpasswd(&des, &[("-B", "fine", "fine-pw"), ("-d", "old", "oldpw")]);
    let config = check_dir.join("proxy.toml");
    write_file(
        &config,
        GateConfig::new(recorder.url())
            .extra_toml("\n[auth]\nmode = \"basic\"\nhtpasswd = [\"des.htpasswd\"]\n")
            .to_toml(
                SocketAddr::from(([127, 0, 0, 1], free_port())),
                pki.cert_pem.to_str().expect("UTF-8 path"),
                pki.key_pem.to_str().expect("UTF-8 path"),
            ),
    );
    let out = run(gate_command().arg("check").arg("--config").arg(&config));
    assert_eq!(out.status.code(), Some(2), "check: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("des.htpasswd:2:") && stderr.contains("DES"),
        "check does not name des.htpasswd:2 and DES:\n{stderr}"
    );
}

/// `registry-gate htpasswd -f FILE ARGS`, with `stdin` written to it.
fn gate_htpasswd(file: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = gate_command()
        .arg("htpasswd")
        .arg("-f")
        .arg(file)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn registry-gate htpasswd");
    {
        use std::io::Write;
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).expect("write stdin");
    }
    child
        .wait_with_output()
        .expect("wait for registry-gate htpasswd")
}

#[test]
fn htpasswd_subcommand_writes_a_file_apache_and_the_gate_accept() {
    require_tool("htpasswd", "apache2-utils");
    let tmp = temp_dir();
    let file = tmp.path().join("users.htpasswd");
    let htpasswd = |args: &[&str], stdin: &str| gate_htpasswd(&file, args, stdin);

    let add = htpasswd(&["add", "ci", "--password-stdin"], "ci-secret\n");
    assert!(add.status.success(), "add: {}", describe(&add));
    assert!(
        !String::from_utf8_lossy(&add.stdout).contains("ci-secret")
            && !String::from_utf8_lossy(&add.stderr).contains("ci-secret"),
        "the password was echoed: {}",
        describe(&add)
    );
    let mode = std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "htpasswd file mode {mode:o}");
    let add2 = htpasswd(&["add", "other", "--password-stdin"], "other-secret\n");
    assert!(add2.status.success(), "add other: {}", describe(&add2));

    // Apache's tool reads what the gate wrote.
    let ok = run(Command::new("htpasswd")
        .arg("-vb")
        .arg(&file)
        .args(["ci", "ci-secret"]));
    assert!(ok.status.success(), "htpasswd -vb: {}", describe(&ok));
    let bad = run(Command::new("htpasswd")
        .arg("-vb")
        .arg(&file)
        .args(["ci", "wrong"]));
    assert!(
        !bad.status.success(),
        "htpasswd -vb accepted a wrong password"
    );

    let verify = htpasswd(&["verify", "ci"], "ci-secret\n");
    assert_eq!(
        verify.status.code(),
        Some(0),
        "verify: {}",
        describe(&verify)
    );
    let verify_bad = htpasswd(&["verify", "ci"], "wrong\n");
    assert_eq!(
        verify_bad.status.code(),
        Some(1),
        "verify wrong: {}",
        describe(&verify_bad)
    );
    let remove = htpasswd(&["remove", "other"], "");
    assert!(remove.status.success(), "remove: {}", describe(&remove));
    let list = htpasswd(&["list"], "");
    assert_eq!(
        String::from_utf8_lossy(&list.stdout),
        "ci\n",
        "{}",
        describe(&list)
    );

    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url()).extra_toml(&format!(
            "\n[auth]\nmode = \"basic\"\nhtpasswd = [\"{}\"]\n",
            file.display()
        )),
    );
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        let url = gate.url("/v2/");
        let (status, body) = status_and_body(&client, &url, Some(("ci", "ci-secret"))).await;
        assert_eq!(status, StatusCode::OK, "ci: {body}");
        let (status, _) = status_and_body(&client, &url, Some(("other", "other-secret"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "a removed user got in");
    });
}

/// A password of 87 bytes, over bcrypt's 72, as Apache's `htpasswd -B` hashes it.
const LONG_PASSWORD: &str = concat!(
    "correct horse battery staple ",
    "correct horse battery staple ",
    "correct horse battery staple ",
);

/// `<dir>/moved.htpasswd`, written by Apache's tool: `other`, and `migrated` with
/// `LONG_PASSWORD`, on line 2.
fn htpasswd_moved_from_apache(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir gate dir");
    let file = dir.join("moved.htpasswd");
    assert_eq!(LONG_PASSWORD.len(), 87);
    apache_htpasswd(
        &file,
        &[
            ("-B", "other", "other-secret"),
            ("-B", "migrated", LONG_PASSWORD),
        ],
    );
    file
}

/// Apache's `htpasswd -B` hashes a password over 72 bytes without complaint, and Apache and
/// nginx accept it; the gate refused it (and took its first 72 bytes alone), so a user moved
/// from them was locked out. Now the gate decides as Apache's own `htpasswd -v` does, on
/// every variant, `htpasswd verify` names the user and line, and `htpasswd add` refuses to
/// write such a password (the two tests after this one).
#[test]
fn a_bcrypt_password_over_72_bytes_logs_in_as_with_apache() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let file = htpasswd_moved_from_apache(&tmp.path().join("gate"));
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url())
            .extra_toml("\n[auth]\nmode = \"basic\"\nhtpasswd = [\"moved.htpasswd\"]\n"),
    );
    let long = LONG_PASSWORD;
    let first_72 = &long[..72];
    let candidates = [
        long.to_string(),
        first_72.to_string(),
        format!("{first_72}something else"),
        long[..71].to_string(),
        "not-the-password".to_string(),
    ];
    let mut accepted = 0;
    // Every candidate is tried, whichever disagree with Apache.
    let mut failures = Vec::new();
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        let url = gate.url("/v2/");
        for password in &candidates {
            let apache = run(Command::new("htpasswd")
                .arg("-vb")
                .arg(&file)
                .arg("migrated")
                .arg(password))
            .status
            .success();
            let (status, body) = status_and_body(&client, &url, Some(("migrated", password))).await;
            let expected = if apache {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            if status != expected {
                failures.push(format!(
                    "a {}-byte password: Apache says {apache}; the gate: {status} {body}",
                    password.len()
                ));
            }
            accepted += usize::from(apache);
        }
    });
    assert!(failures.is_empty(), "{failures:#?}");
    // Apache takes the password and what shares its first 72 bytes, nothing shorter.
    assert_eq!(accepted, 3, "Apache's verdicts changed");
}

#[test]
fn htpasswd_verify_names_the_line_of_a_bcrypt_password_over_72_bytes() {
    let tmp = temp_dir();
    let file = htpasswd_moved_from_apache(tmp.path());
    let verify = gate_htpasswd(
        &file,
        &["verify", "migrated"],
        &format!("{LONG_PASSWORD}\n"),
    );
    assert_eq!(verify.status.code(), Some(0), "{}", describe(&verify));
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        said.contains(&format!("{}:2: user \"migrated\"", file.display()))
            && said.contains("bcrypt ignores what follows byte 72")
            && said.contains("87 bytes"),
        "verify does not name the line and the limit: {}",
        describe(&verify)
    );
}

#[test]
fn htpasswd_add_refuses_a_bcrypt_password_over_72_bytes_and_keeps_the_file() {
    let tmp = temp_dir();
    let file = htpasswd_moved_from_apache(tmp.path());
    let before = std::fs::read_to_string(&file).expect("read the file");
    let add = gate_htpasswd(
        &file,
        &["add", "migrated", "--password-stdin"],
        &format!("{LONG_PASSWORD}\n"),
    );
    assert!(!add.status.success(), "add: {}", describe(&add));
    let said = String::from_utf8_lossy(&add.stderr);
    assert!(
        said.contains("87 bytes") && said.contains("bcrypt ignores what follows byte 72"),
        "add does not say why: {}",
        describe(&add)
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("read the file"),
        before,
        "a refused add changed the file"
    );
}

// ---------------------------------------------------------------------------------------
// Catalog, read-only, throttling

#[test]
fn catalog_lists_only_what_the_caller_may_pull() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url)
            .basic_auth(&[("admin", "admin-secret"), ("alice", "alice-secret")])
            .extra_toml(&rules(&[
                (&["admin"], &["**"], &["*"]),
                (&["alice"], &["team-a/*"], &["pull"]),
            ])),
    );
    let image = oci_image(&tmp.path().join("image"), 1, 16 * 1024);
    for repository in [
        "aaa/hidden",
        "team-a/x",
        "team-b/y",
        "team-a/z",
        "zzz/hidden",
    ] {
        gate.push_ok(
            "admin:admin-secret",
            &image.reference(),
            &format!("{repository}:1"),
        );
    }

    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        let url = gate.url("/v2/_catalog");
        let repositories = |body: &str| -> Vec<String> {
            let value: serde_json::Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("catalog is not JSON ({e}): {body}"));
            value["repositories"]
                .as_array()
                .unwrap_or_else(|| panic!("no repositories in {body}"))
                .iter()
                .map(|r| r.as_str().expect("name").to_string())
                .collect()
        };
        let (status, body) = status_and_body(&client, &url, Some(("admin", "admin-secret"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            repositories(&body),
            [
                "aaa/hidden",
                "team-a/x",
                "team-a/z",
                "team-b/y",
                "zzz/hidden"
            ]
        );
        let (status, body) = status_and_body(&client, &url, Some(("alice", "alice-secret"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            repositories(&body),
            ["team-a/x", "team-a/z"],
            "alice's catalog: {body}"
        );
        let (status, _) = status_and_body(&client, &url, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "anonymous catalog");

        // Page by page (n=1): every visible name arrives, and no cursor names a hidden one
        // (regression: the registry's own `last=` cursor was passed through).
        let mut seen = Vec::new();
        let mut next = Some(gate.url("/v2/_catalog?n=1"));
        while let Some(url) = next.take() {
            let response = get_as(&client, &url, Some(("alice", "alice-secret"))).await;
            assert_eq!(response.status(), StatusCode::OK);
            let link = response
                .headers()
                .get("link")
                .map(|v| v.to_str().expect("ASCII link").to_string());
            let body = text(response).await;
            seen.extend(repositories(&body));
            if let Some(link) = link {
                assert!(
                    !link.contains("hidden") && !link.contains("team-b"),
                    "cursor leaks: {link}"
                );
                let target = link
                    .split_once('<')
                    .and_then(|(_, r)| r.split_once('>'))
                    .expect("link target")
                    .0;
                next = Some(gate.url(target));
            }
            assert!(seen.len() <= 2, "pagination repeats: {seen:?}");
        }
        assert_eq!(seen, ["team-a/x", "team-a/z"]);
    });
}

#[test]
fn read_only_refuses_docker_push_with_its_message_and_still_serves_pulls() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    // An image already in the registry, put there directly.
    let image = oci_image(&tmp.path().join("image"), 1, 64 * 1024);
    registry.push_directly(&image, "team/app:1");
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url).basic_auth(&[("admin", "admin-secret")]),
    );
    let rt = runtime();
    rt.block_on(async {
        let client = gate.client(Proto::Http1);
        switch_to_read_only(&gate, &client, ("admin", "admin-secret")).await;
        let response = client
            .send(
                request(
                    "DELETE",
                    &gate.url(&format!("/v2/team/app/manifests/{}", image.manifest_digest)),
                )
                .header("Authorization", basic("admin", "admin-secret"))
                .body(empty())
                .expect("DELETE request"),
            )
            .await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        let (code, message) = registry_error(&text(response).await);
        assert_eq!(code, "UNSUPPORTED");
        assert!(message.contains("read-only"), "message: {message}");
    });

    let dockerd = Dockerd::start(tmp.path());
    let host = gate.authority();
    dockerd.docker_ok(&["login", "-u", "admin", "-p", "admin-secret", &host]);
    let new = format!("{host}/team/new:1");
    dockerd.import_image(&new);
    let refused = dockerd.docker(&["push", &new]);
    assert!(
        !refused.status.success(),
        "pushed to a read-only gate:\n{}",
        describe(&refused)
    );
    assert!(
        output_text(&refused).contains("read-only"),
        "docker does not show the read-only message:\n{}",
        describe(&refused)
    );
    dockerd.docker_ok(&["pull", &format!("{host}/team/app:1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_lock_out_the_user_from_the_address_but_not_what_it_proved_before() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url())
            .basic_auth(&[("good", "good-secret"), ("fresh", "fresh-secret")]),
    );
    let client = gate.client(Proto::Http1);
    let url = gate.url("/v2/");

    let (status, _) = status_and_body(&client, &url, Some(("good", "good-secret"))).await;
    assert_eq!(status, StatusCode::OK, "verified before the failures");
    for i in 1..=6 {
        let (status, body) =
            status_and_body(&client, &url, Some(("good", &format!("wrong-{i}")))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "failure {i}: {body}");
    }
    // The sixth failure starts a one-second lockout, grown to four so that the requests
    // below come well within it.
    util::lengthen_lockout(401, || async {
        let (status, _) = status_and_body(&client, &url, Some(("good", "wrong-again"))).await;
        status.as_u16()
    })
    .await;
    let throttled = get_as(&client, &url, Some(("good", "wrong-7"))).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = header(&throttled, "retry-after")
        .expect("Retry-After on 429")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1, "Retry-After: {retry_after}");
    let (code, _) = registry_error(&text(throttled).await);
    assert_eq!(code, "TOOMANYREQUESTS");

    let (status, body) = status_and_body(&client, &url, Some(("good", "good-secret"))).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "cached credentials were throttled: {body}"
    );
    // The lockout is good's from this address: another user logging in from it is not
    // caught in it (until the address as a whole fails too often).
    let (status, body) = status_and_body(&client, &url, Some(("fresh", "fresh-secret"))).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "another user from the address: {body}"
    );
}

// ---------------------------------------------------------------------------------------
// Requests that try to get past the rules

/// reader's credentials as a header line.
fn reader_auth() -> String {
    format!("Authorization: {}\r\n", basic("reader", "reader-secret"))
}

/// `line`, then Host, reader's credentials, `extra` header lines and `Connection: close`.
fn reader_head(line: &str, extra: &str) -> String {
    format!(
        "{line}\r\nHost: localhost\r\n{}{extra}Connection: close\r\n\r\n",
        reader_auth()
    )
}

/// A manifest upload's headers, for a two-byte body.
const MANIFEST_HEADERS: &str =
    "Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 2\r\n";

/// A gate that lets reader pull `public/*` and nothing else, in front of a recorder, which
/// has seen the one allowed request: the proof that it sees what the gate forwards.
async fn reader_gate_with_a_seen_pull(tmp: &Path) -> (Recorder, Gate) {
    let recorder = Recorder::start(|_| {
        Reply::ok_json().header(
            "Docker-Content-Digest",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        )
    });
    let gate = Gate::start(
        tmp,
        GateConfig::new(recorder.url())
            .basic_auth(&[("reader", "reader-secret")])
            .extra_toml(&rules(&[(&["reader"], &["public/*"], &["pull"])])),
    );
    let allowed = raw_exchange(
        gate.addr,
        &gate.pki.ca_pem,
        reader_head("GET /v2/public/app/manifests/x HTTP/1.1", "").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&allowed), [200], "allowed pull:\n{allowed}");
    assert_eq!(recorder.requests().len(), 1, "{:#?}", recorder.requests());
    (recorder, gate)
}

/// Fails with `failures` (the `what` the gate did not refuse) and every request the recorder
/// saw other than a pull of public/app framed one way.
fn assert_all_refused(mut failures: Vec<String>, recorder: &Recorder, what: &str) {
    let forwarded = recorder.requests().into_iter().filter(|seen| {
        let framed_twice =
            seen.header("content-length").is_some() && seen.header("transfer-encoding").is_some();
        let overrides = seen.headers.iter().any(|(n, _)| n.contains("method"));
        seen.method != "GET"
            || seen.uri != "/v2/public/app/manifests/x"
            || framed_twice
            || overrides
    });
    failures.extend(forwarded.map(|seen| format!("forwarded upstream: {seen:#?}")));
    assert!(
        failures.is_empty(),
        "{} {what} not refused:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_attempts_never_reach_the_registry() {
    let tmp = temp_dir();
    let (recorder, gate) = reader_gate_with_a_seen_pull(tmp.path()).await;
    let head = reader_head;
    const FORM: &str = "mount=sha256%3Aabc&from=private%2Fsecret";
    let manifest = MANIFEST_HEADERS;

    let attempts: Vec<(&str, String)> = vec![
        ("dot-dot PUT", head("PUT /v2/public/../private/manifests/x HTTP/1.1", manifest) + "{}"),
        ("dot-dot GET", head("GET /v2/public/../private/manifests/x HTTP/1.1", "")),
        ("dot segment", head("GET /v2/public/./../private/manifests/x HTTP/1.1", "")),
        ("double slash", head("GET //v2/private/manifests/x HTTP/1.1", "")),
        ("encoded slashes", head("GET /v2/public%2f..%2fprivate/manifests/x HTTP/1.1", "")),
        ("encoded letter", head("GET /v2/%70rivate/manifests/x HTTP/1.1", "")),
        ("semicolon", head("GET /v2/private/manifests/x;public HTTP/1.1", "")),
        ("semicolon segment", head("GET /v2/public/app;/../../private/manifests/x HTTP/1.1", "")),
        ("backslash", head("GET /v2/public\\..\\private/manifests/x HTTP/1.1", "")),
        ("lowercase put", head("put /v2/public/app/manifests/x HTTP/1.1", manifest) + "{}"),
        ("lowercase get", head("get /v2/private/manifests/x HTTP/1.1", "")),
        (
            "method override on POST",
            head("POST /v2/public/app/blobs/uploads/ HTTP/1.1", "X-HTTP-Method-Override: GET\r\nContent-Length: 0\r\n"),
        ),
        (
            "method override on GET",
            head("GET /v2/public/app/manifests/x HTTP/1.1", "X-HTTP-Method-Override: PUT\r\n"),
        ),
        ("X-HTTP-Method", head("GET /v2/public/app/manifests/x HTTP/1.1", "X-HTTP-Method: DELETE\r\n")),
        ("X-Method-Override", head("GET /v2/public/app/manifests/x HTTP/1.1", "X-Method-Override: DELETE\r\n")),
        ("absolute-form private", head("GET https://evil/v2/private/manifests/x HTTP/1.1", "")),
        ("absolute-form public", head("GET https://evil/v2/public/app/manifests/x HTTP/1.1", "")),
        ("asterisk-form", head("OPTIONS * HTTP/1.1", "")),
        (
            "form body mount",
            head(
                "POST /v2/public/app/blobs/uploads/ HTTP/1.1",
                &format!(
                    "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                    FORM.len()
                ),
            ) + FORM,
        ),
        ("push to private", head("POST /v2/private/blobs/uploads/ HTTP/1.1", "Content-Length: 0\r\n")),
        ("manifest to private", head("PUT /v2/private/manifests/x HTTP/1.1", manifest) + "{}"),
        ("pull private", head("GET /v2/private/manifests/x HTTP/1.1", "")),
        ("push to public", head("PUT /v2/public/app/manifests/x HTTP/1.1", manifest) + "{}"),
        (
            "anonymous",
            "GET /v2/public/app/manifests/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
        ),
        (
            "two Authorization headers",
            head(
                "GET /v2/private/manifests/x HTTP/1.1",
                &format!("Authorization: {}\r\n", basic("admin", "x")),
            ),
        ),
    ];
    let mut failures = Vec::new();
    for (what, bytes) in &attempts {
        let raw = raw_exchange(gate.addr, &gate.pki.ca_pem, bytes.as_bytes()).await;
        let codes = statuses(&raw);
        // No answer at all (a closed connection) is a refusal too; a 2xx/3xx/5xx is not.
        if codes.iter().any(|c| !(400..500).contains(c)) {
            failures.push(format!("{what}: {codes:?}\n{bytes}\n---\n{raw}"));
        }
    }
    // The registry saw only pulls of public/app, each framed one way.
    assert_all_refused(failures, &recorder, "bypass attempt(s)");
}

/// Smuggling with Content-Length and Transfer-Encoding both present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_and_chunked_together_smuggle_no_request_upstream() {
    let tmp = temp_dir();
    let (recorder, gate) = reader_gate_with_a_seen_pull(tmp.path()).await;
    let auth = reader_auth();
    let mut failures = Vec::new();
    // (a) Chunked ends the body early; a second request follows on the same connection and
    //     must be judged on its own.
    let smuggled_a = format!(
        "GET /v2/public/app/manifests/x HTTP/1.1\r\nHost: localhost\r\n{auth}\
         Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
         GET /v2/private/manifests/x HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    );
    let raw_a = raw_exchange(gate.addr, &gate.pki.ca_pem, smuggled_a.as_bytes()).await;
    let codes_a = statuses(&raw_a);
    // RFC 9112 section 6.3: after a request with both, the server must close the connection,
    // so the smuggled request is never read. The wrapper itself may be served or refused.
    if !matches!(codes_a[..], [200] | [400..=499]) {
        failures.push(format!(
            "CL+TE (a): {codes_a:?}\n{smuggled_a}\n---\n{raw_a}"
        ));
    }
    // (b) A back end that believed Content-Length would read the chunk's data as a request.
    let inner = format!(
        "PUT /v2/private/manifests/x HTTP/1.1\r\nHost: localhost\r\n{auth}{MANIFEST_HEADERS}\r\n{{}}"
    );
    let smuggled_b = format!(
        "GET /v2/public/app/manifests/x HTTP/1.1\r\nHost: localhost\r\n{auth}\
         Content-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{inner}\r\n0\r\n\r\n",
        inner.len()
    );
    let raw_b = raw_exchange(gate.addr, &gate.pki.ca_pem, smuggled_b.as_bytes()).await;
    let codes_b = statuses(&raw_b);
    if codes_b.len() > 1 || codes_b.iter().any(|c| *c >= 500) {
        failures.push(format!(
            "CL+TE (b): {codes_b:?}\n{smuggled_b}\n---\n{raw_b}"
        ));
    }
    // The registry saw only pulls of public/app, each framed one way.
    assert_all_refused(failures, &recorder, "smuggling attempt(s)");
}

/// The refusals a person sees say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_push_says_who_may_not_push_where() {
    let tmp = temp_dir();
    let (_recorder, gate) = reader_gate_with_a_seen_pull(tmp.path()).await;
    let denied = raw_exchange(
        gate.addr,
        &gate.pki.ca_pem,
        reader_head(
            "POST /v2/private/blobs/uploads/ HTTP/1.1",
            "Content-Length: 0\r\n",
        )
        .as_bytes(),
    )
    .await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    let body = denied.split("\r\n\r\n").nth(1).unwrap_or_default();
    let (code, message) = registry_error(body.trim());
    assert_eq!(code, "DENIED");
    assert_eq!(message, "access denied: reader may not push private");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_from_a_repository_the_user_may_not_pull_becomes_a_plain_upload() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url())
            .basic_auth(&[("builder", "builder-secret")])
            .extra_toml(&rules(&[
                (&["builder"], &["mine/*"], &["pull", "push"]),
                (&["builder"], &["shared/*"], &["pull"]),
            ])),
    );
    let client = gate.client(Proto::Http1);
    let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    // The last case is a regression: encoded keys used to pass the mount through, and the
    // registry decodes them.
    for (query, kept) in [
        (format!("mount={digest}&from=shared/base"), true),
        (format!("mount={digest}&from=private/secret"), false),
        (format!("%6Dount={digest}&%66rom=private/secret"), false),
    ] {
        let from = query.clone();
        let url = gate.url(&format!("/v2/mine/app/blobs/uploads/?{query}"));
        let response = client
            .send(
                request("POST", &url)
                    .header("Authorization", basic("builder", "builder-secret"))
                    .body(empty())
                    .expect("POST"),
            )
            .await;
        assert!(
            response.status().is_success(),
            "{from}: {}",
            response.status()
        );
        let seen = recorder.requests().last().expect("forwarded").uri.clone();
        assert_eq!(seen.contains("rom="), kept, "{from}: upstream saw {seen}");
        assert_eq!(seen.contains("ount="), kept, "{from}: upstream saw {seen}");
        assert!(seen.starts_with("/v2/mine/app/blobs/uploads/"), "{seen}");
    }
}

#[test]
fn a_file_written_by_the_htpasswd_subcommand_is_read_by_registry_2_itself() {
    let tmp = temp_dir();
    let file = tmp.path().join("users.htpasswd");
    let mut add = util::gate::gate_command();
    add.args(["htpasswd", "-f"])
        .arg(&file)
        .args(["add", "carol", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = add.spawn().expect("spawn htpasswd add");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), b"carol-pw\n")
        .expect("password");
    let out = child.wait_with_output().expect("htpasswd add");
    assert!(out.status.success(), "{}", describe(&out));

    // registry:2's own `auth.htpasswd`, no gate involved.
    let port = util::free_port();
    let config = tmp.path().join("registry.yml");
    util::write_file(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n\
             auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
            tmp.path().join("storage").display(),
            file.display()
        ),
    );
    let registry = util::KillOnDrop(
        std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn docker-registry"),
    );
    assert!(util::wait_until(std::time::Duration::from_secs(10), || {
        util::accepts_tcp(([127, 0, 0, 1], port).into())
    }));
    let get = |creds: &str| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let request = format!(
            "GET /v2/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
            base64::engine::general_purpose::STANDARD.encode(creds)
        );
        std::io::Write::write_all(&mut stream, request.as_bytes()).expect("send");
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).expect("read");
        answer
    };
    assert!(
        get("carol:carol-pw").starts_with("HTTP/1.1 200"),
        "registry:2 refused the file"
    );
    assert!(get("carol:wrong").starts_with("HTTP/1.1 401"));
    drop(registry);
}
