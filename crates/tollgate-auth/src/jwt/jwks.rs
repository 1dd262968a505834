use std::future::Future;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Validation;
use serde::Deserialize;
use tokio::sync::watch;
use tollgate_core::{Clock, SharedClock};

use super::keys::KeySet;
use super::JwtError;

/// The largest JWKS or discovery document read: identity providers publish a few keys, and a
/// bigger answer is a misconfiguration or an attack.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// An HTTPS (and plain HTTP) client that trusts the webpki root certificates.
pub(crate) fn http_client() -> Result<HttpClient, JwtError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .map_err(|error| JwtError::Tls(error.to_string()))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Timings of a remote key set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timings {
    pub(crate) poll: Duration,
    pub(crate) min_refetch: Duration,
    pub(crate) fetch_timeout: Duration,
}

/// Where the JWKS document is.
enum Location {
    Url(Uri),
    /// Found through the issuer's discovery document on first fetch, then kept.
    Discovery {
        issuer: String,
        document: Uri,
        found: Mutex<Option<Uri>>,
    },
}

/// A provider's keys from a JWKS URL: the last good set, fetched at start-up, polled, and
/// refetched (at most once per `min_refetch`) when a token names a key the set lacks.
pub(crate) struct RemoteKeys {
    location: Location,
    template: Validation,
    client: HttpClient,
    clock: SharedClock,
    timings: Timings,
    keys: RwLock<Option<Arc<KeySet>>>,
    refetch: Mutex<Refetch>,
    /// Counts finished refetches, so requests waiting on one wake when it ends.
    finished: watch::Sender<u64>,
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct Refetch {
    /// When the last request-triggered fetch started, on the clock's monotonic time.
    last: Option<Duration>,
    in_flight: bool,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl RemoteKeys {
    pub(crate) fn new(
        url: Option<&str>,
        issuer: &str,
        template: Validation,
        client: HttpClient,
        clock: SharedClock,
        timings: Timings,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, JwtError> {
        let location = match url {
            Some(url) => Location::Url(parse_url(url)?),
            None => Location::Discovery {
                issuer: issuer.to_owned(),
                document: parse_url(&format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                ))?,
                found: Mutex::new(None),
            },
        };
        Ok(Arc::new(Self {
            location,
            template,
            client,
            clock,
            timings,
            keys: RwLock::new(None),
            refetch: Mutex::new(Refetch::default()),
            finished: watch::Sender::new(0),
            runtime,
        }))
    }

    /// The last good key set, if any fetch has succeeded.
    pub(crate) fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().ok().and_then(|keys| keys.clone())
    }

    /// Starts a refetch for a token whose key is unknown (or when no set was ever fetched),
    /// unless one started less than `min_refetch` ago. Returns what to wait on: this fetch,
    /// or one already under way. `None` means the caller must decide with the keys it has.
    pub(crate) fn refetch(self: &Arc<Self>) -> Option<impl Future<Output = ()> + Send + 'static> {
        let mut state = self.refetch.lock().ok()?;
        // Subscribed under the lock, before any fetch can report, so no wake-up is missed.
        let mut finished = self.finished.subscribe();
        if !state.in_flight {
            let now = self.clock.now();
            if let Some(last) = state.last {
                if now.saturating_sub(last) < self.timings.min_refetch {
                    return None;
                }
            }
            state.last = Some(now);
            state.in_flight = true;
            let this = Arc::clone(self);
            self.runtime.spawn(async move {
                if let Err(error) = this.fetch_and_store().await {
                    tracing::warn!(%error, "tollgate auth: JWKS refetch failed; keeping the last good keys");
                }
                if let Ok(mut state) = this.refetch.lock() {
                    state.in_flight = false;
                    this.finished.send_modify(|count| *count += 1);
                }
            });
        }
        drop(state);
        let limit = self.timings.fetch_timeout.saturating_mul(2);
        Some(async move {
            // Bounded even if the fetch task never reports back (a runtime shutting down).
            let _ = tokio::time::timeout(limit, finished.changed()).await;
        })
    }

