//! The whole gateway as one layer, in the order a hosted gateway applies its steps.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::IntoResponse;
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};

/// The future of a [`GatewayService`].
pub type GatewayFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

type Call = dyn Fn(Request<Body>) -> GatewayFuture + Send + Sync;

/// The service a [`Gateway`] makes of the application's: every step of the gateway around it,
/// behind one nameable type. Made only by a gateway ([`Gateway::wrap`], or `Layer::layer`).
///
/// A clone costs a reference count, as axum clones a route's service for every request; a
/// request costs one boxed future per step, plus one for the application. It is always ready: each step's own readiness is
/// awaited inside the request's future (tollgate's layers refuse with responses, never by
/// backpressure).
#[derive(Clone)]
pub struct GatewayService {
    call: Arc<Call>,
}

impl fmt::Debug for GatewayService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayService").finish_non_exhaustive()
    }
}

impl GatewayService {
    /// A service that answers with `call`.
    #[cfg(feature = "config")]
    pub(crate) fn from_fn(
        call: impl Fn(Request<Body>) -> GatewayFuture + Send + Sync + 'static,
    ) -> Self {
        Self {
            call: Arc::new(call),
        }
    }

    /// Erases `service`: each request calls a clone of it.
    pub(crate) fn new<S>(service: S) -> Self
    where
        S: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
        S::Response: IntoResponse,
        S::Future: Send + 'static,
    {
        Self {
            call: Arc::new(move |request| {
                let mut service = service.clone();
                // Every tollgate step is ready at once (readiness is the next step's, and a
                // `GatewayService` is always ready): then the request goes straight in. A
                // layer that is not ready yet is awaited, with the request's own waker.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match service.poll_ready(&mut cx) {
                    Poll::Ready(Ok(())) => {
                        let call = service.call(request);
                        Box::pin(async move { Ok(call.await?.into_response()) })
                    }
                    Poll::Ready(Err(never)) => match never {},
                    Poll::Pending => {
                        let call = service.oneshot(request);
                        Box::pin(async move { Ok(call.await?.into_response()) })
                    }
                }
            }),
        }
    }
}

impl Service<Request<Body>> for GatewayService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = GatewayFuture;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, request: Request<Body>) -> GatewayFuture {
        (self.call)(request)
    }
}

/// What can be a step of a [`Gateway`]: a layer that wraps a [`GatewayService`] into a
/// cloneable, thread-safe service that never fails (refusals are responses) and answers
/// something axum can turn into a response.
///
/// Every tollgate layer is one, and so is any tower layer of the application's own with those
/// properties (axum's `middleware::from_fn`, for one); it is implemented for them
/// all.
pub trait GatewayStep: Send + Sync + 'static {
    /// Wraps `inner`.
    #[doc(hidden)]
    fn wrap(&self, inner: GatewayService) -> GatewayService;
}

impl<L> GatewayStep for L
where
    L: Layer<GatewayService> + Send + Sync + 'static,
    L::Service: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request<Body>>>::Response: IntoResponse,
    <L::Service as Service<Request<Body>>>::Future: Send + 'static,
{
    fn wrap(&self, inner: GatewayService) -> GatewayService {
        GatewayService::new(self.layer(inner))
    }
}

/// One step of the gateway, named for `Debug` and for errors.
#[derive(Clone)]
struct Step {
    name: &'static str,
    layer: Arc<dyn GatewayStep>,
}

