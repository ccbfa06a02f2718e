//! The brake on password guessing. Failures are counted twice: per (client address, user
//! name), which locks out guessing at one account after a few tries, and per client address
//! alone, with a higher allowance, which locks out spraying many accounts. A lockout grows
//! with every further failure and is answered with 429 and `Retry-After`.
//!
//! While a lockout runs, every attempt it covers counts as one more failure, right password or
//! wrong, so the answers a locked-out source gets say nothing about its guesses. The one thing
//! that still passes is decided by `auth`, not here: a credential that was verified from the
//! same address before the lockout began (`Lockout::since`).
//!
//! With `[cluster]`, the counts are kept in the fleet's Redis as well, by one script per
//! failure that counts and decides in Redis's own clock, so N gates give a guesser no more
//! tries than one. A lockout learnt from Redis is kept here too, so the next check of a warm
//! credential stays a local read: Redis is asked only where a password is about to be hashed
//! (the cold path, which costs far more than a round trip) and when one failed. Without an
//! answer from Redis within `[cluster] timeout`, this gate's own counts decide alone.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::cluster::{Cluster, ClusterError};

/// Failures allowed per (address, user) before that pair is locked out: enough for typos.
const FREE_FAILURES_PER_USER: u32 = 5;
/// Failures allowed per address over all user names: a shared NAT's users mistyping now and
/// then stay under it, while one source spraying passwords at many accounts does not.
const FREE_FAILURES_PER_ADDRESS: u32 = 20;
/// Failures older than this are forgotten.
const WINDOW: Duration = Duration::from_secs(300);
/// The lockout doubles with every further failure, up to this.
const MAX_LOCKOUT: Duration = Duration::from_secs(300);
/// Entries tracked at most, per kind; past it the oldest unblocked state is dropped (an
/// attacker with more addresses than this is not stopped by per-address throttling anyway).
const MAX_TRACKED: usize = 65_536;

/// A lockout that covers an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    /// How long until it ends, if nothing else fails meanwhile.
    pub retry_after: Duration,
    /// When it began: a credential verified from the address before this instant was proven
    /// before any guessing that led here.
    pub since: Instant,
}

pub struct Throttle {
    state: Mutex<State>,
    /// The fleet's shared counts, with `[cluster]`.
    fleet: Option<Arc<Cluster>>,
    /// When the latest lockout ends, in milliseconds after `epoch` (rounded up): while none
    /// runs, which is nearly always, a login's check is one atomic read, not the lock.
    latest_until_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            state: Mutex::default(),
            fleet: None,
            latest_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// By (address bucket, keyed hash of the user name): the name itself is never kept, so
    /// long names cannot grow memory.
    pairs: Counters<(IpAddr, u64)>,
    addresses: Counters<IpAddr>,
    user_hasher: std::collections::hash_map::RandomState,
}

#[derive(Debug)]
struct Counters<K> {
    entries: HashMap<K, Entry>,
}