    /// How long until a refetch may start again: what a 503 tells clients to wait.
    pub(crate) fn retry_after(&self) -> Duration {
        let last = self.refetch.lock().ok().and_then(|state| state.last);
        let waited = last.map_or(self.timings.min_refetch, |last| {
            self.clock.now().saturating_sub(last)
        });
        self.timings.min_refetch.saturating_sub(waited)
    }

    /// Fetches the key set and, if it is good, makes it current.
    pub(crate) async fn fetch_and_store(&self) -> Result<(), JwtError> {
        let result = tokio::time::timeout(self.timings.fetch_timeout, self.fetch())
            .await
            .unwrap_or(Err(JwtError::Fetch("timed out".into())));
        if let Ok(set) = &result {
            if let Ok(mut keys) = self.keys.write() {
                *keys = Some(Arc::clone(set));
            }
            tracing::debug!(keys = set.len(), "tollgate auth: JWKS fetched");
        }
        result.map(|_| ())
    }

    async fn fetch(&self) -> Result<Arc<KeySet>, JwtError> {
        let url = self.jwks_url().await?;
        let document = self.get(&url).await?;
        Ok(Arc::new(KeySet::from_jwks_json(&document, &self.template)?))
    }

    async fn jwks_url(&self) -> Result<Uri, JwtError> {
        match &self.location {
            Location::Url(url) => Ok(url.clone()),
            Location::Discovery {
                issuer,
                document,
                found,
            } => {
                if let Some(url) = found.lock().ok().and_then(|found| found.clone()) {
                    return Ok(url);
                }
                let body = self.get(document).await?;
                let discovery: Discovery = serde_json::from_slice(&body)
                    .map_err(|error| JwtError::Fetch(format!("discovery document: {error}")))?;
                // OpenID Connect Discovery §4.3: the document must be the issuer's own.
                if discovery.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
                    return Err(JwtError::Fetch(format!(
                        "discovery document names issuer {:?}, expected {issuer:?}",
                        discovery.issuer
                    )));
                }
                let url = parse_url(&discovery.jwks_uri)?;
                if let Ok(mut found) = found.lock() {
                    *found = Some(url.clone());
                }
                Ok(url)
            }
        }
    }

    async fn get(&self, url: &Uri) -> Result<Bytes, JwtError> {
        let request = Request::get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|error| JwtError::Fetch(error.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|error| JwtError::Fetch(format!("{url}: {error}")))?;
        if response.status() != StatusCode::OK {
            return Err(JwtError::Fetch(format!(
                "{url}: status {}",
                response.status()
            )));
        }
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|error| JwtError::Fetch(format!("{url}: {error}")))?;
        Ok(body.to_bytes())
    }

    /// Fetches now and then every poll interval. After a failure it tries again after the
    /// refetch interval, doubling up to the poll interval: a provider that was down at
    /// start-up is picked up soon after it comes back, and never hammered while it is down.
    /// Stops when the authorizer is dropped.
    pub(crate) fn spawn_poller(self: &Arc<Self>) {
        let this: Weak<Self> = Arc::downgrade(self);
        let poll = self.timings.poll;
        let first_retry = self.timings.min_refetch.clamp(Duration::from_secs(1), poll);
        self.runtime.spawn(async move {
            let mut retry = first_retry;
            loop {
                let Some(keys) = this.upgrade() else { break };
                let wait = match keys.fetch_and_store().await {
                    Ok(()) => {
                        retry = first_retry;
                        poll
                    }
                    Err(error) => {
                        tracing::warn!(%error, "tollgate auth: JWKS fetch failed; keeping the last good keys");
                        let wait = retry.min(poll);
                        retry = retry.saturating_mul(2).min(poll);
                        wait
                    }
                };
                drop(keys);
                tokio::time::sleep(wait).await;
            }
        });
    }
}

fn parse_url(url: &str) -> Result<Uri, JwtError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| JwtError::InvalidUrl(url.to_owned()))?;
    match uri.scheme_str() {
        Some("https" | "http") if uri.host().is_some() => Ok(uri),
        _ => Err(JwtError::InvalidUrl(url.to_owned())),
    }
}
