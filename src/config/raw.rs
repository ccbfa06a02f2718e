//! The serde mirror of `proxy.toml`: field names, defaults-as-absent and nothing else.
//!
//! No logic lives here and nothing outside `config/` sees these types; `config::Config` is
//! the validated form. `deny_unknown_fields` everywhere, so a typo is an error, never a
//! silently ignored (and possibly access-widening) setting.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub filter: RawFilter,
    #[serde(default)]
    pub metrics: RawMetrics,
    pub auth: Option<RawAuth>,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    #[serde(default)]
    pub protect: Vec<RawProtect>,
    #[serde(default)]
    pub events: Vec<RawEvents>,
    #[serde(default)]
    pub ui: RawUi,
    pub cluster: Option<RawCluster>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub redis: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    pub ca: Option<String>,
    pub timeout: Option<String>,
    pub key_prefix: Option<String>,
    pub lock_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    pub url: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<String>,
    pub actions: Option<Vec<String>>,
    pub repositories: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUi {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub cors_origins: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    pub deny_user_agents: Option<Vec<String>>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub mode: Option<String>,
    pub htpasswd: Option<Vec<String>>,
    pub realm: Option<String>,
    pub allow_insecure_hashes: Option<bool>,
    pub cache_ttl: Option<String>,
    pub filter_catalog: Option<bool>,
    pub token_key: Option<String>,
    pub token_ttl: Option<String>,
    pub service: Option<String>,
    pub anonymous: Option<String>,
    pub access_tokens: Option<String>,
    pub oidc: Option<Vec<RawOidc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    pub issuer: String,
    pub audience: String,
    pub user: Option<String>,
    pub claims: Option<BTreeMap<String, toml::Value>>,
    pub ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub users: Vec<String>,
    pub repositories: Vec<String>,
    pub actions: Vec<String>,
    pub from: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProtect {
    pub repositories: Vec<String>,
    pub tags: Vec<String>,
    pub users: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub http_listen: Option<String>,
    pub proxy_protocol: Option<bool>,
    pub trusted_proxies: Option<Vec<String>>,
    pub shutdown_grace: Option<String>,
    pub handshake_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_header_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub read_only: Option<bool>,
    pub h2_stream_buffer: Option<String>,
    pub h2_connection_buffer: Option<String>,
    pub h2_buffer_budget: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Option<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub dir: Option<String>,
    pub client_ca: Option<String>,
    pub client_auth: Option<String>,
    pub client_identity: Option<String>,
    pub acme: Option<RawAcme>,
    pub certificates: Option<Vec<RawCertificate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub domains: Option<Vec<String>>,
    pub contact: Option<String>,
    pub directory: Option<String>,
    pub challenge: Option<String>,
    pub cache_dir: Option<String>,
    pub directory_ca: Option<String>,
    pub retry_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}
