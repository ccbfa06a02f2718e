//! Certificates from an ACME CA (Let's Encrypt, step-ca, pebble): the account, the order, the
//! challenge answers, the cache on disk and the renewal schedule.
//!
//! One task per process owns the schedule. It reads `[tls.acme]` from the current snapshot on
//! every round, so a reload that changes the names or the CA is picked up without a restart.
//! The certificate it obtains is written to the cache first and then swapped into the
//! `CertStore`, so a reload (which re-reads the cache) always sees the newest one. Failures
//! are logged with what to check, retried with a doubling delay, and never take down the
//! certificate already served.
//!
//! Challenge answers live in `Challenges`, which the TLS resolver (tls-alpn-01) and the
//! plain-HTTP listener (http-01) read; nothing else here touches a connection.
//!
//! With `[cluster]`, the gates of a fleet share one certificate (`fleet`): each round a gate
//! first takes a newer certificate another gate stored in Redis (or stores its own, when
//! Redis has an older one), and only a gate holding the fleet's ACME lock orders. Its
//! challenge answers go to Redis before the CA is told to validate, and every gate reads
//! them from there, so the CA may reach any of them. While Redis is away nothing is
//! ordered: the cached certificate stays in use, and renewal starts with a third of its
//! lifetime left, so an outage shorter than that costs nothing.

pub mod fleet;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use self::fleet::{Fleet, HTTP_01, TLS_ALPN_01};
use super::{CertStore, TlsError};
use crate::cluster::ClusterError;
use crate::config::{AcmeChallenge, AcmeConfig};

/// The ALPN protocol of tls-alpn-01 (RFC 8737): a validation connection offers only this.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The longest wait between two looks at the certificate, so that a clock jump, a revoked
/// certificate's ARI window or a changed configuration is noticed within a day.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// The retry delay stops doubling here.
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// How long the CA may take to validate the challenges and to issue.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// With `[cluster]`: the longest wait before a gate looks whether another gate stored a
/// newer certificate (one ordered early, for a changed configuration or on the CA's advice).
const FLEET_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// With `[cluster]`: how often every gate reads the challenge answers of an order under way.
const FLEET_CHALLENGE_POLL: Duration = Duration::from_secs(1);
/// With `[cluster]`: how long the ordering gate waits between publishing an answer and
/// asking the CA to validate, so that every gate has read it (three polls).
const FLEET_CHALLENGE_SPREAD: Duration = Duration::from_secs(3);
/// With `[cluster]`: how soon a gate that found another one ordering looks again.
const FLEET_FOLLOW: Duration = Duration::from_secs(2);

/// The errors of the ACME client carry the whole chain of their cause as text
/// (`error_chain::describe`): instant-acme's transport errors say only "client error
/// (Connect)" at the top, and the reason an operator can act on (a refused connection, a
/// certificate the directory's TLS presented that rustls refused) sits causes deep. Every
/// message is then complete however it is printed, and has no `source()` to repeat.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("cannot reach the ACME directory {directory}: {cause} (check [tls.acme] directory and that this host can make outbound HTTPS connections; a private ACME server's root goes in [tls.acme] directory_ca)")]
    Directory { directory: String, cause: String },
    #[error("{path}: {message}")]
    Cache { path: PathBuf, message: String },
    #[error("the ACME server refused the order for {domains}: {cause}")]
    Order { domains: String, cause: String },
    #[error("the ACME server offers no {challenge} challenge for {domain}; set [tls.acme] challenge to one it offers")]
    NoChallenge {
        domain: String,
        challenge: &'static str,
    },
    #[error("validation failed for {domain}: {detail} ({hint})")]
    Validation {
        domain: String,
        detail: String,
        hint: &'static str,
    },
    #[error("ordering the certificate failed: {0}")]
    Protocol(String),
    #[error("the issued certificate is unusable: {0}")]
    Certificate(String),
    #[error(transparent)]
    Write(#[from] TlsError),
    #[error("no gate of the fleet can order while the shared Redis is unreachable: {0}")]
    Fleet(#[from] ClusterError),
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> AcmeError {
        AcmeError::Protocol(crate::error_chain::describe(&e))
    }
}

/// The challenge answers currently published, for the CA's validation requests.
#[derive(Default)]
pub struct Challenges {
    /// tls-alpn-01: the self-signed certificate carrying the key authorisation, by name.
    tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// http-01: the key authorisation, by token.
    http: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges").finish_non_exhaustive()
    }
}

