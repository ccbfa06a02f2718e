//! The validated, immutable configuration: every value parsed, every default applied, every
//! path made absolute against the config file's directory.
//!
//! Loading never stops at the first problem: `Config::load` reports every bad key at once, so
//! `registry-gate check` can list them all like `nginx -t`. Reading certificate files is not
//! done here (that is `tls`); this module only says where they are.

mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::rules::{RuleSpec, Rules};

use raw::{RawAuth, RawConfig};

/// The htpasswd file created in `[tls] dir` when there is no `[auth]` section.
pub const GENERATED_HTPASSWD: &str = "htpasswd";
/// The token-signing key created in `[tls] dir` for token mode when none is configured.
pub const GENERATED_TOKEN_KEY: &str = "token.key";
/// Docker asks for a new token when one expires; five minutes is what Docker Hub issues.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);
/// The realm docker shows nowhere but browsers do; the recipes use the host name.
pub const DEFAULT_REALM: &str = "registry-gate";

/// Defaults shared with the documentation in `proxy.toml.example`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:443";
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:5000";
/// The recipes' `proxy_read_timeout 900`: long enough for a registry that is slow to commit a
/// large layer, and an idle timeout, so it never caps a long transfer that keeps moving.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(900);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// A TLS handshake needs a few round trips; a peer that has not finished in this time is
/// holding a connection slot, not negotiating.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in flight and no byte moving for this long is closed
/// (including one that never sends a request at all).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Open client connections at most; past it new ones are closed at once. Each costs a file
/// descriptor and, while forwarding, an upstream one too.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Open connections per client address: generous for an office behind one NAT address, low
/// enough that one host cannot take every slot.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 512;
/// Time allowed for a client to send a complete request head (slowloris defence).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Request heads larger than this get 431. Registry requests carry small heads; 64 KiB leaves
/// room for large bearer tokens.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

/// One problem with the configuration, naming where it is and, where possible, the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: {message}")]
    Rules { path: String, message: String },
    #[error("environment {name}: {message}")]
    Env { name: String, message: String },
    #[error("{path}: [{key}]: {message}")]
    Invalid {
        path: String,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from; `None` when running on built-in defaults.
    pub source: Option<PathBuf>,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub tls: TlsConfig,
    pub log: LogConfig,
    /// `[filter]`: user agents and addresses turned away before anything else.
    pub filter: crate::filter::Filter,
    /// `[metrics] listen`: where Prometheus scrapes; no listener when `None`.
    pub metrics_listen: Option<SocketAddr>,
    pub auth: AuthConfig,
    /// Compiled `[groups]` and `[[rules]]`, or the default for the auth mode.
    pub rules: Arc<Rules>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No authentication: every client is `anonymous` (the recipes without `auth_basic`).
    None,
    /// HTTP Basic against htpasswd files.
    Basic,
    /// The gate is its own token server (passwords from the same htpasswd files); needed
    /// for anonymous pull with docker.
    Token,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub htpasswd: Vec<PathBuf>,
    /// True when no `[auth]` section exists: the htpasswd file is generated on first start.
    pub generated_user: bool,
    pub realm: String,
    pub allow_insecure_hashes: bool,
    pub cache_ttl: Duration,
    pub filter_catalog: bool,
    /// Token mode: the HMAC key file (created on first start if missing).
    pub token_key: PathBuf,
    pub token_ttl: Duration,
    /// The `service` name in challenges and tokens.
    pub service: String,
    /// `anonymous = "pull"`: clients without credentials may pull everything no rule
    /// forbids them (checked after the [[rules]]).
    pub anonymous_pull: bool,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The plain-HTTP listener: ACME http-01 answers and a 308 redirect to https.
    pub http_listen: Option<SocketAddr>,
    /// Every TLS connection starts with a PROXY protocol header (v1 or v2) from one of
    /// `trusted_proxies`, naming the real client.
    pub proxy_protocol: bool,
    /// Peers whose X-Forwarded-* headers are believed and extended rather than replaced.
    pub trusted_proxies: Vec<IpNet>,
    pub shutdown_grace: Duration,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Every write is refused with 405 UNSUPPORTED (registry maintenance, mirrors).
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub target: UpstreamTarget,
    /// `scheme://authority` the registry sees itself as; a `Location` starting with it is
    /// rewritten to the public origin.
    pub origin: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum TlsSource {
    /// Operator-provided PEM files (certbot, cert-manager, a corporate CA).
    Files { cert: PathBuf, key: PathBuf },
    /// Nothing configured: a CA and server certificate generated into `dir` on first start.
    Generated,
    /// Certificates ordered from an ACME CA (Let's Encrypt by default) and renewed.
    Acme(AcmeConfig),
}

/// Let's Encrypt's production directory: the default, as with certbot and Caddy.
pub const LETSENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// First retry after a failed order; doubled after each further failure up to an hour.
/// A minute keeps a flapping DNS record or firewall from burning Let's Encrypt's limit of
/// five failed validations per name and hour.
pub const DEFAULT_ACME_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// Answered on the TLS listener itself: only port 443 needs to be reachable.
    TlsAlpn01,
    /// Answered on `[server] http_listen` (port 80).
    Http01,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The names of the one certificate ordered (SANs), the first also its subject.
    pub domains: Vec<String>,
    /// `mailto:` URI for expiry and incident mail from the CA.
    pub contact: Option<String>,
    pub directory: String,
    pub challenge: AcmeChallenge,
    /// Account key and certificates, kept across restarts.
    pub cache_dir: PathBuf,
    /// A PEM root to trust for the ACME server's own TLS (private CAs: step-ca, pebble).
    pub directory_ca: Option<PathBuf>,
    pub retry_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub source: TlsSource,
    /// `[[tls.certificates]]`: further certificate/key files, served to clients whose SNI
    /// names one of their DNS names.
    pub extra: Vec<(PathBuf, PathBuf)>,
    /// Where generated material lives.
    pub dir: PathBuf,
    /// Client certificates, when `[tls] client_ca` is set.
    pub client: Option<ClientCertConfig>,
}

