//! The whole gateway as one layer, in the order a hosted gateway applies its steps.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use axum::body::Body;
use axum::response::IntoResponse;
use http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

/// The service a [`Gateway`] makes of the application's: every step of the gateway around it,
/// behind one nameable type. Clones share every layer's state (limits, quotas, caches).
pub type GatewayService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// A layer that can take its place in a [`Gateway`]: one that wraps a [`GatewayService`] into
/// a cloneable, thread-safe service of axum bodies that never fails (refusals are responses).
///
/// Every tollgate layer is one, and so is any tower layer of the application's own with those
/// properties; it is implemented for them all.
pub trait GatewayLayer: Send + Sync + 'static {
    /// Wraps `inner`.
    fn wrap(&self, inner: GatewayService) -> GatewayService;
}

impl<L> GatewayLayer for L
where
    L: Layer<GatewayService> + Send + Sync + 'static,
    L::Service: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request<Body>>>::Response: IntoResponse,
    <L::Service as Service<Request<Body>>>::Future: Send + 'static,
{
    fn wrap(&self, inner: GatewayService) -> GatewayService {
        // A layer whose responses already carry axum bodies keeps them as they are
        // (`into_response` does not box a `Body` again); others are boxed once.
        BoxCloneSyncService::new(self.layer(inner).map_response(IntoResponse::into_response))
    }
}

/// One step of the gateway, named for `Debug` and for errors.
#[derive(Clone)]
struct Step {
    name: &'static str,
    layer: Arc<dyn GatewayLayer>,
}

