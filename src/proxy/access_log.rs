//! The access record of one request: who asked for what, what was decided and by which
//! rule, bytes both ways, and whether the exchange completed. Filled in one place from what
//! decided the answer (for the registry API, `proxy::api` from the values its phases return;
//! the front, the token endpoint and the browser for their own answers) and written (log line and request metrics) when it is dropped, which is when the response body
//! has been sent or abandoned, so a download's line carries its real size and duration.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, StatusCode};

use crate::conn::InFlight;
use crate::upstream::exchange::Exchange;

/// Everything the access log says about one request; written on drop.
#[derive(Debug)]
pub struct AccessRecord {
    pub request_id: String,
    pub peer: SocketAddr,
    pub method: Method,
    pub path: String,
    pub user_agent: String,
    pub status: Option<StatusCode>,
    /// The authenticated user, `-` for anonymous; `token:NAME` for a robot access token.
    pub user: String,
    /// The access token the caller logged in with.
    pub token: Option<String>,
    pub action: Option<&'static str>,
    pub repository: Option<String>,
    /// Tag, digest or upload id.
    pub reference: Option<String>,
    /// What the access decision was; `-` where none was made (ping, errors before
    /// classifying).
    pub decision: Verdict,
    /// Index of the `[[rules]]` entry that decided; `default` when none did.
    pub rule: Option<usize>,
    /// Why a request the rules allowed was still refused, e.g. `protect[0]:move`.
    pub reason: Option<String>,
    /// Logged at debug instead of info (health probes).
    pub quiet: bool,
    /// Keeps the connection from counting as idle until the response is done, and tells it
    /// whether the request was answered in full or cancelled.
    pub in_flight: Option<InFlight>,
    exchange: Arc<Exchange>,
}

/// The access line's `decision`: whether the request was let through to what it asked
/// for, as the phase that decided recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Undecided,
    Allow,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Undecided => "-",
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl AccessRecord {
    pub fn new(
        request_id: String,
        peer: SocketAddr,
        method: Method,
        path: String,
        user_agent: String,
    ) -> Self {
        AccessRecord {
            request_id,
            peer,
            method,
            path,
            user_agent,
            status: None,
            user: "-".into(),
            token: None,
            action: None,
            repository: None,
            reference: None,
            decision: Verdict::Undecided,
            rule: None,
            reason: None,
            quiet: false,
            in_flight: None,
            exchange: Exchange::new(),
        }
    }

    pub fn exchange(&self) -> &Arc<Exchange> {
        &self.exchange
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let status = self.status.map(|s| s.as_u16()).unwrap_or(0);
        crate::metrics::get().request(
            &self.method,
            status,
            self.action,
            self.exchange.bytes_in(),
            self.exchange.bytes_out(),
            self.exchange.elapsed(),
        );
        let completed = self.exchange.completed();
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.end(completed);
        }
        let outcome = if completed { "complete" } else { "aborted" };
        // Health probes arrive every few seconds; they would drown the audit trail at info.
        macro_rules! access {
            ($level:expr) => {
                tracing::event!(
                    target: "access",
                    $level,
                    request_id = %self.request_id,
                    peer = %self.peer.ip(),
                    method = %self.method,
                    path = %self.path,
                    status,
                    user = %self.user,
                    token = %self.token.as_deref().unwrap_or("-"),
                    action = self.action.unwrap_or("-"),
                    repository = self.repository.as_deref().unwrap_or("-"),
                    reference = self.reference.as_deref().unwrap_or("-"),
                    decision = self.decision.as_str(),
                    rule = %self.rule.map(|r| format!("rules[{r}]")).unwrap_or_else(|| "-".into()),
                    reason = self.reason.as_deref().unwrap_or("-"),
                    bytes_in = self.exchange.bytes_in(),
                    bytes_out = self.exchange.bytes_out(),
                    duration_ms = self.exchange.elapsed().as_millis() as u64,
                    user_agent = %self.user_agent,
                    outcome,
                )
            };
        }
        if self.quiet {
            access!(tracing::Level::DEBUG);
        } else {
            access!(tracing::Level::INFO);
        }
    }
}
