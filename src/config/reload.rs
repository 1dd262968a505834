//! A gateway serving from a configuration, and reloading it.

use std::convert::Infallible;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::response::IntoResponse;
use http::Request;
use tower::{Layer, Service};

use super::build::{build, ConfiguredPlans, Handlers, State};
use super::{ConfigError, GatewayConfig};
use crate::gateway::GatewayService;
use crate::Gateway;

/// The configuration serving now.
struct Current {
    generation: u64,
    gateway: Gateway,
    service: GatewayService,
    state: State,
    config: Arc<GatewayConfig>,
}

struct Inner {
    handlers: Handlers,
    /// Read on every request without a lock; replaced whole by a reload.
    current: ArcSwap<Current>,
    /// One reload at a time, so each carries over the state of the one before.
    reloading: tokio::sync::Mutex<()>,
}

/// A gateway built from a [`GatewayConfig`], serving it and reloading it: clone it freely, every
/// clone is the same gateway.
///
/// [`service`](Self::service) (or [`router`](Self::router)) always serves the latest
/// configuration; [`reload`](Self::reload) checks and builds a new one beside it, and swaps
/// it in only when it is valid. A request runs on the configuration that was current when it
/// arrived, to its end.
///
/// ```no_run
/// use tollgate::config::{GatewayConfig, GatewayHandle, Handlers};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let handlers = Handlers::new().handler("catalog", || async { "[]" });
/// let gateway = GatewayHandle::from_file("gateway.yaml", handlers).await?;
/// let _watcher = gateway.watch("gateway.yaml", std::time::Duration::from_secs(2));
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// let app = gateway.router();
/// axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct GatewayHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current();
        f.debug_struct("GatewayHandle")
            .field("generation", &current.generation)
            .field("steps", &current.gateway)
            .finish_non_exhaustive()
    }
}

