//! Access tokens (`registry-gate token`), proved with the real registry, skopeo and docker:
//! a token is the password with any user name, does no more than its scope (and its owner's
//! rules), is refused at once when revoked or expired, and its secret is never logged.

use crate::util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use base64::Engine;
use util::client::{empty, full, request, text, Proto};
use util::docker::Dockerd;
use util::gate::{gate_command, write_htpasswd, Gate, GateConfig};
use util::image::{oci_image, read_oci_layout, OciImage};
use util::registry::Registry;
use util::{describe, temp_dir, wait_until, TempDir};

/// `registry-gate token ARGS --config <the gate's config>`.
fn token(gate: &Gate, args: &[&str]) -> Output {
    gate_command()
        .arg("token")
        .args(args)
        .arg("--config")
        .arg(&gate.config_path)
        .stdin(Stdio::null())
        .output()
        .expect("run registry-gate token")
}

/// Runs a token command that changes the file and waits until the gate has reloaded it.
fn token_change(gate: &Gate, args: &[&str]) -> Output {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    gate.change_with(&all)
}

/// Creates a token and returns its secret, once the gate has it.
fn create(gate: &Gate, args: &[&str]) -> String {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    let out = token_change(gate, &all);
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        secret.starts_with("rgt_"),
        "no secret printed: {}",
        describe(&out)
    );
    secret
}

/// A robot account's token for team/*, pull and push; returns its secret.
fn create_ci(gate: &Gate) -> String {
    create(
        gate,
        &[
            "--name",
            "ci",
            "--repositories",
            "team/*",
            "--actions",
            "pull,push",
        ],
    )
}

/// ci's token (`create_ci`), once it has pushed team/app:v1: a token the gate has verified
/// and counted.
fn create_ci_and_push(t: &Tokens) -> String {
    let ci = create_ci(&t.gate);
    let pushed = t.push(&format!("ci:{ci}"), "team/app:v1");
    assert!(pushed.status.success(), "token push: {}", describe(&pushed));
    ci
}

/// alice may only pull; everyone else may pull and push.
const RULES: &str = "[[rules]]\nusers = [\"alice\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n\
                     [[rules]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pull\", \"push\"]\n";

/// The real registry behind a gate in basic mode with `RULES` and a metrics listener, and a
/// two-layer image to push.
struct Tokens {
    registry: Registry,
    gate: Gate,
    image: OciImage,
    /// Last: dropped after the processes whose logs it holds.
    tmp: TempDir,
}

impl Tokens {
    fn start() -> Tokens {
        let tmp = temp_dir();
        let registry = Registry::start(tmp.path());
        let gate = Gate::start(
            tmp.path(),
            GateConfig::new(&registry.url)
                .basic_auth(&[("alice", "alice-secret"), ("bob", "bob-secret")])
                .extra_toml(&format!("[metrics]\nlisten = \"127.0.0.1:0\"\n{RULES}")),
        );
        let image = oci_image(&tmp.path().join("image"), 2, 64 * 1024);
        Tokens {
            registry,
            gate,
            image,
            tmp,
        }
    }

    /// Like `start`, with team/app:v1 already in the registry, for the tokens that pull.
    fn with_team_app_v1() -> Tokens {
        let t = Tokens::start();
        t.registry.push_directly(&t.image, "team/app:v1");
        t
    }

    /// The image pushed to `target` as `creds`.
    fn push(&self, creds: &str, target: &str) -> Output {
        self.gate.push(creds, &self.image.reference(), target)
    }

    /// team/app:v1 pulled as `creds` into `<tmp>/<into>`.
    fn pull_v1(&self, creds: &str, into: &str) -> Output {
        self.gate
            .host()
            .pull(creds, "team/app:v1", &self.tmp.path().join(into))
    }

