//! The whole gateway as one layer (`tollgate::Gateway`), over real loopback TCP: its steps run
//! in the builder's fixed order (throttle, authorizer, usage, cache, the application's own
//! layers) whatever the order of the calls, on an axum `Router` and on a plain hyper service
//! alike, and a gateway with no step changes nothing.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::{from_fn, Next};
use axum::routing::get;
use axum::Router;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, DATE};
use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use support::{
    counting_authorizer, serve_axum, serve_hyper, Calls, Client, KeyedPlan, Reply, ALICE, MALLORY,
};
use tollgate::auth::{AuthLayer, CustomAuthorizer};
use tollgate::cache::{CacheLayer, CachePolicy, Sharing};
use tollgate::key::ClientIp;
use tollgate::throttle::{Rate, Rule, ThrottleLayer};
use tollgate::usage::NewKey;
use tollgate::{Gateway, GatewayStep, ManualClock, Principal, TrustedProxies};
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer, Service, ServiceBuilder};

const THROTTLED: &str = "urn:tollgate:problem:throttled";
const UNAUTHORIZED: &str = "urn:tollgate:problem:unauthorized";
const FORBIDDEN: &str = "urn:tollgate:problem:forbidden";
const INVALID_API_KEY: &str = "urn:tollgate:problem:invalid-api-key";
const QUOTA_EXCEEDED: &str = "urn:tollgate:problem:quota-exceeded";

/// How long one client call may take before the test fails instead of hanging.
const CALL_LIMIT: Duration = Duration::from_secs(5);

/// A token the counting authorizer refuses (401).
const FORGED: &str = "Bearer forged";

/// What the application's own layer saw: how many requests, and whose (`subject key plan`).
#[derive(Clone, Default)]
struct Seen {
    calls: Calls,
    principals: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn principals(&self) -> Vec<String> {
        self.principals.lock().unwrap().clone()
    }
}

/// Every step of a gateway, each counting what reaches it, on one manual clock (noon UTC, so
/// a daily quota resets in exactly 12 hours).
struct Fixture {
    keyed: KeyedPlan,
    burst: u32,
    authorizer_calls: Calls,
    handler_calls: Calls,
    seen: Seen,
}

/// The plan, its key and the clock.
impl std::ops::Deref for Fixture {
    type Target = KeyedPlan;

    fn deref(&self) -> &KeyedPlan {
        &self.keyed
    }
}

impl Fixture {
    /// A coarse throttle of `burst` requests per client (one more each second) and a usage
    /// plan `basic` with a daily `quota`, with one key on it.
    async fn new(burst: u32, quota: u32) -> Self {
        Self {
            keyed: KeyedPlan::new(quota).await,
            burst,
            authorizer_calls: Calls::default(),
            handler_calls: Calls::default(),
            seen: Seen::default(),
        }
    }

    fn throttle(&self) -> ThrottleLayer {
        let per_client = Rule::new(
            "per-client",
            Rate::per_second(1),
            ClientIp::new(TrustedProxies::none()),
        )
        .burst(self.burst);
        ThrottleLayer::builder()
            .rule(per_client)
            .clock(self.clock.clone())
            .build()
            .unwrap()
    }

    /// The counting authorizer: `ALICE` is allowed, `MALLORY` denied, any other token refused.
    fn authorizer(&self) -> AuthLayer<CustomAuthorizer> {
        counting_authorizer(self.authorizer_calls.clone())
    }

    /// A minute's cache shared by every caller, so a second key's hit shows the entry is there.
    fn cache(&self) -> CacheLayer {
        CacheLayer::builder()
            .policy(
                CachePolicy::new()
                    .ttl(Duration::from_secs(60))
                    .sharing(Sharing::Shared),
            )
            .clock(self.clock.clone())
            .build()
            .unwrap()
    }

