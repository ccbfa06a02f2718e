//! Prometheus metrics: what is counted, and the `[metrics] listen` endpoint that serves them.
//!
//! Counting is always on (a few atomic adds per request); the listener is off unless
//! configured. The metrics live in one process-wide `Metrics`, so the places that count
//! (the access record, the accept loop, the error path) need no handle passed down. Labels
//! take values from small fixed sets only: a client can never grow the number of series.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    status: u16,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// Token names come from the operator's token file, never from a client, and only a
/// verified use is counted, so the series are as many as the tokens.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    token: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<ActionLabels, Histogram>,
    bytes: Family<DirectionLabels, Counter>,
    auth_failures: Family<ReasonLabels, Counter>,
    throttled: Counter,
    token_uses: Family<TokenLabels, Counter>,
    upstream_errors: Family<ReasonLabels, Counter>,
    protect_refusals: Family<ReasonLabels, Counter>,
    open_connections: Gauge,
    refused_connections: Family<ReasonLabels, Counter>,
    condemned_connections: Counter,
    certificate_expiry: Gauge<f64, std::sync::atomic::AtomicU64>,
    events: Family<OutcomeLabels, Counter>,
    cluster_errors: Family<ReasonLabels, Counter>,
    cluster_fallbacks: Family<FeatureLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureLabels {
    feature: &'static str,
}

