//! The custom authorizer in whole stacks over real loopback TCP, as a client sees it: status,
//! headers, body — and how often the application's authorizer was actually called.
#![cfg(feature = "axum")]

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tollgate_auth::{
    Allow, AuthLayer, AuthorizerResponse, BoxError, CustomAuthorizer, CustomAuthorizerBuilder,
    CustomAuthorizerError, Identity, IdentitySource, RoutePolicy,
};
use tollgate_core::{ManualClock, Principal, Stage};
use tower::util::MapRequestLayer;
use tower::{Layer, ServiceExt};

use support::{serve, Client, Reply};

/// How many times the application's authorizer was called.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn record(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn by_authorization_header() -> CustomAuthorizerBuilder {
    CustomAuthorizer::builder([IdentitySource::Header(AUTHORIZATION)])
}

/// The answer of an authorizer that knows three tokens.
fn answer_for(identity: &Identity) -> AuthorizerResponse {
    match identity.header("authorization") {
        Some("Bearer good") => Allow::new("user-1")
            .context("tenant", "acme")
            .context("tier", 3)
            .scopes(["orders:read"])
            .into(),
        Some("Bearer banned") => AuthorizerResponse::Deny,
        _ => AuthorizerResponse::Unauthorized,
    }
}

/// An authorizer that counts its calls and answers with `answer`.
fn counting(
    builder: CustomAuthorizerBuilder,
    calls: &Calls,
    answer: fn(&Identity) -> AuthorizerResponse,
) -> CustomAuthorizer {
    let calls = calls.clone();
    builder
        .from_fn(move |identity: Identity| {
            calls.record();
            let response = answer(&identity);
            async move { Ok::<_, BoxError>(response) }
        })
        .unwrap()
}

/// What the handler behind the layer sees of the caller.
async fn whoami(principal: Principal) -> Json<Value> {
    Json(json!({
        "principal": principal.subject(),
        "context": principal.claims(),
        "scopes": principal.scopes(),
    }))
}

/// `GET /orders` and `GET /admin`, both answering with the principal, behind `auth`.
fn orders_and_admin(auth: AuthLayer<CustomAuthorizer>) -> Router {
    Router::new()
        .route("/orders", get(whoami))
        .route("/admin", get(whoami))
        .layer(auth)
}

#[tokio::test]
async fn authorizer_is_called_once_for_a_hundred_identical_requests_within_the_ttl() {
    let calls = Calls::default();
    let authorizer = counting(by_authorization_header(), &calls, answer_for);
    let addr = serve(orders_and_admin(AuthLayer::new(authorizer))).await;
    let client = Client::new();

    for _ in 0..100 {
        let reply = client.bearer(addr, "/orders", "good").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["principal"], "user-1");
    }
    assert_eq!(calls.count(), 1);

    // Another token is another identity.
    let other = client.bearer(addr, "/orders", "banned").await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn an_allow_cached_on_one_route_is_not_reused_on_another() {
    let calls = Calls::default();
    // The same token may read orders but not administer.
    let authorizer = counting(
        by_authorization_header(),
        &calls,
        |identity| match identity.route() {
            Some("/orders") => Allow::new("user-1").into(),
            _ => AuthorizerResponse::Deny,
        },
    );
    let addr = serve(orders_and_admin(AuthLayer::new(authorizer))).await;
    let client = Client::new();

    for round in 1..=3 {
        let orders = client.bearer(addr, "/orders", "good").await;
        assert_eq!(orders.status, StatusCode::OK, "round {round}");
        let admin = client.bearer(addr, "/admin", "good").await;
        assert_eq!(admin.status, StatusCode::FORBIDDEN, "round {round}");
        // Each route asked once, then its own decision was reused.
        assert_eq!(calls.count(), 2, "round {round}");
    }
}