    /// The application's own layer: it counts the requests it sees and records whose they are.
    fn own_layer(&self) -> impl GatewayStep {
        let seen = self.seen.clone();
        from_fn(move |request: Request, next: Next| {
            let seen = seen.clone();
            async move {
                seen.calls.next();
                let whose = request.extensions().get::<Principal>().map_or_else(
                    || "no principal".to_owned(),
                    |principal| {
                        format!(
                            "{} {} {}",
                            principal.subject().unwrap_or("-"),
                            principal.api_key_id().unwrap_or("-"),
                            principal.usage_plan_id().unwrap_or("-"),
                        )
                    },
                );
                seen.principals.lock().unwrap().push(whose);
                next.run(request).await
            }
        })
    }

    /// Every step, added in the documented order.
    fn gateway(&self) -> Gateway {
        Gateway::builder()
            .throttle(self.throttle())
            .authorizer(self.authorizer())
            .usage(self.plans.layer())
            .cache(self.cache())
            .layer(self.own_layer())
            .build()
    }

    /// The application: `GET /widgets` answers which call of the handler made the response.
    fn app(&self) -> Router {
        let calls = self.handler_calls.clone();
        Router::new().route(
            "/widgets",
            get(move |request: Request| {
                let calls = calls.clone();
                async move { widgets(&calls, &request) }
            }),
        )
    }

    /// The same application as a plain service, for hyper.
    fn service(&self) -> BoxCloneSyncService<Request, Response<Body>, Infallible> {
        let calls = self.handler_calls.clone();
        BoxCloneSyncService::new(service_fn(move |request: Request| {
            let calls = calls.clone();
            async move { Ok::<_, Infallible>(widgets(&calls, &request)) }
        }))
    }

    /// `GET /widgets` with the fixture's API key and, if given, an `Authorization` header.
    async fn get(&self, addr: SocketAddr, authorization: Option<&str>) -> Reply {
        self.get_with_key(addr, authorization, &self.key).await
    }

    async fn get_with_key(
        &self,
        addr: SocketAddr,
        authorization: Option<&str>,
        key: &str,
    ) -> Reply {
        let mut headers = vec![("x-api-key", key)];
        headers.extend(authorization.map(|token| ("authorization", token)));
        fetch(addr, "/widgets", &headers).await
    }
}

/// The handler both servers run: `call N`, N counting the calls that reached it.
fn widgets(calls: &Calls, request: &Request) -> Response<Body> {
    assert_eq!(request.uri().path(), "/widgets");
    Response::builder()
        .header(CONTENT_TYPE, "text/plain")
        .body(Body::from(format!("call {}", calls.next())))
        .unwrap()
}

async fn fetch(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    tokio::time::timeout(CALL_LIMIT, Client::new().get(addr, path, headers))
        .await
        .unwrap_or_else(|_| panic!("GET {path} got no answer within {CALL_LIMIT:?}"))
}

/// Serves `app` behind `gateway` on hyper's own server, adapting hyper's body to axum's.
async fn serve_on_hyper<S>(gateway: &Gateway, app: S) -> SocketAddr
where
    S: Service<Request, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let service = ServiceBuilder::new()
        .map_request(|request: http::Request<Incoming>| request.map(Body::new))
        .service(gateway.layer(app));
    serve_hyper(service).await
}

fn assert_refused(reply: &Reply, status: StatusCode, problem: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.problem(), problem, "{reply:?}");
    assert!(reply.headers.get("x-cache-status").is_none(), "{reply:?}");
}

fn assert_served(reply: &Reply, cache_status: &str, body: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("x-cache-status"), cache_status, "{reply:?}");
    assert_eq!(reply.text(), body);
}

/// The items of every `RateLimit` field of `reply` (each layer appends its own).
fn ratelimit_items(reply: &Reply) -> Vec<String> {
    reply
        .headers
        .get_all("ratelimit")
        .iter()
        .flat_map(|value| value.to_str().unwrap().split(", "))
        .map(str::to_owned)
        .collect()
}

/// The `r` of the `"quota"` item of the `RateLimit` fields, if the usage step answered.
fn quota_left(reply: &Reply) -> Option<u64> {
    ratelimit_items(reply).iter().find_map(|item| {
        let rest = item.strip_prefix("\"quota\";r=")?;
        Some(rest.split(';').next()?.parse().unwrap())
    })
}

