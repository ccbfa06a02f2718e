//! The registry API's path, top to bottom, like a phase chart. The front (`front`) has done
//! phase 1, admit (who may talk to the gate at all, and the request's form), and routed the
//! request here; `api` then runs 2 classify (endpoint, action, repository), 3 authenticate,
//! 4 authorise, 5 guard tags (`[[protect]]`), 6 forward with rewritten headers (and hand a
//! push or delete the registry accepted to the event receivers), 7 respond, streaming the
//! answer back. The access log line is written when the response body is done. The same
//! numbers are used in `docs/architecture.md`.
//!
//! Each phase is a plain function that returns what it decided (the `Classified` request,
//! the `Caller`, the `Authorisation`, the write lock, the `Forwarded` answer) or answers
//! early with a `GateError`; there are no hooks. The access record is filled once, in `api`,
//! from those values and the error that ended the phases (`Returned::fill`); no phase
//! writes it. Classification comes before authentication so that an unclassifiable request is
//! refused without spending a password check on it, and nothing reaches the upstream client
//! that the rules have not seen. The rooms beside this file:
//!
//! - `context`: the per-request context.
//! - `form`: the request-form checks of phase 1 (called by the front), and the form reader.
//! - `caller`: phases 3 and 4, who asks and what they may do.
//! - `registry`: the one client of the registry's API for the gate's own reads.
//! - `headers`: forwarded headers and hop-by-hop removal, both ways.
//! - `body`: the client's body until forwarded, and the streaming response body.
//! - `catalog`: per-caller rewrites of the catalog listing and of cross-repository mounts.
//! - `media_types`: the manifest media types read in registry answers.
//! - `protect`: phase 5, guard tags (`[[protect]]`), refusing writes that would move or delete a
//!   protected tag.
//! - `referrers`: the OCI 1.1 referrers API, answered by the gate, and the index it keeps
//!   of each manifest's referrers (phases 6 and 7 for a manifest with a `subject`).
//! - `tags`: the tag listing sorted and paged (`n`, `last`, `Link`) by the gate, in phase 6.
//! - `uploads`: phase 6's check that an upload chunk starts where the upload stands.
//! - `token_endpoint`: the `/token` endpoint of token mode (routed to by the front).
//! - `access_log`: the access record, written when the response is done.
//! - `error`: gate errors, their side, status and the registry JSON error body.
//! - `write_locks`: `[[protect]]`'s per-repository locks, kept in `front::Features`.
//!
//! Below this floor: the snapshot requests are served from and its reload (`crate::state`,
//! with the activity ring), and the pooled client to the registry with one exchange's
//! progress (`crate::upstream`).

pub mod access_log;
pub mod body;
pub(crate) mod caller;
pub mod catalog;
pub mod context;
pub mod error;
pub(crate) mod form;
pub mod headers;
mod media_types;
pub(crate) mod protect;
pub(crate) mod referrers;
pub mod registry;
pub(crate) mod tags;
pub mod token_endpoint;
pub(crate) mod uploads;
pub(crate) mod write_locks;

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::conn::send_budget::Reservation;
use crate::events::{Actor, Event, EventAction};
use crate::registry_path::{self, Action, Classified, Kind};
use crate::upstream::exchange::Exchange;
use crate::upstream::BulkSlot;
use access_log::{AccessRecord, Verdict};
use body::ResponseBody;
use caller::{Authorisation, Caller};
use context::RequestContext;
use error::GateError;
use headers::ClientInfo;

/// The registry API's phases for a request the front has admitted and routed here (`host` is
/// its public host), and the access record filled, once, from what they returned.
pub(crate) async fn api(
    ctx: &mut RequestContext,
    request: Request<()>,
    host: HeaderValue,
) -> Result<Response<ResponseBody>, GateError> {
    let uri = request.uri().clone();
    let mut returned = Returned::default();
    let answer = phases(ctx, request, &uri, &host, &mut returned).await;
    returned.fill(&mut ctx.record, answer.as_ref().err());
    answer
}

