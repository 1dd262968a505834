//! The authorizer stacked as users stack it: with `Router::route_layer`, in front of a plain
//! hyper service, and ahead of a throttle that counts per verified subject.

mod support;

use std::convert::Infallible;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use support::{bearer, jwt, serve_axum, serve_hyper, Client};
use tollgate::auth::{AuthLayer, RoutePolicy};
use tollgate::key::Subject;
use tollgate::throttle::{Rate, Rule, ThrottleLayer};
use tollgate::Principal;
use tower::ServiceBuilder;

#[tokio::test]
async fn route_layer_guards_its_routes_and_leaves_unknown_paths_404() {
    let auth = AuthLayer::builder(jwt()).keep_inner_body().build().unwrap();
    let app = Router::new()
        .route(
            "/me",
            get(|p: Principal| async move { p.subject().unwrap_or_default().to_owned() }),
        )
        .route_layer(auth)
        .route("/public", get(|| async { "open" }));
    let addr = serve_axum(app).await;
    let client = Client::new();

    let me = client
        .get(addr, "/me", &[("authorization", &bearer("alice"))])
        .await;
    assert_eq!((me.status.as_u16(), &me.body[..]), (200, &b"alice"[..]));
    let refused = client.get(addr, "/me", &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), "Bearer");
    assert_eq!(client.get(addr, "/public", &[]).await.status, 200);
    assert_eq!(client.get(addr, "/missing", &[]).await.status, 404);
}

#[tokio::test]
async fn a_plain_hyper_service_gets_the_principal() {
    let handler = tower::service_fn(|request: Request<hyper::body::Incoming>| async move {
        let subject = request
            .extensions()
            .get::<Principal>()
            .and_then(|p| p.subject().map(str::to_owned))
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(subject))))
    });
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(jwt()))
        .service(handler);
    let addr = serve_hyper(service).await;
    let client = Client::new();

    let reply = client
        .get(addr, "/", &[("authorization", &bearer("bob"))])
        .await;
    assert_eq!((reply.status.as_u16(), &reply.body[..]), (200, &b"bob"[..]));
    let reply = client
        .get(addr, "/", &[("authorization", "Bearer x.y.z")])
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["type"], "urn:tollgate:problem:unauthorized");
}

#[tokio::test]
async fn a_throttle_behind_the_authorizer_counts_each_subject_apart() {
    let per_subject = ThrottleLayer::builder()
        .rule(Rule::new("per-user", Rate::per_day(2), Subject).burst(2))
        .build()
        .unwrap()
        .keep_inner_body();
    let auth = AuthLayer::builder(jwt())
        .route("GET /health", RoutePolicy::anonymous())
        .keep_inner_body()
        .build()
        .unwrap();
    let app = Router::new()
        .route("/orders", get(|| async { "orders" }))
        .layer(per_subject)
        .layer(auth);
    let addr = serve_axum(app).await;
    let client = Client::new();
    let (alice, carol) = (bearer("alice"), bearer("carol"));

    for _ in 0..2 {
        let reply = client
            .get(addr, "/orders", &[("authorization", &alice)])
            .await;
        assert_eq!(reply.status, 200);
    }
    let limited = client
        .get(addr, "/orders", &[("authorization", &alice)])
        .await;
    assert_eq!(limited.status, 429);
    // Another subject has its own allowance.
    let reply = client
        .get(addr, "/orders", &[("authorization", &carol)])
        .await;
    assert_eq!(reply.status, 200);
    // Refused by the authorizer, a request never reaches the throttle.
    assert_eq!(client.get(addr, "/orders", &[]).await.status, 401);
}