impl Challenges {
    /// The tls-alpn-01 certificate for `server_name`, if a validation is under way for it.
    pub fn tls_alpn(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = server_name?.to_ascii_lowercase();
        self.tls_alpn.lock().ok()?.get(&name).cloned()
    }

    /// The key authorisation an http-01 validation expects at
    /// `/.well-known/acme-challenge/<token>`.
    pub fn http(&self, token: &str) -> Option<String> {
        self.http.lock().ok()?.get(token).cloned()
    }

    fn publish_tls_alpn(&self, name: &str, key: Arc<CertifiedKey>) {
        if let Ok(mut map) = self.tls_alpn.lock() {
            map.insert(name.to_string(), key);
        }
    }

    fn publish_http(&self, token: &str, key_authorization: &str) {
        if let Ok(mut map) = self.http.lock() {
            map.insert(token.to_string(), key_authorization.to_string());
        }
    }

    /// Serves exactly these answers from now on (what the fleet's Redis holds).
    fn replace(&self, tls_alpn: HashMap<String, Arc<CertifiedKey>>, http: HashMap<String, String>) {
        if let Ok(mut map) = self.tls_alpn.lock() {
            *map = tls_alpn;
        }
        if let Ok(mut map) = self.http.lock() {
            *map = http;
        }
    }

    fn clear(&self) {
        if let Ok(mut map) = self.tls_alpn.lock() {
            map.clear();
        }
        if let Ok(mut map) = self.http.lock() {
            map.clear();
        }
    }
}

/// The name of the certificate for this configuration, after its names and its CA, so a
/// staging certificate is never served once the directory says production.
fn certificate_id(config: &AcmeConfig) -> String {
    let mut hash = Sha256::new();
    hash.update(config.directory.as_bytes());
    for d in &config.domains {
        hash.update(b"\n");
        hash.update(d.as_bytes());
    }
    let first = config.domains.first().map(String::as_str).unwrap_or("none");
    format!("{first}-{}", hex::encode(&hash.finalize()[..8]))
}

/// Where the certificate for this configuration is cached: one file holding the chain and
/// the key, so that it is replaced in one atomic rename.
pub fn certificate_path(config: &AcmeConfig) -> PathBuf {
    config
        .cache_dir
        .join(format!("{}.pem", certificate_id(config)))
}

/// The name of the configured CA's account.
fn directory_id(config: &AcmeConfig) -> String {
    hex::encode(&Sha256::digest(config.directory.as_bytes())[..8])
}

/// The account credentials for the configured CA.
fn account_path(config: &AcmeConfig) -> PathBuf {
    config
        .cache_dir
        .join(format!("account-{}.json", directory_id(config)))
}

/// The facts of `key` when it covers every configured name.
fn covering(config: &AcmeConfig, key: &CertifiedKey) -> Option<CertFacts> {
    let facts = CertFacts::of(key).ok()?;
    config
        .domains
        .iter()
        .all(|d| facts.names.contains(d))
        .then_some(facts)
}

/// The cached certificate, if there is one that covers every configured name.
pub fn cached(
    config: &AcmeConfig,
    provider: &CryptoProvider,
) -> Result<Option<Arc<CertifiedKey>>, AcmeError> {
    let path = certificate_path(config);
    if !path.exists() {
        return Ok(None);
    }
    let key =
        super::files::load_certified_key(&path, &path, provider).map_err(|e| AcmeError::Cache {
            path: path.clone(),
            message: format!("unusable cached certificate, a new one will be ordered: {e}"),
        })?;
    let facts = CertFacts::of(&key).map_err(|message| AcmeError::Cache {
        path: path.clone(),
        message,
    })?;
    if !config.domains.iter().all(|d| facts.names.contains(d)) {
        return Ok(None);
    }
    Ok(Some(key))
}

/// What the schedule needs to know about a certificate.
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub names: Vec<String>,
    /// RFC 9773's identifier, when the certificate has an authority key identifier.
    pub ari_id: Option<CertificateIdentifier<'static>>,
}

