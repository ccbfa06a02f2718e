//! Listening: the accept loop, the TLS handshake (bounded in time), HTTP/1.1 and HTTP/2
//! connections served by hyper, and the shutdown that lets transfers in flight finish.
//!
//! Signals: SIGTERM and SIGINT start a graceful shutdown; SIGHUP reloads configuration and
//! certificates. What happens to one request is `pipeline`'s business, not this module's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::linger::Linger;
use crate::pipeline::{self, ConnInfo};
use crate::state::Shared;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Binds the listening socket, so that a port in use is reported before anything else runs.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| {
        let hint = match source.kind() {
            std::io::ErrorKind::AddrInUse => {
                " (another process is listening there; stop it or change [server] listen)"
            }
            std::io::ErrorKind::PermissionDenied => {
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            }
            _ => "",
        };
        ServerError::Bind { addr, source, hint }
    })
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

/// Serves until SIGTERM/SIGINT, then drains within `[server] shutdown_grace`.
/// The bound sockets: the TLS listener and the optional plain-HTTP and metrics ones.
pub struct Listeners {
    pub tls: TcpListener,
    pub http: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

pub async fn run(
    shared: Arc<Shared>,
    listeners: Listeners,
    signals: Signals,
) -> Result<(), ServerError> {
    let Listeners {
        tls: listener,
        http: http_listener,
        metrics: metrics_listener,
    } = listeners;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    spawn_signal_handlers(shared.clone(), signals, stop_tx);
    tokio::spawn(crate::state::watch_files(shared.clone()));
    shared.ensure_acme();
    if let Some(http) = http_listener {
        tokio::spawn(serve_plain(
            shared.clone(),
            http,
            stop_rx.clone(),
            "plain-HTTP (ACME http-01, redirects to https)",
            plain_http_answer,
        ));
    }
    if let Some(metrics) = metrics_listener {
        tokio::spawn(serve_plain(
            shared.clone(),
            metrics,
            stop_rx.clone(),
            "metrics",
            metrics_answer,
        ));
    }

    let graceful = GracefulShutdown::new();
    let local = listener.local_addr().ok();
    let slots = Arc::new(ConnectionSlots::default());
    tracing::info!(listen = ?local, "registry-gate listening");
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
                    let shared = shared.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        serve_connection(shared, stream, peer, watcher).await;
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

    let grace = shared.snapshot().config.server.shutdown_grace;
    tracing::info!(in_flight = graceful.count(), grace = ?grace, "shutting down: no new connections, draining");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace expired; closing remaining connections"),
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

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let snapshot = shared.snapshot();
    let server = snapshot.config.server.clone();
    let tls = TlsAcceptor::from(shared.tls());
    let mut stream = stream;
    let peer = if server.proxy_protocol {
        match proxied_peer(&mut stream, peer, &server).await {
            Some(client) => client,
            None => return,
        }
    } else {
        peer
    };

    let tls_stream = match tokio::time::timeout(
        server.handshake_timeout,
        tls.accept(crate::read_ahead::ReadAhead::new(Linger::new(stream))),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %peer, "TLS handshake timed out");
            return;
        }
    };

    if tls_stream.get_ref().1.alpn_protocol() == Some(crate::tls::acme::ACME_TLS_ALPN) {
        // A tls-alpn-01 validation: the handshake was the whole answer (RFC 8737).
        tracing::debug!(peer = %peer, "answered an ACME tls-alpn-01 validation");
        let mut tls_stream = tls_stream;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls_stream).await;
        return;
    }

    // A certificate is only present if rustls verified it against [tls] client_ca.
    let cert_user = match (
        &snapshot.config.tls.client,
        tls_stream.get_ref().1.peer_certificates(),
    ) {
        (Some(client), Some([leaf, ..])) => {
            crate::auth::client_cert::identity(leaf.as_ref(), client.identity).map(Arc::<str>::from)
        }
        _ => None,
    };
    drop(snapshot);
    let activity = ConnActivity::new();
    let conn = ConnInfo {
        peer,
        local,
        cert_user,
        activity: activity.clone(),
    };
    let service =
        service_fn(move |request| pipeline::handle(shared.clone(), conn.clone(), request));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_timeout)
        .max_buf_size(server.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(server.max_header_bytes as u32)
        // Large windows let one stream move layers at full speed instead of waiting on
        // WINDOW_UPDATE round trips.
        .adaptive_window(true)
        // A peer that stops answering pings is gone; its streams are released.
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let io = TokioIo::new(tls_stream);
    let connection = builder.serve_connection(io, service);
    tokio::select! {
        result = watcher.watch(connection.into_owned()) => {
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        }
        () = activity.idle_for(server.idle_timeout) => {
            tracing::debug!(peer = %peer, "closing an idle connection");
        }
        () = activity.no_request_within(server.header_timeout) => {
            // hyper's header timeout covers HTTP/1.1 heads; this also covers a client that
            // trickles the HTTP/2 preface or its first HEADERS frame.
            tracing::debug!(peer = %peer, "closing a connection that sent no request in time");
        }
    }
}

