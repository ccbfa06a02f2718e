//! Validation: each raw section of `proxy.toml` turned into its validated section, and the
//! parsers for the values they share (durations, addresses, upstream URLs).
//!
//! The `Validator` never stops at the first problem: a bad value is recorded with its key and
//! replaced by the default, so one `check` run lists everything. It owns no order of its own;
//! `Config::from_raw` calls the sections in turn and passes what one needs from another.
//! Files named here are not read (that is `tls` and `auth`), only placed against the config
//! file's directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::rules::{ProtectSpec, Protections, RepositoryPattern, RuleSpec, Rules};

use super::raw::{
    RawAcme, RawAuth, RawCluster, RawEvents, RawFilter, RawLog, RawMetrics, RawOidc, RawProtect,
    RawRule, RawServer, RawTls, RawUi, RawUpstream,
};
use super::{
    AcmeChallenge, AcmeConfig, AuthConfig, AuthMode, CertIdentity, ClientCertConfig, ClusterConfig,
    ClusterPassword, ConfigError, EventAction, EventReceiver, EventSecret, LogConfig, LogFormat,
    OidcConfig, ServerConfig, TlsConfig, TlsSource, UiConfig, UpstreamConfig, UpstreamTarget,
    UserTemplate, DEFAULT_ACME_RETRY, DEFAULT_CLUSTER_LOCK_TTL, DEFAULT_CLUSTER_PREFIX,
    DEFAULT_CLUSTER_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_EVENT_TIMEOUT,
    DEFAULT_H2_BUFFER_BUDGET, DEFAULT_H2_CONNECTION_BUFFER, DEFAULT_H2_STREAM_BUFFER,
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_READ_TIMEOUT, DEFAULT_REALM, DEFAULT_SHUTDOWN_GRACE, DEFAULT_TOKEN_TTL,
    DEFAULT_UPSTREAM, GENERATED_HTPASSWD, GENERATED_TOKEN_KEY, LETSENCRYPT_PRODUCTION,
    LETSENCRYPT_STAGING, MAX_H2_STREAM_BUFFER, MIN_H2_STREAM_BUFFER,
};

/// Collects errors while letting validation go on with a placeholder value.
pub(super) struct Validator {
    path: String,
    errors: Vec<ConfigError>,
}

/// The addresses of `[server]`, checked before the rest of the section (see
/// `Config::from_raw` for why).
pub(super) struct ServerAddresses {
    listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    trusted_proxies: Vec<IpNet>,
}

impl Validator {
    /// `path` is how the file is named in every message.
    pub(super) fn new(path: String) -> Validator {
        Validator {
            path,
            errors: Vec::new(),
        }
    }

