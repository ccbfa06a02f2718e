//! `[[protect]]`'s per-repository write locks: a manifest write to a repository a protection
//! covers holds its repository's lock from the check until the registry has answered, so two
//! writes never interleave between check and write. The API path and the browser's delete
//! take the same locks; they outlive reloads, so a write in flight during one still excludes
//! the next.
//!
//! Within this gate the lock is a mutex per repository. With `[cluster]`, a write also holds
//! the fleet's lock of the repository (`cluster::lock`), taken after the local one so that
//! one gate's own writers queue here instead of polling Redis. Without Redis there is no
//! fleet lock, and the write is refused (503), never passed unchecked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::cluster::lock::{ClusterLock, LockError};
use crate::cluster::Cluster;

/// One lock per repository with protected tags. Entries go when no
/// write holds or waits for them (looked at once the map is large).
#[derive(Default)]
pub struct WriteLocks {
    local: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    cluster: Option<Arc<Cluster>>,
}

/// A repository's manifest writes, held until the registry has answered this one.
pub struct WriteGuard {
    _local: tokio::sync::OwnedMutexGuard<()>,
    fleet: Option<ClusterLock>,
}

impl WriteGuard {
    /// Whether the write may still go ahead: always within one gate; in a fleet, while the
    /// fleet's lock has certainly not lapsed.
    pub fn held(&self) -> bool {
        self.fleet.as_ref().is_none_or(ClusterLock::held)
    }
}

/// Repositories with a lock entry before the unused ones are dropped.
const PRUNE_LOCKS_AT: usize = 1024;

impl WriteLocks {
    /// Locks shared with the fleet through `cluster`, or this gate's own without it.
    pub fn new(cluster: Option<Arc<Cluster>>) -> WriteLocks {
        WriteLocks {
            local: Mutex::default(),
            cluster,
        }
    }

    /// The repository's lock; in a fleet, waiting up to `wait` for another gate's write.
    pub async fn lock(&self, repository: &str, wait: Duration) -> Result<WriteGuard, LockError> {
        let lock = {
            let mut locks = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            match locks.get(repository).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    if locks.len() >= PRUNE_LOCKS_AT {
                        locks.retain(|_, lock| lock.strong_count() > 0);
                    }
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(repository.to_string(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        let local = lock.lock_owned().await;
        let fleet = match &self.cluster {
            Some(cluster) => Some(cluster.lock(&format!("protect:{repository}"), wait).await?),
            None => None,
        };
        Ok(WriteGuard {
            _local: local,
            fleet,
        })
    }
}
