//! Several gates, one gate: three gates in front of one real registry share their state
//! through a real `redis-server` (`[cluster]`). Racing pushes to a new protected tag through
//! the three pass exactly once; a guesser going round the three is locked out after as many
//! failures as one gate allows; and with Redis stopped, a protected write is refused (503),
//! never passed unchecked, while pulls go on, until Redis is back. An access token made
//! with one gate's configuration works on all three, and its revoke reaches all three
//! within a second.

use crate::util;

use std::time::Duration;

use base64::Engine;
use http::StatusCode;
use util::client::{full, request, text, HttpsClient, Proto};
use util::gate::gate_command;
use util::gate::{Gate, GateConfig};
use util::image::{put_manifests_at_once, OciImage, MANIFEST_MEDIA_TYPE};
use util::redis::Redis;
use util::registry::Registry;
use util::{describe, run, temp_dir};

const CI: (&str, &str) = ("ci", "ci-secret");

const PROTECT: &str = "\n[[protect]]\nrepositories = [\"team/*\"]\ntags = [\"v*\"]\n";

/// One registry, one Redis and three gates sharing it, each with its own directory (and so
/// its own certificate authority).
struct Fleet {
    gates: Vec<Gate>,
    redis: Redis,
    _registry: Registry,
}

fn fleet(tmp: &std::path::Path, extra: &str) -> Fleet {
    let registry = Registry::start(tmp);
    let redis = Redis::start(tmp);
    let cluster = format!(
        "\n[cluster]\nredis = \"{}\"\ntimeout = \"300ms\"\nlock_ttl = \"5s\"\n",
        redis.url()
    );
    let gates = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let dir = tmp.join(name);
            std::fs::create_dir_all(&dir).expect("mkdir gate dir");
            Gate::start(
                &dir,
                GateConfig::new(&registry.url)
                    .basic_auth(&[CI, ("good", "good-secret")])
                    .extra_toml(&format!("{extra}{cluster}")),
            )
        })
        .collect::<Vec<Gate>>();
    // A fleet shares one htpasswd file (a Secret); the harness wrote one per gate, with
    // their own salts, so B and C take A's (sessions carry a stamp of the password hash).
    let shared = std::fs::read(tmp.join("a/gate/htpasswd")).expect("read A's htpasswd");
    for (gate, name) in gates[1..].iter().zip(["b", "c"]) {
        let before = gate.reloads();
        std::fs::write(tmp.join(name).join("gate/htpasswd"), &shared).expect("share htpasswd");
        gate.wait_for_reload(before);
    }
    Fleet {
        gates,
        redis,
        _registry: registry,
    }
}

impl Fleet {
    /// Everything Redis holds, as text, to look for what must never be there.
    fn redis_dump(&self) -> std::path::PathBuf {
        let keys = self.redis.command(&["KEYS", "*"]);
        let mut all = keys.clone();
        for key in keys.lines().filter(|l| l.starts_with("registry-gate")) {
            all.push_str(&self.redis.command(&["HGETALL", key]));
        }
        let path = self.redis.dir().join("dump.txt");
        std::fs::write(&path, all).expect("write the dump");
        path
    }
}

fn basic((user, password): (&str, &str)) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// An image pushed with skopeo through the first gate to the unprotected `team/app:base`,
/// so its blobs are in the repository for the manifests the tests push.
async fn pushed_image(tmp: &std::path::Path, gate: &Gate) -> OciImage {
    gate.push_new_image(
        &tmp.join("image"),
        4 * 1024,
        &format!("{}:{}", CI.0, CI.1),
        "team/app:base",
    )
    .await
}

/// The image's manifest with an annotation that makes it a different manifest.
fn variant(image: &OciImage, mark: &str) -> Vec<u8> {
    let hex = image.manifest_digest.trim_start_matches("sha256:");
    let mut manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(image.dir.join("blobs/sha256").join(hex)).expect("read the manifest"),
    )
    .expect("manifest JSON");
    manifest["annotations"] = serde_json::json!({ "mark": mark });
    serde_json::to_vec(&manifest).expect("serialise")
}

