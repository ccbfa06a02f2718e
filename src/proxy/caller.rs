//! Who is asking and what they may do: the caller's identity from a bearer token, Basic
//! credentials (an access token's secret or a password) or a client certificate, the 401
//! challenge that tells a client how to log in, and the decision of read-only mode, token
//! grants, access token scopes and access rules on a classified request. The rules
//! themselves are `crate::rules`'; this file only asks them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::Request;

use super::access_log::Verdict;
use super::context::RequestContext;
use super::error::{Challenge, GateError};
use super::form;
use crate::auth::access_tokens::AccessToken;
use crate::auth::oidc::Oidc;
use crate::auth::token::Claims;
use crate::auth::token::TOKEN_PATH;
use crate::auth::{Identity, LoginFailure};
use crate::registry_path::{Action, Classified, Kind};
use crate::rules::{Decision, Rules};
use crate::state::Snapshot;

/// Who is asking, and with what: the identity, in token mode the bearer token's claims, and
/// the access token the caller logged in with.
pub struct Caller {
    /// For an access token: its owner, or `token:NAME` for a robot account.
    pub identity: Identity,
    pub token: Option<Claims>,
    pub access_token: Option<Arc<AccessToken>>,
    /// The `sub` claim of the OIDC ID token the caller logged in with.
    pub oidc_subject: Option<String>,
}

impl Caller {
    fn with(identity: Identity) -> Caller {
        Caller {
            identity,
            token: None,
            access_token: None,
            oidc_subject: None,
        }
    }

    /// Whether the caller may take `action` on `repository`, by its access token's scope and
    /// the rules. A robot account's scope is its whole permission; an owned token never
    /// does more than its owner may. Bearer token grants are `authorise`'s to add.
    pub fn may(&self, rules: &Rules, client: IpAddr, repository: &str, action: Action) -> bool {
        if let Some(token) = &self.access_token {
            if !token.allows(repository, action) {
                return false;
            }
            if token.owner.is_none() {
                return true;
            }
        }
        rules
            .decide(&self.identity.as_subject(), client, repository, action)
            .is_allowed()
    }

    /// Who `[[protect]]` asks about: an access token answers for itself (`token:NAME`),
    /// owned or not. A credential scoped for a pipeline must not move release tags because
    /// the person who made it is exempt; an operator who wants that exempts the token.
    pub fn protect_subject(&self) -> crate::rules::Subject<'_> {
        match &self.access_token {
            Some(token) => crate::rules::Subject::User(&token.account),
            None => self.identity.as_subject(),
        }
    }

    /// The access token's name, for the access log and events.
    pub fn token_name(&self) -> Option<&str> {
        self.access_token.as_deref().map(|t| t.name.as_str())
    }
}

/// Establishes the caller's identity from, in order: a bearer token (token mode), Basic
/// credentials, a verified client certificate; otherwise the caller is anonymous.
pub(crate) async fn authenticate(
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
        let Some(claims) = tokens.verify(token) else {
            // Expired or foreign: docker fetches a fresh token when challenged.
            return Err(challenge(snapshot, request, class, false, "invalid_token"));
        };
        // Issued for an access token: good only while that token is.
        let access_token = match &claims.tok {
            None => None,
            Some(name) => match usable_access_token(ctx, name) {
                Ok(token) => Some(token),
                Err(reason) => return Err(challenge(snapshot, request, class, false, reason)),
            },
        };
        return Ok(Caller {
            identity: match claims.sub.as_str() {
                "" => Identity::Anonymous,
                user => Identity::User(user.to_string()),
            },
            oidc_subject: claims.oidc.clone(),
            token: Some(claims),
            access_token,
        });
    }
    match credentials(ctx, header).await {
        Ok(caller) => Ok(caller),
        Err(failure) => {
            let reason = login_failed(failure, ctx.client_ip, "authentication failed")?;
            Err(challenge(snapshot, request, class, false, reason))
        }
    }
}

/// The caller an `Authorization` header (or its absence) proves: a verified client
/// certificate identifies its holder unless they log in explicitly; without users configured
/// everyone is anonymous. Shared by the registry API and the token endpoint's `GET`.
pub(crate) async fn credentials(
    ctx: &RequestContext,
    header: Option<&HeaderValue>,
) -> Result<Caller, LoginFailure> {
    let Some(header) = header else {
        return Ok(Caller::with(match &ctx.conn.cert_user {
            Some(user) => Identity::User(user.to_string()),
            None => Identity::Anonymous,
        }));
    };
    if ctx.snapshot.auth.is_none() {
        return Ok(Caller::with(Identity::Anonymous));
    }
    let (user, password) =
        crate::auth::parse_basic(header.as_bytes()).ok_or(LoginFailure::Malformed)?;
    check_password(ctx, user, password).await
}

