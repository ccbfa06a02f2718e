//! The road to the registry: a pooled HTTP/1.1 keep-alive client over TCP or a unix socket,
//! timeouts, and the bulk slots that give a few layer downloads large read buffers. The
//! header rewriting on the way there and back is `proxy::headers`'.
//!
//! Bodies pass through as streams; nothing here looks at them. This module does not decide
//! whether a request may be forwarded: by the time a request gets here it has been allowed.
//! It sits below the proxy, on the state floor, because the snapshot (`crate::state`) holds
//! the pool; it knows no `GateError`, and says what failed in its own `UpstreamError`.
//!
//! The rooms: `request_body` (the body of a request on its way to the registry) and
//! `exchange` (one exchange's progress, shared by its bodies, this client and the access
//! record).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Semaphore;

use tokio::sync::OwnedSemaphorePermit;

use crate::config::{UpstreamConfig, UpstreamTarget};
use exchange::Exchange;

pub mod exchange;
mod request_body;

pub use request_body::{BoxError, RequestBody};

/// Why the registry gave no answer; the proxy's `UpstreamError` says how the client hears of it.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The path and query do not make a URI (the proxy floor refuses such targets first).
    #[error("request target is not a valid URI")]
    BadTarget,
    /// The client's body broke off, and the registry's request with it: the client's doing.
    #[error("the client broke off its request body")]
    ClientAborted,
    /// Nothing moved in either direction for the read timeout, or the connect timed out.
    #[error("the registry behind the gate did not answer in time")]
    Timeout,
    /// No connection to the registry could be made.
    #[error("the registry behind the gate is unreachable: {0}")]
    Unreachable(String),
    /// The exchange with the registry broke after it started.
    #[error("the registry behind the gate failed: {0}")]
    Failed(String),
}

/// Idle upstream connections are closed after this long; the registry's own idle timeout is
/// longer, so the gate closes first and never reuses a connection the registry just dropped.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections kept per upstream: enough for a burst of parallel layer pulls.
const POOL_MAX_IDLE: usize = 64;
/// Largest read buffer per registry connection. hyper's default lets it grow to ~400 KiB,
/// and a download pins two or three of them (one being read, the ones being sent on): 16
/// parallel pulls would cost ~13 MiB more RSS than with 64 KiB.
const UPSTREAM_MAX_BUF: usize = 64 * 1024;
/// Registry bytes one download holds in the gate besides what hyper's HTTP/2 send buffer
/// queues: the last chunk queued (it may carry the buffer past its limit), the chunk
/// hyper's pipe has taken from the body and waits to queue, and the read buffer the next one
/// is read into. The send budget reserves this per stream (the two bulk slots' larger
/// buffers are a fixed extra of at most 1.2 MiB).
pub const REGISTRY_BYTES_IN_HAND: u64 = 3 * UPSTREAM_MAX_BUF as u64;
/// The read buffer of a layer download that holds a bulk slot: a quarter of the system
/// calls, wakeups and body frames per byte of 64 KiB reads, 10–15 % less CPU per GiB
/// (bench/history.md, session 3).
const BULK_MAX_BUF: usize = 256 * 1024;
/// Layer downloads that get [`BULK_MAX_BUF`] at once. Further parallel ones use 64 KiB
/// reads, so memory stays bounded however many layers are pulled. Two give one or two
/// downloads the whole gain; four added 2.7 MiB of peak RSS for 7 % more throughput with 16
/// parallel pulls (bench/history.md, "After the fourth run").
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
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        format!("{}{}", self.base, path_and_query)
            .parse()
            .map_err(|_| UpstreamError::BadTarget)
    }

    /// A bulk slot if one is free: the request it goes with is read with large buffers
    /// until the slot (kept with the response body) is dropped.
    pub fn bulk_slot(&self) -> Option<BulkSlot> {
        let permit = self.bulk_slots.clone().try_acquire_owned().ok()?;
        Some(BulkSlot::new(permit))
    }

    /// Sends the request and waits for the response head. The wait ends with 504 only when
    /// nothing moved in either direction for the read timeout, so a slow 20 GiB upload is
    /// never cut while it progresses. With a bulk slot the response is read in large chunks.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
        exchange: &Exchange,
        bulk: Option<&BulkSlot>,
    ) -> Result<Response<Incoming>, UpstreamError> {
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
                    UpstreamError::ClientAborted
                } else {
                    classify_client_error(e)
                }
            }),
            () = exchange.idle_for(self.read_timeout) => Err(UpstreamError::Timeout),
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

    /// A GET of the gate's own making (readiness, `doctor`), bounded by the read timeout.
    pub async fn get(
        &self,
        path_and_query: &str,
        host: &HeaderValue,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host.clone());
        self.lookup(Method::GET, path_and_query, headers).await
    }

    /// A bodiless request of the gate's own making with the headers given (`registry`'s
    /// reads, readiness), bounded by the read timeout. `headers` must carry `Host`.
    pub async fn lookup(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.own(method, path_and_query, headers, RequestBody::empty())
            .await
    }

    /// A request of the gate's own making with a small body it made (a referrers index),
    /// bounded by the read timeout like `lookup`.
    pub async fn write(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: bytes::Bytes,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.own(method, path_and_query, headers, RequestBody::full(body))
            .await
    }

    async fn own(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: RequestBody,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = self.uri_for(path_and_query)?;
        *request.headers_mut() = headers;
        tokio::time::timeout(self.read_timeout, self.client.request(request))
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(classify_client_error)
    }
}

/// A readiness probe that takes longer than this counts as a failure: probes come every few
/// seconds and must not pile up.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

fn classify_client_error(e: hyper_util::client::legacy::Error) -> UpstreamError {
    let detail = crate::error_chain::describe(&e);
    if e.is_connect() {
        if detail.contains("timed out") {
            UpstreamError::Timeout
        } else {
            UpstreamError::Unreachable(detail)
        }
    } else {
        UpstreamError::Failed(detail)
    }
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

/// One of the registry client's large-buffer downloads (`BULK_SLOTS`), held by the
/// response body until it is done; given back when dropped.
#[derive(Debug)]
pub struct BulkSlot {
    _permit: OwnedSemaphorePermit,
}

impl BulkSlot {
    fn new(permit: OwnedSemaphorePermit) -> BulkSlot {
        BulkSlot { _permit: permit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
