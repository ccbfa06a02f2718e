//! The path of one request, top to bottom: check the request target, find the public host,
//! forward with rewritten headers, stream the answer back, write the access log line.
//!
//! Each step is a plain function that may answer early with a `GateError`; there are no
//! hooks. Authentication, classification and access rules slot in between the target check
//! and forwarding, in that order, so nothing reaches `forward` that a rule has not seen.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::body::{RequestBody, ResponseBody};
use crate::error::{GateError, Side, API_VERSION, API_VERSION_HEADER};
use crate::forward::{self, ClientInfo};
use crate::log::AccessRecord;
use crate::state::{Shared, Snapshot};

/// What the server knows about the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// hyper's service entry point. Never fails: every error becomes a response.
pub async fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let snapshot = shared.snapshot();
    let mut record = AccessRecord::new(
        next_request_id(),
        conn.peer,
        request.method().clone(),
        request.uri().path().to_string(),
        request
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string(),
    );
    let is_registry_api = is_registry_path(request.uri().path());

    let mut response = match proxy(&snapshot, &conn, &record, request).await {
        Ok(response) => response,
        Err(e) => {
            match e.side() {
                Side::Client => tracing::debug!(request_id = %record.request_id, error = %e, "request refused"),
                Side::Upstream => tracing::warn!(request_id = %record.request_id, error = %e, "upstream error"),
            }
            e.to_response()
        }
    };

    if is_registry_api && !response.headers().contains_key(API_VERSION_HEADER) {
        response
            .headers_mut()
            .insert(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
    }
    record.status = Some(response.status());
    Ok(response.map(|body| body.with_record(record)))
}

async fn proxy(
    snapshot: &Snapshot,
    conn: &ConnInfo,
    record: &AccessRecord,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, GateError> {
    check_target(&request)?;
    let host = public_host(&request)?;

    let (mut parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    parts.uri = snapshot.upstream.uri_for(path_and_query)?;
    // The registry speaks HTTP/1.1 whatever the client used.
    parts.version = Version::HTTP_11;
    forward::rewrite_request(
        &mut parts.headers,
        &host,
        &ClientInfo {
            peer: conn.peer,
            local_port: conn.local.port(),
            trusted_proxies: &snapshot.config.server.trusted_proxies,
            request_id: &record.request_id,
        },
    );

    let exchange = record.exchange().clone();
    let upstream_request = Request::from_parts(parts, RequestBody::new(body, exchange.clone()));
    let response = snapshot.upstream.send(upstream_request, &exchange).await?;

    let (mut parts, body) = response.into_parts();
    forward::rewrite_response(&mut parts.headers, snapshot.upstream.origin(), &host);
    let body = ResponseBody::upstream(body, exchange, snapshot.upstream.read_timeout());
    Ok(Response::from_parts(parts, body))
}

/// Only origin-form targets (`/path?query`) are forwarded. Absolute-form (`GET http://x/`)
/// would let a client name a host the Host header contradicts; asterisk-form has no place in
/// the registry API.
fn check_target(request: &Request<Incoming>) -> Result<(), GateError> {
    let uri = request.uri();
    let origin_form = match request.version() {
        // HTTP/2 always carries scheme and authority as pseudo-headers.
        Version::HTTP_2 => true,
        _ => uri.scheme().is_none() && uri.authority().is_none(),
    };
    if !origin_form {
        return Err(GateError::BadRequest("absolute-form request targets are not accepted"));
    }
    if !uri.path().starts_with('/') {
        return Err(GateError::BadRequest("the request target must be a path"));
    }
    Ok(())
}

/// The host the client addressed, which the registry needs to build upload URLs.
fn public_host(request: &Request<Incoming>) -> Result<HeaderValue, GateError> {
    if let Some(host) = request.headers().get(header::HOST) {
        if request.headers().get_all(header::HOST).iter().count() > 1 {
            return Err(GateError::BadRequest("more than one Host header"));
        }
        return Ok(host.clone());
    }
    if request.version() == Version::HTTP_2 {
        if let Some(authority) = request.uri().authority() {
            return HeaderValue::from_str(authority.as_str())
                .map_err(|_| GateError::BadRequest("invalid :authority"));
        }
    }
    Err(GateError::BadRequest("a Host header is required"))
}

fn is_registry_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// Unique per process and start: the start time in the high bits keeps ids from two runs of
/// the gate apart in one log.
fn next_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{start:x}-{n:x}")
}
