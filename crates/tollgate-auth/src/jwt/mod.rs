//! The JWT authorizer: bearer tokens verified against one or more identity providers, with
//! keys from static configuration or a JWKS URL kept fresh, and verified tokens cached.
//!
//! Verification uses `jsonwebtoken` on aws-lc-rs. Each provider has an algorithm allow-list
//! and each key verifies only the algorithms of its own family, so neither `alg: none` nor an
//! HMAC signature made with an RSA public key's bytes is ever accepted. With several
//! providers, the token's (unverified) `iss` picks the provider, and only that provider's keys
//! verify it.
//!
//! # Example
//!
//! ```
//! use axum::{routing::get, Router};
//! use tollgate_auth::jwt::{JwtAuthorizer, JwtProvider, Keys};
//! use tollgate_auth::{AuthLayer, RoutePolicy};
//! use tollgate_core::Principal;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let jwt = JwtAuthorizer::builder()
//!     .provider(
//!         JwtProvider::new("https://login.example.com/", Keys::discovery()).audience("orders-api"),
//!     )
//!     .build()?;
//! let auth = AuthLayer::builder(jwt)
//!     .route("GET /health", RoutePolicy::anonymous())
//!     .route("GET /orders", RoutePolicy::authenticated().any_scope(["orders:read"]))
//!     .build()?;
//!
//! let app: Router = Router::new()
//!     .route("/orders", get(|who: Principal| async move { format!("orders of {:?}", who.subject()) }))
//!     .route("/health", get(|| async { "ok" }))
//!     .layer(auth);
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! # Keys from a JWKS URL
//!
//! The set is fetched when the authorizer is built and then every
//! [`poll_interval`](JwtAuthorizerBuilder::poll_interval) (10 minutes by default). A token
//! whose `kid` the set lacks triggers one refetch, which the request waits for; refetches are
//! at most one per [`refetch_interval`](JwtAuthorizerBuilder::refetch_interval) (30 s) per
//! provider, so a flood of made-up `kid`s cannot hammer the identity provider. A failed fetch
//! keeps the last good set. Until a first fetch succeeds, requests get `503` with
//! `Retry-After`; fetching is retried with backoff and on requests, so the layer recovers by
//! itself when the provider comes back.
//!
//! # Cache
//!
//! A verified token is remembered (by the whole token, compared in full) until the earlier
//! of [`cache_ttl`](JwtAuthorizerBuilder::cache_ttl) and its `exp`; a cached token never
//! outlives its expiry. A hit costs a hash and a comparison instead of a signature check.

mod cache;
mod jwks;
mod keys;
mod provider;
mod token;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::Deserialize;
use tollgate_core::{BearerError, Clock, Rejection, SharedClock};

use self::cache::TokenCache;
use self::jwks::{RemoteKeys, Timings};
use self::keys::{KeySet, KeysKind};
use self::provider::{Failure, KeySource, Provider};
use self::token::Found;
use crate::{AuthRequest, Authorizer, Decision, Verdict};

pub use self::keys::{Keys, MIN_HMAC_SECRET_BYTES};
pub use self::provider::{JwtProvider, DEFAULT_LEEWAY};
pub use self::token::{TokenSource, DEFAULT_MAX_TOKEN_BYTES};
pub use jsonwebtoken::Algorithm;

/// How often a JWKS URL is fetched again unless told otherwise: 10 minutes.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(600);
/// The shortest time between two refetches triggered by unknown `kid`s: 30 s.
pub const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// How long a JWKS fetch may take: 5 s.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a verified token is remembered at most: 5 minutes (and never past its `exp`).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);
/// How many verified tokens are remembered: 10,000.
pub const DEFAULT_CACHE_CAPACITY: u64 = 10_000;

