//! The integration tests, one crate: cargo builds and links it once, and every suite shares
//! the one harness in `util`. Each suite starts the real things it needs (the gate binary,
//! `docker-registry`, skopeo, `dockerd`, pebble, nginx, network namespaces) and cleans up
//! what it started.
//!
//! One module per suite; `cargo test --test it SUITE::` runs one of them, e.g.
//! `cargo test --test it attacks::`.

mod util;

mod access;
mod acme;
mod attacks;
mod certificates;
mod cors;
mod deploy_kubernetes;
mod early_answers;
mod events;
mod faults;
mod filter;
mod fleet;
mod fleet_ops;
mod harness;
mod head;
mod identity;
mod lifecycle;
mod oci;
mod oidc;
mod operations;
mod promise;
mod properties;
mod protect;
mod quickstart;
mod referrers;
mod secure_docker;
mod tls_hardening;
mod tokens;
mod ui;
