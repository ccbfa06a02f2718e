//! The gate over time: the zero-config first start (own CA, certificate and user, reused on
//! the next start) and users changed on disk while it runs.

use crate::util;

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use util::client::{empty, request, HttpsClient, Proto};
use util::gate::{gate_command, Gate, GateConfig};
use util::registry::Registry;
use util::{accepts_tcp, describe, read_text, run, temp_dir, wait_until, write_file, KillOnDrop};

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

async fn status(client: &HttpsClient, url: &str, authorization: Option<&str>) -> u16 {
    let mut req = request("GET", url);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    client
        .send(req.body(empty()).expect("request"))
        .await
        .status()
        .as_u16()
}

/// Starts the gate on `config`, waits until it listens, returns it with its log path.
fn spawn(config: &Path, addr: SocketAddr, log: &Path) -> KillOnDrop {
    let out = File::create(log).expect("create log");
    let child = gate_command()
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone log"))
        .stderr(out)
        .spawn()
        .expect("spawn registry-gate");
    let gate = KillOnDrop(child);
    assert!(
        wait_until(Duration::from_secs(15), || accepts_tcp(addr)),
        "the gate did not listen on {addr}:\n{}",
        read_text(log)
    );
    gate
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_config_start_makes_its_own_ca_certificate_and_user_then_reuses_them() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let addr = SocketAddr::from(([127, 0, 0, 1], util::free_port()));
    // Only where to listen and where the registry is: no [tls], no [auth].
    let config = tmp.path().join("proxy.toml");
    write_file(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\n[upstream]\nurl = \"{}\"\n",
            registry.url
        ),
    );
    let log = tmp.path().join("first.log");
    let first = spawn(&config, addr, &log);

    let text = read_text(&log);
    let password = text
        .split("with password \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no generated password printed:\n{text}"))
        .to_string();
    assert!(text.contains("created user \"admin\""), "{text}");
    let certs = tmp.path().join("certs");
    for (file, expected) in [
        ("ca.pem", 0o644),
        ("ca-key.pem", 0o600),
        ("key.pem", 0o600),
        ("htpasswd", 0o600),
    ] {
        assert_eq!(mode(&certs.join(file)), expected, "{file}");
    }
    let ca_before = read_text(&certs.join("ca.pem"));
    // The password is on the terminal once, never in the structured log lines.
    assert_eq!(
        text.matches(&password).count(),
        1,
        "password repeated in the log:\n{text}"
    );

    let url = format!("https://localhost:{}/v2/", addr.port());
    let client = HttpsClient::new(&certs.join("ca.pem"), Proto::Http1);
    assert_eq!(status(&client, &url, None).await, 401);
    assert_eq!(
        status(&client, &url, Some(&basic("admin", "wrong"))).await,
        401
    );
    assert_eq!(
        status(&client, &url, Some(&basic("admin", &password))).await,
        200
    );
    drop(first);

    let log2 = tmp.path().join("second.log");
    let _second = spawn(&config, addr, &log2);
    let text2 = read_text(&log2);
    assert!(
        !text2.contains("created user"),
        "a second user was generated:\n{text2}"
    );
    assert_eq!(
        read_text(&certs.join("ca.pem")),
        ca_before,
        "the CA was regenerated"
    );
    let client = HttpsClient::new(&certs.join("ca.pem"), Proto::Http1);
    assert_eq!(
        status(&client, &url, Some(&basic("admin", &password))).await,
        200
    );
}