/// Why a JWT authorizer could not be built or a key set fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// No provider was added.
    #[error("a JWT authorizer needs at least one provider")]
    NoProviders,
    /// Two providers share an issuer.
    #[error("two providers have issuer {0:?}; issuers must be unique")]
    DuplicateIssuer(String),
    /// A provider without audiences.
    #[error("provider {0:?} has no audience: add one, or call any_audience() to accept tokens meant for any service")]
    NoAudience(String),
    /// An HMAC secret shorter than [`MIN_HMAC_SECRET_BYTES`].
    #[error("the HMAC secret is {0} bytes; it must be at least {MIN_HMAC_SECRET_BYTES}")]
    WeakSecret(usize),
    /// A key that could not be read.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A key file that could not be read.
    #[error("cannot read key file {path:?}: {error}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A JWK set that is not valid JSON of the expected shape.
    #[error("invalid JWK set: {0}")]
    InvalidJwks(String),
    /// No key usable with the provider's algorithms.
    #[error("no key can verify any of the provider's allowed algorithms")]
    NoUsableKey,
    /// A JWKS or issuer URL that is not an absolute http(s) URL.
    #[error("invalid URL {0:?}: expected an absolute https:// (or http://) URL")]
    InvalidUrl(String),
    /// A remote key set was configured outside a tokio runtime.
    #[error(
        "a JWKS URL is fetched in the background: build the authorizer inside a tokio runtime"
    )]
    NoRuntime,
    /// The HTTPS client could not be set up.
    #[error("cannot set up TLS for JWKS fetching: {0}")]
    Tls(String),
    /// A JWKS or discovery fetch failed.
    #[error("fetching keys failed: {0}")]
    Fetch(String),
    /// A cache TTL over the limit.
    #[error("the cache TTL is {0:?}; it must be at most one day")]
    CacheTtl(Duration),
}

/// Verifies JWTs from one or more identity providers. Cheap to clone.
#[derive(Clone)]
pub struct JwtAuthorizer {
    inner: Arc<Inner>,
}

struct Inner {
    providers: Box<[Provider]>,
    sources: Box<[TokenSource]>,
    max_token_bytes: usize,
    cache: Option<TokenCache>,
    clock: SharedClock,
}

impl std::fmt::Debug for JwtAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthorizer")
            .field(
                "issuers",
                &self
                    .inner
                    .providers
                    .iter()
                    .map(|p| &p.issuer)
                    .collect::<Vec<_>>(),
            )
            .field("sources", &self.inner.sources)
            .finish_non_exhaustive()
    }
}

/// The future of a decision that waits for a key set to be fetched.
pub type JwtFuture = Pin<Box<dyn Future<Output = Decision> + Send>>;

impl JwtAuthorizer {
    /// Starts an authorizer.
    pub fn builder() -> JwtAuthorizerBuilder {
        JwtAuthorizerBuilder {
            providers: Vec::new(),
            sources: vec![TokenSource::Bearer],
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            cache_ttl: DEFAULT_CACHE_TTL,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            poll_interval: DEFAULT_POLL_INTERVAL,
            refetch_interval: DEFAULT_REFETCH_INTERVAL,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            clock: None,
        }
    }

    /// Fetches every provider's JWKS now. [`build`](JwtAuthorizerBuilder::build) starts the
    /// first fetch in the background; await this at start-up to serve only once keys are in.
    /// A failure keeps the last good keys.
    pub async fn refresh(&self) -> Result<(), JwtError> {
        for provider in &*self.inner.providers {
            if let KeySource::Remote(remote) = &provider.keys {
                remote.fetch_and_store().await?;
            }
        }
        Ok(())
    }

    fn now(&self) -> u64 {
        self.inner
            .clock
            .system_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
    }

    fn provider_for(&self, token: &[u8]) -> Result<&Provider, Failure> {
        match &*self.inner.providers {
            [only] => Ok(only),
            providers => {
                #[derive(Deserialize)]
                struct Issuer {
                    iss: Option<String>,
                }
                // Only picks the provider; that provider's keys then verify everything.
                let issuer = jsonwebtoken::dangerous::insecure_decode_claims::<Issuer>(token)
                    .map_err(|_| Failure::Malformed)?
                    .iss
                    .ok_or(Failure::UnknownIssuer)?;
                providers
                    .iter()
                    .find(|p| p.issuer == issuer)
                    .ok_or(Failure::UnknownIssuer)
            }
        }
    }