#[tokio::test]
async fn routes_of_the_layers_own_table_are_cached_apart_including_their_method() {
    let calls = Calls::default();
    let authorizer = counting(
        by_authorization_header(),
        &calls,
        |identity| match identity.route() {
            Some("GET /orders/{id}") => Allow::new("user-1").into(),
            _ => AuthorizerResponse::Deny,
        },
    );
    let auth = AuthLayer::builder(authorizer)
        .route("GET /orders/{id}", RoutePolicy::authenticated())
        .route("DELETE /orders/{id}", RoutePolicy::authenticated())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/orders/{id}", get(whoami).delete(whoami))
        .layer(auth);
    let request = |method: &str, id: u32| {
        Request::builder()
            .method(method)
            .uri(format!("/orders/{id}"))
            .header(AUTHORIZATION, "Bearer good")
            .body(Body::empty())
            .unwrap()
    };

    let read = app.clone().oneshot(request("GET", 1)).await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    // Another id under the same route reuses the decision.
    let read = app.clone().oneshot(request("GET", 2)).await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(calls.count(), 1);
    let delete = app.clone().oneshot(request("DELETE", 1)).await.unwrap();
    assert_eq!(delete.status(), StatusCode::FORBIDDEN);
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn get_and_delete_on_one_axum_path_are_cached_apart() {
    let calls = Calls::default();
    // axum's matched path carries no method, so the method keys the decision too.
    let authorizer = counting(by_authorization_header(), &calls, |identity| {
        match (identity.method().as_str(), identity.route()) {
            ("GET", Some("/orders/{id}")) => Allow::new("user-1").into(),
            _ => AuthorizerResponse::Deny,
        }
    });
    let app = Router::new()
        .route("/orders/{id}", get(whoami).delete(whoami))
        .layer(AuthLayer::new(authorizer));
    let request = |method: &str| {
        Request::builder()
            .method(method)
            .uri("/orders/1")
            .header(AUTHORIZATION, "Bearer good")
            .body(Body::empty())
            .unwrap()
    };

    let read = app.clone().oneshot(request("GET")).await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let delete = app.clone().oneshot(request("DELETE")).await.unwrap();
    assert_eq!(delete.status(), StatusCode::FORBIDDEN);
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn cache_per_route_off_shares_one_decision_across_routes() {
    let calls = Calls::default();
    let authorizer = counting(
        by_authorization_header().cache_per_route(false),
        &calls,
        answer_for,
    );
    let addr = serve(orders_and_admin(AuthLayer::new(authorizer))).await;
    let client = Client::new();

    assert_eq!(
        client.bearer(addr, "/orders", "good").await.status,
        StatusCode::OK
    );
    assert_eq!(
        client.bearer(addr, "/admin", "good").await.status,
        StatusCode::OK
    );
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn deny_is_403_problem_json_and_unauthorized_is_401_invalid_token() {
    let calls = Calls::default();
    let authorizer = counting(by_authorization_header(), &calls, answer_for);
    let addr = serve(orders_and_admin(AuthLayer::new(authorizer))).await;
    let client = Client::new();

    let denied = client.bearer(addr, "/orders", "banned").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.header("content-type"), "application/problem+json");
    assert!(denied.headers.get("www-authenticate").is_none());
    assert_eq!(
        denied.json(),
        json!({
            "type": "urn:tollgate:problem:forbidden",
            "title": "Forbidden",
            "status": 403,
            "detail": "the authorizer denied this request",
        })
    );

    let refused = client.bearer(addr, "/orders", "forged").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.header("www-authenticate"),
        r#"Bearer error="invalid_token""#
    );
    assert_eq!(refused.header("content-type"), "application/problem+json");
    let problem = refused.json();
    assert_eq!(problem["type"], "urn:tollgate:problem:unauthorized");
    assert_eq!(problem["status"], 401);
    assert_eq!(problem["detail"], "the authorizer refused the credentials");

    // Both refusals are cached like an allow.
    client.bearer(addr, "/orders", "banned").await;
    client.bearer(addr, "/orders", "forged").await;
    assert_eq!(calls.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_authorizer_that_never_answers_is_503_with_retry_after_once_the_timeout_passes() {
    let calls = Calls::default();
    let counter = calls.clone();
    let authorizer = by_authorization_header()
        .timeout(Duration::from_secs(2))
        .from_fn(move |_: Identity| {
            counter.record();
            std::future::pending::<Result<AuthorizerResponse, BoxError>>()
        })
        .unwrap();
    let app = orders_and_admin(AuthLayer::new(authorizer));
    let request = || {
        Request::get("/orders")
            .header(AUTHORIZATION, "Bearer good")
            .body(Body::empty())
            .unwrap()
    };

    let started = tokio::time::Instant::now();
    let reply = Reply::of(app.clone().oneshot(request()).await.unwrap()).await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), "1");
    assert_eq!(reply.header("content-type"), "application/problem+json");
    let problem = reply.json();
    assert_eq!(problem["type"], "urn:tollgate:problem:unavailable");
    assert_eq!(problem["detail"], "the authorizer did not answer in time");

    // A timeout is not cached: the next request asks again.
    let again = Reply::of(app.oneshot(request()).await.unwrap()).await;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_for_one_identity_share_a_single_call() {
    let calls = Calls::default();
    let counter = calls.clone();
    let (release, released) = tokio::sync::watch::channel(false);
    let authorizer = by_authorization_header()
        .from_fn(move |identity: Identity| {
            counter.record();
            let mut released = released.clone();
            let response = answer_for(&identity);
            async move {
                released.wait_for(|open| *open).await?;
                Ok::<_, BoxError>(response)
            }
        })
        .unwrap();
    let arrived = Arc::new(AtomicUsize::new(0));
    let arrivals = arrived.clone();
    let app = orders_and_admin(AuthLayer::new(authorizer)).layer(MapRequestLayer::new(
        move |request: Request<Body>| {
            arrivals.fetch_add(1, Ordering::SeqCst);
            request
        },
    ));
    let addr = serve(app).await;
    let client = Client::new();

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.bearer(addr, "/orders", "good").await })
        })
        .collect();
    // Hold the first call until every request has reached the layer and had time to queue.
    tokio::time::timeout(Duration::from_secs(10), async {
        while arrived.load(Ordering::SeqCst) < 50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("all 50 requests reach the server");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(calls.count(), 1, "the other 49 wait for the first call");
    release.send(true).unwrap();

    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["principal"], "user-1");
    }
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn a_missing_identity_source_is_401_without_calling_the_authorizer() {
    let calls = Calls::default();
    let authorizer = counting(by_authorization_header(), &calls, answer_for);
    let auth = AuthLayer::builder(authorizer)
        .route("GET /public", RoutePolicy::anonymous())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/orders", get(whoami))
        .route("/public", get(|| async { "public" }))
        .layer(auth);
    let addr = serve(app).await;
    let client = Client::new();

    let bare = client.get(addr, "/orders", &[]).await;
    assert_eq!(bare.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bare.header("www-authenticate"), "Bearer");
    assert_eq!(bare.json()["type"], "urn:tollgate:problem:unauthorized");

    let empty = client.get(addr, "/orders", &[("authorization", "")]).await;
    assert_eq!(empty.status, StatusCode::UNAUTHORIZED);
    assert_eq!(empty.header("www-authenticate"), "Bearer");

    // An anonymous route lets a request without credentials through, still without a call.
    let public = client.get(addr, "/public", &[]).await;
    assert_eq!(public.status, StatusCode::OK);
    assert_eq!(public.body, "public");

    assert_eq!(calls.count(), 0);
}

