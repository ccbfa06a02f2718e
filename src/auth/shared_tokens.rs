//! Access tokens kept in the fleet's Redis (`[cluster]`): the token file's text under one
//! key with a version that every change raises, so `registry-gate token create/revoke` work
//! from any gate or machine with the configuration, and every gate sees a change at its next
//! look at the version (twice a second). Edits are compare-and-set on the version, so two
//! edits at once never lose one. The text is the file's own format (`access_tokens`), hashes
//! only, never a secret.
//!
//! When each token was last used is kept beside it, one field per token, only ever moved
//! forward, written by each gate in batches (never a Redis write per request).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::access_tokens::{self, AccessTokenError, AccessTokens, Edit, Edited};
use crate::cluster::{Cluster, ClusterError};

#[derive(Debug, thiserror::Error)]
pub enum SharedTokensError {
    #[error(transparent)]
    Tokens(#[from] AccessTokenError),
    #[error("the access tokens in Redis cannot be read: {0}")]
    Stored(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("the access tokens in Redis kept changing under this edit; try again")]
    Contended,
}

/// Sets the text and raises the version only if the version is still the one read.
const COMPARE_AND_SET: &str = r"
local v = redis.call('HGET', KEYS[1], 'version') or '0'
if v ~= ARGV[1] then return 0 end
local n = tonumber(v) + 1
redis.call('HSET', KEYS[1], 'text', ARGV[2], 'version', n)
return n
";

/// Puts a gate's last known tokens back, only where Redis has none (it lost its data).
const RESTORE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'text', ARGV[2], 'version', ARGV[1])
return 1
";

/// Moves each token's last use forward, never back.
const LAST_USED: &str = r"
for i = 1, #ARGV, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > old then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
";

/// Where the tokens are, as messages name it.
pub fn label(cluster: &Cluster) -> PathBuf {
    PathBuf::from(format!("redis key {}", key(cluster)))
}

fn key(cluster: &Cluster) -> String {
    cluster.key(&["access-tokens"])
}

/// The version in Redis, `None` when Redis holds no tokens.
pub async fn version(cluster: &Cluster) -> Result<Option<u64>, ClusterError> {
    cluster
        .query(redis::cmd("HGET").arg(key(cluster)).arg("version"))
        .await
}

/// The stored version and text, each `None` when Redis holds no tokens.
async fn stored(cluster: &Cluster) -> Result<(Option<u64>, Option<String>), ClusterError> {
    cluster
        .query(
            redis::cmd("HMGET")
                .arg(key(cluster))
                .arg("version")
                .arg("text"),
        )
        .await
}

/// The tokens and their version, `None` when Redis holds none.
pub async fn load(cluster: &Cluster) -> Result<Option<(u64, AccessTokens)>, SharedTokensError> {
    let (Some(version), Some(text)) = stored(cluster).await? else {
        return Ok(None);
    };
    let tokens = AccessTokens::parse(&label(cluster), &text).map_err(|errors| {
        SharedTokensError::Stored(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    Ok(Some((version, tokens)))
}

/// One edit, retried when another edit came in between.
pub async fn edit(cluster: &Cluster, edit: &Edit) -> Result<Edited, SharedTokensError> {
    let label = label(cluster);
    let script = redis::Script::new(COMPARE_AND_SET);
    for _ in 0..10 {
        let (version, text) = stored(cluster).await?;
        let (new_text, edited) = access_tokens::apply(&label, text.as_deref(), edit)?;
        let Some(new_text) = new_text else {
            return Ok(edited);
        };
        let mut call = script.key(key(cluster));
        call.arg(version.unwrap_or(0)).arg(new_text);
        let stored: u64 = cluster.script(&call).await?;
        if stored != 0 {
            return Ok(edited);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(SharedTokensError::Contended)
}

/// Writes `text` at `version` where Redis holds no tokens at all; true when it did.
pub async fn restore(cluster: &Cluster, version: u64, text: &str) -> Result<bool, ClusterError> {
    let script = redis::Script::new(RESTORE);
    let mut call = script.key(key(cluster));
    call.arg(version).arg(text);
    let done: u64 = cluster.script(&call).await?;
    Ok(done == 1)
}

/// Records last uses (seconds since the epoch), each moved forward only.
pub async fn save_last_used(
    cluster: &Cluster,
    uses: &BTreeMap<String, SystemTime>,
) -> Result<(), ClusterError> {
    if uses.is_empty() {
        return Ok(());
    }
    let script = redis::Script::new(LAST_USED);
    let mut call = script.key(cluster.key(&["access-tokens", "last-used"]));
    for (name, at) in uses {
        let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        call.arg(name).arg(seconds);
    }
    let _: u64 = cluster.script(&call).await?;
    Ok(())
}

/// Every token's last use the fleet recorded.
pub async fn last_used(cluster: &Cluster) -> Result<BTreeMap<String, SystemTime>, ClusterError> {
    let all: BTreeMap<String, u64> = cluster
        .query(redis::cmd("HGETALL").arg(cluster.key(&["access-tokens", "last-used"])))
        .await?;
    Ok(all
        .into_iter()
        .map(|(name, seconds)| (name, UNIX_EPOCH + Duration::from_secs(seconds)))
        .collect())
}
