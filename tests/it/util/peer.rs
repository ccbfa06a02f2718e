//! A small HTTP or HTTPS server for tests whose peer of the gate is not a real program: a
//! webhook receiver, an OIDC issuer, a page on another origin. It listens on 127.0.0.1 and
//! a kernel-chosen port, runs on its own thread and runtime (a test blocking on the gate
//! never stalls it), reads each request whole and answers what the test's handler returns.
//! Stopped on drop.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

/// What a test server answers to one request (its head and whole body).
pub type Handler = dyn Fn(Parts, Bytes) -> Response<Full<Bytes>> + Send + Sync;

pub struct Peer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Peer {
    /// Plain HTTP without `tls`, HTTPS with it.
    pub fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(Parts, Bytes) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test server");
        let addr = listener.local_addr().expect("test server address");
        listener.set_nonblocking(true).expect("non-blocking");
        let handler: Arc<Handler> = Arc::new(handler);
        let (shutdown, mut stop) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("test server runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("listener into tokio");
                let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
                loop {
                    let stream = tokio::select! {
                        _ = &mut stop => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                    };
                    let (handler, acceptor) = (handler.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |request: Request<Incoming>| {
                            let handler = handler.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                Ok::<_, std::convert::Infallible>(handler(parts, body))
                            }
                        });
                        let http = hyper::server::conn::http1::Builder::new();
                        let _ = match acceptor {
                            None => http.serve_connection(TokioIo::new(stream), service).await,
                            Some(acceptor) => match acceptor.accept(stream).await {
                                Ok(tls) => http.serve_connection(TokioIo::new(tls), service).await,
                                Err(_) => return,
                            },
                        };
                    });
                }
            });
        });
        Peer {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }
}

/// An answer with `status`, `content_type` and `body`.
pub fn answer(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_str(content_type).expect("content type"),
    );
    response
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
