//! The request's form, checked before anything else looks at it: an origin-form target,
//! exactly one Host (agreeing with HTTP/2's `:authority`), no method-override headers and no
//! form bodies on the registry API. Each is a way to make the gate and the registry read one
//! request differently; refusing them keeps the rules' view the registry's view.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Version};
use http_body_util::{BodyExt, Limited};

use super::error::GateError;
use crate::registry_path::percent_decode;
use crate::upstream::RequestBody;

/// A form the gate itself answers (a login, a delete, an OAuth2 token request) arrives in one
/// packet; a client dribbling one is holding a stream open.
const FORM_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a form the gate answers itself was not read; each caller words it for its client.
pub(crate) enum FormError {
    Late,
    TooLargeOrBroken,
    NotUtf8,
}

/// A form the gate answers itself, whole: at most `limit` bytes, all within `FORM_TIMEOUT`.
pub(crate) async fn read_small_form(body: RequestBody, limit: usize) -> Result<String, FormError> {
    let collected = tokio::time::timeout(FORM_TIMEOUT, Limited::new(body, limit).collect())
        .await
        .map_err(|_| FormError::Late)?
        .map_err(|_| FormError::TooLargeOrBroken)?;
    String::from_utf8(collected.to_bytes().to_vec()).map_err(|_| FormError::NotUtf8)
}

/// Headers by which some frameworks let a POST act as another method. The registry ignores
/// them, but a proxy or registry in between might not: a request carrying one is refused
/// rather than classified by a method it may not really have.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

pub(crate) fn refuse_method_override(request: &Request<()>) -> Result<(), GateError> {
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
pub(crate) fn refuse_form_bodies(request: &Request<()>) -> Result<(), GateError> {
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

/// Only origin-form targets (`/path?query`) are forwarded. Absolute-form (`GET http://x/`)
/// would let a client name a host the Host header contradicts; asterisk-form has no place in
/// the registry API.
pub(crate) fn check_target(request: &Request<()>) -> Result<(), GateError> {
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

/// Every value of `key` in a query string or urlencoded form, percent- and plus-decoded.
pub(crate) fn query_values(query: Option<&str>, key: &str) -> Vec<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k)? == key)
                .then(|| percent_decode(v))
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_and_query_values_decode() {
        let q = "grant_type=password&username=al%69ce&password=a+b%26c&scope=repository%3Aa%2Fb%3Apull&scope=x";
        assert_eq!(query_values(Some(q), "username"), ["alice"]);
        assert_eq!(query_values(Some(q), "password"), ["a b&c"]);
        assert_eq!(query_values(Some(q), "scope"), ["repository:a/b:pull", "x"]);
        assert!(query_values(Some("a=%zz"), "a").is_empty());
        assert!(query_values(None, "a").is_empty());
    }
}
