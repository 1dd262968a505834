//! Aggregation and the HTTP upstream stacked as users stack them: behind the JWT authorizer in
//! an axum router served with connect info, so backends and upstreams get the verified
//! subject as a header (and never a client's own copy) and the client's real address.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use support::{bearer, jwt, serve_axum, Client, Reply};
use tollgate::aggregate::{Aggregate, Backend, HttpUpstream, X_TOLLGATE_COMPLETED};
use tollgate::auth::{AuthLayer, RoutePolicy};

/// How long one client call may take before the test fails instead of hanging.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// A backend answering every request with its target and headers, counting calls in `calls`.
async fn serve_echo(calls: Arc<AtomicUsize>) -> String {
    let echo = Router::new().fallback(move |request: Request| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut headers = Map::new();
            for name in request.headers().keys() {
                let values = request
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|value| Value::from(value.to_str().unwrap_or("<not text>")))
                    .collect();
                headers.insert(name.to_string(), Value::Array(values));
            }
            Json(json!({"target": request.uri().to_string(), "headers": headers}))
        }
    });
    format!("http://{}", serve_axum(echo).await)
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    timeout_get(&Client::new(), addr, path, headers).await
}

async fn timeout_get(
    client: &Client,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    tokio::time::timeout(CALL_LIMIT, client.get(addr, path, headers))
        .await
        .unwrap_or_else(|_| panic!("GET {path} got no answer within {CALL_LIMIT:?}"))
}

/// `GET /api/users/{id}/dashboard` aggregating `profile` (which gets the subject as
/// `x-user-id`, even though it also forwards a client's `x-user-id`) and `orders`, behind the
/// JWT authorizer with `policy` as its default.
async fn dashboard(policy: RoutePolicy, calls: &Arc<AtomicUsize>) -> SocketAddr {
    let base = serve_echo(Arc::clone(calls)).await;
    let aggregate = Aggregate::builder()
        .route("/api/users/{id}/dashboard")
        .backend(
            Backend::http("profile", format!("{base}/users/{{id}}"))
                .forward_headers(["x-user-id"])
                .claim_header("sub", "x-user-id")
                .allow(["target", "headers.x-user-id"])
                .group("profile"),
        )
        .backend(
            Backend::http("orders", format!("{base}/orders?user={{id}}"))
                .allow(["target"])
                .group("orders"),
        )
        .build()
        .unwrap();
    let auth = AuthLayer::builder(jwt())
        .default_policy(policy)
        .keep_inner_body()
        .build()
        .unwrap();
    let app = Router::new()
        .route_service("/api/users/{id}/dashboard", aggregate)
        .route_layer(auth);
    serve_axum(app).await
}

#[tokio::test]
async fn an_aggregate_behind_the_jwt_authorizer_sends_the_verified_subject_never_the_clients() {
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = dashboard(RoutePolicy::authenticated(), &calls).await;

    let reply = get(
        addr,
        "/api/users/7/dashboard",
        &[("authorization", &bearer("ann")), ("x-user-id", "admin")],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header(X_TOLLGATE_COMPLETED.as_str()), "true");
    assert_eq!(
        reply.json(),
        json!({
            "profile": {"target": "/users/7", "headers": {"x-user-id": ["ann"]}},
            "orders": {"target": "/orders?user=7"}
        })
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Without a token the authorizer refuses, and no backend is called.
    let refused = get(addr, "/api/users/7/dashboard", &[("x-user-id", "admin")]).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.problem(), "urn:tollgate:problem:unauthorized");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_anonymous_caller_cannot_plant_the_claim_header_on_an_aggregate_backend() {
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = dashboard(RoutePolicy::anonymous(), &calls).await;

    let reply = get(addr, "/api/users/7/dashboard", &[("x-user-id", "admin")]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["profile"],
        json!({"target": "/users/7"}),
        "the client's x-user-id reached the backend"
    );
}

#[tokio::test]
async fn an_upstream_nested_in_an_axum_router_gets_the_subject_and_the_clients_address() {
    let base = serve_echo(Arc::default()).await;
    let legacy = HttpUpstream::builder(base)
        .claim_header("sub", "x-user-id")
        .build()
        .unwrap();
    let auth = AuthLayer::builder(jwt())
        .default_policy(RoutePolicy::anonymous())
        .keep_inner_body()
        .build()
        .unwrap();
    let app = Router::new().nest_service("/legacy", legacy).layer(auth);
    let addr = serve_axum(app).await;

    let reply = timeout_get(
        &Client::from_ip("127.0.0.3"),
        addr,
        "/legacy/orders/9?page=2",
        &[
            ("authorization", &bearer("ann")),
            ("x-user-id", "admin"),
            ("x-forwarded-for", "6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let saw = reply.json();
    assert_eq!(saw["target"], "/orders/9?page=2");
    let headers = &saw["headers"];
    assert_eq!(headers["x-user-id"], json!(["ann"]));
    // The address comes from axum's connect info; the client's claim is replaced.
    assert_eq!(headers["x-forwarded-for"], json!(["127.0.0.3"]));
    assert_eq!(
        headers["forwarded"],
        json!([format!("for=127.0.0.3;host=\"{addr}\";proto=http")])
    );

    // An anonymous caller's own x-user-id never reaches the upstream.
    let anonymous = get(addr, "/legacy/orders/9", &[("x-user-id", "admin")]).await;
    assert_eq!(anonymous.status, 200, "{anonymous:?}");
    assert!(
        anonymous.json()["headers"].get("x-user-id").is_none(),
        "{anonymous:?}"
    );
}