impl<K> Default for Counters<K> {
    fn default() -> Self {
        Counters {
            entries: HashMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    /// The running lockout: (since, until).
    locked: Option<(Instant, Instant)>,
}

impl Entry {
    fn lockout(&self, now: Instant) -> Option<Lockout> {
        let (since, until) = self.locked?;
        let retry_after = until.checked_duration_since(now)?;
        (!retry_after.is_zero()).then_some(Lockout { retry_after, since })
    }
}

impl<K: Eq + Hash + Copy> Counters<K> {
    fn lockout(&self, key: &K, now: Instant) -> Option<Lockout> {
        self.entries.get(key)?.lockout(now)
    }

    /// One more failure for `key`; a lockout starts once more than `free` failures fall in
    /// the window, and every failure after that doubles it.
    fn fail(&mut self, key: K, free: u32, now: Instant) {
        if self.entries.len() >= MAX_TRACKED && !self.entries.contains_key(&key) {
            self.make_room(now);
        }
        let entry = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            last: now,
            locked: None,
        });
        let running = entry.lockout(now);
        if running.is_none() && now.duration_since(entry.last) > WINDOW {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last = now;
        if entry.failures > free {
            let exponent = (entry.failures - free - 1).min(16);
            let until = now + Duration::from_secs(1u64 << exponent).min(MAX_LOCKOUT);
            let since = running.map_or(now, |l| l.since);
            entry.locked = Some((since, until));
        }
    }

    /// A lockout decided elsewhere in the fleet: kept unless this one's own runs longer.
    fn impose(&mut self, key: K, (since, until): (Instant, Instant), now: Instant) {
        if self.entries.len() >= MAX_TRACKED && !self.entries.contains_key(&key) {
            self.make_room(now);
        }
        let entry = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            last: now,
            locked: None,
        });
        entry.locked = match entry.locked {
            Some((s, u)) if u >= until => Some((s.min(since), u)),
            Some((s, _)) => Some((s.min(since), until)),
            None => Some((since, until)),
        };
    }

    /// Forgets the stale first, then the oldest unblocked; never a running lockout, so filling
    /// the table cannot be used to wipe one.
    fn make_room(&mut self, now: Instant) {
        self.entries
            .retain(|_, e| now.duration_since(e.last) < WINDOW || e.lockout(now).is_some());
        if self.entries.len() >= MAX_TRACKED {
            let mut ages: Vec<(Instant, K)> = self
                .entries
                .iter()
                .filter(|(_, e)| e.lockout(now).is_none())
                .map(|(k, e)| (e.last, *k))
                .collect();
            ages.sort_by_key(|(last, _)| *last);
            for (_, key) in ages.iter().take(MAX_TRACKED / 4) {
                self.entries.remove(key);
            }
        }
    }

    #[cfg(test)]
    fn locked_count(&self, now: Instant) -> usize {
        self.entries
            .values()
            .filter(|e| e.lockout(now).is_some())
            .count()
    }
}

impl Throttle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts shared with every gate that uses `cluster`.
    pub fn shared(cluster: Arc<Cluster>) -> Self {
        Throttle {
            fleet: Some(cluster),
            ..Self::default()
        }
    }

    /// The lockout that covers `user` from `ip` anywhere in the fleet: this gate's, or the
    /// one Redis holds (then kept here too). Without `[cluster]`, `lockout`.
    pub async fn lockout_everywhere(&self, ip: IpAddr, user: &str) -> Option<Lockout> {
        let local = self.lockout(ip, user);
        self.with_fleet(PEEK, ip, user, local).await
    }

    /// `record_failure`, counted in the fleet's Redis too.
    pub async fn record_failure_everywhere(&self, ip: IpAddr, user: &str) -> Option<Lockout> {
        let local = self.record_failure(ip, user);
        self.with_fleet(FAIL, ip, user, local).await
    }

    /// `local` merged with what the fleet's `script` answers; `local` alone without
    /// `[cluster]` or an answer from Redis.
    async fn with_fleet(
        &self,
        script: &str,
        ip: IpAddr,
        user: &str,
        local: Option<Lockout>,
    ) -> Option<Lockout> {
        let Some(cluster) = &self.fleet else {
            return local;
        };
        match fleet_call(cluster, script, ip, user).await {
            Ok(remote) => merge(local, self.learn(ip, user, remote)),
            Err(e) => {
                fleet_unreachable(&e);
                local
            }
        }
    }

    /// Keeps the fleet's lockouts of the pair and the address here, so that the local check
    /// sees them; returns the one that covers the attempt.
    fn learn(&self, ip: IpAddr, user: &str, remote: Remote) -> Option<Lockout> {
        let now = Instant::now();
        let as_local = |ends: Option<(u64, u64)>| {
            ends.map(|(since_ago, remaining)| {
                let since = now
                    .checked_sub(Duration::from_millis(since_ago))
                    .unwrap_or(now);
                (since, now + Duration::from_millis(remaining))
            })
        };
        let (pair_lock, address_lock) = (as_local(remote.pair), as_local(remote.address));
        if pair_lock.is_none() && address_lock.is_none() {
            return None;
        }
        let Ok(mut state) = self.state.lock() else {
            return None;
        };
        let bucket = bucket(ip);
        let pair = (bucket, state.user_hasher.hash_one(user));
        let mut latest = now;
        if let Some(lock) = pair_lock {
            state.pairs.impose(pair, lock, now);
            latest = latest.max(lock.1);
        }
        if let Some(lock) = address_lock {
            state.addresses.impose(bucket, lock, now);
            latest = latest.max(lock.1);
        }
        let until = latest.duration_since(self.epoch).as_millis() as u64 + 1;
        self.latest_until_ms.fetch_max(until, Ordering::Relaxed);
        state.lockout(ip, user, now)
    }

    /// The lockout that covers `user` logging in from `ip`, if any: the pair's or the
    /// address's, whichever ends later, dated from whichever began first (a credential must
    /// predate every lockout that covers it).
    pub fn lockout(&self, ip: IpAddr, user: &str) -> Option<Lockout> {
        if self.epoch.elapsed().as_millis() as u64 >= self.latest_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        let state = self.state.lock().ok()?;
        state.lockout(ip, user, Instant::now())
    }

    /// Counts a failed (or, during a lockout, any) attempt by `user` from `ip`; returns the
    /// lockout that now covers it, if any.
    pub fn record_failure(&self, ip: IpAddr, user: &str) -> Option<Lockout> {
        let Ok(mut state) = self.state.lock() else {
            return None;
        };
        let now = Instant::now();
        let bucket = bucket(ip);
        let pair = (bucket, state.user_hasher.hash_one(user));
        state.pairs.fail(pair, FREE_FAILURES_PER_USER, now);
        state.addresses.fail(bucket, FREE_FAILURES_PER_ADDRESS, now);
        let lockout = state.lockout(ip, user, now);
        if let Some(l) = &lockout {
            let until = (now + l.retry_after).duration_since(self.epoch).as_millis() as u64 + 1;
            self.latest_until_ms.fetch_max(until, Ordering::Relaxed);
        }
        lockout
    }

    /// (address, user) pairs and addresses currently locked out.
    #[cfg(test)]
    fn locked_count(&self) -> usize {
        let now = Instant::now();
        self.state
            .lock()
            .map(|s| s.pairs.locked_count(now) + s.addresses.locked_count(now))
            .unwrap_or(0)
    }
}

