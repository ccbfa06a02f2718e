//! HTTPS clients that trust only the test CA: a hyper (legacy pool) client over hyper-rustls
//! for HTTP/1.1 or HTTP/2, a raw TLS exchange for byte-exact requests, and streaming bodies
//! that generate and hash pseudo-random bytes on the fly so a 1 GiB transfer never sits in
//! memory.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{hex, XorShift};

/// Size of each generated body frame; a multiple of 8 (see `XorShift::fill`).
const CHUNK: usize = 64 * 1024;

/// The request body type every client here sends.
pub type ReqBody = BoxBody<Bytes, io::Error>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 only (no ALPN offered): chunked uploads are possible.
    Http1,
    /// HTTP/2 only (ALPN `h2`, prior knowledge after the handshake).
    Http2,
}

/// A rustls client configuration trusting exactly the CA(s) in `ca_pem`.
pub fn tls_config(ca_pem: &Path) -> rustls::ClientConfig {
    tls_config_with_versions(ca_pem, rustls::DEFAULT_VERSIONS)
}

/// Like `tls_config`, offering only the given TLS versions.
pub fn tls_config_with_versions(
    ca_pem: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem)
        .unwrap_or_else(|e| panic!("read CA {}: {e}", ca_pem.display()))
    {
        let cert = cert.unwrap_or_else(|e| panic!("parse CA {}: {e}", ca_pem.display()));
        roots.add(cert).expect("add the test CA to the root store");
    }
    // An explicit provider: the process-wide default is ambiguous when several are compiled in.
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("supported TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

#[derive(Clone)]
pub struct HttpsClient {
    inner: Client<HttpsConnector<HttpConnector>, ReqBody>,
}

impl HttpsClient {
    pub fn new(ca_pem: &Path, proto: Proto) -> HttpsClient {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(ca_pem))
            .https_only();
        let connector = match proto {
            Proto::Http1 => builder.enable_http1().build(),
            Proto::Http2 => builder.enable_http2().build(),
        };
        let mut client = Client::builder(TokioExecutor::new());
        if proto == Proto::Http2 {
            client.http2_only(true);
        }
        HttpsClient {
            inner: client.build(connector),
        }
    }

    /// An HTTP/1.1 client whose connections come from `local` (another loopback address,
    /// 127.0.0.2 and up, for a test that needs several client addresses).
    pub fn from_address(ca_pem: &Path, local: std::net::IpAddr) -> HttpsClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_local_address(Some(local));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(ca_pem))
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        HttpsClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `req`; the error is returned so tests can assert on failures.
    pub async fn try_send(
        &self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.inner.request(req).await
    }

    /// Sends `req`, panicking with the method and URI if no response arrives.
    pub async fn send(&self, req: Request<ReqBody>) -> Response<Incoming> {
        let what = format!("{} {}", req.method(), req.uri());
        self.try_send(req)
            .await
            .unwrap_or_else(|e| panic!("{what}: no response: {e:?}"))
    }

    pub async fn get(&self, url: &str) -> Response<Incoming> {
        self.send(request("GET", url).body(empty()).expect("GET request"))
            .await
    }
}

/// A request builder with method and URI set.
pub fn request(method: &str, url: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}

pub fn empty() -> ReqBody {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A response header as text, if present.
pub fn header<'a>(response: &'a Response<Incoming>, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("header value is ASCII"))
}

