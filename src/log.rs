//! Logging: the `tracing` subscriber (text or JSON on stderr). The access log line of a
//! request is `proxy::access_log`'s; it goes to the `access` target of this subscriber.
//!
//! Nothing logged ever holds an Authorization value or any other secret: the access record
//! logs only fields it chose, and errors name users and files, never passwords or hashes.

use tracing_subscriber::EnvFilter;

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
