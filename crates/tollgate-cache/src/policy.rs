use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};

/// The TTL of responses that say nothing about freshness, by default (Amazon API Gateway's).
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// The longest any response stays fresh, by default (Amazon API Gateway's maximum).
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(3600);

/// The statuses stored by default: those RFC 9110 calls heuristically cacheable that a gateway
/// commonly serves.
pub const DEFAULT_STATUSES: [u16; 7] = [200, 203, 204, 300, 301, 404, 410];

/// Which query parameters are part of the cache key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum QueryKey {
    /// Every parameter, decoded and sorted, so `?b=2&a=1` and `?a=1&b=2` share an entry.
    #[default]
    All,
    /// Only the named parameters (decoded and sorted); the others do not split the cache.
    Only(Vec<String>),
    /// No parameter: every query shares the path's entry.
    Ignore,
}

/// Whose responses a route's entries are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    /// A request that carries credentials (a [`Principal`](tollgate_core::Principal) with a
    /// subject or API key, or one of the credential headers) is keyed by that principal, so one
    /// caller never receives another's response. Anonymous requests share entries. The default.
    #[default]
    PerPrincipal,
    /// Everyone shares the route's entries, credentials or not: for responses that are the same
    /// for every caller.
    Shared,
}

/// What a request that asks for a fresh response (`Cache-Control: no-cache` or `max-age=0`) may
/// do: Amazon API Gateway's per-client cache invalidation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientRefresh {
    /// Serve from the cache as if the header were absent, so anonymous clients cannot flush
    /// it. The default.
    #[default]
    Ignore,
    /// Go to the upstream and store the new response (`X-Cache-Status: REFRESH`).
    Allow,
    /// Refresh for principals with this scope; refuse others with 403.
    RequireScope(String),
    /// Refuse every such request with 403.
    Deny,
}

/// How a route is cached: freshness, key, statuses, sharing and stale serving.
///
/// ```
/// use std::time::Duration;
/// use tollgate_cache::{CachePolicy, QueryKey, Sharing};
///
/// let policy = CachePolicy::new()
///     .ttl(Duration::from_secs(30))
///     .query(QueryKey::Only(vec!["page".into()]))
///     .sharing(Sharing::Shared)
///     .stale_while_revalidate(Duration::from_secs(10));
/// # let _ = policy;
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct CachePolicy {
    pub(crate) enabled: bool,
    pub(crate) ttl: Duration,
    pub(crate) max_ttl: Duration,
    pub(crate) query: QueryKey,
    pub(crate) headers: Vec<HeaderName>,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) sharing: Sharing,
    pub(crate) store_set_cookie: bool,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) upstream_timeout: Option<Duration>,
    pub(crate) client_refresh: ClientRefresh,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: DEFAULT_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            query: QueryKey::All,
            headers: Vec::new(),
            statuses: DEFAULT_STATUSES
                .iter()
                .filter_map(|&s| StatusCode::from_u16(s).ok())
                .collect(),
            sharing: Sharing::PerPrincipal,
            store_set_cookie: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            upstream_timeout: None,
            client_refresh: ClientRefresh::Ignore,
        }
    }
}

impl CachePolicy {
    /// The defaults: enabled, TTL 300 s for responses that say nothing, at most 3600 s for any,
    /// every query parameter in the key, statuses [`DEFAULT_STATUSES`], per-principal keys,
    /// no `Set-Cookie` stored, no stale serving unless the response asks, refresh requests
    /// ignored.
    pub fn new() -> Self {
        Self::default()
    }

    /// A policy that passes every request through (`X-Cache-Status: BYPASS`).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Whether the route is cached at all.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// How long a response that gives no freshness of its own (`max-age`, `s-maxage` or
    /// `Expires`) stays fresh; zero stores only responses that do.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The longest any response stays fresh, whatever it says.
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// Which query parameters split the cache (default: all).
    pub fn query(mut self, query: QueryKey) -> Self {
        self.query = query;
        self
    }

