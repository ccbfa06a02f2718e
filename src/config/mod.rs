//! The validated, immutable configuration: every value parsed, every default applied, every
//! path made absolute against the config file's directory.
//!
//! Loading never stops at the first problem: `Config::load` reports every bad key at once, so
//! `registry-gate check` can list them all like `nginx -t`. Reading certificate files is not
//! done here (that is `tls`); this module only says where they are.
//!
//! The work is split by stage:
//! - this file: the validated types, their defaults, `ConfigError`, and loading (read the
//!   file, deserialize, apply the environment, validate section by section in `from_raw`);
//! - `raw`: the serde mirror of the TOML, with no logic;
//! - `env`: the `REGISTRY_GATE_*` environment overrides, laid over the TOML before it is
//!   deserialized;
//! - `validate`: the `Validator`, one method per section (raw section in, validated section
//!   out), and the parsers for durations, addresses and upstream URLs.

mod env;
mod raw;
mod validate;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::rules::{Protections, RepositoryPattern, Rules};

use raw::RawConfig;
use validate::Validator;

pub use validate::parse_duration;

/// The htpasswd file created in `[tls] dir` when there is no `[auth]` section.
pub const GENERATED_HTPASSWD: &str = "htpasswd";
/// The token-signing key created in `[tls] dir` for token mode when none is configured.
pub const GENERATED_TOKEN_KEY: &str = "token.key";
/// The access token file's name, next to the first htpasswd file unless configured.
pub const DEFAULT_ACCESS_TOKENS: &str = "access-tokens.toml";
/// How every access token is named to the rules (`token:NAME`): no other source of
/// identities (OIDC `user` templates, client certificates) may produce a name starting so.
pub const TOKEN_ACCOUNT_PREFIX: &str = "token:";
/// Docker asks for a new token when one expires; five minutes is what Docker Hub issues.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);
/// How long a verified credential is remembered (`[auth] cache_ttl`): docker sends the same
/// Basic header on every request of a push, and bcrypt costs tens of milliseconds each time.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);
/// The realm docker shows nowhere but browsers do; the recipes use the host name.
pub const DEFAULT_REALM: &str = "registry-gate";

/// Where the registry browser answers (`[ui] path`); a path of the gate's own, never
/// forwarded, so it must not be one the registry API uses.
pub const DEFAULT_UI_PATH: &str = "/ui/";

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
/// Answer bytes one HTTP/2 stream may have queued in the gate for a client that has not read
/// them yet. hyper's default is 400 KiB; a single 1 GiB download over loopback was as fast
/// with 64, 128, 256 or 400 KiB (the kernel's socket buffer does the buffering that
/// matters), and the smaller the buffer, the more streams a connection's share holds.
pub const DEFAULT_H2_STREAM_BUFFER: usize = 128 * 1024;
/// Answer bytes all streams of one HTTP/2 connection may hold at once: nine downloads in
/// parallel with the default stream buffer (docker pulls three layers at a time), beyond
/// which a connection's further GETs wait for one of its own to finish.
pub const DEFAULT_H2_CONNECTION_BUFFER: u64 = 3 * 1024 * 1024;
/// Answer bytes all HTTP/2 connections together may hold: about 800 downloads in parallel,
/// and a ceiling on what clients that stop reading can make the gate keep.
pub const DEFAULT_H2_BUFFER_BUDGET: u64 = 256 * 1024 * 1024;
/// The smallest `h2_stream_buffer`: one HTTP/2 DATA frame of the default size, so a stream
/// never has to send its data in slivers.
pub const MIN_H2_STREAM_BUFFER: usize = 16 * 1024;
/// The largest `h2_stream_buffer`: hyper takes at most `u32::MAX`, and past a few MiB a
/// larger buffer adds memory, not speed.
pub const MAX_H2_STREAM_BUFFER: usize = 64 * 1024 * 1024;

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
        /// `section.key`, or `events[0].url` for a key of a repeated table.
        key: Cow<'static, str>,
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
    /// Compiled `[[protect]]`: tags that may not be moved or deleted; empty when none.
    pub protect: Arc<Protections>,
    /// `[[events]]`: where push and delete events are sent, in file order.
    pub events: Vec<EventReceiver>,
    /// `[ui]`: the registry browser.
    pub ui: UiConfig,
    /// `[cluster]`: the Redis (or Valkey) several gates share state through; `None`: one
    /// gate, everything in this process.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: where the fleet's shared state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://host:port/db` or `rediss://…`, without a password (it never sits in the
    /// configuration, which is logged and shown by `check`).
    pub url: String,
    /// Where the password comes from, if the server wants one.
    pub password: Option<ClusterPassword>,
    /// `rediss://` only: the CA bundle the server's certificate must chain to; `None`: the
    /// system's roots.
    pub ca: Option<PathBuf>,
    /// The longest any request waits on Redis; past it the feature's fallback applies.
    pub timeout: Duration,
    /// Every key starts with this and `:`, so several fleets can share one Redis.
    pub key_prefix: String,
    /// How long a protected-tag write lock lives unless its holder renews it: the longest a
    /// gate that died holding one blocks the repository.
    pub lock_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterPassword {
    File(PathBuf),
    /// The name of an environment variable holding it.
    Env(String),
}