/// Checks a user name and password (a Basic header's, or the token endpoint's form): an
/// access token's secret first, which costs one HMAC, then the htpasswd users. With an
/// access token the user name is not looked at: CI systems and Kubernetes pull secrets put
/// anything there.
pub(crate) async fn check_password(
    ctx: &RequestContext,
    user: String,
    password: Vec<u8>,
) -> Result<Caller, LoginFailure> {
    let snapshot = &ctx.snapshot;
    let Some(auth) = &snapshot.auth else {
        return Ok(Caller::with(Identity::Anonymous));
    };
    if let Some(token) = snapshot
        .access_tokens
        .as_ref()
        .and_then(|tokens| tokens.find(&password))
    {
        let token = usable_access_token(ctx, &token.name)
            .map_err(|reason| LoginFailure::BadToken { reason })?;
        crate::metrics::get().token_used(&token.name);
        return Ok(Caller {
            identity: Identity::User(token.principal()),
            token: None,
            access_token: Some(token),
            oidc_subject: None,
        });
    }
    if let Some(oidc) = &snapshot.oidc {
        if Oidc::looks_like_jwt(&password) {
            // A CI job's ID token: verified against its issuer, never tried as a password.
            let token = String::from_utf8_lossy(&password);
            return match oidc.verify(&token).await {
                Ok(verified) => Ok(Caller {
                    identity: Identity::User(verified.user),
                    token: None,
                    access_token: None,
                    oidc_subject: Some(verified.subject),
                }),
                Err(unverified) => {
                    tracing::info!(
                        peer = %ctx.client_ip,
                        reason = unverified.reason,
                        detail = %unverified.detail,
                        "OIDC token refused"
                    );
                    Err(LoginFailure::BadToken {
                        reason: unverified.reason,
                    })
                }
            };
        }
    }
    auth.check_password(user, password, ctx.client_ip, ctx.kit.throttle())
        .await
        .map(Caller::with)
}

/// The caller a browser session names, if they may still log in: the access token it was
/// opened with must still be usable, and a user must still be in the htpasswd files with
/// the password they logged in with, so revoking the token, removing the user or changing
/// the password ends the session at its next request.
pub(crate) fn from_session(
    ctx: &RequestContext,
    user: &str,
    access_token: Option<&str>,
    stamp: Option<&str>,
) -> Option<Caller> {
    match access_token {
        Some(name) => {
            let token = usable_access_token(ctx, name).ok()?;
            Some(Caller {
                identity: Identity::User(token.principal()),
                token: None,
                access_token: Some(token),
                oidc_subject: None,
            })
        }
        None => ctx
            .snapshot
            .auth
            .as_ref()?
            .password_stamp(user)
            .filter(|current| Some(current.as_str()) == stamp)
            .map(|_| Caller::with(Identity::User(user.to_string()))),
    }
}

/// The access token `name` if it may be used now; otherwise the reason, logged with the
/// token's name (its secret is never at hand here). A use is recorded for `token list`.
fn usable_access_token(ctx: &RequestContext, name: &str) -> Result<Arc<AccessToken>, &'static str> {
    let snapshot = &ctx.snapshot;
    let Some(token) = snapshot
        .access_tokens
        .as_ref()
        .and_then(|tokens| tokens.get(name))
    else {
        tracing::info!(token = %name, peer = %ctx.client_ip, "access token refused: it is no longer in the token file");
        return Err("token_unknown");
    };
    let now = SystemTime::now();
    if let Some(unusable) = token.unusable(now) {
        let (what, at) = match unusable {
            crate::auth::access_tokens::Unusable::Revoked(at) => ("revoked", at),
            crate::auth::access_tokens::Unusable::Expired(at) => ("expired", at),
        };
        tracing::info!(
            token = %token.name,
            peer = %ctx.client_ip,
            at = %humantime::format_rfc3339_seconds(at),
            "access token refused: it was {what}"
        );
        return Err(unusable.reason());
    }
    if let Some(owner) = &token.owner {
        // The owner's rules bind the token; an owner removed from the users takes their
        // tokens along.
        if !snapshot.auth.as_ref().is_some_and(|a| a.has_user(owner)) {
            tracing::info!(token = %token.name, owner = %owner, peer = %ctx.client_ip, "access token refused: its owner is no longer a user");
            return Err("token_owner_unknown");
        }
    }
    ctx.kit.last_used().record(&token.name, now);
    Ok(token.clone())
}

