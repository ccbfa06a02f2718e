//! The brake on password guessing: per client address, failures within a window earn a
//! growing lockout answered with 429 and `Retry-After`. Other addresses are not affected and
//! a credential that has already been verified is never throttled.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per address before the lockout starts: enough for typos.
const FREE_FAILURES: u32 = 5;
/// Failures older than this are forgotten.
const WINDOW: Duration = Duration::from_secs(300);
/// The lockout doubles with every further failure, up to this.
const MAX_LOCKOUT: Duration = Duration::from_secs(300);
/// Addresses tracked at most; past it the oldest unblocked state is dropped (an attacker with
/// more addresses than this is not stopped by per-address throttling anyway).
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Default)]
pub struct Throttle {
    state: Mutex<HashMap<IpAddr, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl Throttle {
    pub fn new() -> Self {
        Self::default()
    }

    /// `Some(wait)` while `ip` is locked out.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let state = self.state.lock().ok()?;
        let until = state.get(&bucket(ip))?.blocked_until?;
        until.checked_duration_since(Instant::now())
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        if state.len() >= MAX_TRACKED {
            // Forget the stale first, then the oldest unblocked; never a running lockout, so
            // filling the table cannot be used to wipe one.
            state.retain(|_, e| {
                now.duration_since(e.last) < WINDOW || e.blocked_until.is_some_and(|u| u > now)
            });
            if state.len() >= MAX_TRACKED {
                let mut ages: Vec<(Instant, IpAddr)> = state
                    .iter()
                    .filter(|(_, e)| !e.blocked_until.is_some_and(|u| u > now))
                    .map(|(ip, e)| (e.last, *ip))
                    .collect();
                ages.sort();
                for (_, ip) in ages.iter().take(MAX_TRACKED / 4) {
                    state.remove(ip);
                }
            }
        }
        let entry = state.entry(bucket(ip)).or_insert(Entry {
            failures: 0,
            last: now,
            blocked_until: None,
        });
        if now.duration_since(entry.last) > WINDOW {
            entry.failures = 0;
        }
        entry.failures += 1;
        entry.last = now;
        if entry.failures > FREE_FAILURES {
            let exponent = (entry.failures - FREE_FAILURES - 1).min(16);
            let lockout = Duration::from_secs(1u64 << exponent).min(MAX_LOCKOUT);
            entry.blocked_until = Some(now + lockout);
        }
    }

    /// Addresses currently locked out (for metrics).
    pub fn blocked_count(&self) -> usize {
        let now = Instant::now();
        self.state
            .lock()
            .map(|s| {
                s.values()
                    .filter(|e| e.blocked_until.is_some_and(|u| u > now))
                    .count()
            })
            .unwrap_or(0)
    }
}

/// IPv6 clients are counted per /64: one host usually owns a whole /64, and counting single
/// addresses would give it 2^64 fresh budgets.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_starts_after_free_failures_and_only_for_that_address() {
        let t = Throttle::new();
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..FREE_FAILURES {
            t.record_failure(a);
            assert!(t.blocked(a).is_none());
        }
        t.record_failure(a);
        let wait = t.blocked(a).expect("locked out");
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        t.record_failure(a);
        assert!(t.blocked(a).expect("still locked") > Duration::from_secs(1));
        assert!(t.blocked(b).is_none());
        assert_eq!(t.blocked_count(), 1);
    }

    #[test]
    fn an_ipv6_64_shares_one_budget() {
        let t = Throttle::new();
        for i in 0..=FREE_FAILURES {
            let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().expect("ip");
            t.record_failure(ip);
        }
        assert!(t
            .blocked("2001:db8:1:2::ffff".parse().expect("ip"))
            .is_some());
        assert!(t.blocked("2001:db8:1:3::1".parse().expect("ip")).is_none());
    }
}
