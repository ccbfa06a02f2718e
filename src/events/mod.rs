//! Push and delete events: `[[events]]` receivers are told, with a signed JSON POST, about
//! every manifest the registry stored or deleted through the gate.
//!
//! Owns: the bounded queue of each receiver, the JSON body, the HMAC-SHA256 signature,
//! delivery with retries and backoff, and the HTTP(S) client that talks to receivers. Must
//! not touch: the proxy's requests and responses (it is handed a plain [`Event`] after the
//! registry's answer) and must never block or slow the request that caused an event:
//! [`Events::publish`] only tries to queue, and a full queue drops the event, counts it and
//! says so in the log.
//!
//! Each receiver has its own queue and delivery task, so a dead receiver delays and drops
//! only its own events. Deliveries to one receiver go one at a time, in order. A reload
//! builds a new `Events`; the old one's tasks deliver what they already queued and end when
//! the last request holding the old snapshot is done. A graceful shutdown waits, within
//! what is left of `[server] shutdown_grace`, for every queued event to be delivered or
//! given up on ([`settle`]); what is still queued then is lost, and the log says how many:
//! this is a notification, not a journal.
//!
//! With `[cluster]` it is a journal (`journal`): the event is in Redis before the client
//! gets its answer, and any gate of the fleet delivers it.

mod journal;

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::{ClientConfig, RootCertStore};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::cluster::Cluster;
pub use crate::config::EventAction;
use crate::config::{EventReceiver, EventSecret};

