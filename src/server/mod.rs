//! Listening: the accept loop, the TLS handshake (bounded in time), HTTP/1.1 and HTTP/2
//! connections served by hyper, and the shutdown that lets transfers in flight finish.
//!
//! Signals: SIGTERM and SIGINT start a graceful shutdown; SIGHUP reloads configuration and
//! certificates. What happens to one request is `proxy`'s business, not this floor's.
//!
//! - `connection`: one TLS connection, PROXY header to close.
//! - `plain_http`: the port-80 listener (ACME http-01, 308 to https) and the metrics one.
//! - `proxy_protocol`: the PROXY protocol v1/v2 header a TCP balancer puts first.
//! - `read_ahead`: one large socket read under TLS instead of rustls's 4 KiB ones.
//! - `linger`: the lingering close that keeps a last answer from being lost to a reset.

mod connection;
pub mod linger;
pub mod plain_http;
pub mod proxy_protocol;
pub mod read_ahead;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::state::Shared;
use connection::serve_connection;
use plain_http::{metrics_answer, plain_http_answer, serve_plain};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{key}: cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// The configuration key that names the address, for the operator to change.
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
        hint: String,
    },
    #[error("cannot read the address of a bound socket: {0}")]
    LocalAddr(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Binds a listening socket, so that a port in use is reported before anything else runs.
/// `key` is the configuration key the address came from (`[server] listen`,
/// `[server] http_listen`, `[metrics] listen`): the message tells the operator which one to
/// change.
pub async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| {
        let hint = match source.kind() {
            std::io::ErrorKind::AddrInUse => {
                format!(" (another process is listening there; stop it or change {key})")
            }
            std::io::ErrorKind::PermissionDenied => {
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_string()
            }
            _ => String::new(),
        };
        ServerError::Bind {
            key,
            addr,
            source,
            hint,
        }
    })
}

/// Logs `listening listener=<name> addr=<ip:port>` with the address the socket really has:
/// with port 0 in the config, this line is the only place the chosen port is told.
fn announce(name: &'static str, listener: &TcpListener) -> Result<SocketAddr, ServerError> {
    let addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
    tracing::info!(listener = %name, addr = %addr, "listening");
    Ok(addr)
}

/// Raises the soft limit on open files to the hard limit, as nginx's `worker_rlimit_nofile`
/// does: every connection costs a descriptor (two while it is forwarded), and the common
/// default soft limit of 1024 would refuse clients long before `[server] max_connections`.
/// Returns the soft limit now in force; failure only costs headroom, so it is logged, not fatal.
pub fn raise_nofile_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            tracing::warn!(
                soft = limit.rlim_cur,
                hard = limit.rlim_max,
                error = %std::io::Error::last_os_error(),
                "cannot raise the open-file limit; connections past it will be refused"
            );
        }
    }
    Some(limit.rlim_cur)
}

/// The signal streams, installed before the socket is bound: once the port accepts
/// connections, a supervisor may already send SIGHUP or SIGTERM, and the default action of
/// either would kill the process.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub fn install() -> Result<Signals, ServerError> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(ServerError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(ServerError::Signals)?,
            hup: signal(SignalKind::hangup()).map_err(ServerError::Signals)?,
        })
    }
}

