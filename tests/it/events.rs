//! Push and delete events (`[[events]]`), with skopeo pushing to the real registry through
//! the gate and a webhook receiver started by each test: one signed event per accepted
//! manifest push or delete and none for blobs or refusals; receivers that are dead, failing
//! or on https with their own CA.

use crate::util;

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use util::gate::{gate_command, Gate, GateConfig};
use util::image::{oci_image, OciImage};
use util::peer::{answer, Peer};
use util::pki::Pki;
use util::registry::Registry;
use util::{describe, free_port, hex, temp_dir, wait_until, write_file};

const SECRET: &str = "a-long-random-webhook-secret";
const BUILDER: (&str, &str) = ("builder", "builder-secret");
const READER: (&str, &str) = ("reader", "reader-secret");

/// One POST the receiver got.
#[derive(Clone, Debug)]
struct Hook {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// What the receiver answered.
    status: u16,
}

impl Hook {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "event body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A webhook receiver on 127.0.0.1 and a kernel-chosen port: records every request and
/// answers 500 to the first `fail_first`, 200 after. With a server certificate it speaks
/// https.
struct Receiver {
    https: bool,
    hooks: Arc<Mutex<Vec<Hook>>>,
    peer: Peer,
}

impl Receiver {
    fn start(fail_first: usize) -> Receiver {
        Receiver::spawn(fail_first, None)
    }

    fn start_https(pki: &Pki) -> Receiver {
        Receiver::spawn(0, Some(pki.server_config()))
    }

    fn spawn(fail_first: usize, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let hooks = Arc::new(Mutex::new(Vec::new()));
        let https = tls.is_some();
        let (recorded, seen) = (hooks.clone(), AtomicUsize::new(0));
        let peer = Peer::start(tls, move |parts, body| {
            let status = if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                500
            } else {
                200
            };
            let mut headers: Vec<(String, String)> = parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into(),
                    )
                })
                .collect();
            headers.push((":method".into(), parts.method.to_string()));
            headers.push((":path".into(), parts.uri.to_string()));
            recorded.lock().expect("receiver lock").push(Hook {
                headers,
                body: body.to_vec(),
                status,
            });
            answer(status, "text/plain", "ok")
        });
        Receiver { https, hooks, peer }
    }

    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}/hooks/registry", self.peer.addr)
    }

    fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().expect("receiver lock").clone()
    }

    /// Waits until `n` requests arrived, then a while longer to see that no more follow.
    fn exactly(&self, n: usize, within: Duration) -> Vec<Hook> {
        wait_until(within, || self.hooks().len() >= n);
        std::thread::sleep(Duration::from_millis(1500));
        let hooks = self.hooks();
        assert_eq!(hooks.len(), n, "expected {n} event request(s): {hooks:#?}");
        hooks
    }
}

/// `[[events]]` for `url` with the secret in a file next to the gate's config.
fn events_table(tmp: &Path, url: &str, more: &str) -> String {
    let dir = tmp.join("gate");
    std::fs::create_dir_all(&dir).expect("mkdir gate");
    write_file(&dir.join("events.secret"), format!("{SECRET}\n"));
    format!("\n[[events]]\nurl = \"{url}\"\nsecret_file = \"events.secret\"\n{more}")
}

/// The builder may push and delete everything; the reader may only pull.
const RULES: &str = "\n[[rules]]\nusers = [\"reader\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n\n[[rules]]\nusers = [\"builder\"]\nrepositories = [\"**\"]\nactions = [\"*\"]\n";

fn start_gate(tmp: &Path, registry: &Registry, extra: &str) -> Gate {
    Gate::start(
        tmp,
        GateConfig::new(&registry.url)
            .basic_auth(&[BUILDER, READER])
            .extra_toml(&format!("{RULES}{extra}")),
    )
}

fn push(gate: &Gate, image: &OciImage, creds: (&str, &str), target: &str) -> std::process::Output {
    gate.push(
        &format!("{}:{}", creds.0, creds.1),
        &image.reference(),
        target,
    )
}

