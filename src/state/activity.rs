//! The gate's own memory of recent manifest pushes and deletes: the last [`CAPACITY`]
//! changes the registry accepted through the gate, newest last, for the browser's activity
//! page.
//!
//! Owns: the bounded ring and nothing else. It is fed the same plain `events::Event` the
//! `[[events]]` receivers get (built by `accepted_change` in `proxy/mod.rs`), whether or not
//! receivers are configured, and it never decides who may see an entry: the page filters by
//! `Caller::may` on the way out.
//!
//! It lives in the `Kit`, so a reload keeps it; a restart empties it. It is memory, not a
//! journal: the access log (and the event receivers) are the record that survives.
//!
//! With `[cluster]` the fleet has one feed: every change is also appended to a Redis stream
//! capped near `CAPACITY` (off the request's path), and the page reads the stream, so every
//! gate shows the same list. Without an answer from Redis the page shows this gate's ring.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::config::EventAction;
use crate::events::{Actor, Event};

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
    fleet: Option<Arc<Cluster>>,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::with_capacity(CAPACITY)
    }
}

/// One change as the fleet's stream holds it (JSON in the entry's `e` field).
#[derive(Serialize, Deserialize)]
struct Stored {
    push: bool,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
    user: String,
    token: Option<String>,
    oidc_subject: Option<String>,
    client: IpAddr,
    /// Milliseconds since the epoch.
    time: u64,
    request_id: String,
}

impl Stored {
    fn of(event: &Event) -> Stored {
        Stored {
            push: event.action == EventAction::Push,
            repository: event.repository.clone(),
            tag: event.tag.clone(),
            digest: event.digest.clone(),
            user: event.actor.user.clone(),
            token: event.actor.token.clone(),
            oidc_subject: event.actor.oidc_subject.clone(),
            client: event.client,
            time: event
                .time
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            request_id: event.request_id.clone(),
        }
    }

    fn into_event(self) -> Event {
        Event {
            action: if self.push {
                EventAction::Push
            } else {
                EventAction::Delete
            },
            repository: self.repository,
            tag: self.tag,
            digest: self.digest,
            actor: Actor {
                user: self.user,
                token: self.token,
                oidc_subject: self.oidc_subject,
            },
            client: self.client,
            time: UNIX_EPOCH + Duration::from_millis(self.time),
            request_id: self.request_id,
        }
    }
}

impl Activity {
    pub fn with_capacity(capacity: usize) -> Activity {
        Activity {
            capacity,
            entries: Mutex::new(VecDeque::with_capacity(capacity)),
            fleet: None,
        }
    }

    /// One feed for the fleet that shares `cluster`.
    pub fn shared(cluster: Arc<Cluster>) -> Activity {
        Activity {
            fleet: Some(cluster),
            ..Activity::default()
        }
    }

    /// Remembers `event`, forgetting the oldest when the ring is full; with `[cluster]`,
    /// appends it to the fleet's feed too, without holding up the answer.
    pub fn record(&self, event: Event) {
        if let Some(cluster) = &self.fleet {
            if let Ok(json) = serde_json::to_string(&Stored::of(&event)) {
                let cluster = cluster.clone();
                let capacity = self.capacity;
                tokio::spawn(async move {
                    let added: Result<String, _> = cluster
                        .query(
                            redis::cmd("XADD")
                                .arg(cluster.key(&["activity"]))
                                .arg("MAXLEN")
                                .arg("~")
                                .arg(capacity)
                                .arg("*")
                                .arg("e")
                                .arg(json),
                        )
                        .await;
                    if let Err(e) = added {
                        crate::metrics::get().cluster_fallback("activity");
                        tracing::debug!(error = %e, "a change is in this gate's activity only");
                    }
                });
            }
        }
        let mut entries = self.lock();
        while entries.len() >= self.capacity.max(1) {
            entries.pop_front();
        }
        entries.push_back(Arc::new(event));
    }

    /// The fleet's feed, newest first, with `[cluster]` and an answer from Redis; else this
    /// gate's own (`newest_first`).
    pub async fn fleet_newest_first(&self) -> Vec<Arc<Event>> {
        let Some(cluster) = &self.fleet else {
            return self.newest_first();
        };
        type Entries = Vec<(String, Vec<(String, String)>)>;
        let read: Result<Entries, _> = cluster
            .query(
                redis::cmd("XREVRANGE")
                    .arg(cluster.key(&["activity"]))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(self.capacity),
            )
            .await;
        match read {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|(_, fields)| {
                    let (_, json) = fields.into_iter().find(|(k, _)| k == "e")?;
                    let stored: Stored = serde_json::from_str(&json).ok()?;
                    Some(Arc::new(stored.into_event()))
                })
                .collect(),
            Err(e) => {
                crate::metrics::get().cluster_fallback("activity");
                tracing::debug!(error = %e, "activity page from this gate's memory");
                self.newest_first()
            }
        }
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
