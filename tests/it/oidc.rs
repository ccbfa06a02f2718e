//! Keyless CI login (`[[auth.oidc]]`): an ID token from an issuer the test runs (its own
//! keys, discovery document and JWKS over TLS on loopback) is the password. Proved with
//! skopeo against the real registry, plus every refusal the issue lists and a key rotation.

use crate::util;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

use util::client::{empty, full, request, text, Proto};
use util::gate::{write_htpasswd, Gate, GateConfig};
use util::image::{oci_image, OciImage};
use util::peer::{answer, Peer};
use util::pki::Pki;
use util::registry::Registry;
use util::{describe, temp_dir, wait_until, TempDir};

const AUDIENCE: &str = "registry-gate-test";

/// A signing key of the test issuer, with its public JWK.
enum Key {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

struct SigningKey {
    kid: String,
    key: Key,
}

impl SigningKey {
    fn es256(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate EC key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("parse EC key");
        SigningKey {
            kid: kid.into(),
            key: Key::Ec(pair),
        }
    }

    fn rs256(kid: &str) -> SigningKey {
        SigningKey {
            kid: kid.into(),
            key: Key::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).expect("generate RSA key")),
        }
    }

    fn alg(&self) -> &'static str {
        match self.key {
            Key::Ec(_) => "ES256",
            Key::Rsa(_) => "RS256",
        }
    }

    fn jwk(&self) -> Value {
        match &self.key {
            Key::Ec(pair) => {
                let public = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                       "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
                       "y": URL_SAFE_NO_PAD.encode(&public[33..65])})
            }
            Key::Rsa(pair) => {
                let public = pair.public_key();
                json!({"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig",
                       "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                       "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero())})
            }
        }
    }

    /// A JWT with this header and these claims, signed by this key.
    fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match &self.key {
            Key::Ec(pair) => pair
                .sign(&rng, input.as_bytes())
                .expect("EC sign")
                .as_ref()
                .to_vec(),
            Key::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
                    .expect("RSA sign");
                sig
            }
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The claims GitHub Actions puts in a job's token, for `repository`.
fn claims(issuer: &str, repository: &str) -> Value {
    let owner = repository.split('/').next().unwrap_or("");
    json!({
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": format!("repo:{repository}:ref:refs/heads/main"),
        "repository": repository,
        "repository_owner": owner,
        "ref": "refs/heads/main",
        "iat": now() - 5,
        "nbf": now() - 5,
        "exp": now() + 300,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// The test's OIDC issuer: discovery document and JWKS over HTTPS on 127.0.0.1; the
/// published keys can be replaced (rotation) while it runs.
struct Issuer {
    url: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<Mutex<usize>>,
    _peer: Peer,
}

impl Issuer {
    fn start(pki: &Pki) -> Issuer {
        let jwks = Arc::new(Mutex::new(json!({"keys": []})));
        let fetches = Arc::new(Mutex::new(0));
        let issuer = Arc::new(Mutex::new(String::new()));
        let (served_jwks, served_fetches, served_issuer) =
            (jwks.clone(), fetches.clone(), issuer.clone());
        let peer = Peer::start(Some(pki.server_config()), move |parts, _| {
            let issuer = served_issuer.lock().expect("issuer").clone();
            let body = match parts.uri.path() {
                "/.well-known/openid-configuration" => {
                    json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")})
                }
                "/jwks" => {
                    *served_fetches.lock().expect("fetches") += 1;
                    served_jwks.lock().expect("jwks").clone()
                }
                _ => return answer(404, "text/plain", ""),
            };
            answer(200, "application/json", body.to_string())
        });
        let url = format!("https://{}", peer.addr);
        *issuer.lock().expect("issuer") = url.clone();
        Issuer {
            url,
            jwks,
            fetches,
            _peer: peer,
        }
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.jwks.lock().expect("jwks") =
            json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    }

    fn fetches(&self) -> usize {
        *self.fetches.lock().expect("fetches")
    }
}

/// A gate in `mode` trusting the issuer: org's tokens only, user `ci:<repository>`, and a
/// rule that lets only org/app's main-branch workflow push org/app/*; `more` is appended.
fn gate_for(
    tmp: &Path,
    registry: &Registry,
    issuer: &Issuer,
    pki: &Pki,
    mode: &str,
    more: &str,
) -> Gate {
    let dir = tmp.join("gate");
    std::fs::create_dir_all(&dir).expect("mkdir gate");
    write_htpasswd(
        &dir.join("htpasswd"),
        &[("admin".into(), "admin-secret".into())],
    );
    let toml = format!(
        "[auth]\nmode = \"{mode}\"\nhtpasswd = [\"htpasswd\"]\n\
         [[auth.oidc]]\nissuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\n\
         user = \"ci:${{repository}}:${{ref}}\"\nclaims = {{ repository_owner = \"org\" }}\n\
         ca = \"{ca}\"\n\
         [[rules]]\nusers = [\"ci:org/app:refs/heads/main\"]\nrepositories = [\"org/app/*\"]\nactions = [\"pull\", \"push\"]\n\
         [[rules]]\nusers = [\"admin\"]\nrepositories = [\"**\"]\nactions = [\"*\"]\n{more}",
        issuer = issuer.url,
        ca = pki.ca_pem.display(),
    );
    Gate::start(tmp, GateConfig::new(&registry.url).extra_toml(&toml))
}

/// `GET /v2/` with `token` as the Basic password: 200 once logged in, 401 when refused.
async fn ping(gate: &Gate, token: &str) -> u16 {
    let basic = STANDARD.encode(format!("ci:{token}"));
    gate.client(Proto::Http1)
        .send(
            request("GET", &gate.url("/v2/"))
                .header("authorization", format!("Basic {basic}"))
                .body(empty())
                .expect("ping request"),
        )
        .await
        .status()
        .as_u16()
}

/// The real registry behind a gate in basic mode trusting the test issuer, which publishes
/// an ES256 and an RS256 key.
struct Oidc {
    _registry: Registry,
    issuer: Issuer,
    es: SigningKey,
    rs: SigningKey,
    gate: Gate,
    /// The claims of org/app's main-branch workflow.
    app: Value,
    image: OciImage,
    /// Last: dropped after the processes whose logs it holds.
    _tmp: TempDir,
}

impl Oidc {
    fn start() -> Oidc {
        let tmp = temp_dir();
        let registry = Registry::start(tmp.path());
        let issuer_pki = Pki::localhost(&tmp.path().join("issuer-pki"));
        let issuer = Issuer::start(&issuer_pki);
        let es = SigningKey::es256("es-1");
        let rs = SigningKey::rs256("rs-1");
        issuer.publish(&[&es, &rs]);
        let gate = gate_for(tmp.path(), &registry, &issuer, &issuer_pki, "basic", "");
        let app = claims(&issuer.url, "org/app");
        let image = oci_image(&tmp.path().join("image"), 1, 64 * 1024);
        Oidc {
            _registry: registry,
            issuer,
            es,
            rs,
            gate,
            app,
            image,
            _tmp: tmp,
        }
    }

    /// skopeo's push of the image to `target` with `token` as the password.
    fn push(&self, token: &str, target: &str) -> std::process::Output {
        let creds = format!("github-actions:{token}");
        self.gate.push(&creds, &self.image.reference(), target)
    }
}

#[test]
fn the_main_branch_workflow_pushes_with_an_es256_or_an_rs256_id_token() {
    let o = Oidc::start();
    let pushed = o.push(&o.es.sign(&o.app), "org/app/api:v1");
    assert!(
        pushed.status.success(),
        "ES256 push: {}\n{}",
        describe(&pushed),
        o.gate.log()
    );
    let pushed = o.push(&o.rs.sign(&o.app), "org/app/api:v2");
    assert!(
        pushed.status.success(),
        "RS256 push: {}\n{}",
        describe(&pushed),
        o.gate.log()
    );
    assert!(
        o.gate.log().contains("user=ci:org/app:refs/heads/main"),
        "the push is not attributed to the workflow:\n{}",
        o.gate.log()
    );
}

/// Its identity may not push elsewhere; another branch's workflow may not push at all.
#[test]
fn an_id_token_pushes_only_where_the_rules_let_its_workflow() {
    let o = Oidc::start();
    let elsewhere = o.push(&o.es.sign(&o.app), "org/other:v1");
    assert!(
        !elsewhere.status.success(),
        "pushed outside its rule: {}",
        describe(&elsewhere)
    );
    let branch = with(o.app.clone(), "ref", json!("refs/heads/feature"));
    let refused = o.push(&o.es.sign(&branch), "org/app/api:v3");
    assert!(
        !refused.status.success(),
        "a feature branch pushed: {}",
        describe(&refused)
    );
}

/// A valid ID token opens no browser session: one would outlive the job's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_logs_in_a_ci_job_but_never_the_browser() {
    let o = Oidc::start();
    let gate = &o.gate;
    assert_eq!(ping(gate, &o.es.sign(&o.app)).await, 200);
    let login = gate
        .client(Proto::Http1)
        .send(
            request("POST", &gate.url("/ui/login"))
                .header("origin", format!("https://{}", gate.authority()))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(full(format!("user=ci&password={}", o.es.sign(&o.app))))
                .expect("login request"),
        )
        .await;
    assert_eq!(login.status(), 401, "a browser login with an ID token");
    assert!(login.headers().get("set-cookie").is_none());
    let page = text(login).await;
    assert!(
        page.contains("An OIDC ID token logs in CI jobs, not the browser"),
        "{page}"
    );
}

/// Every malformed, foreign or stale token is refused with its reason in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_foreign_or_stale_id_token_is_refused_with_its_reason() {
    let o = Oidc::start();
    let (gate, es, app) = (&o.gate, &o.es, &o.app);
    assert_eq!(ping(gate, &es.sign(app)).await, 200, "the valid token");
    let hs256 = {
        // The classic confusion: HMAC "signed" with the issuer's public key as the secret.
        let header = json!({"alg": "HS256", "kid": "es-1"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(app.to_string())
        );
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            es.jwk().to_string().as_bytes(),
        );
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    };
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none"}).to_string()),
        URL_SAFE_NO_PAD.encode(app.to_string())
    );
    let tampered = {
        let good = es.sign(app);
        let parts: Vec<&str> = good.split('.').collect();
        let evil = with(app.clone(), "repository_owner", json!("org"));
        let evil = with(evil, "repository", json!("org/app"));
        let evil = with(evil, "sub", json!("someone-else"));
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(evil.to_string()),
            parts[2]
        )
    };
    let stranger = SigningKey::es256("es-1");
    let cases: Vec<(&str, String)> = vec![
        (
            "oidc_expired",
            es.sign(&with(app.clone(), "exp", json!(now() - 600))),
        ),
        (
            "oidc_not_yet_valid",
            es.sign(&with(app.clone(), "nbf", json!(now() + 600))),
        ),
        (
            "oidc_wrong_audience",
            es.sign(&with(app.clone(), "aud", json!("someone-else"))),
        ),
        (
            "oidc_unknown_issuer",
            es.sign(&with(app.clone(), "iss", json!("https://evil.example"))),
        ),
        (
            "oidc_claim_mismatch",
            es.sign(&claims(&o.issuer.url, "evil/app")),
        ),
        ("oidc_bad_algorithm", none),
        ("oidc_bad_algorithm", hs256),
        ("oidc_bad_signature", tampered),
        ("oidc_bad_signature", stranger.sign(app)),
        ("oidc_unknown_key", SigningKey::es256("nobody").sign(app)),
    ];
    // Every case is tried, whichever fail.
    let mut failures = Vec::new();
    for (reason, token) in &cases {
        let status = ping(gate, token).await;
        if status != 401 {
            failures.push(format!("{reason} was let in: {status}"));
        }
        let log = gate.log();
        if !log.contains(&format!("reason=\"{reason}\""))
            && !log.contains(&format!("reason={reason}"))
        {
            failures.push(format!("no {reason} in the log"));
        }
    }
    let log = gate.log();
    for (reason, token) in &cases {
        if log.contains(token.as_str()) {
            failures.push(format!("a token is in the log ({reason})"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{log}");
}

/// Rotation: the issuer publishes a new key and withdraws the old one. The first token with
/// the new key id makes the gate fetch the keys again (rate-limited: a few seconds after the
/// last fetch), and the withdrawn key stops working: even for a token the gate verified a
/// moment before and remembers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_fetched_and_the_withdrawn_one_stops_working() {
    let o = Oidc::start();
    let (gate, issuer, app) = (&o.gate, &o.issuer, &o.app);
    let remembered = o.es.sign(app);
    assert_eq!(ping(gate, &remembered).await, 200, "before the rotation");
    assert_eq!(ping(gate, &remembered).await, 200, "again, from memory");
    let next = SigningKey::es256("es-2");
    issuer.publish(&[&next]);
    let fetches = issuer.fetches();
    let rotated = next.sign(app);
    let mut status = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        status = ping(gate, &rotated).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        status,
        200,
        "the rotated key was never fetched:\n{}",
        gate.log()
    );
    assert!(issuer.fetches() > fetches, "no new fetch of the key set");
    assert_eq!(
        ping(gate, &o.es.sign(app)).await,
        401,
        "a withdrawn key still works"
    );
    assert_eq!(
        ping(gate, &remembered).await,
        401,
        "a token of the withdrawn key, remembered before the rotation, still works"
    );
}

/// A burst of made-up key ids costs the issuer at most one fetch per interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_made_up_key_ids_costs_the_issuer_one_fetch() {
    let o = Oidc::start();
    // The gate has the keys: a token is verified.
    assert_eq!(ping(&o.gate, &o.es.sign(&o.app)).await, 200);
    let before = o.issuer.fetches();
    for i in 0..20 {
        let _ = ping(
            &o.gate,
            &SigningKey::es256(&format!("made-up-{i}")).sign(&o.app),
        )
        .await;
    }
    assert!(
        o.issuer.fetches() - before <= 1,
        "{} fetches for a burst",
        o.issuer.fetches() - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_issues_bearer_tokens_for_an_id_token() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let issuer_pki = Pki::localhost(&tmp.path().join("issuer-pki"));
    let issuer = Issuer::start(&issuer_pki);
    let key = SigningKey::rs256("rs-1");
    issuer.publish(&[&key]);
    // Events say which job pushed, in token mode too: the bearer token carries the `sub`.
    let events = Arc::new(Mutex::new(Vec::<Value>::new()));
    let recorded = events.clone();
    let receiver = Peer::start(None, move |_, body| {
        if let Ok(event) = serde_json::from_slice::<Value>(&body) {
            recorded.lock().expect("events").push(event);
        }
        answer(200, "text/plain", "ok")
    });
    let gate = gate_for(
        tmp.path(),
        &registry,
        &issuer,
        &issuer_pki,
        "token",
        &format!("[[events]]\nurl = \"http://{}/hook\"\n", receiver.addr),
    );
    let app = claims(&issuer.url, "org/app");
    let id_token = key.sign(&app);
    let ask = |scope: &'static str| {
        let basic = STANDARD.encode(format!("ci:{id_token}"));
        let url = gate.url(&format!("/token?service=registry-gate&scope={scope}"));
        let client = gate.client(Proto::Http1);
        async move {
            let answer = client
                .send(
                    request("GET", &url)
                        .header("authorization", format!("Basic {basic}"))
                        .body(empty())
                        .expect("token request"),
                )
                .await;
            assert_eq!(answer.status(), 200);
            let body: Value = serde_json::from_str(&text(answer).await).expect("JSON");
            let token = body["token"].as_str().expect("token").to_string();
            let payload = token.split('.').nth(1).expect("payload").to_string();
            serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(payload).expect("b64"))
                .expect("claims")
        }
    };
    let granted = ask("repository:org/app/api:pull,push").await;
    assert_eq!(granted["sub"], "ci:org/app:refs/heads/main");
    assert_eq!(
        granted["access"][0]["actions"],
        json!(["pull", "push"]),
        "{granted}"
    );
    assert_eq!(granted["oidc"], app["sub"], "{granted}");
    let other = ask("repository:org/other:pull,push").await;
    assert_eq!(other["access"], json!([]), "{other}");

    // skopeo logs in at /token with the ID token and pushes with the bearer token.
    let image = oci_image(&tmp.path().join("image"), 1, 16 * 1024);
    let pushed = gate.push(
        &format!("github-actions:{id_token}"),
        &image.reference(),
        "org/app/api:v1",
    );
    assert!(
        pushed.status.success(),
        "token-mode push: {}",
        describe(&pushed)
    );
    let arrived = wait_until(Duration::from_secs(10), || {
        !events.lock().expect("events").is_empty()
    });
    assert!(arrived, "no event:\n{}", gate.log());
    let event = events.lock().expect("events")[0].clone();
    assert_eq!(
        event["actor"]["user"], "ci:org/app:refs/heads/main",
        "{event}"
    );
    assert_eq!(event["actor"]["oidc_subject"], app["sub"], "{event}");
}