async fn put_manifest(gate: &Gate, tag: &str, body: Vec<u8>) -> (StatusCode, String) {
    let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http1);
    let response = client
        .send(
            request("PUT", &gate.url(&format!("/v2/team/app/manifests/{tag}")))
                .header("Authorization", basic(CI))
                .header("Content-Type", MANIFEST_MEDIA_TYPE)
                .body(full(body))
                .expect("request"),
        )
        .await;
    let status = response.status();
    (status, text(response).await)
}

async fn login(gate: &Gate, who: (&str, &str)) -> StatusCode {
    let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http1);
    client
        .send(
            request("GET", &gate.url("/v2/"))
                .header("Authorization", basic(who))
                .body(full(Vec::new()))
                .expect("request"),
        )
        .await
        .status()
}

/// Each gate's lock alone would let one push per gate through: the registry has no
/// compare-and-swap, so all of them would find the tag absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_racing_pushes_through_three_gates_to_a_new_protected_tag_exactly_one_passes() {
    let tmp = temp_dir();
    let fleet = fleet(tmp.path(), PROTECT);
    let image = pushed_image(tmp.path(), &fleet.gates[0]).await;

    let puts = (0..9)
        .map(|i| {
            let gate = &fleet.gates[i % 3];
            (
                HttpsClient::new(&gate.pki.ca_pem, Proto::Http2),
                gate.url("/v2/team/app/manifests/v7"),
                variant(&image, &format!("racer-{i}")),
            )
        })
        .collect();
    let finished = put_manifests_at_once(puts, &basic(CI)).await;
    let mut passed = Vec::new();
    let mut refused = 0;
    for (status, digest) in finished {
        match status {
            StatusCode::CREATED => passed.push(digest),
            StatusCode::CONFLICT => refused += 1,
            other => panic!("a racer got {other}:\n{}", fleet.gates[0].log()),
        }
    }
    assert_eq!(passed.len(), 1, "{passed:?} all passed");
    assert_eq!(refused, 8);
    let sk = fleet.gates[2].host();
    let now = tokio::task::spawn_blocking(move || {
        sk.manifest_digest(&format!("{}:{}", CI.0, CI.1), "team/app:v7")
    })
    .await
    .expect("skopeo thread");
    assert_eq!(now.as_ref(), passed.first(), "v7 is not the winner's");
}