/// Seconds; from a manifest HEAD (milliseconds) to a multi-gigabyte layer (minutes).
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("registry_gate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by method, status and registry action",
            requests.clone(),
        );
        let duration = Family::<ActionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(DURATION_BUCKETS)
        });
        registry.register(
            "request_duration_seconds",
            "Time from the request head to the end of the response body",
            duration.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "body_bytes",
            "Body bytes moved: in = from clients (pushes), out = to clients (pulls)",
            bytes.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused for want of valid credentials, by reason (missing = the first, unauthenticated request every client makes)",
            auth_failures.clone(),
        );
        let throttled = Counter::default();
        registry.register(
            "throttled_requests",
            "Requests refused with 429 because their address failed to log in too often",
            throttled.clone(),
        );
        let token_uses = Family::<TokenLabels, Counter>::default();
        registry.register(
            "access_token_uses",
            "Logins with an access token, by token name (verified uses only)",
            token_uses.clone(),
        );
        let upstream_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests the registry could not answer: unreachable, timeout, failed",
            upstream_errors.clone(),
        );
        let protect_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "protect_refusals",
            "Writes refused by [[protect]]: move (a push to a protected tag pointing elsewhere), delete (of a protected tag), delete_tagged (of the manifest a protected tag points to), delete_child (of a platform of a protected index), delete_blob (of a blob where tags are protected), query (a manifest write with a query there)",
            protect_refusals.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let refused_connections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refused_connections",
            "Connections closed at accept: max_connections or max_connections_per_ip reached",
            refused_connections.clone(),
        );
        let condemned_connections = Counter::default();
        registry.register(
            "condemned_connections",
            "Connections ended with GOAWAY for cancelling more requests than they completed (rapid reset)",
            condemned_connections.clone(),
        );
        let certificate_expiry = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until the served certificate expires (negative once expired; absent before the first ACME certificate)",
            certificate_expiry.clone(),
        );
        let events = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "events",
            "Push and delete events per [[events]] receiver: delivered, failed (given up after every retry), dropped (the receiver's queue was full)",
            events.clone(),
        );
        let cluster_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "cluster_errors",
            "Calls to the [cluster] Redis that failed: timeout (no answer within [cluster] timeout) or error",
            cluster_errors.clone(),
        );
        let cluster_fallbacks = Family::<FeatureLabels, Counter>::default();
        registry.register(
            "cluster_fallbacks",
            "Times a feature acted without the [cluster] Redis, by feature: protect (a write refused with 503), lockout (this gate's counts only), sessions (this gate's logouts only), activity (this gate's ring only), events (held in this gate's buffer)",
            cluster_fallbacks.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            bytes,
            auth_failures,
            throttled,
            token_uses,
            upstream_errors,
            protect_refusals,
            open_connections,
            refused_connections,
            condemned_connections,
            certificate_expiry,
            events,
            cluster_errors,
            cluster_fallbacks,
        }
    }

    /// One finished (or abandoned) request, from its access record.
    pub fn request(
        &self,
        method: &Method,
        status: u16,
        action: Option<&'static str>,
        bytes_in: u64,
        bytes_out: u64,
        elapsed: Duration,
    ) {
        let action = action.unwrap_or("none");
        self.requests
            .get_or_create(&RequestLabels {
                method: method_label(method),
                status,
                action,
            })
            .inc();
        self.duration
            .get_or_create(&ActionLabels { action })
            .observe(elapsed.as_secs_f64());
        self.bytes
            .get_or_create(&DirectionLabels { direction: "in" })
            .inc_by(bytes_in);
        self.bytes
            .get_or_create(&DirectionLabels { direction: "out" })
            .inc_by(bytes_out);
    }

    /// An error answered instead of a forwarded response.
    /// A refused login, by reason (`missing`, `wrong_password`, ...).
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A request turned away by the login throttle.
    pub fn throttled(&self) {
        self.throttled.inc();
    }

    /// A verified login with the access token `name`.
    pub fn token_used(&self, name: &str) {
        self.token_uses
            .get_or_create(&TokenLabels {
                token: name.to_string(),
            })
            .inc();
    }

    /// A failed exchange with the registry, by reason (`unreachable`, `timeout`, `failed`).
    pub fn upstream_error(&self, reason: &'static str) {
        self.upstream_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A write refused by `[[protect]]`, by what it would have done (`rules::protect::Refusal::label`).
    pub fn protect_refusal(&self, reason: &'static str) {
        self.protect_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    pub fn connection_refused(&self, reason: &'static str) {
        self.refused_connections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn connection_condemned(&self) {
        self.condemned_connections.inc();
    }

    /// One event's fate at one receiver (`delivered`, `failed`, `dropped`).
    pub fn event(&self, outcome: &'static str) {
        self.events.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// A call to the shared Redis that failed (`timeout` or `error`).
    pub fn cluster_error(&self, reason: &'static str) {
        self.cluster_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A feature that went on without the shared Redis (or refused, where that is safer).
    pub fn cluster_fallback(&self, feature: &'static str) {
        self.cluster_fallbacks
            .get_or_create(&FeatureLabels { feature })
            .inc();
    }

    /// The text exposition format, with the served certificate's expiry (`not_after`) as
    /// the caller read it now.
    pub fn render(&self, not_after: Option<SystemTime>) -> String {
        if let Some(not_after) = not_after {
            let seconds = match not_after.duration_since(SystemTime::now()) {
                Ok(left) => left.as_secs_f64(),
                Err(past) => -past.duration().as_secs_f64(),
            };
            self.certificate_expiry.set(seconds);
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Methods outside the registry API's set are counted together, so junk methods cannot
/// create series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The metrics listener's answer: `GET /metrics`, nothing else. `not_after` reads the
/// served certificate's expiry, only when the metrics are asked for.
pub fn answer<B>(
    request: &Request<B>,
    not_after: impl FnOnce() -> Option<SystemTime>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            get().render(not_after()),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "metrics are at GET /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_errors_and_connections_appear_in_the_exposition() {
        let m = Metrics::new();
        m.request(
            &Method::GET,
            200,
            Some("pull"),
            0,
            1234,
            Duration::from_millis(30),
        );
        m.request(
            &Method::from_bytes(b"BREW").expect("method"),
            400,
            None,
            0,
            0,
            Duration::ZERO,
        );
        m.throttled();
        m.upstream_error("timeout");
        m.protect_refusal("move");
        m.connection_refused("max_connections_per_ip");
        m.connection_opened();
        m.connection_condemned();
        m.event("dropped");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).expect("encode");
        for line in [
            "registry_gate_requests_total{method=\"GET\",status=\"200\",action=\"pull\"} 1",
            "registry_gate_requests_total{method=\"other\",status=\"400\",action=\"none\"} 1",
            "registry_gate_body_bytes_total{direction=\"out\"} 1234",
            "registry_gate_throttled_requests_total 1",
            "registry_gate_upstream_errors_total{reason=\"timeout\"} 1",
            "registry_gate_protect_refusals_total{reason=\"move\"} 1",
            "registry_gate_refused_connections_total{reason=\"max_connections_per_ip\"} 1",
            "registry_gate_open_connections 1",
            "registry_gate_condemned_connections_total 1",
            "registry_gate_events_total{outcome=\"dropped\"} 1",
            "registry_gate_request_duration_seconds_bucket{le=\"0.05\",action=\"pull\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