    /// Every problem found, or none.
    pub(super) fn finish(self) -> Result<(), Vec<ConfigError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }

    pub(super) fn server_addresses(&mut self, raw: &RawServer) -> ServerAddresses {
        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = self.check("server.listen", listen_text.parse::<SocketAddr>().map_err(|_| {
            format!("{listen_text:?} is not an address:port such as \"0.0.0.0:443\" or \"[::]:443\"")
        }));
        let trusted_proxies: Vec<IpNet> = raw
            .trusted_proxies
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|s| self.check("server.trusted_proxies", parse_cidr(s)))
            .collect();
        let http_listen = raw.http_listen.as_deref().and_then(|text| {
            self.check(
                "server.http_listen",
                text.parse::<SocketAddr>()
                    .map_err(|_| format!("{text:?} is not an address:port such as \"0.0.0.0:80\"")),
            )
        });
        ServerAddresses {
            listen,
            http_listen,
            trusted_proxies,
        }
    }

    /// The rest of `[server]`, given its addresses from `server_addresses`.
    pub(super) fn server(&mut self, raw: RawServer, addresses: ServerAddresses) -> ServerConfig {
        let ServerAddresses {
            listen,
            http_listen,
            trusted_proxies,
        } = addresses;
        let proxy_protocol = raw.proxy_protocol.unwrap_or(false);
        if proxy_protocol && trusted_proxies.is_empty() {
            self.fail(
                "server.proxy_protocol",
                "the header is only believed from [server] trusted_proxies, which is empty: list the balancer's addresses".into(),
            );
        }
        let (h2_stream_buffer, h2_connection_buffer, h2_buffer_budget) = self.h2_buffers(&raw);
        ServerConfig {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 443))),
            http_listen,
            proxy_protocol,
            trusted_proxies,
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                &raw.shutdown_grace,
                DEFAULT_SHUTDOWN_GRACE,
            ),
            handshake_timeout: self.duration(
                "server.handshake_timeout",
                &raw.handshake_timeout,
                DEFAULT_HANDSHAKE_TIMEOUT,
            ),
            header_timeout: self.duration(
                "server.header_timeout",
                &raw.header_timeout,
                DEFAULT_HEADER_TIMEOUT,
            ),
            idle_timeout: self.duration(
                "server.idle_timeout",
                &raw.idle_timeout,
                DEFAULT_IDLE_TIMEOUT,
            ),
            max_header_bytes: match raw.max_header_bytes {
                Some(n) if n < 8192 => {
                    self.fail(
                        "server.max_header_bytes",
                        format!("{n} is too small to hold a request head; use at least 8192"),
                    );
                    DEFAULT_MAX_HEADER_BYTES
                }
                Some(n) => n,
                None => DEFAULT_MAX_HEADER_BYTES,
            },
            read_only: raw.read_only.unwrap_or(false),
            max_connections: raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            max_connections_per_ip: self.at_least_one(
                "server.max_connections_per_ip",
                raw.max_connections_per_ip,
                DEFAULT_MAX_CONNECTIONS_PER_IP,
            ),
            h2_stream_buffer,
            h2_connection_buffer,
            h2_buffer_budget,
        }
    }

    /// `h2_stream_buffer`, `h2_connection_buffer` and `h2_buffer_budget`, each at least as
    /// large as the one before it: a connection must hold one stream, the budget one
    /// connection.
    fn h2_buffers(&mut self, raw: &RawServer) -> (usize, u64, u64) {
        let stream = self.size(
            "server.h2_stream_buffer",
            &raw.h2_stream_buffer,
            DEFAULT_H2_STREAM_BUFFER as u64,
        );
        let stream = if stream < MIN_H2_STREAM_BUFFER as u64 {
            self.fail(
                "server.h2_stream_buffer",
                format!("{stream} bytes is less than one HTTP/2 frame; use at least \"16KiB\""),
            );
            DEFAULT_H2_STREAM_BUFFER
        } else if stream > MAX_H2_STREAM_BUFFER as u64 {
            self.fail(
                "server.h2_stream_buffer",
                format!("{stream} bytes is more than one stream can use; use at most \"64MiB\""),
            );
            DEFAULT_H2_STREAM_BUFFER
        } else {
            stream as usize
        };
        let connection = self.size(
            "server.h2_connection_buffer",
            &raw.h2_connection_buffer,
            DEFAULT_H2_CONNECTION_BUFFER.max(stream as u64),
        );
        if connection < stream as u64 {
            self.fail(
                "server.h2_connection_buffer",
                format!("{connection} bytes cannot hold one stream's h2_stream_buffer ({stream} bytes); raise it or lower h2_stream_buffer"),
            );
        }
        let budget = self.size(
            "server.h2_buffer_budget",
            &raw.h2_buffer_budget,
            DEFAULT_H2_BUFFER_BUDGET.max(connection),
        );
        if budget < connection {
            self.fail(
                "server.h2_buffer_budget",
                format!("{budget} bytes cannot hold one connection's h2_connection_buffer ({connection} bytes); raise it or lower h2_connection_buffer"),
            );
        }
        (stream, connection, budget)
    }

    /// `[metrics] listen`: `None` when there is to be no metrics listener.
    pub(super) fn metrics(&mut self, raw: RawMetrics) -> Option<SocketAddr> {
        raw.listen.as_deref().and_then(|text| {
            self.check(
                "metrics.listen",
                text.parse::<SocketAddr>().map_err(|_| {
                    format!("{text:?} is not an address:port such as \"127.0.0.1:9090\"")
                }),
            )
        })
    }

    pub(super) fn upstream(&mut self, raw: RawUpstream, base: &Path) -> UpstreamConfig {
        let url = raw.url.as_deref().unwrap_or(DEFAULT_UPSTREAM);
        let parsed = self.check("upstream.url", parse_upstream(url, base));
        let (target, origin) = parsed.unwrap_or((
            UpstreamTarget::Tcp {
                host: "127.0.0.1".into(),
                port: 5000,
            },
            DEFAULT_UPSTREAM.into(),
        ));
        UpstreamConfig {
            target,
            origin,
            connect_timeout: self.duration(
                "upstream.connect_timeout",
                &raw.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            ),
            read_timeout: self.duration(
                "upstream.read_timeout",
                &raw.read_timeout,
                DEFAULT_READ_TIMEOUT,
            ),
        }
    }

    /// `[tls]`: where the certificate comes from (files, generated, ACME), the extra
    /// certificates and client certificates. `has_http_listener` is `[server] http_listen`
    /// being set, which ACME's http-01 challenge needs.
    pub(super) fn tls(&mut self, raw: RawTls, base: &Path, has_http_listener: bool) -> TlsConfig {
        let dir = base.join(raw.dir.as_deref().unwrap_or("certs"));
        let acme = raw
            .acme
            .map(|acme| self.acme_config(acme, base, &dir, has_http_listener));
        let source = match (raw.cert, raw.key) {
            (Some(_), _) | (_, Some(_)) if acme.is_some() => {
                self.fail("tls.acme", "[tls.acme] and tls.cert/tls.key are both set: the certificate comes from one place; remove one".into());
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
                self.fail("tls.key", "tls.cert is set but tls.key is not: set both, or neither to use a generated certificate".into());
                TlsSource::Generated
            }
            (None, Some(_)) => {
                self.fail("tls.cert", "tls.key is set but tls.cert is not: set both, or neither to use a generated certificate".into());
                TlsSource::Generated
            }
        };
        let client = self.client_cert(raw.client_ca, raw.client_auth, raw.client_identity, base);
        let extra = raw
            .certificates
            .unwrap_or_default()
            .into_iter()
            .map(|c| (base.join(c.cert), base.join(c.key)))
            .collect();
        TlsConfig {
            source,
            extra,
            dir,
            client,
        }
    }

    /// `[tls] client_ca`, `client_auth` and `client_identity`: client certificates, or `None`
    /// when no CA is named.
    fn client_cert(
        &mut self,
        ca: Option<String>,
        client_auth: Option<String>,
        client_identity: Option<String>,
        base: &Path,
    ) -> Option<ClientCertConfig> {
        match ca {
            None => {
                if client_auth.is_some() || client_identity.is_some() {
                    self.fail("tls.client_ca", "tls.client_auth or tls.client_identity is set but tls.client_ca is not: name the CA bundle that signs client certificates".into());
                }
                None
            }
            Some(ca) => {
                let required = match client_auth.as_deref() {
                    None | Some("optional") => false,
                    Some("required") => true,
                    Some(other) => {
                        self.fail("tls.client_auth", format!("{other:?} is not a client_auth mode; use \"optional\" or \"required\""));
                        false
                    }
                };
                let identity = match client_identity.as_deref() {
                    None | Some("cn") => CertIdentity::CommonName,
                    Some("san-dns") => CertIdentity::SanDns,
                    Some("san-email") => CertIdentity::SanEmail,
                    Some(other) => {
                        self.fail("tls.client_identity", format!("{other:?} is not a certificate name; use \"cn\", \"san-dns\" or \"san-email\""));
                        CertIdentity::CommonName
                    }
                };
                Some(ClientCertConfig {
                    ca: base.join(ca),
                    required,
                    identity,
                })
            }
        }
    }

    /// `[tls.acme]`, validated: names an ACME CA will accept, a directory URL, a challenge the
    /// listeners can answer.
    fn acme_config(
        &mut self,
        raw: RawAcme,
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
            self.fail(
                "tls.acme.domains",
                "no names given: list the host names clients use, e.g. domains = [\"registry.example.com\"]".into(),
            );
        }
        for d in &domains {
            if let Err(why) = check_acme_domain(d) {
                self.fail("tls.acme.domains", format!("{d:?}: {why}"));
            }
        }
        let contact = raw.contact.and_then(|c| {
            let uri = if c.contains(':') {
                c
            } else {
                format!("mailto:{c}")
            };
            match uri.strip_prefix("mailto:") {
                Some(address)
                    if address.contains('@') && !address.contains(char::is_whitespace) =>
                {
                    Some(uri)
                }
                _ => {
                    self.fail(
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
                self.fail(
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
                    self.fail(
                        "tls.acme.challenge",
                        "http-01 is answered on the plain-HTTP listener: set [server] http_listen = \"0.0.0.0:80\", or use challenge = \"tls-alpn-01\"".into(),
                    );
                }
                AcmeChallenge::Http01
            }
            Some(other) => {
                self.fail(
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
            retry_interval: self.duration(
                "tls.acme.retry_interval",
                &raw.retry_interval,
                DEFAULT_ACME_RETRY,
            ),
        }
    }

    pub(super) fn log(&mut self, raw: RawLog) -> LogConfig {
        let level = raw.level.unwrap_or_else(|| "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            self.fail(
                "log.level",
                format!(
                    "{level:?} is not a log filter ({e}); use error, warn, info, debug or trace"
                ),
            );
        }
        let format = match raw.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.fail(
                    "log.format",
                    format!("{other:?} is not a log format; use \"text\" or \"json\""),
                );
                LogFormat::Text
            }
        };
        LogConfig { level, format }
    }

    pub(super) fn filter(&mut self, raw: RawFilter) -> crate::filter::Filter {
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

    /// `[auth]`; `tls_dir` is `[tls] dir`, where the generated htpasswd file and token key
    /// live when none is named.
    pub(super) fn auth(&mut self, raw: Option<RawAuth>, base: &Path, tls_dir: &Path) -> AuthConfig {
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
        // Next to the users, where an operator looks for credentials.
        let access_tokens = match (&raw.access_tokens, htpasswd.first()) {
            _ if mode == AuthMode::None => {
                if raw.access_tokens.is_some() {
                    self.fail("auth.access_tokens", "access tokens are set but mode is \"none\", so nobody would be asked for one; use mode = \"basic\" or \"token\"".into());
                }
                None
            }
            (Some(path), _) => Some(base.join(path)),
            (None, Some(first)) => Some(
                first
                    .parent()
                    .unwrap_or(base)
                    .join(super::DEFAULT_ACCESS_TOKENS),
            ),
            (None, None) => None,
        };
        let oidc = self.oidc(raw.oidc.unwrap_or_default(), mode, base);
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
            cache_ttl: self.duration("auth.cache_ttl", &raw.cache_ttl, super::DEFAULT_CACHE_TTL),
            filter_catalog: raw.filter_catalog.unwrap_or(true),
            token_key: raw
                .token_key
                .map(|p| base.join(p))
                .unwrap_or_else(|| tls_dir.join(GENERATED_TOKEN_KEY)),
            token_ttl: self.duration("auth.token_ttl", &raw.token_ttl, DEFAULT_TOKEN_TTL),
            service: raw.service.unwrap_or_else(|| DEFAULT_REALM.into()),
            anonymous_pull,
            access_tokens,
            oidc,
        }
    }

    /// `[[protect]]` compiled; its `users` may name `[groups]`. Errors are reported after
    /// those of the rules, whose checks of the groups come first.
    pub(super) fn protect(
        &mut self,
        groups: &BTreeMap<String, Vec<String>>,
        raw: Vec<RawProtect>,
    ) -> Protections {
        let specs: Vec<ProtectSpec> = raw
            .into_iter()
            .map(|p| ProtectSpec {
                repositories: p.repositories,
                tags: p.tags,
                users: p.users.unwrap_or_default(),
            })
            .collect();
        match Protections::compile(groups, &specs) {
            Ok(protections) => protections,
            Err(errors) => {
                self.rule_errors(errors);
                // Never a silently open gate: the config is refused as a whole.
                Protections::default()
            }
        }
    }

    /// `[[auth.oidc]]`: issuers of CI ID tokens. An issuer like GitHub Actions signs tokens
    /// for every repository it hosts, with any audience the job asks for, so an issuer
    /// without `claims` saying whose tokens count would let the whole world in.
    fn oidc(&mut self, raw: Vec<RawOidc>, mode: AuthMode, base: &Path) -> Vec<OidcConfig> {
        if !raw.is_empty() && mode == AuthMode::None {
            self.fail(
                "auth.oidc",
                "OIDC issuers are set but mode is \"none\", so nobody logs in; use mode = \"basic\" or \"token\"".into(),
            );
        }
        let mut out = Vec::new();
        for (i, issuer) in raw.into_iter().enumerate() {
            let url = issuer.issuer.trim_end_matches('/').to_string();
            if out.iter().any(|o: &OidcConfig| o.issuer == url) {
                self.fail_at(
                    format!("auth.oidc[{i}].issuer"),
                    format!("{url:?} is configured twice; only one table per issuer can apply, so merge them"),
                );
            }
            if !url.starts_with("https://") || url.len() <= "https://".len() {
                self.fail_at(
                    format!("auth.oidc[{i}].issuer"),
                    format!("{:?} is not an https:// URL; write the issuer exactly as its tokens' \"iss\" claim says, e.g. \"https://token.actions.githubusercontent.com\"", issuer.issuer),
                );
            }
            if issuer.audience.is_empty() {
                self.fail_at(
                    format!("auth.oidc[{i}].audience"),
                    "the audience is empty; use the name CI jobs request tokens for, e.g. this registry's host name".into(),
                );
            }
            let user = match UserTemplate::parse(issuer.user.as_deref().unwrap_or("oidc:${sub}")) {
                Ok(t) => t,
                Err(message) => {
                    self.fail_at(format!("auth.oidc[{i}].user"), message);
                    continue;
                }
            };
            let mut claims = Vec::new();
            for (name, value) in issuer.claims.unwrap_or_default() {
                let values = match value {
                    toml::Value::String(s) => vec![s],
                    toml::Value::Array(list) => list
                        .into_iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                    _ => Vec::new(),
                };
                if values.is_empty() {
                    self.fail_at(
                        format!("auth.oidc[{i}].claims"),
                        format!("{name}: give a string or a list of strings the claim must equal"),
                    );
                }
                claims.push((name, values));
            }
            if claims.is_empty() {
                self.fail_at(
                    format!("auth.oidc[{i}].claims"),
                    "say whose tokens are accepted, e.g. claims = { repository_owner = \"my-org\" }: an issuer such as GitHub Actions signs tokens for every repository it hosts, with any audience a job asks for".into(),
                );
            }
            out.push(OidcConfig {
                issuer: url,
                audience: issuer.audience,
                user,
                claims,
                ca: issuer.ca.map(|p| base.join(p)),
            });
        }
        out
    }

    /// `[groups]` and `[[rules]]` compiled. `auth` decides what no rules mean (everyone, or
    /// every authenticated user) and whether the anonymous pull rule is appended;
    /// `protections` says whether `[[protect]]` tables exist, which may use the groups too.
    pub(super) fn rules(
        &mut self,
        groups: &BTreeMap<String, Vec<String>>,
        rules: Vec<RawRule>,
        auth: &AuthConfig,
        protections: bool,
    ) -> Rules {
        let mut specs: Vec<RuleSpec> = rules
            .into_iter()
            .map(|r| RuleSpec {
                users: r.users,
                repositories: r.repositories,
                actions: r.actions,
                from: r.from.unwrap_or_default(),
            })
            .collect();
        if specs.is_empty() && !groups.is_empty() {
            if protections {
                // Rules::compile checks the members otherwise.
                let errors = crate::rules::check_groups(groups);
                self.rule_errors(errors);
            } else {
                self.fail(
                    "groups",
                    "groups are defined but there are no [[rules]] or [[protect]] using them"
                        .into(),
                );
            }
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
        if specs.is_empty() {
            match auth.mode {
                // The recipes without auth_basic: everyone may do everything.
                AuthMode::None => Rules::allow_everyone(),
                AuthMode::Basic | AuthMode::Token => Rules::allow_all_authenticated(),
            }
        } else {
            match Rules::compile(groups, &specs) {
                Ok(rules) => rules,
                Err(errors) => {
                    self.rule_errors(errors);
                    Rules::allow_all_authenticated()
                }
            }
        }
    }

    fn rule_errors(&mut self, errors: Vec<crate::rules::RulesError>) {
        for e in errors {
            self.errors.push(ConfigError::Rules {
                path: self.path.clone(),
                message: e.to_string(),
            });
        }
    }

    /// `[[events]]`: the receivers of push and delete events. Their secret and CA files are
    /// placed against the config file's directory, not read.
    pub(super) fn events(&mut self, raw: Vec<RawEvents>, base: &Path) -> Vec<EventReceiver> {
        raw.into_iter()
            .enumerate()
            .filter_map(|(i, r)| self.event_receiver(i, r, base))
            .collect()
    }

    fn event_receiver(&mut self, i: usize, raw: RawEvents, base: &Path) -> Option<EventReceiver> {
        let key = |name: &str| format!("events[{i}].{name}");
        let errors_before = self.errors.len();
        let url = match raw.url.as_deref() {
            None => {
                self.fail_at(key("url"), "missing: name the receiver, e.g. url = \"https://ci.example.com/hooks/registry\"".into());
                None
            }
            Some(text) => match parse_event_url(text) {
                Ok(url) => Some(url),
                Err(message) => {
                    self.fail_at(key("url"), message);
                    None
                }
            },
        };
        let secret = match (raw.secret, raw.secret_file) {
            (Some(_), Some(_)) => {
                self.fail_at(key("secret"), "secret and secret_file are both set: the key comes from one place; keep secret_file".into());
                None
            }
            (Some(secret), None) if secret.is_empty() => {
                self.fail_at(
                    key("secret"),
                    "empty: an empty key signs nothing; set a long random string or remove the key"
                        .into(),
                );
                None
            }
            (Some(secret), None) => Some(EventSecret::Inline(secret)),
            (None, Some(file)) => Some(EventSecret::File(base.join(file))),
            (None, None) => None,
        };
        let mut actions = Vec::new();
        let raw_actions = raw
            .actions
            .unwrap_or_else(|| vec!["push".into(), "delete".into()]);
        if raw_actions.is_empty() {
            self.fail_at(key("actions"), "the list is empty, so nothing would be sent; list \"push\" and/or \"delete\", or remove the table".into());
        }
        for action in raw_actions {
            let wanted: &[EventAction] = match action.as_str() {
                "push" => &[EventAction::Push],
                "delete" => &[EventAction::Delete],
                "*" => &[EventAction::Push, EventAction::Delete],
                other => {
                    self.fail_at(
                        key("actions"),
                        format!("unknown action {other:?}; use \"push\", \"delete\" or \"*\" (pulls are not events)"),
                    );
                    &[]
                }
            };
            for a in wanted {
                if !actions.contains(a) {
                    actions.push(*a);
                }
            }
        }
        let mut repositories = Vec::new();
        if raw.repositories.as_ref().is_some_and(Vec::is_empty) {
            self.fail_at(key("repositories"), "the list is empty, so nothing would be sent; remove the key to send events for every repository".into());
        }
        for pattern in raw.repositories.unwrap_or_default() {
            match RepositoryPattern::parse(&pattern) {
                Ok(p) => repositories.push(p),
                Err(fix) => self.fail_at(
                    key("repositories"),
                    format!("bad repository pattern {pattern:?}: {fix}"),
                ),
            }
        }
        let timeout = match raw.timeout.as_deref().map(parse_duration) {
            None => DEFAULT_EVENT_TIMEOUT,
            Some(Ok(t)) if t.is_zero() => {
                self.fail_at(
                    key("timeout"),
                    "0 would fail every delivery; use e.g. \"10s\"".into(),
                );
                DEFAULT_EVENT_TIMEOUT
            }
            Some(Ok(t)) => t,
            Some(Err(message)) => {
                self.fail_at(key("timeout"), message);
                DEFAULT_EVENT_TIMEOUT
            }
        };
        let ca = raw.ca.map(|p| base.join(p));
        if ca.is_some()
            && url
                .as_ref()
                .is_some_and(|u| u.scheme_str() != Some("https"))
        {
            self.fail_at(
                key("ca"),
                "a CA only applies to an https:// receiver; remove it or use https".into(),
            );
        }
        if self.errors.len() != errors_before {
            return None;
        }
        Some(EventReceiver {
            url: url?,
            secret,
            actions,
            repositories,
            timeout,
            ca,
        })
    }

    /// `[ui]`: the browser's path must be the gate's own. Under `/v2/` it would shadow the
    /// registry API; `/` would take every path, `/v2/` included.
    /// `[cluster]`: the Redis URL (its password kept out of it), where the password comes
    /// from, the CA for `rediss://`, the timeouts and the key prefix.
    pub(super) fn cluster(&mut self, raw: RawCluster, base: &Path) -> ClusterConfig {
        let url = match raw.redis.as_deref() {
            None => {
                self.fail("cluster.redis", "missing: name the shared Redis or Valkey, e.g. redis = \"redis://redis.internal:6379/0\", or remove [cluster] to run one gate on its own".into());
                String::new()
            }
            Some(text) => self
                .check("cluster.redis", check_redis_url(text))
                .unwrap_or_default(),
        };
        let password = match (raw.password_file, raw.password_env) {
            (Some(_), Some(_)) => {
                self.fail("cluster.password_file", "password_file and password_env are both set: the password comes from one place; keep one".into());
                None
            }
            (Some(file), None) => Some(ClusterPassword::File(base.join(file))),
            (None, Some(name)) if name.is_empty() || name.contains('=') => {
                self.fail("cluster.password_env", format!("{name:?} is not the name of an environment variable, e.g. \"REDIS_PASSWORD\""));
                None
            }
            (None, Some(name)) => Some(ClusterPassword::Env(name)),
            (None, None) => None,
        };
        if raw.ca.is_some() && !url.starts_with("rediss://") {
            self.fail(
                "cluster.ca",
                "a CA is only used with TLS: write the URL as rediss://…, or remove ca".into(),
            );
        }
        let timeout = self.duration("cluster.timeout", &raw.timeout, DEFAULT_CLUSTER_TIMEOUT);
        if timeout.is_zero() {
            self.fail(
                "cluster.timeout",
                "0 would give Redis no time at all; use e.g. \"500ms\"".into(),
            );
        }
        let lock_ttl = self.duration("cluster.lock_ttl", &raw.lock_ttl, DEFAULT_CLUSTER_LOCK_TTL);
        if lock_ttl < Duration::from_secs(2) {
            self.fail(
                "cluster.lock_ttl",
                "under 2s a lock could expire while its holder renews it; use e.g. \"30s\"".into(),
            );
        }
        let key_prefix = raw
            .key_prefix
            .unwrap_or_else(|| DEFAULT_CLUSTER_PREFIX.into());
        if key_prefix.is_empty()
            || !key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.fail(
                "cluster.key_prefix",
                format!(
                    "{key_prefix:?}: use letters, digits, '-', '_' or '.', e.g. \"registry-gate\""
                ),
            );
        }
        ClusterConfig {
            url,
            password,
            ca: raw.ca.map(|ca| base.join(ca)),
            timeout,
            key_prefix,
            lock_ttl,
        }
    }

    pub(super) fn ui(&mut self, raw: RawUi) -> UiConfig {
        let path = raw
            .path
            .unwrap_or_else(|| super::DEFAULT_UI_PATH.to_string());
        let path = match check_ui_path(&path) {
            Ok(()) => path,
            Err(why) => {
                self.fail("ui.path", format!("{path:?}: {why}"));
                super::DEFAULT_UI_PATH.to_string()
            }
        };
        let mut cors_origins = Vec::new();
        for origin in raw.cors_origins.unwrap_or_default() {
            match check_origin(&origin) {
                Ok(normal) => cors_origins.push(normal),
                Err(why) => self.fail("ui.cors_origins", format!("{origin:?}: {why}")),
            }
        }
        UiConfig {
            enabled: raw.enabled.unwrap_or(true),
            path,
            cors_origins,
        }
    }

    fn fail(&mut self, key: &'static str, message: String) {
        self.errors.push(ConfigError::Invalid {
            path: self.path.clone(),
            key: key.into(),
            message,
        });
    }

    /// `fail` for a key of a repeated table, such as `events[2].url`.
    fn fail_at(&mut self, key: String, message: String) {
        self.errors.push(ConfigError::Invalid {
            path: self.path.clone(),
            key: key.into(),
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

    fn size(&mut self, key: &'static str, value: &Option<String>, default: u64) -> u64 {
        match value {
            None => default,
            Some(text) => self.check(key, parse_size(text)).unwrap_or(default),
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

/// A Redis URL the `redis` crate can open, with no password in it: a password in the
/// configuration would be shown by `check` and in logs.
fn check_redis_url(text: &str) -> Result<String, String> {
    let Some(rest) = text
        .strip_prefix("redis://")
        .or_else(|| text.strip_prefix("rediss://"))
    else {
        return Err(format!(
            "{text:?} is not a Redis URL; write redis://host:6379/0, or rediss://… for TLS"
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            return Err("the URL holds a password; take it out and set password_file (or password_env) instead, so it is never shown or logged".into());
        }
    }
    if authority.is_empty() || authority.ends_with('@') {
        return Err(format!(
            "{text:?} names no host; write e.g. redis://redis.internal:6379/0"
        ));
    }
    redis::IntoConnectionInfo::into_connection_info(text).map_err(|e| format!("{text:?}: {e}"))?;
    Ok(text.to_string())
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

/// The paths the gate answers itself or forwards; a UI path equal to one or above one would
/// take its requests.
const RESERVED_PATHS: &[&str] = &["/v2", "/token", "/healthz", "/readyz"];

/// A path the browser can live under: `/name/` or `/a/b/`, URL-safe characters only, outside
/// the registry API and the gate's own endpoints.
fn check_ui_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || !path.ends_with('/') || path.len() < 3 {
        return Err(
            "the path must start and end with \"/\" and name a directory, e.g. \"/ui/\"".into(),
        );
    }
    let segments: Vec<&str> = path[1..path.len() - 1].split('/').collect();
    let safe = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
    };
    if !segments.iter().all(|s| safe(s)) {
        return Err(
            "use letters, digits, '-', '_', '.' and '~' between single slashes, e.g. \"/ui/\""
                .into(),
        );
    }
    let trimmed = &path[..path.len() - 1];
    for reserved in RESERVED_PATHS {
        if trimmed == *reserved || path.starts_with(&format!("{reserved}/")) {
            return Err(format!(
                "{reserved} belongs to the registry API or the gate's own endpoints; choose another path, e.g. \"/ui/\""
            ));
        }
    }
    Ok(())
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

/// Durations are written as in the recipes' spirit: `"900s"`, `"15m"`, `"1h 30m"`, `"500ms"`.
/// An origin as browsers send it: `scheme://host[:port]`, nothing more. Returned lowercase.
fn check_origin(text: &str) -> Result<String, &'static str> {
    if text == "*" || text.contains('*') {
        return Err("a wildcard would share answers that carry credentials with every site; list each UI's origin, e.g. \"https://registry-ui.example.com\"");
    }
    let (scheme, rest) = text.split_once("://").ok_or(
        "not an origin; write it as a browser sends it, e.g. \"https://registry-ui.example.com\"",
    )?;
    if scheme != "https" && scheme != "http" {
        return Err("only http:// and https:// origins exist for pages");
    }
    let host_ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !host_ok {
        return Err("an origin is scheme, host and port only: no path, not even a trailing \"/\"");
    }
    Ok(text.to_ascii_lowercase())
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{text:?} is not a duration ({e}); write it like \"900s\", \"15m\" or \"500ms\"")
    })
}

/// A size in bytes: a number with an optional unit, `B`, `KiB`, `MiB` or `GiB` (powers of
/// 1024, as the memory a process uses is counted).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?} is not a size; write it like \"256KiB\", \"4MiB\" or \"1GiB\""
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| {
            format!("{text:?} is not a size; write it like \"256KiB\", \"4MiB\" or \"1GiB\"")
        })
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("{text:?} is not an address or CIDR such as \"10.0.0.0/8\" or \"192.0.2.7\"")
        })
}

