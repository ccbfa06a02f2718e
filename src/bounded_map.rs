//! A map with a size bound, shared by the caches that remember what was costly to learn:
//! verified passwords (`auth`), verified OIDC tokens (`auth::oidc`) and image creation dates
//! (the registry browser).
//!
//! When full, entries the caller no longer finds usable go first; if it is still full, it
//! starts over. Tracking what was used last would cost more than these caches save, and a
//! flood of distinct entries can never grow memory past the bound.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

pub struct BoundedMap<K, V> {
    map: Mutex<HashMap<K, V>>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> BoundedMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        BoundedMap {
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The value under `key`, when `usable` says it still is.
    pub fn get_if<Q>(&self, key: &Q, usable: impl FnOnce(&V) -> bool) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.lock().get(key).filter(|v| usable(v)).cloned()
    }

    /// Stores `value`, making room first when full: entries `keep` refuses go, then all.
    pub fn insert(&self, key: K, value: V, keep: impl FnMut(&K, &mut V) -> bool) {
        let mut map = self.lock();
        if map.len() >= self.capacity {
            map.retain(keep);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(key, value);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every change is one insert, retain or clear, so a panic elsewhere while the lock was
    /// held cannot leave the map half written: a poisoned lock is taken as it is.
    fn lock(&self) -> MutexGuard<'_, HashMap<K, V>> {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_full_the_unusable_go_first_then_everything() {
        let map = BoundedMap::new(4);
        for i in 0..4 {
            map.insert(i, i, |_, _| true);
        }
        // Full: the odd ones are kept, the new one comes in.
        map.insert(10, 10, |k, _| k % 2 == 1);
        assert_eq!(map.len(), 3);
        assert_eq!(map.get_if(&1, |_| true), Some(1));
        assert_eq!(map.get_if(&0, |_| true), None);
        map.insert(11, 11, |_, _| true);
        // Full of entries all kept: it starts over.
        map.insert(12, 12, |_, _| true);
        assert_eq!(map.len(), 1);
        assert_eq!(map.get_if(&12, |v| *v == 12), Some(12));
        assert_eq!(map.get_if(&12, |v| *v != 12), None, "usable decides");
    }
}