fn verify_signature(hook: &Hook) {
    let header = hook
        .header("x-registry-gate-signature")
        .unwrap_or_else(|| panic!("no signature header: {hook:#?}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac key");
    mac.update(&hook.body);
    let expected = format!("sha256={}", hex(&mac.finalize().into_bytes()));
    assert_eq!(header, expected, "the signature does not verify");
}

#[test]
fn a_push_and_a_delete_each_send_one_signed_event() {
    let tmp = temp_dir();
    let (_registry, receiver, gate) = gate_and_receiver(tmp.path(), 0);
    let image = oci_image(&tmp.path().join("image"), 2, 64 * 1024);

    // Refused pushes: a wrong password, and a user the rules allow only to pull.
    let wrong = push(&gate, &image, (BUILDER.0, "wrong"), "team/app:v0");
    assert!(!wrong.status.success(), "{}", describe(&wrong));
    let denied = push(&gate, &image, READER, "team/app:v0");
    assert!(!denied.status.success(), "{}", describe(&denied));

    // Three blobs and one manifest: one event, for the manifest.
    let out = push(&gate, &image, BUILDER, "team/app:v1");
    assert!(out.status.success(), "{}", describe(&out));
    let hooks = receiver.exactly(1, Duration::from_secs(15));
    let hook = &hooks[0];
    assert_eq!(hook.header(":method"), Some("POST"));
    assert_eq!(hook.header(":path"), Some("/hooks/registry"));
    assert_eq!(hook.header("content-type"), Some("application/json"));
    verify_signature(hook);
    let event = hook.json();
    assert_eq!(event["action"], "push", "{event}");
    assert_eq!(event["repository"], "team/app", "{event}");
    assert_eq!(event["tag"], "v1", "{event}");
    assert_eq!(event["digest"], image.manifest_digest.as_str(), "{event}");
    assert_eq!(event["actor"]["user"], "builder", "{event}");
    assert_eq!(event["client"], "127.0.0.1", "{event}");
    assert_eq!(
        hook.header("x-registry-gate-event-id"),
        event["id"].as_str(),
        "{event}"
    );
    let time = event["time"].as_str().expect("time");
    assert!(
        time.ends_with('Z') && humantime::parse_rfc3339(time).is_ok(),
        "not RFC 3339 UTC: {time}"
    );
    // The request id is the one in the access log line of the manifest PUT.
    let request_id = event["request_id"].as_str().expect("request id");
    let log = gate.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("request_id={request_id}"))
                && l.contains("method=PUT")
                && l.contains("/manifests/v1")),
        "no access line for request {request_id}:\n{log}"
    );

    // skopeo deletes by digest after resolving the tag.
    let deleted = gate
        .host()
        .delete(&format!("{}:{}", BUILDER.0, BUILDER.1), "team/app:v1");
    assert!(deleted.status.success(), "delete: {}", describe(&deleted));
    let hooks = receiver.exactly(2, Duration::from_secs(15));
    let hook = &hooks[1];
    verify_signature(hook);
    let event = hook.json();
    assert_eq!(event["action"], "delete", "{event}");
    assert!(
        event.get("tag").is_none(),
        "a delete by digest names no tag: {event}"
    );
    assert_eq!(event["repository"], "team/app", "{event}");
    assert_eq!(event["digest"], image.manifest_digest.as_str(), "{event}");
    assert_eq!(event["actor"]["user"], "builder", "{event}");
    assert_ne!(event["id"], hooks[0].json()["id"], "two events, one id");
}

#[test]
fn receivers_get_only_the_actions_and_repositories_they_ask_for() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let deletes = Receiver::start(0);
    let team = Receiver::start(0);
    let extra = format!(
        "{}\n[[events]]\nurl = \"{}\"\nrepositories = [\"team/*\"]\nactions = [\"push\"]\n",
        events_table(tmp.path(), &deletes.url(), "actions = [\"delete\"]\n"),
        team.url()
    );
    let gate = start_gate(tmp.path(), &registry, &extra);
    let image = oci_image(&tmp.path().join("image"), 1, 16 * 1024);
    for target in ["team/app:v1", "other/app:v1"] {
        let out = push(&gate, &image, BUILDER, target);
        assert!(out.status.success(), "{}", describe(&out));
    }
    let hooks = team.exactly(1, Duration::from_secs(15));
    assert_eq!(hooks[0].json()["repository"], "team/app");
    assert!(
        hooks[0].header("x-registry-gate-signature").is_none(),
        "signed without a secret"
    );
    assert!(deletes.hooks().is_empty(), "{:#?}", deletes.hooks());
}

