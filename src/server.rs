//! Listening: the accept loop, the TLS handshake (bounded in time), HTTP/1.1 and HTTP/2
//! connections served by hyper, and the shutdown that lets transfers in flight finish.
//!
//! Signals: SIGTERM and SIGINT start a graceful shutdown; SIGHUP reloads configuration and
//! certificates. What happens to one request is `pipeline`'s business, not this module's.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

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
pub async fn run(
    shared: Arc<Shared>,
    listener: TcpListener,
    signals: Signals,
) -> Result<(), ServerError> {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    spawn_signal_handlers(shared.clone(), signals, stop_tx);
    tokio::spawn(crate::state::watch_files(shared.clone()));

    let graceful = GracefulShutdown::new();
    let local = listener.local_addr().ok();
    let slots = Arc::new(ConnectionSlots::default());
    tracing::info!(listen = ?local, "registry-gate listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let limits = &shared.snapshot().config.server;
                    let Some(slot) = slots.take(
                        crate::forward::canonical(peer.ip()),
                        limits.max_connections,
                        limits.max_connections_per_ip,
                    ) else {
                        // Closed at once: a refused connection must cost nothing more.
                        tracing::warn!(peer = %peer, "connection refused: connection limit reached");
                        drop(stream);
                        continue;
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
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, total: usize, per_ip: usize) -> Option<Slot> {
        let mut state = self.state.lock().ok()?;
        let (open, by_ip) = &mut *state;
        let mine = by_ip.get(&ip).copied().unwrap_or(0);
        if *open >= total || mine >= per_ip {
            return None;
        }
        *open += 1;
        by_ip.insert(ip, mine + 1);
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
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

    let tls_stream = match tokio::time::timeout(
        server.handshake_timeout,
        tls.accept(crate::read_ahead::ReadAhead::new(stream)),
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
    let io = TokioIo::new(ActivityIo::new(tls_stream, activity.clone()));
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
    }
}

/// HTTP/2 liveness pings: sent after this much silence, and the connection closed when one
/// is not answered in time.
const H2_PING_INTERVAL: Duration = Duration::from_secs(60);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// What a connection is doing, for the idle timeout: when bytes last moved, and how many
/// requests are in flight (a request waiting on a slow registry is not idle).
#[derive(Debug)]
pub struct ConnActivity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
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
        })
    }

    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no request is in flight and no byte has moved for `limit` — including
    /// on a fresh connection that never sends a request.
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

pin_project_lite::pin_project! {
    /// The TLS stream, noting every byte read or written as activity.
    struct ActivityIo<T> {
        #[pin]
        inner: T,
        activity: Arc<ConnActivity>,
    }
}

impl<T> ActivityIo<T> {
    fn new(inner: T, activity: Arc<ConnActivity>) -> Self {
        ActivityIo { inner, activity }
    }
}

impl<T: AsyncRead> AsyncRead for ActivityIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
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