/// Every step of an API gateway, as one tower [`Layer`] for an axum `Router` or any service
/// that takes requests with axum bodies and never fails, in the order a hosted gateway
/// applies them (outermost first):
///
/// 0. `request_id` (feature `observe`): tower-http's request-id layers give every request an
///    `x-request-id` (a UUID when the client sent none), which every later step, the
///    application and an HTTP upstream see, and echo it in the response, refusals included;
///    then `access_log` (feature `observe`): one `tracing` event per request with what every
///    step decided; then `metrics` (feature `observe`): every request counted and timed, by
///    method, route, status and decision, whichever step answered it;
/// 1. `ip_filter` (feature `access`): IP allow and deny lists; 403, to every method (a
///    denied client cannot even preflight);
/// 2. `cors` (feature `access`): tower-http's CORS layer; a browser's preflight, which
///    carries no credentials, is answered here (tower-http takes every `OPTIONS` for one), so
///    it is never throttled, refused by the authorizer or counted against a quota, and every
///    later refusal carries the CORS headers a browser needs to read it;
/// 3. `throttle`: the coarse limits, per client IP or global, which protect everything
///    behind them;
/// 4. `authorizer`: who is calling (`Principal`); 401 or 403;
/// 5. `usage`: the API key's plan, its throttle and quota; then `validate` (feature
///    `validate`): the request's headers, query parameters and body, checked against what
///    its route requires (400 listing every violation, 413 for an oversize body);
/// 6. `cache`: a hit is answered here, a miss goes on;
/// 7. the application's own layers (`layer`), in the order added, then the application
///    itself (the integration).
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
/// Layers that must see every request, refused or not (request ids, traces, access logs),
/// go outside it: `Router::layer` after `.layer(gateway)`.
///
/// Stages come before the steps: `Gateway::stages` (feature `stage`) builds a stage router
/// that picks the stage (or canary) and serves each deployment behind the gateway's steps,
/// which the stages share (every limit, quota and cache).
///
/// The layers are type-erased: the result is a [`GatewayService`] whatever the stores and
/// authorizers. A request costs one boxed future per step (and one for the application) and a
/// clone of each step's service
/// (reference counts); the tollgate layers are used with axum's own body type, so no response
/// body is wrapped. Clones of a `Gateway` share every layer's state.
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

    /// `service` behind every step of the gateway: what `Layer::layer` makes, without
    /// importing `tower::Layer`. The service must be cloneable and `Sync` (axum's routers and
    /// handlers are; wrap a `tower::util::BoxCloneService` in one that is), never fail, and
    /// take axum bodies (on hyper, `request.map(axum::body::Body::new)`).
    pub fn wrap<S>(&self, service: S) -> GatewayService
    where
        S: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
        S::Response: IntoResponse,
        S::Future: Send + 'static,
    {
        self.steps
            .iter()
            .rev()
            .fold(GatewayService::new(service), |service, step| {
                step.layer.wrap(service)
            })
    }

    /// The observing steps (`request_id`, `access_log`, `metrics`), and the others: to put the
    /// first in front of a stage router, so that they see the requests it refuses and the
    /// paths as the client sent them.
    #[cfg(feature = "config")]
    pub(crate) fn split_observing(&self) -> (Gateway, Gateway) {
        let observing = |step: &&Step| matches!(step.name, "request_id" | "access_log" | "metrics");
        let outer = self.steps.iter().filter(observing).cloned().collect();
        let inner = self
            .steps
            .iter()
            .filter(|step| !observing(step))
            .cloned()
            .collect();
        (Gateway { steps: outer }, Gateway { steps: inner })
    }

    /// The names of the steps, outermost first: `request_id`, `access_log`, `metrics`,
    /// `ip_filter`, `cors`, `throttle`, `authorizer`, `usage`, `validate`, `cache`, then `layer`
    /// for each of the application's own.
    pub fn steps(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.steps.iter().map(|step| step.name)
    }

    /// Stages in front of the gateway: the router picks the stage (or canary) first, then
    /// every deployment described in `stages` is served behind this gateway's steps, which
    /// all stages share. Canaries started later through the router's `StageHandle` take a
    /// [`GatewayService`]: wrap their deployment with [`Gateway::wrap`] too.
    ///
    /// Since the router runs first, what the authorizer and the usage plan put in a request
    /// (the subject, the API key, scopes) is not there yet when it picks a side: keep canaries
    /// sticky by client IP, a header or a cookie. For the same reason the steps see a
    /// deployment's whole router, before axum has matched a route: rules and policies keyed by
    /// route must name their routes in a `RouteTable` rather than rely on axum's
    /// `MatchedPath`.
    ///
    /// Every step runs inside the deployments here, request ids, the access log and the
    /// metrics too: a request the router itself refuses (no stage serves its path) is not
    /// seen by them, and they see paths without the stage's base path. To see every request
    /// as the client sent it, leave those steps out of this gateway and wrap the router in
    /// a second one that has only them (a configuration file does this).
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
        S: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
        S::Response: IntoResponse,
        S::Future: Send + 'static,
    {
        Ok(stages
            .map_services(|deployment| self.wrap(deployment))
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
        self.wrap(inner)
    }
}

