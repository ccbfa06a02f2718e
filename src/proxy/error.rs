//! Errors that end a request inside the gate, and the one place that turns them into an HTTP
//! status and the registry's JSON error envelope.
//!
//! Docker and skopeo print the `message` of the first error in the envelope, so the messages
//! are written for the person at the terminal.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::filter;
use crate::proxy::body::ResponseBody;
use crate::registry_path::{self, Action};
use crate::rules::protect;
use crate::upstream::UpstreamError;

/// The registry API version header every `/v2/` response carries; docker checks it on the ping.
pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
pub const API_VERSION: &str = "registry/2.0";
/// The upload's id on every answer about a blob upload.
pub const UPLOAD_UUID_HEADER: &str = "docker-upload-uuid";

/// How a 401 tells the client to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`: docker then sends the password with every request.
    Basic { realm: String },
    /// The token spec's challenge: docker fetches a token from `realm` for `scope`.
    Bearer {
        realm: String,
        service: String,
        scope: Option<String>,
        /// The presented token was valid but did not grant this action.
        insufficient_scope: bool,
    },
}

impl Challenge {
    /// The `WWW-Authenticate` value. Realms, services and scopes are built from validated
    /// configuration and classified repository names, which hold no quotes.
    pub fn header_value(&self) -> String {
        match self {
            Challenge::Basic { realm } => format!("Basic realm=\"{realm}\""),
            Challenge::Bearer {
                realm,
                service,
                scope,
                insufficient_scope,
            } => {
                let mut v = format!("Bearer realm=\"{realm}\",service=\"{service}\"");
                if let Some(scope) = scope {
                    v.push_str(&format!(",scope=\"{scope}\""));
                }
                if *insufficient_scope {
                    v.push_str(",error=\"insufficient_scope\"");
                }
                v
            }
        }
    }
}