pub const DEFAULT_CLUSTER_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_CLUSTER_PREFIX: &str = "registry-gate";
pub const DEFAULT_CLUSTER_LOCK_TTL: Duration = Duration::from_secs(30);

/// `[ui]`: the registry browser the gate serves itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiConfig {
    pub enabled: bool,
    /// Starts and ends with `/`, lies outside `/v2/`, and holds only URL-safe characters, so
    /// it can go into a cookie's `Path` and a page unchanged.
    pub path: String,
    /// Origins (`https://host[:port]`, lowercase) whose pages may call the registry API
    /// with credentials (CORS); empty: none.
    pub cors_origins: Vec<String>,
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
    /// The access token file (`registry-gate token`); `None` without authentication.
    pub access_tokens: Option<PathBuf>,
    /// `[[auth.oidc]]`: issuers whose ID tokens are accepted as passwords.
    pub oidc: Vec<OidcConfig>,
}

/// One `[[auth.oidc]]` issuer: a CI system (GitHub Actions, GitLab CI, a Kubernetes
/// cluster) whose signed ID tokens log jobs in without a stored secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// Exactly as the tokens' `iss` claim and the discovery document say it.
    pub issuer: String,
    /// Must be in the token's `aud` claim: the CI job asks for a token for this registry.
    pub audience: String,
    /// The rule identity a token maps to.
    pub user: UserTemplate,
    /// Claims that must have one of the listed values (`repository_owner = "my-org"`).
    pub claims: Vec<(String, Vec<String>)>,
    /// A PEM root for the issuer's own TLS (a private issuer); the system's roots otherwise.
    pub ca: Option<PathBuf>,
}

/// `"ci:${repository}"`: literal text and claim names, validated when loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTemplate {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    Text(String),
    Claim(String),
}