impl State {
    fn lockout(&self, ip: IpAddr, user: &str, now: Instant) -> Option<Lockout> {
        let bucket = bucket(ip);
        let pair = (bucket, self.user_hasher.hash_one(user));
        match (
            self.pairs.lockout(&pair, now),
            self.addresses.lockout(&bucket, now),
        ) {
            (Some(a), Some(b)) => Some(Lockout {
                retry_after: a.retry_after.max(b.retry_after),
                since: a.since.min(b.since),
            }),
            (a, b) => a.or(b),
        }
    }
}

/// Whichever of two lockouts ends later, dated from whichever began first.
fn merge(a: Option<Lockout>, b: Option<Lockout>) -> Option<Lockout> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Lockout {
            retry_after: a.retry_after.max(b.retry_after),
            since: a.since.min(b.since),
        }),
        (a, b) => a.or(b),
    }
}

/// The fleet's lockouts of one (address, user) pair and of the address, each as
/// (milliseconds since it began, milliseconds it has left), by Redis's clock.
struct Remote {
    pair: Option<(u64, u64)>,
    address: Option<(u64, u64)>,
}

/// One more failure for the pair (KEYS[1], ARGV[1] free) and the address (KEYS[2], ARGV[2]
/// free), decided as `Counters::fail` decides, in Redis's clock; returns the clock and each
/// key's running lockout (since, until), 0 where none runs.
const FAIL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, longest = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {now}
for i, key in ipairs(KEYS) do
  local free = tonumber(ARGV[i])
  local v = redis.call('HMGET', key, 'f', 'l', 's', 'u')
  local f, l = tonumber(v[1]) or 0, tonumber(v[2]) or now
  local s, u = tonumber(v[3]) or 0, tonumber(v[4]) or 0
  local running = u > now
  if not running and now - l > window then f = 0 end
  f = f + 1
  if f > free then
    u = now + math.min(1000 * 2 ^ math.min(f - free - 1, 16), longest)
    if not running then s = now end
    running = true
  end
  redis.call('HSET', key, 'f', f, 'l', now, 's', s, 'u', u)
  redis.call('PEXPIRE', key, math.max(window, u - now) + 1000)
  if running then
    table.insert(out, s)
    table.insert(out, u)
  else
    table.insert(out, 0)
    table.insert(out, 0)
  end
end
return out
";