/// Phases 2 to 7 in order, each a function that returns what it decided and may answer
/// early with an error. What the access line needs of their values is kept in `returned`.
async fn phases<'u>(
    ctx: &mut RequestContext,
    request: Request<()>,
    uri: &'u Uri,
    host: &HeaderValue,
    returned: &mut Returned<'u>,
) -> Result<Response<ResponseBody>, GateError> {
    // 2. Classify: endpoint, action, repository. Anything unclassifiable stops here; so does
    // a form body, which the registry would read and the classifier never sees.
    let class = &*returned.class.insert(classify(request.method(), uri)?);
    form::refuse_form_bodies(&request)?;
    // 3. Authenticate: who asks.
    let caller = &*returned
        .caller
        .insert(caller::authenticate(ctx, &request, class).await?);
    // 4. Authorise: may they, and where the request goes.
    let authorisation = returned
        .authorisation
        .insert(caller::authorise(ctx, caller, &request, class));
    authorisation.result()?;
    let target = target(ctx, caller, class, uri);
    // 5. Guard tags: a manifest write the rules allowed may still not move or delete a
    // protected tag. The lock it may hand back is held until the registry has answered.
    let write_lock =
        protect::guard_tags(ctx, &request, class, &caller.protect_subject(), host).await?;
    // The referrers API, which registry 2.8 lacks, is the gate's own answer.
    if class.kind == Kind::Referrers {
        return referrers::answer(ctx, &request, class, host).await;
    }
    // A manifest with a `subject`, pushed or deleted, changes its subject's referrers.
    let referrer = referrers::change_of(ctx, &request, class, host).await?;
    let request_head = referrer.as_ref().map(|_| clone_head(&request));
    // 6. Forward, and hand a change the registry accepted to the activity ring and events.
    // The gate answers itself where registry 2.8 falls short of the OCI spec: an upload
    // chunk out of order (`uploads`), a tags listing (`tags`).
    uploads::check_chunk(ctx, &request, class, &target, host).await?;
    if let Some(listing) = tags::answer(ctx, &request, class, host).await? {
        return Ok(listing);
    }
    let mut forwarded = forward(ctx, request, class, caller, &target, host).await?;
    // The referrer's entry is written (under the write lock, which `[[protect]]` may hold
    // already) before the client hears that its push was accepted.
    if let (Some(change), Some(head)) = (referrer, request_head) {
        referrers::apply(
            ctx,
            &head,
            change,
            &mut forwarded.response,
            write_lock,
            host,
        )
        .await;
    } else {
        drop(write_lock);
    }
    // 7. Respond.
    respond(ctx, forwarded, class, caller, host).await
}

/// The method, URI and headers of a request, for a step after the request itself went on.
fn clone_head(request: &Request<()>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = request.method().clone();
    *head.uri_mut() = request.uri().clone();
    *head.headers_mut() = request.headers().clone();
    head
}

/// What the phases returned that the access line tells: the classified request (phase 2),
/// the caller (3), the authorisation (4); a `[[protect]]` refusal (5) is the error itself.
#[derive(Default)]
struct Returned<'u> {
    class: Option<Classified<'u>>,
    caller: Option<Caller>,
    authorisation: Option<Authorisation>,
}

impl Returned<'_> {
    /// The one place the API's access record is filled: from the phases' values, and from
    /// the error that ended them, if one did.
    fn fill(&self, record: &mut AccessRecord, error: Option<&GateError>) {
        if let Some(class) = &self.class {
            record.action = Some(class.action.as_str());
            record.repository = class.repository.map(str::to_string);
            record.reference = class.reference.map(str::to_string);
        }
        if let Some(caller) = &self.caller {
            record.user = caller.identity.name().to_string();
            record.token = caller.token_name().map(str::to_string);
        }
        if let Some(authorisation) = &self.authorisation {
            record.decision = authorisation.verdict;
            record.rule = authorisation.rule;
        }
        if let Some(reason) = error.and_then(GateError::access_reason) {
            // Allowed by the rules, refused by `[[protect]]`.
            record.decision = Verdict::Deny;
            record.reason = Some(reason);
        }
    }
}

/// Phase 2, classify: method, path and query to endpoint, action, repository and reference.
fn classify<'u>(method: &Method, uri: &'u Uri) -> Result<Classified<'u>, GateError> {
    registry_path::classify(method, uri.path(), uri.query()).map_err(GateError::Unclassified)
}