/// Who is at fault: decides the log level (debug for clients, warn for the registry, error
/// for the gate itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    /// The gate's own state is not what it must be; a bug or a broken deployment, never
    /// something a client can cause on purpose.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The request is malformed or not a form the gate will forward.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// `[filter]` turned the client away.
    #[error("refused by [filter]: {0:?}")]
    Filtered(filter::Refusal),
    /// The path or method is not one the gate can classify; never forwarded.
    #[error("{0}")]
    Unclassified(registry_path::Refusal),
    /// No (valid) credentials; the client is challenged.
    #[error("authentication required ({reason})")]
    Unauthorized {
        challenge: Challenge,
        reason: &'static str,
    },
    /// With `[auth] mode = "none"`, the registry refused the client's credentials (or their
    /// absence) to a read the gate made on the client's behalf; its challenge goes along.
    #[error("the registry refused the client's credentials ({status})")]
    RegistryRefused {
        status: StatusCode,
        challenge: Option<HeaderValue>,
    },
    /// Too many failed logins from this address.
    #[error("too many failed logins; retry after {0:?}")]
    Throttled(Duration),
    /// Authenticated, but the rules do not allow this.
    #[error("{user} may not {action} {repository}")]
    Denied {
        user: String,
        action: Action,
        repository: String,
    },
    /// `[server] read_only`: writes are refused.
    #[error("the registry is read-only")]
    ReadOnly,
    /// `[[protect]]`: the write would move or delete a protected tag. `protection` is the
    /// index of the protection that holds it.
    #[error("{repository}:{tag} is protected by protect[{protection}] ({refusal:?})")]
    Protected {
        repository: String,
        tag: String,
        protection: usize,
        refusal: protect::Refusal,
    },
    /// A manifest push that `[[protect]]` must read whole is larger than the registry would
    /// take anyway.
    #[error("the manifest is larger than {0} bytes")]
    ManifestTooLarge(usize),
    /// The client broke off its request body (reset or closed mid-upload); the registry's
    /// request was aborted with it.
    #[error("the client broke off its request body")]
    ClientAborted,
    /// The connection cancelled more requests than it completed and is being closed; what it
    /// still asks for is refused, not forwarded.
    #[error("the connection cancelled {cancelled} requests and completed {answered}; it is being closed")]
    Condemned { answered: u64, cancelled: u64 },
    /// The gate is at a limit of its own that protects its memory (the manifests read whole
    /// at once); the same request succeeds shortly.
    #[error("the gate is busy: {0}")]
    Busy(&'static str),
    /// No connection to the registry could be made.
    #[error("the registry behind the gate is unreachable: {0}")]
    UpstreamUnreachable(String),
    /// The registry accepted the request but went silent for longer than the read timeout.
    #[error("the registry behind the gate did not answer in time")]
    UpstreamTimeout,
    /// The exchange with the registry broke after it started.
    #[error("the registry behind the gate failed: {0}")]
    UpstreamFailed(String),
    /// A manifest DELETE by tag that the registry refused (distribution 2.8 deletes by digest
    /// only and answers `DIGEST_INVALID`, which tells a client nothing it can act on).
    #[error("{repository}:{tag}: the registry deletes manifests by digest only")]
    DeleteByTag { repository: String, tag: String },
    /// A digest in the path that is not `<algorithm>:<hex>` (the referrers API's 400).
    #[error("not a digest: {0}")]
    DigestInvalid(String),
    /// A `[[protect]]` write needs the fleet's write lock and the shared Redis cannot give
    /// it (unreachable, too slow, or another gate holds it too long): refused, never passed
    /// unchecked. The detail is for the log.
    #[error("the fleet's write lock is unavailable: {0}")]
    LockUnavailable(String),
    /// The gate cannot serve the request from its own state; the detail is for the log.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The browser: no such repository, tag or page, or one the caller may not pull. The two
    /// are one answer, so hidden names stay hidden.
    #[error("no such repository, tag or page, or not visible to the caller")]
    NotFound,
    /// The browser: a write (a delete) without a logged-in session, which carries the CSRF
    /// token a write needs.
    #[error("a browser write without a session")]
    NoSession,
    /// The browser: a form without the session's CSRF token, or posted from another site.
    #[error("a form without a valid CSRF token, or from another site")]
    CrossSiteForm,
    /// The browser: the registry behind the gate runs without deletes.
    #[error("the registry does not allow deletes")]
    DeletesDisabled,
    /// The browser: the tag points at another manifest than the one the delete confirmed.
    #[error("{repository}:{tag} moved after the delete was confirmed")]
    TagMoved { repository: String, tag: String },
    /// A chunk of a blob upload (`PATCH` with `Content-Range`) that does not start where the
    /// upload stands, or whose `Content-Range` cannot be read. Refused before its body is
    /// forwarded (2.8 would append it wherever the upload stands, and the blob would be
    /// wrong), with where the upload stands as the registry said it (`Range`, and the
    /// `Location` and `Docker-Upload-UUID` to go on with).
    #[error("an upload chunk with Content-Range {:?} does not start at the upload's end (Range {:?})", .0.content_range, .0.range)]
    ChunkOutOfOrder(Box<ChunkOutOfOrder>),
}

/// A chunk refused as out of order, and where its upload stands (boxed: the rest of
/// `GateError` is small, and every phase returns it).
#[derive(Debug)]
pub struct ChunkOutOfOrder {
    /// The chunk's `Content-Range`, as sent.
    pub content_range: HeaderValue,
    /// The registry's `Range` for the upload: `0-<last byte>`.
    pub range: HeaderValue,
    /// The registry's `Location` to go on with, at the gate's origin.
    pub location: Option<HeaderValue>,
    pub upload_uuid: Option<HeaderValue>,
}

/// The registry gave no answer: what the client hears of it, and on whose side it was.
impl From<UpstreamError> for GateError {
    fn from(e: UpstreamError) -> GateError {
        match e {
            UpstreamError::BadTarget => GateError::BadRequest("request target is not a valid URI"),
            UpstreamError::ClientAborted => GateError::ClientAborted,
            UpstreamError::Timeout => GateError::UpstreamTimeout,
            UpstreamError::Unreachable(detail) => GateError::UpstreamUnreachable(detail),
            UpstreamError::Failed(detail) => GateError::UpstreamFailed(detail),
        }
    }
}