/// Builds a [`Gateway`]; see there for the order of the steps.
#[derive(Default)]
#[must_use]
pub struct GatewayBuilder {
    request_id: Option<Step>,
    access_log: Option<Step>,
    metrics: Option<Step>,
    route_note: Option<Step>,
    cors: Option<Step>,
    ip_filter: Option<Step>,
    throttle: Option<Step>,
    authorizer: Option<Step>,
    usage: Option<Step>,
    validate: Option<Step>,
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

fn step(name: &'static str, layer: impl GatewayStep) -> Option<Step> {
    Some(Step {
        name,
        layer: Arc::new(layer),
    })
}

impl GatewayBuilder {
    /// Request ids (step 0) in `x-request-id`: kept when the client sent one, a UUID v4
    /// otherwise, and echoed in every response.
    #[cfg(feature = "observe")]
    #[cfg_attr(docsrs, doc(cfg(feature = "observe")))]
    pub fn request_id(self) -> Self {
        self.request_id_header(http::HeaderName::from_static("x-request-id"))
    }

    /// Request ids (step 0) in `header` instead of `x-request-id`.
    #[cfg(feature = "observe")]
    #[cfg_attr(docsrs, doc(cfg(feature = "observe")))]
    pub fn request_id_header(mut self, header: http::HeaderName) -> Self {
        self.request_id = step("request_id", crate::observe::RequestIdLayer { header });
        self
    }

    /// Request metrics (after the request id and the access log), through the `metrics`
    /// facade: `tollgate_requests_total{method, route, status, decision}` and
    /// `tollgate_request_duration_seconds{method, route, status}`, the time until the
    /// response's head. `route` is the path template that served the request (axum's
    /// `MatchedPath` when the gateway is added with `Router::layer`, or the configured route),
    /// `unmatched` when none did. `decision` is `allowed`, or the refusal's problem type (`throttled`,
    /// `quota-exceeded`, `unauthorized`, `forbidden`, `not-found`, ...) whichever step
    /// refused; methods outside the standard ones are counted as `other`.
    #[cfg(feature = "observe")]
    #[cfg_attr(docsrs, doc(cfg(feature = "observe")))]
    pub fn metrics(mut self) -> Self {
        self.metrics = step("metrics", crate::observe::MetricsLayer);
        self
    }

    /// The access log (after the request id, before the metrics): one `tracing` event per
    /// request, whichever step answered it, with what every step decided (see
    /// [`observe`](crate::observe) for the fields); a second call replaces the first.
    #[cfg(feature = "observe")]
    #[cfg_attr(docsrs, doc(cfg(feature = "observe")))]
    pub fn access_log(mut self, layer: crate::observe::AccessLogLayer) -> Self {
        self.access_log = step("access_log", layer);
        self
    }

    /// CORS (step 2), tower-http's layer: preflights are answered before the throttle, the
    /// authorizer and the usage plan; a second call replaces the first.
    #[cfg(feature = "access")]
    #[cfg_attr(docsrs, doc(cfg(feature = "access")))]
    pub fn cors(mut self, layer: crate::access::cors::CorsLayer) -> Self {
        self.cors = step("cors", layer);
        self
    }

    /// IP allow and deny lists (step 1); a second call replaces the first.
    #[cfg(feature = "access")]
    #[cfg_attr(docsrs, doc(cfg(feature = "access")))]
    pub fn ip_filter<M>(mut self, layer: crate::access::IpFilterLayer<M>) -> Self {
        self.ip_filter = step("ip_filter", layer.keep_inner_body());
        self
    }

    /// The coarse throttle (step 3); a second call replaces the first.
    #[cfg(feature = "throttle")]
    #[cfg_attr(docsrs, doc(cfg(feature = "throttle")))]
    pub fn throttle<St, M>(mut self, layer: crate::throttle::ThrottleLayer<St, M>) -> Self
    where
        crate::throttle::ThrottleLayer<St, crate::core::InnerBody>: GatewayStep,
    {
        // The bodies here are axum's: refusals are built as one, and nothing is wrapped.
        self.throttle = step("throttle", layer.keep_inner_body());
        self
    }

    /// The authorizer (step 4); a second call replaces the first.
    #[cfg(feature = "auth")]
    #[cfg_attr(docsrs, doc(cfg(feature = "auth")))]
    pub fn authorizer<A, M>(mut self, layer: crate::auth::AuthLayer<A, M>) -> Self
    where
        crate::auth::AuthLayer<A, crate::core::InnerBody>: GatewayStep,
    {
        self.authorizer = step("authorizer", layer.keep_inner_body());
        self
    }

