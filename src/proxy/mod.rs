//! The path of one request, top to bottom, like a phase chart: check who may talk to the
//! gate and the request's form, classify it (endpoint, action, repository), authenticate,
//! authorise, forward with rewritten headers, stream the answer back, and hand a push or
//! delete the registry accepted to the event receivers; the access log line is written when
//! the response body is done.
//!
//! Each phase is a plain function that may answer early with a `GateError`; there are no
//! hooks. Classification comes before authentication so that an unclassifiable request is
//! refused without spending a password check on it, and nothing reaches the upstream client
//! that the rules have not seen. The rooms beside this file:
//!
//! - `context`: the per-request context and the connection's activity.
//! - `form`: the request-form checks of phase 1.
//! - `caller`: phases 3 and 4, who asks and what they may do.
//! - `headers`: forwarded headers and hop-by-hop removal, both ways.
//! - `upstream`: the pooled client to the registry.
//! - `body`: the client's body until forwarded, and the streaming response body.
//! - `exchange`: one exchange's progress, shared by its bodies, the registry client and the
//!   access record.
//! - `catalog`: per-caller rewrites of the catalog listing and of cross-repository mounts.
//! - `media_types`: the manifest media types read in registry answers.
//! - `protect`: the `[[protect]]` phase, refusing writes that would move or delete a
//!   protected tag.
//! - `token_endpoint`: the `/token` endpoint of token mode.
//! - `ui`: the registry browser (`[ui]`), answered before classification.
//! - `access_log`: the access record, written when the response is done.
//! - `activity`: the last accepted pushes and deletes, kept in memory for the browser.
//! - `error`: gate errors, their side, status and the registry JSON error body.
//! - `state`: the snapshot requests are served from, and its reload.
//! - `write_locks`: `[[protect]]`'s per-repository locks, kept in `Features`.

pub mod access_log;
pub mod activity;
pub mod body;
mod caller;
pub mod catalog;
pub mod context;
mod cors;
pub mod error;
pub mod exchange;
mod form;
pub mod headers;
mod media_types;
mod protect;
pub mod registry;
pub mod state;
pub mod token_endpoint;
mod ui;
pub mod upstream;
mod write_locks;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::conn::ConnInfo;
use crate::events::{Actor, Event, EventAction};
use crate::registry_path::{self, Action, Classified, Kind};
use access_log::AccessRecord;
use body::{ClientBody, ResponseBody, Settled};
use context::RequestContext;
use error::{GateError, Side, API_VERSION, API_VERSION_HEADER};
use headers::ClientInfo;
use state::Shared;

/// What the request path's features keep across requests and reloads, each its own: the
/// browser's session key, caches and ended sessions (`ui::Kept`), and `[[protect]]`'s write
/// locks. Made once at start, beside `Shared`; a reload keeps it.
pub struct Features {
    browser: Arc<ui::Kept>,
    write_locks: Arc<write_locks::WriteLocks>,
}

