//! The road to the registry: a pooled HTTP/1.1 keep-alive client over TCP or a unix socket,
//! the header rewriting a reverse proxy owes the registry (forwarded headers, hop-by-hop
//! removal, Host kept as sent) and the `Location` rewrite on the way back.
//!
//! Bodies pass through as streams; nothing here looks at them. This module does not decide
//! whether a request may be forwarded: by the time a request gets here it has been allowed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{Exchange, RequestBody};
use crate::client_addr::{canonical, client_ip, forwarded_for, is_trusted};
use crate::config::{UpstreamConfig, UpstreamTarget};
use crate::error::GateError;

/// Idle upstream connections are closed after this long; the registry's own idle timeout is
/// longer, so the gate closes first and never reuses a connection the registry just dropped.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections kept per upstream: enough for a burst of parallel layer pulls.
const POOL_MAX_IDLE: usize = 64;
/// Largest read buffer per registry connection. hyper's default lets it grow to ~400 KiB,
/// and a download pins two or three of them (one being read, the ones being sent on): 16
/// parallel pulls would cost ~13 MiB more RSS than with 64 KiB.
const UPSTREAM_MAX_BUF: usize = 64 * 1024;
/// The read buffer of a layer download that holds a bulk slot: a quarter of the system
/// calls, wakeups and body frames per byte of 64 KiB reads, 10–15 % less CPU per GiB
/// (BENCHMARKS.md, session 3).
const BULK_MAX_BUF: usize = 256 * 1024;
/// Layer downloads that get [`BULK_MAX_BUF`] at once. Further parallel ones use 64 KiB
/// reads, so memory stays bounded however many layers are pulled. Two give one or two
/// downloads the whole gain; four added 2.7 MiB of peak RSS for 7 % more throughput with 16
/// parallel pulls (BENCHMARKS.md, "After the fourth run").
const BULK_SLOTS: usize = 2;

/// The pooled client to the registry.
#[derive(Clone)]
pub struct Upstream {
    client: Client<Connector, RequestBody>,
    /// The same registry with large read buffers, for layer downloads holding a bulk slot.
    bulk: Client<Connector, RequestBody>,
    bulk_slots: Arc<Semaphore>,
    /// `http://authority` used to build request URIs (and the pool key).
    base: String,
    origin: String,
    read_timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Self {
        let connector = Connector {
            target: Arc::new(config.target.clone()),
            connect_timeout: config.connect_timeout,
        };
        let client = |max_buf| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_max_idle_per_host(POOL_MAX_IDLE)
                .http1_max_buf_size(max_buf)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                // The Host header is always set by `rewrite_request` to the client's own value.
                .set_host(false)
                .build(connector.clone())
        };
        let base = match &config.target {
            UpstreamTarget::Tcp { .. } => config.origin.clone(),
            UpstreamTarget::Unix(_) => "http://localhost".into(),
        };
        Upstream {
            client: client(UPSTREAM_MAX_BUF),
            bulk: client(BULK_MAX_BUF),
            bulk_slots: Arc::new(Semaphore::new(BULK_SLOTS)),
            base,
            origin: config.origin.clone(),
            read_timeout: config.read_timeout,
        }
    }

    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// The registry's own origin, as it may appear in a `Location` it sends.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Builds the URI the registry is asked for: same path and query, upstream authority.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, GateError> {
        format!("{}{}", self.base, path_and_query)
            .parse()
            .map_err(|_| GateError::BadRequest("request target is not a valid URI"))
    }

    /// A bulk slot if one is free: the request it goes with is read with large buffers
    /// until the slot (kept with the response body) is dropped.
    pub fn bulk_slot(&self) -> Option<BulkSlot> {
        let permit = self.bulk_slots.clone().try_acquire_owned().ok()?;
        Some(BulkSlot { _permit: permit })
    }

    /// Sends the request and waits for the response head. The wait ends with 504 only when
    /// nothing moved in either direction for the read timeout, so a slow 20 GiB upload is
    /// never cut while it progresses. With a bulk slot the response is read in large chunks.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
        exchange: &Exchange,
        bulk: Option<&BulkSlot>,
    ) -> Result<Response<Incoming>, GateError> {
        let client = if bulk.is_some() {
            &self.bulk
        } else {
            &self.client
        };
        tokio::select! {
            result = client.request(request) => result.map_err(|e| {
                // The registry's request fails when the client's body does; that is the
                // client's doing, not a registry fault to answer 502 for and warn about.
                if exchange.client_body_failed() {
                    GateError::ClientAborted
                } else {
                    classify_client_error(e)
                }
            }),
            () = exchange.idle_for(self.read_timeout) => Err(GateError::UpstreamTimeout),
        }
    }
}

