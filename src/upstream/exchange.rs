//! The progress of one request/response exchange, shared by both body directions, the
//! registry client and the access record: bytes each way, when a byte last moved (the idle
//! timeout), and how each side ended.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Progress of one request/response exchange, shared by both body directions.
#[derive(Debug)]
pub struct Exchange {
    pub(crate) started: Instant,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) last_activity_ms: AtomicU64,
    pub(crate) completed: AtomicBool,
    pub(crate) client_body_failed: AtomicBool,
    pub(crate) client_body_ended: AtomicBool,
}

impl Exchange {
    pub fn new() -> Arc<Exchange> {
        Arc::new(Exchange {
            started: Instant::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            completed: AtomicBool::new(false),
            client_body_failed: AtomicBool::new(false),
            client_body_ended: AtomicBool::new(false),
        })
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// True once the response body reached its end (rather than being cut) after the
    /// request body did: an upload the client broke off is not a completed exchange, whatever
    /// the gate answered afterwards.
    pub fn completed(&self) -> bool {
        self.completed.load(Ordering::Relaxed) && !self.client_body_failed()
    }

    /// True once reading the client's request body failed (bad chunked framing, a DATA frame
    /// past `content-length`, a client gone mid-upload): whatever the upstream exchange then
    /// reports is the client's fault, not the registry's.
    pub fn client_body_failed(&self) -> bool {
        self.client_body_failed.load(Ordering::Relaxed)
    }

    /// True once the client's request body was read to its end (or had none): only then
    /// can an HTTP/1.1 connection carry the client's next request.
    pub fn client_body_ended(&self) -> bool {
        self.client_body_ended.load(Ordering::Relaxed)
    }

    pub(crate) fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves once neither direction has moved a byte for `limit`. An idle timeout, not a
    /// total one: an upload that keeps sending never trips it however long it takes.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
            let deadline = self.started + last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}
