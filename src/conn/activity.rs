//! What a connection is doing, for the idle timeout and the brake on cancelled requests:
//! the server floor watches it, and every request marks it while in flight.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Cancelled requests a connection may have before it is judged: a client that breaks off a
/// pull (Ctrl-C, a failed layer ending its siblings) cancels a handful, never dozens. h2
/// ends a connection after 20 streams reset before they were taken up; this catches the
/// ones reset a little later, after the gate has taken them up and asked the registry.
pub const CANCELS_TOLERATED: u64 = 50;

/// What a connection is doing, for the idle timeout: when a request last started or ended,
/// and how many are in flight (a request waiting on a slow registry is not idle). Bytes alone
/// do not count: a client trickling a request head or HTTP/2 control frames between requests
/// is holding the connection, not using it.
///
/// And how its requests ended: answered in full, or cancelled first (the stream reset by the
/// client, or by the server for the client's protocol error, the connection gone). A
/// connection with more than [`CANCELS_TOLERATED`] cancelled requests and more cancelled than
/// answered is condemned: each cancelled request cost a registry request and usually a
/// registry connection, and the client had no use for any of them.
#[derive(Debug)]
pub struct ConnActivity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    any_request: AtomicBool,
    answered: AtomicU64,
    cancelled: AtomicU64,
    condemned: AtomicBool,
    condemn: Notify,
}

/// Held by a request from its start until its response body is finished or dropped; how it
/// ended is told with `end`, and a request dropped without that counts as cancelled.
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<ConnActivity>,
    answered: bool,
}

impl InFlight {
    /// The request is over: `answered` when its answer was sent in full.
    pub fn end(mut self, answered: bool) {
        self.answered = answered;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.activity;
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        activity.touch();
        if self.answered {
            activity.answered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let cancelled = activity.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        if cancelled > CANCELS_TOLERATED
            && cancelled > activity.answered.load(Ordering::Relaxed)
            && !activity.condemned.swap(true, Ordering::Relaxed)
        {
            // A stored permit: the server's watcher sees it even if it is not waiting now.
            activity.condemn.notify_one();
        }
    }
}

impl ConnActivity {
    pub fn new() -> Arc<ConnActivity> {
        Arc::new(ConnActivity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            any_request: AtomicBool::new(false),
            answered: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            condemned: AtomicBool::new(false),
            condemn: Notify::new(),
        })
    }

    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.any_request.store(true, Ordering::Relaxed);
        self.touch();
        InFlight {
            activity: self.clone(),
            answered: false,
        }
    }

    /// Requests answered in full and requests cancelled so far.
    pub fn outcomes(&self) -> (u64, u64) {
        (
            self.answered.load(Ordering::Relaxed),
            self.cancelled.load(Ordering::Relaxed),
        )
    }

    /// True once the connection has cancelled too much: its new requests are refused.
    pub fn condemned(&self) -> bool {
        self.condemned.load(Ordering::Relaxed)
    }

    /// Resolves once the connection is condemned, for the server to end it.
    pub async fn condemned_now(&self) {
        while !self.condemned() {
            self.condemn.notified().await;
        }
    }

    /// Resolves if no request has started `limit` after the connection was set up; never
    /// once one has.
    pub async fn no_request_within(&self, limit: Duration) {
        tokio::time::sleep_until((self.started + limit).into()).await;
        if self.any_request.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no request has been in flight for `limit`, including on a fresh
    /// connection that never sends a request.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.started + last + limit;
            let now = Instant::now();
            if now >= deadline {
                if self.in_flight.load(Ordering::Relaxed) == 0 {
                    return;
                }
                // Busy: the exchange's own timeouts apply; look again later.
                tokio::time::sleep(limit).await;
                continue;
            }
            tokio::time::sleep(deadline - now).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(activity: &Arc<ConnActivity>, answered: bool) {
        activity.enter().end(answered);
    }

    #[test]
    fn a_connection_is_condemned_for_cancelling_more_than_it_answers() {
        let activity = ConnActivity::new();
        for _ in 0..CANCELS_TOLERATED {
            run(&activity, false);
        }
        assert!(!activity.condemned(), "condemned within the tolerance");
        // Dropped without `end`: a request future hyper dropped.
        drop(activity.enter());
        assert!(activity.condemned());
        assert_eq!(activity.outcomes(), (0, CANCELS_TOLERATED + 1));
    }

    #[test]
    fn cancellations_among_more_answers_are_a_client_changing_its_mind() {
        let activity = ConnActivity::new();
        for _ in 0..3 * CANCELS_TOLERATED {
            run(&activity, true);
            run(&activity, false);
        }
        assert!(!activity.condemned());
        assert_eq!(
            activity.outcomes(),
            (3 * CANCELS_TOLERATED, 3 * CANCELS_TOLERATED)
        );
    }

    #[tokio::test]
    async fn the_watcher_learns_of_it_even_when_it_looks_later() {
        let activity = ConnActivity::new();
        for _ in 0..=CANCELS_TOLERATED {
            run(&activity, false);
        }
        tokio::time::timeout(Duration::from_secs(5), activity.condemned_now())
            .await
            .expect("condemned_now resolves");
    }
}