/// The answer of one of the gate's own plain-HTTP listeners to a request.
type PlainAnswer = fn(
    &Shared,
    &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>>;

/// The plain-HTTP listener (`[server] http_listen`): ACME http-01 answers and redirects.
fn plain_http_answer(
    shared: &Shared,
    request: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    let https_port = shared.snapshot().config.server.listen.port();
    crate::plain_http::answer(request, shared.certs().challenges(), https_port)
}

/// The metrics listener: `GET /metrics` in the Prometheus text format (it belongs on a
/// private address; Prometheus scrapes without TLS by default).
fn metrics_answer(
    shared: &Shared,
    request: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    crate::metrics::answer(request, shared.certs())
}

/// One of the gate's own small plain-HTTP/1.1 listeners (port 80, metrics): nothing on it
/// is forwarded. Each connection gets the TLS listener's header timeout and lives at most
/// `idle_timeout`: a redirect, a challenge answer or a scrape needs no more.
async fn serve_plain(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    name: &'static str,
    answer: PlainAnswer,
) {
    tracing::info!(listen = ?listener.local_addr().ok(), "{name} listener");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "accept failed on the {name} listener");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let server = shared.snapshot().config.server.clone();
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let response = answer(&shared, &request);
                tracing::debug!(peer = %peer, path = %request.uri().path(), status = response.status().as_u16(), "{name} request");
                std::future::ready(Ok::<_, std::convert::Infallible>(response))
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(server.header_timeout)
                .max_buf_size(server.max_header_bytes)
                .serve_connection(TokioIo::new(Linger::new(stream)), service);
            let _ = tokio::time::timeout(server.idle_timeout, connection).await;
        });
    }
}

/// With `[server] proxy_protocol`: the client the balancer's header names, or `None` when
/// the connection must be closed (a peer that is no trusted balancer, no or a bad header).
/// The header shares the handshake's time budget.
async fn proxied_peer(
    stream: &mut TcpStream,
    peer: SocketAddr,
    server: &crate::config::ServerConfig,
) -> Option<SocketAddr> {
    let balancer = crate::client_addr::canonical(peer.ip());
    if !server.trusted_proxies.iter().any(|n| n.contains(&balancer)) {
        tracing::warn!(peer = %peer, "connection refused: PROXY protocol is on and the peer is not in [server] trusted_proxies");
        return None;
    }
    match tokio::time::timeout(
        server.handshake_timeout,
        crate::proxy_protocol::read_header(stream),
    )
    .await
    {
        Ok(Ok(crate::proxy_protocol::ProxiedPeer::Client(client))) => Some(client),
        Ok(Ok(crate::proxy_protocol::ProxiedPeer::Local)) => Some(peer),
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer, error = %e, "connection refused");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %peer, "PROXY protocol header timed out");
            None
        }
    }
}

/// HTTP/2 liveness pings: sent after this much silence, and the connection closed when one
/// is not answered in time.
const H2_PING_INTERVAL: Duration = Duration::from_secs(60);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// What a connection is doing, for the idle timeout: when a request last started or ended,
/// and how many are in flight (a request waiting on a slow registry is not idle). Bytes alone
/// do not count: a client trickling a request head or HTTP/2 control frames between requests
/// is holding the connection, not using it.
#[derive(Debug)]
pub struct ConnActivity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    any_request: std::sync::atomic::AtomicBool,
}

/// Held by a request from its start until its response body is finished or dropped.
#[derive(Debug)]
pub struct InFlight(Arc<ConnActivity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl ConnActivity {
    pub fn new() -> Arc<ConnActivity> {
        Arc::new(ConnActivity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            any_request: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.any_request.store(true, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// Resolves if no request has started `limit` after the connection was set up; never
    /// once one has.
    async fn no_request_within(&self, limit: Duration) {
        tokio::time::sleep_until((self.started + limit).into()).await;
        if self.any_request.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no request has been in flight for `limit`, including on a fresh
    /// connection that never sends a request.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.started + last + limit;
            let now = Instant::now();
            if now >= deadline {
                if self.in_flight.load(Ordering::Relaxed) == 0 {
                    return;
                }
                // Busy: the exchange's own timeouts apply; look again later.
                tokio::time::sleep(limit).await;
                continue;
            }
            tokio::time::sleep(deadline - now).await;
        }
    }
}

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
