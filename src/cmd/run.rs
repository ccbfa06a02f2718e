//! `registry-gate run` (the default): load and validate everything, bind every listener, then
//! hand over to the server floor until a signal ends it. A port in use or a bad file is
//! reported before anything listens, with exit code 2.

use std::path::Path;
use std::sync::Arc;

use super::{report, EXIT_BAD_CONFIG, EXIT_FAILURE, EXIT_OK};
use crate::state;
use crate::{log, server, tls};

pub(super) fn run(config_path: Option<&Path>) -> i32 {
    let provider = tls::provider();
    let prepared = match state::prepare(config_path, &provider) {
        Ok(p) => p,
        Err(errors) => return report(EXIT_BAD_CONFIG, errors),
    };
    log::init(&prepared.config.log);
    if let Some((user, password)) = &prepared.generated_user {
        // Shown once, on the terminal only (never through the log pipeline), like the
        // all-in-one images print their generated password.
        eprintln!(
            "registry-gate: created user {user:?} with password {password:?} in {}; \
             log in with: docker login -u {user} <host:port>",
            prepared.config.auth.htpasswd[0].display()
        );
    }
    if let Some(generated) = &prepared.tls.generated {
        tracing::info!(
            ca = %generated.ca_cert.display(),
            cert = %generated.cert.display(),
            created = generated.created,
            "serving a certificate from the gate's own CA; clients must trust the CA file"
        );
    }
    warn_about_open_files(prepared.config.server.max_connections);

    let runtime = match super::runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let signals = match server::Signals::install() {
            Ok(s) => s,
            Err(e) => return report(EXIT_FAILURE, [e]),
        };
        let listeners = match bind_all(&prepared.config).await {
            Ok(l) => l,
            Err(message) => return report(EXIT_BAD_CONFIG, [message]),
        };
        let shared = match state::Shared::new(&prepared, provider) {
            Ok(s) => Arc::new(s),
            Err(errors) => return report(EXIT_BAD_CONFIG, errors),
        };
        let features = match crate::front::Features::new(shared.cluster().cloned()) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                return report(
                    EXIT_FAILURE,
                    [format!("cannot generate the browser session key: {e}")],
                )
            }
        };
        match server::run(shared, features, listeners, signals).await {
            Ok(()) => EXIT_OK,
            Err(e) => report(EXIT_FAILURE, [e]),
        }
    })
}

/// Each forwarded connection holds two descriptors, the client's and the registry's: a limit
/// below twice `max_connections` fails under load with EMFILE, so say so at start.
fn warn_about_open_files(max_connections: usize) {
    if let Some(limit) = server::raise_nofile_limit() {
        if (limit as usize) < max_connections.saturating_mul(2) {
            tracing::warn!(
                open_files = limit,
                max_connections,
                "the open-file limit is below 2 x [server] max_connections; raise it (LimitNOFILE=, ulimit -n)"
            );
        }
    }
}

/// Binds the TLS listener and the optional plain-HTTP and metrics ones; the message names the
/// config key of the one that failed.
async fn bind_all(config: &crate::config::Config) -> Result<server::Listeners, String> {
    let bind = |addr, key| async move { server::bind(addr, key).await.map_err(|e| e.to_string()) };
    let tls = bind(config.server.listen, "[server] listen").await?;
    let http = match config.server.http_listen {
        Some(addr) => Some(bind(addr, "[server] http_listen").await?),
        None => None,
    };
    let metrics = match config.metrics_listen {
        Some(addr) => Some(bind(addr, "[metrics] listen").await?),
        None => None,
    };
    Ok(server::Listeners { tls, http, metrics })
}