/// The running lockouts of the pair and the address, in `FAIL`'s answer's form.
const PEEK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
for _, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 's', 'u')
  local s, u = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  if u > now then
    table.insert(out, s)
    table.insert(out, u)
  else
    table.insert(out, 0)
    table.insert(out, 0)
  end
end
return out
";

async fn fleet_call(
    cluster: &Cluster,
    script: &str,
    ip: IpAddr,
    user: &str,
) -> Result<Remote, ClusterError> {
    let bucket = bucket(ip).to_string();
    // The user name is hashed: names are not the fleet's business, and the key stays short.
    let user_key = hex::encode(&Sha256::digest(user.as_bytes())[..16]);
    let script = redis::Script::new(script);
    let mut call = script.key(cluster.key(&["lockout", &bucket, &user_key]));
    call.key(cluster.key(&["lockout", &bucket]))
        .arg(FREE_FAILURES_PER_USER)
        .arg(FREE_FAILURES_PER_ADDRESS)
        .arg(WINDOW.as_millis() as u64)
        .arg(MAX_LOCKOUT.as_millis() as u64);
    let answer: Vec<u64> = cluster.script(&call).await?;
    let at = |i: usize| {
        let (now, since, until) = (answer[0], answer[i], answer[i + 1]);
        (until > now).then(|| (now.saturating_sub(since), until - now))
    };
    if answer.len() != 5 {
        return Ok(Remote {
            pair: None,
            address: None,
        });
    }
    Ok(Remote {
        pair: at(1),
        address: at(3),
    })
}

fn fleet_unreachable(error: &ClusterError) {
    crate::metrics::get().cluster_fallback("lockout");
    tracing::debug!(error = %error, "lockouts: Redis unreachable; this gate's own counts decide");
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

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn a_pair_is_locked_after_its_free_failures_and_nobody_else_is() {
        let t = Throttle::new();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        for _ in 0..FREE_FAILURES_PER_USER {
            assert!(t.record_failure(a, "alice").is_none());
        }
        let first = t.record_failure(a, "alice").expect("locked out");
        assert!(first.retry_after <= Duration::from_secs(1) && !first.retry_after.is_zero());
        let second = t.record_failure(a, "alice").expect("still locked");
        assert!(second.retry_after > Duration::from_secs(1), "{second:?}");
        assert_eq!(second.since, first.since, "an extension keeps its start");
        assert!(t.lockout(a, "alice").is_some());
        assert!(
            t.lockout(a, "bob").is_none(),
            "another user from the address"
        );
        assert!(
            t.lockout(b, "alice").is_none(),
            "the user from another address"
        );
        assert_eq!(t.locked_count(), 1);
    }

    #[test]
    fn spraying_many_users_locks_the_address() {
        let t = Throttle::new();
        let a = ip("192.0.2.1");
        for i in 0..FREE_FAILURES_PER_ADDRESS {
            assert!(t.record_failure(a, &format!("user{i}")).is_none(), "{i}");
        }
        assert!(t.record_failure(a, "one-more").is_some());
        assert!(t.lockout(a, "never-tried").is_some());
        assert!(t.lockout(ip("192.0.2.2"), "never-tried").is_none());
    }

    #[test]
    fn a_lockout_covering_both_is_dated_from_the_first() {
        let t = Throttle::new();
        let a = ip("192.0.2.1");
        for _ in 0..=FREE_FAILURES_PER_USER {
            t.record_failure(a, "alice");
        }
        let pair = t.lockout(a, "alice").expect("pair locked");
        for i in 0..FREE_FAILURES_PER_ADDRESS {
            t.record_failure(a, &format!("user{i}"));
        }
        let both = t.lockout(a, "alice").expect("locked");
        assert_eq!(both.since, pair.since);
        assert!(t.lockout(a, "user0").expect("address locked").since > pair.since);
    }

    #[test]
    fn an_ipv6_64_shares_one_budget() {
        let t = Throttle::new();
        for i in 0..=FREE_FAILURES_PER_USER {
            t.record_failure(ip(&format!("2001:db8:1:2::{:x}", i + 1)), "alice");
        }
        assert!(t.lockout(ip("2001:db8:1:2::ffff"), "alice").is_some());
        assert!(t.lockout(ip("2001:db8:1:3::1"), "alice").is_none());
    }
}