/// A failed login: a throttled client gets its 429 at once; any other failure is logged with
/// its reason (never the credentials) and the reason handed back for the caller's answer.
pub(crate) fn login_failed(
    failure: LoginFailure,
    client: IpAddr,
    what: &'static str,
) -> Result<&'static str, GateError> {
    if let LoginFailure::Throttled { retry_after } = failure {
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
            realm: format!("https://{host}{TOKEN_PATH}"),
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

/// What phase 4 decided: the verdict and the `[[rules]]` entry behind it, for the access
/// line, and the error the client gets when the answer is no. A value, so that the access
/// record is filled in one place (`proxy::api`), not by the phase.
pub(crate) struct Authorisation {
    pub verdict: Verdict,
    pub rule: Option<usize>,
    refusal: Option<GateError>,
}

impl Authorisation {
    fn allow(rule: Option<usize>) -> Authorisation {
        Authorisation {
            verdict: Verdict::Allow,
            rule,
            refusal: None,
        }
    }

    fn deny(rule: Option<usize>, refusal: GateError) -> Authorisation {
        Authorisation {
            verdict: Verdict::Deny,
            rule,
            refusal: Some(refusal),
        }
    }

    /// No rule was asked (the ping, the catalog): the request goes on unless it must log in.
    fn undecided(refusal: Option<GateError>) -> Authorisation {
        Authorisation {
            verdict: Verdict::Undecided,
            rule: None,
            refusal,
        }
    }

    /// Whether the request goes on: `Ok`, or the refusal, handed over once.
    pub fn result(&mut self) -> Result<(), GateError> {
        self.refusal.take().map_or(Ok(()), Err)
    }
}

/// Phase 4, authorise: read-only mode, the token's grants and the access rules applied to a
/// classified request. Returns the decision, with the error the client gets when it is no.
pub(crate) fn authorise(
    ctx: &RequestContext,
    caller: &Caller,
    request: &Request<()>,
    class: &Classified<'_>,
) -> Authorisation {
    let snapshot = &ctx.snapshot;
    let client_ip = ctx.client_ip;
    let config = &snapshot.config;
    let identity = &caller.identity;
    let auth_on = snapshot.auth.is_some();
    if config.server.read_only && class.action != Action::Pull {
        return Authorisation::deny(None, GateError::ReadOnly);
    }
    let Some(repository) = class.repository else {
        // The ping: anyone who authenticated (in token mode, any valid token, so that an
        // anonymous docker pull goes on to ask for a pull token). The catalog: a user (an
        // access token's scope is about repositories; the catalog is filtered by it).
        let authenticated = *identity != Identity::Anonymous
            || (class.kind == Kind::Ping && caller.token.is_some());
        if auth_on && !authenticated {
            return Authorisation::undecided(Some(challenge(
                snapshot, request, class, false, "missing",
            )));
        }
        return Authorisation::undecided(None);
    };
    if let Some(token) = &caller.access_token {
        if !token.allows(repository, class.action) {
            return Authorisation::deny(
                None,
                GateError::Denied {
                    user: format!("access token {:?}", token.name),
                    action: class.action,
                    repository: repository.to_string(),
                },
            );
        }
    }
    let decision = match &caller.access_token {
        // A robot account: its scope, checked above, is its whole permission; a bearer
        // token must still carry the grant, as below.
        Some(token) if token.owner.is_none() => Decision::Allow { rule: None },
        _ => config
            .rules
            .decide(&identity.as_subject(), client_ip, repository, class.action),
    };
    if caller
        .token
        .as_ref()
        .is_some_and(|t| t.allows(repository, class.action))
    {
        // The rules were applied when the token was issued; a rule that denies now (a
        // reload, or a `from` rule and a token carried to another address) still wins.
        if let Decision::Deny { rule: Some(rule) } = decision {
            return Authorisation::deny(
                Some(rule),
                GateError::Denied {
                    user: identity.name().to_string(),
                    action: class.action,
                    repository: repository.to_string(),
                },
            );
        }
        return Authorisation::allow(None);
    }
    match decision {
        Decision::Allow { rule } if caller.token.is_none() => Authorisation::allow(rule),
        Decision::Allow { rule } => {
            // Allowed, but this token was issued for less: docker asks for a wider one.
            Authorisation::deny(
                rule,
                challenge(snapshot, request, class, true, "insufficient_scope"),
            )
        }
        Decision::Deny { rule } => Authorisation::deny(
            rule,
            match identity {
                // No credentials at all: say how to authenticate.
                Identity::Anonymous if auth_on && caller.token.is_none() => {
                    challenge(snapshot, request, class, false, "missing")
                }
                // An anonymous token: a new token would be anonymous too, and a 401 only makes
                // docker retry for a minute. Only logging in helps, so say that.
                Identity::Anonymous => GateError::Denied {
                    user: "anonymous users (log in first)".into(),
                    action: class.action,
                    repository: repository.to_string(),
                },
                Identity::User(user) => GateError::Denied {
                    user: user.clone(),
                    action: class.action,
                    repository: repository.to_string(),
                },
            },
        ),
    }
}
