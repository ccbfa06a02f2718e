//! Keyless CI login: an OIDC ID token (GitHub Actions, GitLab CI, a Kubernetes service
//! account) sent as the password is verified against its issuer's published keys and mapped
//! to a rule identity through `[[auth.oidc]] user`.
//!
//! Owns: finding the issuer's keys (discovery document, JWKS), caching and refreshing them,
//! and the verification of one token: signature (RS256, ES256), issuer, audience, lifetime,
//! required claims. It does not decide what the identity may do (that is `rules`), and it
//! never logs a token.
//!
//! Keys are fetched on first use and again when a token names a key id not seen yet (the
//! issuer rotated its keys), at most once per `REFETCH_INTERVAL` so tokens with made-up key
//! ids cannot make the gate hammer the issuer, and at the latest after `KEYS_MAX_AGE`. A
//! failed fetch keeps the keys already known, for at most `KEYS_HARD_MAX_AGE`.
//!
//! Docker sends the token again with every request of a push, so a token that verified is
//! remembered by its SHA-256 (never the token) for `VERIFIED_FOR` or until it expires,
//! whichever comes first, and only while its issuer's key set is the one it was verified
//! against: one signature check per token and job, not one per request, and a key the
//! issuer withdrew stops working at the same fetch as before.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{
    RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::bounded_map::BoundedMap;
use crate::config::OidcConfig;

