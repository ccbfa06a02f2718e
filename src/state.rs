//! The gate's shared state: an immutable snapshot (configuration, upstream client) swapped
//! whole on reload, and the certificate store the TLS resolver reads.
//!
//! A reload builds and validates everything aside; only when all of it is good does it swap.
//! On failure the running snapshot stays and the errors are returned for the log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;

use crate::config::{Config, ConfigError};
use crate::forward::Upstream;
use crate::tls::{self, CertStore, TlsError};

/// Everything one request needs, consistent for its whole life.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub upstream: Upstream,
}

pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    certs: Arc<CertStore>,
    provider: Arc<CryptoProvider>,
    config_path: Option<PathBuf>,
}

/// Why the gate cannot start (or reload): each is printed on its own line.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Configuration and certificates, loaded and checked, not yet listening.
pub struct Prepared {
    pub config: Config,
    pub tls: tls::Loaded,
}

/// Loads everything a start needs and reports every problem found. Used by `run`, `check`
/// and reload alike, so `check` says exactly what `run` would.
pub fn prepare(path: Option<&Path>, provider: &CryptoProvider) -> Result<Prepared, Vec<PrepareError>> {
    let config = Config::load(path).map_err(|errs| errs.into_iter().map(PrepareError::from).collect::<Vec<_>>())?;
    let listen_ip = [config.server.listen.ip()];
    let tls = tls::load(&config.tls, &listen_ip, provider).map_err(|e| vec![e.into()])?;
    Ok(Prepared { config, tls })
}

impl Shared {
    pub fn new(prepared: &Prepared, provider: Arc<CryptoProvider>) -> Shared {
        let config = Arc::new(prepared.config.clone());
        Shared {
            snapshot: ArcSwap::from_pointee(Snapshot {
                upstream: Upstream::new(&config.upstream),
                config: config.clone(),
            }),
            certs: Arc::new(CertStore::new(prepared.tls.key.clone())),
            provider,
            config_path: config.source.clone(),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn certs(&self) -> Arc<CertStore> {
        self.certs.clone()
    }

    pub fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }

    /// Re-reads the configuration and certificates; swaps only if all of it is valid.
    pub async fn reload(&self) -> Result<(), Vec<PrepareError>> {
        let path = self.config_path.clone();
        let provider = self.provider.clone();
        // File reads and key parsing are blocking work.
        let prepared = tokio::task::spawn_blocking(move || prepare(path.as_deref(), &provider))
            .await
            .map_err(|e| vec![PrepareError::Tls(TlsError::Generate(format!("reload task failed: {e}")))])??;
        let old = self.snapshot();
        if prepared.config.server.listen != old.config.server.listen {
            tracing::warn!(
                old = %old.config.server.listen,
                new = %prepared.config.server.listen,
                "server.listen changed: a restart is needed to listen on the new address; keeping the old one"
            );
        }
        // Keep the pooled connections unless the road to the registry changed.
        let upstream = if same_upstream(&old.config, &prepared.config) {
            old.upstream.clone()
        } else {
            Upstream::new(&prepared.config.upstream)
        };
        self.certs.replace(prepared.tls.key);
        self.snapshot.store(Arc::new(Snapshot {
            config: Arc::new(prepared.config),
            upstream,
        }));
        Ok(())
    }
}

fn same_upstream(a: &Config, b: &Config) -> bool {
    a.upstream.target == b.upstream.target
        && a.upstream.connect_timeout == b.upstream.connect_timeout
        && a.upstream.read_timeout == b.upstream.read_timeout
}