/// Five failures are free per (address, user) on one gate; going round three gates must not
/// buy a guesser three times as many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guesser_going_round_the_gates_is_locked_out_as_by_one() {
    let tmp = temp_dir();
    let fleet = fleet(tmp.path(), "");
    let gates = &fleet.gates;
    for i in 0..6 {
        let status = login(&gates[i % 3], ("good", &format!("wrong-{i}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "failure {i}");
    }
    // The sixth failure started a one-second lockout; grown to four seconds so the checks
    // below come well within it, each round on another gate.
    let mut round = 0;
    util::lengthen_lockout(401, || {
        round += 1;
        let gate = &gates[round % 3];
        async move { login(gate, ("good", "wrong-again")).await.as_u16() }
    })
    .await;
    for gate in gates {
        assert_eq!(
            login(gate, ("good", "wrong-7")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    // The right password, never verified from here, is refused alike on every gate.
    assert_eq!(
        login(&gates[2], ("good", "good-secret")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The user is locked out, not the address: another user logs in.
    assert_eq!(login(&gates[1], CI).await, StatusCode::OK);
    assert!(
        fleet
            .redis
            .command(&["KEYS", "registry-gate:lockout:*"])
            .contains("lockout"),
        "the lockout is not kept in Redis"
    );
}

/// Without Redis nobody can know whether another gate is writing the tag: the protected
/// write is refused, fast and retryable, and taken again once Redis answers, without a
/// restart. Pulls, logins and tokens do not need Redis at all; and a Redis that comes back
/// empty gets the tokens (and the revoke) back from the gates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_protected_writes_are_refused_pulls_go_on_and_nothing_is_lost() {
    let tmp = temp_dir();
    let mut fleet = fleet(tmp.path(), PROTECT);
    let image = pushed_image(tmp.path(), &fleet.gates[0]).await;
    let gate = &fleet.gates[1];
    // A token made and one revoked before the outage, kept only in Redis.
    let made = token(
        &fleet.gates[0],
        &[
            "create",
            "--name",
            "kept",
            "--repositories",
            "team/*",
            "--actions",
            "pull",
        ],
    );
    let kept = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let made = token(
        &fleet.gates[0],
        &[
            "create",
            "--name",
            "dead",
            "--repositories",
            "team/*",
            "--actions",
            "pull",
        ],
    );
    let dead = String::from_utf8_lossy(&made.stdout).trim().to_string();
    token(&fleet.gates[0], &["revoke", "dead"]);
    let seen = util::wait_until_async(Duration::from_secs(5), || async {
        for gate in &fleet.gates {
            if login(gate, ("kept", &kept)).await != StatusCode::OK
                || login(gate, ("dead", &dead)).await != StatusCode::UNAUTHORIZED
            {
                return false;
            }
        }
        true
    })
    .await;
    assert!(seen, "the gates did not take the tokens from Redis");

    fleet.redis.stop();
    let started = std::time::Instant::now();
    let (status, body) = put_manifest(gate, "v1", variant(&image, "outage")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("UNAVAILABLE"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the refusal waited {:?}",
        started.elapsed()
    );
    // A pull needs no lock.
    let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http1);
    let pulled = client
        .send(
            request("GET", &gate.url("/v2/team/app/manifests/base"))
                .header("Authorization", basic(CI))
                .header("Accept", MANIFEST_MEDIA_TYPE)
                .body(full(Vec::new()))
                .expect("request"),
        )
        .await;
    assert_eq!(pulled.status(), StatusCode::OK);
    // A pull, and a login from a fresh password check (counted locally meanwhile).
    assert_eq!(login(&fleet.gates[2], CI).await, StatusCode::OK);
    let ready = client
        .send(
            request("GET", &gate.url("/readyz"))
                .body(full(Vec::new()))
                .expect("request"),
        )
        .await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(text(ready).await.contains("degraded"));

    // Tokens keep working through the outage, from what each gate read last.
    assert_eq!(login(gate, ("kept", &kept)).await, StatusCode::OK);

    // Redis comes back empty (no persistence): the gates write back the tokens they saw,
    // with the revoke, and take protected writes again, all without a restart.
    fleet.redis.restart();
    let (status, body) = put_manifest(gate, "v1", variant(&image, "after")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(gate.log().contains("Redis answers again"), "{}", gate.log());
    let restored = util::wait_until_async(Duration::from_secs(5), || async {
        fleet
            .redis
            .command(&["HGET", "registry-gate:access-tokens", "text"])
            .contains("kept")
    })
    .await;
    assert!(
        restored,
        "the tokens were not written back to the empty Redis"
    );
    let listed = String::from_utf8_lossy(&token(&fleet.gates[2], &["list"]).stdout).to_string();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("kept") && l.contains("active"))
            && listed
                .lines()
                .any(|l| l.starts_with("dead") && l.contains("revoked")),
        "{listed}"
    );
    for (i, gate) in fleet.gates.iter().enumerate() {
        assert_eq!(
            login(gate, ("kept", &kept)).await,
            StatusCode::OK,
            "gate {i}:\n{}",
            gate.log()
        );
        assert_eq!(login(gate, ("dead", &dead)).await, StatusCode::UNAUTHORIZED);
    }
}

/// `registry-gate token ARGS --config <gate's config>`, which must succeed.
fn token(gate: &Gate, args: &[&str]) -> std::process::Output {
    let out = run(gate_command()
        .arg("token")
        .args(args)
        .arg("--config")
        .arg(&gate.config_path));
    assert!(out.status.success(), "token {args:?}: {}", describe(&out));
    out
}

/// Tokens live in Redis: made with one gate's configuration (as `kubectl exec` into any
/// replica would), used on every gate, revoked through another, refused everywhere within a
/// second, and its last use visible from any gate's configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_made_on_one_gate_works_on_all_and_its_revoke_reaches_all_within_a_second() {
    let tmp = temp_dir();
    let fleet = fleet(tmp.path(), "");
    let gates = &fleet.gates;
    let made = token(
        &gates[0],
        &[
            "create",
            "--name",
            "deploy",
            "--repositories",
            "team/*",
            "--actions",
            "pull",
        ],
    );
    let secret = String::from_utf8_lossy(&made.stdout).trim().to_string();
    assert!(secret.starts_with("rgt_"), "{}", describe(&made));
    let usable_everywhere = util::wait_until_async(Duration::from_secs(5), || async {
        for gate in gates {
            if login(gate, ("deploy", &secret)).await != StatusCode::OK {
                return false;
            }
        }
        true
    })
    .await;
    assert!(
        usable_everywhere,
        "the new token is not accepted by every gate"
    );
    assert!(
        !std::fs::read_to_string(fleet.redis_dump())
            .unwrap_or_default()
            .contains(&secret),
        "a secret in Redis"
    );

    token(&gates[2], &["revoke", "deploy"]);
    let revoked_at = std::time::Instant::now();
    let refused_everywhere = util::wait_until_async(Duration::from_secs(5), || async {
        for gate in gates {
            if login(gate, ("deploy", &secret)).await != StatusCode::UNAUTHORIZED {
                return false;
            }
        }
        true
    })
    .await;
    let took = revoked_at.elapsed();
    assert!(
        refused_everywhere,
        "the revoked token still works somewhere"
    );
    assert!(
        took < Duration::from_millis(1500),
        "the revoke took {took:?} to reach every gate"
    );

    // Last uses are shared in batches (every 10 s); any gate's configuration lists them.
    let listed = util::wait_until_async(Duration::from_secs(15), || async {
        let out = token(&gates[1], &["list"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // CREATED and LAST USED are both times.
        text.lines().any(|l| {
            l.starts_with("deploy") && l.contains("revoked") && l.matches("Z ").count() == 2
        })
    })
    .await;
    assert!(listed, "{}", describe(&token(&gates[1], &["list"])));
}

/// A form POST to `path` on `gate`, from its own origin, with `cookie` if given.
async fn post_form(
    gate: &Gate,
    path: &str,
    cookie: Option<&str>,
    form: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http1);
    let mut builder = request("POST", &gate.url(path))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Origin", format!("https://{}", gate.authority()));
    if let Some(cookie) = cookie {
        builder = builder.header("Cookie", cookie);
    }
    let response = client
        .send(
            builder
                .body(full(form.as_bytes().to_vec()))
                .expect("request"),
        )
        .await;
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, text(response).await)
}

async fn browse(gate: &Gate, cookie: &str) -> (StatusCode, String) {
    browse_at(gate, "/ui/", cookie).await
}

async fn browse_at(gate: &Gate, path: &str, cookie: &str) -> (StatusCode, String) {
    let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http1);
    let response = client
        .send(
            request("GET", &gate.url(path))
                .header("Cookie", cookie)
                .body(full(Vec::new()))
                .expect("request"),
        )
        .await;
    let status = response.status();
    (status, text(response).await)
}

/// Basic mode has no shared token key: without the fleet's session key a session would open
/// only on the gate that made it, and a logout would end it only there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_and_the_activity_feed_are_the_fleets_and_a_logout_ends_it_on_all() {
    let tmp = temp_dir();
    let fleet = fleet(tmp.path(), "");
    let [a, b, c] = [&fleet.gates[0], &fleet.gates[1], &fleet.gates[2]];
    // The gates read the fleet's session key just after they start.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (mut cookie, mut shared) = (String::new(), false);
    while !shared && std::time::Instant::now() < deadline {
        let (status, headers, body) =
            post_form(a, "/ui/login", None, "user=good&password=good-secret").await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        cookie = headers["set-cookie"]
            .to_str()
            .expect("ASCII")
            .split(';')
            .next()
            .expect("name=value")
            .to_string();
        shared = browse(b, &cookie).await.0 == StatusCode::OK;
        if !shared {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(shared, "a session made on gate A does not open on gate B");
    let (status, page) = browse(c, &cookie).await;
    assert_eq!(status, StatusCode::OK);
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("a CSRF field") + marker.len();
    let csrf = page[start..].split('"').next().expect("value").to_string();

    // One activity feed: a push through A is on C's activity page.
    pushed_image(tmp.path(), a).await;
    // The feed is appended just off the push's path: allow it a moment.
    let on_c = util::wait_until_async(Duration::from_secs(5), || async {
        let (status, activity) = browse_at(c, "/ui/activity", &cookie).await;
        status == StatusCode::OK && activity.contains("team/app") && activity.contains("base")
    })
    .await;
    assert!(on_c, "A's push is not on C's activity page");

    let (status, _, body) =
        post_form(a, "/ui/logout", Some(&cookie), &format!("csrf={csrf}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    for gate in [b, c] {
        let (status, body) = browse(gate, &cookie).await;
        assert_eq!(
            status,
            StatusCode::SEE_OTHER,
            "the logged-out session still opens: {body}"
        );
    }
}

/// Events are a journal in a fleet: the push's event is in Redis before skopeo hears back,
/// so killing the gate that holds it (and the one that took the push) with SIGKILL loses
/// nothing: a surviving gate claims it and delivers it, once, with the same event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_event_survives_the_kill_of_the_gate_delivering_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let tmp = temp_dir();
    let down = Arc::new(AtomicBool::new(true));
    let receiver_down = down.clone();
    let receiver = util::recorder::Recorder::start(move |_| {
        if receiver_down.load(Ordering::SeqCst) {
            util::recorder::Reply::status(503)
        } else {
            util::recorder::Reply::ok_json()
        }
    });
    let events = format!(
        "\n[[events]]\nurl = \"{}/hooks\"\ntimeout = \"1s\"\n",
        receiver.url()
    );
    let mut fleet = fleet(tmp.path(), &events);
    pushed_image(tmp.path(), &fleet.gates[0]).await;

    // One gate's consumer took the event and is retrying against the failing receiver.
    let holder = util::wait_until_async(Duration::from_secs(10), || async {
        fleet
            .gates
            .iter()
            .any(|g| g.log().contains("event delivery failed; retrying"))
    })
    .await;
    assert!(holder, "no gate tried to deliver the push event");
    let holder = fleet
        .gates
        .iter()
        .position(|g| g.log().contains("event delivery failed; retrying"))
        .expect("the holder");
    for index in [holder, 0] {
        if fleet.gates[index].try_exit().is_none() {
            fleet.gates[index].signal("KILL");
            fleet.gates[index].wait_exit(Duration::from_secs(5));
        }
    }
    let attempts_before = receiver.requests().len();
    down.store(false, Ordering::SeqCst);

    // A survivor claims it once it has been idle past the receiver's timeout + 5 s.
    let delivered = util::wait_until_async(Duration::from_secs(20), || async {
        receiver.requests().len() > attempts_before
    })
    .await;
    assert!(delivered, "the event died with its gate");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = receiver.requests();
    let ids: std::collections::BTreeSet<String> = attempts
        .iter()
        .filter_map(|r| r.header("x-registry-gate-event-id").map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 1, "one event, one id on every attempt: {ids:?}");
    assert_eq!(
        attempts.len() - attempts_before,
        1,
        "delivered more than once after the kill"
    );
    let _ = &mut fleet;
}

/// The hot path stays off Redis: pulls with a warm credential cache run no script and no
/// command beyond the gates' own background polls (the tokens' version, `HGET`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pulls_make_no_redis_call() {
    let tmp = temp_dir();
    let fleet = fleet(tmp.path(), "");
    let gate = &fleet.gates[0];
    pushed_image(tmp.path(), gate).await;
    let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http1);
    let pull = || async {
        client
            .send(
                request("GET", &gate.url("/v2/team/app/manifests/base"))
                    .header("Authorization", basic(CI))
                    .header("Accept", MANIFEST_MEDIA_TYPE)
                    .body(full(Vec::new()))
                    .expect("request"),
            )
            .await
            .status()
    };
    // The first pull verifies the password (the cold path, which may ask Redis).
    assert_eq!(pull().await, StatusCode::OK);
    let calls = |stats: &str| -> u64 {
        stats
            .lines()
            .filter(|l| !l.starts_with("cmdstat_hget:") && l.starts_with("cmdstat_"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let before = calls(&fleet.redis.command(&["INFO", "commandstats"]));
    for _ in 0..200 {
        assert_eq!(pull().await, StatusCode::OK);
    }
    let after = calls(&fleet.redis.command(&["INFO", "commandstats"]));
    // INFO itself is one call.
    assert_eq!(
        after - before,
        1,
        "200 warm pulls made Redis calls:\n{}",
        fleet.redis.command(&["INFO", "commandstats"])
    );
}
