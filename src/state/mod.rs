//! The gate's shared state: an immutable snapshot (configuration, users, token key, upstream
//! client, event receivers) that requests are served from, swapped whole on reload, and the
//! certificate store the TLS resolver reads. The server floor holds it and triggers reloads;
//! the proxy and the browser read one snapshot per request. It lives on a floor below them
//! (with `upstream`, the pool the snapshot holds) so that `cmd/`, `server/`, the front, the
//! proxy and the browser all use it and none of them owns it. `activity` is the ring of
//! recent accepted pushes and deletes it keeps across reloads.
//!
//! A reload builds and validates everything aside; only when all of it is good does it swap.
//! On failure the running snapshot stays and the errors are returned for the log.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use tokio::sync::Semaphore;

use crate::auth::access_tokens::{AccessTokenError, AccessTokens, LastUsed};
use crate::auth::htpasswd::{HtpasswdError, LoadOptions};
use crate::auth::oidc::{Oidc, OidcError};
use crate::auth::shared_tokens;
use crate::auth::token::{TokenError, TokenKey};
use crate::auth::{self, Authenticator, Throttle};
use crate::cluster::{Cluster, ClusterError};
use crate::config::{AuthMode, Config, ConfigError, EventSecret, TlsSource};
use crate::conn::send_budget::SendBudget;
use crate::events::{self, Events, EventsError};
use crate::tls::{self, CertStore, TlsError};
use crate::upstream::Upstream;
use activity::Activity;

pub mod activity;

/// Everything one request needs, consistent for its whole life.
#[derive(Clone)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub upstream: Upstream,
    /// `None` when `[auth] mode = "none"`.
    pub auth: Option<Arc<Authenticator>>,
    /// Token mode's signing key.
    pub tokens: Option<Arc<TokenKey>>,
    /// Access tokens (`registry-gate token`); `None` without authentication.
    pub access_tokens: Option<Arc<AccessTokens>>,
    /// `[[auth.oidc]]` issuers; `None` when there are none.
    pub oidc: Option<Arc<Oidc>>,
    /// `[[events]]` receivers. A reload starts new ones; the old ones deliver what they
    /// queued and stop when the last request holding the old snapshot is done.
    pub events: Arc<Events>,
}

pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    certs: Arc<CertStore>,
    /// Rebuilt on reload (a new client CA); the certificate itself is swapped in `certs`.
    tls: ArcSwap<rustls::ServerConfig>,
    provider: Arc<CryptoProvider>,
    config_path: Option<PathBuf>,
    /// What requests use of the running gate beyond their snapshot.
    kit: Arc<Kit>,
    verify_slots: Arc<Semaphore>,
    reloading: tokio::sync::Mutex<()>,
    /// Session tickets survive reloads, except where client certificates are in use: a
    /// resumed session keeps the certificate identity it was issued with, so a removed
    /// client CA must invalidate every ticket.
    ticketer: std::sync::Mutex<Arc<dyn rustls::server::ProducesTickets>>,
    /// Set while the ACME renewal task runs, so a reload that adds `[tls.acme]` starts one
    /// and a second reload does not start another.
    acme_running: Arc<AtomicBool>,
    /// The watched files as they were when the start read them; the watcher's baseline.
    watched_at_start: FileStamps,
    /// With `[cluster]`: the access tokens last read from Redis, which every snapshot uses
    /// in place of the file's (`shared_token_sync`).
    fleet_tokens: arc_swap::ArcSwapOption<AccessTokens>,
}

/// What a request uses of the running gate beyond its snapshot, all of it outliving reloads:
/// a request's context holds this, not the whole `Shared`.
pub struct Kit {
    /// A reload must not wipe an attacker's lockout.
    throttle: Throttle,
    /// When each access token was last used; saved by `token_upkeep`.
    last_used: Arc<LastUsed>,
    /// The last accepted pushes and deletes, for the browser's activity page (a reload
    /// changes no history); ends with the process.
    activity: Activity,
    /// `[cluster]`'s Redis, connected at start (a change needs a restart).
    cluster: Option<Arc<Cluster>>,
    /// `[server] h2_buffer_budget`, shared by every HTTP/2 connection; sized at start, since
    /// the answers holding it outlive any reload.
    send_budget: SendBudget,
}