/// A token whose key id is unknown triggers a refetch at most this often.
const REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// Keys are refetched at least this often, so a key the issuer withdrew stops working.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// While the issuer cannot be reached the last keys stay in use, but not beyond this: a key
/// withdrawn during a long outage must not stay trusted for ever.
const KEYS_HARD_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Clock difference tolerated between the issuer and the gate, for `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 60;
/// Discovery documents and key sets are small; anything larger is not one.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// How long one fetch from the issuer may take; a slow issuer delays only the logins that
/// wait for its keys.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a verified token is taken again on its hash alone.
const VERIFIED_FOR: Duration = Duration::from_secs(300);
/// Verified tokens remembered at most; past it those no longer usable go, then all of them.
const VERIFIED_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("{}: [[auth.oidc]] ca: {message}", path.display())]
    Ca {
        path: std::path::PathBuf,
        message: String,
    },
}

/// Why an ID token did not verify: a failed verification, not a refusal (the login fails
/// with `LoginFailure::BadToken`, and what the request gets is decided above). `reason` is
/// a fixed label for metrics and the failure, `detail` a sentence for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub reason: &'static str,
    pub detail: String,
}

fn unverified(reason: &'static str, detail: impl Into<String>) -> Unverified {
    Unverified {
        reason,
        detail: detail.into(),
    }
}

/// Who a verified token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIdentity {
    /// The rule identity, from the issuer's `user` template.
    pub user: String,
    pub issuer: String,
    pub subject: String,
}

/// The configured issuers and their keys.
pub struct Oidc {
    issuers: Vec<Issuer>,
    verified: VerifiedTokens,
}

/// Tokens that verified lately, by the SHA-256 of the whole token. Built with the issuers,
/// so a reload that changes `[[auth.oidc]]` forgets them all.
struct VerifiedTokens {
    map: BoundedMap<[u8; 32], Remembered>,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        VerifiedTokens {
            map: BoundedMap::new(VERIFIED_MAX),
        }
    }
}

#[derive(Clone)]
struct Remembered {
    identity: OidcIdentity,
    /// The token's `exp`: past it (and the leeway) the token is refused as before.
    exp: u64,
    verified_at: Instant,
    /// The issuer (index into `Oidc::issuers`) and when its key set was fetched: a new key
    /// set, which may have withdrawn the key, makes the token be verified in full again.
    issuer: usize,
    keys_fetched: Instant,
}

struct Issuer {
    config: OidcConfig,
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Empty<Bytes>,
    >,
    /// Never held across an await: logins with known keys only read it.
    keys: std::sync::Mutex<Keys>,
    /// Held while the key set is fetched, so one fetch serves everyone waiting for it.
    fetching: Mutex<()>,
}

#[derive(Default)]
struct Keys {
    set: Vec<Jwk>,
    fetched: Option<Instant>,
    /// The last attempt, successful or not: the refetch rate limit counts failures too.
    attempted: Option<Instant>,
}

impl Keys {
    /// When the set was fetched, while it is younger than `KEYS_MAX_AGE` at `now`.
    fn fresh_at(&self, now: Instant) -> Option<Instant> {
        self.fetched
            .filter(|at| now.saturating_duration_since(*at) < KEYS_MAX_AGE)
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

impl Oidc {
    /// The verifier for the configured issuers; reads each `ca` file. No network yet.
    pub fn new(configs: &[OidcConfig]) -> Result<Oidc, OidcError> {
        let mut issuers = Vec::new();
        for config in configs {
            let tls = client_tls(config.ca.as_deref())?;
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_http1()
                .build();
            let client = Client::builder(TokioExecutor::new()).build(connector);
            issuers.push(Issuer {
                config: config.clone(),
                client,
                keys: std::sync::Mutex::new(Keys::default()),
                fetching: Mutex::new(()),
            });
        }
        Ok(Oidc {
            issuers,
            verified: VerifiedTokens::default(),
        })
    }

    /// Whether a password has the shape of a JWT (three base64url parts, a JSON header), so
    /// that it is checked here and never against the htpasswd users.
    pub fn looks_like_jwt(password: &[u8]) -> bool {
        password.starts_with(b"eyJ")
            && password.iter().filter(|b| **b == b'.').count() == 2
            && password
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    /// Verifies `token` completely and maps it to its identity; a token remembered by
    /// `VerifiedTokens` (see there for when) is taken on its hash.
    pub async fn verify(&self, token: &str) -> Result<OidcIdentity, Unverified> {
        let digest = token_digest(token);
        let now = Instant::now();
        let key_sets = |issuer: usize| self.issuers.get(issuer)?.fresh_keys(now);
        if let Some(identity) = self.verified.get(&digest, unix_now(), now, key_sets) {
            return Ok(identity);
        }
        let verified = self.verify_fully(token).await?;
        let identity = verified.identity.clone();
        self.verified
            .remember(digest, verified, unix_now(), Instant::now());
        Ok(identity)
    }

    /// Signature, issuer and claims: what `VerifiedTokens` needs to remember the token.
    async fn verify_fully(&self, token: &str) -> Result<Remembered, Unverified> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unverified("oidc_malformed", "not a JWT"));
        };
        let header: Header = decode_json(header_b64)
            .ok_or_else(|| unverified("oidc_malformed", "the header is not base64url JSON"))?;
        let claims: serde_json::Map<String, Value> = decode_json(payload_b64)
            .ok_or_else(|| unverified("oidc_malformed", "the payload is not base64url JSON"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| unverified("oidc_malformed", "the signature is not base64url"))?;
        // Only the two algorithms CI issuers use; `none`, HMAC (which a public key would
        // turn into a forgery) and everything else are refused before any key is looked at.
        if header.alg != "RS256" && header.alg != "ES256" {
            return Err(unverified(
                "oidc_bad_algorithm",
                format!("algorithm {:?} is not accepted (RS256, ES256)", header.alg),
            ));
        }
        if header.crit.is_some() {
            return Err(unverified(
                "oidc_malformed",
                "the header has critical extensions the gate does not understand",
            ));
        }
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        let Some((index, issuer)) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.config.issuer == iss.trim_end_matches('/'))
        else {
            return Err(unverified(
                "oidc_unknown_issuer",
                format!("issuer {iss:?} is not configured in [[auth.oidc]]"),
            ));
        };
        let (key, keys_fetched) = issuer.key_for(header.kid.as_deref(), &header.alg).await?;
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        verify_signature(&key, &header.alg, signed.as_bytes(), &signature)?;
        let identity = check_claims(&issuer.config, &claims, unix_now())?;
        Ok(Remembered {
            identity,
            // check_claims refused a token without a numeric exp.
            exp: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
            verified_at: Instant::now(),
            issuer: index,
            keys_fetched,
        })
    }
}

impl VerifiedTokens {
    /// The identity of a token that verified, while it is neither expired nor remembered for
    /// longer than `VERIFIED_FOR`, and `key_sets(issuer)` (when the issuer's fresh key set was
    /// fetched) still names the set it was verified against.
    fn get(
        &self,
        digest: &[u8; 32],
        now_unix: u64,
        now: Instant,
        key_sets: impl Fn(usize) -> Option<Instant>,
    ) -> Option<OidcIdentity> {
        self.map
            .get_if(digest, |seen| {
                key_sets(seen.issuer) == Some(seen.keys_fetched) && seen.usable(now_unix, now)
            })
            .map(|seen| seen.identity)
    }

    fn remember(&self, digest: [u8; 32], verified: Remembered, now_unix: u64, now: Instant) {
        self.map
            .insert(digest, verified, |_, seen| seen.usable(now_unix, now));
    }
}

impl Remembered {
    /// The same expiry rule as `check_claims`, and the remembering limit.
    fn usable(&self, now_unix: u64, now: Instant) -> bool {
        now_unix < self.exp.saturating_add(LEEWAY_SECS)
            && now.saturating_duration_since(self.verified_at) < VERIFIED_FOR
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Issuer {
    /// The key a token names, fetching the key set when it is not known (yet).
    /// The key, and when the set it comes from was fetched.
    async fn key_for(&self, kid: Option<&str>, alg: &str) -> Result<(Jwk, Instant), Unverified> {
        // A known, fresh key is served without waiting for anything: a fetch caused by
        // another token (a rotation, or made-up key ids) never delays these logins.
        if let Some(key) = self.fresh_key(kid, alg) {
            return Ok(key);
        }
        // One fetch at a time; whoever waited looks again before fetching.
        let _fetching = self.fetching.lock().await;
        if let Some(key) = self.fresh_key(kid, alg) {
            return Ok(key);
        }
        if self.may_fetch_now() {
            match self.fetch_keys().await {
                Ok(set) => {
                    let mut keys = self.lock_keys();
                    keys.set = set;
                    keys.fetched = Some(Instant::now());
                }
                Err(detail) => tracing::warn!(
                    issuer = %self.config.issuer,
                    error = %detail,
                    "cannot fetch the OIDC issuer's keys; keeping the keys already known"
                ),
            }
        }
        let keys = self.lock_keys();
        // Keys an unreachable issuer may have withdrawn are trusted only so long.
        if keys
            .fetched
            .is_some_and(|at| at.elapsed() >= KEYS_HARD_MAX_AGE)
        {
            return Err(unverified(
                "oidc_keys_stale",
                format!(
                    "the keys of {} could not be refreshed for {KEYS_HARD_MAX_AGE:?}",
                    self.config.issuer
                ),
            ));
        }
        // A key is found only in a set that was fetched, so both are there or neither.
        match (find_key(&keys.set, kid, alg), keys.fetched) {
            (Some(key), Some(fetched)) => Ok((key.clone(), fetched)),
            _ => Err(unverified(
                "oidc_unknown_key",
                format!(
                    "no {alg} key {:?} in the key set of {}",
                    kid.unwrap_or("(none named)"),
                    self.config.issuer
                ),
            )),
        }
    }

    /// The key, when it is known and the set is younger than `KEYS_MAX_AGE`; and when that
    /// set was fetched.
    fn fresh_key(&self, kid: Option<&str>, alg: &str) -> Option<(Jwk, Instant)> {
        let keys = self.lock_keys();
        let fetched = keys.fresh_at(Instant::now())?;
        Some((find_key(&keys.set, kid, alg)?.clone(), fetched))
    }

    /// When the key set in use was fetched, while it is younger than `KEYS_MAX_AGE` at `now`:
    /// a remembered token is taken only while this names the set it was verified against.
    fn fresh_keys(&self, now: Instant) -> Option<Instant> {
        self.lock_keys().fresh_at(now)
    }

    /// Whether a fetch may start now (at most one per `REFETCH_INTERVAL`, failures
    /// included); if so, the attempt is counted.
    fn may_fetch_now(&self) -> bool {
        let mut keys = self.lock_keys();
        if keys
            .attempted
            .is_some_and(|at| at.elapsed() < REFETCH_INTERVAL)
        {
            return false;
        }
        keys.attempted = Some(Instant::now());
        true
    }

    fn lock_keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        // The keys are replaced whole; a panic elsewhere cannot leave them half written.
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Discovery document, then its `jwks_uri`.
    async fn fetch_keys(&self) -> Result<Vec<Jwk>, String> {
        let discovery_url = format!("{}/.well-known/openid-configuration", self.config.issuer);
        let discovery: Value = self.get_json(&discovery_url).await?;
        // OpenID Connect Discovery §4.3: the document must name the issuer it was fetched
        // for, or keys of one issuer could be served for another.
        let named = discovery
            .get("issuer")
            .and_then(Value::as_str)
            .unwrap_or("");
        if named.trim_end_matches('/') != self.config.issuer {
            return Err(format!(
                "{discovery_url} names issuer {named:?}, not {:?}",
                self.config.issuer
            ));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{discovery_url} has no jwks_uri"))?;
        if !jwks_uri.starts_with("https://") {
            return Err(format!(
                "{discovery_url}: jwks_uri {jwks_uri:?} is not https"
            ));
        }
        let set: JwkSet = serde_json::from_value(self.get_json(jwks_uri).await?)
            .map_err(|e| format!("{jwks_uri}: not a JWK set: {e}"))?;
        // Keys of other kinds (encryption keys, algorithms the gate does not take) are
        // skipped, not fatal: issuers publish them side by side.
        Ok(set
            .keys
            .into_iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
            .filter(|k| k.usage.as_deref().is_none_or(|u| u == "sig"))
            .collect())
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let fetch = async {
            let response = self
                .client
                .request(request)
                .await
                // "client error (Connect)" alone hides the refused connection or
                // certificate behind it.
                .map_err(|e| format!("{url}: {}", crate::error_chain::describe(&e)))?;
            if !response.status().is_success() {
                return Err(format!("{url}: answered {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map_err(|e| format!("{url}: {}", crate::error_chain::describe(&*e)))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("{url}: no answer within {FETCH_TIMEOUT:?}"))?
    }
}

/// The key named `kid` that fits `alg`; without a `kid`, the only key that fits.
fn find_key<'a>(set: &'a [Jwk], kid: Option<&str>, alg: &str) -> Option<&'a Jwk> {
    let fits = |k: &&Jwk| {
        let kind = match alg {
            "RS256" => k.kty == "RSA",
            "ES256" => k.kty == "EC" && k.crv.as_deref() == Some("P-256"),
            _ => false,
        };
        // A key pinned to another algorithm must not be used with this one.
        kind && k.alg.as_deref().is_none_or(|a| a == alg)
    };
    match kid {
        Some(kid) => set
            .iter()
            .filter(fits)
            .find(|k| k.kid.as_deref() == Some(kid)),
        None => {
            let mut fitting = set.iter().filter(fits);
            let only = fitting.next()?;
            fitting.next().is_none().then_some(only)
        }
    }
}

fn verify_signature(
    key: &Jwk,
    alg: &str,
    signed: &[u8],
    signature: &[u8],
) -> Result<(), Unverified> {
    let bad_key = || unverified("oidc_unknown_key", "the issuer's key is not usable");
    let b64 = |v: &Option<String>| -> Result<Vec<u8>, Unverified> {
        URL_SAFE_NO_PAD
            .decode(v.as_deref().ok_or_else(bad_key)?)
            .map_err(|_| bad_key())
    };
    let verified = match alg {
        "RS256" => {
            let n = b64(&key.n)?;
            let e = b64(&key.e)?;
            let strip = |v: &[u8]| {
                let start = v.iter().position(|b| *b != 0).unwrap_or(v.len());
                v[start..].to_vec()
            };
            RsaPublicKeyComponents {
                n: strip(&n),
                e: strip(&e),
            }
            .verify(&RSA_PKCS1_2048_8192_SHA256, signed, signature)
        }
        "ES256" => {
            let x = b64(&key.x)?;
            let y = b64(&key.y)?;
            if x.len() != 32 || y.len() != 32 {
                return Err(bad_key());
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            // JOSE's ES256 signature is r||s, the "fixed" encoding.
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point).verify(signed, signature)
        }
        _ => return Err(unverified("oidc_bad_algorithm", "unsupported algorithm")),
    };
    verified.map_err(|_| unverified("oidc_bad_signature", "the signature does not verify"))
}

/// Audience, lifetime and the required claims of a token whose signature is good; then the
/// identity from the `user` template.
fn check_claims(
    config: &OidcConfig,
    claims: &serde_json::Map<String, Value>,
    now: u64,
) -> Result<OidcIdentity, Unverified> {
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => *a == config.audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(&config.audience)),
        _ => false,
    };
    if !audience_ok {
        return Err(unverified(
            "oidc_wrong_audience",
            format!("the token is not for audience {:?}", config.audience),
        ));
    }
    let number = |name: &str| claims.get(name).and_then(Value::as_u64);
    let Some(exp) = number("exp") else {
        return Err(unverified("oidc_malformed", "the token has no exp claim"));
    };
    if now >= exp.saturating_add(LEEWAY_SECS) {
        return Err(unverified(
            "oidc_expired",
            format!("the token expired at {exp}"),
        ));
    }
    if number("nbf").is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
        return Err(unverified(
            "oidc_not_yet_valid",
            "the token is not valid yet (nbf)",
        ));
    }
    if number("iat").is_some_and(|iat| iat > now + LEEWAY_SECS) {
        return Err(unverified(
            "oidc_not_yet_valid",
            "the token was issued in the future (iat)",
        ));
    }
    let text = |name: &str| -> Option<String> {
        match claims.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    for (name, allowed) in &config.claims {
        match text(name) {
            Some(value) if allowed.contains(&value) => {}
            Some(value) => {
                return Err(unverified(
                    "oidc_claim_mismatch",
                    format!("claim {name} is {value:?}, not one of {allowed:?}"),
                ))
            }
            None => {
                return Err(unverified(
                    "oidc_claim_missing",
                    format!("the token has no claim {name}"),
                ))
            }
        }
    }
    let user = config.user.render(text).map_err(|name| {
        unverified(
            "oidc_claim_missing",
            format!("the user template needs claim {name}, which the token lacks"),
        )
    })?;
    if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(unverified(
            "oidc_claim_mismatch",
            "the user name made from the claims contains spaces or control characters",
        ));
    }
    Ok(OidcIdentity {
        user,
        issuer: config.issuer.clone(),
        subject: text("sub").unwrap_or_default(),
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The system's roots, plus the configured private root if any.
fn client_tls(ca: Option<&Path>) -> Result<rustls::ClientConfig, OidcError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: a private issuer needs only its `ca`.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca {
        let extra = crate::tls::files::load_roots(path).map_err(|message| OidcError::Ca {
            path: path.to_path_buf(),
            message,
        })?;
        roots.roots.extend(extra.roots);
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| OidcError::Ca {
            path: ca.map(Path::to_path_buf).unwrap_or_default(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserTemplate;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: "https://issuer.example".into(),
            audience: "registry.example".into(),
            user: UserTemplate::parse("ci:${repository}").expect("template"),
            claims: vec![("repository_owner".into(), vec!["org".into()])],
            ca: None,
        }
    }

    fn claims(extra: Value) -> serde_json::Map<String, Value> {
        let mut base = serde_json::json!({
            "iss": "https://issuer.example",
            "aud": "registry.example",
            "sub": "repo:org/app:ref:refs/heads/main",
            "repository": "org/app",
            "repository_owner": "org",
            "exp": 2_000,
            "iat": 1_000,
        });
        if let (Some(map), Value::Object(more)) = (base.as_object_mut(), extra) {
            map.extend(more);
        }
        base.as_object().cloned().expect("object")
    }

    #[test]
    fn claims_decide_audience_lifetime_owner_and_user() {
        let c = config();
        let ok = check_claims(&c, &claims(Value::Null), 1_500).expect("valid");
        assert_eq!(ok.user, "ci:org/app");
        assert_eq!(ok.subject, "repo:org/app:ref:refs/heads/main");
        let list_aud = claims(serde_json::json!({"aud": ["other", "registry.example"]}));
        assert!(check_claims(&c, &list_aud, 1_500).is_ok());
        for (extra, now, reason) in [
            (
                serde_json::json!({"aud": "other"}),
                1_500,
                "oidc_wrong_audience",
            ),
            (serde_json::json!({}), 2_000 + LEEWAY_SECS, "oidc_expired"),
            (
                serde_json::json!({"nbf": 1_700}),
                1_500,
                "oidc_not_yet_valid",
            ),
            (
                serde_json::json!({"repository_owner": "evil"}),
                1_500,
                "oidc_claim_mismatch",
            ),
            (
                serde_json::json!({"repository": ["x"]}),
                1_500,
                "oidc_claim_missing",
            ),
        ] {
            let got = check_claims(&c, &claims(extra.clone()), now).expect_err("refused");
            assert_eq!(got.reason, reason, "{extra}");
        }
        let mut no_exp = claims(Value::Null);
        no_exp.remove("exp");
        assert_eq!(
            check_claims(&c, &no_exp, 1_500).expect_err("no exp").reason,
            "oidc_malformed"
        );
    }

    fn es256_key(kid: &str) -> (EcdsaKeyPair, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("parse key");
        let public = pair.public_key().as_ref().to_vec();
        let jwk = Jwk {
            kty: "EC".into(),
            kid: Some(kid.into()),
            alg: None,
            usage: None,
            n: None,
            e: None,
            crv: Some("P-256".into()),
            x: Some(URL_SAFE_NO_PAD.encode(&public[1..33])),
            y: Some(URL_SAFE_NO_PAD.encode(&public[33..65])),
        };
        (pair, jwk)
    }

    #[test]
    fn es256_signatures_verify_and_tampering_does_not() {
        let (pair, jwk) = es256_key("k1");
        let signed = b"header.payload";
        let signature = pair
            .sign(&SystemRandom::new(), signed)
            .expect("sign")
            .as_ref()
            .to_vec();
        verify_signature(&jwk, "ES256", signed, &signature).expect("verifies");
        let tampered = verify_signature(&jwk, "ES256", b"header.payloaD", &signature);
        assert_eq!(tampered.expect_err("tampered").reason, "oidc_bad_signature");
        let (_, other) = es256_key("k2");
        assert!(verify_signature(&other, "ES256", signed, &signature).is_err());
    }

    #[test]
    fn keys_are_chosen_by_id_type_and_pinned_algorithm() {
        let (_, ec) = es256_key("ec");
        let mut pinned = ec.clone();
        pinned.kid = Some("pinned".into());
        pinned.alg = Some("RS256".into());
        let set = vec![ec.clone(), pinned];
        assert!(find_key(&set, Some("ec"), "ES256").is_some());
        assert!(
            find_key(&set, Some("ec"), "RS256").is_none(),
            "an EC key is no RSA key"
        );
        assert!(
            find_key(&set, Some("pinned"), "ES256").is_none(),
            "pinned to RS256"
        );
        assert!(find_key(&set, Some("missing"), "ES256").is_none());
        // Without a kid, only an unambiguous key is taken.
        assert!(find_key(std::slice::from_ref(&ec), None, "ES256").is_some());
        let mut second = ec.clone();
        second.kid = Some("ec2".into());
        assert!(find_key(&[ec, second], None, "ES256").is_none());
    }

    #[tokio::test]
    async fn algorithms_other_than_rs256_and_es256_are_refused_first() {
        let oidc = Oidc::new(&[config()]).expect("verifier");
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(Value::Null)).expect("json"));
        for alg in ["none", "HS256", "RS512", "PS256"] {
            let header = URL_SAFE_NO_PAD.encode(format!("{{\"alg\":\"{alg}\",\"kid\":\"k\"}}"));
            let token = format!("{header}.{payload}.");
            let refused = oidc.verify(&token).await.expect_err("refused");
            assert_eq!(refused.reason, "oidc_bad_algorithm", "{alg}");
        }
        let header = URL_SAFE_NO_PAD.encode("{\"alg\":\"ES256\",\"kid\":\"k\"}");
        let mut foreign = claims(Value::Null);
        foreign.insert("iss".into(), "https://elsewhere".into());
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&foreign).expect("json"));
        let refused = oidc
            .verify(&format!("{header}.{body}.c2ln"))
            .await
            .expect_err("foreign issuer");
        assert_eq!(refused.reason, "oidc_unknown_issuer");
        assert!(Oidc::looks_like_jwt(
            format!("{header}.{body}.c2ln").as_bytes()
        ));
        assert!(!Oidc::looks_like_jwt(b"s3cret"));
        assert!(!Oidc::looks_like_jwt(b"rgt_abc"));
    }

    fn identity(user: &str) -> OidcIdentity {
        OidcIdentity {
            user: user.into(),
            issuer: "https://issuer.test".into(),
            subject: "repo:org/app".into(),
        }
    }

    fn verified_at(at: Instant, exp: u64, keys_fetched: Instant) -> Remembered {
        Remembered {
            identity: identity("ci:app"),
            exp,
            verified_at: at,
            issuer: 0,
            keys_fetched,
        }
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires_or_for_five_minutes() {
        let verified = VerifiedTokens::default();
        let (start, now_unix) = (Instant::now(), 1_000);
        let keys = |_| Some(start);
        let token = token_digest("header.payload.signature");
        verified.remember(token, verified_at(start, 2_000, start), now_unix, start);
        assert_eq!(
            verified.get(&token, now_unix, start, keys),
            Some(identity("ci:app"))
        );
        assert_eq!(
            verified.get(
                &token_digest("header.payload.signaturf"),
                now_unix,
                start,
                keys
            ),
            None,
            "another token is not taken on this one's hash"
        );
        // The same expiry rule as a full check: exp plus the leeway.
        assert!(verified
            .get(&token, 2_000 + LEEWAY_SECS - 1, start, keys)
            .is_some());
        assert_eq!(verified.get(&token, 2_000 + LEEWAY_SECS, start, keys), None);
        // And never longer than VERIFIED_FOR, however far away exp is.
        let later = start + VERIFIED_FOR;
        assert!(verified
            .get(&token, now_unix, later - Duration::from_secs(1), keys)
            .is_some());
        assert_eq!(verified.get(&token, now_unix, later, keys), None);
    }

    #[test]
    fn a_new_key_set_or_none_makes_a_remembered_token_be_verified_again() {
        let verified = VerifiedTokens::default();
        let start = Instant::now();
        let token = token_digest("header.payload.signature");
        verified.remember(token, verified_at(start, 2_000, start), 1_000, start);
        assert!(verified
            .get(&token, 1_000, start, |_| Some(start))
            .is_some());
        // The issuer's keys were fetched again: the key may be gone.
        let refetched = start + Duration::from_secs(1);
        assert_eq!(
            verified.get(&token, 1_000, start, |_| Some(refetched)),
            None
        );
        // The keys are older than KEYS_MAX_AGE, or the issuer is not there at all.
        assert_eq!(verified.get(&token, 1_000, start, |_| None), None);
    }

    #[test]
    fn remembered_tokens_stay_within_their_bound() {
        let verified = VerifiedTokens::default();
        let now = Instant::now();
        let keys = |_| Some(now);
        let digest = |i: usize| token_digest(&format!("token-{i}"));
        // Full, with every other token expired by the time the next one comes.
        for i in 0..VERIFIED_MAX {
            let exp = if i % 2 == 0 { 900 } else { 2_000 };
            verified.remember(digest(i), verified_at(now, exp, now), 800, now);
        }
        verified.remember(
            digest(VERIFIED_MAX),
            verified_at(now, 2_000, now),
            1_000,
            now,
        );
        // The expired ones went; the usable ones stayed.
        let len = verified.map.len();
        assert_eq!(len, VERIFIED_MAX / 2 + 1);
        assert!(verified.get(&digest(1), 1_000, now, keys).is_some());
        assert!(verified
            .get(&digest(VERIFIED_MAX), 1_000, now, keys)
            .is_some());
        // Full of usable tokens: all go, so the bound holds whatever comes.
        for i in VERIFIED_MAX + 1..2 * VERIFIED_MAX + 10 {
            verified.remember(digest(i), verified_at(now, 2_000, now), 1_000, now);
        }
        let len = verified.map.len();
        assert!(len <= VERIFIED_MAX, "{len} remembered");
        let newest = digest(2 * VERIFIED_MAX + 9);
        assert!(verified.get(&newest, 1_000, now, keys).is_some());
    }

    #[tokio::test]
    async fn verify_takes_a_remembered_token_and_checks_a_stale_one_in_full() {
        let oidc = Oidc::new(&[config()]).expect("verifier");
        let fetched = Instant::now();
        oidc.issuers[0].lock_keys().fetched = Some(fetched);
        // No issuer could verify this token: only the memory of it can make it pass.
        let token = "eyJhbGciOiJub25lIn0.e30.";
        let digest = token_digest(token);
        let remembered = |exp| verified_at(Instant::now(), exp, fetched);
        oidc.verified
            .remember(digest, remembered(unix_now() + 600), unix_now(), fetched);
        assert_eq!(oidc.verify(token).await, Ok(identity("ci:app")));
        // The issuer's keys were fetched again: verified in full, and refused.
        oidc.issuers[0].lock_keys().fetched = Some(fetched + Duration::from_millis(1));
        let refused = oidc.verify(token).await.expect_err("new key set");
        assert_eq!(refused.reason, "oidc_bad_algorithm");
        // A key set older than KEYS_MAX_AGE (the issuer could not be reached for an hour)
        // names no set a remembered token could match.
        oidc.issuers[0].lock_keys().fetched = Some(fetched);
        assert_eq!(oidc.issuers[0].fresh_keys(fetched), Some(fetched));
        assert_eq!(oidc.issuers[0].fresh_keys(fetched + KEYS_MAX_AGE), None);
        // Expired while remembered: verified in full too.
        oidc.verified
            .remember(digest, remembered(1_000), unix_now(), fetched);
        let refused = oidc.verify(token).await.expect_err("expired");
        assert_eq!(refused.reason, "oidc_bad_algorithm");
    }
}
