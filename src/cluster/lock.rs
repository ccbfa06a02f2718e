//! A lock every gate of the fleet honours, for `[[protect]]`'s per-repository writes: a key
//! set only if absent (`SET NX PX`), holding a fencing token from a counter that only grows,
//! so holders are ordered and a late release or renewal by an old holder is refused. It
//! expires after `[cluster] lock_ttl` unless its holder renews it, so a gate that dies
//! holding it blocks the repository that long at most.
//!
//! While held, a task renews it every third of its life. The holder knows, without asking
//! Redis, until when it is certainly still the holder (`held`): the last confirmed renewal
//! plus the lifetime, less a margin for clocks that run at different speeds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Cluster, ClusterError};

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another gate holds the write lock of {name} for longer than {waited:?}")]
    Busy { name: String, waited: Duration },
    #[error(transparent)]
    Unreachable(#[from] ClusterError),
}

/// Takes the lock when it is free: a new fencing token, then the key set to it if absent.
const ACQUIRE: &str = r"
local token = redis.call('INCR', KEYS[2])
if redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[1]) then
  return token
end
return 0
";

/// Renews the lock only for the holder whose token it still holds.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Releases the lock only for the holder whose token it still holds.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The fleet-wide lock of one name; released when dropped.
pub struct ClusterLock {
    cluster: Arc<Cluster>,
    key: String,
    token: u64,
    /// Milliseconds after `started` until which this gate is certainly the holder.
    held_until_ms: Arc<AtomicU64>,
    started: Instant,
    renewer: tokio::task::JoinHandle<()>,
}

impl ClusterLock {
    /// The fencing token: larger for every later holder of any lock of this fleet's name.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Whether this gate is certainly still the holder: renewals have kept up.
    pub fn held(&self) -> bool {
        (self.started.elapsed().as_millis() as u64) < self.held_until_ms.load(Ordering::Relaxed)
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        self.renewer.abort();
        let (cluster, key, token) = (self.cluster.clone(), self.key.clone(), self.token);
        // Released off the request's path; if this fails, the expiry releases it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let script = redis::Script::new(RELEASE);
                let mut call = script.key(&key);
                call.arg(token);
                if let Err(e) = cluster.script::<i64>(&call).await {
                    tracing::debug!(error = %e, key = %key, "cluster: lock release failed; it expires on its own");
                }
            });
        }
    }
}

impl Cluster {
    /// Takes the fleet-wide lock `name`, waiting up to `wait` for its holder to let go.
    /// Without Redis, no lock: the caller must refuse what the lock protects.
    pub async fn lock(
        self: &Arc<Self>,
        name: &str,
        wait: Duration,
    ) -> Result<ClusterLock, LockError> {
        let key = self.key(&["lock", name]);
        let fence = self.key(&["fence"]);
        let ttl_ms = self.lock_ttl.as_millis() as u64;
        let script = redis::Script::new(ACQUIRE);
        let started = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let asked = Instant::now();
            let mut call = script.key(&key);
            call.key(&fence).arg(ttl_ms);
            let token: u64 = self.script(&call).await?;
            if token != 0 {
                let held_until = Arc::new(AtomicU64::new(0));
                let lock_started = asked;
                held_until.store(lease_end(lock_started, asked, ttl_ms), Ordering::Relaxed);
                let renewer = tokio::spawn(renew(
                    self.clone(),
                    key.clone(),
                    token,
                    held_until.clone(),
                    lock_started,
                ));
                return Ok(ClusterLock {
                    cluster: self.clone(),
                    key,
                    token,
                    held_until_ms: held_until,
                    started: lock_started,
                    renewer,
                });
            }
            if started.elapsed() + pause > wait {
                return Err(LockError::Busy {
                    name: name.to_string(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

/// Until when (milliseconds after `started`) a lock renewed by a call sent at `asked` is
/// certainly held: its lifetime counted from before the call, less 1 % for clock drift.
fn lease_end(started: Instant, asked: Instant, ttl_ms: u64) -> u64 {
    let sent = asked.duration_since(started).as_millis() as u64;
    sent + ttl_ms - ttl_ms / 100
}

async fn renew(
    cluster: Arc<Cluster>,
    key: String,
    token: u64,
    held_until: Arc<AtomicU64>,
    started: Instant,
) {
    let ttl_ms = cluster.lock_ttl.as_millis() as u64;
    let script = redis::Script::new(RENEW);
    let mut tick = tokio::time::interval(cluster.lock_ttl / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let asked = Instant::now();
        let mut call = script.key(&key);
        call.arg(token).arg(ttl_ms);
        match cluster.script::<i64>(&call).await {
            Ok(1) => held_until.store(lease_end(started, asked, ttl_ms), Ordering::Relaxed),
            Ok(_) => {
                // Another holder has it: this one lapsed. Never held again.
                held_until.store(0, Ordering::Relaxed);
                return;
            }
            // Keep trying while the lease lasts; `held` turns false when it ends.
            Err(_) => {}
        }
    }
}
