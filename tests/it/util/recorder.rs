//! A stand-in upstream: an HTTP/1.1 server that records every request the gate forwards
//! (method, URI, headers in order, body length) and answers what the test's responder says.
//! It runs on its own thread and runtime, so a test blocking on the gate never stalls it.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use super::client::{Framing, PseudoRandomBody};

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    /// In arrival order, names lowercase; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// The recorder's own address, so a responder can build URLs on the upstream origin.
    pub local_addr: SocketAddr,
    /// Set when reading the body failed (e.g. the gate cut it short).
    pub body_error: Option<String>,
    /// Trailer fields of a chunked body, names lowercase.
    pub trailers: Vec<(String, String)>,
}

impl Recorded {
    /// Every value of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of header `name`; panics if it appears more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.header_all(name);
        assert!(all.len() <= 1, "header {name} repeated upstream: {all:?}");
        all.first().copied()
    }
}

/// What the recorder answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
    /// Wait this long before answering (a slow registry).
    pub delay: Option<std::time::Duration>,
}

#[derive(Clone, Debug)]
pub enum ReplyBody {
    Empty,
    Bytes(Vec<u8>),
    /// `len` bytes from `XorShift::new(seed)`, streamed, with Content-Length.
    PseudoRandom {
        seed: u64,
        len: u64,
    },
}

impl Reply {
    /// `200` with `{}`, as `GET /v2/` on a registry.
    pub fn ok_json() -> Reply {
        Reply::status(200)
            .header("Content-Type", "application/json; charset=utf-8")
            .body(b"{}".to_vec())
    }

    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Empty,
            delay: None,
        }
    }

    pub fn delay(mut self, delay: std::time::Duration) -> Reply {
        self.delay = Some(delay);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, bytes: Vec<u8>) -> Reply {
        self.body = ReplyBody::Bytes(bytes);
        self
    }

    pub fn pseudo_random(mut self, seed: u64, len: u64) -> Reply {
        self.body = ReplyBody::PseudoRandom { seed, len };
        self
    }
}

type Responder = dyn Fn(&Recorded) -> Reply + Send + Sync;

pub struct Recorder {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Starts on 127.0.0.1 and a kernel-chosen port (bound here, so no race).
    pub fn start(responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Recorder {
        Recorder::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), responder)
    }

    /// Starts on `addr`: a registry coming back on the address it had before.
    pub fn start_on(
        addr: SocketAddr,
        responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Recorder {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind the recorder on {addr}: {e}"));
        let addr = listener.local_addr().expect("recorder address");
        listener
            .set_nonblocking(true)
            .expect("recorder listener non-blocking");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (shutdown, shutdown_rx) = oneshot::channel();
        let responder: Arc<Responder> = Arc::new(responder);
        let recorded = requests.clone();
        let thread = std::thread::Builder::new()
            .name(format!("recorder-{}", addr.port()))
            .spawn(move || serve(listener, recorded, responder, shutdown_rx))
            .expect("spawn the recorder thread");
        Recorder {
            addr,
            requests,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`: the gate's `[upstream] url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything recorded so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("recorder lock").clone()
    }

    /// The only request recorded; panics if there were none or several.
    pub fn single_request(&self) -> Recorded {
        let all = self.requests();
        assert_eq!(
            all.len(),
            1,
            "expected exactly one upstream request: {all:#?}"
        );
        all.into_iter().next().expect("one request")
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    listener: TcpListener,
    requests: Arc<Mutex<Vec<Recorded>>>,
    responder: Arc<Responder>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("recorder runtime");
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(listener).expect("recorder listener into tokio");
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let requests = requests.clone();
            let responder = responder.clone();
            let local_addr = match stream.local_addr() {
                Ok(addr) => addr,
                Err(_) => continue,
            };
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    handle(req, local_addr, requests.clone(), responder.clone())
                });
                // A connection error (the gate hanging up) ends this connection only.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn handle(
    req: Request<Incoming>,
    local_addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    responder: Arc<Responder>,
) -> Result<Response<BoxBody<Bytes, io::Error>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut body_len = 0u64;
    let mut body_error = None;
    let mut trailers = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                body_len += frame.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(fields) = frame.trailers_ref() {
                    trailers.extend(fields.iter().map(|(n, v)| {
                        (
                            n.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    }));
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    let recorded = Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into(),
                )
            })
            .collect(),
        body_len,
        local_addr,
        body_error,
        trailers,
    };
    let reply = responder(&recorded);
    requests.lock().expect("recorder lock").push(recorded);
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }

    let mut response =
        Response::builder().status(StatusCode::from_u16(reply.status).expect("valid reply status"));
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    let body = match reply.body {
        ReplyBody::Empty => Empty::new().map_err(|never| match never {}).boxed(),
        ReplyBody::Bytes(bytes) => Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed(),
        ReplyBody::PseudoRandom { seed, len } => {
            PseudoRandomBody::new(seed, len, Framing::ContentLength)
                .0
                .boxed()
        }
    };
    Ok(response.body(body).expect("valid reply"))
}
