//! Who is asking and what they may do: the caller's identity from a bearer token, Basic
//! credentials or a client certificate, the 401 challenge that tells a client how to log
//! in, and the decision of read-only mode, token grants and access rules on a classified
//! request. The rules themselves are `crate::rules`'; this file only asks them.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::Request;

use super::context::RequestContext;
use super::error::{Challenge, GateError};
use super::state::Snapshot;
use super::{form, token_endpoint};
use crate::auth::token::Claims;
use crate::auth::{Failure, Identity};
use crate::registry_path::{Action, Classified, Kind};
use crate::rules::Decision;

/// Who is asking, and with what: the identity, and in token mode the token's claims.
pub struct Caller {
    pub identity: Identity,
    pub token: Option<Claims>,
}

/// Establishes the caller's identity from, in order: a bearer token (token mode), Basic
/// credentials, a verified client certificate; otherwise the caller is anonymous.
pub(super) async fn authenticate(
    ctx: &RequestContext,
    request: &Request<()>,
    class: &Classified<'_>,
) -> Result<Caller, GateError> {
    let snapshot = &ctx.snapshot;
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
    match credentials(ctx, header).await {
        Ok(identity) => Ok(Caller {
            identity,
            token: None,
        }),
        Err(failure) => {
            let reason = refused(failure, ctx.client_ip, "authentication failed")?;
            Err(challenge(snapshot, request, class, false, reason))
        }
    }
}

/// The identity an `Authorization` header (or its absence) proves: a verified client
/// certificate identifies its holder unless they log in explicitly; without users configured
/// everyone is anonymous. Shared by the registry API and the token endpoint's `GET`.
pub(super) async fn credentials(
    ctx: &RequestContext,
    header: Option<&HeaderValue>,
) -> Result<Identity, Failure> {
    if let (None, Some(user)) = (header, &ctx.conn.cert_user) {
        return Ok(Identity::User(user.to_string()));
    }
    match &ctx.snapshot.auth {
        Some(auth) => {
            auth.authenticate(
                header.map(HeaderValue::as_bytes),
                ctx.client_ip,
                ctx.shared.throttle(),
            )
            .await
        }
        None => Ok(Identity::Anonymous),
    }
}

/// A failed login: a throttled client gets its 429 at once; any other failure is logged with
/// its reason (never the credentials) and the reason handed back for the caller's answer.
pub(super) fn refused(
    failure: Failure,
    client: IpAddr,
    what: &'static str,
) -> Result<&'static str, GateError> {
    if let Failure::Throttled { retry_after } = failure {
        return Err(GateError::Throttled(retry_after));
    }
    tracing::info!(peer = %client, reason = failure.reason(), "{what}");
    Ok(failure.reason())
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
        let host = form::public_host(request)
            .ok()
            .and_then(|h| h.to_str().ok().map(str::to_string))
            .unwrap_or_default();
        Challenge::Bearer {
            realm: format!("https://{host}{}", token_endpoint::TOKEN_PATH),
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
pub(super) fn authorise(
    ctx: &mut RequestContext,
    caller: &Caller,
    request: &Request<()>,
    class: &Classified<'_>,
) -> Result<(), GateError> {
    let snapshot = &ctx.snapshot;
    let record = &mut ctx.record;
    let client_ip = ctx.client_ip;
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