fn htpasswd(args: &[&str]) {
    let out = run(Command::new("htpasswd").args(args));
    assert!(
        out.status.success(),
        "htpasswd {args:?}: {}",
        describe(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_changed_on_disk_take_effect_and_a_broken_file_is_refused() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url).basic_auth(&[("alice", "alice-pw")]),
    );
    let file = tmp.path().join("gate").join("htpasswd");
    let client = gate.client(Proto::Http1);
    let url = gate.url("/v2/");
    assert_eq!(
        status(&client, &url, Some(&basic("alice", "alice-pw"))).await,
        200
    );
    assert_eq!(
        status(&client, &url, Some(&basic("bob", "bob-pw"))).await,
        401
    );

    // Polling with bob's password would count as failed logins and trip the throttle, so
    // wait for the gate to say it reloaded, then ask once.
    let reloads = || gate.reloads();
    let path = file.to_str().expect("utf-8");
    htpasswd(&["-b", "-B", "-C", "4", path, "bob", "bob-pw"]);
    assert!(
        wait_until(Duration::from_secs(10), || reloads() >= 1),
        "no reload after the htpasswd file changed:\n{}",
        gate.log()
    );
    assert_eq!(
        status(&client, &url, Some(&basic("bob", "bob-pw"))).await,
        200
    );

    // Alice removed: her cached credential must not outlive the file that vouched for it.
    let before = reloads();
    htpasswd(&["-D", path, "alice"]);
    assert!(
        wait_until(Duration::from_secs(10), || reloads() > before),
        "no reload after alice was removed:\n{}",
        gate.log()
    );
    assert_eq!(
        status(&client, &url, Some(&basic("alice", "alice-pw"))).await,
        401
    );

    // A broken file is refused: the running users stay.
    let mut text = read_text(&file);
    text.push_str("carol:plaintext-password\n");
    write_file(&file, text);
    assert!(
        wait_until(Duration::from_secs(10), || gate.log().contains("plaintext")),
        "the refused reload was not logged:\n{}",
        gate.log()
    );
    assert_eq!(
        status(&client, &url, Some(&basic("bob", "bob-pw"))).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_and_the_healthcheck_command_tell_up_from_down() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(tmp.path(), GateConfig::new(&registry.url).fixed_port());
    let client = gate.client(Proto::Http1);
    assert_eq!(status(&client, &gate.url("/healthz"), None).await, 200);
    assert_eq!(status(&client, &gate.url("/readyz"), None).await, 200);
    let config = gate.config_path.clone();
    let check = |ready: bool| {
        let mut c = gate_command();
        c.arg("--config").arg(&config).arg("healthcheck");
        if ready {
            c.arg("--ready");
        }
        run(&mut c)
    };
    assert!(check(false).status.success(), "{}", describe(&check(false)));
    assert!(check(true).status.success(), "{}", describe(&check(true)));

    drop(registry);
    assert_eq!(status(&client, &gate.url("/healthz"), None).await, 200);
    assert_eq!(status(&client, &gate.url("/readyz"), None).await, 503);
    let not_ready = check(true);
    assert_eq!(not_ready.status.code(), Some(1), "{}", describe(&not_ready));
    // Probes stay out of the access log at info, where other requests are in it.
    assert_eq!(status(&client, &gate.url("/v2/"), None).await, 502);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gate.log().contains("path=/v2/") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = gate.log();
    assert!(log.contains("path=/v2/"), "no access line at all:\n{log}");
    assert!(!log.contains("path=/healthz"), "{log}");
    assert!(!log.contains("path=/readyz"), "{log}");

    drop(gate);
    let down = check(false);
    assert_eq!(down.status.code(), Some(1), "{}", describe(&down));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_alone_configures_the_gate() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let port = util::free_port();
    let log = tmp.path().join("env.log");
    let out = File::create(&log).expect("log");
    let child = gate_command()
        .arg("run")
        .env("REGISTRY_GATE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("REGISTRY_GATE_UPSTREAM__URL", &registry.url)
        .env("REGISTRY_GATE_AUTH__MODE", "none")
        .env("REGISTRY_GATE_TLS__DIR", tmp.path().join("certs"))
        .env_remove("REGISTRY_GATE_CONFIG")
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("spawn");
    let _gate = KillOnDrop(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_until(Duration::from_secs(15), || accepts_tcp(addr)),
        "no config file, configured by the environment, did not start:\n{}",
        read_text(&log)
    );
    let client = HttpsClient::new(&tmp.path().join("certs/ca.pem"), Proto::Http1);
    let url = format!("https://localhost:{port}/v2/");
    assert_eq!(
        status(&client, &url, None).await,
        200,
        "mode = none from the environment"
    );

    // A misspelt variable is an error naming it, not a silently ignored setting.
    let bad = run(gate_command()
        .arg("check")
        .env("REGISTRY_GATE_SERVER__LISEN", "127.0.0.1:1")
        .current_dir(tmp.path()));
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("REGISTRY_GATE_SERVER__LISEN"));
}