/// The path and query the registry is asked for (phase 4): the client's, except that a
/// cross-repository mount from a repository the caller may not pull becomes a plain upload
/// (Docker Hub's behaviour), so the layer is sent instead of borrowed.
fn target(ctx: &RequestContext, caller: &Caller, class: &Classified<'_>, uri: &Uri) -> String {
    if let Some(from) = &class.mount_from {
        if !caller.may(
            &ctx.snapshot.config.rules,
            ctx.client_ip,
            from,
            Action::Pull,
        ) {
            return catalog::without_mount(uri.path(), uri.query());
        }
    }
    uri.path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into())
}

/// What phase 6 hands to phase 7: the registry's answer, and what its body keeps while it
/// streams back (the exchange's progress, a bulk slot, a place in the HTTP/2 send budget).
struct Forwarded {
    response: Response<Incoming>,
    exchange: Arc<Exchange>,
    bulk: Option<BulkSlot>,
    reservation: Option<Reservation>,
}

/// Phase 6, forward: the request to the registry with rewritten headers and the client's
/// body streamed; then, as soon as the registry's answer says it accepted a push or delete,
/// the change is remembered and told to the event receivers: whatever happens to the rest
/// of this response, the change is made.
async fn forward(
    ctx: &mut RequestContext,
    request: Request<()>,
    class: &Classified<'_>,
    caller: &Caller,
    target: &str,
    host: &HeaderValue,
) -> Result<Forwarded, GateError> {
    let snapshot = ctx.snapshot.clone();
    // Over HTTP/2 an answer with a body first takes its stream's place in the send budget,
    // waiting while its connection's share or the whole is spent: a client that opens
    // hundreds of streams and stops reading holds that, not the gate's memory.
    let reservation = ctx.h2_send_reservation(&request).await;
    let (mut parts, ()) = request.into_parts();
    parts.uri = snapshot.upstream.uri_for(target)?;
    // The registry speaks HTTP/1.1 whatever the client used.
    parts.version = Version::HTTP_11;
    headers::rewrite_request(
        &mut parts.headers,
        host,
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
    // The browser's activity page keeps it whether or not receivers exist.
    if let Some(event) = accepted_change(ctx, caller, &method, class, &response) {
        note_change(ctx, event).await;
    }
    Ok(Forwarded {
        response,
        exchange,
        bulk,
        reservation,
    })
}

/// Phase 7, respond: the registry's answer with `Location` moved to the public origin,
/// streamed back; a catalog listing cut to the repositories the caller may pull.
async fn respond(
    ctx: &RequestContext,
    forwarded: Forwarded,
    class: &Classified<'_>,
    caller: &Caller,
    host: &HeaderValue,
) -> Result<Response<ResponseBody>, GateError> {
    let snapshot = &ctx.snapshot;
    let Forwarded {
        response,
        exchange,
        bulk,
        reservation,
    } = forwarded;
    let (mut parts, body) = response.into_parts();
    if parts.status == StatusCode::BAD_REQUEST
        && class.kind == Kind::Manifest
        && class.action == Action::Delete
    {
        // A tag, not a digest (tags cannot hold ':'): 2.8's `DIGEST_INVALID` becomes an
        // answer that says what to do. A registry that deletes tags never gets here.
        if let (Some(repository), Some(tag)) = (class.repository, class.reference) {
            if !tag.contains(':') {
                return Err(GateError::DeleteByTag {
                    repository: repository.to_string(),
                    tag: tag.to_string(),
                });
            }
        }
    }
    headers::rewrite_response(&mut parts.headers, snapshot.upstream.origin(), host);
    if class.kind == Kind::Catalog
        && snapshot.config.auth.filter_catalog
        && parts.status.is_success()
    {
        let rules = &snapshot.config.rules;
        let registry = registry::Registry::new(snapshot.upstream.clone(), host.clone());
        let filtered = catalog::filter(body, &mut parts.headers, &registry, |repo| {
            caller.may(rules, ctx.client_ip, repo, Action::Pull)
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
    caller: &Caller,
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
///
/// With `[cluster]` the event is in the fleet's journal before this returns, so before the
/// client gets its answer (`events::journal`).
pub(crate) async fn note_change(ctx: &RequestContext, event: Event) {
    let events = &ctx.snapshot.events;
    if !events.is_empty() {
        events.record(event.clone()).await;
    }
    ctx.kit.activity().record(event);
}

/// The event of a change the registry accepted, from the API or the registry browser.
pub(crate) fn change_event(
    ctx: &RequestContext,
    caller: &Caller,
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
