//! registry-gate: one binary in front of a private Docker registry that terminates TLS,
//! checks who is asking, and streams every request unbuffered to the registry.
//!
//! # Layout
//! The crate is built in floors; a module imports only from its own floor or the ones below
//! (`scripts/check-layers` keeps it so). The module map is `docs/architecture.md`.

pub mod cli;
pub mod cmd;

pub mod server;

pub mod front;

pub mod proxy;
pub mod ui;

pub mod state;
pub mod upstream;

pub mod auth;
pub mod cluster;
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
pub mod conn;
pub mod error_chain;

#[doc(hidden)]
pub mod fuzzing;