#[derive(Debug, Clone)]
pub struct ClientCertConfig {
    /// PEM bundle of the CAs whose client certificates are accepted.
    pub ca: PathBuf,
    /// `required` refuses the handshake without a valid certificate; `optional` lets such
    /// clients fall back to a password.
    pub required: bool,
    pub identity: CertIdentity,
}

/// Which name of a verified client certificate becomes the user name for the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertIdentity {
    CommonName,
    SanDns,
    SanEmail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `info,registry_gate=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Config {
    /// Loads `path` (or nothing: the built-in defaults), with `REGISTRY_GATE_*` environment
    /// overrides applied on top.
    pub fn load(path: Option<&Path>) -> Result<Config, Vec<ConfigError>> {
        Config::load_with_env(path, std::env::vars())
    }

    /// `load` with the environment given, so tests need not change the process's own.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Vec<ConfigError>> {
        let (text, base) = match path {
            None => (
                String::new(),
                std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            ),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    vec![ConfigError::Read {
                        path: path.to_path_buf(),
                        source,
                    }]
                })?;
                let base = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."));
                (text, std::path::absolute(&base).unwrap_or(base))
            }
        };
        Config::parse_with_env(&text, path, &base, env)
    }

    /// Parses TOML text; `path` is only used in messages and as the config's identity.
    pub fn parse(text: &str, path: Option<&Path>, base: &Path) -> Result<Config, Vec<ConfigError>> {
        Config::parse_with_env(text, path, base, std::iter::empty())
    }

    fn parse_with_env(
        text: &str,
        path: Option<&Path>,
        base: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Vec<ConfigError>> {
        let shown = display_path(path);
        // The file alone first: its errors carry line numbers.
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            vec![ConfigError::Syntax {
                path: shown.clone(),
                message: e.to_string().trim_end().replace('\n', "\n    "),
            }]
        })?;
        let overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != ENV_CONFIG)
            .collect();
        if overrides.is_empty() {
            return Config::from_raw(raw, path, base);
        }
        let mut table: toml::Table = toml::from_str(text).unwrap_or_default();
        let mut errors = Vec::new();
        for (name, value) in &overrides {
            if let Err(message) = apply_env(&mut table, name, value) {
                errors.push(ConfigError::Env {
                    name: name.clone(),
                    message,
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let raw = RawConfig::deserialize(toml::Value::Table(table)).map_err(|e| {
            let names: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
            vec![ConfigError::Env {
                name: names.join(", "),
                message: e.to_string().trim_end().to_string(),
            }]
        })?;
        Config::from_raw(raw, path, base)
    }

    fn from_raw(
        raw: RawConfig,
        path: Option<&Path>,
        base: &Path,
    ) -> Result<Config, Vec<ConfigError>> {
        let mut v = Validator {
            path: display_path(path),
            errors: Vec::new(),
        };

        let listen_text = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = v.check("server.listen", listen_text.parse::<SocketAddr>().map_err(|_| {
            format!("{listen_text:?} is not an address:port such as \"0.0.0.0:443\" or \"[::]:443\"")
        }));
        let trusted_proxies: Vec<IpNet> = raw
            .server
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .filter_map(|s| v.check("server.trusted_proxies", parse_cidr(s)))
            .collect();
        let http_listen = raw.server.http_listen.as_deref().and_then(|text| {
            v.check(
                "server.http_listen",
                text.parse::<SocketAddr>()
                    .map_err(|_| format!("{text:?} is not an address:port such as \"0.0.0.0:80\"")),
            )
        });
        let metrics_listen = raw.metrics.listen.as_deref().and_then(|text| {
            v.check(
                "metrics.listen",
                text.parse::<SocketAddr>().map_err(|_| {
                    format!("{text:?} is not an address:port such as \"127.0.0.1:9090\"")
                }),
            )
        });
        let proxy_protocol = raw.server.proxy_protocol.unwrap_or(false);
        if proxy_protocol && trusted_proxies.is_empty() {
            v.fail(
                "server.proxy_protocol",
                "the header is only believed from [server] trusted_proxies, which is empty: list the balancer's addresses".into(),
            );
        }
        let server = ServerConfig {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 443))),
            http_listen,
            proxy_protocol,
            trusted_proxies,
            shutdown_grace: v.duration(
                "server.shutdown_grace",
                &raw.server.shutdown_grace,
                DEFAULT_SHUTDOWN_GRACE,
            ),
            handshake_timeout: v.duration(
                "server.handshake_timeout",
                &raw.server.handshake_timeout,
                DEFAULT_HANDSHAKE_TIMEOUT,
            ),
            header_timeout: v.duration(
                "server.header_timeout",
                &raw.server.header_timeout,
                DEFAULT_HEADER_TIMEOUT,
            ),
            idle_timeout: v.duration(
                "server.idle_timeout",
                &raw.server.idle_timeout,
                DEFAULT_IDLE_TIMEOUT,
            ),
            max_header_bytes: match raw.server.max_header_bytes {
                Some(n) if n < 8192 => {
                    v.fail(
                        "server.max_header_bytes",
                        format!("{n} is too small to hold a request head; use at least 8192"),
                    );
                    DEFAULT_MAX_HEADER_BYTES
                }
                Some(n) => n,
                None => DEFAULT_MAX_HEADER_BYTES,
            },
            read_only: raw.server.read_only.unwrap_or(false),
            max_connections: raw
                .server
                .max_connections
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            max_connections_per_ip: v.at_least_one(
                "server.max_connections_per_ip",
                raw.server.max_connections_per_ip,
                DEFAULT_MAX_CONNECTIONS_PER_IP,
            ),
        };

        let url = raw.upstream.url.as_deref().unwrap_or(DEFAULT_UPSTREAM);
        let parsed = v.check("upstream.url", parse_upstream(url, base));
        let (target, origin) = parsed.unwrap_or((
            UpstreamTarget::Tcp {
                host: "127.0.0.1".into(),
                port: 5000,
            },
            DEFAULT_UPSTREAM.into(),
        ));
        let upstream = UpstreamConfig {
            target,
            origin,
            connect_timeout: v.duration(
                "upstream.connect_timeout",
                &raw.upstream.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            ),
            read_timeout: v.duration(
                "upstream.read_timeout",
                &raw.upstream.read_timeout,
                DEFAULT_READ_TIMEOUT,
            ),
        };

        let dir = base.join(raw.tls.dir.as_deref().unwrap_or("certs"));
        let acme = raw
            .tls
            .acme
            .map(|acme| acme_config(&mut v, acme, base, &dir, server.http_listen.is_some()));
        let source = match (raw.tls.cert, raw.tls.key) {
            (Some(_), _) | (_, Some(_)) if acme.is_some() => {
                v.fail("tls.acme", "[tls.acme] and tls.cert/tls.key are both set: the certificate comes from one place; remove one".into());
                TlsSource::Generated
            }
            (None, None) if acme.is_some() => match acme {
                Some(acme) => TlsSource::Acme(acme),
                None => TlsSource::Generated,
            },
            (Some(cert), Some(key)) => TlsSource::Files {
                cert: base.join(cert),
                key: base.join(key),
            },
            (None, None) => TlsSource::Generated,
            (Some(_), None) => {
                v.fail("tls.key", "tls.cert is set but tls.key is not: set both, or neither to use a generated certificate".into());
                TlsSource::Generated
            }
            (None, Some(_)) => {
                v.fail("tls.cert", "tls.key is set but tls.cert is not: set both, or neither to use a generated certificate".into());
                TlsSource::Generated
            }
        };
        let client = match raw.tls.client_ca {
            None => {
                if raw.tls.client_auth.is_some() || raw.tls.client_identity.is_some() {
                    v.fail("tls.client_ca", "tls.client_auth or tls.client_identity is set but tls.client_ca is not: name the CA bundle that signs client certificates".into());
                }
                None
            }
            Some(ca) => {
                let required = match raw.tls.client_auth.as_deref() {
                    None | Some("optional") => false,
                    Some("required") => true,
                    Some(other) => {
                        v.fail("tls.client_auth", format!("{other:?} is not a client_auth mode; use \"optional\" or \"required\""));
                        false
                    }
                };
                let identity = match raw.tls.client_identity.as_deref() {
                    None | Some("cn") => CertIdentity::CommonName,
                    Some("san-dns") => CertIdentity::SanDns,
                    Some("san-email") => CertIdentity::SanEmail,
                    Some(other) => {
                        v.fail("tls.client_identity", format!("{other:?} is not a certificate name; use \"cn\", \"san-dns\" or \"san-email\""));
                        CertIdentity::CommonName
                    }
                };
                Some(ClientCertConfig {
                    ca: base.join(ca),
                    required,
                    identity,
                })
            }
        };
        let extra = raw
            .tls
            .certificates
            .unwrap_or_default()
            .into_iter()
            .map(|c| (base.join(c.cert), base.join(c.key)))
            .collect();
        let tls = TlsConfig {
            source,
            extra,
            dir,
            client,
        };

        let level = raw.log.level.unwrap_or_else(|| "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            v.fail(
                "log.level",
                format!(
                    "{level:?} is not a log filter ({e}); use error, warn, info, debug or trace"
                ),
            );
        }
        let format = match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                v.fail(
                    "log.format",
                    format!("{other:?} is not a log format; use \"text\" or \"json\""),
                );
                LogFormat::Text
            }
        };
        let log = LogConfig { level, format };

        let filter = v.filter(raw.filter);
        let auth = v.auth(raw.auth, base, &tls.dir);
        let mut specs: Vec<RuleSpec> = raw
            .rules
            .into_iter()
            .map(|r| RuleSpec {
                users: r.users,
                repositories: r.repositories,
                actions: r.actions,
                from: r.from.unwrap_or_default(),
            })
            .collect();
        if specs.is_empty() && !raw.groups.is_empty() {
            v.fail(
                "groups",
                "groups are defined but there are no [[rules]] using them".into(),
            );
        }
        if auth.anonymous_pull {
            if specs.is_empty() {
                // The no-rules default (every user may do everything), made explicit so the
                // anonymous rule can follow it.
                specs.push(rule_spec(&["*"], &["**"], &["*"]));
            }
            // `anonymous = "pull"` is a last rule: explicit rules still decide first.
            specs.push(rule_spec(&["anonymous"], &["**"], &["pull"]));
        }
        let rules = if specs.is_empty() {
            match auth.mode {
                // The recipes without auth_basic: everyone may do everything.
                AuthMode::None => Rules::allow_everyone(),
                AuthMode::Basic | AuthMode::Token => Rules::allow_all_authenticated(),
            }
        } else {
            match Rules::compile(&raw.groups, &specs) {
                Ok(rules) => rules,
                Err(errors) => {
                    for e in errors {
                        v.errors.push(ConfigError::Rules {
                            path: v.path.clone(),
                            message: e.to_string(),
                        });
                    }
                    Rules::allow_all_authenticated()
                }
            }
        };

        if !v.errors.is_empty() {
            return Err(v.errors);
        }
        Ok(Config {
            source: path.map(Path::to_path_buf),
            server,
            upstream,
            tls,
            log,
            filter,
            metrics_listen,
            auth,
            rules: Arc::new(rules),
        })
    }
}

/// Every key can also come from the environment: `REGISTRY_GATE_<SECTION>__<KEY>`, e.g.
/// `REGISTRY_GATE_SERVER__LISTEN=0.0.0.0:8443` or `REGISTRY_GATE_AUTH__HTPASSWD='["a", "b"]'`.
const ENV_PREFIX: &str = "REGISTRY_GATE_";
/// Names the configuration file itself (see `cli`), not a key.
const ENV_CONFIG: &str = "REGISTRY_GATE_CONFIG";

/// Sets one environment override in the TOML tree. The value is read as a TOML value when it
/// is one (numbers, booleans, arrays, quoted strings) and as a plain string otherwise.
fn apply_env(table: &mut toml::Table, name: &str, value: &str) -> Result<(), String> {
    let rest = &name[ENV_PREFIX.len()..];
    let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if parts.len() < 2 || parts.iter().any(String::is_empty) {
        return Err(format!(
            "not a key: write {ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}SERVER__LISTEN"
        ));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut node = table;
    for section in &parts[..parts.len() - 1] {
        let entry = node
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| format!("[{section}] is not a table"))?;
    }
    node.insert(parts[parts.len() - 1].clone(), parsed);
    Ok(())
}

fn rule_spec(users: &[&str], repositories: &[&str], actions: &[&str]) -> RuleSpec {
    let own = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
    RuleSpec {
        users: own(users),
        repositories: own(repositories),
        actions: own(actions),
        from: Vec::new(),
    }
}

/// `[tls.acme]`, validated: names an ACME CA will accept, a directory URL, a challenge the
/// listeners can answer.
fn acme_config(
    v: &mut Validator,
    raw: raw::RawAcme,
    base: &Path,
    tls_dir: &Path,
    has_http_listener: bool,
) -> AcmeConfig {
    let domains: Vec<String> = raw
        .domains
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    if domains.is_empty() {
        v.fail(
            "tls.acme.domains",
            "no names given: list the host names clients use, e.g. domains = [\"registry.example.com\"]".into(),
        );
    }
    for d in &domains {
        if let Err(why) = check_acme_domain(d) {
            v.fail("tls.acme.domains", format!("{d:?}: {why}"));
        }
    }
    let contact = raw.contact.and_then(|c| {
        let uri = if c.contains(':') {
            c
        } else {
            format!("mailto:{c}")
        };
        match uri.strip_prefix("mailto:") {
            Some(address) if address.contains('@') && !address.contains(char::is_whitespace) => {
                Some(uri)
            }
            _ => {
                v.fail(
                    "tls.acme.contact",
                    format!("{uri:?} is not an e-mail address such as \"ops@example.com\""),
                );
                None
            }
        }
    });
    let directory = match raw.directory.as_deref() {
        None | Some("production") | Some("letsencrypt") => LETSENCRYPT_PRODUCTION.to_string(),
        Some("staging") | Some("letsencrypt-staging") => LETSENCRYPT_STAGING.to_string(),
        Some(url) if url.starts_with("https://") => url.to_string(),
        Some(other) => {
            v.fail(
                "tls.acme.directory",
                format!("{other:?} is not an ACME directory: use \"production\", \"staging\" or an https:// URL"),
            );
            LETSENCRYPT_PRODUCTION.to_string()
        }
    };
    let challenge = match raw.challenge.as_deref() {
        None | Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
        Some("http-01") => {
            if !has_http_listener {
                v.fail(
                    "tls.acme.challenge",
                    "http-01 is answered on the plain-HTTP listener: set [server] http_listen = \"0.0.0.0:80\", or use challenge = \"tls-alpn-01\"".into(),
                );
            }
            AcmeChallenge::Http01
        }
        Some(other) => {
            v.fail(
                "tls.acme.challenge",
                format!(
                    "{other:?} is not a supported challenge; use \"tls-alpn-01\" or \"http-01\""
                ),
            );
            AcmeChallenge::TlsAlpn01
        }
    };
    AcmeConfig {
        domains,
        contact,
        directory,
        challenge,
        cache_dir: raw
            .cache_dir
            .map(|d| base.join(d))
            .unwrap_or_else(|| tls_dir.join("acme")),
        directory_ca: raw.directory_ca.map(|p| base.join(p)),
        retry_interval: v.duration(
            "tls.acme.retry_interval",
            &raw.retry_interval,
            DEFAULT_ACME_RETRY,
        ),
    }
}

/// A name an ACME CA can validate with tls-alpn-01 or http-01.
fn check_acme_domain(name: &str) -> Result<(), String> {
    if name.starts_with("*.") {
        return Err("wildcard names need the dns-01 challenge, which the gate does not answer; list each name, or use a certificate from files".into());
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("ACME certificates name hosts, not addresses; use a DNS name".into());
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() > 253 || !name.split('.').all(valid_label) {
        return Err("not a DNS name (letters, digits, '-' and '.' only)".into());
    }
    Ok(())
}

fn display_path(path: Option<&Path>) -> String {
    path.map(|p| p.display().to_string())
        .unwrap_or_else(|| "(built-in defaults)".into())
}

/// Collects errors while letting validation go on with a placeholder value.
struct Validator {
    path: String,
    errors: Vec<ConfigError>,
}

impl Validator {
    fn fail(&mut self, key: &'static str, message: String) {
        self.errors.push(ConfigError::Invalid {
            path: self.path.clone(),
            key,
            message,
        });
    }

    fn check<T>(&mut self, key: &'static str, r: Result<T, String>) -> Option<T> {
        r.map_err(|m| self.fail(key, m)).ok()
    }

    fn at_least_one(&mut self, key: &'static str, value: Option<usize>, default: usize) -> usize {
        match value {
            Some(0) => {
                self.fail(
                    key,
                    "0 would refuse every connection; use at least 1".into(),
                );
                default
            }
            Some(n) => n,
            None => default,
        }
    }

    fn filter(&mut self, raw: raw::RawFilter) -> crate::filter::Filter {
        let user_agents = match raw.deny_user_agents {
            None => {
                return self.filter_nets(
                    crate::filter::Filter::recipe_default(),
                    raw.allow,
                    raw.deny,
                )
            }
            Some(list) => list,
        };
        let mut patterns = Vec::new();
        for pattern in user_agents {
            match regex::Regex::new(&pattern) {
                Ok(r) => patterns.push(r),
                Err(e) => self.fail(
                    "filter.deny_user_agents",
                    format!("{pattern:?} is not a regular expression: {e} (Rust regex syntax; no look-around)"),
                ),
            }
        }
        self.filter_nets(
            crate::filter::Filter::new(patterns, Vec::new(), Vec::new()),
            raw.allow,
            raw.deny,
        )
    }

    fn filter_nets(
        &mut self,
        base: crate::filter::Filter,
        allow: Option<Vec<String>>,
        deny: Option<Vec<String>>,
    ) -> crate::filter::Filter {
        let allow: Vec<IpNet> = allow
            .unwrap_or_default()
            .iter()
            .filter_map(|s| self.check("filter.allow", parse_cidr(s)))
            .collect();
        let deny: Vec<IpNet> = deny
            .unwrap_or_default()
            .iter()
            .filter_map(|s| self.check("filter.deny", parse_cidr(s)))
            .collect();
        base.with_addresses(allow, deny)
    }

    fn auth(&mut self, raw: Option<RawAuth>, base: &Path, tls_dir: &Path) -> AuthConfig {
        let raw = raw.unwrap_or_default();
        let mode = match raw.mode.as_deref() {
            None | Some("basic") => AuthMode::Basic,
            Some("token") => AuthMode::Token,
            Some("none") => AuthMode::None,
            Some(other) => {
                self.fail(
                    "auth.mode",
                    format!("{other:?} is not an auth mode; use \"basic\", \"token\" or \"none\""),
                );
                AuthMode::Basic
            }
        };
        // No htpasswd named: the zero-config file in [tls] dir, created on first start.
        let generated_user = mode != AuthMode::None && raw.htpasswd.is_none();
        let htpasswd: Vec<PathBuf> = match raw.htpasswd {
            None if generated_user => vec![tls_dir.join(GENERATED_HTPASSWD)],
            None => Vec::new(),
            Some(files) => files.iter().map(|p| base.join(p)).collect(),
        };
        if mode != AuthMode::None && htpasswd.is_empty() {
            self.fail(
                "auth.htpasswd",
                "password authentication needs at least one htpasswd file, e.g. htpasswd = [\"htpasswd\"] (create it with `registry-gate htpasswd add USER`)".into(),
            );
        }
        if mode == AuthMode::None && !htpasswd.is_empty() {
            self.fail("auth.htpasswd", "htpasswd files are set but mode is \"none\", so nobody would be asked for a password; use mode = \"basic\"".into());
        }
        let anonymous_pull = match raw.anonymous.as_deref() {
            None | Some("none") => false,
            Some("pull") => true,
            Some(other) => {
                self.fail(
                    "auth.anonymous",
                    format!("{other:?} is not an anonymous access level; use \"none\" or \"pull\""),
                );
                false
            }
        };
        if anonymous_pull && mode == AuthMode::Basic {
            self.fail(
                "auth.anonymous",
                "anonymous pull needs mode = \"token\": after a Basic challenge on /v2/ docker refuses to pull without credentials (\"no basic auth credentials\")".into(),
            );
        }
        if let Some(service) = &raw.service {
            if service.is_empty() || service.contains('"') || service.chars().any(char::is_control)
            {
                self.fail(
                    "auth.service",
                    "the service name must be non-empty, without quotes or control characters"
                        .into(),
                );
            }
        }
        let realm = raw.realm.unwrap_or_else(|| DEFAULT_REALM.into());
        if realm.contains('"') || realm.chars().any(char::is_control) {
            self.fail(
                "auth.realm",
                "the realm must not contain quotes or control characters".into(),
            );
        }
        AuthConfig {
            mode,
            htpasswd,
            generated_user,
            realm,
            allow_insecure_hashes: raw.allow_insecure_hashes.unwrap_or(false),
            cache_ttl: self.duration(
                "auth.cache_ttl",
                &raw.cache_ttl,
                crate::auth::DEFAULT_CACHE_TTL,
            ),
            filter_catalog: raw.filter_catalog.unwrap_or(true),
            token_key: raw
                .token_key
                .map(|p| base.join(p))
                .unwrap_or_else(|| tls_dir.join(GENERATED_TOKEN_KEY)),
            token_ttl: self.duration("auth.token_ttl", &raw.token_ttl, DEFAULT_TOKEN_TTL),
            service: raw.service.unwrap_or_else(|| DEFAULT_REALM.into()),
            anonymous_pull,
        }
    }

    fn duration(
        &mut self,
        key: &'static str,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(text) => self.check(key, parse_duration(text)).unwrap_or(default),
        }
    }
}

/// Durations are written as in the recipes' spirit: `"900s"`, `"15m"`, `"1h 30m"`, `"500ms"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{text:?} is not a duration ({e}); write it like \"900s\", \"15m\" or \"500ms\"")
    })
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("{text:?} is not an address or CIDR such as \"10.0.0.0/8\" or \"192.0.2.7\"")
        })
}