impl CertFacts {
    pub fn of(key: &CertifiedKey) -> Result<CertFacts, String> {
        let leaf = key
            .cert
            .first()
            .ok_or_else(|| "no certificate in the chain".to_string())?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
        let validity = cert.validity();
        let time = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
        };
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        let aki = cert
            .extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            });
        let ari_id =
            aki.map(|aki| ari_identifier(&aki, cert.tbs_certificate.raw_serial()).into_owned());
        Ok(CertFacts {
            not_before: time(validity.not_before),
            not_after: time(validity.not_after),
            names,
            ari_id,
        })
    }

    /// When to renew without advice from the CA: with a third of the lifetime left, as
    /// certbot and Let's Encrypt's own guidance do.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after
            .checked_sub(lifetime / 3)
            .unwrap_or(self.not_before)
    }
}

/// RFC 9773 section 4.1: the key identifier's and the serial's content octets (no tag or
/// length), each base64url-encoded.
fn ari_identifier<'a>(key_identifier: &'a [u8], serial: &'a [u8]) -> CertificateIdentifier<'a> {
    CertificateIdentifier::new(key_identifier.into(), serial.into())
}

/// What the renewal task works with; the task knows nothing else of the gate.
pub struct Manager {
    pub certs: Arc<CertStore>,
    pub provider: Arc<CryptoProvider>,
    /// The current `[tls.acme]`, or `None` once a reload removed it (the task then ends).
    pub current: Box<dyn Fn() -> Option<AcmeConfig> + Send + Sync>,
    /// With `[cluster]`: the fleet's store, through which one gate orders for all.
    pub fleet: Option<Arc<Fleet>>,
    /// The last ARI answer: for which certificate, when, and the window. In a fleet the
    /// schedule looks every minute; the CA is asked at most every `MAX_CHECK_INTERVAL`.
    pub ari_asked: Mutex<Option<(String, std::time::Instant, Option<SystemTime>)>>,
}

/// What one round of the schedule did.
enum Round {
    Ordered(CertFacts),
    /// Another gate orders, or the fleet backs off: look again after this.
    Wait(Duration),
}

impl Manager {
    /// Keeps a valid certificate in the store for as long as ACME is configured.
    pub async fn run(self) {
        let manager = Arc::new(self);
        if let Some(fleet) = &manager.fleet {
            tokio::spawn(manager.clone().follow_challenges(fleet.clone()));
        }
        manager.schedule().await;
    }