    /// The usage plans' layer (step 5), from `UsagePlans::layer`; a second call replaces the
    /// first.
    #[cfg(feature = "usage")]
    #[cfg_attr(docsrs, doc(cfg(feature = "usage")))]
    pub fn usage<K, Q, T, M>(mut self, layer: crate::usage::UsageLayer<K, Q, T, M>) -> Self
    where
        crate::usage::UsageLayer<K, Q, T, crate::core::InnerBody>: GatewayStep,
    {
        self.usage = step("usage", layer.keep_inner_body());
        self
    }

    /// Request validation (after the usage plan, before the cache): a request its route
    /// refuses gets a 400 listing every violation (413 for a body over the limit) and never
    /// reaches the cache or the application; a second call replaces the first.
    #[cfg(feature = "validate")]
    #[cfg_attr(docsrs, doc(cfg(feature = "validate")))]
    pub fn validate(mut self, layer: crate::validate::ValidateLayer) -> Self {
        self.validate = step("validate", layer.keep_inner_body());
        self
    }

    /// The response cache (step 6); a second call replaces the first.
    #[cfg(feature = "cache")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
    pub fn cache<St>(mut self, layer: crate::cache::CacheLayer<St>) -> Self
    where
        crate::cache::CacheLayer<St>: GatewayStep,
    {
        self.cache = step("cache", layer);
        self
    }

    /// The configuration's note of the route serving each request, for the access log and
    /// the metrics, right after them.
    #[cfg(feature = "config")]
    pub(crate) fn route_note(mut self, routes: Arc<crate::RouteTable<()>>) -> Self {
        self.route_note = step("routes", crate::observe::RouteNote { routes });
        self
    }

    /// The usage step as something other than a `UsageLayer`: the configuration's, kept to
    /// the routes that need an API key.
    #[cfg(feature = "config")]
    pub(crate) fn usage_step(mut self, layer: Arc<dyn GatewayStep>) -> Self {
        self.usage = Some(Step {
            name: "usage",
            layer,
        });
        self
    }

    /// A layer of the application's own, after every gateway step and before the application
    /// (step 7): it sees only requests the gateway let through and the cache did not answer,
    /// with their `Principal`. Layers added this way run in the order added, outermost first.
    pub fn layer(mut self, layer: impl GatewayStep) -> Self {
        self.own.extend(step("layer", layer));
        self
    }

    fn steps(&self) -> impl Iterator<Item = &Step> {
        [
            &self.request_id,
            &self.access_log,
            &self.metrics,
            &self.route_note,
            &self.ip_filter,
            &self.cors,
            &self.throttle,
            &self.authorizer,
            &self.usage,
            &self.validate,
            &self.cache,
        ]
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A layer whose service is not ready the first time it is asked, as a concurrency limit
    /// or a buffer may be, and wakes its caller at once.
    #[derive(Clone, Default)]
    struct NotReadyAtFirst(Arc<AtomicUsize>);

    #[derive(Clone)]
    struct NotReadyService<S> {
        inner: S,
        polls: Arc<AtomicUsize>,
        ready: bool,
    }

    impl<S> Layer<S> for NotReadyAtFirst {
        type Service = NotReadyService<S>;

        fn layer(&self, inner: S) -> Self::Service {
            NotReadyService {
                inner,
                polls: self.0.clone(),
                ready: false,
            }
        }
    }

    impl<S: Service<Request<Body>>> Service<Request<Body>> for NotReadyService<S> {
        type Response = S::Response;
        type Error = S::Error;
        type Future = S::Future;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if !self.ready {
                self.ready = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, request: Request<Body>) -> S::Future {
            assert!(self.ready, "called before it was ready");
            self.inner.call(request)
        }
    }

    #[tokio::test]
    async fn a_step_that_is_not_ready_yet_is_awaited_before_it_is_called() {
        let layer = NotReadyAtFirst::default();
        let gateway = Gateway::builder().layer(layer.clone()).build();
        let app = tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::from("ok")))
        });
        let service = gateway.wrap(app);
        for request in 1..=2 {
            let response = service.clone().oneshot(Request::new(Body::empty())).await;
            assert_eq!(response.unwrap().status(), http::StatusCode::OK);
            // Pending once (asked without a waker to keep), then ready when asked again.
            assert_eq!(layer.0.load(Ordering::SeqCst), 2 * request);
        }
    }
}