impl Kit {
    /// The failed-login counts and lockouts.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// The fleet's shared Redis, with `[cluster]`.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The recent pushes and deletes the gate saw accepted.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// `[server] h2_buffer_budget`'s shared reservations.
    pub fn send_budget(&self) -> &SendBudget {
        &self.send_budget
    }

    pub fn last_used(&self) -> &LastUsed {
        &self.last_used
    }
}

/// Password verifications running at once. bcrypt pins a core for its whole run; more
/// parallel runs than cores only queue inside the OS while holding blocking threads.
fn verify_slot_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Why the gate cannot start (or reload): each is printed on its own line.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Htpasswd(#[from] HtpasswdError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    AccessToken(#[from] AccessTokenError),
    #[error(transparent)]
    Oidc(#[from] OidcError),
    #[error(transparent)]
    Events(#[from] EventsError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Configuration and certificates, loaded and checked, not yet listening.
pub struct Prepared {
    pub config: Config,
    pub tls: tls::Loaded,
    /// Set on the first zero-config start: the user and password just generated, to be shown
    /// once to the operator.
    pub generated_user: Option<(String, String)>,
    /// The watched files' stamps, taken before the htpasswd files are read: a change made
    /// after this point is seen by the file watcher, however late that task first runs.
    pub watched: FileStamps,
    /// `[[events]]` receivers with their secret and CA files read, not yet started.
    pub events: events::Loaded,
}

/// Loads everything a start needs and reports every problem found. Used by `run`, `check`
/// and reload alike, so `check` says exactly what `run` would.
pub fn prepare(
    path: Option<&Path>,
    provider: &CryptoProvider,
) -> Result<Prepared, Vec<PrepareError>> {
    let config = Config::load(path)
        .map_err(|errs| errs.into_iter().map(PrepareError::from).collect::<Vec<_>>())?;
    let listen_ip = [config.server.listen.ip()];
    let tls = tls::load(&config.tls, &listen_ip, provider).map_err(|e| vec![e.into()])?;
    let generated_user = match (&config.auth.mode, config.auth.generated_user) {
        (AuthMode::Basic | AuthMode::Token, true) => {
            auth::ensure_generated_user(&config.auth.htpasswd[0]).map_err(|e| vec![e.into()])?
        }
        _ => None,
    };
    let watched = fingerprint(&watched_files(&config));
    let events = events::load(&config.events)
        .map_err(|errs| errs.into_iter().map(PrepareError::from).collect::<Vec<_>>())?;
    Ok(Prepared {
        config,
        tls,
        generated_user,
        watched,
        events,
    })
}

/// Loads the htpasswd files a configuration names (none for `mode = "none"`).
pub fn load_users(
    config: &Config,
    slots: Arc<Semaphore>,
) -> Result<Option<Arc<Authenticator>>, Vec<PrepareError>> {
    if config.auth.mode == AuthMode::None {
        return Ok(None);
    }
    let options = LoadOptions {
        allow_insecure: config.auth.allow_insecure_hashes,
    };
    Authenticator::load(
        &config.auth.htpasswd,
        &options,
        config.auth.cache_ttl,
        slots,
    )
    .map(|a| Some(Arc::new(a)))
    .map_err(|errors| errors.into_iter().map(PrepareError::from).collect())
}

/// The access token file a configuration names; a missing file holds no tokens.
pub fn load_access_tokens(config: &Config) -> Result<Option<Arc<AccessTokens>>, Vec<PrepareError>> {
    let Some(path) = &config.auth.access_tokens else {
        return Ok(None);
    };
    AccessTokens::load(path)
        .map(|t| Some(Arc::new(t)))
        .map_err(|errors| errors.into_iter().map(PrepareError::from).collect())
}

/// Token mode's signing key, created in `[tls] dir` on first start when not configured.
fn load_token_key(config: &Config) -> Result<Option<Arc<TokenKey>>, Vec<PrepareError>> {
    if config.auth.mode != AuthMode::Token {
        return Ok(None);
    }
    TokenKey::load_or_create(
        &config.auth.token_key,
        config.auth.service.clone(),
        config.auth.token_ttl,
    )
    .map(|k| Some(Arc::new(k)))
    .map_err(|e| vec![e.into()])
}

/// What callers are checked against, loaded off the async runtime for each snapshot.
struct Credentials {
    users: Option<Arc<Authenticator>>,
    token_key: Option<Arc<TokenKey>>,
    access_tokens: Option<Arc<AccessTokens>>,
    oidc: Option<Arc<Oidc>>,
}

/// The `[[auth.oidc]]` verifier (reads each issuer's `ca`, and the system's roots); keys
/// are fetched on first use, not here.
pub fn load_oidc(config: &Config) -> Result<Option<Arc<Oidc>>, Vec<PrepareError>> {
    if config.auth.oidc.is_empty() {
        return Ok(None);
    }
    Oidc::new(&config.auth.oidc)
        .map(|o| Some(Arc::new(o)))
        .map_err(|e| vec![e.into()])
}

/// Everything callers are checked against. The OIDC verifier of `previous` is kept while
/// the issuers are the same: it holds their cached keys, and building one reads the
/// system's roots.
fn load_credentials(
    config: &Config,
    slots: Arc<Semaphore>,
    previous: Option<&Snapshot>,
) -> Result<Credentials, Vec<PrepareError>> {
    let oidc = match previous {
        Some(old) if old.config.auth.oidc == config.auth.oidc => old.oidc.clone(),
        _ => load_oidc(config)?,
    };
    Ok(Credentials {
        users: load_users(config, slots)?,
        token_key: load_token_key(config)?,
        access_tokens: load_access_tokens(config)?,
        oidc,
    })
}

/// Tickets keep a resumed session's client certificate identity, so they may only be kept
/// across a reload that uses no client CA at all.
type Ticketer = Arc<dyn rustls::server::ProducesTickets>;

/// A snapshot and the TLS configuration that goes with it, built aside from the running
/// ones.
struct Next {
    snapshot: Snapshot,
    server_tls: Arc<rustls::ServerConfig>,
    ticketer: Ticketer,
}

/// The one way a snapshot is made, at start (`previous` is `None`) and on every reload, so a
/// start and a reload of the same files give the same gate. Kept from `previous`: the
/// pooled registry connections while the road to the registry is the same, and the session
/// ticket keys while no client CA is configured.
fn build(
    prepared: &Prepared,
    credentials: Credentials,
    certs: &Arc<CertStore>,
    provider: &Arc<CryptoProvider>,
    previous: Option<(&Snapshot, Ticketer)>,
    cluster: Option<&Arc<Cluster>>,
) -> Result<Next, Vec<PrepareError>> {
    let config = &prepared.config;
    let upstream = match &previous {
        Some((old, _)) if same_upstream(&old.config, config) => old.upstream.clone(),
        _ => Upstream::new(&config.upstream),
    };
    let ticketer = match previous {
        Some((_, ticketer)) if prepared.tls.client_verifier.is_none() => ticketer,
        _ => tls::ticketer().map_err(|e| vec![e.into()])?,
    };
    let server_tls = tls::server_config(
        certs.clone(),
        provider.clone(),
        prepared.tls.client_verifier.clone(),
        ticketer.clone(),
        answers_tls_alpn(config),
    )
    .map_err(|e| vec![e.into()])?;
    Ok(Next {
        snapshot: Snapshot {
            config: Arc::new(config.clone()),
            upstream,
            auth: credentials.users,
            tokens: credentials.token_key,
            access_tokens: credentials.access_tokens,
            oidc: credentials.oidc,
            events: Arc::new(Events::start_in(&prepared.events, cluster.cloned())),
        },
        server_tls,
        ticketer,
    })
}

impl Shared {
    /// The first snapshot, built exactly as a reload builds one.
    pub fn new(
        prepared: &Prepared,
        provider: Arc<CryptoProvider>,
    ) -> Result<Shared, Vec<PrepareError>> {
        let verify_slots = Arc::new(Semaphore::new(verify_slot_count()));
        let credentials = load_credentials(&prepared.config, verify_slots.clone(), None)?;
        let certs = Arc::new(CertStore::new(prepared.tls.key.clone()));
        certs.replace_extra(&prepared.tls.extra);
        let cluster = match &prepared.config.cluster {
            Some(config) => Some(Cluster::open(config).map_err(|e| vec![e.into()])?),
            None => None,
        };
        let next = build(
            prepared,
            credentials,
            &certs,
            &provider,
            None,
            cluster.as_ref(),
        )?;
        Ok(Shared {
            snapshot: ArcSwap::from_pointee(next.snapshot),
            certs,
            tls: ArcSwap::new(next.server_tls),
            provider,
            config_path: prepared.config.source.clone(),
            kit: Arc::new(Kit {
                throttle: cluster.clone().map_or_else(Throttle::new, Throttle::shared),
                activity: cluster
                    .clone()
                    .map_or_else(Activity::default, Activity::shared),
                cluster,
                last_used: Arc::new(LastUsed::default()),
                send_budget: SendBudget::new(prepared.config.server.h2_buffer_budget),
            }),
            fleet_tokens: arc_swap::ArcSwapOption::empty(),
            verify_slots,
            reloading: tokio::sync::Mutex::new(()),
            ticketer: std::sync::Mutex::new(next.ticketer),
            acme_running: Arc::new(AtomicBool::new(false)),
            watched_at_start: prepared.watched.clone(),
        })
    }

    /// What requests use of the running gate beyond their snapshot.
    pub fn kit(&self) -> &Arc<Kit> {
        &self.kit
    }

    /// Serves `tokens`, read from the fleet's Redis, from now on: the running snapshot is
    /// swapped for one that differs in its access tokens only.
    fn use_fleet_tokens(&self, tokens: Arc<AccessTokens>) {
        self.fleet_tokens.store(Some(tokens.clone()));
        let old = self.snapshot();
        if old.access_tokens.is_none() {
            return;
        }
        self.snapshot.store(Arc::new(Snapshot {
            access_tokens: Some(tokens),
            ..Snapshot::clone(&old)
        }));
    }

    /// The fleet's shared Redis, with `[cluster]`.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.kit.cluster()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    fn current_ticketer(&self) -> Ticketer {
        match self.ticketer.lock() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The TLS configuration for a new connection.
    pub fn tls(&self) -> Arc<rustls::ServerConfig> {
        self.tls.load_full()
    }

    /// The certificates served and the ACME challenge answers.
    pub fn certs(&self) -> &CertStore {
        &self.certs
    }

    /// Starts the ACME renewal task if `[tls.acme]` is configured and none runs yet. The
    /// task reads the configuration from each new snapshot and ends when it is removed.
    pub fn ensure_acme(self: &Arc<Self>) {
        if !matches!(self.snapshot().config.tls.source, TlsSource::Acme(_))
            || self.acme_running.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let shared = self.clone();
        let manager = tls::acme::Manager {
            certs: self.certs.clone(),
            provider: self.provider.clone(),
            current: Box::new(move || match &shared.snapshot().config.tls.source {
                TlsSource::Acme(acme) => Some(acme.clone()),
                _ => None,
            }),
            fleet: self
                .cluster()
                .map(|cluster| Arc::new(tls::acme::fleet::Fleet::new(cluster.clone()))),
            ari_asked: std::sync::Mutex::default(),
        };
        let running = self.acme_running.clone();
        tokio::spawn(async move {
            manager.run().await;
            running.store(false, Ordering::SeqCst);
        });
    }

    /// Re-reads the configuration and certificates; swaps only if all of it is valid.
    pub async fn reload(self: &Arc<Self>) -> Result<(), Vec<PrepareError>> {
        // One at a time: a SIGHUP and the file watcher must not race, or the one that read
        // the older files could be stored last.
        let _one_at_a_time = self.reloading.lock().await;
        let path = self.config_path.clone();
        let provider = self.provider.clone();
        // File reads and key parsing are blocking work.
        let slots = self.verify_slots.clone();
        let running = self.snapshot();
        let (prepared, credentials) = tokio::task::spawn_blocking(move || {
            let prepared = prepare(path.as_deref(), &provider)?;
            let credentials = load_credentials(&prepared.config, slots, Some(&running))?;
            Ok::<_, Vec<PrepareError>>((prepared, credentials))
        })
        .await
        .map_err(|e| {
            vec![PrepareError::Tls(TlsError::Generate(format!(
                "reload task failed: {e}"
            )))]
        })??;
        let old = self.snapshot();
        if prepared.config.server.listen != old.config.server.listen {
            tracing::warn!(
                old = %old.config.server.listen,
                new = %prepared.config.server.listen,
                "server.listen changed: a restart is needed to listen on the new address; keeping the old one"
            );
        }
        if prepared.config.cluster != old.config.cluster {
            tracing::warn!(
                "[cluster] changed: a restart is needed to use another Redis; keeping the old one"
            );
        }
        if prepared.config.server.h2_buffer_budget != old.config.server.h2_buffer_budget {
            tracing::warn!(
                old = old.config.server.h2_buffer_budget,
                new = prepared.config.server.h2_buffer_budget,
                "server.h2_buffer_budget changed: a restart is needed to resize it; keeping the old one"
            );
        }
        let next = build(
            &prepared,
            credentials,
            &self.certs,
            &self.provider,
            Some((&old, self.current_ticketer())),
            self.cluster(),
        )?;
        if let Ok(mut current) = self.ticketer.lock() {
            *current = next.ticketer;
        }
        self.certs.replace(prepared.tls.key);
        self.certs.replace_extra(&prepared.tls.extra);
        self.tls.store(next.server_tls);
        let mut snapshot = next.snapshot;
        if let Some(tokens) = self.fleet_tokens.load_full() {
            snapshot.access_tokens = snapshot.access_tokens.is_some().then_some(tokens);
        }
        self.snapshot.store(Arc::new(snapshot));
        self.ensure_acme();
        Ok(())
    }
}

/// How often watched files are checked for changes. Polling (rather than inotify) also sees
/// Kubernetes Secret updates, which swap a symlink, and costs a few stat calls.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Reloads when the configuration, certificate, key or an htpasswd file changes on disk
/// (certbot renewals, `htpasswd` edits), as SIGHUP would.
pub async fn watch_files(shared: Arc<Shared>) {
    let mut seen = shared.watched_at_start.clone();
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let files = watched_files(&shared.snapshot().config);
        let now = tokio::task::spawn_blocking(move || fingerprint(&files))
            .await
            .unwrap_or_default();
        if now == seen {
            continue;
        }
        // What is on disk now is what this reload reads (or older): remembering it before
        // reading means a file still being written when read is seen as changed again on
        // the next tick and re-read, while a file that stays broken is not retried forever.
        seen = now;
        match shared.reload().await {
            Ok(()) => tracing::info!(
                "a watched file changed: configuration, certificates and users reloaded"
            ),
            Err(errors) => {
                for e in &errors {
                    tracing::error!(error = %e, "a watched file changed but the result is invalid; the running configuration stays");
                }
            }
        }
    }
}

fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config.source.iter().cloned().collect();
    if let TlsSource::Files { cert, key } = &config.tls.source {
        files.push(cert.clone());
        files.push(key.clone());
    }
    for (cert, key) in &config.tls.extra {
        files.push(cert.clone());
        files.push(key.clone());
    }
    files.extend(config.tls.client.iter().map(|c| c.ca.clone()));
    files.extend(config.auth.htpasswd.iter().cloned());
    files.extend(config.auth.access_tokens.iter().cloned());
    // A rotated webhook secret or CA takes effect without a SIGHUP.
    for receiver in &config.events {
        if let Some(EventSecret::File(path)) = &receiver.secret {
            files.push(path.clone());
        }
        files.extend(receiver.ca.iter().cloned());
    }
    files
}

/// How often token uses are saved and expiry is looked at: at most one small write per
/// interval, only after a use, where a write per use would be a disk write per CI login.
const TOKEN_UPKEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Saves when access tokens were last used (for `token list`) and warns, once per token and
/// process, when a token is within `EXPIRY_WARNING` of expiring, so CI does not break
/// silently on the day. Runs for the life of the gate.
pub async fn token_upkeep(shared: Arc<Shared>) {
    let mut warned = std::collections::HashSet::new();
    loop {
        if let Some(tokens) = shared.snapshot().access_tokens.clone() {
            for token in tokens.expiring(std::time::SystemTime::now()) {
                if warned.insert(token.name.clone()) {
                    let expires = token
                        .expires
                        .map(|at| humantime::format_rfc3339_seconds(at).to_string())
                        .unwrap_or_default();
                    tracing::warn!(
                        token = %token.name,
                        expires = %expires,
                        "access token expires within 7 days; create its successor with `registry-gate token create`"
                    );
                }
            }
            if let Some(cluster) = shared.cluster() {
                if let Some(uses) = shared.kit.last_used.take_recent() {
                    if let Err(e) = shared_tokens::save_last_used(cluster, &uses).await {
                        shared.kit.last_used.keep_pending();
                        tracing::debug!(error = %e, "could not share when access tokens were last used");
                    }
                }
                tokio::time::sleep(TOKEN_UPKEEP_INTERVAL).await;
                continue;
            }
            let last_used = shared.kit.last_used.clone();
            let path = tokens.path().to_path_buf();
            let saved = tokio::task::spawn_blocking(move || last_used.save(&path)).await;
            if let Ok(Err(e)) = saved {
                // A read-only mount (a Kubernetes Secret) cannot keep the record; the tokens
                // work regardless.
                tracing::debug!(error = %e, "could not save when access tokens were last used");
            }
        }
        tokio::time::sleep(TOKEN_UPKEEP_INTERVAL).await;
    }
}

/// How often a gate of a fleet looks whether the access tokens in Redis changed: a revoke
/// reaches every gate within this (and `[cluster] timeout`).
const FLEET_TOKENS_INTERVAL: Duration = Duration::from_millis(500);

/// With `[cluster]`: keeps the access tokens in step with the fleet's Redis. The first gate
/// of a new fleet puts the token file's tokens there; after that Redis is the truth, and
/// `registry-gate token` edits it. Where Redis lost its data, the gate writes back the
/// last tokens it saw (with their version), so a restart of a Redis without persistence
/// neither empties the tokens nor brings a revoked one back. While Redis is away, the last
/// tokens read stay in use.
pub async fn shared_token_sync(shared: Arc<Shared>) {
    let Some(cluster) = shared.cluster().cloned() else {
        return;
    };
    let mut known: Option<(u64, Arc<AccessTokens>)> = None;
    loop {
        if shared.snapshot().access_tokens.is_some() {
            match shared_tokens::version(&cluster).await {
                Ok(Some(version)) if known.as_ref().map(|k| k.0) != Some(version) => {
                    match shared_tokens::load(&cluster).await {
                        Ok(Some((version, tokens))) => {
                            let tokens = Arc::new(tokens);
                            shared.use_fleet_tokens(tokens.clone());
                            known = Some((version, tokens));
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "cluster: access tokens not updated"),
                    }
                }
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => {
                    let (version, text) = match &known {
                        Some((version, tokens)) => (*version, tokens.text().map(str::to_string)),
                        None => (
                            1,
                            shared
                                .snapshot()
                                .access_tokens
                                .as_ref()
                                .and_then(|t| t.text().map(str::to_string)),
                        ),
                    };
                    if let Some(text) = text {
                        match shared_tokens::restore(&cluster, version, &text).await {
                            Ok(true) => tracing::info!(
                                version,
                                "cluster: access tokens written to Redis, which held none"
                            ),
                            Ok(false) => {}
                            Err(e) => {
                                tracing::debug!(error = %e, "cluster: access tokens not restored")
                            }
                        }
                    }
                }
            }
        }
        tokio::time::sleep(FLEET_TOKENS_INTERVAL).await;
    }
}

/// Modification time and size of each watched file (following symlinks); `None` for a
/// missing one.
pub type FileStamps = Vec<Option<(std::time::SystemTime, u64)>>;

fn fingerprint(files: &[PathBuf]) -> FileStamps {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn answers_tls_alpn(config: &Config) -> bool {
    matches!(&config.tls.source, TlsSource::Acme(acme) if acme.challenge == crate::config::AcmeChallenge::TlsAlpn01)
}

fn same_upstream(a: &Config, b: &Config) -> bool {
    a.upstream.target == b.upstream.target
        && a.upstream.connect_timeout == b.upstream.connect_timeout
        && a.upstream.read_timeout == b.upstream.read_timeout
}
