//! Body types that stream between client and registry without buffering: each frame is passed
//! on as it arrives, so memory stays flat whatever the size of a layer. The one exception is a
//! manifest push that `[[protect]]` or the referrers index must read: `ClientBody::read_whole`
//! reads it, capped, within a budget all requests share (`MANIFEST_BUDGET`), and hands the
//! same bytes on.
//!
//! The wrappers only count bytes, note activity for the idle timeout, and finish the access
//! log record when the response is done (or dropped half-way, which is logged as aborted).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::conn::send_budget::Reservation;
use crate::proxy::access_log::AccessRecord;
use crate::upstream::exchange::Exchange;
use crate::upstream::{BoxError, BulkSlot, RequestBody};

/// The most of an unread request body the gate reads and discards to keep the connection
/// open after answering without it: a manifest or a token form fits many times over, a layer
/// does not (nginx discards any size; reading gigabytes nobody wants costs more than the
/// client's reconnect).
pub const DRAIN_LIMIT: u64 = 64 * 1024;

/// How long that discarding may hold the answer back: a client that declared a small body
/// has already sent it, or is stalling and gets the answer with `Connection: close`.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Manifest bodies held whole at once, all requests together, in KiB: `read_whole` is the
/// one place a request body is buffered, and without a bound a crowd of pushers (each
/// authenticated, each sending up to 4 MiB slowly) could hold any amount of memory. 64 MiB
/// holds sixteen manifests at the registry's limit, or thousands of ordinary ones, which
/// declare their few KiB and are counted at that.
const MANIFEST_BUDGET_KIB: usize = 64 * 1024;
static MANIFEST_BUDGET: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MANIFEST_BUDGET_KIB);
/// The most of `MANIFEST_BUDGET` the requests of one client address hold at once: a
/// quarter, so one pusher (sixteen streams of trickling 4 MiB manifests) cannot take it
/// all. Ordinary manifests, counted at 64 KiB, fit 256 at once from one address.
const MANIFEST_SHARE_KIB: usize = MANIFEST_BUDGET_KIB / 4;
/// What each client address holds of `MANIFEST_BUDGET` now, in KiB.
static MANIFEST_SHARES: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
> = std::sync::LazyLock::new(Default::default);

/// One address's part of `MANIFEST_SHARES`, given back when dropped.
struct Share {
    client: std::net::IpAddr,
    kib: usize,
}

impl Share {
    /// `kib` more for `client`, unless that would pass its share.
    fn take(client: std::net::IpAddr, kib: usize) -> Option<Share> {
        let mut shares = MANIFEST_SHARES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = shares.entry(client).or_insert(0);
        if *held + kib > MANIFEST_SHARE_KIB {
            return None;
        }
        *held += kib;
        Some(Share { client, kib })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut shares = MANIFEST_SHARES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = shares.get_mut(&self.client) {
            *held = held.saturating_sub(self.kib);
            if *held == 0 {
                shares.remove(&self.client);
            }
        }
    }
}

/// The least a body read whole is counted at: a guess for one that declares no length is
/// its limit, a declared one its length rounded up to this.
const MANIFEST_MIN_KIB: usize = 64;

/// The client's request body from the request's arrival until a step forwards it, reads it,
/// or the gate answers without it. What is left of it when the answer is ready decides
/// whether the connection can carry the client's next request (`settle`).
pub struct ClientBody {
    incoming: Option<Incoming>,
    /// The body once `read_whole` has read it, for `take` to forward.
    read: Option<Bytes>,
    /// Its place in `MANIFEST_BUDGET` and in its address's share, kept until the request
    /// is over.
    _budget: Option<(Share, tokio::sync::SemaphorePermit<'static>)>,
    exchange: Arc<Exchange>,
    expects_continue: bool,
}

/// Why `ClientBody::read_whole` gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// More bytes than the limit (declared or sent).
    TooLarge,
    /// The client broke the body off, or framed it wrongly.
    Failed,
    /// Nothing arrived for the idle limit.
    Stalled,
    /// Other requests hold the whole budget for bodies read whole, for longer than the idle
    /// limit.
    Busy,
    /// This client address already holds its share of that budget.
    OverShare,
}

/// How the connection goes on after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The request is over on the wire: the connection can carry the next one.
    KeepAlive,
    /// Part of the body is still unread or in flight: the answer must say
    /// `Connection: close`, or a client reusing the connection loses its next request.
    Close,
}

impl ClientBody {
    pub fn new(incoming: Incoming, exchange: Arc<Exchange>, expects_continue: bool) -> Self {
        ClientBody {
            incoming: Some(incoming),
            read: None,
            _budget: None,
            exchange,
            expects_continue,
        }
    }

