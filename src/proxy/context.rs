//! What one request carries through the phases: the snapshot it is served from, the
//! connection it came on, the real client address (worked out once), its access record and
//! the client's body until a phase takes it.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::Request;

use super::access_log::AccessRecord;
use super::body::ClientBody;
use super::registry::Registry;
use super::write_locks::WriteLocks;
use crate::conn::send_budget::Reservation;
use crate::conn::ConnInfo;
use crate::state::{Kit, Snapshot};

/// One request's context: built when its head arrives, dropped when its answer has left.
pub struct RequestContext {
    /// Taken once per request, so a reload in the middle never mixes two configurations.
    pub snapshot: Arc<Snapshot>,
    /// What the request uses of the running gate beyond its snapshot.
    pub kit: Arc<Kit>,
    /// `[[protect]]`'s locks, taken by API writes and the browser's deletes alike.
    pub write_locks: Arc<WriteLocks>,
    pub conn: ConnInfo,
    /// The real client: the peer, or the client a trusted proxy names. Keys the filter, the
    /// `from` rules and the login throttle.
    pub client_ip: IpAddr,
    pub record: AccessRecord,
    pub body: ClientBody,
    /// The request's `Origin` when it is one of `[ui] cors_origins` and the path is shared.
    pub cors_origin: Option<http::HeaderValue>,
}

impl RequestContext {
    /// Over HTTP/2, a GET's place in the send budget, taken before its answer is read or
    /// made (waiting while its connection's share or the whole is spent): a client that
    /// opens hundreds of streams and stops reading holds that, not the gate's memory. The
    /// answer's body keeps it until it is sent or dropped.
    pub async fn h2_send_reservation(&self, request: &Request<()>) -> Option<Reservation> {
        if request.version() == http::Version::HTTP_2 && request.method() == http::Method::GET {
            Some(self.kit.send_budget().reserve(&self.conn.send_share).await)
        } else {
            None
        }
    }

    /// The registry as the gate itself asks it on behalf of `request` (public host `host`):
    /// with `[auth] mode = "none"` the registry may check the client's own credentials, so
    /// they go along; otherwise the gate checked them and they stay here.
    pub fn registry(&self, request: &Request<()>, host: &HeaderValue) -> Registry {
        Registry::new(self.snapshot.upstream.clone(), host.clone()).with_authorization(
            self.snapshot
                .auth
                .is_none()
                .then(|| request.headers().get(header::AUTHORIZATION).cloned())
                .flatten(),
        )
    }
}