/// Events waiting per receiver. Pushes are rare next to layer traffic (one manifest per
/// image), so 1024 covers a large burst; past it a receiver that is down would only hold
/// memory for events it may never take.
pub const QUEUE_CAPACITY: usize = 1024;
/// Attempts per event and receiver, the first included. With [`FIRST_RETRY`] doubling,
/// five attempts span about 15 s of waiting plus the timeouts: enough to ride out a
/// receiver's restart, short enough that the queue behind it keeps moving.
pub const MAX_ATTEMPTS: u32 = 5;
/// The wait before the second attempt; each further wait doubles, up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
pub const MAX_RETRY: Duration = Duration::from_secs(30);
/// Idle connections to a receiver are kept this long, so a busy push hour reuses them.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Events queued or being delivered, over every `Events` a reload left behind: what a
/// shutdown waits for.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// How often [`settle`] looks again; a shutdown is not a hot path.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// Waits, at most `limit`, until every queued event has been delivered or given up on, and
/// returns how many were still pending then.
pub async fn settle(limit: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let pending = PENDING.load(Ordering::Acquire);
        if pending == 0 || tokio::time::Instant::now() >= deadline {
            return pending;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`, GitHub's webhook convention, so receivers
/// can reuse their verification code. Only sent when the receiver has a secret.
pub const SIGNATURE_HEADER: &str = "x-registry-gate-signature";
/// The event's id, the same on every attempt, so a receiver can drop a repeat delivery.
pub const EVENT_ID_HEADER: &str = "x-registry-gate-event-id";

type HmacSha256 = Hmac<Sha256>;

/// What the proxy knows about an accepted push or delete, as plain values.
#[derive(Debug, Clone)]
pub struct Event {
    pub action: EventAction,
    pub repository: String,
    /// Set when the request named a tag.
    pub tag: Option<String>,
    /// The manifest's digest: the registry's `Docker-Content-Digest`, or the reference
    /// when the request named a digest.
    pub digest: Option<String>,
    pub actor: Actor,
    /// The real client address (behind trusted proxies).
    pub client: IpAddr,
    pub time: SystemTime,
    /// The access log's request id, to find the request that caused the event.
    pub request_id: String,
}

/// Who caused the event.
#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    /// The authenticated user as the access log names it (`-` for anonymous).
    pub user: String,
    /// The access token the caller logged in with, by name; absent for a password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The `sub` claim of the OIDC ID token the caller logged in with (a CI job).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc_subject: Option<String>,
}

/// The JSON body, field for field.
#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    action: &'static str,
    repository: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
    actor: &'a Actor,
    client: String,
    time: String,
    request_id: &'a str,
}

/// Why the receivers could not be prepared; each names the file or key to fix.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("events[{index}].secret_file {path}: cannot read: {source}")]
    SecretFile {
        index: usize,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "events[{index}].secret_file {path}: the file is empty; put a long random string in it"
    )]
    EmptySecret { index: usize, path: PathBuf },
    #[error("events[{index}].ca {path}: {message}")]
    Ca {
        index: usize,
        path: PathBuf,
        message: String,
    },
    #[error("events[{index}]: cannot verify https receivers: {message}; install the system CA certificates or set events[{index}].ca")]
    Roots { index: usize, message: String },
}

/// The receivers with their files read (secret, CA) and their TLS set up: the blocking
/// part, done by `load` off the runtime before a start or reload swaps anything.
#[derive(Clone, Default)]
pub struct Loaded {
    receivers: Vec<Arc<Target>>,
}

/// One receiver, ready to be delivered to.
struct Target {
    /// `events[i]`, how logs name it: the URL itself may carry a token in its path.
    name: String,
    url: Uri,
    secret: Option<Vec<u8>>,
    config: EventReceiver,
    tls: Arc<ClientConfig>,
}

impl Loaded {
    pub fn is_empty(&self) -> bool {
        self.receivers.is_empty()
    }

    pub fn len(&self) -> usize {
        self.receivers.len()
    }
}

/// Reads every receiver's secret file and CA and builds its TLS configuration; reports
/// every problem, not just the first. Blocking (file reads, the system roots).
pub fn load(receivers: &[EventReceiver]) -> Result<Loaded, Vec<EventsError>> {
    let mut errors = Vec::new();
    let mut loaded = Vec::new();
    for (index, config) in receivers.iter().enumerate() {
        match load_one(index, config) {
            Ok(target) => loaded.push(Arc::new(target)),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(Loaded { receivers: loaded })
    } else {
        Err(errors)
    }
}

fn load_one(index: usize, config: &EventReceiver) -> Result<Target, Vec<EventsError>> {
    let mut errors = Vec::new();
    let secret = match &config.secret {
        None => None,
        Some(EventSecret::Inline(text)) => Some(text.as_bytes().to_vec()),
        Some(EventSecret::File(path)) => match std::fs::read(path) {
            // A trailing newline is what `echo` and editors add, never part of the key.
            Ok(bytes) => {
                let key = trim_line_end(&bytes).to_vec();
                if key.is_empty() {
                    errors.push(EventsError::EmptySecret {
                        index,
                        path: path.clone(),
                    });
                }
                Some(key)
            }
            Err(source) => {
                errors.push(EventsError::SecretFile {
                    index,
                    path: path.clone(),
                    source,
                });
                None
            }
        },
    };
    let tls = match tls_config(index, config) {
        Ok(tls) => Some(tls),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    match tls {
        Some(tls) if errors.is_empty() => Ok(Target {
            name: format!("events[{index}]"),
            url: config.url.clone(),
            secret,
            config: config.clone(),
            tls: Arc::new(tls),
        }),
        _ => Err(errors),
    }
}

fn trim_line_end(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &bytes[..end]
}

/// The roots an https receiver is checked against: the `ca` bundle alone when set (a
/// private CA), the system's otherwise. A plain-http receiver gets an empty store: its
/// connector never starts TLS.
fn tls_config(index: usize, config: &EventReceiver) -> Result<ClientConfig, EventsError> {
    let builder = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| EventsError::Roots {
            index,
            message: e.to_string(),
        })?;
    let builder = match (&config.ca, config.url.scheme_str()) {
        (Some(ca), _) => {
            let bad = |message: String| EventsError::Ca {
                index,
                path: ca.clone(),
                message,
            };
            let roots = crate::tls::files::load_roots(ca).map_err(bad)?;
            builder.with_root_certificates(roots)
        }
        (None, Some("https")) => builder
            .with_native_roots()
            .map_err(|e| EventsError::Roots {
                index,
                message: e.to_string(),
            })?,
        (None, _) => builder.with_root_certificates(RootCertStore::empty()),
    };
    Ok(builder.with_no_client_auth())
}

/// The running receivers of one snapshot: a queue and a delivery task each.
#[derive(Default)]
pub struct Events {
    queues: Vec<Queue>,
    /// With `[cluster]`: events go through the fleet's Redis instead of `queues`.
    journal: Option<journal::Journal>,
    /// The journal's receivers, in order.
    targets: Vec<Arc<Target>>,
}

struct Queue {
    target: Arc<Target>,
    sender: mpsc::Sender<Queued>,
}

/// One event in one receiver's queue, counted in `PENDING` from its making until it is
/// dropped however that happens: delivered, given up on, refused by a full queue, or lost
/// with a delivery task that ended, so `settle` never waits for an event nobody holds.
struct Queued {
    envelope: Arc<Envelope>,
}

impl Queued {
    fn new(envelope: Arc<Envelope>) -> Queued {
        PENDING.fetch_add(1, Ordering::AcqRel);
        Queued { envelope }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        PENDING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One event as sent: its id and the exact body bytes, signed per receiver.
struct Envelope {
    id: String,
    body: Bytes,
}

impl Events {
    /// Starts a delivery task per receiver; must run inside the tokio runtime.
    pub fn start(loaded: &Loaded) -> Events {
        Events::start_with_capacity(loaded, QUEUE_CAPACITY)
    }

    /// With `cluster`, the fleet's journal; without, `start`. Inside the tokio runtime.
    pub fn start_in(loaded: &Loaded, cluster: Option<Arc<Cluster>>) -> Events {
        match cluster {
            Some(cluster) if !loaded.receivers.is_empty() => Events {
                queues: Vec::new(),
                journal: Some(journal::Journal::start(cluster, &loaded.receivers)),
                targets: loaded.receivers.clone(),
            },
            _ => Events::start(loaded),
        }
    }

    /// Hands `event` to every receiver that wants it: with `[cluster]` appended to the
    /// fleet's journal (waiting for Redis, within `[cluster] timeout`), else queued here
    /// without waiting.
    pub async fn record(&self, event: Event) {
        let Some(journal) = &self.journal else {
            self.publish(event);
            return;
        };
        let envelope = Arc::new(envelope(&event));
        for (index, target) in self.targets.iter().enumerate() {
            if wants(&target.config, &event) {
                journal.append(index, envelope.clone()).await;
            }
        }
    }

    fn start_with_capacity(loaded: &Loaded, capacity: usize) -> Events {
        let queues = loaded
            .receivers
            .iter()
            .map(|target| {
                let (sender, receiver) = mpsc::channel(capacity);
                let delivery = Delivery::new(target.clone());
                tokio::spawn(delivery.run(receiver));
                Queue {
                    target: target.clone(),
                    sender,
                }
            })
            .collect();
        Events {
            queues,
            journal: None,
            targets: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty() && self.targets.is_empty()
    }

    /// Queues `event` for every receiver that wants it, without waiting; returns how many
    /// receivers had to drop it because their queue was full.
    pub fn publish(&self, event: Event) -> usize {
        let wanted: Vec<&Queue> = self
            .queues
            .iter()
            .filter(|q| wants(&q.target.config, &event))
            .collect();
        if wanted.is_empty() {
            return 0;
        }
        let envelope = Arc::new(envelope(&event));
        let mut dropped = 0;
        for queue in wanted {
            if queue
                .sender
                .try_send(Queued::new(envelope.clone()))
                .is_err()
            {
                dropped += 1;
                crate::metrics::get().event("dropped");
                tracing::warn!(
                    receiver = %queue.target.name,
                    event_id = %envelope.id,
                    action = event.action.as_str(),
                    repository = %event.repository,
                    "event dropped: the receiver's queue is full (it is down or slower than the pushes)"
                );
            }
        }
        dropped
    }
}

fn wants(config: &EventReceiver, event: &Event) -> bool {
    let user = (event.actor.user != "-").then_some(event.actor.user.as_str());
    config.actions.contains(&event.action)
        && (config.repositories.is_empty()
            || config
                .repositories
                .iter()
                .any(|p| p.matches(&event.repository, user)))
}

fn envelope(event: &Event) -> Envelope {
    let id = event_id();
    let body = Body {
        id: &id,
        action: event.action.as_str(),
        repository: &event.repository,
        tag: event.tag.as_deref(),
        digest: event.digest.as_deref(),
        actor: &event.actor,
        client: event.client.to_string(),
        time: humantime::format_rfc3339_millis(event.time).to_string(),
        request_id: &event.request_id,
    };
    // Serialising plain strings into JSON cannot fail; an empty object is the safe stand-in.
    let body = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
    Envelope {
        id,
        body: Bytes::from(body),
    }
}

/// 128 random bits in hex; a time-and-counter id if the system's random source fails, so an
/// event is never lost for want of an id.
fn event_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        bytes[..8].copy_from_slice(&nanos.to_be_bytes());
        bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    }
    hex::encode(bytes)
}

/// The signature header's value for `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` fails for none.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The wait after failed attempt `attempt` (1-based): 1 s, 2 s, 4 s, ... capped.
pub fn backoff(attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    FIRST_RETRY.saturating_mul(factor).min(MAX_RETRY)
}

/// One receiver's delivery task.
struct Delivery {
    target: Arc<Target>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Why one attempt failed, for the log.
enum AttemptError {
    Status(http::StatusCode),
    Timeout(Duration),
    Failed(String),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Status(status) => write!(f, "the receiver answered {status}"),
            AttemptError::Timeout(limit) => write!(f, "no answer within {limit:?}"),
            AttemptError::Failed(detail) => f.write_str(detail),
        }
    }
}

impl Delivery {
    fn new(target: Arc<Target>) -> Delivery {
        let mut http = HttpConnector::new();
        // The https connector wraps this one and needs it to accept https URIs.
        http.enforce_http(false);
        http.set_connect_timeout(Some(target.config.timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*target.tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Delivery { target, client }
    }

    async fn run(self, mut queue: mpsc::Receiver<Queued>) {
        while let Some(queued) = queue.recv().await {
            self.deliver(&queued.envelope).await;
        }
    }

    async fn deliver(&self, envelope: &Envelope) {
        let name = &self.target.name;
        for attempt in 1..=MAX_ATTEMPTS {
            match self.attempt(envelope).await {
                Ok(()) => {
                    crate::metrics::get().event("delivered");
                    tracing::debug!(receiver = %name, event_id = %envelope.id, attempt, "event delivered");
                    return;
                }
                Err(e) if attempt < MAX_ATTEMPTS => {
                    let wait = backoff(attempt);
                    tracing::warn!(
                        receiver = %name,
                        event_id = %envelope.id,
                        attempt,
                        retry_in_ms = wait.as_millis() as u64,
                        error = %e,
                        "event delivery failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    crate::metrics::get().event("failed");
                    tracing::error!(
                        receiver = %name,
                        event_id = %envelope.id,
                        attempts = attempt,
                        error = %e,
                        "event delivery failed; giving up on this event"
                    );
                }
            }
        }
    }

    async fn attempt(&self, envelope: &Envelope) -> Result<(), AttemptError> {
        let mut request = Request::new(Full::new(envelope.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.target.url.clone();
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("registry-gate/", env!("CARGO_PKG_VERSION"))),
        );
        if let Ok(id) = HeaderValue::from_str(&envelope.id) {
            headers.insert(EVENT_ID_HEADER, id);
        }
        if let Some(secret) = &self.target.secret {
            if let Ok(value) = HeaderValue::from_str(&signature(secret, &envelope.body)) {
                headers.insert(SIGNATURE_HEADER, value);
            }
        }
        let limit = self.target.config.timeout;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| AttemptError::Failed(crate::error_chain::describe(&e)))?;
            let status = response.status();
            // Read the (small) answer to the end so the connection can be reused.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(AttemptError::Status(status))
            }
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(result) => result,
            Err(_) => Err(AttemptError::Timeout(limit)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn receiver(url: &str) -> EventReceiver {
        EventReceiver {
            url: url.parse().expect("url"),
            secret: Some(EventSecret::Inline("s3cret".into())),
            actions: vec![EventAction::Push, EventAction::Delete],
            repositories: Vec::new(),
            timeout: Duration::from_secs(1),
            ca: None,
        }
    }

    fn push(repository: &str) -> Event {
        Event {
            action: EventAction::Push,
            repository: repository.into(),
            tag: Some("v1".into()),
            digest: Some("sha256:abc".into()),
            actor: Actor {
                user: "builder".into(),
                token: None,
                oidc_subject: None,
            },
            client: "192.0.2.7".parse().expect("ip"),
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            request_id: "r-1".into(),
        }
    }

    #[test]
    fn signature_is_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_and_is_capped() {
        let schedule: Vec<u64> = (1..MAX_ATTEMPTS).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(schedule, vec![1, 2, 4, 8]);
        assert_eq!(backoff(6), Duration::from_secs(30));
        assert_eq!(backoff(40), MAX_RETRY, "no overflow far out");
    }

    #[test]
    fn body_names_every_field_and_omits_absent_ones() {
        let envelope = envelope(&push("team/app"));
        let body: serde_json::Value = serde_json::from_slice(&envelope.body).expect("json");
        assert_eq!(body["id"], envelope.id.as_str());
        assert_eq!(envelope.id.len(), 32);
        assert_eq!(body["action"], "push");
        assert_eq!(body["repository"], "team/app");
        assert_eq!(body["tag"], "v1");
        assert_eq!(body["digest"], "sha256:abc");
        assert_eq!(body["actor"]["user"], "builder");
        assert!(body["actor"].get("token").is_none(), "{body}");
        assert_eq!(body["client"], "192.0.2.7");
        assert_eq!(body["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(body["request_id"], "r-1");
        let mut by_digest = push("team/app");
        by_digest.tag = None;
        by_digest.actor.token = Some("ci-robot".into());
        let body: serde_json::Value =
            serde_json::from_slice(&envelope_body(&by_digest)).expect("json");
        assert!(body.get("tag").is_none(), "{body}");
        assert_eq!(body["actor"]["token"], "ci-robot");
    }

    fn envelope_body(event: &Event) -> Bytes {
        envelope(event).body
    }

    #[test]
    fn receivers_choose_actions_and_repositories() {
        let mut config = receiver("http://127.0.0.1:9/");
        config.actions = vec![EventAction::Delete];
        assert!(!wants(&config, &push("team/app")));
        config.actions = vec![EventAction::Push];
        config.repositories = vec![
            crate::rules::RepositoryPattern::parse("team/*").expect("glob"),
            crate::rules::RepositoryPattern::parse("${user}/*").expect("glob"),
        ];
        assert!(wants(&config, &push("team/app")));
        assert!(wants(&config, &push("builder/tool")));
        assert!(!wants(&config, &push("other/app")));
    }

    #[test]
    fn secret_files_lose_their_line_end_and_must_not_be_empty() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("secret");
        std::fs::write(&path, "k3y\n").expect("write");
        let mut config = receiver("http://127.0.0.1:9/");
        config.secret = Some(EventSecret::File(path.clone()));
        let loaded = load(std::slice::from_ref(&config)).unwrap_or_else(|_| panic!("load"));
        assert_eq!(loaded.receivers[0].secret.as_deref(), Some(&b"k3y"[..]));
        std::fs::write(&path, "\n").expect("write");
        let errors = load(std::slice::from_ref(&config)).err().expect("empty");
        assert!(errors[0].to_string().contains("events[0].secret_file"));
        config.secret = Some(EventSecret::File(dir.path().join("missing")));
        let errors = load(&[config]).err().expect("missing");
        assert!(
            errors[0].to_string().contains("cannot read"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn the_inline_secret_never_shows_in_debug_output() {
        let config = receiver("http://127.0.0.1:9/");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    /// A receiver that accepts connections and never answers: the delivery task holds one
    /// event in flight while the queue fills behind it.
    #[tokio::test]
    async fn a_full_queue_drops_without_blocking() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", silent.local_addr().expect("addr"));
        let loaded = load(&[receiver(&url)]).unwrap_or_else(|_| panic!("load"));
        let events = Events::start_with_capacity(&loaded, 4);
        let started = Instant::now();
        let dropped: usize = (0..100).map(|_| events.publish(push("team/app"))).sum();
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "publishing blocked for {:?}",
            started.elapsed()
        );
        // 4 queued, at most one taken off the queue by the delivery task.
        assert!((95..=96).contains(&dropped), "dropped {dropped} of 100");
        drop(silent);
    }
}