#[test]
fn a_dead_receiver_never_slows_or_fails_a_push() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    // Accepts connections (the kernel's backlog) and never answers; and a closed port.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url = format!("http://{}/hook", silent.local_addr().expect("addr"));
    let closed_url = format!("http://127.0.0.1:{}/hook", free_port());
    let extra = format!(
        "{}\n[[events]]\nurl = \"{closed_url}\"\n",
        events_table(tmp.path(), &silent_url, "timeout = \"2s\"\n"),
    );
    let gate = start_gate(tmp.path(), &registry, &extra);
    let image = oci_image(&tmp.path().join("image"), 2, 64 * 1024);

    for tag in ["v1", "v2", "v3"] {
        let started = Instant::now();
        let out = push(&gate, &image, BUILDER, &format!("team/app:{tag}"));
        let took = started.elapsed();
        assert!(out.status.success(), "{}", describe(&out));
        // One delivery attempt alone takes the 2 s timeout, all of them about 25 s; the
        // bound leaves room for a machine busy with other tests.
        assert!(took < Duration::from_secs(18), "push {tag} took {took:?}");
    }
    let retried = wait_until(Duration::from_secs(10), || {
        let log = gate.log();
        log.contains("event delivery failed; retrying")
            && log.contains("receiver=events[0]")
            && log.contains("receiver=events[1]")
    });
    assert!(
        retried,
        "no retries logged for both receivers:\n{}",
        gate.log()
    );
    let log = gate.log();
    assert!(!log.contains(SECRET), "the secret is in the log");
    drop(silent);
}

/// The registry, a receiver that answers 500 to the first `fail_first` requests, and a gate
/// sending it every event.
fn gate_and_receiver(tmp: &Path, fail_first: usize) -> (Registry, Receiver, Gate) {
    let registry = Registry::start(tmp);
    let receiver = Receiver::start(fail_first);
    let gate = start_gate(tmp, &registry, &events_table(tmp, &receiver.url(), ""));
    (registry, receiver, gate)
}

/// The registry, a receiver that answers 500 twice and then 200, and the gate, after one
/// push of `team/app:v1`.
fn pushed_to_a_receiver_failing_twice(tmp: &Path) -> (Registry, Receiver, Gate, OciImage) {
    let (registry, receiver, gate) = gate_and_receiver(tmp, 2);
    let image = oci_image(&tmp.join("image"), 1, 16 * 1024);
    let out = push(&gate, &image, BUILDER, "team/app:v1");
    assert!(out.status.success(), "{}", describe(&out));
    (registry, receiver, gate, image)
}

#[test]
fn a_failing_receiver_gets_the_event_after_retries() {
    let tmp = temp_dir();
    let (_registry, receiver, gate, image) = pushed_to_a_receiver_failing_twice(tmp.path());
    // Backoff of 1 s then 2 s between the three attempts.
    let hooks = receiver.exactly(3, Duration::from_secs(20));
    assert_eq!(
        hooks.iter().map(|h| h.status).collect::<Vec<_>>(),
        vec![500, 500, 200]
    );
    for hook in &hooks {
        assert_eq!(hook.body, hooks[0].body, "a retry changed the body");
        assert_eq!(
            hook.header("x-registry-gate-event-id"),
            hooks[0].header("x-registry-gate-event-id")
        );
        verify_signature(hook);
    }
    assert_eq!(hooks[0].json()["digest"], image.manifest_digest.as_str());
    let log = gate.log();
    assert_eq!(
        log.matches("event delivery failed; retrying").count(),
        2,
        "{log}"
    );
}