impl UserTemplate {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<UserTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(TemplatePart::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("{text:?}: \"${{\" without a closing \"}}\""))?;
            let name = &after[..end];
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!(
                    "{text:?}: \"{name}\" is not a claim name (letters, digits, '_', '-')"
                ));
            }
            parts.push(TemplatePart::Claim(name.to_string()));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_string()));
        }
        if !parts.iter().any(|p| matches!(p, TemplatePart::Claim(_))) {
            return Err(format!(
                "{text:?} names no claim, so every token would be the same user; use e.g. \"ci:${{repository}}\""
            ));
        }
        // A literal prefix with a colon keeps these identities apart from htpasswd users
        // (whose names cannot hold a colon) and robot tokens (`token:NAME`): a claim such as
        // `actor = "alice"` must never become the user alice, with her rules.
        let prefix_ok = matches!(parts.first(), Some(TemplatePart::Text(t))
            if t.contains(':') && !t.starts_with(TOKEN_ACCOUNT_PREFIX));
        if !prefix_ok {
            return Err(format!(
                "{text:?} must start with a prefix of your own ending in \":\", such as \"ci:${{repository}}\" or \"oidc:${{sub}}\", so a token can never name an htpasswd user or an access token (\"token:\" is taken)"
            ));
        }
        if text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '*')
        {
            return Err(format!(
                "{text:?}: user names cannot contain spaces, control characters or \"*\""
            ));
        }
        Ok(UserTemplate { parts })
    }

    /// The user for a token's claims; `Err(name)` names a claim that is missing or not a
    /// plain value.
    pub fn render(&self, claim: impl Fn(&str) -> Option<String>) -> Result<String, &str> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Claim(name) => out.push_str(&claim(name).ok_or(name.as_str())?),
            }
        }
        Ok(out)
    }
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
    /// Answer bytes one HTTP/2 stream may have queued for a client that is not reading.
    pub h2_stream_buffer: usize,
    /// What all streams of one HTTP/2 connection may hold at once, in bytes.
    pub h2_connection_buffer: u64,
    /// What all HTTP/2 connections together may hold, in bytes; read at start only.
    pub h2_buffer_budget: u64,
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

/// A receiver waits at most this long for each delivery attempt (`[[events]] timeout`): a
/// webhook that has not answered by then is treated as down and retried later.
pub const DEFAULT_EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the registry accepted that an `[[events]]` receiver can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAction {
    /// A manifest stored (`PUT /v2/<name>/manifests/<reference>` answered 201).
    Push,
    /// A manifest or tag deleted (`DELETE /v2/<name>/manifests/<reference>` answered 202).
    Delete,
}

impl EventAction {
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Push => "push",
            EventAction::Delete => "delete",
        }
    }
}

/// One `[[events]]` table, validated. Its files (secret, CA) are named, not read: that is
/// the `events` module's job, so a reload re-reads them.
#[derive(Debug, Clone)]
pub struct EventReceiver {
    /// `http://` or `https://`, without user info.
    pub url: http::Uri,
    pub secret: Option<EventSecret>,
    pub actions: Vec<EventAction>,
    /// Empty: every repository.
    pub repositories: Vec<RepositoryPattern>,
    pub timeout: Duration,
    /// A PEM bundle to trust instead of the system roots (https only).
    pub ca: Option<PathBuf>,
}

/// Where a receiver's HMAC key comes from.
#[derive(Clone)]
pub enum EventSecret {
    /// `secret`: in the configuration itself.
    Inline(String),
    /// `secret_file`: read on start and reload, so the key stays out of the config file.
    File(PathBuf),
}

impl std::fmt::Debug for EventSecret {
    // The key must never reach a log line or a panic message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventSecret::Inline(_) => f.write_str("Inline(<redacted>)"),
            EventSecret::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
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
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Vec<ConfigError>> {
        let shown = display_path(path);
        // The file alone first: its errors carry line numbers.
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            vec![ConfigError::Syntax {
                path: shown.clone(),
                message: e.to_string().trim_end().replace('\n', "\n    "),
            }]
        })?;
        let raw = env::overridden(text, vars)?.unwrap_or(raw);
        Config::from_raw(raw, path, base)
    }

    /// Validates every section, in the order their errors are listed. What one section needs
    /// from another is handed over here, in the open.
    fn from_raw(
        raw: RawConfig,
        path: Option<&Path>,
        base: &Path,
    ) -> Result<Config, Vec<ConfigError>> {
        let mut v = Validator::new(display_path(path));
        // [metrics] listen is checked among the [server] addresses, before the section's other
        // keys, so that errors keep the order they have always been reported in.
        let addresses = v.server_addresses(&raw.server);
        let metrics_listen = v.metrics(raw.metrics);
        let server = v.server(raw.server, addresses);
        let upstream = v.upstream(raw.upstream, base);
        // ACME's http-01 challenge can only be answered on [server] http_listen.
        let tls = v.tls(raw.tls, base, server.http_listen.is_some());
        let log = v.log(raw.log);
        let filter = v.filter(raw.filter);
        // The generated htpasswd file and token key live in [tls] dir.
        let auth = v.auth(raw.auth, base, &tls.dir);
        // What having no rules means, and the anonymous pull rule, depend on [auth].
        // Groups serve [[protect]] users too, so the rules are told whether any exist.
        let rules = v.rules(&raw.groups, raw.rules, &auth, !raw.protect.is_empty());
        let protect = v.protect(&raw.groups, raw.protect);
        let events = v.events(raw.events, base);
        let ui = v.ui(raw.ui);
        let cluster = raw.cluster.map(|c| v.cluster(c, base));
        v.finish()?;
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
            protect: Arc::new(protect),
            events,
            ui,
            cluster,
        })
    }
}