/// The bound sockets: the TLS listener and the optional plain-HTTP and metrics ones.
pub struct Listeners {
    pub tls: TcpListener,
    pub http: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

/// Serves until SIGTERM/SIGINT, then drains within `[server] shutdown_grace`.
pub async fn run(
    shared: Arc<Shared>,
    features: Arc<crate::front::Features>,
    listeners: Listeners,
    signals: Signals,
) -> Result<(), ServerError> {
    let Listeners {
        tls: listener,
        http: http_listener,
        metrics: metrics_listener,
    } = listeners;
    // The addresses the kernel gave, which differ from the configured ones for port 0: the
    // log is how a supervisor or a test learns where the gate listens.
    let https_addr = announce("https", &listener)?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    spawn_signal_handlers(shared.clone(), signals, stop_tx);
    tokio::spawn(crate::state::watch_files(shared.clone()));
    tokio::spawn(crate::state::token_upkeep(shared.clone()));
    tokio::spawn(crate::state::shared_token_sync(shared.clone()));
    shared.ensure_acme();
    if let Some(http) = http_listener {
        announce("http", &http)?;
        let https_port = https_addr.port();
        tokio::spawn(serve_plain(
            shared.clone(),
            http,
            stop_rx.clone(),
            "plain-HTTP (ACME http-01, redirects to https)",
            move |shared: &Shared, request: &hyper::Request<hyper::body::Incoming>| {
                plain_http_answer(shared, request, https_port)
            },
        ));
    }
    if let Some(metrics) = metrics_listener {
        announce("metrics", &metrics)?;
        tokio::spawn(serve_plain(
            shared.clone(),
            metrics,
            stop_rx.clone(),
            "metrics",
            metrics_answer,
        ));
    }

    // Every connection holds a receiver: `true` asks it to drain, and the last one dropped
    // tells the shutdown that all are closed. A connection ended early for cancelling too
    // much needs the same GOAWAY on its own, which hyper-util's watcher cannot give.
    let (drain_tx, drain_rx) = watch::channel(false);
    let slots = Arc::new(ConnectionSlots::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let limits = &shared.snapshot().config.server;
                    let slot = match slots.take(
                        crate::client_addr::canonical(peer.ip()),
                        limits.max_connections,
                        limits.max_connections_per_ip,
                    ) {
                        Ok(slot) => slot,
                        Err(limit) => {
                            // Closed at once: a refused connection must cost nothing more.
                            tracing::warn!(peer = %peer, limit, "connection refused: connection limit reached");
                            crate::metrics::get().connection_refused(limit);
                            drop(stream);
                            continue;
                        }
                    };
                    let (shared, features) = (shared.clone(), features.clone());
                    let drain = drain_rx.clone();
                    tokio::spawn(async move {
                        serve_connection(shared, features, stream, peer, drain).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            _ = stop_rx.changed() => break,
        }
    }
    drop(listener);
    drop(drain_rx);

    let grace = shared.snapshot().config.server.shutdown_grace;
    let began = tokio::time::Instant::now();
    tracing::info!(in_flight = drain_tx.receiver_count(), grace = ?grace, "shutting down: no new connections, draining");
    // Sending fails only when no connection is open, and then there is nothing to drain.
    let _ = drain_tx.send(true);
    tokio::select! {
        () = drain_tx.closed() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace expired; closing remaining connections"),
    }
    // The pushes that just finished queued their events last: they go out before the exit,
    // within the same grace.
    let undelivered = crate::events::settle(grace.saturating_sub(began.elapsed())).await;
    if undelivered > 0 {
        tracing::warn!(
            undelivered,
            "shutdown grace expired with events not yet delivered; they are lost"
        );
    }
    Ok(())
}

/// Open connections, in all and per client address, for `[server] max_connections` and
/// `max_connections_per_ip`.
#[derive(Debug, Default)]
struct ConnectionSlots {
    state: std::sync::Mutex<(usize, std::collections::HashMap<std::net::IpAddr, usize>)>,
}

/// One open connection's place; given back on drop.
struct Slot {
    slots: Arc<ConnectionSlots>,
    ip: std::net::IpAddr,
}

impl ConnectionSlots {
    /// A slot, or the name of the limit that is full.
    fn take(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
        total: usize,
        per_ip: usize,
    ) -> Result<Slot, &'static str> {
        let mut state = self.state.lock().map_err(|_| "max_connections")?;
        let (open, by_ip) = &mut *state;
        let mine = by_ip.get(&ip).copied().unwrap_or(0);
        if *open >= total {
            return Err("max_connections");
        }
        if mine >= per_ip {
            return Err("max_connections_per_ip");
        }
        *open += 1;
        by_ip.insert(ip, mine + 1);
        crate::metrics::get().connection_opened();
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::metrics::get().connection_closed();
        if let Ok(mut state) = self.slots.state.lock() {
            let (open, by_ip) = &mut *state;
            *open = open.saturating_sub(1);
            if let Some(n) = by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&self.ip);
                }
            }
        }
    }
}

/// Pause after a failed accept, so a persistent error does not burn a core.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

fn spawn_signal_handlers(shared: Arc<Shared>, signals: Signals, stop: watch::Sender<bool>) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => match shared.reload().await {
                    Ok(()) => tracing::info!("configuration and certificates reloaded"),
                    Err(errors) => {
                        for e in &errors {
                            tracing::error!(error = %e, "reload refused; the running configuration stays");
                        }
                    }
                },
            }
        }
        let _ = stop.send(true);
    });
}
