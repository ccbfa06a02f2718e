//! The front door of every request on the HTTPS listener: the per-request context built
//! once, the checks every request passes (`admit`), the routing to the gate's own endpoints
//! (`/healthz`, `/readyz`, CORS preflights), the token endpoint, the registry browser or the
//! registry API's phases (`proxy::api`), and the headers every answer gets on the way out
//! (HSTS, `nosniff`, the API version, CORS, and a HEAD answered without a body). The access
//! record rides on the response body and is written when it is done.
//!
//! What each feature keeps across requests and reloads is owned here too (`Features`), beside
//! the reloadable `Shared` state, and handed to the server once at start.

mod cors;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::cluster::Cluster;
use crate::conn::ConnInfo;
use crate::proxy::access_log::AccessRecord;
use crate::proxy::body::{ClientBody, ResponseBody, Settled};
use crate::proxy::context::RequestContext;
use crate::proxy::error::{GateError, API_VERSION, API_VERSION_HEADER};
use crate::proxy::write_locks::WriteLocks;
use crate::proxy::{self, form, token_endpoint};
use crate::state::Shared;
use crate::ui::{self, Kept};

/// What the request path's features keep across requests and reloads, each its own: the
/// browser's session key, caches and ended sessions (`ui::Kept`), and `[[protect]]`'s write
/// locks. Made once at start, beside `Shared`; a reload keeps it.
pub struct Features {
    browser: Arc<Kept>,
    write_locks: Arc<WriteLocks>,
}

impl Features {
    /// With `cluster`, what the fleet must agree on is kept in its Redis. Call inside the
    /// runtime: the browser starts reading the fleet's session key.
    pub fn new(cluster: Option<Arc<Cluster>>) -> Result<Features, getrandom::Error> {
        let browser = Arc::new(Kept::new(cluster.clone())?);
        browser.share_key();
        Ok(Features {
            browser,
            write_locks: Arc::new(WriteLocks::new(cluster)),
        })
    }
}

/// hyper's service entry point. Never fails: every error becomes a response.
pub async fn handle(
    shared: Arc<Shared>,
    features: Arc<Features>,
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
    record.in_flight = Some(conn.activity.enter());
    let is_registry_api = is_registry_path(request.uri().path());
    let cors_origins = &snapshot.config.ui.cors_origins;
    let cors_origin = cors::allowed_origin(cors_origins, request.headers(), request.uri().path());
    let cors_configured = !cors_origins.is_empty();
    let version = request.version();
    let is_head = request.method() == Method::HEAD;
    let (parts, incoming) = request.into_parts();
    let expects_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let body = ClientBody::new(incoming, record.exchange().clone(), expects_continue);
    let request = Request::from_parts(parts, ());
    let client_ip = crate::client_addr::client_ip(
        request.headers(),
        conn.peer,
        &snapshot.config.server.trusted_proxies,
    );
    let mut ctx = RequestContext {
        cors_origin: cors_origin.clone(),
        snapshot,
        kit: shared.kit().clone(),
        write_locks: features.write_locks.clone(),
        conn,
        client_ip,
        record,
        body,
    };

    let mut response = match route(&mut ctx, &features, request).await {
        Ok(response) => response,
        Err(e) => {
            e.report(&ctx.record.request_id);
            e.to_response()
        }
    };
    let RequestContext {
        mut record, body, ..
    } = ctx;
    // An answer given before the whole body was read must leave the connection usable.
    if body.settle(version).await == Settled::Close {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }

    if is_registry_api && !response.headers().contains_key(API_VERSION_HEADER) {
        response
            .headers_mut()
            .insert(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
    }
    // Every answer comes over TLS; a browser that ever reaches the gate should never try it
    // in plain text, nor render a blob or an error body as HTML (the registry sets nosniff on
    // its own answers, the gate's were missing it; testssl.sh rates both as findings).
    let headers = response.headers_mut();
    cors::decorate(headers, cors_configured, cors_origin);
    headers
        .entry(header::STRICT_TRANSPORT_SECURITY)
        .or_insert(HeaderValue::from_static(HSTS));
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    let response = state_length(response, is_head);
    record.status = Some(response.status());
    Ok(response.map(|body| body.with_record(record)))
}

/// An answer the gate made itself (an error, a page, a redirect, a probe) says how long it
/// is, and to a HEAD it is sent without its body, with the headers a GET would get. hyper
/// drops the body of a HEAD answer over HTTP/1.1 but sends it as DATA over HTTP/2, which
/// RFC 9113 makes a malformed response: curl failed with PROTOCOL_ERROR where it should
/// have shown a 401 (RFC 9110 §9.3.2: a HEAD answer has no content). The registry's own
/// answers are left as they are: hyper's client reads no body for a HEAD, and the
/// registry's `Content-Length` is already the GET's.
fn state_length(response: Response<ResponseBody>, is_head: bool) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    if !body.is_made_here() {
        return Response::from_parts(parts, body);
    }
    // RFC 9110 §8.6: never in a 204 or 304 (a 1xx is never a final answer here).
    let has_content = !matches!(
        parts.status,
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    );
    if let Some(length) = body.size_hint().exact().filter(|_| has_content) {
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert(HeaderValue::from(length));
    }
    let body = if is_head { ResponseBody::empty() } else { body };
    Response::from_parts(parts, body)
}