fn display_path(path: Option<&Path>) -> String {
    path.map(|p| p.display().to_string())
        .unwrap_or_else(|| "(built-in defaults)".into())
}

#[cfg(test)]
mod tests {
    /// An address no `from` list in these tests names.
    const ANYWHERE: std::net::IpAddr =
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));
    use super::*;

    /// Parses as if from `/etc/gate/proxy.toml`; the section tests in `validate` and `env`
    /// use it too.
    pub(super) fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        Config::parse(
            text,
            Some(Path::new("/etc/gate/proxy.toml")),
            Path::new("/etc/gate"),
        )
    }

    pub(super) fn messages(r: Result<Config, Vec<ConfigError>>) -> Vec<String> {
        match r {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
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
    fn the_example_oidc_issuer_is_valid_when_uncommented() {
        let text = include_str!("../../proxy.toml.example");
        let start = text.find("# [[auth.oidc]]").expect("oidc example");
        let uncommented: String = text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let with_users = format!("[auth]\nhtpasswd = [\"h\"]\n{uncommented}");
        let c = parse(&with_users).unwrap_or_else(|e| panic!("{with_users}\n{e:?}"));
        assert_eq!(c.auth.oidc.len(), 1, "{with_users}");
        let issuer = &c.auth.oidc[0];
        assert_eq!(issuer.issuer, "https://token.actions.githubusercontent.com");
        assert_eq!(issuer.claims.len(), 1);
        assert!(issuer.ca.is_some());
    }

    #[test]
    fn the_example_cluster_table_is_valid_when_uncommented() {
        let text = include_str!("../../proxy.toml.example");
        let start = text.find("# [cluster]").expect("cluster example");
        let uncommented: String = text[start..]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with("password_env") && !l.contains(": ca ="))
            .filter_map(|l| match l.split_once("Example: ") {
                Some((_, example)) if !example.starts_with("ca ") => Some(example),
                Some(_) => None,
                None => (l.starts_with('[') || l.contains(" = ")).then_some(l),
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&uncommented).unwrap_or_else(|e| panic!("{uncommented}\n{e:?}"));
        let cluster = c.cluster.expect("[cluster]");
        assert_eq!(
            cluster.url, "redis://redis.internal:6379/0",
            "{uncommented}"
        );
        assert!(matches!(cluster.password, Some(ClusterPassword::File(_))));
        assert_eq!(cluster.timeout, DEFAULT_CLUSTER_TIMEOUT);
        assert_eq!(cluster.lock_ttl, DEFAULT_CLUSTER_LOCK_TTL);
    }

    #[test]
    fn the_example_events_table_is_valid_when_uncommented() {
        let text = include_str!("../../proxy.toml.example");
        let start = text.find("# [[events]]").expect("events example");
        let end = text[start..].find("\n\n").map_or(text.len(), |e| start + e);
        let uncommented: String = text[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter_map(|l| match l.split_once("Example: ") {
                Some((_, example)) => Some(example),
                None => (l.starts_with('[') || l.contains(" = ")).then_some(l),
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&uncommented).unwrap_or_else(|e| panic!("{uncommented}\n{e:?}"));
        assert_eq!(c.events.len(), 1, "{uncommented}");
        let receiver = &c.events[0];
        assert_eq!(receiver.url.scheme_str(), Some("https"), "{uncommented}");
        assert!(matches!(receiver.secret, Some(EventSecret::File(_))));
        assert_eq!(
            receiver.actions,
            vec![EventAction::Push, EventAction::Delete]
        );
        assert_eq!(receiver.repositories.len(), 2);
        assert_eq!(receiver.timeout, DEFAULT_EVENT_TIMEOUT);
        assert!(receiver.ca.is_some());
    }

    #[test]
    fn the_example_rules_compile_when_uncommented() {
        let text = include_str!("../../proxy.toml.example");
        let start = text.find("# [groups]").expect("groups example");
        // The [[protect]] example that follows has keys of the same names.
        let end = text
            .find("# Protected tags")
            .expect("protect example after the rules");
        let uncommented: String = text[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| *l == "[groups]" || *l == "[[rules]]" || l.contains(" = ["))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&uncommented).unwrap_or_else(|e| panic!("{uncommented}\n{e:?}"));
        use crate::registry_path::Action;
        use crate::rules::Subject;
        let rules = &c.rules;
        let build_network: std::net::IpAddr = "10.20.3.4".parse().expect("address");
        assert!(rules
            .decide(
                &Subject::User("builder1"),
                build_network,
                "team/app",
                Action::Push
            )
            .is_allowed());
        // Elsewhere the `from` rule is skipped: the catch-all lets CI pull, not push.
        assert!(!rules
            .decide(
                &Subject::User("builder1"),
                ANYWHERE,
                "team/app",
                Action::Push
            )
            .is_allowed());
        assert!(rules
            .decide(
                &Subject::User("builder1"),
                ANYWHERE,
                "team/app",
                Action::Pull
            )
            .is_allowed());
        assert!(!rules
            .decide(
                &Subject::User("builder1"),
                ANYWHERE,
                "team/app",
                Action::Delete
            )
            .is_allowed());
        assert!(rules
            .decide(
                &Subject::User("alice"),
                ANYWHERE,
                "team/app",
                Action::Delete
            )
            .is_allowed());
        assert!(rules
            .decide(&Subject::User("bob"), ANYWHERE, "bob/tool", Action::Push)
            .is_allowed());
        assert!(!rules
            .decide(&Subject::User("bob"), ANYWHERE, "team/app", Action::Push)
            .is_allowed());
        assert!(rules
            .decide(&Subject::User("bob"), ANYWHERE, "team/app", Action::Pull)
            .is_allowed());
        assert!(!rules
            .decide(&Subject::Anonymous, ANYWHERE, "team/app", Action::Pull)
            .is_allowed());
    }

    #[test]
    fn the_example_protection_compiles_when_uncommented() {
        let text = include_str!("../../proxy.toml.example");
        let start = text.find("# [[protect]]").expect("protect example");
        // The [[events]] example that follows has keys of its own.
        let end = text[start..]
            .find("# Push and delete events")
            .map_or(text.len(), |e| start + e);
        let uncommented: String = text[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| *l == "[[protect]]" || l.contains(" = ["))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&format!("[groups]\nadmins = [\"alice\"]\n{uncommented}"))
            .unwrap_or_else(|e| panic!("{uncommented}\n{e:?}"));
        use crate::rules::Subject;
        let protect = &c.protect;
        assert_eq!(
            protect.guarding(&Subject::User("bob"), "team/app", "v1"),
            Some(0)
        );
        assert_eq!(
            protect.guarding(&Subject::User("release-bot"), "team/app", "v1"),
            None
        );
        assert_eq!(
            protect.guarding(&Subject::User("alice"), "a/b/c", "v2.0"),
            None
        );
        assert_eq!(
            protect.guarding(&Subject::User("bob"), "team/app", "latest"),
            None
        );
    }
}
