//! `[tls.acme]` with `[cluster]`: one gate of the fleet orders, every gate serves the
//! result and answers the CA's challenges. This file owns what the fleet keeps in Redis for
//! that and nothing else; the schedule that decides when to look is `Manager`'s.
//!
//! - the certificate and its key, one PEM text per certificate id (the names and the CA);
//! - the account credentials, per CA, so every order comes from one account;
//! - the challenge answers of the order under way, in one hash that expires on its own, so
//!   the CA may reach any gate;
//! - the leader lock (`cluster::lock`), held by the one gate that orders;
//! - the backoff after a failed order, so the fleet as a whole waits before the next (the
//!   CA counts failed validations per name, whichever gate asked).
//!
//! The key and the account are secrets: they are in Redis, so Redis must be reachable only by
//! the gates (docs/fleet.md says so).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::lock::{ClusterLock, LockError};
use crate::cluster::{Cluster, ClusterError};

/// How long published challenge answers live when the ordering gate dies before withdrawing
/// them: longer than an order may take.
const CHALLENGES_TTL: Duration = Duration::from_secs(600);

/// The kind of a published answer, as its field name in the challenges hash begins.
pub const HTTP_01: &str = "http-01";
pub const TLS_ALPN_01: &str = "tls-alpn-01";

/// The fleet's ACME store.
pub struct Fleet {
    cluster: Arc<Cluster>,
}

impl Fleet {
    pub fn new(cluster: Arc<Cluster>) -> Fleet {
        Fleet { cluster }
    }

    fn certificate_key(&self, id: &str) -> String {
        self.cluster.key(&["acme", id, "certificate"])
    }

    fn challenges_key(&self, id: &str) -> String {
        self.cluster.key(&["acme", id, "challenges"])
    }

    fn account_key(&self, directory_id: &str) -> String {
        self.cluster.key(&["acme", "account", directory_id])
    }

    /// The certificate (chain, then key, PEM) some gate ordered for `id`.
    pub async fn certificate(&self, id: &str) -> Result<Option<String>, ClusterError> {
        self.cluster
            .query(redis::cmd("GET").arg(self.certificate_key(id)))
            .await
    }

    pub async fn store_certificate(&self, id: &str, pem: &str) -> Result<(), ClusterError> {
        self.cluster
            .query(redis::cmd("SET").arg(self.certificate_key(id)).arg(pem))
            .await
    }

    /// The account credentials (instant-acme's JSON) for the CA `directory_id`.
    pub async fn account(&self, directory_id: &str) -> Result<Option<String>, ClusterError> {
        self.cluster
            .query(redis::cmd("GET").arg(self.account_key(directory_id)))
            .await
    }

    pub async fn store_account(&self, directory_id: &str, json: &str) -> Result<(), ClusterError> {
        self.cluster
            .query(
                redis::cmd("SET")
                    .arg(self.account_key(directory_id))
                    .arg(json),
            )
            .await
    }

    /// Makes this gate the one that orders for `id`: the lock while it is free, `None` while
    /// another gate holds it.
    pub async fn lead(&self, id: &str) -> Result<Option<ClusterLock>, ClusterError> {
        match self
            .cluster
            .lock(&format!("acme:{id}"), Duration::ZERO)
            .await
        {
            Ok(lock) => Ok(Some(lock)),
            Err(LockError::Busy { .. }) => Ok(None),
            Err(LockError::Unreachable(e)) => Err(e),
        }
    }

    fn backoff_key(&self, id: &str) -> String {
        self.cluster.key(&["acme", id, "backoff"])
    }

    /// How long the fleet still waits after its last failed order for `id`, if it does.
    pub async fn backoff_left(&self, id: &str) -> Result<Option<Duration>, ClusterError> {
        let stored: Option<String> = self
            .cluster
            .query(redis::cmd("GET").arg(self.backoff_key(id)))
            .await?;
        let not_before = stored
            .as_deref()
            .and_then(|v| v.split_once(' '))
            .and_then(|(at, _)| at.parse::<u64>().ok());
        Ok(not_before.and_then(|at| {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(at);
            at.duration_since(std::time::SystemTime::now()).ok()
        }))
    }

    /// Notes a failed order for `id`: the fleet waits `first` after the first failure, and
    /// twice as long after each further one, up to `most`. Remembered for twice the wait, so
    /// a failure soon after the wait ends doubles it again. Only the lock holder calls this.
    pub async fn back_off(
        &self,
        id: &str,
        first: Duration,
        most: Duration,
    ) -> Result<Duration, ClusterError> {
        let key = self.backoff_key(id);
        let stored: Option<String> = self.cluster.query(redis::cmd("GET").arg(&key)).await?;
        let last = stored
            .as_deref()
            .and_then(|v| v.split_once(' '))
            .and_then(|(_, ms)| ms.parse::<u64>().ok())
            .map(Duration::from_millis);
        let wait = last.map_or(first, |d| (d * 2).min(most)).max(first);
        let not_before = std::time::SystemTime::now() + wait;
        let at = not_before
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let value = format!("{at} {}", wait.as_millis());
        self.cluster
            .query::<()>(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(value)
                    .arg("PX")
                    .arg((wait * 2).as_millis() as u64),
            )
            .await?;
        Ok(wait)
    }

    /// Forgets the backoff once an order succeeded.
    pub async fn clear_backoff(&self, id: &str) -> Result<(), ClusterError> {
        self.cluster
            .query(redis::cmd("DEL").arg(self.backoff_key(id)))
            .await
    }

    /// Publishes one answer for every gate: `kind` is `HTTP_01` (name: the token, value: the
    /// key authorisation) or `TLS_ALPN_01` (name: the domain, value: the hex SHA-256 of the
    /// key authorisation, from which each gate makes its own validation certificate).
    pub async fn publish(
        &self,
        id: &str,
        kind: &str,
        name: &str,
        value: &str,
    ) -> Result<(), ClusterError> {
        let key = self.challenges_key(id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(&key)
            .arg(format!("{kind} {name}"))
            .arg(value)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(CHALLENGES_TTL.as_millis() as u64)
            .ignore();
        self.cluster.pipe(&pipe).await
    }

    /// Removes every answer of the order for `id`.
    pub async fn withdraw(&self, id: &str) -> Result<(), ClusterError> {
        self.cluster
            .query(redis::cmd("DEL").arg(self.challenges_key(id)))
            .await
    }

    /// The answers published for `id`, as (kind, name) → value.
    pub async fn challenges(
        &self,
        id: &str,
    ) -> Result<HashMap<(String, String), String>, ClusterError> {
        let fields: HashMap<String, String> = self
            .cluster
            .query(redis::cmd("HGETALL").arg(self.challenges_key(id)))
            .await?;
        Ok(fields
            .into_iter()
            .filter_map(|(field, value)| {
                let (kind, name) = field.split_once(' ')?;
                Some(((kind.to_string(), name.to_string()), value))
            })
            .collect())
    }
}
