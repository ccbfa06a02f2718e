//! TLS termination: which certificate is served, with which protocol versions and suites.
//!
//! The certificate lives in a `CertStore` that the rustls resolver reads on every handshake,
//! so a renewed certificate is swapped in without restarting and without touching existing
//! connections. This module knows nothing about HTTP.

pub mod acme;
pub mod files;
pub mod selfsigned;

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{TlsConfig, TlsSource};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("{key}: the private key does not belong to the certificate in {cert} (is the chain's first certificate the server's own?)")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating a certificate failed: {0}")]
    Generate(String),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

impl From<crate::atomic_file::WriteError> for TlsError {
    fn from(e: crate::atomic_file::WriteError) -> Self {
        TlsError::Write {
            path: e.path,
            source: e.source,
        }
    }
}

/// The crypto provider for every TLS use in the gate: aws-lc-rs, whose AES-GCM and ECDSA are
/// the fastest available to rustls, with its suites in the order the gate prefers.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite_preference(suite.suite()));
    Arc::new(provider)
}

/// Lower is preferred: TLS 1.3 before 1.2, and within each AES-128-GCM, then AES-256-GCM,
/// then ChaCha20-Poly1305 — the order of Go's crypto/tls (so of Caddy and Traefik) on CPUs
/// with AES instructions. AES-128 gives 128-bit security like the X25519 or P-256 key
/// exchange in front of it; AES-256 adds four rounds per block and, in TLS 1.3, SHA-384 for
/// the key schedule, for which aws-lc ran its portable (`_nohw`) SHA-512 code on the
/// benchmark machine's AMD CPU: 16 % of the gate's CPU per handshake (S6 in bench/history.md).
fn suite_preference(suite: rustls::CipherSuite) -> u8 {
    use rustls::CipherSuite as S;
    match suite {
        S::TLS13_AES_128_GCM_SHA256 => 0,
        S::TLS13_AES_256_GCM_SHA384 => 1,
        S::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 4,
        _ => 5,
    }
}

/// The certificate currently served, replaced whole on reload or renewal, and the ACME
/// challenge certificates published while an order is validated.
#[derive(Debug)]
pub struct CertStore {
    /// `None` only with ACME before the first certificate: handshakes are refused.
    current: ArcSwapOption<CertifiedKey>,
    /// `[[tls.certificates]]`, with the DNS names each is chosen for.
    by_name: ArcSwap<Vec<(Vec<String>, Arc<CertifiedKey>)>>,
    challenges: acme::Challenges,
}

impl CertStore {
    pub fn new(initial: Option<Arc<CertifiedKey>>) -> Self {
        CertStore {
            current: ArcSwapOption::new(initial),
            by_name: ArcSwap::from_pointee(Vec::new()),
            challenges: acme::Challenges::default(),
        }
    }

    pub fn replace(&self, next: Option<Arc<CertifiedKey>>) {
        self.current.store(next);
    }

    /// Replaces the certificates chosen by SNI.
    pub fn replace_extra(&self, extra: &[Arc<CertifiedKey>]) {
        let named = extra
            .iter()
            .map(|key| {
                let names = acme::CertFacts::of(key)
                    .map(|f| f.names)
                    .unwrap_or_default();
                (names, key.clone())
            })
            .collect();
        self.by_name.store(Arc::new(named));
    }

