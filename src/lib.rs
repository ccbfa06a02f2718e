//! registry-gate: one binary in front of a private Docker registry that terminates TLS,
//! checks who is asking, and streams every request unbuffered to the registry.
//!
//! # Layout
//! - `cli`: the command line.
//! - `doctor`: `registry-gate doctor`, end-to-end checks of a running setup.
//! - `config`: `proxy.toml` parsed (`config::raw`) and validated (`config::Config`).
//! - `tls`: certificates (files or generated), the rustls server configuration, hot swap.
//! - `server`: listener, accept loop, handshakes, graceful shutdown, signals.
//! - `read_ahead`: one large socket read under TLS instead of rustls's 4 KiB ones.
//! - `linger`: the lingering close that keeps a last answer from being lost to a reset.
//! - `pipeline`: the path of one request, top to bottom.
//! - `plain_http`: the port-80 listener: ACME http-01 answers, 308 to https.
//! - `proxy_protocol`: the PROXY protocol v1/v2 header a TCP balancer puts first.
//! - `filter`: user agents and client addresses turned away before any other work.
//! - `registry_path`: method + path -> endpoint, action, repository (or a rejection).
//! - `auth`: Basic credentials against htpasswd files, verified-credential cache, throttling.
//! - `rules`: (identity, repository, action) -> allow or deny, and which rule said so.
//! - `token_service`: the `/token` endpoint of token mode.
//! - `catalog`: per-caller rewrites of the catalog listing and of cross-repository mounts.
//! - `fuzzing`: parser properties shared by `fuzz/` and `tests/properties.rs`.
//! - `client_addr`: the canonical client address and the real client behind trusted proxies.
//! - `forward`: the pooled upstream client and the header rewriting.
//! - `body`: streaming body wrappers (byte counts, idle timeout, access log on completion).
//! - `error`: gate errors and the registry JSON error envelope.
//! - `log`: tracing setup and the access log record.
//! - `metrics`: Prometheus counters and the `[metrics] listen` endpoint.
//! - `state`: the reloadable snapshot shared by all connections.

pub mod atomic_file;
pub mod auth;
pub mod body;
pub mod catalog;
pub mod cli;
pub mod client_addr;
pub mod cmd;
pub mod config;
pub mod error;
pub mod filter;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod linger;
pub mod log;
pub mod metrics;
pub mod pipeline;
pub mod plain_http;
pub mod proxy_protocol;
pub mod read_ahead;
pub mod registry_path;
pub mod rules;
pub mod server;
pub mod state;
pub mod tls;
pub mod token_service;