    async fn schedule(&self) {
        let mut retry: Option<Duration> = None;
        loop {
            let Some(config) = (self.current)() else {
                tracing::info!("[tls.acme] removed from the configuration; ACME renewals stop");
                return;
            };
            let wait = match self.next_order_in(&config).await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot use the cached ACME certificate");
                    Duration::ZERO
                }
            };
            if !wait.is_zero() {
                let check = match self.fleet {
                    Some(_) => FLEET_CHECK_INTERVAL,
                    None => MAX_CHECK_INTERVAL,
                };
                tokio::time::sleep(wait.min(check)).await;
                continue;
            }
            match self.order_once(&config).await {
                Ok(Round::Wait(wait)) => tokio::time::sleep(wait).await,
                Ok(Round::Ordered(facts)) => {
                    retry = None;
                    tracing::info!(
                        domains = ?config.domains,
                        not_after = %humantime::format_rfc3339_seconds(facts.not_after),
                        renew_at = %humantime::format_rfc3339_seconds(facts.renew_at()),
                        "certificate issued and now served"
                    );
                }
                Err(e) => {
                    let delay = retry.map_or(config.retry_interval, |d| (d * 2).min(MAX_RETRY));
                    retry = Some(delay);
                    let serving = self.certs.current().is_some();
                    tracing::error!(
                        error = %e,
                        retry_in = %humantime::format_duration(delay),
                        serving_old_certificate = serving,
                        "{}",
                        if serving {
                            "certificate renewal failed; the current certificate stays in use"
                        } else {
                            "no certificate yet: TLS handshakes are refused until an order succeeds"
                        }
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Orders a certificate and serves it; in a fleet only while holding the fleet's ACME
    /// lock and outside the fleet's backoff, else says how long to wait.
    async fn order_once(&self, config: &AcmeConfig) -> Result<Round, AcmeError> {
        let Some(fleet) = &self.fleet else {
            tracing::info!(domains = ?config.domains, directory = %config.directory, "ordering a certificate");
            return self.order(config).await.map(Round::Ordered);
        };
        let id = certificate_id(config);
        let Some(_lead) = fleet.lead(&id).await? else {
            tracing::info!(domains = ?config.domains, "another gate of the fleet is ordering the certificate; waiting for it");
            return Ok(Round::Wait(FLEET_FOLLOW));
        };
        // The gate that held the lock until now may have stored its certificate just before.
        if !self.next_order_in(config).await?.is_zero() {
            return Ok(Round::Wait(FLEET_FOLLOW));
        }
        // A failed order backs off the whole fleet, not only the gate that placed it: the
        // CA counts failed validations per name, whichever gate asked.
        if let Some(left) = fleet.backoff_left(&id).await? {
            tracing::info!(domains = ?config.domains, retry_in = %humantime::format_duration(left), "the fleet's last order failed; waiting before the next");
            return Ok(Round::Wait(left.max(FLEET_FOLLOW)));
        }
        tracing::info!(domains = ?config.domains, directory = %config.directory, "ordering a certificate for the fleet");
        let facts = match self.order(config).await {
            Ok(facts) => facts,
            Err(e) => {
                if let Err(note) = fleet.back_off(&id, config.retry_interval, MAX_RETRY).await {
                    tracing::warn!(error = %note, "the fleet's ACME backoff is not in Redis");
                }
                return Err(e);
            }
        };
        let _ = fleet.clear_backoff(&id).await;
        // Failing here costs nothing lasting: the next round stores the newer local one.
        if let Err(e) = self.share_local(fleet, config).await {
            tracing::warn!(error = %e, "the new certificate is not in Redis yet; the other gates get it on the next try");
        }
        Ok(Round::Ordered(facts))
    }

    /// Stores the cached certificate in the fleet's Redis.
    async fn share_local(&self, fleet: &Fleet, config: &AcmeConfig) -> Result<(), AcmeError> {
        let path = certificate_path(config);
        let pem = std::fs::read_to_string(&path).map_err(|e| AcmeError::Cache {
            path: path.clone(),
            message: format!("cannot read the cached certificate: {e}"),
        })?;
        fleet
            .store_certificate(&certificate_id(config), &pem)
            .await?;
        Ok(())
    }

    /// With `[cluster]`: the newer of the cached certificate and the one in Redis. A newer
    /// one from Redis replaces the cache; a newer cached one is stored in Redis (a gate that
    /// ordered while Redis was briefly away, or the first gate of a fleet that began as one).
    async fn in_step_with_fleet(
        &self,
        fleet: &Fleet,
        config: &AcmeConfig,
        local: Option<Arc<CertifiedKey>>,
    ) -> Option<Arc<CertifiedKey>> {
        let id = certificate_id(config);
        let stored = match fleet.certificate(&id).await {
            Ok(stored) => stored,
            // The outage is logged by the cluster module; the cache serves meanwhile.
            Err(_) => return local,
        };
        let remote = stored.as_deref().and_then(|pem| {
            match super::files::certified_key_from_pem(pem.as_bytes(), &self.provider) {
                Ok(key) => covering(config, &key).map(|facts| (key, facts)),
                Err(e) => {
                    tracing::warn!(error = %e, id = %id, "the fleet's certificate in Redis is unusable; it will be replaced");
                    None
                }
            }
        });
        let local_end = local
            .as_ref()
            .and_then(|k| covering(config, k))
            .map(|f| f.not_after);
        let remote_end = remote.as_ref().map(|(_, facts)| facts.not_after);
        let newer_remote =
            remote.filter(|(_, facts)| local_end.is_none_or(|end| facts.not_after > end));
        if let Some((key, facts)) = newer_remote {
            if let Some(pem) = &stored {
                if let Err(e) = write_private(&certificate_path(config), pem.as_bytes()) {
                    tracing::warn!(error = %e, "the fleet's certificate is served but not cached on disk");
                }
            }
            tracing::info!(
                domains = ?config.domains,
                not_after = %humantime::format_rfc3339_seconds(facts.not_after),
                replaces_cached = local.is_some(),
                "serving the certificate another gate of the fleet ordered"
            );
            return Some(key);
        }
        // Here Redis holds no usable certificate, or one no newer than the cached one.
        if local_end.is_some() && remote_end != local_end {
            match self.share_local(fleet, config).await {
                Ok(()) => {
                    tracing::info!(domains = ?config.domains, "the cached certificate is now the fleet's (Redis held none or an older one)")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot store the cached certificate in Redis")
                }
            }
        }
        local
    }

    /// How long until the next order is due: zero when there is no cached certificate for
    /// these names, else until its renewal time (the CA's ARI window when it offers one).
    async fn next_order_in(&self, config: &AcmeConfig) -> Result<Duration, AcmeError> {
        let (config_c, provider) = (config.clone(), self.provider.clone());
        let cached = tokio::task::spawn_blocking(move || cached(&config_c, &provider))
            .await
            .map_err(|e| AcmeError::Certificate(format!("cache read task failed: {e}")))?;
        let cached = match (&self.fleet, cached) {
            (None, cached) => cached?,
            (Some(fleet), cached) => {
                let local = cached.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot use the cached ACME certificate");
                    None
                });
                self.in_step_with_fleet(fleet, config, local).await
            }
        };
        let Some(key) = cached else {
            return Ok(Duration::ZERO);
        };
        // A restart or reload must serve what is cached before any network round trip.
        if !self.certs.is_current(&key) {
            self.certs.replace(Some(key.clone()));
        }
        let facts = CertFacts::of(&key).map_err(AcmeError::Certificate)?;
        let now = SystemTime::now();
        let mut due = facts.renew_at();
        if let Some(window) = self.ari_window(config, &facts).await {
            due = window;
        }
        Ok(due.duration_since(now).unwrap_or(Duration::ZERO))
    }

    /// The start of the CA's suggested renewal window (RFC 9773), if it offers one.
    async fn ari_window(&self, config: &AcmeConfig, facts: &CertFacts) -> Option<SystemTime> {
        let id = facts.ari_id.as_ref()?;
        let key = id.to_string();
        if let Ok(asked) = self.ari_asked.lock() {
            if let Some((for_key, at, window)) = &*asked {
                if *for_key == key && at.elapsed() < MAX_CHECK_INTERVAL {
                    return *window;
                }
            }
        }
        let window = self.ask_ari(config, id).await;
        if let Ok(mut asked) = self.ari_asked.lock() {
            *asked = Some((key, std::time::Instant::now(), window));
        }
        window
    }

    /// The CA's renewal window for `id`, asked now.
    async fn ask_ari(
        &self,
        config: &AcmeConfig,
        id: &CertificateIdentifier<'static>,
    ) -> Option<SystemTime> {
        let account = self.account(config, false).await.ok()?;
        match account.renewal_info(id).await {
            Ok((info, _)) => {
                let start = info.suggested_window.start.unix_timestamp().max(0) as u64;
                let end = info.suggested_window.end.unix_timestamp().max(0) as u64;
                // A point inside the window, spread per certificate so that replicas and
                // hosts do not all renew at the same second.
                let spread = end.saturating_sub(start);
                let offset = if spread == 0 {
                    0
                } else {
                    u64::from_le_bytes(
                        Sha256::digest(id.serial.as_bytes())[..8]
                            .try_into()
                            .unwrap_or([0; 8]),
                    ) % spread
                };
                Some(SystemTime::UNIX_EPOCH + Duration::from_secs(start + offset))
            }
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                tracing::debug!(error = %crate::error_chain::describe(&e), "ACME renewal information unavailable; renewing by lifetime");
                None
            }
        }
    }