/// A push just before SIGTERM still gets its event out: the shutdown waits for queued
/// events within its grace, retries included. A receiver that never answers cannot hold
/// the exit past the grace, and the log says what was lost.
#[test]
fn a_graceful_shutdown_delivers_queued_events_within_its_grace() {
    let tmp = temp_dir();
    let (registry, receiver, mut gate, image) = pushed_to_a_receiver_failing_twice(tmp.path());
    // The first attempt fails at once; the next two wait 1 s and 2 s.
    gate.signal("TERM");
    let exit = gate.wait_exit(Duration::from_secs(25));
    assert!(
        exit.is_some_and(|e| e.success()),
        "exit {exit:?}:\n{}",
        gate.log()
    );
    let hooks = receiver.hooks();
    assert_eq!(
        hooks.iter().map(|h| h.status).collect::<Vec<_>>(),
        vec![500, 500, 200],
        "{}",
        gate.log()
    );
    assert_eq!(hooks[2].json()["digest"], image.manifest_digest.as_str());
    assert!(!gate.log().contains("undelivered"), "{}", gate.log());

    // Accepts connections and never answers: the grace, not the receiver, ends the wait.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url = format!("http://{}/hook", silent.local_addr().expect("addr"));
    let dir = tmp.path().join("second");
    let mut gate = Gate::start(
        &dir,
        GateConfig::new(&registry.url)
            .basic_auth(&[BUILDER, READER])
            .shutdown_grace("3s")
            .extra_toml(&format!(
                "{RULES}{}",
                events_table(&dir, &silent_url, "timeout = \"30s\"\n")
            )),
    );
    let out = push(&gate, &image, BUILDER, "team/app:v2");
    assert!(out.status.success(), "{}", describe(&out));
    let asked = Instant::now();
    gate.signal("TERM");
    let exit = gate.wait_exit(Duration::from_secs(15));
    let took = asked.elapsed();
    assert!(
        exit.is_some(),
        "still running after {took:?}:\n{}",
        gate.log()
    );
    // Delivering until the retries ran out would take about 25 s.
    assert!(took < Duration::from_secs(12), "the exit took {took:?}");
    assert!(
        gate.log().contains("undelivered=1"),
        "the lost event is not in the log:\n{}",
        gate.log()
    );
    drop(silent);
}

#[test]
fn an_https_receiver_is_checked_against_its_ca() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let receiver_pki = Pki::localhost(&tmp.path().join("receiver-pki"));
    let other_pki = Pki::localhost(&tmp.path().join("other-pki"));
    let trusted = Receiver::start_https(&receiver_pki);
    let untrusted = Receiver::start_https(&receiver_pki);
    let extra = format!(
        "{}\n[[events]]\nurl = \"{}\"\nca = \"{}\"\ntimeout = \"2s\"\n",
        events_table(
            tmp.path(),
            &trusted.url(),
            &format!("ca = \"{}\"\n", receiver_pki.ca_pem.display())
        ),
        untrusted.url(),
        other_pki.ca_pem.display(),
    );
    let gate = start_gate(tmp.path(), &registry, &extra);
    let image = oci_image(&tmp.path().join("image"), 1, 16 * 1024);
    let out = push(&gate, &image, BUILDER, "team/app:v1");
    assert!(out.status.success(), "{}", describe(&out));
    let hooks = trusted.exactly(1, Duration::from_secs(15));
    verify_signature(&hooks[0]);
    assert_eq!(hooks[0].json()["tag"], "v1");
    // A receiver whose certificate the configured CA did not sign never gets the body.
    let refused = wait_until(Duration::from_secs(10), || {
        gate.log()
            .lines()
            .any(|l| l.contains("receiver=events[1]") && l.contains("certificate"))
    });
    assert!(refused, "no certificate error logged:\n{}", gate.log());
    assert!(untrusted.hooks().is_empty(), "{:#?}", untrusted.hooks());
}

#[test]
fn an_access_token_push_names_the_token_and_survives_the_reload_it_causes() {
    let tmp = temp_dir();
    let (_registry, receiver, gate) = gate_and_receiver(tmp.path(), 0);
    // Creating the token rewrites a watched file: the gate reloads and starts new receivers.
    let out = gate_command()
        .args([
            "token",
            "create",
            "--name",
            "ci",
            "--repositories",
            "team/*",
        ])
        .args(["--actions", "pull,push", "--config"])
        .arg(&gate.config_path)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run registry-gate token create");
    assert!(out.status.success(), "{}", describe(&out));
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        wait_until(Duration::from_secs(10), || gate
            .log()
            .contains(util::gate::RELOADED)),
        "no reload:\n{}",
        gate.log()
    );
    let image = oci_image(&tmp.path().join("image"), 1, 16 * 1024);
    let out = push(&gate, &image, ("whoever", &secret), "team/app:v1");
    assert!(out.status.success(), "{}", describe(&out));
    let hooks = receiver.exactly(1, Duration::from_secs(15));
    verify_signature(&hooks[0]);
    let event = hooks[0].json();
    assert_eq!(event["actor"]["token"], "ci", "{event}");
    assert_eq!(event["digest"], image.manifest_digest.as_str(), "{event}");
    assert!(
        !gate.log().contains(&secret),
        "the token secret is in the log"
    );
}
