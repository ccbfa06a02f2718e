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

pub mod auth;
pub mod body;
pub mod catalog;
pub mod cli;
pub mod client_addr;
pub mod config;
pub mod doctor;
pub mod error;
pub mod filter;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod healthcheck;
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

use std::sync::Arc;

use cli::{Cli, Command};
use config::{Config, TlsSource};

/// Exit codes, documented in the README.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_BAD_CONFIG: i32 = 2;

/// Runs the parsed command line and returns the process exit code.
pub fn run_cli(cli: Cli) -> i32 {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config.as_deref()),
        Command::Check => check(cli.config.as_deref()),
        Command::Doctor => doctor::run(cli.config.as_deref()),
        Command::Healthcheck { ready } => healthcheck(cli.config.as_deref(), ready),
        Command::Gencert {
            dir,
            dns,
            ip,
            days,
            rsa,
            force,
            kind,
        } => {
            let options = tls::selfsigned::ServerOptions {
                dns,
                ips: ip,
                days,
                rsa,
            };
            match gencert(&dir, options, force, kind) {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    eprintln!("registry-gate: {e}");
                    EXIT_FAILURE
                }
            }
        }
        Command::Htpasswd { file, action } => match auth::manage::run(&file, action) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("registry-gate: {e}");
                EXIT_FAILURE
            }
        },
    }
}

fn run(config_path: Option<&std::path::Path>) -> i32 {
    let provider = tls::provider();
    let prepared = match state::prepare(config_path, &provider) {
        Ok(p) => p,
        Err(errors) => {
            for e in errors {
                eprintln!("registry-gate: {e}");
            }
            return EXIT_BAD_CONFIG;
        }
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

    let open_files = server::raise_nofile_limit();
    let max_connections = prepared.config.server.max_connections;
    if let Some(limit) = open_files {
        // Each forwarded connection holds two descriptors: the client's and the registry's.
        if (limit as usize) < max_connections.saturating_mul(2) {
            tracing::warn!(
                open_files = limit,
                max_connections,
                "the open-file limit is below 2 x [server] max_connections; raise it (LimitNOFILE=, ulimit -n)"
            );
        }
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("registry-gate: cannot start the async runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    runtime.block_on(async move {
        let signals = match server::Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("registry-gate: {e}");
                return EXIT_FAILURE;
            }
        };
        let listener = match server::bind(prepared.config.server.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("registry-gate: {e}");
                return EXIT_BAD_CONFIG;
            }
        };
        let http_listener = match prepared.config.server.http_listen {
            Some(addr) => match server::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("registry-gate: [server] http_listen: {e}");
                    return EXIT_BAD_CONFIG;
                }
            },
            None => None,
        };
        let metrics_listener = match prepared.config.metrics_listen {
            Some(addr) => match server::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("registry-gate: [metrics] listen: {e}");
                    return EXIT_BAD_CONFIG;
                }
            },
            None => None,
        };
        let shared = match state::Shared::new(&prepared, provider) {
            Ok(s) => Arc::new(s),
            Err(errors) => {
                for e in errors {
                    eprintln!("registry-gate: {e}");
                }
                return EXIT_BAD_CONFIG;
            }
        };
        let listeners = server::Listeners {
            tls: listener,
            http: http_listener,
            metrics: metrics_listener,
        };
        match server::run(shared, listeners, signals).await {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("registry-gate: {e}");
                EXIT_FAILURE
            }
        }
    })
}

/// Prints each problem on its own line; the exit code for a bad configuration.
fn report<E: std::fmt::Display>(errors: Vec<E>) -> i32 {
    for e in errors {
        eprintln!("registry-gate: {e}");
    }
    EXIT_BAD_CONFIG
}

fn healthcheck(config_path: Option<&std::path::Path>, ready: bool) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(errors) => return report(errors),
    };
    let path = if ready {
        pipeline::READYZ
    } else {
        pipeline::HEALTHZ
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("registry-gate: {e}");
            return EXIT_FAILURE;
        }
    };
    match runtime.block_on(healthcheck::probe(config.server.listen, path)) {
        Ok(200) => EXIT_OK,
        Ok(status) => {
            eprintln!("registry-gate: {path} answered {status}");
            EXIT_FAILURE
        }
        Err(e) => {
            eprintln!("registry-gate: {e}");
            EXIT_FAILURE
        }
    }
}