    /// The account for this CA: created on first use, then reused from the cache.
    /// In a fleet the account is kept in Redis, and only the gate that orders (`register`)
    /// registers one or stores its cached one there, so the fleet has one account per CA.
    async fn account(&self, config: &AcmeConfig, register: bool) -> Result<Account, AcmeError> {
        let path = account_path(config);
        let directory_error = |e: instant_acme::Error| AcmeError::Directory {
            directory: config.directory.clone(),
            cause: crate::error_chain::describe(&e),
        };
        let builder = || match &config.directory_ca {
            Some(ca) => Account::builder_with_root(ca).map_err(|e| AcmeError::Cache {
                path: ca.clone(),
                message: format!("[tls.acme] directory_ca is not a usable PEM root: {e}"),
            }),
            None => Account::builder().map_err(directory_error),
        };
        let directory = directory_id(config);
        if let Some(fleet) = &self.fleet {
            let stored = match fleet.account(&directory).await {
                Ok(stored) => stored,
                Err(e) if register => return Err(e.into()),
                Err(_) => None,
            };
            if let Some(text) = stored {
                match serde_json::from_str::<AccountCredentials>(&text) {
                    Ok(credentials) => {
                        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                            write_private(&path, text.as_bytes())?;
                        }
                        return builder()?
                            .from_credentials(credentials)
                            .await
                            .map_err(directory_error);
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "the fleet's ACME account in Redis is unreadable; using or registering another"
                    ),
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(&path) {
            match serde_json::from_str::<AccountCredentials>(&text) {
                Ok(credentials) => {
                    if let (Some(fleet), true) = (&self.fleet, register) {
                        fleet.store_account(&directory, &text).await?;
                    }
                    return builder()?
                        .from_credentials(credentials)
                        .await
                        .map_err(directory_error);
                }
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "the cached ACME account is unreadable; registering a new one"
                ),
            }
        }
        if !register {
            return Err(AcmeError::Protocol(
                "no ACME account yet; the gate that orders registers one".into(),
            ));
        }
        let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    // Configuring an ACME CA is accepting its terms, as with certbot's
                    // --agree-tos; proxy.toml.example says so next to the key.
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                config.directory.clone(),
                None,
            )
            .await
            .map_err(directory_error)?;
        let json = serde_json::to_vec_pretty(&credentials)
            .map_err(|e| AcmeError::Certificate(format!("cannot store the account: {e}")))?;
        write_private(&path, &json)?;
        tracing::info!(path = %path.display(), "ACME account registered");
        if let Some(fleet) = &self.fleet {
            let text = String::from_utf8_lossy(&json);
            if let Err(e) = fleet.store_account(&directory, &text).await {
                tracing::warn!(error = %e, "the new ACME account is not in Redis; the next order may register another");
            }
        }
        Ok(account)
    }

