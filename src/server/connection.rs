//! One TLS connection, from accept to close: the PROXY protocol header when a balancer sends
//! one, the handshake within its time budget, the tls-alpn-01 answer, the client
//! certificate's user, then hyper serving HTTP/1.1 or HTTP/2 until the client leaves, the
//! connection idles out, shutdown drains it, or it is ended for cancelling what it asks for.
//! What happens to each request is `proxy`'s.
//!
//! HTTP/2's limits are set here: streams per connection, the send buffer of each stream
//! (`[server] h2_stream_buffer`), the connection's share of the send budget, and the resets
//! hyper tolerates before it sends GOAWAY itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::linger::Linger;
use super::proxy_protocol;
use super::read_ahead::ReadAhead;
use crate::conn::send_budget::{self, ConnShare};
use crate::conn::{ConnActivity, ConnInfo};
use crate::front;
use crate::state::Shared;

/// Serves one connection until it ends. `drain` turns true when the gate shuts down; holding
/// it is what tells the shutdown that this connection is still open.
pub(super) async fn serve_connection(
    shared: Arc<Shared>,
    features: Arc<front::Features>,
    stream: TcpStream,
    peer: SocketAddr,
    mut drain: watch::Receiver<bool>,
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
        tls.accept(ReadAhead::new(Linger::new(stream))),
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
        send_share: ConnShare::new(
            server.h2_connection_buffer,
            send_budget::per_stream(
                server.h2_stream_buffer,
                crate::upstream::REGISTRY_BYTES_IN_HAND,
            ),
        ),
    };
    let service = service_fn(move |request| {
        front::handle(shared.clone(), features.clone(), conn.clone(), request)
    });
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
        // What one stream may queue for a client that does not read; the connection's
        // share of the send budget bounds them all together (`conn::send_budget`).
        .max_send_buf_size(server.h2_stream_buffer)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        // A peer that stops answering pings is gone; its streams are released.
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let io = TokioIo::new(tls_stream);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    // Set once GOAWAY has been asked for, by shutdown or because the connection cancels too
    // much; in the second case the connection is dropped at this deadline if still open.
    let mut closing = false;
    let mut cut_off: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = drain.wait_for(|draining| *draining), if !closing => {
                // An error means the shutdown's sender is gone: draining all the same.
                let _ = changed;
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = activity.condemned_now(), if cut_off.is_none() => {
                let (answered, cancelled) = activity.outcomes();
                tracing::warn!(
                    peer = %peer,
                    answered,
                    cancelled,
                    "closing a connection that cancels more requests than it completes (rapid reset)"
                );
                crate::metrics::get().connection_condemned();
                cut_off = Some(tokio::time::Instant::now() + CONDEMNED_GRACE);
                if !closing {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = sleep_until_some(cut_off) => {
                tracing::debug!(peer = %peer, "dropping a condemned connection that did not close in time");
                return;
            }
            () = activity.idle_for(server.idle_timeout) => {
                tracing::debug!(peer = %peer, "closing an idle connection");
                return;
            }
            () = activity.no_request_within(server.header_timeout) => {
                // hyper's header timeout covers HTTP/1.1 heads; this also covers a client that
                // trickles the HTTP/2 preface or its first HEADERS frame.
                tracing::debug!(peer = %peer, "closing a connection that sent no request in time");
                return;
            }
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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
        proxy_protocol::read_header(stream),
    )
    .await
    {
        Ok(Ok(proxy_protocol::ProxiedPeer::Client(client))) => Some(client),
        Ok(Ok(proxy_protocol::ProxiedPeer::Local)) => Some(peer),
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

/// Streams one HTTP/2 connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS): hyper's
/// default today, stated so that a new hyper cannot change it. Streams past the
/// connection's send share wait before reaching the registry, each costing about 12 KiB
/// (its head and its request's state), so waiting costs a connection at most 2.4 MiB. A
/// lower limit would save some of that, but clients open up to 100 streams before they
/// read the server's SETTINGS, and h2 ends a connection whose refused streams pile up.
const H2_MAX_STREAMS: u32 = 200;

/// Streams a client may reset before the gate has taken them up, before h2 ends the
/// connection with GOAWAY: h2's default, the answer to the original rapid reset (2023).
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Streams the gate may reset for the client's protocol errors (a WINDOW_UPDATE that
/// overflows the window, "MadeYouReset", 2025) before h2 ends the connection. A client
/// makes none of these by accident; hyper's default of 1024 let thousands of such streams
/// reach the registry first.
const H2_MAX_LOCAL_ERROR_RESETS: usize = 32;

/// How long a connection ended for cancelling may finish its last streams after GOAWAY
/// before it is dropped: a client that never acknowledges the GOAWAY's ping would otherwise
/// keep it open, and its new streams, though refused, keep coming.
const CONDEMNED_GRACE: Duration = Duration::from_secs(5);
