//! The body of a request to the registry: the client's, streamed (counted into its exchange
//! as it goes), bytes already read, or none for the gate's own reads. It lives with the
//! client that sends it; the client's side of the body (`proxy/body.rs`) hands it over.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::upstream::exchange::Exchange;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The client's request body on its way to the registry: streamed, or read whole
    /// already (a manifest `[[protect]]` had to see), or no body, for the gate's own probes.
    pub struct RequestBody {
        #[pin]
        inner: Either<Incoming, Either<Full<Bytes>, Empty<Bytes>>>,
        exchange: Arc<Exchange>,
    }
}

impl RequestBody {
    pub fn new(inner: Incoming, exchange: Arc<Exchange>) -> Self {
        if inner.is_end_stream() {
            exchange.client_body_ended.store(true, Ordering::Relaxed);
        }
        RequestBody {
            inner: Either::Left(inner),
            exchange,
        }
    }

    pub fn empty() -> Self {
        RequestBody {
            inner: Either::Right(Either::Right(Empty::new())),
            exchange: Exchange::new(),
        }
    }

    /// Bytes already read from the client. They were counted as they arrived, so this body
    /// reports to an exchange of its own rather than count them twice.
    pub(crate) fn full(bytes: Bytes) -> Self {
        RequestBody {
            inner: Either::Right(Either::Left(Full::new(bytes))),
            exchange: Exchange::new(),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.exchange
                        .bytes_in
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                this.exchange.touch();
                // hyper stops polling a body that says it has ended, so the final `None`
                // may never come.
                if this.inner.is_end_stream() {
                    this.exchange
                        .client_body_ended
                        .store(true, Ordering::Relaxed);
                }
            }
            Some(Err(_)) => this
                .exchange
                .client_body_failed
                .store(true, Ordering::Relaxed),
            None => this
                .exchange
                .client_body_ended
                .store(true, Ordering::Relaxed),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
