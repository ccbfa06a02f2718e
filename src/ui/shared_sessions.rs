//! The browser's sessions across a fleet (`[cluster]`): one signing key for every gate, kept
//! in Redis (made by whichever gate asks first), and the sessions a logout ended, one key
//! each that expires with the session, so a logout on one gate ends the session on all.
//!
//! Where Redis does not answer, the session is checked against this gate's own list only:
//! the browser stays usable through an outage, and a cookie copied before a logout works on
//! another gate until Redis is back or the session expires.

use crate::cluster::{Cluster, ClusterError};

use super::session::Session;

/// Makes the fleet's key if there is none yet, and returns the one there is.
const KEY: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
";

/// The fleet's session signing key.
pub async fn signing_key(cluster: &Cluster) -> Result<Option<[u8; 32]>, ClusterError> {
    let mut mine = [0u8; 32];
    if getrandom::getrandom(&mut mine).is_err() {
        return Ok(None);
    }
    let script = redis::Script::new(KEY);
    let mut call = script.key(cluster.key(&["ui", "session-key"]));
    call.arg(hex::encode(mine));
    let stored: String = cluster.script(&call).await?;
    let mut key = [0u8; 32];
    Ok(hex::decode_to_slice(stored.trim(), &mut key)
        .ok()
        .map(|()| key))
}

fn ended_key(cluster: &Cluster, session: &Session) -> String {
    cluster.key(&["ui", "ended", &session.id])
}

/// Ends `session` on every gate, until it would have expired anyway.
pub async fn end(cluster: &Cluster, session: &Session) -> Result<(), ClusterError> {
    let _: () = cluster
        .query(
            redis::cmd("SET")
                .arg(ended_key(cluster, session))
                .arg(1)
                .arg("EXAT")
                .arg(session.expires.max(1)),
        )
        .await?;
    Ok(())
}

/// Whether a logout on any gate ended `session`.
pub async fn is_ended(cluster: &Cluster, session: &Session) -> Result<bool, ClusterError> {
    cluster
        .query(redis::cmd("EXISTS").arg(ended_key(cluster, session)))
        .await
}