/// Every step of an API gateway, as one tower [`Layer`] for an axum `Router` or any service
/// that takes requests with axum bodies and never fails, in the order a hosted gateway applies them (outermost first):
///
/// 1. [`throttle`](GatewayBuilder::throttle): the coarse limits, per client IP or global,
///    which protect everything behind them;
/// 2. [`authorizer`](GatewayBuilder::authorizer): who is calling (`Principal`); 401 or 403;
/// 3. [`usage`](GatewayBuilder::usage): the API key's plan, its throttle and quota;
/// 4. [`cache`](GatewayBuilder::cache): a hit is answered here, a miss goes on;
/// 5. the application's own layers ([`layer`](GatewayBuilder::layer)), in the order added,
///    then the application itself (the integration).
///
/// Every step is optional; the order is the builder's, whatever the order of the calls, so a
/// throttled request never reaches the authorizer, an unauthorized one spends no quota, and a
/// cache hit has been authorized and counted against its key's quota (as in Amazon API
/// Gateway, where a cached response still counts as a request of the usage plan). The
/// application's layers run only for requests the gateway let through and the cache did not
/// answer, with the caller's `Principal` in the request.
///
/// Added with `Router::layer`, the gateway also sees requests no route matches (their 404s
/// are throttled, authorized and counted); `Router::route_layer` keeps it to matched routes.
///
/// Stages come before all of these: [`Gateway::stages`] builds a
/// [`StageRouter`](crate::stage::StageRouter) that picks the stage (or canary) and serves each
/// deployment behind the gateway's steps, which the stages share (every limit, quota and
/// cache).
///
/// The layers are type-erased: the result is a [`GatewayService`] whatever the stores and
/// authorizers, at the cost of one boxed future per step and request. Clones of a `Gateway`
/// share every layer's state.
///
/// # Example
///
/// ```
/// # #[cfg(all(feature = "throttle", feature = "usage", feature = "cache"))]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// use axum::{routing::get, Router};
/// use tollgate::cache::{CacheLayer, CachePolicy};
/// use tollgate::key::ClientIp;
/// use tollgate::throttle::{Rate, Rule, ThrottleLayer};
/// use tollgate::usage::{QuotaPeriod, UsagePlan, UsagePlans};
/// use tollgate::{Gateway, TrustedProxies};
///
/// let plans = UsagePlans::builder()
///     .plan(UsagePlan::new("basic").throttle(Rate::per_second(5), 10).quota(1_000, QuotaPeriod::Day))
///     .build()?;
/// let gateway = Gateway::builder()
///     .throttle(
///         ThrottleLayer::builder()
///             .rule(Rule::new("per-client", Rate::per_second(50), ClientIp::new(TrustedProxies::none())))
///             .build()?,
///     )
///     .usage(plans.layer())
///     .cache(CacheLayer::builder().policy(CachePolicy::new().ttl(Duration::from_secs(30))).build()?)
///     .build();
/// let app: Router = Router::new()
///     .route("/widgets", get(|| async { "[]" }))
///     .layer(gateway);
/// # let _ = app;
/// # Ok(())
/// # }
/// # #[cfg(not(all(feature = "throttle", feature = "usage", feature = "cache")))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct Gateway {
    /// Outermost first.
    steps: Arc<[Step]>,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field(
                "steps",
                &self.steps.iter().map(|step| step.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Gateway {
    /// A builder with no step; each is added by its method.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// The names of the steps, outermost first: `throttle`, `authorizer`, `usage`, `cache`,
    /// then `layer` for each of the application's own.
    pub fn steps(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.steps.iter().map(|step| step.name)
    }

    /// Stages in front of the gateway: the router picks the stage (or canary) first, then
    /// every deployment described in `stages` is served behind this gateway's steps, which
    /// all stages share. Canaries started later through the router's `StageHandle` take a
    /// [`GatewayService`]: wrap their deployment with `gateway.layer(..)` too.
    ///
    /// Since the router runs first, what the authorizer and the usage plan put in a request
    /// (the subject, the API key, scopes) is not there yet when it picks a side: keep canaries
    /// sticky by client IP, a header or a cookie.
    ///
    /// # Errors
    ///
    /// The stages do not describe a valid router (no stage, a conflict, an unknown default).
    #[cfg(feature = "stage")]
    #[cfg_attr(docsrs, doc(cfg(feature = "stage")))]
    pub fn stages<S>(
        &self,
        stages: crate::stage::StageRouterBuilder<S>,
    ) -> Result<
        crate::stage::StageRouter<GatewayService, crate::core::InnerBody>,
        crate::stage::StageError,
    >
    where
        Self: Layer<S, Service = GatewayService>,
    {
        Ok(stages
            .map_services(|deployment| self.layer(deployment))
            .build()?
            .keep_inner_body())
    }
}

impl<S> Layer<S> for Gateway
where
    S: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    type Service = GatewayService;

    fn layer(&self, inner: S) -> GatewayService {
        let inner = BoxCloneSyncService::new(inner.map_response(IntoResponse::into_response));
        self.steps
            .iter()
            .rev()
            .fold(inner, |service, step| step.layer.wrap(service))
    }
}

/// Builds a [`Gateway`]; see there for the order of the steps.
#[derive(Default)]
#[must_use]
pub struct GatewayBuilder {
    throttle: Option<Step>,
    authorizer: Option<Step>,
    usage: Option<Step>,
    cache: Option<Step>,
    own: Vec<Step>,
}

impl fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field(
                "steps",
                &self.steps().map(|step| step.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn step(name: &'static str, layer: impl GatewayLayer) -> Option<Step> {
    Some(Step {
        name,
        layer: Arc::new(layer),
    })
}

impl GatewayBuilder {
    /// The coarse throttle (step 1); a second call replaces the first.
    #[cfg(feature = "throttle")]
    #[cfg_attr(docsrs, doc(cfg(feature = "throttle")))]
    pub fn throttle<St, M>(mut self, layer: crate::throttle::ThrottleLayer<St, M>) -> Self
    where
        crate::throttle::ThrottleLayer<St, M>: GatewayLayer,
    {
        self.throttle = step("throttle", layer);
        self
    }

    /// The authorizer (step 2); a second call replaces the first.
    #[cfg(feature = "auth")]
    #[cfg_attr(docsrs, doc(cfg(feature = "auth")))]
    pub fn authorizer<A, M>(mut self, layer: crate::auth::AuthLayer<A, M>) -> Self
    where
        crate::auth::AuthLayer<A, M>: GatewayLayer,
    {
        self.authorizer = step("authorizer", layer);
        self
    }

    /// The usage plans' layer (step 3), from `UsagePlans::layer`; a second call replaces the
    /// first.
    #[cfg(feature = "usage")]
    #[cfg_attr(docsrs, doc(cfg(feature = "usage")))]
    pub fn usage<K, Q, T, M>(mut self, layer: crate::usage::UsageLayer<K, Q, T, M>) -> Self
    where
        crate::usage::UsageLayer<K, Q, T, M>: GatewayLayer,
    {
        self.usage = step("usage", layer);
        self
    }

    /// The response cache (step 4); a second call replaces the first.
    #[cfg(feature = "cache")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
    pub fn cache<St>(mut self, layer: crate::cache::CacheLayer<St>) -> Self
    where
        crate::cache::CacheLayer<St>: GatewayLayer,
    {
        self.cache = step("cache", layer);
        self
    }

    /// A layer of the application's own, after every gateway step and before the application
    /// (step 5): it sees only requests the gateway let through and the cache did not answer,
    /// with their `Principal`. Layers added this way run in the order added, outermost first.
    pub fn layer(mut self, layer: impl GatewayLayer) -> Self {
        self.own.extend(step("layer", layer));
        self
    }

    fn steps(&self) -> impl Iterator<Item = &Step> {
        [&self.throttle, &self.authorizer, &self.usage, &self.cache]
            .into_iter()
            .flatten()
            .chain(&self.own)
    }

    /// The gateway, its steps in their fixed order.
    pub fn build(self) -> Gateway {
        Gateway {
            steps: self.steps().cloned().collect(),
        }
    }
}