    /// One order, start to finish; on success the certificate is cached and served.
    async fn order(&self, config: &AcmeConfig) -> Result<CertFacts, AcmeError> {
        let account = self.account(config, true).await?;
        let identifiers: Vec<Identifier> = config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let domains = config.domains.join(", ");
        let id = certificate_id(config);
        let order_error = |e: instant_acme::Error| AcmeError::Order {
            domains: domains.clone(),
            cause: crate::error_chain::describe(&e),
        };
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(order_error)?;

        let (kind, kind_name, hint) = match config.challenge {
            AcmeChallenge::TlsAlpn01 => (
                ChallengeType::TlsAlpn01,
                "tls-alpn-01",
                "the CA connects to port 443 of that name: it must resolve to this host and reach [server] listen",
            ),
            AcmeChallenge::Http01 => (
                ChallengeType::Http01,
                "http-01",
                "the CA connects to port 80 of that name: it must resolve to this host and reach [server] http_listen",
            ),
        };
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(authorization) = authorizations.next().await {
                let mut authorization = authorization?;
                match authorization.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => {
                        return Err(AcmeError::Validation {
                            domain: authorization.identifier().to_string(),
                            detail: format!("the authorisation is {other:?}"),
                            hint,
                        })
                    }
                }
                let domain = authorization.identifier().to_string();
                let mut challenge =
                    authorization
                        .challenge(kind.clone())
                        .ok_or(AcmeError::NoChallenge {
                            domain: domain.clone(),
                            challenge: kind_name,
                        })?;
                let key_authorization = challenge.key_authorization();
                // In a fleet the answer goes to Redis first: the CA may reach any gate.
                match config.challenge {
                    AcmeChallenge::TlsAlpn01 => {
                        let digest = key_authorization.digest();
                        if let Some(fleet) = &self.fleet {
                            fleet
                                .publish(&id, TLS_ALPN_01, &domain, &hex::encode(digest.as_ref()))
                                .await?;
                        }
                        let cert = tls_alpn_certificate(&domain, digest.as_ref(), &self.provider)?;
                        self.certs.challenges().publish_tls_alpn(&domain, cert);
                    }
                    AcmeChallenge::Http01 => {
                        if let Some(fleet) = &self.fleet {
                            fleet
                                .publish(&id, HTTP_01, &challenge.token, key_authorization.as_str())
                                .await?;
                        }
                        self.certs
                            .challenges()
                            .publish_http(&challenge.token, key_authorization.as_str());
                    }
                }
                if self.fleet.is_some() {
                    tokio::time::sleep(FLEET_CHALLENGE_SPREAD).await;
                }
                challenge.set_ready().await?;
            }
            let policy = RetryPolicy::new().timeout(ORDER_TIMEOUT);
            let status = order.poll_ready(&policy).await.map_err(|e| match e {
                instant_acme::Error::Api(problem) => AcmeError::Validation {
                    domain: domains.clone(),
                    detail: problem.to_string(),
                    hint,
                },
                other => AcmeError::from(other),
            })?;
            if status != OrderStatus::Ready {
                return Err(AcmeError::Validation {
                    domain: domains.clone(),
                    detail: failed_challenges(&mut order).await,
                    hint,
                });
            }
            Ok(())
        }
        .await;
        self.certs.challenges().clear();
        if let Some(fleet) = &self.fleet {
            // What is left expires on its own.
            let _ = fleet.withdraw(&id).await;
        }
        result?;

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| AcmeError::Certificate(format!("cannot generate a key: {e}")))?;
        let mut params = rcgen::CertificateParams::new(config.domains.clone())
            .map_err(|e| AcmeError::Certificate(format!("bad name in the request: {e}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| AcmeError::Certificate(format!("cannot sign the request: {e}")))?;
        order.finalize_csr(csr.der()).await?;
        let chain = order
            .poll_certificate(&RetryPolicy::new().timeout(ORDER_TIMEOUT))
            .await?;

        let bundle = format!("{chain}{}", key.serialize_pem());
        let path = certificate_path(config);
        write_private(&path, bundle.as_bytes())?;
        let certified = super::files::load_certified_key(&path, &path, &self.provider)
            .map_err(|e| AcmeError::Certificate(e.to_string()))?;
        let facts = CertFacts::of(&certified).map_err(AcmeError::Certificate)?;
        self.certs.replace(Some(certified));
        Ok(facts)
    }
}

impl Manager {
    /// With `[cluster]`: serves the challenge answers the fleet's Redis holds, whichever gate
    /// published them, until `[tls.acme]` is removed. While Redis is away the last answers
    /// read stay.
    async fn follow_challenges(self: Arc<Self>, fleet: Arc<Fleet>) {
        // tls-alpn-01 certificates made so far, by domain and digest: one key per answer,
        // not one per poll.
        let mut made: HashMap<(String, String), Arc<CertifiedKey>> = HashMap::new();
        while let Some(config) = (self.current)() {
            if let Ok(answers) = fleet.challenges(&certificate_id(&config)).await {
                let (mut tls_alpn, mut http) = (HashMap::new(), HashMap::new());
                let mut kept = HashMap::new();
                for ((kind, name), value) in answers {
                    match kind.as_str() {
                        HTTP_01 => {
                            http.insert(name, value);
                        }
                        TLS_ALPN_01 => {
                            let name = name.to_ascii_lowercase();
                            let made_key = (name.clone(), value.clone());
                            let cert = match made.remove(&made_key) {
                                Some(cert) => cert,
                                None => match hex::decode(&value)
                                    .map_err(|e| AcmeError::Certificate(e.to_string()))
                                    .and_then(|d| tls_alpn_certificate(&name, &d, &self.provider))
                                {
                                    Ok(cert) => cert,
                                    Err(e) => {
                                        tracing::warn!(error = %e, domain = %name, "cannot answer the fleet's tls-alpn-01 challenge");
                                        continue;
                                    }
                                },
                            };
                            tls_alpn.insert(name, cert.clone());
                            kept.insert(made_key, cert);
                        }
                        _ => {}
                    }
                }
                made = kept;
                self.certs.challenges().replace(tls_alpn, http);
            }
            tokio::time::sleep(FLEET_CHALLENGE_POLL).await;
        }
    }
}

/// The errors the CA recorded on the challenges of a failed order, for the log.
async fn failed_challenges(order: &mut instant_acme::Order) -> String {
    let mut details = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        let domain = authorization.identifier().to_string();
        for challenge in &authorization.challenges {
            if let Some(error) = &challenge.error {
                details.push(format!("{domain}: {error}"));
            }
        }
    }
    if details.is_empty() {
        "the order became invalid".into()
    } else {
        details.join("; ")
    }
}