/// A receiver's URL: http or https, a host, no user info (credentials in a URL end up in
/// logs and proxies; the signature is what authenticates the gate).
fn parse_event_url(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text.parse().map_err(|e| {
        format!("{text:?} is not a URL ({e}); write \"https://ci.example.com/hooks/registry\"")
    })?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "{text:?}: only http:// and https:// receivers are supported"
            ))
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{text:?} has no host"))?;
    if authority.as_str().contains('@') {
        // Not echoed: the message would put the password in the log.
        return Err(
            "the URL carries credentials (user:password@); remove them and set secret_file: receivers check the signature header".into(),
        );
    }
    if authority.host().is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    Ok(uri)
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
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::tests::{messages, parse};
    use super::*;

    #[test]
    fn proxy_protocol_needs_a_trusted_balancer() {
        let m = messages(parse("[server]\nproxy_protocol = true\n")).join("\n");
        assert!(m.contains("[server.proxy_protocol]: the header is only believed from [server] trusted_proxies"), "{m}");
        let c = parse("[server]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.5\"]\n")
            .expect("valid");
        assert!(c.server.proxy_protocol);
    }

    #[test]
    fn h2_buffers_default_nest_and_name_the_key_that_does_not() {
        let c = parse("").expect("valid");
        assert_eq!(c.server.h2_stream_buffer, DEFAULT_H2_STREAM_BUFFER);
        assert_eq!(c.server.h2_connection_buffer, DEFAULT_H2_CONNECTION_BUFFER);
        assert_eq!(c.server.h2_buffer_budget, DEFAULT_H2_BUFFER_BUDGET);
        let c = parse("[server]\nh2_stream_buffer = \"1MiB\"\nh2_connection_buffer = \"8MiB\"\nh2_buffer_budget = \"1GiB\"\n").expect("valid");
        assert_eq!(
            (
                c.server.h2_stream_buffer,
                c.server.h2_connection_buffer,
                c.server.h2_buffer_budget
            ),
            (1 << 20, 8 << 20, 1 << 30)
        );
        // A larger stream buffer alone raises the defaults above it instead of failing.
        let c = parse("[server]\nh2_stream_buffer = \"8MiB\"\n").expect("valid");
        assert_eq!(c.server.h2_connection_buffer, 8 << 20);
        for (toml, needle) in [
            ("h2_stream_buffer = \"1KiB\"", "[server.h2_stream_buffer]: 1024 bytes is less than one HTTP/2 frame"),
            ("h2_stream_buffer = \"1GiB\"", "[server.h2_stream_buffer]: 1073741824 bytes is more than one stream can use"),
            ("h2_stream_buffer = \"4MB\"", "[server.h2_stream_buffer]: \"4MB\" is not a size"),
            ("h2_connection_buffer = \"64KiB\"", "[server.h2_connection_buffer]: 65536 bytes cannot hold one stream's h2_stream_buffer"),
            ("h2_buffer_budget = \"1MiB\"", "[server.h2_buffer_budget]: 1048576 bytes cannot hold one connection's h2_connection_buffer"),
        ] {
            let m = messages(parse(&format!("[server]\n{toml}\n"))).join("\n");
            assert!(m.contains(needle), "{toml}: {m}");
        }
    }

    #[test]
    fn trusted_proxies_accept_plain_addresses() {
        let c =
            parse("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\"]").expect("valid");
        assert_eq!(c.server.trusted_proxies.len(), 2);
        assert!(c.server.trusted_proxies[1]
            .contains(&"192.0.2.7".parse::<std::net::IpAddr>().expect("ip")));
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
    fn protections_are_validated_with_their_keys() {
        let m = messages(parse(
            "[groups]\nadmins = [\"alice\"]\n\
             [[protect]]\nrepositories = [\"*\"]\ntags = [\"v?\"]\nusers = [\"@ops\"]\n",
        ))
        .join("\n");
        for needle in [
            "/etc/gate/proxy.toml: protect[0].tags: bad tag pattern \"v?\"",
            "/etc/gate/proxy.toml: protect[0].users: unknown group \"@ops\"; define it under [groups] (defined: @admins)",
        ] {
            assert!(m.contains(needle), "missing {needle:?} in:\n{m}");
        }
        // No "groups are defined but unused": [[protect]] uses them.
        assert!(!m.contains("no [[rules]]"), "{m}");
    }

    #[test]
    fn an_unknown_protect_key_is_an_error_with_its_line() {
        let m = messages(parse(
            "[[protect]]\nrepositories = [\"*\"]\ntags = [\"v*\"]\nuser = [\"bot\"]\n",
        ));
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].contains("line 4"), "{}", m[0]);
        assert!(m[0].contains("unknown field `user`"), "{}", m[0]);
    }

    #[test]
    fn groups_used_only_by_protections_are_valid_and_checked() {
        let c = parse(
            "[groups]\nadmins = [\"alice\"]\n\
             [[protect]]\nrepositories = [\"team/*\"]\ntags = [\"v*\"]\nusers = [\"@admins\"]\n",
        )
        .expect("valid");
        use crate::rules::Subject;
        assert_eq!(
            c.protect
                .guarding(&Subject::User("alice"), "team/app", "v1"),
            None
        );
        assert_eq!(
            c.protect.guarding(&Subject::User("bob"), "team/app", "v1"),
            Some(0)
        );
        // With [auth] and no [[rules]], the default stays: every user may do everything.
        assert!(c
            .rules
            .decide(
                &Subject::User("bob"),
                std::net::IpAddr::from([192, 0, 2, 1]),
                "team/app",
                crate::registry_path::Action::Delete
            )
            .is_allowed());
        let m = messages(parse(
            "[groups]\nadmins = [\"@root\"]\n\
             [[protect]]\nrepositories = [\"*\"]\ntags = [\"v*\"]\n",
        ))
        .join("\n");
        assert!(m.contains("groups.admins: bad user \"@root\""), "{m}");
        assert!(
            parse("[[protect]]\nrepositories = [\"*\"]\ntags = [\"v*\"]\n")
                .expect("users are optional")
                .protect
                .guarding(&Subject::User("anyone"), "a", "v1")
                .is_some()
        );
    }

    #[test]
    fn events_defaults_and_files() {
        let c = parse(
            "[[events]]\nurl = \"https://ci.example.com/hooks/registry?x=1\"\nsecret_file = \"hook.secret\"\n\n[[events]]\nurl = \"http://127.0.0.1:9000/\"\nactions = [\"delete\"]\nrepositories = [\"team/*\"]\ntimeout = \"3s\"\n",
        )
        .expect("valid");
        assert_eq!(c.events.len(), 2);
        let first = &c.events[0];
        assert_eq!(first.actions, vec![EventAction::Push, EventAction::Delete]);
        assert!(first.repositories.is_empty());
        assert_eq!(first.timeout, DEFAULT_EVENT_TIMEOUT);
        assert!(
            matches!(&first.secret, Some(EventSecret::File(p)) if p == &PathBuf::from("/etc/gate/hook.secret"))
        );
        let second = &c.events[1];
        assert_eq!(second.actions, vec![EventAction::Delete]);
        assert!(second.repositories[0].matches("team/app", None));
        assert!(!second.repositories[0].matches("other/app", None));
        assert_eq!(second.timeout, Duration::from_secs(3));
        assert!(second.secret.is_none());
    }

    #[test]
    fn cluster_defaults_and_password_sources() {
        let c = parse("[cluster]\nredis = \"redis://redis.internal:6379/0\"\npassword_file = \"redis.pass\"\n")
            .expect("valid");
        let cluster = c.cluster.expect("[cluster]");
        assert_eq!(cluster.url, "redis://redis.internal:6379/0");
        assert_eq!(
            cluster.password,
            Some(ClusterPassword::File(PathBuf::from("/etc/gate/redis.pass")))
        );
        assert_eq!(cluster.timeout, DEFAULT_CLUSTER_TIMEOUT);
        assert_eq!(cluster.lock_ttl, DEFAULT_CLUSTER_LOCK_TTL);
        assert_eq!(cluster.key_prefix, DEFAULT_CLUSTER_PREFIX);
        assert!(parse("").expect("valid").cluster.is_none());
        let tls = parse("[cluster]\nredis = \"rediss://r:6380\"\nca = \"ca.pem\"\npassword_env = \"REDIS_PASSWORD\"\n")
            .expect("valid")
            .cluster
            .expect("[cluster]");
        assert_eq!(tls.ca, Some(PathBuf::from("/etc/gate/ca.pem")));
        assert_eq!(
            tls.password,
            Some(ClusterPassword::Env("REDIS_PASSWORD".into()))
        );
    }

    #[test]
    fn cluster_mistakes_name_the_key_and_never_show_a_password() {
        let all = messages(parse(
            "[cluster]\nredis = \"redis://gate:hunter2@redis:6379\"\npassword_file = \"a\"\npassword_env = \"B\"\nca = \"ca.pem\"\ntimeout = \"0s\"\nlock_ttl = \"1s\"\nkey_prefix = \"a b\"\n",
        ))
        .join("\n");
        for needle in [
            "[cluster.redis]: the URL holds a password",
            "[cluster.password_file]: password_file and password_env are both set",
            "[cluster.ca]: a CA is only used with TLS",
            "[cluster.timeout]: 0 would give Redis no time",
            "[cluster.lock_ttl]: under 2s",
            "[cluster.key_prefix]: \"a b\"",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(!all.contains("hunter2"), "a password in a message: {all}");
        let all = messages(parse("[cluster]\n")).join("\n");
        assert!(all.contains("[cluster.redis]: missing"), "{all}");
        let all = messages(parse("[cluster]\nredis = \"http://redis:6379\"\n")).join("\n");
        assert!(all.contains("is not a Redis URL"), "{all}");
    }

    #[test]
    fn events_mistakes_name_the_table_and_key() {
        let m = messages(parse(
            "[[events]]\nurl = \"ftp://hooks.example.com/x\"\n\n[[events]]\nurl = \"https://user:pw@hooks.example.com/\"\nactions = [\"push\", \"pull\"]\nsecret = \"a\"\nsecret_file = \"b\"\n\n[[events]]\nurl = \"http://hooks.example.com/\"\nrepositories = [\"Team/*\"]\ntimeout = \"soon\"\nca = \"ca.pem\"\n\n[[events]]\nactions = []\n",
        ));
        let all = m.join("\n");
        for needle in [
            "[events[0].url]: \"ftp://hooks.example.com/x\": only http:// and https://",
            "[events[1].url]: the URL carries credentials",
            "[events[1].actions]: unknown action \"pull\"",
            "[events[1].secret]: secret and secret_file are both set",
            "[events[2].repositories]: bad repository pattern \"Team/*\"",
            "[events[2].timeout]: \"soon\" is not a duration",
            "[events[2].ca]: a CA only applies to an https:// receiver",
            "[events[3].url]: missing",
            "[events[3].actions]: the list is empty",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(!all.contains("pw@"), "a password in a message: {all}");
    }

    #[test]
    fn oidc_issuers_must_say_whose_tokens_count() {
        let m = messages(parse(
            "[auth]\nhtpasswd = [\"h\"]\n[[auth.oidc]]\nissuer = \"http://issuer.example\"\naudience = \"\"\nuser = \"ci:${repo sitory}\"\n[[auth.oidc]]\nissuer = \"https://token.actions.githubusercontent.com\"\naudience = \"registry\"\n[[auth.oidc]]\nissuer = \"https://gitlab.example\"\naudience = \"r\"\nuser = \"fixed\"\nclaims = { project_path = [] }\n[[auth.oidc]]\nissuer = \"https://a.example\"\naudience = \"r\"\nuser = \"${actor}\"\nclaims = { x = \"y\" }\n[[auth.oidc]]\nissuer = \"https://b.example\"\naudience = \"r\"\nuser = \"token:${actor}\"\nclaims = { x = \"y\" }\n",
        ));
        let all = m.join("\n");
        for needle in [
            "[auth.oidc[0].issuer]: \"http://issuer.example\" is not an https:// URL",
            "[auth.oidc[0].audience]: the audience is empty",
            "[auth.oidc[0].user]: \"ci:${repo sitory}\": \"repo sitory\" is not a claim name",
            "[auth.oidc[1].claims]: say whose tokens are accepted",
            "[auth.oidc[2].user]: \"fixed\" names no claim",
            "[auth.oidc[3].user]: \"${actor}\" must start with a prefix of your own",
            "[auth.oidc[4].user]: \"token:${actor}\" must start with a prefix of your own",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let ok = parse(
            "[auth]\nhtpasswd = [\"h\"]\n[[auth.oidc]]\nissuer = \"https://token.actions.githubusercontent.com/\"\naudience = \"registry\"\nuser = \"ci:${repository}\"\nclaims = { repository_owner = \"org\", ref = [\"refs/heads/main\", \"refs/heads/release\"] }\n",
        )
        .expect("valid");
        let oidc = &ok.auth.oidc[0];
        assert_eq!(oidc.issuer, "https://token.actions.githubusercontent.com");
        assert_eq!(oidc.claims.len(), 2);
        assert_eq!(
            oidc.user
                .render(|c| (c == "repository").then(|| "org/app".to_string())),
            Ok("ci:org/app".to_string())
        );
    }

    #[test]
    fn events_unknown_key_is_an_error_with_its_line() {
        let m = messages(parse(
            "[[events]]\nurl = \"http://127.0.0.1:9000/\"\nsecret_fiel = \"s\"\n",
        ));
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].contains("secret_fiel"), "{}", m[0]);
        assert!(m[0].contains("line 3"), "{}", m[0]);
    }

    #[test]
    fn the_ui_is_on_by_default_at_ui() {
        let c = parse("").expect("defaults");
        assert!(c.ui.enabled);
        assert_eq!(c.ui.path, "/ui/");
        let c = parse("[ui]\nenabled = false\npath = \"/browse/registry/\"\n").expect("valid");
        assert!(!c.ui.enabled);
        assert_eq!(c.ui.path, "/browse/registry/");
    }

    #[test]
    fn ui_paths_outside_the_gate_s_own_are_refused() {
        for bad in [
            "ui",
            "/ui",
            "ui/",
            "/",
            "//",
            "/v2/",
            "/v2/ui/",
            "/token/",
            "/healthz/",
            "/readyz/x/",
            "/a//b/",
            "/a/../",
            "/./",
            "/ui?x/",
            "/ui\"/",
            "/<ui>/",
            "/ui /",
        ] {
            let text = format!("[ui]\npath = {bad:?}\n");
            let m = messages(parse(&text)).join("\n");
            assert!(m.contains("[ui.path]"), "{bad:?} accepted:\n{m}");
        }
        for good in [
            "/ui/",
            "/v2ui/",
            "/tokens/",
            "/registry/browse/",
            "/a.b~c_d-e/",
        ] {
            let text = format!("[ui]\npath = {good:?}\n");
            assert_eq!(parse(&text).expect(good).ui.path, good);
        }
    }

    #[test]
    fn cors_origins_are_exact_origins_never_wildcards() {
        let c =
            parse("[ui]\ncors_origins = [\"https://UI.example.com\", \"http://127.0.0.1:8080\"]\n")
                .expect("valid");
        assert_eq!(
            c.ui.cors_origins,
            ["https://ui.example.com", "http://127.0.0.1:8080"]
        );
        for bad in [
            "*",
            "https://*.example.com",
            "https://ui.example.com/",
            "https://ui.example.com/app",
            "ui.example.com",
            "ftp://ui.example.com",
        ] {
            let m = messages(parse(&format!("[ui]\ncors_origins = [{bad:?}]\n"))).join("\n");
            assert!(m.contains("[ui.cors_origins]"), "{bad:?} accepted:\n{m}");
        }
    }

    #[test]
    fn unknown_ui_keys_are_errors() {
        let m = messages(parse("[ui]\nenable = true\n")).join("\n");
        assert!(m.contains("enable"), "{m}");
    }

    #[test]
    fn sizes_accept_binary_units() {
        assert_eq!(parse_size("256KiB"), Ok(256 * 1024));
        assert_eq!(parse_size("4 MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("65536"), Ok(65536));
        for bad in ["", "4MB", "MiB", "-1KiB", "4.5MiB", "99999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration("900s"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("900").is_err());
    }
}