impl GateError {
    pub fn side(&self) -> Side {
        match self {
            GateError::BadRequest(_)
            | GateError::Filtered(_)
            | GateError::Unclassified(_)
            | GateError::Unauthorized { .. }
            | GateError::RegistryRefused { .. }
            | GateError::Throttled(_)
            | GateError::Denied { .. }
            | GateError::ReadOnly
            | GateError::Protected { .. }
            | GateError::ManifestTooLarge(_)
            | GateError::ClientAborted
            | GateError::Condemned { .. }
            | GateError::Busy(_)
            | GateError::NotFound
            | GateError::NoSession
            | GateError::CrossSiteForm
            | GateError::DeletesDisabled
            | GateError::TagMoved { .. }
            | GateError::DeleteByTag { .. }
            | GateError::DigestInvalid(_)
            | GateError::ChunkOutOfOrder(_) => Side::Client,
            GateError::UpstreamUnreachable(_)
            | GateError::UpstreamTimeout
            | GateError::UpstreamFailed(_)
            | GateError::LockUnavailable(_) => Side::Upstream,
            GateError::Internal(_) => Side::Internal,
        }
    }

    /// Moves the metrics counter this error belongs to, if one does; metrics see labels only.
    pub fn count(&self) {
        let metrics = crate::metrics::get();
        match self {
            GateError::Unauthorized { reason, .. } => metrics.auth_failure(reason),
            GateError::Throttled(_) => metrics.throttled(),
            GateError::UpstreamUnreachable(_) => metrics.upstream_error("unreachable"),
            GateError::UpstreamTimeout => metrics.upstream_error("timeout"),
            GateError::UpstreamFailed(_) => metrics.upstream_error("failed"),
            GateError::Protected { refusal, .. } => metrics.protect_refusal(refusal.label()),
            _ => {}
        }
    }

    /// Why a request the rules allowed was still refused, for the access line's `reason`
    /// (`protect[0]:move`); `None` for any other error.
    pub fn access_reason(&self) -> Option<String> {
        match self {
            GateError::Protected {
                protection,
                refusal,
                ..
            } => Some(format!("protect[{protection}]:{}", refusal.label())),
            _ => None,
        }
    }

    /// Counts the error (`count`) and logs it at the level of its side: debug for a client's,
    /// warn for the registry's, error for the gate's own. The one place an error ending a
    /// request is logged, for the API and the browser alike.
    pub fn report(&self, request_id: &str) {
        self.count();
        match self.side() {
            Side::Client => tracing::debug!(request_id, error = %self, "request refused"),
            Side::Upstream => tracing::warn!(request_id, error = %self, "upstream error"),
            Side::Internal => tracing::error!(request_id, error = %self, "the gate failed"),
        }
    }