/// What a client sees of a reply, in one line: the status, then the problem type of a refusal
/// or the cache status, quota left and body of a response.
fn outcome(reply: &Reply) -> String {
    let status = reply.status.as_u16();
    if reply
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|value| value == "application/problem+json")
    {
        return format!("{status} {}", reply.problem());
    }
    let cache = reply
        .headers
        .get("x-cache-status")
        .map_or("-", |value| value.to_str().unwrap());
    let quota = quota_left(reply).map_or("-".to_owned(), |left| left.to_string());
    format!("{status} {cache} quota={quota} {}", reply.text())
}

#[tokio::test]
async fn a_throttled_request_never_reaches_the_authorizer() {
    let fixture = Fixture::new(3, 100).await;
    let addr = serve_axum(fixture.app().layer(fixture.gateway())).await;

    for _ in 0..3 {
        assert_eq!(fixture.get(addr, Some(ALICE)).await.status, StatusCode::OK);
    }
    assert_eq!(fixture.authorizer_calls.count(), 3);

    let throttled = fixture.get(addr, Some(ALICE)).await;
    assert_refused(&throttled, StatusCode::TOO_MANY_REQUESTS, THROTTLED);
    assert_eq!(throttled.header("retry-after"), "1");
    assert_eq!(quota_left(&throttled), None, "{throttled:?}");
    // Even a caller without credentials hears "slow down", not "who are you".
    let anonymous = fixture.get(addr, None).await;
    assert_refused(&anonymous, StatusCode::TOO_MANY_REQUESTS, THROTTLED);
    assert_eq!(fixture.authorizer_calls.count(), 3);
    assert_eq!(fixture.usage_today().await, (3, Some(97)));

    // A second later the client has one request again, and the authorizer sees it.
    fixture.clock.advance(Duration::from_secs(1));
    assert_eq!(fixture.get(addr, Some(ALICE)).await.status, StatusCode::OK);
    assert_eq!(fixture.authorizer_calls.count(), 4);
}