    /// Verifies and caches; `Err` carries the provider when a refetch might help.
    fn verify(&self, token: &[u8]) -> Result<Decision, (Failure, Option<&Provider>)> {
        let provider = self.provider_for(token).map_err(|f| (f, None))?;
        let now = self.now();
        match provider.verify(token, now) {
            Ok(verified) => {
                if let Some(cache) = &self.inner.cache {
                    // Precise wall time: whole seconds could let an entry outlive `exp`.
                    let clock = &self.inner.clock;
                    let wall = clock
                        .system_time()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default();
                    cache.insert(token, &verified.principal, verified.exp, wall, clock.now());
                }
                Ok(Decision::Allow(verified.principal))
            }
            Err(failure) => Err((failure, Some(provider))),
        }
    }

    fn refuse(failure: Failure, provider: Option<&Provider>) -> Decision {
        match (failure, provider.map(|p| &p.keys)) {
            (Failure::NoKeys, Some(KeySource::Remote(remote))) => Decision::deny(
                Rejection::unavailable(remote.retry_after()).with_detail(failure.detail()),
            ),
            _ => Decision::deny(
                Rejection::unauthorized(BearerError::InvalidToken).with_detail(failure.detail()),
            ),
        }
    }
}

impl Authorizer for JwtAuthorizer {
    type Future = JwtFuture;

    fn authorize(&self, request: &AuthRequest<'_>) -> Verdict<JwtFuture> {
        let inner = &*self.inner;
        let token = match token::find(&inner.sources, &request.head) {
            Found::Token(token) => token,
            Found::Nothing => return Verdict::Ready(Decision::NoCredentials),
            Found::Malformed(detail) => {
                return Verdict::Ready(Decision::deny(
                    Rejection::unauthorized(BearerError::InvalidRequest).with_detail(detail),
                ))
            }
        };
        if token.len() > inner.max_token_bytes {
            return Verdict::Ready(Self::refuse(Failure::TooLarge, None));
        }
        if let Some(cache) = &inner.cache {
            if let Some(principal) = cache.get(token, inner.clock.now()) {
                return Verdict::Ready(Decision::Allow(principal));
            }
        }
        match self.verify(token) {
            Ok(decision) => Verdict::Ready(decision),
            Err((failure @ (Failure::UnknownKey | Failure::NoKeys), Some(provider))) => {
                let KeySource::Remote(remote) = &provider.keys else {
                    return Verdict::Ready(Self::refuse(failure, Some(provider)));
                };
                match remote.refetch() {
                    Some(fetched) => {
                        let this = self.clone();
                        let token = token.to_vec();
                        Verdict::Pending(Box::pin(async move {
                            fetched.await;
                            this.verify(&token).unwrap_or_else(|(failure, provider)| {
                                Self::refuse(failure, provider)
                            })
                        }))
                    }
                    None => Verdict::Ready(Self::refuse(failure, Some(provider))),
                }
            }
            Err((failure, provider)) => Verdict::Ready(Self::refuse(failure, provider)),
        }
    }
}

/// Builds a [`JwtAuthorizer`].
#[derive(Debug)]
#[must_use]
pub struct JwtAuthorizerBuilder {
    providers: Vec<JwtProvider>,
    sources: Vec<TokenSource>,
    max_token_bytes: usize,
    cache_ttl: Duration,
    cache_capacity: u64,
    poll_interval: Duration,
    refetch_interval: Duration,
    fetch_timeout: Duration,
    clock: Option<SharedClock>,
}

impl JwtAuthorizerBuilder {
    /// Adds an identity provider.
    pub fn provider(mut self, provider: JwtProvider) -> Self {
        self.providers.push(provider);
        self
    }

    /// Where tokens are looked for, in order: `Authorization: Bearer` only, unless set.
    pub fn token_sources(mut self, sources: impl IntoIterator<Item = TokenSource>) -> Self {
        self.sources = sources.into_iter().collect();
        self
    }