    /// Status and registry error code (from the distribution spec's code table).
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            GateError::BadRequest(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            // The recipe answers old clients 404; an address refused is plainly forbidden.
            GateError::Filtered(filter::Refusal::UserAgent) => {
                (StatusCode::NOT_FOUND, "UNSUPPORTED")
            }
            GateError::Filtered(filter::Refusal::Address) => (StatusCode::FORBIDDEN, "DENIED"),
            GateError::Unclassified(registry_path::Refusal::MethodNotAllowed) => {
                (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED")
            }
            GateError::Unclassified(registry_path::Refusal::InvalidName) => {
                (StatusCode::BAD_REQUEST, "NAME_INVALID")
            }
            GateError::Unclassified(registry_path::Refusal::NotNormalised(_)) => {
                (StatusCode::BAD_REQUEST, "UNSUPPORTED")
            }
            GateError::Unclassified(
                registry_path::Refusal::NotRegistryApi | registry_path::Refusal::UnknownEndpoint,
            ) => (StatusCode::NOT_FOUND, "UNSUPPORTED"),
            GateError::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            GateError::RegistryRefused { status, .. } if *status == StatusCode::UNAUTHORIZED => {
                (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
            }
            GateError::RegistryRefused { .. } => (StatusCode::FORBIDDEN, "DENIED"),
            GateError::Throttled(_) => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            GateError::Denied { .. } => (StatusCode::FORBIDDEN, "DENIED"),
            GateError::ReadOnly => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            // 409, not 403: the rules allowed the write, and whether it may happen depends on
            // the registry's state (the same manifest pushed again, or a new tag, passes). A
            // 403 would send the operator to [[rules]]; a conflict says the tag is taken.
            // Docker and skopeo print the message of any 4xx with the registry's envelope.
            GateError::Protected { .. } => (StatusCode::CONFLICT, "DENIED"),
            // distribution's own limit; the registry would refuse it too.
            GateError::ManifestTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID"),
            // A client that is gone rarely reads this; 400 says whose side it was in the log.
            GateError::ClientAborted => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            // 503 with Retry-After: a client misjudged retries on a new connection.
            GateError::Condemned { .. } => (StatusCode::SERVICE_UNAVAILABLE, "TOOMANYREQUESTS"),
            GateError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "TOOMANYREQUESTS"),
            GateError::UpstreamUnreachable(_) => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
            GateError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE"),
            GateError::UpstreamFailed(_) => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
            GateError::DeleteByTag { .. } => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            GateError::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            // 503 with Retry-After: nothing was written, and the same push succeeds once the
            // lock can be had again.
            GateError::LockUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            GateError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
            GateError::NotFound => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            GateError::NoSession | GateError::CrossSiteForm => (StatusCode::FORBIDDEN, "DENIED"),
            // What distribution itself answers a delete when deletes are off.
            GateError::DeletesDisabled => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            // As for a protected tag: the registry's state, not the rules, stands in the way.
            GateError::TagMoved { .. } => (StatusCode::CONFLICT, "DENIED"),
            // The spec's answer to a chunk out of order, with distribution's own code for it.
            GateError::ChunkOutOfOrder(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    /// The one mapping from a gate error to what the client receives. Details that would help
    /// an attacker map the inside (addresses, OS errors) go to the log, not the body.
    pub fn to_response(&self) -> Response<ResponseBody> {
        let (status, code) = self.status_and_code();
        let message = match self {
            GateError::BadRequest(why) => format!("bad request: {why}"),
            GateError::Filtered(filter::Refusal::UserAgent) => {
                "this client version is not supported; upgrade docker".into()
            }
            GateError::Filtered(filter::Refusal::Address) => {
                "access from your address is not allowed".into()
            }
            GateError::Unclassified(r) => r.to_string(),
            GateError::Unauthorized { .. } => "authentication required".into(),
            GateError::RegistryRefused { .. } => {
                "the registry refused these credentials for this repository".into()
            }
            GateError::Throttled(_) => {
                "too many failed logins from your address; try again later".into()
            }
            GateError::Denied {
                user,
                action,
                repository,
            } => {
                format!("access denied: {user} may not {action} {repository}")
            }
            GateError::ReadOnly => {
                "the registry is in read-only mode: pushes and deletes are disabled".into()
            }
            GateError::Protected {
                repository,
                tag,
                refusal,
                ..
            } => match refusal {
                protect::Refusal::Move => format!(
                    "{repository}:{tag} is a protected tag and already points to another manifest; push to a new tag instead"
                ),
                protect::Refusal::Delete => {
                    format!("{repository}:{tag} is a protected tag and cannot be deleted")
                }
                protect::Refusal::DeleteTagged => format!(
                    "this manifest is the protected tag {repository}:{tag} and cannot be deleted"
                ),
                protect::Refusal::DeleteChild => format!(
                    "this manifest is one platform of the protected tag {repository}:{tag} and cannot be deleted"
                ),
                protect::Refusal::DeleteBlob => format!(
                    "{repository} holds protected tags: its blobs cannot be deleted one by one (the registry's garbage collection removes unused ones)"
                ),
                protect::Refusal::Query => format!(
                    "{repository} holds protected tags: manifest writes with query parameters are refused"
                ),
            },
            GateError::ManifestTooLarge(limit) => format!(
                "the manifest is larger than {} MiB, the registry's limit",
                limit / (1024 * 1024)
            ),
            GateError::ClientAborted => "the request body was cut off before its end".into(),
            GateError::Condemned { .. } => {
                "this connection cancelled more requests than it completed and is being closed; retry on a new connection".into()
            }
            GateError::Busy(why) => format!("the gate is busy ({why}); retry shortly"),
            GateError::UpstreamUnreachable(_) => {
                "the registry behind the gate is unreachable".into()
            }
            GateError::UpstreamTimeout => {
                "the registry behind the gate did not answer in time".into()
            }
            GateError::UpstreamFailed(_) => "the registry behind the gate failed to answer".into(),
            GateError::DeleteByTag { repository, tag } => format!(
                "this registry deletes manifests by digest only: read the digest of {repository}:{tag} (HEAD /v2/{repository}/manifests/{tag}, header Docker-Content-Digest) and DELETE /v2/{repository}/manifests/<digest>, which removes every tag pointing to it; to remove only this tag, push another manifest to it or use the browser"
            ),
            GateError::DigestInvalid(_) => {
                "the digest in the path is not <algorithm>:<hex>, e.g. sha256: and 64 hex digits".into()
            }
            GateError::LockUnavailable(_) => {
                "this repository holds protected tags and the gates cannot agree on who writes it right now; nothing was written, retry shortly".into()
            }
            GateError::Internal(_) => "the gate failed to answer; its log says why".into(),
            GateError::NotFound => {
                "there is no such repository, tag or page, or you may not see it".into()
            }
            GateError::NoSession => "log in to the registry browser first".into(),
            GateError::CrossSiteForm => {
                "this form has expired or did not come from the gate's own pages".into()
            }
            GateError::DeletesDisabled => {
                "the registry behind the gate does not allow deletes".into()
            }
            GateError::TagMoved { repository, tag } => format!(
                "{repository}:{tag} points at another manifest than the one confirmed; review it and confirm again"
            ),
            GateError::ChunkOutOfOrder(chunk) => format!(
                "this chunk (Content-Range: {}) does not start where the upload stands (Range: {}); nothing was written: send the chunk that starts after the end of Range to the Location of this answer",
                String::from_utf8_lossy(chunk.content_range.as_bytes()),
                String::from_utf8_lossy(chunk.range.as_bytes())
            ),
        };
        let mut response = registry_error(status, code, &message);
        let headers = response.headers_mut();
        match self {
            GateError::Unauthorized { challenge, .. } => {
                if let Ok(v) = HeaderValue::from_str(&challenge.header_value()) {
                    headers.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            GateError::RegistryRefused {
                challenge: Some(challenge),
                ..
            } => {
                headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
            }
            GateError::Throttled(wait) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                );
            }
            GateError::Condemned { .. } | GateError::LockUnavailable(_) | GateError::Busy(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GateError::ChunkOutOfOrder(chunk) => {
                headers.insert(header::RANGE, chunk.range.clone());
                if let Some(location) = &chunk.location {
                    headers.insert(header::LOCATION, location.clone());
                }
                if let Some(uuid) = &chunk.upload_uuid {
                    headers.insert(UPLOAD_UUID_HEADER, uuid.clone());
                }
            }
            _ => {}
        }
        response
    }
}

/// A response in the registry's error envelope: `{"errors":[{"code","message","detail"}]}`.
pub fn registry_error(status: StatusCode, code: &str, message: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "errors": [{ "code": code, "message": message, "detail": null }]
    })
    .to_string();
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn parts(e: GateError) -> (StatusCode, serde_json::Value, Option<HeaderValue>) {
        let r = e.to_response();
        let status = r.status();
        let version = r.headers().get(API_VERSION_HEADER).cloned();
        let bytes = r.into_body().collect().await.expect("full body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).expect("json"),
            version,
        )
    }

    #[tokio::test]
    async fn each_error_maps_to_its_status_and_code() {
        let cases = [
            (GateError::BadRequest("x"), 400, "UNSUPPORTED"),
            (
                GateError::UpstreamUnreachable("refused".into()),
                502,
                "UNAVAILABLE",
            ),
            (GateError::UpstreamTimeout, 504, "UNAVAILABLE"),
            (
                GateError::UpstreamFailed("reset".into()),
                502,
                "UNAVAILABLE",
            ),
            (
                GateError::Unclassified(registry_path::Refusal::NotNormalised("//")),
                400,
                "UNSUPPORTED",
            ),
            (
                GateError::Unclassified(registry_path::Refusal::MethodNotAllowed),
                405,
                "UNSUPPORTED",
            ),
            (
                GateError::Unclassified(registry_path::Refusal::InvalidName),
                400,
                "NAME_INVALID",
            ),
            (
                GateError::Unclassified(registry_path::Refusal::UnknownEndpoint),
                404,
                "UNSUPPORTED",
            ),
            (
                GateError::Unclassified(registry_path::Refusal::NotRegistryApi),
                404,
                "UNSUPPORTED",
            ),
            (
                GateError::Unauthorized {
                    challenge: Challenge::Basic { realm: "r".into() },
                    reason: "missing",
                },
                401,
                "UNAUTHORIZED",
            ),
            (
                GateError::Throttled(Duration::from_secs(4)),
                429,
                "TOOMANYREQUESTS",
            ),
            (
                GateError::Denied {
                    user: "u".into(),
                    action: Action::Push,
                    repository: "a/b".into(),
                },
                403,
                "DENIED",
            ),
            (GateError::ReadOnly, 405, "UNSUPPORTED"),
            (
                GateError::Protected {
                    repository: "team/app".into(),
                    tag: "v1".into(),
                    protection: 0,
                    refusal: protect::Refusal::Move,
                },
                409,
                "DENIED",
            ),
            (
                GateError::ManifestTooLarge(4 << 20),
                413,
                "MANIFEST_INVALID",
            ),
            (GateError::ClientAborted, 400, "BLOB_UPLOAD_INVALID"),
            (
                GateError::Filtered(filter::Refusal::UserAgent),
                404,
                "UNSUPPORTED",
            ),
            (GateError::Filtered(filter::Refusal::Address), 403, "DENIED"),
            (GateError::NotFound, 404, "NAME_UNKNOWN"),
            (GateError::NoSession, 403, "DENIED"),
            (GateError::CrossSiteForm, 403, "DENIED"),
            (GateError::DeletesDisabled, 405, "UNSUPPORTED"),
            (
                GateError::TagMoved {
                    repository: "team/app".into(),
                    tag: "v1".into(),
                },
                409,
                "DENIED",
            ),
            (
                GateError::LockUnavailable("redis down".into()),
                503,
                "UNAVAILABLE",
            ),
            (
                GateError::DeleteByTag {
                    repository: "team/app".into(),
                    tag: "v1".into(),
                },
                400,
                "UNSUPPORTED",
            ),
            (GateError::DigestInvalid("x".into()), 400, "DIGEST_INVALID"),
            (GateError::Busy("x"), 503, "TOOMANYREQUESTS"),
            (
                GateError::ChunkOutOfOrder(Box::new(ChunkOutOfOrder {
                    content_range: HeaderValue::from_static("5-9"),
                    range: HeaderValue::from_static("0-9"),
                    location: None,
                    upload_uuid: None,
                })),
                416,
                "RANGE_INVALID",
            ),
        ];
        for (e, status, code) in cases {
            let (s, json, version) = parts(e).await;
            assert_eq!(s.as_u16(), status);
            assert_eq!(json["errors"][0]["code"], code);
            assert!(json["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
            assert_eq!(
                version.as_ref().map(|v| v.as_bytes()),
                Some(API_VERSION.as_bytes())
            );
        }
    }

    #[test]
    fn challenge_and_retry_after_headers() {
        let r = GateError::Unauthorized {
            challenge: Challenge::Basic {
                realm: "my registry".into(),
            },
            reason: "missing",
        }
        .to_response();
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Basic realm=\"my registry\""
        );
        let bearer = Challenge::Bearer {
            realm: "https://reg.example/token".into(),
            service: "registry-gate".into(),
            scope: Some("repository:a/b:pull,push".into()),
            insufficient_scope: true,
        };
        assert_eq!(
            bearer.header_value(),
            "Bearer realm=\"https://reg.example/token\",service=\"registry-gate\",scope=\"repository:a/b:pull,push\",error=\"insufficient_scope\""
        );
        let r = GateError::Throttled(Duration::from_secs(8)).to_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "8");
    }

    #[tokio::test]
    async fn a_condemned_connection_gets_503_and_a_retry() {
        let e = GateError::Condemned {
            answered: 0,
            cancelled: 51,
        };
        assert_eq!(e.side(), Side::Client);
        assert_eq!(e.to_response().headers()[header::RETRY_AFTER], "1");
        let (status, json, _) = parts(e).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json["errors"][0]["code"], "TOOMANYREQUESTS");
    }

    #[tokio::test]
    async fn a_chunk_out_of_order_tells_where_the_upload_stands() {
        let e = GateError::ChunkOutOfOrder(Box::new(ChunkOutOfOrder {
            content_range: HeaderValue::from_static("20-29"),
            range: HeaderValue::from_static("0-9"),
            location: Some(HeaderValue::from_static(
                "https://reg.example/v2/a/blobs/uploads/u?_state=s2",
            )),
            upload_uuid: Some(HeaderValue::from_static("u")),
        }));
        assert_eq!(e.side(), Side::Client);
        let r = e.to_response();
        assert_eq!(r.headers()[header::RANGE], "0-9");
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://reg.example/v2/a/blobs/uploads/u?_state=s2"
        );
        assert_eq!(r.headers()[UPLOAD_UUID_HEADER], "u");
        let (status, json, _) = parts(e).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        let message = json["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("20-29") && message.contains("0-9"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn read_only_message_says_so() {
        let (_, json, _) = parts(GateError::ReadOnly).await;
        assert!(json["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("read-only")));
    }

    #[tokio::test]
    async fn a_protected_tag_refusal_is_a_409_denied_naming_the_tag() {
        for (refusal, words) in [
            (protect::Refusal::Move, "already points to another manifest"),
            (protect::Refusal::Delete, "cannot be deleted"),
            (protect::Refusal::DeleteTagged, "cannot be deleted"),
            (
                protect::Refusal::DeleteChild,
                "one platform of the protected tag",
            ),
        ] {
            let e = GateError::Protected {
                repository: "team/app".into(),
                tag: "v1".into(),
                protection: 2,
                refusal,
            };
            assert_eq!(e.side(), Side::Client);
            let (status, json, _) = parts(e).await;
            assert_eq!(status, StatusCode::CONFLICT);
            assert_eq!(json["errors"][0]["code"], "DENIED");
            let message = json["errors"][0]["message"].as_str().unwrap_or_default();
            assert!(message.contains("team/app:v1"), "{message}");
            assert!(message.contains(words), "{message}");
            // The exempt users are configuration, not the client's business.
            assert!(!message.contains("protect["), "{message}");
        }
        let (_, json, _) = parts(GateError::ManifestTooLarge(4 << 20)).await;
        assert!(json["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("4 MiB")));
    }

    #[tokio::test]
    async fn each_upstream_error_keeps_its_answer() {
        let cases = [
            (UpstreamError::BadTarget, 400, Side::Client),
            (UpstreamError::ClientAborted, 400, Side::Client),
            (UpstreamError::Timeout, 504, Side::Upstream),
            (
                UpstreamError::Unreachable("refused".into()),
                502,
                Side::Upstream,
            ),
            (UpstreamError::Failed("reset".into()), 502, Side::Upstream),
        ];
        for (e, status, side) in cases {
            let e = GateError::from(e);
            assert_eq!(e.side(), side, "{e:?}");
            assert_eq!(e.status().as_u16(), status, "{e:?}");
        }
    }

    #[test]
    fn only_a_protect_refusal_has_an_access_reason() {
        let protected = GateError::Protected {
            repository: "team/app".into(),
            tag: "v1".into(),
            protection: 2,
            refusal: protect::Refusal::DeleteChild,
        };
        assert_eq!(
            protected.access_reason().as_deref(),
            Some("protect[2]:delete_child")
        );
        assert_eq!(GateError::ReadOnly.access_reason(), None);
        assert_eq!(GateError::UpstreamTimeout.access_reason(), None);
    }

    #[tokio::test]
    async fn upstream_details_stay_out_of_the_body() {
        let (_, json, _) = parts(GateError::UpstreamUnreachable(
            "connect 10.1.2.3:5000: refused".into(),
        ))
        .await;
        assert!(!json.to_string().contains("10.1.2.3"));
    }
}
