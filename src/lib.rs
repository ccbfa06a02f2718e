//! registry-gate: one binary in front of a private Docker registry that terminates TLS,
//! checks who is asking, and streams every request unbuffered to the registry.
//!
//! # Layout
//! The crate is built in floors; a module imports only from its own floor or the ones below
//! (`scripts/check-layers` keeps it so). `docs/architecture.md` walks a request through them.
//!
//! 1. The command line: `cli` (clap) and `cmd` (one file per subcommand, exit codes).
//! 2. `server`: listeners, accept loop, handshakes, PROXY protocol, lingering close, graceful
//!    shutdown, signals, the plain-HTTP and metrics listeners.
//! 3. `proxy`: the phases of one request in order (`proxy/mod.rs`), with its context, the
//!    caller's identity and decision, header rewriting, bodies, the upstream client, catalog
//!    filtering, the token endpoint, the registry browser (`proxy/ui/`), the access record,
//!    errors, and the reloadable snapshot.
//! 4. The policy and its inputs, each on its own: `config` (`proxy.toml` parsed and
//!    validated), `tls` (certificates, ACME, the rustls configuration), `auth` (htpasswd,
//!    client certificates, tokens, throttling), `rules` (who may do what, and the protected
//!    tags), `filter` (user agents and addresses), `registry_path` (method + path to endpoint,
//!    action, repository), `metrics` (Prometheus counters by label), `log` (the tracing
//!    subscriber), `events` (push and delete events: the bounded queues, signatures,
//!    delivery with retries to `[[events]]` receivers, off the request path).
//! 5. Shared by all: `client_addr` (the canonical client address and the real client behind
//!    trusted proxies), `atomic_file` (files written whole or not at all), `bounded_map` (the
//!    size-bounded map behind the caches) and `error_chain` (an error and its causes on one
//!    line).
//!
//! `fuzzing` holds the parser properties shared by `fuzz/` and the property tests.

pub mod cli;
pub mod cmd;

pub mod server;

pub mod proxy;

pub mod auth;
pub mod config;
pub mod events;
pub mod filter;
pub mod log;
pub mod metrics;
pub mod registry_path;
pub mod rules;
pub mod tls;

pub mod atomic_file;
pub mod bounded_map;
pub mod client_addr;
pub mod error_chain;

#[doc(hidden)]
pub mod fuzzing;