    /// The `[[tls.certificates]]` entry naming `server_name`: an exact DNS name, or a
    /// wildcard covering exactly one more label.
    fn for_name(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let name = server_name.to_ascii_lowercase();
        let parent = name.split_once('.').map(|(_, rest)| rest);
        self.by_name.load().iter().find_map(|(names, key)| {
            names
                .iter()
                .any(|n| *n == name || n.strip_prefix("*.").is_some_and(|p| Some(p) == parent))
                .then(|| key.clone())
        })
    }

    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    /// Whether `key` is the one served (the same certificate, not just an equal one).
    pub fn is_current(&self, key: &CertifiedKey) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|c| c.cert == key.cert)
    }

    pub fn challenges(&self) -> &acme::Challenges {
        &self.challenges
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A tls-alpn-01 validation offers only acme-tls/1; it gets the challenge certificate
        // or nothing, never the real one.
        let acme_validation = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == acme::ACME_TLS_ALPN));
        if acme_validation {
            return self.challenges.tls_alpn(hello.server_name());
        }
        if let Some(key) = hello.server_name().and_then(|n| self.for_name(n)) {
            return Some(key);
        }
        let current = self.current.load_full();
        if current.is_none() {
            tracing::warn!(
                "TLS handshake refused: no certificate yet (the first ACME order has not succeeded; see the errors above)"
            );
        }
        current
    }
}

/// The certificate material a configuration names, loaded and checked.
pub struct Loaded {
    /// `None` with ACME before the first certificate is cached.
    pub key: Option<Arc<CertifiedKey>>,
    /// Verifies client certificates when `[tls] client_ca` is set.
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Set when the gate generated its own CA: where clients find the CA to trust.
    pub generated: Option<selfsigned::Generated>,
    /// `[[tls.certificates]]`, chosen by SNI.
    pub extra: Vec<Arc<CertifiedKey>>,
}

/// Loads (or, with no files configured, generates) the server certificate.
pub fn load(
    config: &TlsConfig,
    extra_ips: &[std::net::IpAddr],
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let client_verifier = match &config.client {
        Some(client) => Some(client_verifier(client, provider)?),
        None => None,
    };
    let extra = config
        .extra
        .iter()
        .map(|(cert, key)| files::load_certified_key(cert, key, provider))
        .collect::<Result<Vec<_>, _>>()?;
    let (key, generated) = match &config.source {
        TlsSource::Files { cert, key } => {
            (Some(files::load_certified_key(cert, key, provider)?), None)
        }
        TlsSource::Generated => {
            let generated = selfsigned::ensure(&config.dir, extra_ips)?;
            let key = files::load_certified_key(&generated.cert, &generated.key, provider)?;
            (Some(key), Some(generated))
        }
        // An unusable cache is not fatal: the renewal task says why and orders a new one.
        TlsSource::Acme(acme) => (acme::cached(acme, provider).ok().flatten(), None),
    };
    Ok(Loaded {
        key,
        client_verifier,
        generated,
        extra,
    })
}

fn client_verifier(
    client: &crate::config::ClientCertConfig,
    provider: &CryptoProvider,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let bad = |message: String| TlsError::Cert {
        path: client.ca.clone(),
        message,
    };
    let roots = files::load_roots(&client.ca).map_err(bad)?;
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider.clone()));
    let builder = if client.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| bad(format!("cannot build a client certificate verifier: {e}")))
}

/// TLS 1.2 and 1.3 only (rustls offers nothing older and only AEAD suites with forward
/// secrecy), ALPN for HTTP/2 and HTTP/1.1, session tickets for cheap resumption.
pub fn server_config(
    store: Arc<CertStore>,
    provider: Arc<CryptoProvider>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    answer_tls_alpn: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if answer_tls_alpn {
        // Only a validation connection offers it; the server closes that one after the
        // handshake.
        config.alpn_protocols.push(acme::ACME_TLS_ALPN.to_vec());
    }
    // The server's order (see `suite_preference`; every suite AEAD with forward secrecy), not
    // whatever a client lists first; scanners rate a client-chosen order as a finding.
    config.ignore_client_order = true;
    // Shared across reloads so clients keep resuming sessions after a SIGHUP.
    config.ticketer = ticketer;
    // One ticket per handshake, not rustls' two: a client resumes one connection with it,
    // and registry clients that resume at all (OpenSSL-based ones; Go's docker and skopeo
    // keep no session cache) keep only the newest ticket anyway.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// The session-ticket key rotator, made once per process.
pub fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, TlsError> {
    Ok(rustls::crypto::aws_lc_rs::Ticketer::new()?)
}
