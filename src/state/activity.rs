//! The gate's own memory of recent manifest pushes and deletes: the last [`CAPACITY`]
//! changes the registry accepted through the gate, newest last, for the browser's activity
//! page.
//!
//! Owns: the bounded ring and nothing else. It is fed the same plain `events::Event` the
//! `[[events]]` receivers get (built by `accepted_change` in `proxy/mod.rs`), whether or not
//! receivers are configured, and it never decides who may see an entry: the page filters by
//! `Caller::may` on the way out.
//!
//! It lives in `Shared`, so a reload keeps it; a restart empties it. It is memory, not a
//! journal: the access log (and the event receivers) are the record that survives.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::events::Event;

/// Changes kept. One entry is an `Event`: a repository name, a tag, a 71-byte digest, the
/// user, token and OIDC subject, a request id and a few fixed-size fields, about 300–600
/// bytes with allocation overhead; 1000 of them stay under 1 MiB however long the gate runs,
/// and cover days of pushes on a team registry (one manifest write per image pushed).
pub const CAPACITY: usize = 1000;

/// The ring. A std `Mutex`: it is taken once per accepted manifest write and once per
/// activity page, never across an await, and held only to push or to clone `Arc`s.
pub struct Activity {
    capacity: usize,
    entries: Mutex<VecDeque<Arc<Event>>>,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::with_capacity(CAPACITY)
    }
}

impl Activity {
    pub fn with_capacity(capacity: usize) -> Activity {
        Activity {
            capacity,
            entries: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    /// Remembers `event`, forgetting the oldest when the ring is full.
    pub fn record(&self, event: Event) {
        let mut entries = self.lock();
        while entries.len() >= self.capacity.max(1) {
            entries.pop_front();
        }
        entries.push_back(Arc::new(event));
    }

    /// Every remembered change, newest first. Cloning `Arc`s keeps the lock short; the
    /// caller filters by permission afterwards.
    pub fn newest_first(&self) -> Vec<Arc<Event>> {
        self.lock().iter().rev().cloned().collect()
    }

    /// A panic elsewhere while holding the lock leaves a ring that is still whole (push and
    /// pop cannot be half done), so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Event>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Actor, EventAction};
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::SystemTime;

    fn event(n: usize) -> Event {
        Event {
            action: EventAction::Push,
            repository: format!("team/app{n}"),
            tag: Some("latest".into()),
            digest: None,
            actor: Actor {
                user: "alice".into(),
                token: None,
                oidc_subject: None,
            },
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            time: SystemTime::now(),
            request_id: format!("id-{n}"),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_capacity_entries_newest_first() {
        let ring = Activity::with_capacity(3);
        assert!(ring.newest_first().is_empty());
        for n in 0..10 {
            ring.record(event(n));
            assert!(ring.newest_first().len() <= 3);
        }
        let kept: Vec<String> = ring
            .newest_first()
            .iter()
            .map(|e| e.request_id.clone())
            .collect();
        assert_eq!(kept, ["id-9", "id-8", "id-7"]);
    }

    #[test]
    fn the_default_ring_is_bounded_by_capacity() {
        let ring = Activity::default();
        for n in 0..CAPACITY + 25 {
            ring.record(event(n));
        }
        let kept = ring.newest_first();
        assert_eq!(kept.len(), CAPACITY);
        assert_eq!(kept[0].request_id, format!("id-{}", CAPACITY + 24));
        assert_eq!(kept[CAPACITY - 1].request_id, "id-25");
    }
}