impl GatewayHandle {
    /// Builds `config` with the application's `handlers` (a tokio runtime is needed when an
    /// authorizer fetches keys).
    ///
    /// # Errors
    ///
    /// The configuration is invalid, or names a handler or authorizer `handlers` lacks.
    pub async fn new(config: GatewayConfig, handlers: Handlers) -> Result<Self, ConfigError> {
        let mut built = build(&config, &handlers, None).await?;
        built.adopt_keys().await;
        let current = Current {
            generation: 1,
            gateway: built.gateway,
            service: built.service,
            state: built.state,
            config: Arc::new(config),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                handlers,
                current: ArcSwap::from_pointee(current),
                reloading: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Reads the configuration file at `path` and builds it.
    ///
    /// # Errors
    ///
    /// As [`GatewayConfig::from_file`] and [`new`](Self::new).
    pub async fn from_file(
        path: impl AsRef<Path>,
        handlers: Handlers,
    ) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let config = GatewayConfig::from_file(path)?;
        Self::new(config, handlers)
            .await
            .map_err(|error| error.in_file(path))
    }

    fn current(&self) -> Arc<Current> {
        self.inner.current.load_full()
    }

    /// Replaces the configuration: `config` is checked and built first, and if anything is
    /// wrong the running configuration stays and the error says what. Requests in flight
    /// finish on the configuration they started with. State is carried over where the
    /// configuration kept it (see the [module](super) documentation).
    ///
    /// # Errors
    ///
    /// The new configuration is invalid; nothing changed.
    pub async fn reload(&self, config: GatewayConfig) -> Result<(), ConfigError> {
        let _one_at_a_time = self.inner.reloading.lock().await;
        let previous = self.current();
        let mut built = build(&config, &self.inner.handlers, Some(&previous.state)).await?;
        built.adopt_keys().await;
        let generation = previous.generation + 1;
        let current = Arc::new(Current {
            generation,
            gateway: built.gateway,
            service: built.service,
            state: built.state,
            config: Arc::new(config),
        });
        self.inner.current.store(current);
        tracing::info!(generation, "tollgate: configuration reloaded");
        Ok(())
    }

    /// Reads the file at `path` and [`reload`](Self::reload)s it.
    ///
    /// # Errors
    ///
    /// The file cannot be read or holds an invalid configuration; nothing changed.
    pub async fn reload_file(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let path = path.as_ref();
        let config = GatewayConfig::from_file(path)?;
        self.reload(config)
            .await
            .map_err(|error| error.in_file(path))
    }

    /// The current configuration's usage plans, for key administration: create, rotate and
    /// revoke keys, read usage (the `admin` feature's router takes them). Keys created here
    /// outlive reloads; keys the configuration lists are the configuration's, put back or
    /// removed by each reload. `None` without a `usage` section.
    pub fn plans(&self) -> Option<ConfiguredPlans> {
        self.current().state.plans.clone()
    }

    /// How many configurations have served: 1 until the first reload.
    pub fn generation(&self) -> u64 {
        self.current().generation
    }

    /// The configuration serving now.
    pub fn config(&self) -> Arc<GatewayConfig> {
        self.current().config.clone()
    }

    /// The gateway as a service: the configuration's routes behind its steps (and stages),
    /// always the latest configuration's.
    pub fn service(&self) -> GatewayService {
        let handle = self.clone();
        GatewayService::from_fn(move |request| {
            handle.inner.current.load().service.clone().call(request)
        })
    }

    /// [`service`](Self::service) as an axum `Router`, to serve with `axum::serve` (with
    /// `into_make_service_with_connect_info::<SocketAddr>()`, so client-IP keys see the peer)
    /// or to nest in the application's own.
    pub fn router(&self) -> axum::Router {
        axum::Router::new().fallback_service(self.service())
    }

    /// The configuration's steps (throttle, authorizer, usage, cache; no stages and no
    /// routes) as a layer for the application's own router, following reloads. Meant for a
    /// configuration without `routes`, whose usage plans apply to every request; with routes,
    /// the steps apply their per-route settings to the paths those routes match.
    pub fn layer(&self) -> GatewayHandleLayer {
        GatewayHandleLayer {
            handle: self.clone(),
        }
    }

    /// Reloads the configuration whenever the file at `path` changes from what it is when
    /// this is called, checking every `interval` (at least a millisecond) and applying a
    /// change once two checks in a row find the same file (so within two intervals, and never
    /// half written); an invalid file is logged (`tracing`, at `warn`) and the running
    /// configuration stays. Watching stops when the returned [`Watcher`] is dropped.
    /// Needs a tokio runtime.
    pub fn watch(&self, path: impl Into<PathBuf>, interval: Duration) -> Watcher {
        let path = path.into();
        let handle = self.clone();
        // The file as it is now, read before returning: a change made the moment after this
        // call is one to apply.
        let mut applied = stamp(&path);
        let interval = interval.max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            // A change is applied once two checks in a row see the same file, so a file caught
            // half written is not taken for the new configuration.
            let mut last = applied.clone();
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let now = {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || stamp(&path))
                        .await
                        .ok()
                        .flatten()
                };
                let settled = now == last;
                last = now;
                if !settled || last == applied {
                    continue;
                }
                applied = last.clone();
                if let Err(error) = handle.reload_file(&path).await {
                    tracing::warn!(
                        error = %error,
                        "tollgate: the changed configuration file was refused; the running configuration stays"
                    );
                }
            }
        });
        Watcher { task }
    }
}

/// What tells a file's versions apart: its modification time, length and contents.
fn stamp(path: &Path) -> Option<(SystemTime, u64, Vec<u8>)> {
    let metadata = std::fs::metadata(path).ok()?;
    let contents = std::fs::read(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), contents))
}

/// Watches a configuration file ([`GatewayHandle::watch`]); dropping it stops watching.
#[derive(Debug)]
pub struct Watcher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// [`GatewayHandle::layer`]: the configuration's steps around the application's service.
#[derive(Clone, Debug)]
pub struct GatewayHandleLayer {
    handle: GatewayHandle,
}

impl<S> Layer<S> for GatewayHandleLayer
where
    S: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    type Service = GatewayService;

    fn layer(&self, inner: S) -> GatewayService {
        let app = GatewayService::new(inner);
        let handle = self.handle.clone();
        // The steps wrapped around the application once per configuration, not per request.
        let wrapped: ArcSwapOption<(u64, GatewayService)> = ArcSwapOption::empty();
        GatewayService::from_fn(move |request| {
            let generation = handle.inner.current.load().generation;
            if let Some(cached) = &*wrapped.load() {
                if cached.0 == generation {
                    return cached.1.clone().call(request);
                }
            }
            let current = handle.current();
            let mut service = current.gateway.wrap(app.clone());
            wrapped.store(Some(Arc::new((current.generation, service.clone()))));
            service.call(request)
        })
    }
}