#[tokio::test]
async fn an_identity_header_sent_twice_is_401_invalid_request_without_a_call() {
    let calls = Calls::default();
    let authorizer = counting(by_authorization_header(), &calls, answer_for);
    let addr = serve(orders_and_admin(AuthLayer::new(authorizer))).await;

    let reply = Client::new()
        .get(
            addr,
            "/orders",
            &[
                ("authorization", "Bearer good"),
                ("authorization", "Bearer banned"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate"),
        r#"Bearer error="invalid_request""#
    );
    assert_eq!(
        reply.json()["detail"],
        "the identity source $request.header.authorization was sent more than once"
    );
    assert_eq!(calls.count(), 0);
}

#[tokio::test]
async fn a_cached_decision_expires_after_the_ttl_on_the_injected_clock() {
    let clock = ManualClock::new();
    let calls = Calls::default();
    let authorizer = counting(
        by_authorization_header()
            .ttl(Duration::from_secs(60))
            .clock(clock.clone()),
        &calls,
        answer_for,
    );
    let addr = serve(orders_and_admin(AuthLayer::new(authorizer))).await;
    let client = Client::new();
    let ok = |reply: Reply| assert_eq!(reply.status, StatusCode::OK);

    ok(client.bearer(addr, "/orders", "good").await);
    clock.advance(Duration::from_secs(59));
    ok(client.bearer(addr, "/orders", "good").await);
    assert_eq!(calls.count(), 1);

    clock.advance(Duration::from_secs(1));
    ok(client.bearer(addr, "/orders", "good").await);
    assert_eq!(calls.count(), 2);
    // The fresh decision is cached again for a whole TTL.
    clock.advance(Duration::from_secs(59));
    ok(client.bearer(addr, "/orders", "good").await);
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn a_ttl_of_zero_calls_the_authorizer_on_every_request() {
    let calls = Calls::default();
    let authorizer = counting(
        by_authorization_header().ttl(Duration::ZERO),
        &calls,
        answer_for,
    );
    let addr = serve(orders_and_admin(AuthLayer::new(authorizer))).await;
    let client = Client::new();

    for _ in 0..3 {
        let reply = client.bearer(addr, "/orders", "good").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(calls.count(), 3);
}

#[tokio::test]
async fn the_handler_reads_the_principal_id_context_and_scopes_the_authorizer_allowed() {
    let calls = Calls::default();
    let authorizer = counting(by_authorization_header(), &calls, answer_for);
    let auth = AuthLayer::builder(authorizer)
        .route(
            "GET /orders",
            RoutePolicy::authenticated().all_scopes(["orders:read"]),
        )
        .route(
            "GET /admin",
            RoutePolicy::authenticated().all_scopes(["admin"]),
        )
        .claim_header("tenant", "x-tenant")
        .build()
        .unwrap();
    let app = Router::new()
        .route("/orders", get(whoami))
        .route("/admin", get(whoami))
        .route(
            "/tenant",
            get(|headers: HeaderMap| async move { format!("{:?}", headers.get("x-tenant")) }),
        )
        .layer(auth);
    let addr = serve(app).await;
    let client = Client::new();

    let reply = client.bearer(addr, "/orders", "good").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({
            "principal": "user-1",
            "context": {"tenant": "acme", "tier": 3},
            "scopes": ["orders:read"],
        })
    );

    // The granted scopes are checked against the route's policy.
    let admin = client.bearer(addr, "/admin", "good").await;
    assert_eq!(admin.status, StatusCode::FORBIDDEN);
    assert_eq!(
        admin.header("www-authenticate"),
        r#"Bearer error="insufficient_scope", scope="admin""#
    );

    // Context values reach the service as headers, and a client cannot forge them.
    let tenant = client
        .get(
            addr,
            "/tenant",
            &[("authorization", "Bearer good"), ("x-tenant", "evil")],
        )
        .await;
    assert_eq!(tenant.body, r#"Some("acme")"#);
}

#[tokio::test]
async fn an_authorizer_error_is_500_without_its_text_and_is_not_cached() {
    let calls = Calls::default();
    let counter = calls.clone();
    let authorizer = by_authorization_header()
        .from_fn(move |_: Identity| {
            counter.record();
            async {
                Err::<AuthorizerResponse, _>("session store at 10.0.0.7: password hunter2 rejected")
            }
        })
        .unwrap();
    let addr = serve(orders_and_admin(AuthLayer::new(authorizer))).await;
    let client = Client::new();

    for _ in 0..2 {
        let reply = client.bearer(addr, "/orders", "good").await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.header("content-type"), "application/problem+json");
        assert_eq!(
            reply.json(),
            json!({
                "type": "urn:tollgate:problem:internal-error",
                "title": "Internal error",
                "status": 500,
            })
        );
        let text = String::from_utf8_lossy(&reply.body);
        assert!(
            !text.contains("hunter2") && !text.contains("10.0.0.7"),
            "{text}"
        );
    }
    assert_eq!(calls.count(), 2);
}

#[test]
fn a_ttl_over_an_hour_is_a_build_error() {
    let error = by_authorization_header()
        .ttl(Duration::from_secs(3601))
        .from_fn(|_: Identity| async { Ok::<_, BoxError>(AuthorizerResponse::Deny) })
        .unwrap_err();
    assert!(matches!(error, CustomAuthorizerError::TtlTooLong(_)));
    assert_eq!(
        error.to_string(),
        "the authorizer result TTL is 3601s, but at most 3600 s (one hour) is allowed"
    );
}

#[tokio::test]
async fn query_and_stage_variable_sources_reach_the_authorizer_and_key_the_cache() {
    let calls = Calls::default();
    let authorizer = counting(
        CustomAuthorizer::builder([
            IdentitySource::Query("token".into()),
            IdentitySource::StageVariable("tenant".into()),
        ]),
        &calls,
        |identity| match (identity.query("token"), identity.stage_variable("tenant")) {
            (Some(token @ ("abc" | "def")), Some(tenant)) => Allow::new(format!("user-{token}"))
                .context("tenant", tenant)
                .into(),
            _ => AuthorizerResponse::Unauthorized,
        },
    );
    // A stage router in front would insert the stage; here a plain layer does.
    let stage = MapRequestLayer::new(|mut request: Request<Body>| {
        request
            .extensions_mut()
            .insert(Stage::new("prod").with_variable("tenant", "acme"));
        request
    });
    let app = orders_and_admin(AuthLayer::new(authorizer)).layer(stage);
    let addr = serve(app).await;
    let client = Client::new();

    let abc = client.get(addr, "/orders?page=2&token=abc", &[]).await;
    assert_eq!(abc.status, StatusCode::OK);
    assert_eq!(abc.json()["principal"], "user-abc");
    assert_eq!(abc.json()["context"]["tenant"], "acme");
    let def = client.get(addr, "/orders?token=def", &[]).await;
    assert_eq!(def.json()["principal"], "user-def");
    let abc_again = client.get(addr, "/orders?token=abc&page=3", &[]).await;
    assert_eq!(abc_again.json()["principal"], "user-abc");
    assert_eq!(calls.count(), 2);

    let without_token = client.get(addr, "/orders?page=2", &[]).await;
    assert_eq!(without_token.status, StatusCode::UNAUTHORIZED);
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn a_missing_stage_variable_is_401_without_a_call() {
    let calls = Calls::default();
    let authorizer = counting(
        CustomAuthorizer::builder([IdentitySource::StageVariable("tenant".into())]),
        &calls,
        answer_for,
    );
    let addr = serve(orders_and_admin(AuthLayer::new(authorizer))).await;

    let reply = Client::new().bearer(addr, "/orders", "good").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.header("www-authenticate"), "Bearer");
    assert_eq!(calls.count(), 0);
}

#[tokio::test]
async fn a_tower_service_can_be_the_authorizer() {
    let calls = Calls::default();
    let counter = calls.clone();
    let service = tower::service_fn(move |identity: Identity| {
        counter.record();
        let response = answer_for(&identity);
        async move { Ok::<_, Infallible>(response) }
    });
    let authorizer = by_authorization_header().from_service(service).unwrap();
    let addr = serve(orders_and_admin(AuthLayer::new(authorizer))).await;
    let client = Client::new();

    let allowed = client.bearer(addr, "/orders", "good").await;
    assert_eq!(allowed.json()["principal"], "user-1");
    let denied = client.bearer(addr, "/orders", "banned").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    client.bearer(addr, "/orders", "good").await;
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn works_in_front_of_a_plain_hyper_service_keyed_by_method_and_path() {
    let calls = Calls::default();
    let authorizer = counting(
        by_authorization_header(),
        &calls,
        |identity| match identity.path() {
            "/orders" => answer_for(identity),
            _ => AuthorizerResponse::Deny,
        },
    );
    let service = AuthLayer::new(authorizer).layer(tower::service_fn(
        |request: Request<hyper::body::Incoming>| async move {
            let subject = request
                .extensions()
                .get::<Principal>()
                .and_then(|p| p.subject().map(str::to_owned))
                .unwrap_or_default();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(subject))))
        },
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = service.clone();
            let service =
                hyper::service::service_fn(move |request| service.clone().oneshot(request));
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    let client = Client::new();

    let orders = client.bearer(addr, "/orders", "good").await;
    assert_eq!(orders.status, StatusCode::OK);
    assert_eq!(orders.body, "user-1");
    // No route is known here, so the path keys the decision.
    let other = client.bearer(addr, "/other", "good").await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    client.bearer(addr, "/orders", "good").await;
    assert_eq!(calls.count(), 2);
}
