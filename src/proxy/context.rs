//! What one request carries through the phases: the snapshot it is served from, the
//! connection it came on, the real client address (worked out once), its access record and
//! the client's body until a phase takes it. Also the connection's activity, which the server
//! floor watches for its idle timeout and every request marks while it is in flight.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::access_log::AccessRecord;
use super::body::ClientBody;
use super::send_budget::ConnShare;
use super::state::{Shared, Snapshot};

/// What the server knows about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The user a verified client certificate names (`[tls] client_identity`).
    pub cert_user: Option<Arc<str>>,
    /// The connection's activity, for its idle timeout.
    pub activity: Arc<ConnActivity>,
    /// The connection's share of `[server] h2_buffer_budget`, for answers over HTTP/2.
    pub send_share: ConnShare,
}

/// One request's context: built when its head arrives, dropped when its answer has left.
pub struct RequestContext {
    /// Taken once per request, so a reload in the middle never mixes two configurations.
    pub snapshot: Arc<Snapshot>,
    pub shared: Arc<Shared>,
    pub conn: ConnInfo,
    /// The real client: the peer, or the client a trusted proxy names. Keys the filter, the
    /// `from` rules and the login throttle.
    pub client_ip: IpAddr,
    pub record: AccessRecord,
    pub body: ClientBody,
    /// The request's `Origin` when it is one of `[ui] cors_origins` and the path is shared.
    pub cors_origin: Option<http::HeaderValue>,
}

/// What a connection is doing, for the idle timeout: when a request last started or ended,
/// and how many are in flight (a request waiting on a slow registry is not idle). Bytes alone
/// do not count: a client trickling a request head or HTTP/2 control frames between requests
/// is holding the connection, not using it.
#[derive(Debug)]
pub struct ConnActivity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    any_request: AtomicBool,
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
            any_request: AtomicBool::new(false),
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
    pub async fn no_request_within(&self, limit: Duration) {
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
    pub async fn idle_for(&self, limit: Duration) {
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
