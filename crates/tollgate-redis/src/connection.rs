//! The connection every tollgate store shares: reconnecting, time-limited, namespaced.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How to reach Redis (or Valkey).
#[derive(Clone)]
#[must_use]
pub struct RedisConfig {
    url: String,
    prefix: String,
    timeout: Duration,
    key_secret: Arc<[u8]>,
}

/// The URL with any password replaced, so a logged configuration leaks nothing.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!(
                    "{}://<redacted>@{}",
                    &self.url[..scheme],
                    &self.url[at + 1..]
                )
            }
            _ => self.url.clone(),
        };
        f.debug_struct("RedisConfig")
            .field("url", &url)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// Redis at `url` (`redis://127.0.0.1:6379`, `redis://:password@host/0`), with the
    /// defaults: keys under `tollgate:`, 50 ms per call.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "tollgate".to_owned(),
            timeout: Duration::from_millis(50),
            key_secret: Arc::from(&b""[..]),
        }
    }

    /// A secret mixed into the hashes that name client keys in Redis (header values, cookies,
    /// subjects), so that someone who can read Redis cannot guess them from a list of likely
    /// values. Every instance sharing the limits must use the same secret.
    pub fn key_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.key_secret = Arc::from(secret.as_ref());
        self
    }

    /// The prefix of every key, so several gateways can share one Redis (default `tollgate`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one call may take before it counts as a failure (default 50 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects. The connection reconnects by itself when Redis goes away and comes back.
    ///
    /// # Errors
    ///
    /// The URL is invalid or Redis cannot be reached now.
    pub async fn connect(self) -> Result<Redis, redis::RedisError> {
        let client = redis::Client::open(self.url.as_str())?;
        let manager =
            ConnectionManager::new_with_config(client.clone(), self.manager_config()).await?;
        Ok(self.with(client, manager))
    }

    /// Returns at once and connects on first use, so a gateway can start while Redis is
    /// down: its stores follow their failure policies until Redis answers.
    ///
    /// # Errors
    ///
    /// The URL is invalid.
    pub fn connect_lazy(self) -> Result<Redis, redis::RedisError> {
        let client = redis::Client::open(self.url.as_str())?;
        let manager =
            ConnectionManager::new_lazy_with_config(client.clone(), self.manager_config())?;
        Ok(self.with(client, manager))
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(250))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500))
    }

    fn with(self, client: redis::Client, manager: ConnectionManager) -> Redis {
        Redis {
            link: Arc::new(Link {
                manager: RwLock::new(manager),
                config: self.manager_config(),
                silent: AtomicU32::new(0),
                replacing: AtomicBool::new(false),
            }),
            client,
            prefix: self.prefix.into(),
            timeout: self.timeout,
            key_secret: self.key_secret,
        }
    }
}

/// A connection to Redis that tollgate's stores share. Cheap to clone: clones share one
/// multiplexed connection.
#[derive(Clone)]
pub struct Redis {
    /// For connections of their own (pub/sub).
    pub(crate) client: redis::Client,
    link: Arc<Link>,
    pub(crate) prefix: Arc<str>,
    pub(crate) timeout: Duration,
    pub(crate) key_secret: Arc<[u8]>,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Calls in a row that got no answer in time before the connection is replaced.
const SILENT_CALLS: u32 = 3;

/// The shared connection, and what tells a silent one from a busy one.
struct Link {
    manager: RwLock<ConnectionManager>,
    config: ConnectionManagerConfig,
    /// Calls in a row that timed out.
    silent: AtomicU32,
    /// Whether a new connection is being made to replace a silent one.
    replacing: AtomicBool,
}

impl Redis {
    /// The shared connection, for one call.
    pub(crate) fn connection(&self) -> ConnectionManager {
        let manager = self
            .link
            .manager
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        manager.clone()
    }

    /// A call got its answer.
    pub(crate) fn answered(&self) {
        self.link.silent.store(0, Ordering::Relaxed);
    }

    /// A call got no answer in time. A connection that Redis refuses or resets reconnects by
    /// itself, but one whose peer went silent (a network partition, a frozen host) would wait
    /// for the kernel to give up on it, which takes many minutes. After a few silent calls in
    /// a row a new connection is made in the background, and it takes the old one's place
    /// once it is up; until then, and if it cannot be made, the old one stays.
    pub(crate) fn went_silent(&self) {
        let silent = self.link.silent.fetch_add(1, Ordering::Relaxed) + 1;
        if silent < SILENT_CALLS || self.link.replacing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.link.replacing.store(false, Ordering::Release);
            return;
        };
        let redis = self.clone();
        runtime.spawn(async move {
            let link = &redis.link;
            match ConnectionManager::new_with_config(redis.client.clone(), link.config.clone())
                .await
            {
                Ok(fresh) => {
                    *link.manager.write().unwrap_or_else(PoisonError::into_inner) = fresh;
                    link.silent.store(0, Ordering::Relaxed);
                    tracing::warn!(
                        calls = silent,
                        "tollgate redis: Redis stopped answering on its connection; a new one took its place"
                    );
                    metrics::counter!("tollgate_redis_reconnects_total").increment(1);
                }
                Err(error) => {
                    tracing::debug!(%error, "tollgate redis: a new connection could not be made yet");
                }
            }
            link.replacing.store(false, Ordering::Release);
        });
    }

    /// Connects to `url` with the defaults of [`RedisConfig`].
    ///
    /// # Errors
    ///
    /// The URL is invalid or Redis cannot be reached now.
    pub async fn connect(url: &str) -> Result<Self, redis::RedisError> {
        RedisConfig::new(url).connect().await
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}
