//! CORS for registry UIs on other origins (`[ui] cors_origins`): the preflight answer and
//! the `Access-Control-*` headers of every answer to a listed origin.
//!
//! Only the registry API (`/v2/…`) and the token endpoint are shared, and only with origins
//! listed exactly: never `*`, since the answers carry credentials. A preflight is answered by
//! the gate itself (it carries no credentials, and the registry would refuse `OPTIONS`), so
//! it never reaches the registry. Everything else — who may see what — stays with the rules:
//! CORS only lets a listed page read answers its user could read anyway.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::proxy::body::ResponseBody;

/// Methods a registry UI uses: listings and manifests, deletes, and uploads for the odd UI
/// that pushes.
const ALLOW_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";
/// Request headers such a UI sends: credentials, and the headers of manifest requests and
/// uploads.
const ALLOW_HEADERS: &str = "Authorization, Accept, Content-Type, Content-Range, Range";
/// Answer headers a UI needs to read: the digest of a manifest (to delete it), the challenge
/// (to log in), pagination, and where an upload continues.
const EXPOSE_HEADERS: &str =
    "Docker-Content-Digest, WWW-Authenticate, Link, Location, Docker-Distribution-Api-Version, Docker-Upload-UUID, Range";
/// How long a browser may reuse a preflight answer: ten minutes, as Chromium caps it anyway.
const MAX_AGE_SECS: &str = "600";

/// The request's `Origin` when it is listed and the path is one CORS applies to.
pub fn allowed_origin(origins: &[String], headers: &HeaderMap, path: &str) -> Option<HeaderValue> {
    if origins.is_empty() || !shared_path(path) {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(text))
        .then(|| origin.clone())
}

fn shared_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/") || path == crate::auth::token::TOKEN_PATH
}

/// The answer to a preflight from a listed origin; `None` for anything else, which then
/// goes on to be refused like any `OPTIONS` request.
pub fn preflight(
    origin: Option<&HeaderValue>,
    request: &Request<()>,
) -> Option<Response<ResponseBody>> {
    if request.method() != Method::OPTIONS
        || origin.is_none()
        || !request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let mut response = Response::new(ResponseBody::full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE_SECS),
    );
    Some(response)
}

/// Adds the CORS headers to any answer (errors included, so a UI can read a 401's challenge).
/// With origins configured, every answer varies by `Origin`, so that no cache hands one
/// origin's answer to another; what the registry said about CORS is replaced.
pub fn decorate(headers: &mut HeaderMap, configured: bool, origin: Option<HeaderValue>) {
    if !configured {
        return;
    }
    for name in [
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
    ] {
        headers.remove(name);
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin else {
        return;
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ORIGIN,
            HeaderValue::from_str(origin).expect("value"),
        );
        h
    }

    #[test]
    fn only_listed_origins_on_the_registry_api_and_token_endpoint() {
        let origins = vec!["https://ui.example.com".to_string()];
        let ok = headers("https://ui.example.com");
        assert!(allowed_origin(&origins, &ok, "/v2/").is_some());
        assert!(allowed_origin(&origins, &ok, "/v2/team/app/tags/list").is_some());
        assert!(allowed_origin(&origins, &ok, "/token").is_some());
        assert!(allowed_origin(&origins, &headers("HTTPS://UI.EXAMPLE.COM"), "/v2/").is_some());
        for path in ["/ui/", "/healthz", "/v2x", "/tokens"] {
            assert!(allowed_origin(&origins, &ok, path).is_none(), "{path}");
        }
        for origin in [
            "https://ui.example.com.evil.net",
            "https://evil.net",
            "http://ui.example.com",
            "null",
            "https://ui.example.com:8443",
        ] {
            assert!(
                allowed_origin(&origins, &headers(origin), "/v2/").is_none(),
                "{origin}"
            );
        }
        assert!(allowed_origin(&[], &ok, "/v2/").is_none());
        assert!(allowed_origin(&origins, &HeaderMap::new(), "/v2/").is_none());
    }

    #[test]
    fn a_preflight_needs_a_listed_origin_and_a_requested_method() {
        let origin = HeaderValue::from_static("https://ui.example.com");
        let request = |method: &str, with_acrm: bool| {
            let mut r = Request::builder().method(method).uri("/v2/_catalog");
            if with_acrm {
                r = r.header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET");
            }
            r.body(()).expect("request")
        };
        let answer = preflight(Some(&origin), &request("OPTIONS", true)).expect("answered");
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        let h = answer.headers();
        assert!(h[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .expect("text")
            .contains("DELETE"));
        assert!(h[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .expect("text")
            .contains("Authorization"));
        assert!(preflight(None, &request("OPTIONS", true)).is_none());
        assert!(preflight(Some(&origin), &request("OPTIONS", false)).is_none());
        assert!(preflight(Some(&origin), &request("GET", true)).is_none());
    }

    #[test]
    fn decorated_answers_name_the_origin_never_a_wildcard() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        decorate(
            &mut h,
            true,
            Some(HeaderValue::from_static("https://ui.example.com")),
        );
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://ui.example.com"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS]
            .to_str()
            .expect("text")
            .contains("Docker-Content-Digest"));
        assert_eq!(h[header::VARY], "Origin");

        // An unlisted origin: what the registry said about CORS is taken away.
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        decorate(&mut h, true, None);
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let mut h = HeaderMap::new();
        decorate(&mut h, false, None);
        assert!(h.is_empty());
    }
}
