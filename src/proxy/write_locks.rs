//! `[[protect]]`'s per-repository write locks: a manifest write to a repository a protection
//! covers holds its repository's lock from the check until the registry has answered, so two
//! writes through this gate never interleave between check and write. The API path and the
//! browser's delete take the same locks; they outlive reloads, so a write in flight during
//! one still excludes the next. Per process: replicas each have their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// One lock per repository with protected tags. Entries go when no
/// write holds or waits for them (looked at once the map is large).
#[derive(Default)]
pub struct WriteLocks(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

/// A repository's manifest writes, held until the registry has answered this one.
pub type WriteGuard = tokio::sync::OwnedMutexGuard<()>;

/// Repositories with a lock entry before the unused ones are dropped.
const PRUNE_LOCKS_AT: usize = 1024;

impl WriteLocks {
    pub async fn lock(&self, repository: &str) -> WriteGuard {
        let lock = {
            let mut locks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
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
        lock.lock_owned().await
    }
}
