//! `[cluster]`: the one connection to the Redis (or Valkey) several gates share their state
//! through. It owns the connection (multiplexed, reconnecting on its own), the time limit on
//! every call, the health the gate reports (`/readyz`, `doctor`, metrics) and the key names;
//! what each feature keeps there, and what it does while Redis is away, is the feature's own
//! (`auth`'s lockouts, `[[protect]]`'s locks in `lock`). Nothing here is on the path of a
//! request that does not need shared state.
//!
//! The password is read from a file or the environment at start and handed to the client
//! only; the URL shown in messages never holds it.

pub mod lock;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, IntoConnectionInfo};

use crate::config::{ClusterConfig, ClusterPassword};

/// Why a call to Redis did not give an answer, or why the connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Redis at {url} did not answer within {timeout:?} ([cluster] timeout)")]
    Timeout { url: String, timeout: Duration },
    #[error("Redis at {url}: {source}")]
    Redis {
        url: String,
        source: redis::RedisError,
    },
    #[error("cluster.password_file {path}: cannot read: {source}")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster.password_env: the environment variable {name} is not set (or not UTF-8)")]
    PasswordEnv { name: String },
    #[error("cluster.ca {path}: cannot read: {source}")]
    Ca {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The shared Redis, as one gate sees it.
pub struct Cluster {
    conn: ConnectionManager,
    url: String,
    timeout: Duration,
    prefix: String,
    lock_ttl: Duration,
    health: Health,
}

/// Whether the last call got through, and since when it has not.
#[derive(Default)]
struct Health {
    down: AtomicBool,
    /// What went wrong last, with when it began (seconds since the epoch).
    last_error: Mutex<Option<(u64, String)>>,
    failures: AtomicU64,
}

/// How Redis looks from here right now, for `/readyz`, `doctor` and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Up,
    /// Calls fail since `since` (seconds since the epoch) with `error`.
    Down {
        since: u64,
        error: String,
    },
}

impl Cluster {
    /// Sets up the connection without making it: the gate starts while Redis is still
    /// coming up (a fleet's start order is not ours to choose), and every call connects or
    /// reconnects as needed. Fails only on a missing password or CA file. Must be called
    /// inside a tokio runtime, whose tasks keep the connection.
    pub fn open(config: &ClusterConfig) -> Result<Arc<Cluster>, ClusterError> {
        let url = config.url.clone();
        let redis_error = |source| ClusterError::Redis {
            url: url.clone(),
            source,
        };
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(redis_error)?;
        if let Some(password) = &config.password {
            let password = read_password(password)?;
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        // rustls needs a process-wide provider for the client's TLS; the gate's own (the same
        // aws-lc-rs) is installed unless one already is.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = match &config.ca {
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|source| ClusterError::Ca {
                    path: path.clone(),
                    source,
                })?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
            }
            None => redis::Client::open(info),
        }
        .map_err(redis_error)?;
        // The manager's own retries stay short: a request waits `timeout` at most, and the
        // next call starts a fresh reconnection anyway.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(redis_error)?;
        Ok(Arc::new(Cluster {
            conn,
            url: config.url.clone(),
            timeout: config.timeout,
            prefix: config.key_prefix.clone(),
            lock_ttl: config.lock_ttl,
            health: Health::default(),
        }))
    }

    /// The key `<prefix>:<part>:<part>…`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// The URL, without a password (there is never one in it).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }

    /// One command, within `[cluster] timeout`.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        let mut conn = self.conn.clone();
        self.bounded(cmd.query_async(&mut conn)).await
    }

    /// A pipeline (`MULTI`/`EXEC` when built with `.atomic()`), within `[cluster] timeout`.
    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, ClusterError> {
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async(&mut conn)).await
    }

    /// A Lua script (sent by digest, loaded when Redis does not know it yet), within
    /// `[cluster] timeout`.
    pub async fn script<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, ClusterError> {
        let mut conn = self.conn.clone();
        self.bounded(invocation.invoke_async(&mut conn)).await
    }

    /// `PING`, for `/readyz` and `doctor`: the round trip, or why there is none.
    pub async fn ping(&self) -> Result<Duration, ClusterError> {
        let started = std::time::Instant::now();
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(started.elapsed())
    }

    pub fn status(&self) -> Status {
        if !self.health.down.load(Ordering::Relaxed) {
            return Status::Up;
        }
        let last = self
            .health
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match last {
            Some((since, error)) => Status::Down { since, error },
            None => Status::Up,
        }
    }

    /// Calls that failed or timed out since the start.
    pub fn failures(&self) -> u64 {
        self.health.failures.load(Ordering::Relaxed)
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ClusterError> {
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(ClusterError::Redis {
                url: self.url.clone(),
                source,
            }),
            Err(_) => Err(ClusterError::Timeout {
                url: self.url.clone(),
                timeout: self.timeout,
            }),
        };
        match &result {
            Ok(_) => {
                if self.health.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %self.url, "cluster: Redis answers again");
                }
            }
            Err(e) => self.note_failure(e),
        }
        result
    }

    fn note_failure(&self, error: &ClusterError) {
        self.health.failures.fetch_add(1, Ordering::Relaxed);
        crate::metrics::get().cluster_error(match error {
            ClusterError::Timeout { .. } => "timeout",
            _ => "error",
        });
        let mut last = self
            .health
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let was_down = self.health.down.swap(true, Ordering::Relaxed);
        let since = match (&*last, was_down) {
            (Some((since, _)), true) => *since,
            _ => unix_now(),
        };
        if !was_down {
            tracing::warn!(error = %error, "cluster: Redis is unreachable; shared features fall back as documented in docs/fleet.md");
        }
        *last = Some((since, error.to_string()));
    }
}

fn read_password(source: &ClusterPassword) -> Result<String, ClusterError> {
    match source {
        ClusterPassword::File(path) => std::fs::read_to_string(path)
            .map(|text| text.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|source| ClusterError::PasswordFile {
                path: path.clone(),
                source,
            }),
        ClusterPassword::Env(name) => {
            std::env::var(name).map_err(|_| ClusterError::PasswordEnv { name: name.clone() })
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
