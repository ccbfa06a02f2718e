//! `[[events]]` as a journal, with `[cluster]`: an accepted push or delete is appended to
//! the receiver's Redis stream before the client gets its answer, and whichever gate is alive
//! delivers it (one consumer group per receiver, each gate a consumer), so a gate killed
//! after the registry accepted a push does not lose its event. Every attempt carries the same
//! event id, so a receiver that drops repeated ids sees each event once.
//!
//! A gate delivering an entry keeps it claimed (its idle time reset every second); an entry
//! idle for longer than `claim_after` belongs to a gate that died, and another gate claims
//! and delivers it. Where Redis does not take an event, it waits in a bounded buffer of this
//! gate and is appended once Redis answers again; a full buffer drops it, counted and logged.
//!
//! Streams are read by polling (every `POLL`), not with a blocking read, so the gate's one
//! multiplexed connection never waits behind a blocked command.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{Delivery, Envelope, Target, QUEUE_CAPACITY};
use crate::cluster::{Cluster, ClusterError};

/// The consumer group every gate reads a receiver's stream in.
const GROUP: &str = "deliver";
/// How often each gate looks for new or abandoned entries of each receiver.
const POLL: Duration = Duration::from_millis(200);
/// Entries a stream keeps at most, delivered or not (`XADD MAXLEN ~`).
const STREAM_LENGTH: usize = 100_000;

/// Appends one event, making the stream and its group on first use (from its end, so the
/// new group delivers this entry and every later one).
const APPEND: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], 'deliver', '$', 'MKSTREAM')
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'id', ARGV[2], 'body', ARGV[3])
";

/// A receiver's stream: named by a hash of its URL, which every gate of the fleet shares
/// (and which may hold a token in its path, so it is not written out).
pub(super) fn stream_key(cluster: &Cluster, target: &Target) -> String {
    let digest = Sha256::digest(target.url.to_string().as_bytes());
    cluster.key(&["events", &hex::encode(&digest[..8])])
}

/// Events Redis did not take yet: (receiver index, envelope), oldest first.
type Buffer = Arc<Mutex<VecDeque<(usize, Arc<Envelope>)>>>;

/// The fleet's journal of one snapshot's receivers.
pub(super) struct Journal {
    cluster: Arc<Cluster>,
    /// Per receiver, in `Events::queues`' order.
    streams: Vec<String>,
    buffer: Buffer,
    /// Dropped with the snapshot's `Events`: the consumers end.
    _stop: watch::Sender<()>,
}

impl Journal {
    /// Starts a consumer per receiver; must run inside the tokio runtime.
    pub(super) fn start(cluster: Arc<Cluster>, targets: &[Arc<Target>]) -> Journal {
        let (stop, stopped) = watch::channel(());
        let consumer = consumer_name();
        let buffer = Arc::new(Mutex::new(VecDeque::new()));
        let streams: Vec<String> = targets.iter().map(|t| stream_key(&cluster, t)).collect();
        for (target, stream) in targets.iter().zip(&streams) {
            tokio::spawn(consume(
                cluster.clone(),
                consumer.clone(),
                stream.clone(),
                Delivery::new(target.clone()),
                stopped.clone(),
            ));
        }
        tokio::spawn(flush(
            cluster.clone(),
            streams.clone(),
            buffer.clone(),
            stopped,
        ));
        Journal {
            cluster,
            streams,
            buffer,
            _stop: stop,
        }
    }

    /// Appends `envelope` to receiver `index`'s stream, or keeps it for later.
    pub(super) async fn append(&self, index: usize, envelope: Arc<Envelope>) {
        let Some(stream) = self.streams.get(index) else {
            return;
        };
        if let Err(e) = append(&self.cluster, stream, &envelope).await {
            crate::metrics::get().cluster_fallback("events");
            let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
            if buffer.len() >= QUEUE_CAPACITY {
                crate::metrics::get().event("dropped");
                tracing::error!(event_id = %envelope.id, error = %e, "event dropped: Redis does not take events and this gate's buffer is full");
                return;
            }
            tracing::warn!(event_id = %envelope.id, error = %e, "event kept by this gate until Redis takes it");
            buffer.push_back((index, envelope));
        }
    }
}

async fn append(cluster: &Cluster, stream: &str, envelope: &Envelope) -> Result<(), ClusterError> {
    let script = redis::Script::new(APPEND);
    let mut call = script.key(stream);
    call.arg(STREAM_LENGTH)
        .arg(&envelope.id)
        .arg(envelope.body.as_ref());
    let _: String = cluster.script(&call).await?;
    Ok(())
}

/// A name for this gate among the consumers: random per process, so a restarted gate is a
/// new consumer and its predecessor's entries are claimed like any dead gate's.
fn consumer_name() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::getrandom(&mut bytes);
    format!("gate-{}", hex::encode(bytes))
}