impl Upstream {
    /// Whether the registry answers its API root (any status below 500: a registry with its
    /// own auth answers 401 and is still up). For `/readyz`.
    pub async fn ready(&self) -> bool {
        let host = HeaderValue::from_static("localhost");
        match tokio::time::timeout(READY_TIMEOUT, self.get("/v2/", &host)).await {
            Ok(Ok(response)) => response.status().as_u16() < 500,
            _ => false,
        }
    }

    /// A GET of the gate's own making (readiness, further catalog pages), bounded by the
    /// read timeout.
    pub async fn get(
        &self,
        path_and_query: &str,
        host: &HeaderValue,
    ) -> Result<Response<Incoming>, GateError> {
        let mut request = Request::new(RequestBody::empty());
        *request.uri_mut() = self.uri_for(path_and_query)?;
        request.headers_mut().insert(header::HOST, host.clone());
        tokio::time::timeout(self.read_timeout, self.client.request(request))
            .await
            .map_err(|_| GateError::UpstreamTimeout)?
            .map_err(classify_client_error)
    }
}

/// One of the [`BULK_SLOTS`] large-buffer downloads; given back when dropped.
#[derive(Debug)]
pub struct BulkSlot {
    _permit: OwnedSemaphorePermit,
}

/// A readiness probe that takes longer than this counts as a failure: probes come every few
/// seconds and must not pile up.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

fn classify_client_error(e: hyper_util::client::legacy::Error) -> GateError {
    let detail = error_chain(&e);
    if e.is_connect() {
        if detail.contains("timed out") {
            GateError::UpstreamTimeout
        } else {
            GateError::UpstreamUnreachable(detail)
        }
    } else {
        GateError::UpstreamFailed(detail)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Who the client is, as far as the forwarded headers are concerned.
pub struct ClientInfo<'a> {
    pub peer: SocketAddr,
    pub local_port: u16,
    pub trusted_proxies: &'a [IpNet],
    pub request_id: &'a str,
}

impl ClientInfo<'_> {
    fn peer_is_trusted(&self) -> bool {
        is_trusted(self.peer.ip(), self.trusted_proxies)
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the proxy
/// ones: they are never passed on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "http2-settings",
];

/// Headers by which a client could claim to be someone or somewhere else. From an untrusted
/// peer they are dropped and the gate's own values set.
const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-real-ip",
    "x-client-ip",
    "x-original-forwarded-for",
    "x-request-id",
];

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Rewrites the request head for the registry: `host` as the client sent it (the registry
/// builds upload URLs from it), forwarded headers describing the real client.
pub fn rewrite_request(headers: &mut HeaderMap, host: &HeaderValue, client: &ClientInfo<'_>) {
    strip_hop_by_hop(headers);
    let peer_ip = canonical(client.peer.ip());
    let trusted = client.peer_is_trusted();

    let mut chain = String::new();
    let real_ip = client_ip(headers, client.peer, client.trusted_proxies);
    if trusted {
        // A trusted proxy's list is extended.
        chain = forwarded_for(headers);
    } else {
        for name in FORWARDING {
            headers.remove(*name);
        }
    }
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&peer_ip.to_string());

    headers.insert(header::HOST, host.clone());
    set(headers, "x-forwarded-for", &chain);
    set(headers, "x-real-ip", &real_ip.to_string());
    if !trusted || !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    }
    if !trusted || !headers.contains_key("x-forwarded-host") {
        headers.insert("x-forwarded-host", host.clone());
    }
    if !trusted || !headers.contains_key("x-forwarded-port") {
        set(headers, "x-forwarded-port", &client.local_port.to_string());
    }
    if !trusted || !headers.contains_key("x-request-id") {
        set(headers, "x-request-id", client.request_id);
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    // Addresses, numbers and request ids are always valid header values.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Rewrites the response head for the client: hop-by-hop headers dropped, and a `Location`
/// (or `Content-Location`) that points at the registry's own origin moved to the public
/// `https://<host>` origin, as Apache's ProxyPassReverse does.
pub fn rewrite_response(headers: &mut HeaderMap, upstream_origin: &str, host: &HeaderValue) {
    strip_hop_by_hop(headers);
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Some(rest) = strip_origin(value, upstream_origin) else {
            continue;
        };
        let Ok(host) = host.to_str() else { continue };
        if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{rest}")) {
            headers.insert(name, v);
        }
    }
}