/// Reads a small response body as text.
pub async fn text(response: Response<Incoming>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("read response body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// How a generated request body is framed on HTTP/1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// The size is announced, so hyper sends `Content-Length`.
    ContentLength,
    /// The size is hidden, so hyper sends `Transfer-Encoding: chunked`.
    Chunked,
}

/// `len` pseudo-random bytes from `seed`, generated frame by frame and hashed as they go.
pub struct PseudoRandomBody {
    rng: XorShift,
    remaining: u64,
    framing: Framing,
    digest: DigestHandle,
}

/// The sha256 of what a `PseudoRandomBody` produced, readable once it has been sent.
#[derive(Clone, Default)]
pub struct DigestHandle(Arc<Mutex<(Sha256, u64)>>);

impl DigestHandle {
    /// `(bytes produced, "sha256:<hex>")`.
    pub fn finish(&self) -> (u64, String) {
        let state = self.0.lock().expect("digest lock");
        let (hasher, len) = &*state;
        (*len, format!("sha256:{}", hex(&hasher.clone().finalize())))
    }
}

impl PseudoRandomBody {
    pub fn new(seed: u64, len: u64, framing: Framing) -> (PseudoRandomBody, DigestHandle) {
        let digest = DigestHandle::default();
        let body = PseudoRandomBody {
            rng: XorShift::new(seed),
            remaining: len,
            framing,
            digest: digest.clone(),
        };
        (body, digest)
    }

    pub fn boxed(self) -> ReqBody {
        BodyExt::boxed(self)
    }
}

impl Body for PseudoRandomBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = this.remaining.min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; n];
        this.rng.fill(&mut buf);
        this.remaining -= n as u64;
        {
            let mut state = this.digest.0.lock().expect("digest lock");
            state.0.update(&buf);
            state.1 += n as u64;
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::ContentLength => SizeHint::with_exact(self.remaining),
            // Unknown size: hyper falls back to chunked transfer encoding.
            Framing::Chunked => SizeHint::default(),
        }
    }
}

/// Reads a body to the end, hashing it; never holds more than one frame.
/// Returns `(length, "sha256:<hex>")`.
pub async fn read_hashing(mut body: Incoming) -> Result<(u64, String), hyper::Error> {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            hasher.update(data);
            len += data.len() as u64;
        }
    }
    Ok((len, format!("sha256:{}", hex(&hasher.finalize()))))
}

/// What a TLS handshake settled on.
#[derive(Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub version: rustls::ProtocolVersion,
    pub alpn: Option<Vec<u8>>,
}

/// Completes a handshake offering `versions` and `alpn`, and reports the outcome.
pub async fn tls_handshake(
    addr: SocketAddr,
    ca_pem: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> io::Result<Negotiated> {
    let mut config = tls_config_with_versions(ca_pem, versions);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::IpAddress(addr.ip().into());
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = connector.connect(name, tcp).await?;
    let (_, session) = tls.get_ref();
    Ok(Negotiated {
        version: session
            .protocol_version()
            .expect("a finished handshake has a version"),
        alpn: session.alpn_protocol().map(<[u8]>::to_vec),
    })
}

/// One request over a fresh TLS connection, written byte for byte as given, for tests that
/// must control exactly which headers are sent. The request should say `Connection: close`:
/// the response is read until the server closes (or `timeout`).
pub async fn raw_https_exchange(
    addr: SocketAddr,
    ca_pem: &Path,
    server_name: &str,
    request: &[u8],
    timeout: Duration,
) -> io::Result<String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(ca_pem)));
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(request).await?;
        tls.flush().await?;
        let mut response = Vec::new();
        // A peer closing without close_notify is fine here: we only want the bytes.
        match tls.read_to_end(&mut response).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
            Err(e) => return Err(e),
        }
        Ok(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "raw exchange timed out"))?
}

/// Writes `request` byte for byte over a fresh TLS connection (HTTP/1.1, no ALPN) and returns
/// everything the server sends back until it closes, resets, or stays silent for `quiet`.
/// Unlike `raw_https_exchange`, a connection kept open still yields what was answered, so a
/// test can count the responses to pipelined (or smuggled) requests.
pub async fn raw_exchange_until_quiet(
    addr: SocketAddr,
    ca_pem: &Path,
    request: &[u8],
    quiet: Duration,
) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(ca_pem)));
    let name = ServerName::try_from("localhost").expect("server name");
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let mut tls = connector
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
    // The server may answer and close before reading everything (a refused head): what it
    // said is still there to read.
    let _ = tls.write_all(request).await;
    let _ = tls.flush().await;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(quiet, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}
