//! The stage router stacked with the real JWT authorizer: around it, so a verified principal
//! with the override scope may force a canary and the canary can stick to the subject; and
//! inside one stage, so only that version requires a token.

mod support;

use axum::routing::get;
use axum::Router;
use support::{bearer_with_scopes, jwt, serve_axum, Client, Reply};
use tollgate::auth::{AuthLayer, RoutePolicy};
use tollgate::key::Subject;
use tollgate::stage::{Canary, StageRouter, StageSpec, DEFAULT_OVERRIDE_HEADER};
use tollgate::{Principal, Stage};

const OVERRIDE: &str = "canary:override";

/// A stage service answering `<service> <deployment> <subject or anonymous>` on `/orders`,
/// and `ok` on `/health`.
fn orders(service: &'static str) -> Router {
    Router::new()
        .route(
            "/orders",
            get(
                move |stage: Stage, principal: Option<Principal>| async move {
                    let subject = principal
                        .as_ref()
                        .and_then(Principal::subject)
                        .unwrap_or("anonymous")
                        .to_owned();
                    format!("{service} {} {subject}", stage.deployment())
                },
            ),
        )
        .route("/health", get(|| async { "ok" }))
}

/// `v2` on `/v2` with a canary at `percent` and `sticky`, behind the JWT authorizer, which
/// lets anonymous callers through; `X-Canary` forces a side for principals with `OVERRIDE`.
async fn behind_the_authorizer(percent: f64, by_subject: bool) -> std::net::SocketAddr {
    let mut stages = StageRouter::builder()
        .override_header(Some(http::HeaderName::from_static(DEFAULT_OVERRIDE_HEADER)))
        .override_scope(OVERRIDE)
        .stage(
            StageSpec::new("v2", orders("v2"))
                .base_path("/v2")
                .canary(Canary::new(orders("v2-next")).percent(percent)),
        );
    if by_subject {
        stages = stages.sticky_by(Subject);
    }
    let auth = AuthLayer::builder(jwt())
        .default_policy(RoutePolicy::anonymous())
        .keep_inner_body()
        .build()
        .unwrap();
    let app = Router::new()
        .fallback_service(stages.build().unwrap())
        .layer(auth);
    serve_axum(app).await
}

/// Asserts a 200 served by `deployment` with `body`.
#[track_caller]
fn assert_served(reply: &Reply, deployment: &str, body: &str) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-deployment"), deployment, "{reply:?}");
    assert_eq!(reply.text(), body, "{reply:?}");
}

#[tokio::test]
async fn a_principal_with_the_override_scope_may_force_the_canary() {
    let (addr, client) = (behind_the_authorizer(0.0, false).await, Client::new());
    let tester = bearer_with_scopes("tess", &format!("orders:read {OVERRIDE}"));

    let forced = client
        .get(
            addr,
            "/v2/orders",
            &[("authorization", &tester), ("x-canary", "always")],
        )
        .await;
    assert_served(&forced, "v2-canary", "v2-next v2-canary tess");
    let unforced = client
        .get(addr, "/v2/orders", &[("authorization", &tester)])
        .await;
    assert_served(&unforced, "v2", "v2 v2 tess");
}

#[tokio::test]
async fn a_principal_without_the_override_scope_may_not_force_a_side() {
    let (addr, client) = (behind_the_authorizer(0.0, false).await, Client::new());
    let user = bearer_with_scopes("ursula", "orders:read");

    let reply = client
        .get(
            addr,
            "/v2/orders",
            &[("authorization", &user), ("x-canary", "always")],
        )
        .await;
    assert_served(&reply, "v2", "v2 v2 ursula");
    let anonymous = client
        .get(addr, "/v2/orders", &[("x-canary", "always")])
        .await;
    assert_served(&anonymous, "v2", "v2 v2 anonymous");
    // A scope claimed in a token the authorizer refuses never reaches the stage router.
    let forged = bearer_with_scopes("mallory", OVERRIDE).replace('.', ".x");
    let refused = client
        .get(
            addr,
            "/v2/orders",
            &[("authorization", &forged), ("x-canary", "always")],
        )
        .await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.headers.get("x-deployment").is_none(), "{refused:?}");
}

#[tokio::test]
async fn the_canary_sticks_to_the_verified_subject_from_any_address() {
    let addr = behind_the_authorizer(50.0, true).await;
    let (home, office) = (Client::from_ip("127.0.0.2"), Client::from_ip("127.0.0.3"));

    let mut canaries = 0;
    for i in 0..16 {
        let token = bearer_with_scopes(&format!("user-{i}"), "orders:read");
        let auth = [("authorization", token.as_str())];
        let from_home = home.get(addr, "/v2/orders", &auth).await;
        let from_office = office.get(addr, "/v2/orders", &auth).await;
        assert_eq!(from_home.status, 200, "{from_home:?}");
        assert_eq!(
            from_home.header("x-deployment"),
            from_office.header("x-deployment"),
            "user-{i}"
        );
        canaries += usize::from(from_home.header("x-deployment") == "v2-canary");
    }
    assert!(
        (1..16).contains(&canaries),
        "at 50 % both sides serve some of 16 subjects: {canaries} on the canary"
    );
    // Anonymous callers have no subject to stick to, so they stay on stable.
    for client in [&home, &office] {
        let reply = client.get(addr, "/v2/orders", &[]).await;
        assert_served(&reply, "v2", "v2 v2 anonymous");
    }
}

#[tokio::test]
async fn an_authorizer_inside_one_stage_guards_only_that_stage() {
    // The stage's policies are written for its own paths: the base path is stripped first.
    let auth = AuthLayer::builder(jwt())
        .route("GET /health", RoutePolicy::anonymous())
        .keep_inner_body()
        .build()
        .unwrap();
    let stages = StageRouter::builder()
        .stage(StageSpec::new("v1", orders("v1")).base_path("/v1"))
        .stage(StageSpec::new("v2", orders("v2").layer(auth)).base_path("/v2"))
        .build()
        .unwrap();
    let addr = serve_axum(Router::new().fallback_service(stages)).await;
    let client = Client::new();

    assert_served(
        &client.get(addr, "/v1/orders", &[]).await,
        "v1",
        "v1 v1 anonymous",
    );
    let refused = client.get(addr, "/v2/orders", &[]).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.header("www-authenticate"), "Bearer");
    assert_eq!(refused.header("x-deployment"), "v2");
    assert_eq!(client.get(addr, "/v2/health", &[]).await.status, 200);
    let alice = bearer_with_scopes("alice", "orders:read");
    let reply = client
        .get(addr, "/v2/orders", &[("authorization", &alice)])
        .await;
    assert_served(&reply, "v2", "v2 v2 alice");
}