impl Features {
    pub fn new() -> Result<Features, getrandom::Error> {
        Ok(Features {
            browser: Arc::new(ui::Kept::new()?),
            write_locks: Arc::default(),
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
        shared,
        write_locks: features.write_locks.clone(),
        conn,
        client_ip,
        record,
        body,
    };

    let mut response = match proxy(&mut ctx, &features, request).await {
        Ok(response) => response,
        Err(e) => {
            e.count();
            let request_id = &ctx.record.request_id;
            match e.side() {
                Side::Client => {
                    tracing::debug!(request_id = %request_id, error = %e, "request refused")
                }
                Side::Upstream => {
                    tracing::warn!(request_id = %request_id, error = %e, "upstream error")
                }
                Side::Internal => {
                    tracing::error!(request_id = %request_id, error = %e, "the gate failed")
                }
            }
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

/// The phases, in order; each may answer early with an error.
async fn proxy(
    ctx: &mut RequestContext,
    features: &Features,
    request: Request<()>,
) -> Result<Response<ResponseBody>, GateError> {
    let snapshot = ctx.snapshot.clone();
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
    // 0. Who may talk to the gate at all (health probes excepted: they reveal nothing, and a
    // container's own probe comes from loopback).
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

    // 1. The request's form: origin-form target, one Host, no smuggled method.
    form::check_target(&request)?;
    let host = form::public_host(&request)?;
    form::refuse_method_override(&request)?;

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
                plain(StatusCode::OK, "ready\n")
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
        return ui::answer(ctx, features.browser.clone(), request, host).await;
    }

    // 2. What it is: endpoint, action, repository. Anything unclassifiable stops here.
    let uri = request.uri().clone();
    let class = registry_path::classify(request.method(), uri.path(), uri.query())
        .map_err(GateError::Rejected)?;
    form::refuse_form_bodies(&request)?;
    let record = &mut ctx.record;
    record.action = Some(class.action.as_str());
    record.repository = class.repository.map(str::to_string);
    record.reference = class.reference.map(str::to_string);

    // 3. Who asks.
    let caller = caller::authenticate(ctx, &request, &class).await?;
    ctx.record.user = caller.identity.name().to_string();
    ctx.record.token = caller.token_name().map(str::to_string);

    // 4. May they.
    let mut path_and_query = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    caller::authorise(ctx, &caller, &request, &class)?;
    if let Some(from) = &class.mount_from {
        if !caller.may(&snapshot.config.rules, client_ip, from, Action::Pull) {
            // Docker Hub's behaviour: a mount the user may not read from silently becomes a
            // plain upload, so the layer is sent instead of borrowed.
            path_and_query = catalog::without_mount(uri.path(), uri.query());
        }
    }

    // 4b. Protected tags: a manifest write the rules allowed may still not move or delete one.
    // The lock it may hand back is held until the registry has answered (step 5).
    let _write_lock =
        protect::check(ctx, &request, &class, &caller.protect_identity(), &host).await?;

    // 5. Forward. Over HTTP/2 an answer with a body first takes its stream's place in the
    // send budget, waiting while its connection's share or the whole is spent: a client that
    // opens hundreds of streams and stops reading holds that, not the gate's memory.
    let reservation = if request.version() == Version::HTTP_2 && request.method() == Method::GET {
        Some(ctx.shared.send_budget().reserve(&ctx.conn.send_share).await)
    } else {
        None
    };
    let (mut parts, ()) = request.into_parts();
    parts.uri = snapshot.upstream.uri_for(&path_and_query)?;
    // The registry speaks HTTP/1.1 whatever the client used.
    parts.version = Version::HTTP_11;
    headers::rewrite_request(
        &mut parts.headers,
        &host,
        &ClientInfo {
            peer: ctx.conn.peer,
            local_port: ctx.conn.local.port(),
            trusted_proxies: &snapshot.config.server.trusted_proxies,
            request_id: &ctx.record.request_id,
        },
    );
    if snapshot.auth.is_some() {
        // The gate checked the credentials; the registry behind it has no use for them, and
        // the link to it may be plain HTTP.
        parts.headers.remove(header::AUTHORIZATION);
    }
    // A layer download reads the registry in large chunks while a bulk slot is free.
    let bulk = if class.kind == Kind::Blob && parts.method == Method::GET {
        snapshot.upstream.bulk_slot()
    } else {
        None
    };
    let exchange = ctx.record.exchange().clone();
    let method = parts.method.clone();
    let upstream_request = Request::from_parts(parts, ctx.body.take());
    let response = snapshot
        .upstream
        .send(upstream_request, &exchange, bulk.as_ref())
        .await?;

    // 6. Remember and tell the event receivers, as soon as the registry's answer says it
    // accepted a push or delete: whatever happens to the rest of this response, the change
    // is made. The browser's activity page keeps it whether or not receivers exist.
    if let Some(event) = accepted_change(ctx, &caller, &method, &class, &response) {
        note_change(ctx, event);
    }

    // 7. Respond.
    let (mut parts, body) = response.into_parts();
    headers::rewrite_response(&mut parts.headers, snapshot.upstream.origin(), &host);
    if class.kind == Kind::Catalog
        && snapshot.config.auth.filter_catalog
        && parts.status.is_success()
    {
        let rules = &snapshot.config.rules;
        let registry = registry::Registry::new(snapshot.upstream.clone(), host.clone());
        let filtered = catalog::filter(body, &mut parts.headers, &registry, |repo| {
            caller.may(rules, client_ip, repo, Action::Pull)
        })
        .await?;
        return Ok(Response::from_parts(parts, filtered.holding(reservation)));
    }
    let body = ResponseBody::upstream(body, exchange, snapshot.upstream.read_timeout(), bulk)
        .holding(reservation);
    Ok(Response::from_parts(parts, body))
}

/// The event for a manifest stored (PUT answered 201) or deleted (DELETE answered 202).
/// Blob uploads are not events: an image is pushed when its manifest is.
fn accepted_change<B>(
    ctx: &RequestContext,
    caller: &caller::Caller,
    method: &Method,
    class: &Classified,
    response: &Response<B>,
) -> Option<Event> {
    if class.kind != Kind::Manifest {
        return None;
    }
    let action = match (method, response.status()) {
        (&Method::PUT, StatusCode::CREATED) => EventAction::Push,
        (&Method::DELETE, StatusCode::ACCEPTED) => EventAction::Delete,
        _ => return None,
    };
    let reference = class.reference?;
    // Tags cannot contain ':'; digests always do (`sha256:...`).
    let by_digest = reference.contains(':');
    Some(change_event(
        ctx,
        caller,
        action,
        class.repository?,
        (!by_digest).then_some(reference),
        content_digest(response.headers()).or_else(|| by_digest.then(|| reference.to_string())),
    ))
}

/// A change the registry accepted, from the API or the registry browser: remembered for the
/// activity page, and sent to the event receivers if there are any.
fn note_change(ctx: &RequestContext, event: Event) {
    let events = &ctx.snapshot.events;
    if !events.is_empty() {
        events.publish(event.clone());
    }
    ctx.shared.activity().record(event);
}

/// The event of a change the registry accepted, from the API or the registry browser.
fn change_event(
    ctx: &RequestContext,
    caller: &caller::Caller,
    action: EventAction,
    repository: &str,
    tag: Option<&str>,
    digest: Option<String>,
) -> Event {
    Event {
        action,
        repository: repository.to_string(),
        tag: tag.map(str::to_string),
        digest,
        actor: Actor {
            user: caller.identity.name().to_string(),
            token: caller.token_name().map(str::to_string),
            oidc_subject: caller.oidc_subject.clone(),
        },
        client: ctx.client_ip,
        time: std::time::SystemTime::now(),
        request_id: ctx.record.request_id.clone(),
    }
}

fn content_digest(headers: &HeaderMap) -> Option<String> {
    headers
        .get("docker-content-digest")?
        .to_str()
        .ok()
        .map(str::to_string)
}

/// One year, the value HSTS preload lists ask for; no `includeSubDomains`: the gate speaks
/// for its own host only.
const HSTS: &str = "max-age=31536000";

/// Liveness: the gate answers. Readiness: the registry behind it answers too.
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";

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
                    refusal: error::ProtectRefusal::Move,
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