    /// Request headers whose values are part of the key (beyond those the response's `Vary`
    /// names, which always are).
    pub fn key_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.headers = headers.into_iter().collect();
        self
    }

    /// The statuses that may be stored (default [`DEFAULT_STATUSES`]).
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Whether entries are per principal (the default) or shared by every caller.
    pub fn sharing(mut self, sharing: Sharing) -> Self {
        self.sharing = sharing;
        self
    }

    /// Stores responses that set cookies (default: never, as a shared cache would hand one
    /// caller's cookie to the next).
    pub fn store_set_cookie(mut self, store: bool) -> Self {
        self.store_set_cookie = store;
        self
    }

    /// How long after expiry a response may still be served while one background request
    /// refreshes it, when the response does not say (`stale-while-revalidate`, RFC 5861).
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self
    }

    /// How long after expiry a response may be served when the upstream fails (a 5xx, an
    /// error or [`upstream_timeout`](Self::upstream_timeout)), when the response does not say
    /// (`stale-if-error`, RFC 5861).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }

    /// How long to wait for the upstream when a stale response could stand in for it; past it,
    /// the stale response is served. No limit by default.
    pub fn upstream_timeout(mut self, timeout: Duration) -> Self {
        self.upstream_timeout = Some(timeout);
        self
    }

    /// What a request asking for a fresh response may do (default [`ClientRefresh::Ignore`]).
    pub fn client_refresh(mut self, refresh: ClientRefresh) -> Self {
        self.client_refresh = refresh;
        self
    }

    pub(crate) fn compile(self) -> Arc<CompiledPolicy> {
        let mut statuses = [0u64; 8];
        for status in &self.statuses {
            let index = status.as_u16() as usize - 100;
            if index < 512 {
                statuses[index / 64] |= 1 << (index % 64);
            }
        }
        let query = match self.query {
            QueryKey::All => QueryRule::All,
            QueryKey::Ignore => QueryRule::Ignore,
            QueryKey::Only(mut names) => {
                names.sort();
                names.dedup();
                QueryRule::Only(names.into_boxed_slice())
            }
        };
        Arc::new(CompiledPolicy {
            enabled: self.enabled,
            ttl: self.ttl,
            max_ttl: self.max_ttl,
            query,
            headers: self.headers.into_boxed_slice(),
            statuses,
            sharing: self.sharing,
            store_set_cookie: self.store_set_cookie,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            upstream_timeout: self.upstream_timeout,
            client_refresh: self.client_refresh,
        })
    }
}

/// A policy as the request path reads it.
#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    pub(crate) enabled: bool,
    pub(crate) ttl: Duration,
    pub(crate) max_ttl: Duration,
    pub(crate) query: QueryRule,
    pub(crate) headers: Box<[HeaderName]>,
    // Statuses 100..=611 as a bitset: every status HTTP defines fits.
    statuses: [u64; 8],
    pub(crate) sharing: Sharing,
    pub(crate) store_set_cookie: bool,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) upstream_timeout: Option<Duration>,
    pub(crate) client_refresh: ClientRefresh,
}

#[derive(Debug)]
pub(crate) enum QueryRule {
    All,
    Only(Box<[String]>),
    Ignore,
}

impl CompiledPolicy {
    pub(crate) fn stores_status(&self, status: StatusCode) -> bool {
        let index = status.as_u16() as usize - 100;
        index < 512 && self.statuses[index / 64] & (1 << (index % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_statuses_are_stored_and_others_are_not() {
        let policy = CachePolicy::new().compile();
        for status in DEFAULT_STATUSES {
            assert!(policy.stores_status(StatusCode::from_u16(status).unwrap()));
        }
        for status in [201, 206, 302, 400, 500, 503] {
            assert!(!policy.stores_status(StatusCode::from_u16(status).unwrap()));
        }
    }

    #[test]
    fn chosen_statuses_replace_the_defaults() {
        let policy = CachePolicy::new()
            .statuses([StatusCode::OK, StatusCode::PARTIAL_CONTENT])
            .compile();
        assert!(policy.stores_status(StatusCode::PARTIAL_CONTENT));
        assert!(!policy.stores_status(StatusCode::NOT_FOUND));
    }
}
