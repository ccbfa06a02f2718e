//! The memory HTTP/2 answers may hold in the gate while their clients do not read them: one
//! budget for all connections (`[server] h2_buffer_budget`), a share of it per connection
//! (`h2_connection_buffer`), and a fixed reservation per answer read from the registry
//! (`h2_stream_buffer` plus the registry chunks in hand, `per_stream`).
//!
//! Over HTTP/2 a client can open hundreds of streams, make the gate fetch a layer on each
//! and then never read: every stream fills hyper's send buffer and holds a chunk from the
//! registry, and nothing else stops it. A forwarded GET therefore first reserves its stream's
//! worth here, from its connection's share and from the budget, waiting while either is spent,
//! and gives it back when its answer is sent or dropped. So a connection holds at most its
//! share and all of them the budget, however many streams they open; a waiting request has
//! not reached the registry yet and costs only its headers.
//!
//! Nothing here touches the bytes: they sit in hyper's send buffer, capped per stream by the
//! server floor, and in the registry chunk being passed on. This only counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The unit of the semaphores: byte counts in the hundreds of MiB fit the `u32` that
/// `acquire_many` takes, and nothing here needs finer grain.
const UNIT: u64 = 1024;

/// At most one warning this often that the budget is spent: under attack every waiting
/// request would log one.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What one answer reserves: the stream's send buffer, plus what the registry client holds
/// of it (`upstream::REGISTRY_BYTES_IN_HAND`: the chunk hyper's pipe holds and the
/// registry read buffer it was cut from).
pub fn per_stream(h2_stream_buffer: usize, registry_in_hand: u64) -> u64 {
    h2_stream_buffer as u64 + registry_in_hand
}

/// The budget all HTTP/2 connections share; made once at start.
#[derive(Debug)]
pub struct SendBudget {
    total: Arc<Semaphore>,
    units: u64,
    started: Instant,
    /// Milliseconds since `started` of the last "budget spent" warning, plus one (0: never).
    warned_ms: AtomicU64,
}

/// One connection's share of the budget, and what each of its answers reserves.
#[derive(Debug, Clone)]
pub struct ConnShare {
    own: Arc<Semaphore>,
    units: u64,
    per_stream: u64,
}

/// An answer's reservation, held with its body and given back when the body is dropped.
#[derive(Debug)]
pub struct Reservation {
    _own: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl SendBudget {
    pub fn new(bytes: u64) -> SendBudget {
        let units = units(bytes);
        SendBudget {
            total: Arc::new(Semaphore::new(units as usize)),
            units,
            started: Instant::now(),
            warned_ms: AtomicU64::new(0),
        }
    }

    /// Reserves one answer's worth (at most the share's and the budget's whole) from `share`,
    /// then from the budget, waiting in turn for each. The share first: a connection waiting
    /// for its own streams to finish must not sit on part of the budget meanwhile.
    pub async fn reserve(&self, share: &ConnShare) -> Reservation {
        let wanted = units(share.per_stream).min(share.units).min(self.units);
        // `units` caps every count at u32::MAX.
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
        let own = acquire(&share.own, wanted).await;
        let total = match self.total.clone().try_acquire_many_owned(wanted) {
            Ok(permit) => permit,
            Err(_) => {
                self.warn_spent();
                acquire(&self.total, wanted).await
            }
        };
        Reservation {
            _own: own,
            _total: total,
        }
    }

    /// Bytes of the budget not reserved now.
    pub fn available(&self) -> u64 {
        self.total.available_permits() as u64 * UNIT
    }

    fn warn_spent(&self) {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.warned_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < WARN_EVERY.as_millis() as u64 {
            return;
        }
        if self
            .warned_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                budget_bytes = self.units * UNIT,
                "[server] h2_buffer_budget is spent: HTTP/2 downloads wait until others finish (clients that stop reading, or more parallel downloads than the budget holds)"
            );
        }
    }
}

impl ConnShare {
    /// A share of `bytes` whose answers reserve `per_stream` each.
    pub fn new(bytes: u64, per_stream: u64) -> ConnShare {
        let units = units(bytes);
        ConnShare {
            own: Arc::new(Semaphore::new(units as usize)),
            units,
            per_stream,
        }
    }
}

/// Whole units, at least one (a share that holds nothing would block its connection
/// forever) and no more than a semaphore counts.
fn units(bytes: u64) -> u64 {
    (bytes / UNIT)
        .clamp(1, Semaphore::MAX_PERMITS as u64)
        .min(u64::from(u32::MAX))
}

async fn acquire(semaphore: &Arc<Semaphore>, units: u32) -> OwnedSemaphorePermit {
    // Acquiring fails only on a closed semaphore, and nothing ever closes these.
    semaphore
        .clone()
        .acquire_many_owned(units)
        .await
        .expect("the send budget's semaphores are never closed")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[tokio::test]
    async fn a_connection_holds_at_most_its_share_and_all_at_most_the_budget() {
        let budget = SendBudget::new(3 * MIB);
        let first = ConnShare::new(2 * MIB, MIB);
        let second = ConnShare::new(2 * MIB, MIB);
        let a = budget.reserve(&first).await;
        let b = budget.reserve(&first).await;
        let wait = std::time::Duration::from_millis(50);
        assert!(
            tokio::time::timeout(wait, budget.reserve(&first))
                .await
                .is_err(),
            "a third stream fit a two-stream share"
        );
        let c = budget.reserve(&second).await;
        assert_eq!(budget.available(), 0);
        assert!(
            tokio::time::timeout(wait, budget.reserve(&second))
                .await
                .is_err(),
            "the budget was overdrawn"
        );
        drop(a);
        let d = tokio::time::timeout(wait, budget.reserve(&second))
            .await
            .expect("a returned reservation is reused");
        drop((b, c, d));
        assert_eq!(budget.available(), 3 * MIB);
    }

    #[tokio::test]
    async fn a_reservation_larger_than_the_share_takes_the_whole_share() {
        let budget = SendBudget::new(8 * MIB);
        let share = ConnShare::new(MIB, 4 * MIB);
        let held = budget.reserve(&share).await;
        assert_eq!(budget.available(), 7 * MIB);
        drop(held);
    }
}