#[tokio::test]
async fn an_unauthorized_request_spends_no_quota() {
    let fixture = Fixture::new(100, 3).await;
    let addr = serve_axum(fixture.app().layer(fixture.gateway())).await;

    let missing = fixture.get(addr, None).await;
    assert_refused(&missing, StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    assert!(missing.header("www-authenticate").starts_with("Bearer"));
    let forged = fixture.get(addr, Some(FORGED)).await;
    assert_refused(&forged, StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    assert!(
        forged
            .header("www-authenticate")
            .contains("error=\"invalid_token\""),
        "{forged:?}"
    );
    let denied = fixture.get(addr, Some(MALLORY)).await;
    assert_refused(&denied, StatusCode::FORBIDDEN, FORBIDDEN);
    // No credentials, no call; the forged and denied tokens were each decided once.
    assert_eq!(fixture.authorizer_calls.count(), 2);
    for refused in [&missing, &forged, &denied] {
        assert_eq!(
            quota_left(refused),
            None,
            "the usage step answered {refused:?}"
        );
    }
    assert_eq!(fixture.usage_today().await, (0, Some(3)));
    assert_eq!(fixture.seen.calls.count(), 0);
    assert_eq!(fixture.handler_calls.count(), 0);

    // The key's whole quota is still there for the authorized caller.
    let admitted = fixture.get(addr, Some(ALICE)).await;
    assert_served(&admitted, "MISS", "call 1");
    assert_eq!(quota_left(&admitted), Some(2));
    assert_eq!(fixture.usage_today().await, (1, Some(2)));
}

#[tokio::test]
async fn a_cache_hit_is_still_counted_against_the_quota() {
    let fixture = Fixture::new(100, 3).await;
    let addr = serve_axum(fixture.app().layer(fixture.gateway())).await;

    let first = fixture.get(addr, Some(ALICE)).await;
    assert_served(&first, "MISS", "call 1");
    assert_eq!(quota_left(&first), Some(2));
    for left in [1, 0] {
        let hit = fixture.get(addr, Some(ALICE)).await;
        assert_served(&hit, "HIT", "call 1");
        assert_eq!(quota_left(&hit), Some(left), "{hit:?}");
    }
    assert_eq!(fixture.handler_calls.count(), 1);
    assert_eq!(fixture.usage_today().await, (3, Some(0)));

    // The response is still cached, but the key has spent its day: it waits for midnight.
    let spent = fixture.get(addr, Some(ALICE)).await;
    assert_refused(&spent, StatusCode::TOO_MANY_REQUESTS, QUOTA_EXCEEDED);
    assert_eq!(spent.header("retry-after"), "43200");
    assert_eq!(fixture.usage_today().await, (3, Some(0)));
    // Another key on the plan is served the very entry.
    let (_, other) = fixture
        .plans
        .create_key(NewKey::new("basic"))
        .await
        .unwrap();
    let other = fixture
        .get_with_key(addr, Some(ALICE), other.expose())
        .await;
    assert_served(&other, "HIT", "call 1");
    assert_eq!(quota_left(&other), Some(2));
    assert_eq!(fixture.handler_calls.count(), 1);
}

#[tokio::test]
async fn the_applications_layer_sees_only_admitted_uncached_requests_with_their_principal() {
    let fixture = Fixture::new(5, 2).await;
    let addr = serve_axum(fixture.app().layer(fixture.gateway())).await;

    let unauthorized = fixture.get(addr, None).await;
    assert_refused(&unauthorized, StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    let no_key = fetch(addr, "/widgets", &[("authorization", ALICE)]).await;
    assert_refused(&no_key, StatusCode::UNAUTHORIZED, INVALID_API_KEY);
    assert_eq!(no_key.header("www-authenticate"), "ApiKey");
    assert_eq!(fixture.seen.calls.count(), 0);

    assert_served(&fixture.get(addr, Some(ALICE)).await, "MISS", "call 1");
    assert_eq!(fixture.seen.calls.count(), 1);
    assert_served(&fixture.get(addr, Some(ALICE)).await, "HIT", "call 1");
    let over_quota = fixture.get(addr, Some(ALICE)).await;
    assert_refused(&over_quota, StatusCode::TOO_MANY_REQUESTS, QUOTA_EXCEEDED);
    let throttled = fixture.get(addr, Some(ALICE)).await;
    assert_refused(&throttled, StatusCode::TOO_MANY_REQUESTS, THROTTLED);

    // Six requests; the layer saw the one the gateway let through and the cache did not
    // answer, with the authorizer's subject and the usage plan's key and plan.
    assert_eq!(fixture.seen.calls.count(), 1);
    assert_eq!(
        fixture.seen.principals(),
        [format!("alice {} basic", fixture.key_id)]
    );
    assert_eq!(fixture.handler_calls.count(), 1);
}

#[tokio::test]
async fn the_order_is_the_builders_whatever_the_order_of_the_calls() {
    let fixture = Fixture::new(3, 10).await;
    let gateway = Gateway::builder()
        .layer(fixture.own_layer())
        .cache(fixture.cache())
        .usage(fixture.plans.layer())
        .authorizer(fixture.authorizer())
        .throttle(fixture.throttle())
        .build();
    assert_eq!(
        gateway.steps().collect::<Vec<_>>(),
        ["throttle", "authorizer", "usage", "cache", "layer"]
    );
    assert_eq!(
        format!("{gateway:?}"),
        r#"Gateway { steps: ["throttle", "authorizer", "usage", "cache", "layer"] }"#
    );
    let addr = serve_axum(fixture.app().layer(gateway)).await;

    // The cache answers after the usage step (a hit is counted) and before the own layer.
    let first = fixture.get(addr, Some(ALICE)).await;
    assert_served(&first, "MISS", "call 1");
    assert_eq!(quota_left(&first), Some(9));
    let hit = fixture.get(addr, Some(ALICE)).await;
    assert_served(&hit, "HIT", "call 1");
    assert_eq!(quota_left(&hit), Some(8));
    assert_eq!(fixture.seen.calls.count(), 1);
    // The authorizer answers before the usage step: a denied request spends nothing.
    let denied = fixture.get(addr, Some(MALLORY)).await;
    assert_refused(&denied, StatusCode::FORBIDDEN, FORBIDDEN);
    assert_eq!(fixture.usage_today().await, (2, Some(8)));
    assert_eq!(fixture.authorizer_calls.count(), 3);
    // The throttle answers before the authorizer.
    let throttled = fixture.get(addr, Some(ALICE)).await;
    assert_refused(&throttled, StatusCode::TOO_MANY_REQUESTS, THROTTLED);
    assert_eq!(fixture.authorizer_calls.count(), 3);
    assert_eq!(fixture.usage_today().await, (2, Some(8)));
}

#[tokio::test]
async fn an_axum_router_and_a_plain_hyper_service_get_the_same_answers() {
    /// The requests of the script: the caller's `Authorization`, if any.
    const SCRIPT: [Option<&str>; 7] = [
        None,
        Some(ALICE),
        Some(ALICE),
        Some(MALLORY),
        Some(ALICE),
        Some(ALICE),
        Some(ALICE),
    ];
    let expected = [
        format!("401 {UNAUTHORIZED}"),
        "200 MISS quota=2 call 1".to_owned(),
        "200 HIT quota=1 call 1".to_owned(),
        format!("403 {FORBIDDEN}"),
        "200 HIT quota=0 call 1".to_owned(),
        format!("429 {QUOTA_EXCEEDED}"),
        format!("429 {THROTTLED}"),
    ];

    let on_axum = Fixture::new(6, 3).await;
    let on_hyper = Fixture::new(6, 3).await;
    let axum_addr = serve_axum(on_axum.app().layer(on_axum.gateway())).await;
    let hyper_addr = serve_on_hyper(&on_hyper.gateway(), on_hyper.service()).await;

    for (fixture, addr, server) in [
        (&on_axum, axum_addr, "axum"),
        (&on_hyper, hyper_addr, "hyper"),
    ] {
        let mut seen = Vec::new();
        for authorization in SCRIPT {
            seen.push(outcome(&fixture.get(addr, authorization).await));
        }
        assert_eq!(seen, expected, "on {server}");
        assert_eq!(fixture.authorizer_calls.count(), 5, "on {server}");
        assert_eq!(fixture.handler_calls.count(), 1, "on {server}");
        assert_eq!(
            fixture.seen.principals(),
            [format!("alice {} basic", fixture.key_id)],
            "on {server}"
        );
        assert_eq!(fixture.usage_today().await, (3, Some(0)), "on {server}");
    }
}

/// An application answering with a status, headers and a body of its own choosing, and what
/// it was asked.
async fn echo(request: Request) -> Response<Body> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .map_or("-", |value| value.to_str().unwrap())
    };
    let body = format!(
        "{} {} authorization={} x-api-key={}",
        request.method(),
        request.uri(),
        header("authorization"),
        header("x-api-key"),
    );
    Response::builder()
        .status(StatusCode::IM_A_TEAPOT)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(CACHE_CONTROL, "max-age=600")
        .header("x-app", "first")
        .header("x-app", "second")
        .header("set-cookie", "session=1")
        .body(Body::from(body))
        .unwrap()
}

/// The headers of `reply` a server adds on its own (`date`) left out.
fn app_headers(reply: &Reply) -> HeaderMap {
    let mut headers = reply.headers.clone();
    headers.remove(DATE);
    headers
}

#[tokio::test]
async fn a_gateway_with_no_step_passes_requests_through_untouched() {
    let gateway = Gateway::builder().build();
    assert_eq!(gateway.steps().count(), 0);
    let bare = serve_axum(Router::new().route("/echo", get(echo))).await;
    let on_axum = serve_axum(
        Router::new()
            .route("/echo", get(echo))
            .layer(gateway.clone()),
    )
    .await;
    let on_hyper = serve_on_hyper(
        &gateway,
        service_fn(|request: Request| async move { Ok::<_, Infallible>(echo(request).await) }),
    )
    .await;

    let headers = [
        ("authorization", "Bearer anyone"),
        ("x-api-key", "tg_not_a_key"),
    ];
    let expected = fetch(bare, "/echo?page=2", &headers).await;
    assert_eq!(expected.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(
        expected.text(),
        "GET /echo?page=2 authorization=Bearer anyone x-api-key=tg_not_a_key"
    );
    for (addr, server) in [(on_axum, "axum"), (on_hyper, "hyper")] {
        for _ in 0..2 {
            let reply = fetch(addr, "/echo?page=2", &headers).await;
            assert_eq!(reply.status, expected.status, "on {server}");
            assert_eq!(app_headers(&reply), app_headers(&expected), "on {server}");
            assert_eq!(reply.body, expected.body, "on {server}");
        }
    }
}

/// A gateway whose one step lets `requests` through in all, then refuses for an hour.
fn throttled_to(requests: u32) -> Gateway {
    let throttle = ThrottleLayer::builder()
        .rule(Rule::new("everyone", Rate::per_hour(1), tollgate::key::Global).burst(requests))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    Gateway::builder().throttle(throttle).build()
}

#[tokio::test]
async fn stages_come_first_and_share_the_gateways_limits() {
    use tollgate::stage::{StageRouter, StageSpec};
    use tollgate::Stage;

    // Two requests in all, across both stages: the stages share the gateway's throttle.
    let gateway = throttled_to(2);
    let deployment = || {
        Router::new().route(
            "/orders",
            get(|stage: Stage| async move { format!("{} {}", stage.name(), stage.deployment()) }),
        )
    };
    let stages = gateway
        .stages(
            StageRouter::builder()
                .stage(StageSpec::new("v1", deployment()).base_path("/v1"))
                .stage(StageSpec::new("v2", deployment()).base_path("/v2")),
        )
        .unwrap();
    let addr = serve_axum(Router::new().fallback_service(stages)).await;
    let client = Client::new();

    let v1 = client.get(addr, "/v1/orders", &[]).await;
    assert_eq!(v1.status, StatusCode::OK);
    assert_eq!(v1.text(), "v1 v1");
    assert_eq!(v1.header("x-deployment"), "v1");
    let v2 = client.get(addr, "/v2/orders", &[]).await;
    assert_eq!(v2.status, StatusCode::OK);
    assert_eq!(v2.text(), "v2 v2");
    // The third is refused whichever stage it asks: one allowance behind both.
    let third = client.get(addr, "/v1/orders", &[]).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    // No stage matches: the router answers 404 itself. Had the spent throttle run first, this
    // would be a 429: the stages come before the gateway's steps.
    let unknown = client.get(addr, "/v3/orders", &[]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_canary_is_served_behind_the_same_steps_as_its_stage() {
    use tollgate::stage::{Canary, StageRouter, StageSpec};
    use tollgate::Stage;

    let gateway = throttled_to(2);
    let deployment = || {
        Router::new().route(
            "/orders",
            get(|stage: Stage| async move { stage.deployment().to_owned() }),
        )
    };
    // Every client goes to the canary.
    let stages = gateway
        .stages(
            StageRouter::builder().stage(
                StageSpec::new("v2", deployment())
                    .base_path("/v2")
                    .canary(Canary::new(deployment()).percent(100.0)),
            ),
        )
        .unwrap();
    let addr = serve_axum(Router::new().fallback_service(stages)).await;
    let client = Client::new();
    for _ in 0..2 {
        let reply = client.get(addr, "/v2/orders", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "v2-canary");
        assert!(reply.headers.contains_key("ratelimit"), "the throttle ran");
    }
    let third = client.get(addr, "/v2/orders", &[]).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn with_route_layer_only_matched_routes_meet_the_gateway() {
    let gateway = throttled_to(1);
    let app = Router::new()
        .route("/widgets", get(|| async { "widgets" }))
        .route_layer(gateway);
    let addr = serve_axum(app).await;
    let client = Client::new();
    // Unmatched paths are axum's 404, and spend nothing.
    for _ in 0..3 {
        let missing = client.get(addr, "/nowhere", &[]).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert!(missing.headers.get("ratelimit").is_none(), "{missing:?}");
    }
    let first = client.get(addr, "/widgets", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text(), "widgets");
    let second = client.get(addr, "/widgets", &[]).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
}