/// RFC 8737: a self-signed certificate for `domain` carrying the SHA-256 of the key
/// authorisation in the critical acmeIdentifier extension.
fn tls_alpn_certificate(
    domain: &str,
    digest: &[u8],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, AcmeError> {
    let bad = |e: rcgen::Error| AcmeError::Certificate(format!("tls-alpn-01 certificate: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(bad)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(bad)?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let cert = params.self_signed(&key).map_err(bad)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| AcmeError::Certificate(format!("tls-alpn-01 key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signing,
    )))
}

/// Account keys and certificate keys are secrets: mode 0600, written whole or not at all.
fn write_private(path: &Path, data: &[u8]) -> Result<(), AcmeError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| AcmeError::Cache {
            path: dir.to_path_buf(),
            message: format!("cannot create the ACME cache directory: {e}"),
        })?;
    }
    crate::atomic_file::write(path, data, 0o600).map_err(TlsError::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(domains: &[&str], directory: &str) -> AcmeConfig {
        AcmeConfig {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            contact: None,
            directory: directory.into(),
            challenge: AcmeChallenge::TlsAlpn01,
            cache_dir: PathBuf::from("/var/cache/gate"),
            directory_ca: None,
            retry_interval: Duration::from_secs(60),
        }
    }

    /// A directory whose TLS certificate is a CA certificate (a private ACME server set up
    /// with its root as its own certificate): the message must say so, as the events path
    /// does for the same fault, not only "client error (Connect)".
    #[tokio::test]
    async fn an_unreachable_directory_is_reported_with_its_root_cause() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("certificate");
        let root = dir.path().join("root.pem");
        std::fs::write(&root, cert.pem()).expect("write the root");

        let provider = crate::tls::provider();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let serve = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // The client refuses the certificate; nothing more happens here.
                let _ = acceptor.accept(tcp).await;
            }
        });

        let manager = Manager {
            certs: Arc::new(CertStore::new(None)),
            provider,
            current: Box::new(|| None),
            fleet: None,
            ari_asked: Mutex::default(),
        };
        let mut acme = config(&["localhost"], &format!("https://127.0.0.1:{port}/dir"));
        acme.directory_ca = Some(root);
        acme.cache_dir = dir.path().join("cache");
        let error = match manager.account(&acme, true).await {
            Ok(_) => panic!("an account from a directory with a CA as its certificate"),
            Err(e) => e,
        };
        serve.abort();
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "cannot reach the ACME directory https://127.0.0.1:{port}/dir: "
            )),
            "{message}"
        );
        assert!(
            message.contains("invalid peer certificate") && message.contains("CaUsedAsEndEntity"),
            "the cause is missing: {message}"
        );
        assert!(
            message.ends_with("goes in [tls.acme] directory_ca)"),
            "{message}"
        );
    }

    #[test]
    fn ari_identifier_matches_the_rfc_9773_example() {
        let aki = [
            0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0,
            0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4,
        ];
        let serial = [0x00, 0x87, 0x65, 0x43, 0x21];
        assert_eq!(
            ari_identifier(&aki, &serial).to_string(),
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
        );
    }

    #[test]
    fn staging_and_production_certificates_never_share_a_cache_file() {
        let a = certificate_path(&config(&["r.example"], "https://a/dir"));
        let b = certificate_path(&config(&["r.example"], "https://b/dir"));
        let c = certificate_path(&config(&["r.example", "www.r.example"], "https://a/dir"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with("/var/cache/gate"));
        assert!(a.to_string_lossy().contains("r.example-"));
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let facts = CertFacts {
            not_before: start,
            not_after: start + Duration::from_secs(90 * 86400),
            names: vec![],
            ari_id: None,
        };
        assert_eq!(facts.renew_at(), start + Duration::from_secs(60 * 86400));
    }

    #[test]
    fn tls_alpn_certificate_names_the_domain_and_carries_the_digest() {
        let provider = crate::tls::provider();
        let digest = [7u8; 32];
        let key = tls_alpn_certificate("r.example", &digest, &provider).expect("certificate");
        let (_, cert) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).expect("x509");
        let acme = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(acme.critical);
        // An OCTET STRING wrapping the 32-byte digest.
        assert_eq!(&acme.value[..2], &[0x04, 32]);
        assert_eq!(&acme.value[2..], &digest);
        let facts = CertFacts::of(&key).expect("facts");
        assert_eq!(facts.names, vec!["r.example".to_string()]);
    }
}