/// `Some(rest)` when `url` is `origin` followed by a path (or nothing).
fn strip_origin<'a>(url: &'a str, origin: &str) -> Option<&'a str> {
    let head = url.get(..origin.len())?;
    if !head.eq_ignore_ascii_case(origin) {
        return None;
    }
    let rest = &url[origin.len()..];
    (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')).then_some(rest)
}

/// Connects to the configured registry whatever authority the request URI names, so a
/// client can never steer the gate to another host.
#[derive(Clone)]
struct Connector {
    target: Arc<UpstreamTarget>,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let target = self.target.clone();
        let limit = self.connect_timeout;
        Box::pin(async move {
            let connect = async {
                match &*target {
                    UpstreamTarget::Tcp { host, port } => {
                        let stream = TcpStream::connect((host.as_str(), *port)).await?;
                        // Registry responses are small heads then large bodies; Nagle only
                        // delays the heads.
                        stream.set_nodelay(true)?;
                        Ok(UpstreamStream::Tcp(stream))
                    }
                    UpstreamTarget::Unix(path) => UnixStream::connect(path)
                        .await
                        .map(UpstreamStream::Unix)
                        .map_err(|e| with_path(e, path)),
                }
            };
            match tokio::time::timeout(limit, connect).await {
                Ok(result) => result.map(TokioIo::new),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timed out after {limit:?}"),
                )),
            }
        })
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

pub enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[tokio::test]
    async fn bulk_slots_are_bounded_and_given_back() {
        let upstream = Upstream::new(&UpstreamConfig {
            target: UpstreamTarget::Tcp {
                host: "127.0.0.1".into(),
                port: 5000,
            },
            origin: "http://127.0.0.1:5000".into(),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
        });
        let held: Vec<BulkSlot> = (0..BULK_SLOTS)
            .filter_map(|_| upstream.bulk_slot())
            .collect();
        assert_eq!(held.len(), BULK_SLOTS);
        assert!(
            upstream.bulk_slot().is_none(),
            "more large buffers than slots"
        );
        // A clone (a request's snapshot) shares the slots.
        assert!(upstream.clone().bulk_slot().is_none());
        drop(held);
        assert!(upstream.bulk_slot().is_some(), "slots not given back");
    }

    fn client<'a>(peer: &str, trusted: &'a [IpNet]) -> ClientInfo<'a> {
        ClientInfo {
            peer: peer.parse().expect("peer"),
            local_port: 443,
            trusted_proxies: trusted,
            request_id: "req-1",
        }
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=6.6.6.6"),
            ("x-request-id", "spoof"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic eA=="),
        ]);
        let host = HeaderValue::from_static("reg.example:8443");
        rewrite_request(&mut h, &host, &client("192.0.2.1:5555", &[]));
        assert_eq!(h["host"], "reg.example:8443");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-real-ip"], "192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "reg.example:8443");
        assert_eq!(h["x-forwarded-port"], "443");
        assert_eq!(h["x-request-id"], "req-1");
        for gone in [
            "forwarded",
            "connection",
            "x-secret",
            "te",
            "proxy-authorization",
        ] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn trusted_proxy_chain_is_extended_and_names_the_client() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.9, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("reg.example");
        rewrite_request(&mut h, &host, &client("10.0.0.2:1000", &trusted));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.1.1, 10.0.0.2");
        assert_eq!(h["x-real-ip"], "203.0.113.9");
    }

    #[test]
    fn mapped_ipv4_peer_is_written_as_ipv4() {
        let mut h = HeaderMap::new();
        let host = HeaderValue::from_static("r");
        rewrite_request(&mut h, &host, &client("[::ffff:192.0.2.3]:1", &[]));
        assert_eq!(h["x-real-ip"], "192.0.2.3");
    }

    #[test]
    fn location_at_upstream_origin_is_rewritten() {
        let host = HeaderValue::from_static("reg.example:8443");
        let mut h = headers(&[(
            "location",
            "http://127.0.0.1:5000/v2/a/blobs/uploads/u?_state=x",
        )]);
        rewrite_response(&mut h, "http://127.0.0.1:5000", &host);
        assert_eq!(
            h["location"],
            "https://reg.example:8443/v2/a/blobs/uploads/u?_state=x"
        );

        for other in [
            "https://reg.example:8443/v2/x",
            "/v2/x",
            "http://127.0.0.1:50000/v2/x",
            "http://127.0.0.1:5000.evil/x",
        ] {
            let mut h = headers(&[("location", other)]);
            rewrite_response(&mut h, "http://127.0.0.1:5000", &host);
            assert_eq!(h["location"], other);
        }
    }
}