/// Where a request goes, after the checks every request passes (`admit`): the gate's own
/// endpoints, never forwarded; the token endpoint; the registry browser; else the registry
/// API's phases (`proxy::api`).
async fn route(
    ctx: &mut RequestContext,
    features: &Features,
    request: Request<()>,
) -> Result<Response<ResponseBody>, GateError> {
    let host = admit(ctx, &request)?;
    let snapshot = ctx.snapshot.clone();
    // A listed UI's preflight: answered here, since it carries no credentials and the
    // registry knows no OPTIONS.
    if let Some(answer) = cors::preflight(ctx.cors_origin.as_ref(), &request) {
        return Ok(answer);
    }
    // The gate's own endpoints; never forwarded.
    match request.uri().path() {
        HEALTHZ => {
            ctx.record.quiet = true;
            return Ok(plain(StatusCode::OK, "ok\n"));
        }
        READYZ => {
            ctx.record.quiet = true;
            return Ok(if snapshot.upstream.ready().await {
                // Still ready without the fleet's Redis: pulls and most pushes go on, and
                // every gate of the fleet shares the same Redis, so taking them all out of
                // the balancer would turn a degraded fleet into a dead one.
                match ctx.kit.cluster() {
                    Some(cluster) if cluster.ping().await.is_err() => {
                        plain(StatusCode::OK, CLUSTER_DEGRADED)
                    }
                    _ => plain(StatusCode::OK, "ready\n"),
                }
            } else {
                plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the registry is not answering\n",
                )
            });
        }
        _ => {}
    }
    if snapshot.tokens.is_some() && request.uri().path() == crate::auth::token::TOKEN_PATH {
        return token_endpoint::answer(ctx, request).await;
    }
    // The registry browser: the gate's own pages, so a browser path never reaches the
    // classifier or the registry.
    if ui::serves(&snapshot.config.ui, request.uri().path()) {
        return Ok(ui::answer(ctx, features.browser.clone(), request, host).await);
    }

    proxy::api(ctx, request, host).await
}

/// Phase 1, admit: the checks every request passes, whatever it is for. A condemned
/// connection's requests stop here; then `[filter]` (health probes excepted: they reveal
/// nothing, and a container's own probe comes from loopback) and the request's form
/// (origin-form target, one Host, no smuggled method). Returns the public host it names.
fn admit(ctx: &RequestContext, request: &Request<()>) -> Result<HeaderValue, GateError> {
    let snapshot = &ctx.snapshot;
    let client_ip = ctx.client_ip;
    // A connection being closed for cancelling what it asks for gets nothing more forwarded
    // while its last streams finish.
    if ctx.conn.activity.condemned() {
        let (answered, cancelled) = ctx.conn.activity.outcomes();
        return Err(GateError::Condemned {
            answered,
            cancelled,
        });
    }
    let path = request.uri().path();
    if path != HEALTHZ && path != READYZ {
        let user_agent = request
            .headers()
            .get(header::USER_AGENT)
            .map(HeaderValue::as_bytes);
        snapshot
            .config
            .filter
            .check(user_agent, client_ip)
            .map_err(GateError::Filtered)?;
    }

    form::check_target(request)?;
    let host = form::public_host(request)?;
    form::refuse_method_override(request)?;
    Ok(host)
}

/// One year, the value HSTS preload lists ask for; no `includeSubDomains`: the gate speaks
/// for its own host only.
const HSTS: &str = "max-age=31536000";

/// Liveness: the gate answers. Readiness: the registry behind it answers too.
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";

/// `/readyz` while the `[cluster]` Redis does not answer: what works and what does not.
const CLUSTER_DEGRADED: &str = "ready, degraded: the [cluster] Redis does not answer; writes to repositories with protected tags are refused (503), lockouts are counted by each gate alone\n";

fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(bytes::Bytes::from_static(
        text.as_bytes(),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_len(response: Response<ResponseBody>) -> usize {
        let collected = response.into_body().collect().await;
        collected.map(|c| c.to_bytes().len()).unwrap_or(usize::MAX)
    }

    /// The errors no HEAD can reach over the wire (the integration suite `head` sends the
    /// rest): each states the GET's length and sends no body to a HEAD.
    #[tokio::test]
    async fn a_head_gets_the_gets_length_and_no_body() {
        let errors = || {
            [
                GateError::Throttled(std::time::Duration::from_secs(3)),
                GateError::Protected {
                    repository: "team/app".into(),
                    tag: "v1".into(),
                    protection: 0,
                    refusal: crate::rules::protect::Refusal::Move,
                },
                GateError::ManifestTooLarge(4 << 20),
                GateError::Internal("test"),
            ]
        };
        let mut checked = 0;
        for (error, again) in errors().into_iter().zip(errors()) {
            let status = error.status();
            let full = body_len(error.to_response()).await;
            let get = state_length(again.to_response(), false);
            let head = state_length(error.to_response(), true);
            assert_eq!(head.headers(), get.headers(), "{status}");
            assert_eq!(
                head.headers()[header::CONTENT_LENGTH],
                full.to_string(),
                "{status}"
            );
            assert_eq!(body_len(head).await, 0, "{status}");
            assert_eq!(body_len(get).await, full, "{status}");
            checked += 1;
        }
        assert_eq!(checked, 4);
        // A 204 has no content and says no length (RFC 9110 §8.6).
        let mut none = plain(StatusCode::OK, "");
        *none.status_mut() = StatusCode::NO_CONTENT;
        let head = state_length(none, true);
        assert!(!head.headers().contains_key(header::CONTENT_LENGTH));
    }
}