fn parse_upstream(url: &str, base: &Path) -> Result<(UpstreamTarget, String), String> {
    if let Some(path) = url.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(format!(
                "{url:?} names no socket; write \"unix:///run/registry.sock\""
            ));
        }
        // The registry on a unix socket still builds URLs from Host; its own origin never
        // appears in a Location, so there is nothing to rewrite.
        return Ok((
            UpstreamTarget::Unix(base.join(path)),
            "http://localhost".into(),
        ));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL ({e}); write \"http://127.0.0.1:5000\" or \"unix:///run/registry.sock\""))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{url:?}: only http:// and unix:// upstreams are supported (the registry sits behind the gate on a trusted link)"
        ));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!(
            "{url:?}: the upstream URL must not have a path; the registry serves /v2/ at its root"
        ));
    }
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let origin = format!(
        "http://{}",
        uri.authority().map(|a| a.as_str()).unwrap_or("")
    );
    Ok((UpstreamTarget::Tcp { host, port }, origin))
}

#[cfg(test)]
mod tests {
    /// An address no `from` list in these tests names.
    const ANYWHERE: std::net::IpAddr =
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        Config::parse(
            text,
            Some(Path::new("/etc/gate/proxy.toml")),
            Path::new("/etc/gate"),
        )
    }

    fn messages(r: Result<Config, Vec<ConfigError>>) -> Vec<String> {
        match r {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn proxy_protocol_needs_a_trusted_balancer() {
        let m = messages(parse("[server]\nproxy_protocol = true\n")).join("\n");
        assert!(m.contains("[server.proxy_protocol]: the header is only believed from [server] trusted_proxies"), "{m}");
        let c = parse("[server]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.5\"]\n")
            .expect("valid");
        assert!(c.server.proxy_protocol);
    }

    #[test]
    fn acme_defaults_and_shortcuts() {
        let c = parse("[tls.acme]\ndomains = [\"Reg.Example.COM.\"]\ncontact = \"ops@example.com\"\ndirectory = \"staging\"\n").expect("valid");
        match c.tls.source {
            TlsSource::Acme(acme) => {
                assert_eq!(acme.domains, vec!["reg.example.com".to_string()]);
                assert_eq!(acme.contact.as_deref(), Some("mailto:ops@example.com"));
                assert_eq!(acme.directory, LETSENCRYPT_STAGING);
                assert_eq!(acme.challenge, AcmeChallenge::TlsAlpn01);
                assert_eq!(acme.cache_dir, PathBuf::from("/etc/gate/certs/acme"));
            }
            other => panic!("ACME expected, got {other:?}"),
        }
    }

    #[test]
    fn acme_mistakes_name_the_key_and_the_fix() {
        let m = messages(parse(
            "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[tls.acme]\ndomains = [\"*.example.com\", \"10.0.0.1\", \"bad_name.example\"]\nchallenge = \"http-01\"\ndirectory = \"http://acme.local/dir\"\ncontact = \"nobody\"\n",
        ));
        let all = m.join("\n");
        for needle in [
            "[tls.acme]: [tls.acme] and tls.cert/tls.key are both set",
            "\"*.example.com\": wildcard names need the dns-01 challenge",
            "\"10.0.0.1\": ACME certificates name hosts",
            "\"bad_name.example\": not a DNS name",
            "[tls.acme.challenge]: http-01 is answered on the plain-HTTP listener: set [server] http_listen",
            "[tls.acme.directory]: \"http://acme.local/dir\" is not an ACME directory",
            "[tls.acme.contact]: \"mailto:nobody\" is not an e-mail address",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(messages(parse("[tls.acme]\n"))
            .join("")
            .contains("no names given"));
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = parse("").expect("defaults are valid");
        assert_eq!(c.server.listen, "0.0.0.0:443".parse().expect("addr"));
        assert_eq!(
            c.upstream.target,
            UpstreamTarget::Tcp {
                host: "127.0.0.1".into(),
                port: 5000
            }
        );
        assert_eq!(c.upstream.origin, "http://127.0.0.1:5000");
        assert_eq!(c.upstream.read_timeout, Duration::from_secs(900));
        assert_eq!(c.tls.dir, PathBuf::from("/etc/gate/certs"));
        assert!(matches!(c.tls.source, TlsSource::Generated));
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        let c = parse("[tls]\ncert = \"c.pem\"\nkey = \"/abs/k.pem\"\n[upstream]\nurl = \"unix://run/r.sock\"").expect("valid");
        match c.tls.source {
            TlsSource::Files { cert, key } => {
                assert_eq!(cert, PathBuf::from("/etc/gate/c.pem"));
                assert_eq!(key, PathBuf::from("/abs/k.pem"));
            }
            TlsSource::Generated | TlsSource::Acme(_) => panic!("files expected"),
        }
        assert_eq!(
            c.upstream.target,
            UpstreamTarget::Unix("/etc/gate/run/r.sock".into())
        );
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let m = messages(parse(
            "[server]\nlisten = \"127.0.0.1:8443\"\nlisen = \"x\"\n",
        ));
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("line 3"), "{}", m[0]);
        assert!(m[0].contains("lisen"), "{}", m[0]);
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let m = messages(parse(
            "[server]\nlisten = \"nope\"\nshutdown_grace = \"soon\"\n[upstream]\nurl = \"https://x\"\n[tls]\ncert = \"c.pem\"\n[log]\nformat = \"xml\"\n",
        ));
        let all = m.join("\n");
        for key in [
            "server.listen",
            "server.shutdown_grace",
            "upstream.url",
            "tls.key",
            "log.format",
        ] {
            assert!(all.contains(key), "{key} missing from:\n{all}");
        }
        assert!(all.contains("/etc/gate/proxy.toml"), "{all}");
    }

    #[test]
    fn the_documented_example_is_valid_as_shipped() {
        let text = include_str!("../../proxy.toml.example");
        let c = parse(text).unwrap_or_else(|e| panic!("proxy.toml.example: {e:?}"));
        // What the example states as defaults must be the defaults.
        let defaults = parse("").expect("defaults");
        assert_eq!(c.server.listen, defaults.server.listen);
        assert_eq!(c.upstream.read_timeout, defaults.upstream.read_timeout);
        assert_eq!(c.auth.mode, defaults.auth.mode);
        assert_eq!(c.auth.cache_ttl, defaults.auth.cache_ttl);
    }

    #[test]
    fn the_example_acme_table_is_valid_when_uncommented() {
        let text = include_str!("../../proxy.toml.example");
        let start = text.find("# [tls.acme]").expect("acme example");
        let end = start
            + text[start..]
                .find("\n[log]")
                .expect("[log] after [tls.acme]");
        let uncommented: String = text[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| l.strip_prefix("Example: ").unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&format!(
            "[server]\nhttp_listen = \"0.0.0.0:80\"\n{uncommented}"
        ))
        .unwrap_or_else(|e| panic!("{uncommented}\n{e:?}"));
        match c.tls.source {
            TlsSource::Acme(acme) => {
                assert_eq!(acme.domains.len(), 2);
                assert_eq!(acme.directory, LETSENCRYPT_PRODUCTION);
                assert_eq!(acme.retry_interval, DEFAULT_ACME_RETRY);
                assert!(acme.directory_ca.is_some());
            }
            other => panic!("ACME expected from:\n{uncommented}\ngot {other:?}"),
        }
    }

    #[test]
    fn the_example_rules_compile_when_uncommented() {
        let text = include_str!("../../proxy.toml.example");
        let start = text.find("# [groups]").expect("groups example");
        let uncommented: String = text[start..]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| *l == "[groups]" || *l == "[[rules]]" || l.contains(" = ["))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&uncommented).unwrap_or_else(|e| panic!("{uncommented}\n{e:?}"));
        use crate::registry_path::Action;
        use crate::rules::Identity;
        let rules = &c.rules;
        let build_network: std::net::IpAddr = "10.20.3.4".parse().expect("address");
        assert!(rules
            .decide(
                &Identity::User("builder1"),
                build_network,
                "team/app",
                Action::Push
            )
            .is_allowed());
        // Elsewhere the `from` rule is skipped: the catch-all lets CI pull, not push.
        assert!(!rules
            .decide(
                &Identity::User("builder1"),
                ANYWHERE,
                "team/app",
                Action::Push
            )
            .is_allowed());
        assert!(rules
            .decide(
                &Identity::User("builder1"),
                ANYWHERE,
                "team/app",
                Action::Pull
            )
            .is_allowed());
        assert!(!rules
            .decide(
                &Identity::User("builder1"),
                ANYWHERE,
                "team/app",
                Action::Delete
            )
            .is_allowed());
        assert!(rules
            .decide(
                &Identity::User("alice"),
                ANYWHERE,
                "team/app",
                Action::Delete
            )
            .is_allowed());
        assert!(rules
            .decide(&Identity::User("bob"), ANYWHERE, "bob/tool", Action::Push)
            .is_allowed());
        assert!(!rules
            .decide(&Identity::User("bob"), ANYWHERE, "team/app", Action::Push)
            .is_allowed());
        assert!(rules
            .decide(&Identity::User("bob"), ANYWHERE, "team/app", Action::Pull)
            .is_allowed());
        assert!(!rules
            .decide(&Identity::Anonymous, ANYWHERE, "team/app", Action::Pull)
            .is_allowed());
    }

    fn with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, Vec<ConfigError>> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::parse_with_env(
            text,
            Some(Path::new("/etc/gate/proxy.toml")),
            Path::new("/etc/gate"),
            env,
        )
    }

    #[test]
    fn environment_overrides_every_kind_of_key() {
        let c = with_env(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("REGISTRY_GATE_SERVER__LISTEN", "127.0.0.1:8443"),
                ("REGISTRY_GATE_SERVER__MAX_CONNECTIONS", "7"),
                ("REGISTRY_GATE_SERVER__READ_ONLY", "true"),
                ("REGISTRY_GATE_UPSTREAM__READ_TIMEOUT", "60s"),
                ("REGISTRY_GATE_SERVER__TRUSTED_PROXIES", "[\"10.0.0.0/8\"]"),
                ("REGISTRY_GATE_CONFIG", "/elsewhere.toml"),
                ("UNRELATED", "x"),
            ],
        )
        .expect("valid");
        assert_eq!(c.server.listen, "127.0.0.1:8443".parse().expect("addr"));
        assert_eq!(c.server.max_connections, 7);
        assert!(c.server.read_only);
        assert_eq!(c.upstream.read_timeout, Duration::from_secs(60));
        assert_eq!(c.server.trusted_proxies.len(), 1);
    }

    #[test]
    fn a_wrong_environment_override_names_the_variable() {
        let m = messages(with_env("", &[("REGISTRY_GATE_SERVER__LISEN", "x")]));
        assert!(
            m[0].contains("REGISTRY_GATE_SERVER__LISEN") && m[0].contains("lisen"),
            "{m:?}"
        );
        let m = messages(with_env("", &[("REGISTRY_GATE_LISTEN", "x")]));
        assert!(
            m[0].contains("REGISTRY_GATE_LISTEN") && m[0].contains("SECTION"),
            "{m:?}"
        );
        let m = messages(with_env("", &[("REGISTRY_GATE_SERVER__LISTEN", "nope")]));
        assert!(m[0].contains("server.listen"), "{m:?}");
    }

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration("900s"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("900").is_err());
    }

    #[test]
    fn trusted_proxies_accept_plain_addresses() {
        let c =
            parse("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\"]").expect("valid");
        assert_eq!(c.server.trusted_proxies.len(), 2);
        assert!(c.server.trusted_proxies[1]
            .contains(&"192.0.2.7".parse::<std::net::IpAddr>().expect("ip")));
    }
}