/// `registry-gate gencert`: writes the files and says how to trust them.
fn gencert(
    dir: &std::path::Path,
    options: tls::selfsigned::ServerOptions,
    force: bool,
    kind: Option<cli::GencertKind>,
) -> Result<(), tls::TlsError> {
    use tls::selfsigned;
    let ca = dir.join("ca.pem");
    match kind {
        Some(cli::GencertKind::Client { name }) => {
            let files = selfsigned::generate_client(dir, &name, options.days, options.rsa, force)?;
            println!(
                "client certificate for {name:?}: {} and {}",
                files.cert.display(),
                files.key.display()
            );
            println!(
                "signed by {}; give the gate that CA as [tls] client_ca",
                ca.display()
            );
            println!("docker looks for them in /etc/docker/certs.d/<host:port>/ (client.cert, client.key, and the server's ca.crt)");
            println!("skopeo and podman: put both files in the --cert-dir directory");
        }
        None => {
            let generated = selfsigned::generate_server(dir, &options, force)?;
            println!(
                "CA: {} (key {})",
                ca.display(),
                dir.join("ca-key.pem").display()
            );
            println!(
                "server certificate: {} and key {}",
                generated.cert.display(),
                generated.key.display()
            );
            println!("trust the CA on each client (port 443 shown; write host:port for others):");
            let mut names = options.dns.clone();
            names.extend(options.ips.iter().map(|ip| match ip {
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            }));
            if names.is_empty() {
                names.push("<host>".into());
            }
            for name in &names {
                println!("  docker: sudo mkdir -p /etc/docker/certs.d/{name} && sudo cp {} /etc/docker/certs.d/{name}/ca.crt", ca.display());
                println!("  podman: sudo mkdir -p /etc/containers/certs.d/{name} && sudo cp {} /etc/containers/certs.d/{name}/ca.crt", ca.display());
            }
            println!("  skopeo: mkdir -p DIR && cp {} DIR/ca.crt, then --cert-dir DIR (or --src-cert-dir/--dest-cert-dir)", ca.display());
            println!("  system: sudo cp {} /usr/local/share/ca-certificates/registry-gate.crt && sudo update-ca-certificates", ca.display());
        }
    }
    Ok(())
}

/// Like `nginx -t`: everything `run` would load, loaded, without listening or writing.
fn check(config_path: Option<&std::path::Path>) -> i32 {
    let provider = tls::provider();
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(errors) => return report(errors),
    };
    let certificate = match &config.tls.source {
        TlsSource::Files { cert, key } => match tls::load(&config.tls, &[], &provider) {
            Ok(_) => format!("certificate {} with key {}", cert.display(), key.display()),
            Err(e) => {
                eprintln!("registry-gate: {e}");
                return EXIT_BAD_CONFIG;
            }
        },
        TlsSource::Generated => format!("generated certificate in {}", config.tls.dir.display()),
        TlsSource::Acme(acme) => {
            let cached = match tls::acme::cached(acme, &provider) {
                Ok(Some(_)) => "cached".to_string(),
                Ok(None) => "none cached yet".to_string(),
                // Not fatal for `run` either: it orders a new one.
                Err(e) => format!("cache unusable: {e}"),
            };
            format!(
                "ACME certificate for {} from {} ({cached})",
                acme.domains.join(", "),
                acme.directory
            )
        }
    };
    let users = match state::load_users(&config, Arc::new(tokio::sync::Semaphore::new(1))) {
        Ok(Some(auth)) => format!(", {} users", auth.user_count()),
        Ok(None) => ", no authentication".into(),
        Err(errors) => {
            let generated_missing = config.auth.generated_user
                && errors.iter().all(|e| {
                    matches!(
                        e,
                        state::PrepareError::Htpasswd(auth::htpasswd::HtpasswdError::Io { .. })
                    )
                });
            if !generated_missing {
                for e in errors {
                    eprintln!("registry-gate: {e}");
                }
                return EXIT_BAD_CONFIG;
            }
            ", a generated user on first start".into()
        }
    };
    let source = config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    println!(
        "registry-gate: {source}: configuration OK: listen {}, upstream {}, {certificate}{users}",
        config.server.listen,
        match &config.upstream.target {
            config::UpstreamTarget::Tcp { .. } => config.upstream.origin.clone(),
            config::UpstreamTarget::Unix(p) => format!("unix://{}", p.display()),
        }
    );
    EXIT_OK
}
