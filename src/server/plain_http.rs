//! The plain-HTTP listener (`[server] http_listen`, port 80): answers ACME http-01
//! validations and sends every other request to https with a 308, like the recipes'
//! `return 301 https://$host$request_uri` but keeping the method and body (308, not 301).
//!
//! Nothing here reaches the registry: no request on port 80 is ever forwarded. The same small
//! HTTP/1.1 loop serves the metrics listener, with its own answer.

use http::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::linger::Linger;
use crate::state::Shared;
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

/// The plain-HTTP listener (`[server] http_listen`): ACME http-01 answers and redirects to
/// `https_port`, the port the TLS listener really got (the configured one, unless that is 0).
pub(super) fn plain_http_answer(
    shared: &Shared,
    request: &hyper::Request<hyper::body::Incoming>,
    https_port: u16,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    answer(request, shared.certs().challenges(), https_port)
}

/// The metrics listener: `GET /metrics` in the Prometheus text format (it belongs on a
/// private address; Prometheus scrapes without TLS by default).
pub(super) fn metrics_answer(
    shared: &Shared,
    request: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    crate::metrics::answer(request, || {
        let key = shared.certs().current()?;
        crate::tls::acme::CertFacts::of(&key)
            .ok()
            .map(|facts| facts.not_after)
    })
}

/// One of the gate's own small plain-HTTP/1.1 listeners (port 80, metrics): nothing on it
/// is forwarded. Each connection gets the TLS listener's header timeout and lives at most
/// `idle_timeout`: a redirect, a challenge answer or a scrape needs no more.
pub(super) async fn serve_plain(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    name: &'static str,
    answer: impl Fn(
            &Shared,
            &hyper::Request<hyper::body::Incoming>,
        ) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>>
        + Copy
        + Send
        + Sync
        + 'static,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "accept failed on the {name} listener");
                    tokio::time::sleep(super::ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let server = shared.snapshot().config.server.clone();
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let response = answer(&shared, &request);
                tracing::debug!(peer = %peer, path = %request.uri().path(), status = response.status().as_u16(), "{name} request");
                std::future::ready(Ok::<_, std::convert::Infallible>(response))
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(server.header_timeout)
                .max_buf_size(server.max_header_bytes)
                .serve_connection(TokioIo::new(Linger::new(stream)), service);
            let _ = tokio::time::timeout(server.idle_timeout, connection).await;
        });
    }
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