    /// The body, to forward or read. Taken once: the one step that consumes it takes it, and
    /// a later take (there is none) would get an empty body, never the client's bytes twice.
    /// After `read_whole`, the bytes it read, unchanged.
    pub fn take(&mut self) -> RequestBody {
        if let Some(bytes) = self.read.take() {
            return RequestBody::full(bytes);
        }
        match self.incoming.take() {
            Some(incoming) => RequestBody::new(incoming, self.exchange.clone()),
            None => RequestBody::empty(),
        }
    }

    /// Reads the whole body, at most `limit` bytes, and keeps it for `take`. A declared
    /// length over the limit is refused before a byte is read; `idle` bounds a stall as the
    /// upstream read timeout bounds a streamed one.
    pub async fn read_whole(
        &mut self,
        limit: usize,
        idle: Duration,
        client: std::net::IpAddr,
    ) -> Result<Bytes, ReadError> {
        if let Some(bytes) = &self.read {
            return Ok(bytes.clone());
        }
        let Some(incoming) = self.incoming.take() else {
            return Ok(Bytes::new());
        };
        if incoming.size_hint().lower() > limit as u64 {
            // Left unread: `settle` closes the connection behind the answer.
            self.incoming = Some(incoming);
            return Err(ReadError::TooLarge);
        }
        let kib = budget_kib(incoming.size_hint().exact(), limit);
        let Some(share) = Share::take(client, kib) else {
            self.incoming = Some(incoming);
            return Err(ReadError::OverShare);
        };
        let permit =
            match tokio::time::timeout(idle, MANIFEST_BUDGET.acquire_many(kib as u32)).await {
                Ok(Ok(permit)) => permit,
                // The semaphore is never closed; waiting out `idle` is the only way here.
                Ok(Err(_)) | Err(_) => {
                    self.incoming = Some(incoming);
                    return Err(ReadError::Busy);
                }
            };
        self._budget = Some((share, permit));
        let body =
            http_body_util::Limited::new(RequestBody::new(incoming, self.exchange.clone()), limit);
        let collected = tokio::select! {
            collected = http_body_util::BodyExt::collect(body) => collected,
            () = self.exchange.idle_for(idle) => return Err(ReadError::Stalled),
        };
        match collected {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                self.read = Some(bytes.clone());
                Ok(bytes)
            }
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
            Err(_) => Err(ReadError::Failed),
        }
    }

    /// Leaves the connection able to go on. An HTTP/1.1 answer given before the body was read
    /// would otherwise be sent as keep-alive and the connection closed behind it by hyper (it
    /// cannot find the next request's start), so a client that reuses it at once loses a
    /// request. A small unread body is read and discarded, as nginx does; anything else
    /// makes the answer close the connection. HTTP/2 needs nothing: the stream is reset with
    /// NO_ERROR after the answer (RFC 9113 §8.1) and the connection goes on.
    pub async fn settle(mut self, version: http::Version) -> Settled {
        if version != http::Version::HTTP_11 && version != http::Version::HTTP_10 {
            return Settled::KeepAlive;
        }
        let Some(mut incoming) = self.incoming.take() else {
            return if self.exchange.client_body_ended() {
                Settled::KeepAlive
            } else {
                Settled::Close
            };
        };
        if incoming.is_end_stream() {
            return Settled::KeepAlive;
        }
        // Reading would make hyper send `100 Continue` and invite a body nobody wants.
        if self.expects_continue || incoming.size_hint().lower() > DRAIN_LIMIT {
            return Settled::Close;
        }
        let drain = async {
            let mut read = 0u64;
            while let Some(frame) = http_body_util::BodyExt::frame(&mut incoming).await {
                let Ok(frame) = frame else {
                    return Settled::Close;
                };
                if let Some(data) = frame.data_ref() {
                    read += data.len() as u64;
                }
                if read > DRAIN_LIMIT {
                    return Settled::Close;
                }
                if incoming.is_end_stream() {
                    break;
                }
            }
            Settled::KeepAlive
        };
        tokio::time::timeout(DRAIN_TIMEOUT, drain)
            .await
            .unwrap_or(Settled::Close)
    }
}

type Inner = Either<Incoming, Either<Full<Bytes>, Empty<Bytes>>>;

pin_project! {
    /// What the gate sends to the client: the registry's streamed body, or a small body the
    /// gate made itself (errors, redirects).
    pub struct ResponseBody {
        #[pin]
        inner: Inner,
        idle: Option<Idle>,
        exchange: Option<Arc<Exchange>>,
        // Held while the registry's body streams; given back with the body.
        bulk: Option<BulkSlot>,
        // This answer's place in the HTTP/2 send budget; given back with the body.
        reservation: Option<Reservation>,
        // Dropped with the body: that is when the request is over and the line is written.
        record: Option<AccessRecord>,
    }
}