/// Appends what Redis did not take, in order, once it answers again.
async fn flush(
    cluster: Arc<Cluster>,
    streams: Vec<String>,
    buffer: Buffer,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        loop {
            let next = buffer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .front()
                .cloned();
            let Some((index, envelope)) = next else { break };
            let Some(stream) = streams.get(index) else {
                break;
            };
            if append(&cluster, stream, &envelope).await.is_err() {
                break;
            }
            buffer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front();
            tracing::info!(event_id = %envelope.id, "event handed to Redis after an outage");
        }
    }
}

/// One stream entry: its stream id and the event.
type Entry = (String, Envelope);

/// One receiver's consumer on this gate: takes entries idle too long (their gate died), then
/// new ones, delivers each with the usual retries, and acknowledges it when delivered or
/// given up on.
async fn consume(
    cluster: Arc<Cluster>,
    consumer: String,
    stream: String,
    delivery: Delivery,
    mut stopped: watch::Receiver<()>,
) {
    let claim_after = delivery.target.config.timeout + Duration::from_secs(5);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        let entries = match next_entries(&cluster, &consumer, &stream, claim_after).await {
            Ok(entries) => entries,
            Err(_) => continue,
        };
        for (entry_id, envelope) in entries {
            let keeper = tokio::spawn(keep_claimed(
                cluster.clone(),
                consumer.clone(),
                stream.clone(),
                entry_id.clone(),
            ));
            delivery.deliver(&envelope).await;
            keeper.abort();
            let acked: Result<u64, _> = cluster
                .query(redis::cmd("XACK").arg(&stream).arg(GROUP).arg(&entry_id))
                .await;
            if let Err(e) = acked {
                tracing::warn!(event_id = %envelope.id, error = %e, "event delivered but not acknowledged; another gate may deliver it again (same id)");
            }
        }
    }
}

/// Resets the entry's idle time every second while it is being delivered, so no other gate
/// takes it for abandoned.
async fn keep_claimed(cluster: Arc<Cluster>, consumer: String, stream: String, entry_id: String) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _: Result<redis::Value, _> = cluster
            .query(
                redis::cmd("XCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&consumer)
                    .arg(0)
                    .arg(&entry_id)
                    .arg("JUSTID"),
            )
            .await;
    }
}

/// Entries abandoned by a dead gate first, else new ones; the group is made if missing.
async fn next_entries(
    cluster: &Cluster,
    consumer: &str,
    stream: &str,
    claim_after: Duration,
) -> Result<Vec<Entry>, ClusterError> {
    let claimed: redis::Value = match cluster
        .query(
            redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(GROUP)
                .arg(consumer)
                .arg(claim_after.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(10),
        )
        .await
    {
        Ok(value) => value,
        Err(e) => {
            missing_group(cluster, stream, e).await?;
            redis::Value::Nil
        }
    };
    // XAUTOCLAIM answers [next-start, [entries], [deleted ids]].
    if let redis::Value::Array(parts) = claimed {
        if let Some(entries) = parts.get(1) {
            let entries = parse_entries(entries);
            if !entries.is_empty() {
                return Ok(entries);
            }
        }
    }
    let read: redis::Value = cluster
        .query(
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(10)
                .arg("STREAMS")
                .arg(stream)
                .arg(">"),
        )
        .await?;
    // XREADGROUP answers [[stream, [entries]]], or nil when there is nothing new.
    match read {
        redis::Value::Array(streams) => Ok(streams
            .iter()
            .filter_map(|s| match s {
                redis::Value::Array(pair) => pair.get(1).map(parse_entries),
                _ => None,
            })
            .flatten()
            .collect()),
        _ => Ok(Vec::new()),
    }
}

/// A stream or group that does not exist yet (no event was ever appended): made now, from
/// its end. Any other error is passed on.
async fn missing_group(
    cluster: &Cluster,
    stream: &str,
    error: ClusterError,
) -> Result<(), ClusterError> {
    if !error.to_string().contains("NOGROUP") {
        return Err(error);
    }
    let made: Result<String, _> = cluster
        .query(
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(GROUP)
                .arg("$")
                .arg("MKSTREAM"),
        )
        .await;
    match made {
        Err(e) if !e.to_string().contains("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

/// `[[id, [field, value, …]], …]` to entries; an entry without an id or body is skipped.
fn parse_entries(value: &redis::Value) -> Vec<Entry> {
    let redis::Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let redis::Value::Array(parts) = entry else {
                return None;
            };
            let entry_id = text(parts.first()?)?;
            let redis::Value::Array(fields) = parts.get(1)? else {
                return None;
            };
            let mut id = None;
            let mut body = None;
            for pair in fields.chunks(2) {
                match (pair.first().and_then(text).as_deref(), pair.get(1)) {
                    (Some("id"), Some(v)) => id = text(v),
                    (Some("body"), Some(redis::Value::BulkString(bytes))) => {
                        body = Some(bytes::Bytes::from(bytes.clone()))
                    }
                    _ => {}
                }
            }
            Some((
                entry_id,
                Envelope {
                    id: id?,
                    body: body?,
                },
            ))
        })
        .collect()
}

fn text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
