//! What the server knows about one connection, shared by every floor that serves it: its
//! addresses and client certificate user (`ConnInfo`), what it is doing (`activity`: requests
//! in flight for the idle timeout, and cancelled ones for the rapid-reset brake), and its
//! share of the memory HTTP/2 answers may hold (`send_budget`). The server makes them; the
//! request path marks them. Nothing here knows HTTP requests.

pub mod activity;
pub mod send_budget;

use std::net::SocketAddr;
use std::sync::Arc;

pub use activity::{ConnActivity, InFlight, CANCELS_TOLERATED};
use send_budget::ConnShare;

/// What the server knows about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The user a verified client certificate names (`[tls] client_identity`).
    pub cert_user: Option<Arc<str>>,
    /// The connection's activity, for its idle timeout and its cancelled requests.
    pub activity: Arc<ConnActivity>,
    /// The connection's share of `[server] h2_buffer_budget`, for answers over HTTP/2.
    pub send_share: ConnShare,
}
