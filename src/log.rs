//! Logging: the `tracing` subscriber (text or JSON on stderr) and the access log record.
//!
//! The access log is one line per request, written when the response body is finished or
//! abandoned, so its byte counts and duration are those of the whole transfer. It never holds
//! an Authorization value or any other secret: only fields chosen here are logged.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, StatusCode};
use tracing_subscriber::EnvFilter;

use crate::body::Exchange;
use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Called once, after the configuration is known.
pub fn init(config: &LogConfig) {
    // The level was validated when the configuration was loaded.
    let mut filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // rustls warns once per handshake about client quirks an operator cannot fix (curl and
    // wrk send an IP address as SNI): at "warn" that is a log line and a write per new
    // connection. Only its errors are kept, unless the filter names rustls itself.
    if !config.level.contains("rustls") {
        if let Ok(directive) = "rustls=error".parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    drop(result);
}

/// Everything the access log says about one request; written on drop.
#[derive(Debug)]
pub struct AccessRecord {
    pub request_id: String,
    pub peer: SocketAddr,
    pub method: Method,
    pub path: String,
    pub user_agent: String,
    pub status: Option<StatusCode>,
    /// The authenticated user, `-` for anonymous.
    pub user: String,
    pub action: Option<&'static str>,
    pub repository: Option<String>,
    /// Tag, digest or upload id.
    pub reference: Option<String>,
    /// `allow`, `deny`, or `-` where no rule was consulted (ping, errors before classifying).
    pub decision: &'static str,
    /// Index of the `[[rules]]` entry that decided; `default` when none did.
    pub rule: Option<usize>,
    /// Logged at debug instead of info (health probes).
    pub quiet: bool,
    /// Keeps the connection from counting as idle until the response is done.
    pub in_flight: Option<crate::server::InFlight>,
    exchange: Arc<Exchange>,
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
            action: None,
            repository: None,
            reference: None,
            decision: "-",
            rule: None,
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
        let outcome = if self.exchange.completed() {
            "complete"
        } else {
            "aborted"
        };
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
                    action = self.action.unwrap_or("-"),
                    repository = self.repository.as_deref().unwrap_or("-"),
                    reference = self.reference.as_deref().unwrap_or("-"),
                    decision = self.decision,
                    rule = %self.rule.map(|r| format!("rules[{r}]")).unwrap_or_else(|| "-".into()),
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
