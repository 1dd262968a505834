//! The connection every tollgate store shares: reconnecting, time-limited, namespaced.

use std::fmt;
use std::sync::Arc;
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
            client,
            manager,
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
    pub(crate) manager: ConnectionManager,
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

impl Redis {
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