/// The registry-stall timer. Moving a timer costs a lock on tokio's timer wheel, so frames
/// only note the time; the timer is moved when it fires early.
struct Idle {
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    last_frame: tokio::time::Instant,
}

impl Idle {
    /// Whether the registry has been silent for the limit; re-arms the timer if not.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last_frame + self.limit;
            if tokio::time::Instant::now() >= deadline {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
        false
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the registry sent no data for {0:?}; transfer aborted")]
pub struct UpstreamIdle(Duration);

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        Self::new(Either::Right(Either::Left(Full::new(bytes))))
    }

    pub fn empty() -> Self {
        Self::new(Either::Right(Either::Right(Empty::new())))
    }

    /// The registry's body, aborted if it stalls for `idle_limit`; `bulk` is the slot it
    /// was read with, if any.
    pub fn upstream(
        inner: Incoming,
        exchange: Arc<Exchange>,
        idle_limit: Duration,
        bulk: Option<BulkSlot>,
    ) -> Self {
        ResponseBody {
            inner: Either::Left(inner),
            idle: Some(Idle {
                limit: idle_limit,
                timer: Box::pin(tokio::time::sleep(idle_limit)),
                last_frame: tokio::time::Instant::now(),
            }),
            exchange: Some(exchange),
            bulk,
            reservation: None,
            record: None,
        }
    }

    fn new(inner: Inner) -> Self {
        ResponseBody {
            inner,
            idle: None,
            exchange: None,
            bulk: None,
            reservation: None,
            record: None,
        }
    }

    /// Whether the gate made this body itself (an error, a page, a redirect): its length is
    /// known before a byte is sent, unlike the registry's streamed one.
    pub fn is_made_here(&self) -> bool {
        matches!(self.inner, Either::Right(_))
    }

    /// Keeps the answer's send-budget reservation, if it has one, until the body is done.
    pub fn holding(mut self, reservation: Option<Reservation>) -> Self {
        self.reservation = reservation;
        self
    }

    /// Attaches the access log record, written when this body finishes or is dropped.
    pub fn with_record(mut self, record: AccessRecord) -> Self {
        let exchange = record.exchange().clone();
        if self.inner.is_end_stream() {
            exchange.completed.store(true, Ordering::Relaxed);
        }
        self.exchange = Some(exchange);
        self.record = Some(record);
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Pending => {
                if let Some(idle) = this.idle {
                    if idle.expired(cx) {
                        return Poll::Ready(Some(Err(Box::new(UpstreamIdle(idle.limit)))));
                    }
                }
                Poll::Pending
            }
            Poll::Ready(frame) => {
                if let Some(idle) = this.idle {
                    idle.last_frame = tokio::time::Instant::now();
                }
                if let Some(exchange) = this.exchange {
                    match &frame {
                        Some(Ok(f)) => {
                            if let Some(data) = f.data_ref() {
                                exchange
                                    .bytes_out
                                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                            }
                            exchange.touch();
                            // hyper stops polling a body that says it has ended, so the
                            // final `None` may never come.
                            if this.inner.is_end_stream() {
                                exchange.completed.store(true, Ordering::Relaxed);
                            }
                        }
                        None => exchange.completed.store(true, Ordering::Relaxed),
                        Some(Err(_)) => {}
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a body read whole is counted at in `MANIFEST_BUDGET`: its declared length, else
/// its limit; at least `MANIFEST_MIN_KIB`, and never more than the whole budget.
fn budget_kib(declared: Option<u64>, limit: usize) -> usize {
    let bytes = declared.map_or(limit as u64, |d| d.min(limit as u64));
    (bytes.div_ceil(1024) as usize).clamp(MANIFEST_MIN_KIB, MANIFEST_BUDGET_KIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_read_whole_is_counted_at_its_declared_length_or_its_limit() {
        assert_eq!(budget_kib(Some(3_000), 4 << 20), MANIFEST_MIN_KIB);
        assert_eq!(budget_kib(Some(1 << 20), 4 << 20), 1024);
        assert_eq!(budget_kib(None, 4 << 20), 4096);
        assert_eq!(budget_kib(Some(u64::MAX), 4 << 20), 4096);
        // Sixteen manifests at the registry's limit fill the budget.
        assert_eq!(MANIFEST_BUDGET_KIB / budget_kib(None, 4 << 20), 16);
    }
}
