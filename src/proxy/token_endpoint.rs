//! The token endpoint of `[auth] mode = "token"` (`/token`): the distribution token spec's
//! `GET` with optional Basic credentials, and the OAuth2 `POST` form `docker login` tries
//! first. It grants, per requested repository, the requested actions the rules allow this
//! caller, and nothing else; a refused action is simply left out of the token, as Docker
//! Hub does, and the registry request that needs it is then refused.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::access_log::Verdict;
use super::body::ResponseBody;
use super::caller::{self, Caller};
use super::context::RequestContext;
use super::error::{Challenge, GateError};
use super::form::{self, FormError};
use crate::auth::token::{parse_scopes, Grant, Scope};
use crate::auth::{Identity, LoginFailure};
use crate::registry_path::{is_valid_repository_name, Action};
use crate::state::Snapshot;

/// An OAuth2 form is a few short fields; anything larger is not a login.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Answers a token request: a token for the granted scopes, or the reason there is none.
pub async fn answer(
    ctx: &mut RequestContext,
    request: Request<()>,
) -> Result<Response<ResponseBody>, GateError> {
    let snapshot = ctx.snapshot.clone();
    let peer = ctx.client_ip;
    let (Some(_), Some(tokens)) = (&snapshot.auth, &snapshot.tokens) else {
        // Loading refuses token mode without users; a snapshot like this is a bug.
        return Err(GateError::Internal("token mode without users"));
    };
    let (caller, scopes, oauth) = match *request.method() {
        Method::GET => {
            let scopes = form::query_values(request.uri().query(), "scope")
                .iter()
                .flat_map(|s| parse_scopes(s))
                .collect::<Vec<_>>();
            let header = request.headers().get(header::AUTHORIZATION);
            (caller::credentials(ctx, header).await, scopes, false)
        }
        Method::POST => {
            let form = form::read_small_form(ctx.body.take(), MAX_FORM_BYTES)
                .await
                .map_err(|e| {
                    GateError::BadRequest(match e {
                        FormError::Late => "token request form not sent in time",
                        FormError::TooLargeOrBroken => "token request form too large or broken",
                        FormError::NotUtf8 => "token request form is not UTF-8",
                    })
                })?;
            let form = form.as_str();
            if form::query_values(Some(form), "grant_type")
                .first()
                .map(String::as_str)
                != Some("password")
            {
                return Ok(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                ));
            }
            let user = form::query_values(Some(form), "username")
                .into_iter()
                .next()
                .unwrap_or_default();
            let password = form::query_values(Some(form), "password")
                .into_iter()
                .next()
                .unwrap_or_default();
            let scopes = form::query_values(Some(form), "scope")
                .iter()
                .flat_map(|s| parse_scopes(s))
                .collect();
            let caller = if user.is_empty() {
                Err(LoginFailure::Malformed)
            } else {
                caller::check_password(ctx, user, password.into_bytes()).await
            };
            (caller, scopes, true)
        }
        _ => {
            return Err(GateError::Unclassified(
                crate::registry_path::Refusal::MethodNotAllowed,
            ))
        }
    };

    let caller = match caller {
        Ok(caller) => caller,
        Err(failure) => {
            let reason = caller::login_failed(failure, peer, "token request with bad credentials")?;
            if oauth {
                return Ok(oauth_error(StatusCode::UNAUTHORIZED, "invalid_grant"));
            }
            return Err(GateError::Unauthorized {
                challenge: Challenge::Basic {
                    realm: snapshot.config.auth.realm.clone(),
                },
                reason,
            });
        }
    };
    ctx.record.user = caller.identity.name().to_string();
    ctx.record.token = caller.token_name().map(str::to_string);
    let access = grants(&snapshot, &caller, peer, &scopes);
    ctx.record.decision = Verdict::Allow;
    let user = match &caller.identity {
        Identity::User(u) => Some(u.as_str()),
        Identity::Anonymous => None,
    };
    let (token, _) = tokens.issue(
        user,
        caller.token_name(),
        caller.oidc_subject.as_deref(),
        access,
    );
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": tokens.ttl.as_secs(),
    })
    .to_string();
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Tokens are credentials: no cache may keep them.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The requested actions the caller may take (rules, and an access token's scope), per
/// requested repository.
fn grants(
    snapshot: &Snapshot,
    caller: &Caller,
    client: std::net::IpAddr,
    scopes: &[Scope],
) -> Vec<Grant> {
    let rules = &snapshot.config.rules;
    let mut out = Vec::new();
    for scope in scopes {
        if scope.kind != "repository" || !is_valid_repository_name(&scope.name) {
            continue;
        }
        let wanted: Vec<Action> = if scope.actions.iter().any(|a| a == "*") {
            Action::ALL.to_vec()
        } else {
            Action::ALL
                .into_iter()
                .filter(|a| scope.actions.iter().any(|w| w == a.as_str()))
                .collect()
        };
        let actions: Vec<String> = wanted
            .into_iter()
            .filter(|a| caller.may(rules, client, &scope.name, *a))
            .map(|a| a.as_str().to_string())
            .collect();
        if !actions.is_empty() {
            out.push(Grant {
                kind: "repository".into(),
                name: scope.name.clone(),
                actions,
            });
        }
    }
    out
}

fn oauth_error(status: StatusCode, error: &'static str) -> Response<ResponseBody> {
    let body = serde_json::json!({ "error": error }).to_string();
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