    /// Tokens longer than this are refused before any decoding: [`DEFAULT_MAX_TOKEN_BYTES`].
    pub fn max_token_bytes(mut self, bytes: usize) -> Self {
        self.max_token_bytes = bytes;
        self
    }

    /// How long a verified token is remembered at most (never past its `exp`); zero turns the
    /// cache off. [`DEFAULT_CACHE_TTL`] unless set, at most a day.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// How many verified tokens are remembered: [`DEFAULT_CACHE_CAPACITY`] unless set.
    pub fn cache_capacity(mut self, capacity: u64) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// How often JWKS URLs are fetched again: [`DEFAULT_POLL_INTERVAL`] unless set.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_secs(1));
        self
    }

    /// The shortest time between two refetches triggered by unknown `kid`s, per provider:
    /// [`DEFAULT_REFETCH_INTERVAL`] unless set.
    pub fn refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self
    }

    /// How long a JWKS fetch may take: [`DEFAULT_FETCH_TIMEOUT`] unless set.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// The clock that token times and the refetch limit are read from (a
    /// [`ManualClock`](tollgate_core::ManualClock) in tests).
    pub fn clock(mut self, clock: impl Into<SharedClock>) -> Self {
        self.clock = Some(clock.into());
        self
    }

    /// Builds the authorizer; static keys are read now, and JWKS URLs start being fetched in
    /// the background (which needs a tokio runtime).
    pub fn build(self) -> Result<JwtAuthorizer, JwtError> {
        if self.providers.is_empty() {
            return Err(JwtError::NoProviders);
        }
        if self.cache_ttl > Duration::from_secs(86_400) {
            return Err(JwtError::CacheTtl(self.cache_ttl));
        }
        // The default is the system clock without dynamic dispatch: it is read per request.
        let clock = self.clock.unwrap_or_default();
        let timings = Timings {
            poll: self.poll_interval,
            min_refetch: self.refetch_interval,
            fetch_timeout: self.fetch_timeout,
        };
        let mut client = None;
        let mut runtime = None;
        let mut remotes = Vec::new();
        let mut providers = Vec::with_capacity(self.providers.len());
        for config in &self.providers {
            if providers
                .iter()
                .any(|p: &Provider| p.issuer == config.issuer)
            {
                return Err(JwtError::DuplicateIssuer(config.issuer.clone()));
            }
            let template = config.template()?;
            let keys = if config.keys.is_remote() {
                let client = match &client {
                    Some(client) => Clone::clone(client),
                    None => client.insert(jwks::http_client()?).clone(),
                };
                let url = match &config.keys.0 {
                    KeysKind::JwksUrl(url) => Some(url.as_str()),
                    _ => None,
                };
                // Fetches run on the runtime the authorizer is built in, whichever thread (or
                // executor) later serves the request that triggers one.
                let runtime = match &runtime {
                    Some(runtime) => Clone::clone(runtime),
                    None => runtime
                        .insert(
                            tokio::runtime::Handle::try_current()
                                .map_err(|_| JwtError::NoRuntime)?,
                        )
                        .clone(),
                };
                let remote = RemoteKeys::new(
                    url,
                    &config.issuer,
                    template,
                    client,
                    clock.clone(),
                    timings,
                    runtime,
                )?;
                remotes.push(remote.clone());
                KeySource::Remote(remote)
            } else {
                KeySource::Static(KeySet::from_static(&config.keys, &template)?)
            };
            providers.push(Provider::new(config, keys));
        }
        for remote in &remotes {
            remote.spawn_poller();
        }
        let cache = (!self.cache_ttl.is_zero() && self.cache_capacity > 0)
            .then(|| TokenCache::new(self.cache_capacity, self.cache_ttl));
        Ok(JwtAuthorizer {
            inner: Arc::new(Inner {
                providers: providers.into(),
                sources: self.sources.into(),
                max_token_bytes: self.max_token_bytes,
                cache,
                clock,
            }),
        })
    }
}
