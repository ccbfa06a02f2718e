//! The path of one request, top to bottom: check the request's form, classify it (endpoint,
//! action, repository), authenticate, authorise, forward with rewritten headers, stream the
//! answer back; the access log line is written when the response body is done.
//!
//! Each step is a plain function that may answer early with a `GateError`; there are no
//! hooks. Classification comes before authentication so that an unclassifiable request is
//! refused without spending a password check on it, and nothing reaches `forward` that the
//! rules have not seen.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::auth::token::Claims;
use crate::auth::{Failure, Identity};
use crate::body::{ClientBody, ResponseBody, Settled};
use crate::catalog;
use crate::error::{Challenge, GateError, Side, API_VERSION, API_VERSION_HEADER};
use crate::forward::{self, ClientInfo};
use crate::log::AccessRecord;
use crate::registry_path::{self, Action, Classified, Kind};
use crate::rules::Decision;
use crate::state::{Shared, Snapshot};
use crate::token_service;

/// What the server knows about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The user a verified client certificate names (`[tls] client_identity`).
    pub cert_user: Option<Arc<str>>,
    /// The connection's activity, for its idle timeout.
    pub activity: Arc<crate::server::ConnActivity>,
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
    record.in_flight = Some(conn.activity.enter());
    let is_registry_api = is_registry_path(request.uri().path());
    let version = request.version();
    let (parts, incoming) = request.into_parts();
    let expects_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = ClientBody::new(incoming, record.exchange().clone(), expects_continue);
    let request = Request::from_parts(parts, ());

    let mut response = match proxy(&snapshot, &shared, &conn, &mut record, request, &mut body).await
    {
        Ok(response) => response,
        Err(e) => {
            crate::metrics::get().error(&e);
            match e.side() {
                Side::Client => {
                    tracing::debug!(request_id = %record.request_id, error = %e, "request refused")
                }
                Side::Upstream => {
                    tracing::warn!(request_id = %record.request_id, error = %e, "upstream error")
                }
            }
            e.to_response()
        }
    };
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
    headers
        .entry(header::STRICT_TRANSPORT_SECURITY)
        .or_insert(HeaderValue::from_static(HSTS));
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    record.status = Some(response.status());
    Ok(response.map(|body| body.with_record(record)))
}