    /// Fails if any of `secrets` is in the gate's log.
    fn assert_unlogged(&self, secrets: &[&str]) {
        let log = self.gate.log();
        for secret in secrets {
            assert!(!log.contains(secret), "a token secret is in the log");
        }
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The metrics listener's text.
fn metrics(gate: &Gate) -> String {
    let addr = gate.listener("metrics").expect("metrics listener reported");
    let mut stream = TcpStream::connect(addr).expect("connect to metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .expect("send metrics request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read metrics");
    answer
}

/// A robot account for team/*: any user name goes with the secret.
#[test]
fn a_robot_token_pushes_and_pulls_its_scope_with_any_user_name() {
    let t = Tokens::start();
    let gate = &t.gate;
    let ci = create_ci(gate);
    let pushed = t.push(&format!("whoever:{ci}"), "team/app:v1");
    assert!(
        pushed.status.success(),
        "token push failed: {}\n{}",
        describe(&pushed),
        gate.log()
    );
    let pulled = t.pull_v1(&format!("ci:{ci}"), "pulled");
    assert!(
        pulled.status.success(),
        "token pull failed: {}",
        describe(&pulled)
    );
    assert_eq!(
        read_oci_layout(&t.tmp.path().join("pulled")).manifest_digest,
        t.image.manifest_digest
    );
    let log = gate.log();
    assert!(
        log.contains("user=token:ci token=ci"),
        "robot requests not attributed:\n{log}"
    );
    t.assert_unlogged(&[&ci]);
    let file = std::fs::read_to_string(gate.config_path.with_file_name("access-tokens.toml"))
        .expect("token file next to the htpasswd file");
    assert!(
        !file.contains(&ci) && file.contains("name = \"ci\""),
        "{file}"
    );
}

/// Outside the scope: refused (skopeo's first request is a HEAD, whose 403 carries no
/// message; docker's test below sees one).
#[test]
fn a_token_cannot_push_outside_its_scope() {
    let t = Tokens::start();
    let ci = create_ci(&t.gate);
    let outside = t.push(&format!("ci:{ci}"), "other/app:v1");
    assert!(
        !outside.status.success(),
        "pushed outside the scope: {}",
        describe(&outside)
    );
    assert!(
        output_text(&outside).contains("403"),
        "{}",
        describe(&outside)
    );
}

#[test]
fn a_pull_only_token_pulls_but_does_not_push() {
    let t = Tokens::with_team_app_v1();
    let reader = create(
        &t.gate,
        &[
            "--name",
            "reader",
            "--repositories",
            "**",
            "--actions",
            "pull",
        ],
    );
    let refused = t.push(&format!("reader:{reader}"), "team/app:v2");
    assert!(
        !refused.status.success(),
        "a pull token pushed: {}",
        describe(&refused)
    );
    let pulled = t.pull_v1(&format!("x:{reader}"), "p2");
    assert!(
        pulled.status.success(),
        "a pull token could not pull: {}",
        describe(&pulled)
    );
    t.assert_unlogged(&[&reader]);
}

/// An owned token never does more than its owner: alice may only pull.
#[test]
fn an_owned_token_never_does_more_than_its_owner() {
    let t = Tokens::with_team_app_v1();
    let alices = create(
        &t.gate,
        &[
            "--name",
            "alice-laptop",
            "--user",
            "alice",
            "--repositories",
            "**",
            "--actions",
            "*",
        ],
    );
    let refused = t.push(&format!("alice:{alices}"), "team/app:v3");
    assert!(
        !refused.status.success(),
        "alice's token pushed: {}",
        describe(&refused)
    );
    let pulled = t.pull_v1(&format!("alice:{alices}"), "p3");
    assert!(
        pulled.status.success(),
        "alice's token could not pull: {}",
        describe(&pulled)
    );
    let log = t.gate.log();
    assert!(
        log.contains("user=alice token=alice-laptop"),
        "the owned token's requests are not logged as alice with the token:\n{log}"
    );
    t.assert_unlogged(&[&alices]);
}

#[test]
fn a_token_for_a_user_who_does_not_exist_is_refused_when_created() {
    let t = Tokens::start();
    let nobody = token(
        &t.gate,
        &[
            "create",
            "--name",
            "n",
            "--user",
            "nobody",
            "--repositories",
            "**",
            "--actions",
            "pull",
        ],
    );
    assert!(
        !nobody.status.success(),
        "a token for nobody: {}",
        describe(&nobody)
    );
    assert!(
        output_text(&nobody).contains("no user \"nobody\""),
        "{}",
        describe(&nobody)
    );
}

/// Uses are counted per token, and recorded for `token list`.
#[test]
fn token_uses_are_counted_and_token_list_shows_the_last_one() {
    let t = Tokens::start();
    let gate = &t.gate;
    let ci = create_ci_and_push(&t);
    let text = metrics(gate);
    assert!(
        text.lines()
            .any(|l| l.starts_with("registry_gate_access_token_uses_total{token=\"ci\"}")),
        "no use of ci counted:\n{text}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            let list = output_text(&token(gate, &["list"]));
            list.lines().any(|l| {
                l.starts_with("ci ")
                    && l.contains("team/*:pull,push")
                    && l.matches("Z").count() >= 2
            })
        }),
        "token list never showed when ci was last used:\n{}",
        output_text(&token(gate, &["list"]))
    );
    t.assert_unlogged(&[&ci]);
}

/// Revoked: refused at once, even after the gate has verified it, and the log names the
/// token.
#[test]
fn a_revoked_token_is_refused_at_once_and_the_log_names_it() {
    let t = Tokens::start();
    let gate = &t.gate;
    // Verified once: the gate may remember it.
    let ci = create_ci_and_push(&t);
    token_change(gate, &["revoke", "ci"]);
    let refused = t.push(&format!("ci:{ci}"), "team/app:v4");
    assert!(
        !refused.status.success(),
        "a revoked token pushed: {}",
        describe(&refused)
    );
    let log = gate.log();
    assert!(
        log.contains("access token refused: it was revoked") && log.contains("token=ci"),
        "the refusal does not name the token:\n{log}"
    );
    let list = output_text(&token(gate, &["list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("ci ") && l.trim_end().ends_with("revoked")),
        "{list}"
    );
    t.assert_unlogged(&[&ci]);
}

/// Expired: refused with its own reason.
#[test]
fn an_expired_token_is_refused_with_its_own_reason() {
    let t = Tokens::with_team_app_v1();
    let gate = &t.gate;
    let short = create(
        gate,
        &[
            "--name",
            "short",
            "--repositories",
            "**",
            "--actions",
            "pull",
            "--expires",
            "1s",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let refused = t.pull_v1(&format!("short:{short}"), "p4");
    assert!(
        !refused.status.success(),
        "an expired token pulled: {}",
        describe(&refused)
    );
    assert!(
        gate.log().contains("access token refused: it was expired"),
        "{}",
        gate.log()
    );
    assert!(
        metrics(gate).contains("registry_gate_auth_failures_total{reason=\"token_expired\"}"),
        "expired use not counted"
    );
    t.assert_unlogged(&[&short]);
}

/// A token about to expire is named by the running gate's log and by `doctor`.
#[test]
fn a_token_about_to_expire_is_named_by_the_log_and_by_doctor() {
    let t = Tokens::start();
    let gate = &t.gate;
    create(
        gate,
        &[
            "--name",
            "soon",
            "--repositories",
            "**",
            "--actions",
            "pull",
            "--expires",
            "3d",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(30), || gate.log().lines().any(|l| l
            .contains("access token expires within 7 days")
            && l.contains("token=soon"))),
        "no expiry warning for soon:\n{}",
        gate.log()
    );
    let doctor = gate_command()
        .args(["doctor", "--config"])
        .arg(&gate.config_path)
        .output()
        .expect("run doctor");
    let report = output_text(&doctor);
    assert!(
        report.contains("warn  access token \"soon\" expires at"),
        "doctor did not warn about soon:\n{report}"
    );
}

/// The real registry behind a gate in token mode (builder in its htpasswd file), and ci's
/// token for team/*, pull and push.
fn token_mode_with_ci(tmp: &Path) -> (Registry, Gate, String) {
    let registry = Registry::start(tmp);
    let dir = tmp.join("gate");
    std::fs::create_dir_all(&dir).expect("mkdir gate");
    write_htpasswd(
        &dir.join("htpasswd"),
        &[("builder".into(), "builder-secret".into())],
    );
    let gate = Gate::start(
        tmp,
        GateConfig::new(&registry.url)
            .extra_toml("[auth]\nmode = \"token\"\nhtpasswd = [\"htpasswd\"]\n"),
    );
    let ci = create_ci(&gate);
    (registry, gate, ci)
}

#[test]
fn token_mode_docker_logs_in_with_an_access_token_and_pushes_only_its_scope() {
    let tmp = temp_dir();
    let (_registry, gate, ci) = token_mode_with_ci(tmp.path());

    let dockerd = Dockerd::start(tmp.path());
    let allowed = format!("{}/team/app:v1", gate.authority());
    let outside = format!("{}/other/app:v1", gate.authority());
    dockerd.import_image(&allowed);
    dockerd.docker_ok(&["tag", &allowed, &outside]);
    // -p is how CI scripts often pass it; docker only warns.
    dockerd.docker_ok(&["login", "-u", "ci", "-p", &ci, &gate.authority()]);
    dockerd.docker_ok(&["push", &allowed]);
    let refused = dockerd.docker(&["push", &outside]);
    assert!(
        output_text(&refused).contains("may not push other/app"),
        "docker should show the gate's reason:\n{}",
        describe(&refused)
    );
    assert!(
        !refused.status.success(),
        "pushed outside the scope: {}",
        describe(&refused)
    );
    let id = dockerd.image_id(&allowed);
    dockerd.docker_ok(&["rmi", &allowed, &outside]);
    dockerd.docker_ok(&["pull", &allowed]);
    assert_eq!(dockerd.image_id(&allowed), id, "pulled image differs");
    let log = gate.log();
    assert!(!log.contains(&ci), "the secret is in the log");
}

/// A bearer token issued for the access token works until the access token is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_issued_for_an_access_token_die_with_it() {
    let tmp = temp_dir();
    let (registry, gate, ci) = token_mode_with_ci(tmp.path());
    let image = oci_image(&tmp.path().join("image"), 1, 16 * 1024);
    registry.push_directly(&image, "team/app:v1");

    let client = gate.client(Proto::Http1);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("anyone:{ci}"));
    let answer = client
        .send(
            request(
                "GET",
                &gate.url("/token?service=registry-gate&scope=repository:team/app:pull"),
            )
            .header("authorization", format!("Basic {basic}"))
            .body(empty())
            .expect("token request"),
        )
        .await;
    assert_eq!(
        answer.status(),
        200,
        "no token for the access token:\n{}",
        gate.log()
    );
    let body: serde_json::Value = serde_json::from_str(&text(answer).await).expect("token JSON");
    let bearer = body["token"].as_str().expect("token").to_string();
    let tags = |bearer: String| {
        let client = gate.client(Proto::Http1);
        let url = gate.url("/v2/team/app/tags/list");
        async move {
            client
                .send(
                    request("GET", &url)
                        .header("authorization", format!("Bearer {bearer}"))
                        .body(empty())
                        .expect("tags request"),
                )
                .await
                .status()
        }
    };
    assert_eq!(tags(bearer.clone()).await, 200);
    // The OAuth2 form (`docker login` with a refresh token, containerd) takes it too.
    let oauth = |password: String| {
        let client = gate.client(Proto::Http1);
        let url = gate.url("/token");
        async move {
            let answer = client
                .send(
                    request("POST", &url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(full(format!(
                            "grant_type=password&service=registry-gate&client_id=test\
                             &username=anyone&password={password}\
                             &scope=repository%3Ateam%2Fapp%3Apull"
                        )))
                        .expect("token form"),
                )
                .await;
            (answer.status(), text(answer).await)
        }
    };
    let (status, body) = oauth(ci.clone()).await;
    assert_eq!(status, 200, "{body}");
    let form_bearer: serde_json::Value = serde_json::from_str(&body).expect("token JSON");
    let form_bearer = form_bearer["access_token"].as_str().expect("access_token");
    assert_eq!(tags(form_bearer.to_string()).await, 200);
    let (status, body) = oauth("rgt_not-a-token".into()).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
    token_change(&gate, &["revoke", "ci"]);
    assert_eq!(
        tags(bearer).await,
        401,
        "a bearer token outlived its revoked access token"
    );
    let log = gate.log();
    assert!(!log.contains(&ci), "the secret is in the log");
}
