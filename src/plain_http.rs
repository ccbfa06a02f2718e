//! The plain-HTTP listener (`[server] http_listen`, port 80): answers ACME http-01
//! validations and sends every other request to https with a 308, like the recipes'
//! `return 301 https://$host$request_uri` but keeping the method and body (308, not 301).
//!
//! Nothing here reaches the registry: no request on port 80 is ever forwarded.

use http::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;

use crate::tls::acme::Challenges;

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The answer to one request on the plain-HTTP listener. `https_port` is the TLS listener's
/// port, left out of the redirect when it is 443.
pub fn answer<B>(
    request: &Request<B>,
    challenges: &Challenges,
    https_port: u16,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
        return match challenges.http(token) {
            Some(key_authorization) => plain(StatusCode::OK, key_authorization),
            None => plain(StatusCode::NOT_FOUND, "no such ACME challenge\n".into()),
        };
    }
    let Some(host) = request_host(request) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "this port only redirects to https, and the request names no host\n".into(),
        );
    };
    let target = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let location = if https_port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{https_port}{target}")
    };
    let mut response = plain(StatusCode::PERMANENT_REDIRECT, String::new());
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(LOCATION, value);
            response
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, "unusable host or path\n".into()),
    }
}

/// The host the client asked for, without its port, if it is a plausible host name or
/// address (the redirect must not carry header injection or a different authority).
fn request_host<B>(request: &Request<B>) -> Option<String> {
    let raw = request.uri().host().map(str::to_string).or_else(|| {
        request
            .headers()
            .get(HOST)?
            .to_str()
            .ok()
            .map(str::to_string)
    })?;
    let host = match raw.strip_prefix('[') {
        // An IPv6 literal keeps its brackets.
        Some(rest) => format!("[{}]", rest.split(']').next()?),
        None => raw.split(':').next()?.to_string(),
    };
    let plausible = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    plausible.then_some(host)
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).expect("request")
    }

    fn location(r: &Response<Full<Bytes>>) -> &str {
        r.headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[test]
    fn redirects_keep_path_and_query_and_drop_the_http_port() {
        let c = Challenges::default();
        let r = answer(&get("/v2/_catalog?n=5", Some("reg.example:80")), &c, 443);
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(location(&r), "https://reg.example/v2/_catalog?n=5");
        let r = answer(&get("/v2/", Some("[::1]:8080")), &c, 8443);
        assert_eq!(location(&r), "https://[::1]:8443/v2/");
    }

    #[test]
    fn a_host_that_could_smuggle_another_authority_is_refused() {
        let c = Challenges::default();
        for host in ["evil.example/x", "a@b", "a b", ""] {
            let r = answer(&get("/v2/", Some(host)), &c, 443);
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "host {host:?}");
        }
        let r = answer(&get("/v2/", None), &c, 443);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn unknown_challenge_tokens_are_404_not_redirects() {
        let c = Challenges::default();
        let r = answer(
            &get("/.well-known/acme-challenge/nope", Some("reg.example")),
            &c,
            443,
        );
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