async fn proxy(
    snapshot: &Snapshot,
    shared: &Shared,
    conn: &ConnInfo,
    record: &mut AccessRecord,
    request: Request<()>,
    body: &mut ClientBody,
) -> Result<Response<ResponseBody>, GateError> {
    // 0. Who may talk to the gate at all (health probes excepted: they reveal nothing, and a
    // container's own probe comes from loopback). The real client address, worked out once,
    // also keys the login throttle.
    let client_ip = crate::client_addr::client_ip(
        request.headers(),
        conn.peer,
        &snapshot.config.server.trusted_proxies,
    );
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
    check_target(&request)?;
    let host = public_host(&request)?;
    refuse_method_override(&request)?;

    // The gate's own endpoints; never forwarded.
    match request.uri().path() {
        HEALTHZ => {
            record.quiet = true;
            return Ok(plain(StatusCode::OK, "ok\n"));
        }
        READYZ => {
            record.quiet = true;
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
    if snapshot.tokens.is_some() && request.uri().path() == token_service::TOKEN_PATH {
        return token_service::answer(snapshot, shared, conn, client_ip, record, request, body)
            .await;
    }

    // 2. What it is: endpoint, action, repository. Anything unclassifiable stops here.
    let uri = request.uri().clone();
    let class = registry_path::classify(request.method(), uri.path(), uri.query())
        .map_err(GateError::Rejected)?;
    refuse_form_bodies(&request)?;
    record.action = Some(class.action.as_str());
    record.repository = class.repository.map(str::to_string);
    record.reference = class.reference.map(str::to_string);

    // 3. Who asks.
    let caller = authenticate(snapshot, shared, conn, client_ip, &request, &class).await?;
    let identity = &caller.identity;
    record.user = identity.name().to_string();

    // 4. May they.
    let mut path_and_query = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    authorise(snapshot, &caller, client_ip, &request, &class, record)?;
    if let Some(from) = &class.mount_from {
        if !snapshot
            .config
            .rules
            .decide(&identity.as_rule(), client_ip, from, Action::Pull)
            .is_allowed()
        {
            // Docker Hub's behaviour: a mount the user may not read from silently becomes a
            // plain upload, so the layer is sent instead of borrowed.
            path_and_query = catalog::without_mount(uri.path(), uri.query());
        }
    }

    // 5. Forward.
    let (mut parts, ()) = request.into_parts();
    parts.uri = snapshot.upstream.uri_for(&path_and_query)?;
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
    let exchange = record.exchange().clone();
    let upstream_request = Request::from_parts(parts, body.take());
    let response = snapshot
        .upstream
        .send(upstream_request, &exchange, bulk.as_ref())
        .await?;

    // 6. Respond.
    let (mut parts, body) = response.into_parts();
    forward::rewrite_response(&mut parts.headers, snapshot.upstream.origin(), &host);
    if class.kind == Kind::Catalog
        && snapshot.config.auth.filter_catalog
        && parts.status.is_success()
    {
        let rules = &snapshot.config.rules;
        let who = identity.as_rule();
        let filtered = catalog::filter(
            body,
            &mut parts.headers,
            &snapshot.upstream,
            &host,
            |repo| {
                rules
                    .decide(&who, client_ip, repo, Action::Pull)
                    .is_allowed()
            },
        )
        .await?;
        return Ok(Response::from_parts(parts, filtered));
    }
    let body = ResponseBody::upstream(body, exchange, snapshot.upstream.read_timeout(), bulk);
    Ok(Response::from_parts(parts, body))
}

/// Who is asking, and with what: the identity, and in token mode the token's claims.
pub struct Caller {
    pub identity: Identity,
    pub token: Option<Claims>,
}

/// Establishes the caller's identity from, in order: a bearer token (token mode), Basic
/// credentials, a verified client certificate; otherwise the caller is anonymous.
async fn authenticate(
    snapshot: &Snapshot,
    shared: &Shared,
    conn: &ConnInfo,
    peer: IpAddr,
    request: &Request<()>,
    class: &Classified<'_>,
) -> Result<Caller, GateError> {
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(GateError::BadRequest("more than one Authorization header"));
    }
    if let (Some(tokens), Some(token)) = (&snapshot.tokens, header.and_then(bearer)) {
        return match tokens.verify(token) {
            Some(claims) => Ok(Caller {
                identity: match claims.sub.as_str() {
                    "" => Identity::Anonymous,
                    user => Identity::User(user.to_string()),
                },
                token: Some(claims),
            }),
            // Expired or foreign: docker fetches a fresh token when challenged.
            None => Err(challenge(snapshot, request, class, false, "invalid_token")),
        };
    }
    // A verified client certificate identifies its holder unless they log in explicitly.
    if let (None, Some(user)) = (header, &conn.cert_user) {
        return Ok(Caller {
            identity: Identity::User(user.to_string()),
            token: None,
        });
    }
    let Some(auth) = &snapshot.auth else {
        return Ok(Caller {
            identity: Identity::Anonymous,
            token: None,
        });
    };
    match auth
        .authenticate(header.map(HeaderValue::as_bytes), peer, shared.throttle())
        .await
    {
        Ok(identity) => Ok(Caller {
            identity,
            token: None,
        }),
        Err(Failure::Throttled { retry_after }) => Err(GateError::Throttled(retry_after)),
        Err(failure) => {
            tracing::info!(peer = %peer, reason = failure.reason(), "authentication failed");
            Err(challenge(snapshot, request, class, false, failure.reason()))
        }
    }
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A 401 that tells the client how to authenticate for this request: Basic, or in token mode
/// a Bearer challenge naming the token endpoint and the scope this request needs.
fn challenge(
    snapshot: &Snapshot,
    request: &Request<()>,
    class: &Classified<'_>,
    insufficient_scope: bool,
    reason: &'static str,
) -> GateError {
    let auth = &snapshot.config.auth;
    let challenge = if snapshot.tokens.is_some() {
        let host = public_host(request)
            .ok()
            .and_then(|h| h.to_str().ok().map(str::to_string))
            .unwrap_or_default();
        Challenge::Bearer {
            realm: format!("https://{host}{}", token_service::TOKEN_PATH),
            service: auth.service.clone(),
            scope: scope_for(class),
            insufficient_scope,
        }
    } else {
        Challenge::Basic {
            realm: auth.realm.clone(),
        }
    };
    GateError::Unauthorized { challenge, reason }
}

/// The token scope a request needs, as docker asks for it (a push also needs pull).
fn scope_for(class: &Classified<'_>) -> Option<String> {
    match (class.kind, class.repository) {
        (Kind::Catalog, _) => Some("registry:catalog:*".into()),
        (_, Some(repo)) => Some(format!(
            "repository:{repo}:{}",
            match class.action {
                Action::Pull => "pull",
                Action::Push => "pull,push",
                Action::Delete => "delete",
            }
        )),
        _ => None,
    }
}

/// Applies read-only mode, the token's grants and the access rules to a classified request.
fn authorise(
    snapshot: &Snapshot,
    caller: &Caller,
    client_ip: std::net::IpAddr,
    request: &Request<()>,
    class: &Classified<'_>,
    record: &mut AccessRecord,
) -> Result<(), GateError> {
    let config = &snapshot.config;
    let identity = &caller.identity;
    let auth_on = snapshot.auth.is_some();
    if config.server.read_only && class.action != Action::Pull {
        record.decision = "deny";
        return Err(GateError::ReadOnly);
    }
    let Some(repository) = class.repository else {
        // The ping: anyone who authenticated (in token mode, any valid token, so that an
        // anonymous docker pull goes on to ask for a pull token). The catalog: a user.
        let authenticated = *identity != Identity::Anonymous
            || (class.kind == Kind::Ping && caller.token.is_some());
        if auth_on && !authenticated {
            return Err(challenge(snapshot, request, class, false, "missing"));
        }
        return Ok(());
    };
    let decision = config
        .rules
        .decide(&identity.as_rule(), client_ip, repository, class.action);
    if caller
        .token
        .as_ref()
        .is_some_and(|t| t.allows(repository, class.action))
    {
        // The rules were applied when the token was issued; a rule that denies now (a
        // reload, or a `from` rule and a token carried to another address) still wins.
        if let Decision::Deny { rule: Some(rule) } = decision {
            record.decision = "deny";
            record.rule = Some(rule);
            return Err(GateError::Denied {
                user: identity.name().to_string(),
                action: class.action,
                repository: repository.to_string(),
            });
        }
        record.decision = "allow";
        return Ok(());
    }
    match decision {
        Decision::Allow { rule } if caller.token.is_none() => {
            record.decision = "allow";
            record.rule = rule;
            Ok(())
        }
        Decision::Allow { rule } => {
            // Allowed, but this token was issued for less: docker asks for a wider one.
            record.decision = "deny";
            record.rule = rule;
            Err(challenge(
                snapshot,
                request,
                class,
                true,
                "insufficient_scope",
            ))
        }
        Decision::Deny { rule } => {
            record.decision = "deny";
            record.rule = rule;
            match identity {
                // No credentials at all: say how to authenticate.
                Identity::Anonymous if auth_on && caller.token.is_none() => {
                    Err(challenge(snapshot, request, class, false, "missing"))
                }
                // An anonymous token: a new token would be anonymous too, and a 401 only makes
                // docker retry for a minute. Only logging in helps, so say that.
                Identity::Anonymous => Err(GateError::Denied {
                    user: "anonymous users (log in first)".into(),
                    action: class.action,
                    repository: repository.to_string(),
                }),
                Identity::User(user) => Err(GateError::Denied {
                    user: user.clone(),
                    action: class.action,
                    repository: repository.to_string(),
                }),
            }
        }
    }
}

/// Headers by which some frameworks let a POST act as another method. The registry ignores
/// them, but a proxy or registry in between might not: a request carrying one is refused
/// rather than classified by a method it may not really have.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

fn refuse_method_override(request: &Request<()>) -> Result<(), GateError> {
    if METHOD_OVERRIDES
        .iter()
        .any(|h| request.headers().contains_key(*h))
    {
        return Err(GateError::BadRequest(
            "method-override headers are not accepted",
        ));
    }
    Ok(())
}

/// The registry reads `mount` and `from` with Go's `FormValue`, which also reads a form body
/// and prefers it to the query the rules saw. No registry client sends forms, so none pass.
fn refuse_form_bodies(request: &Request<()>) -> Result<(), GateError> {
    // Compared as bytes: Go still reads a form whose Content-Type has non-UTF-8 parameters.
    let form = request
        .headers()
        .get_all(header::CONTENT_TYPE)
        .iter()
        .any(|v| {
            let v = v.as_bytes().trim_ascii_start().to_ascii_lowercase();
            v.starts_with(b"application/x-www-form-urlencoded") || v.starts_with(b"multipart/")
        });
    if form {
        return Err(GateError::BadRequest(
            "form bodies are not accepted on the registry API",
        ));
    }
    Ok(())
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

/// Only origin-form targets (`/path?query`) are forwarded. Absolute-form (`GET http://x/`)
/// would let a client name a host the Host header contradicts; asterisk-form has no place in
/// the registry API.
fn check_target(request: &Request<()>) -> Result<(), GateError> {
    let uri = request.uri();
    let origin_form = match request.version() {
        // HTTP/2 always carries scheme and authority as pseudo-headers.
        Version::HTTP_2 => true,
        _ => uri.scheme().is_none() && uri.authority().is_none(),
    };
    if !origin_form {
        return Err(GateError::BadRequest(
            "absolute-form request targets are not accepted",
        ));
    }
    if !uri.path().starts_with('/') {
        return Err(GateError::BadRequest("the request target must be a path"));
    }
    Ok(())
}

/// The host the client addressed, which the registry needs to build upload URLs.
pub fn public_host(request: &Request<()>) -> Result<HeaderValue, GateError> {
    if let Some(host) = request.headers().get(header::HOST) {
        if request.headers().get_all(header::HOST).iter().count() > 1 {
            return Err(GateError::BadRequest("more than one Host header"));
        }
        // HTTP/2 names the host twice; two different answers is a malformed request
        // (RFC 9113 §8.3.1), not a choice for the gate to make.
        if request.version() == Version::HTTP_2 {
            if let Some(authority) = request.uri().authority() {
                if !authority
                    .as_str()
                    .eq_ignore_ascii_case(host.to_str().unwrap_or(""))
                {
                    return Err(GateError::BadRequest("Host and :authority disagree"));
                }
            }
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
