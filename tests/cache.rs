//! The response cache stacked as DESIGN.md orders it: behind the JWT authorizer, so entries
//! are keyed by the verified subject; behind the usage-plan layer, so entries are keyed by
//! API key and refusals never reach the cache; and on a shared route, over a plain hyper
//! service.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use axum::http::header::{CACHE_CONTROL, ETAG};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::json;
use support::{bearer, jwt, serve_axum, serve_hyper, Calls, Client, Reply};
use tollgate::auth::AuthLayer;
use tollgate::cache::{CacheLayer, CachePolicy, Sharing};
use tollgate::throttle::Rate;
use tollgate::usage::{NewKey, QuotaPeriod, UsagePlan, UsagePlans};
use tollgate::Principal;
use tower::ServiceBuilder;

fn assert_served(reply: &Reply, cache_status: &str) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-cache-status"), cache_status, "{reply:?}");
    if cache_status == "HIT" {
        let age: u64 = reply.header("age").parse().unwrap();
        assert!(age < 60, "a fresh hit is seconds old, not {age}");
    }
}

#[tokio::test]
async fn behind_the_jwt_authorizer_each_user_gets_only_their_own_cached_response() {
    let calls = Calls::default();
    let profile = {
        let calls = calls.clone();
        move |principal: Principal| async move {
            let subject = principal.subject().unwrap_or_default().to_owned();
            let call = calls.next();
            let etag = format!("\"{subject}-{call}\"");
            (
                [(ETAG, etag)],
                Json(json!({ "subject": subject, "call": call })),
            )
                .into_response()
        }
    };
    let cache = CacheLayer::builder().build().unwrap();
    let auth = AuthLayer::builder(jwt()).keep_inner_body().build().unwrap();
    let app = Router::new()
        .route("/profile", get(profile))
        .layer(cache)
        .layer(auth);
    let addr = serve_axum(app).await;
    let client = Client::new();
    let (alice, bob) = (bearer("alice"), bearer("bob"));

    let first = client
        .get(addr, "/profile", &[("authorization", &alice)])
        .await;
    assert_served(&first, "MISS");
    assert_eq!(first.json(), json!({ "subject": "alice", "call": 1 }));
    let again = client
        .get(addr, "/profile", &[("authorization", &alice)])
        .await;
    assert_served(&again, "HIT");
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("etag"), "\"alice-1\"");

    // Bob asks for the same path while Alice's response is cached: he gets his own.
    let bob_first = client
        .get(addr, "/profile", &[("authorization", &bob)])
        .await;
    assert_served(&bob_first, "MISS");
    assert_eq!(bob_first.json(), json!({ "subject": "bob", "call": 2 }));
    for _ in 0..3 {
        let bob_again = client
            .get(addr, "/profile", &[("authorization", &bob)])
            .await;
        assert_served(&bob_again, "HIT");
        assert_eq!(bob_again.json(), json!({ "subject": "bob", "call": 2 }));
        let alice_again = client
            .get(addr, "/profile", &[("authorization", &alice)])
            .await;
        assert_served(&alice_again, "HIT");
        assert_eq!(alice_again.json(), json!({ "subject": "alice", "call": 1 }));
    }
    assert_eq!(calls.count(), 2, "one upstream call per user");

    // A conditional request is answered from the caller's own entry: Alice's ETag is current
    // for Alice, and means nothing for Bob.
    let not_modified = client
        .get(
            addr,
            "/profile",
            &[("authorization", &alice), ("if-none-match", "\"alice-1\"")],
        )
        .await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("x-cache-status"), "HIT");
    assert!(not_modified.body.is_empty());
    let bob_conditional = client
        .get(
            addr,
            "/profile",
            &[("authorization", &bob), ("if-none-match", "\"alice-1\"")],
        )
        .await;
    assert_served(&bob_conditional, "HIT");
    assert_eq!(
        bob_conditional.json(),
        json!({ "subject": "bob", "call": 2 })
    );

    // Refused by the authorizer, a request never reaches the cache.
    let refused = client.get(addr, "/profile", &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), "Bearer");
    assert!(refused.headers.get("x-cache-status").is_none());
    let forged = client
        .get(addr, "/profile", &[("authorization", "Bearer x.y.z")])
        .await;
    assert_eq!(forged.status, 401);
    assert!(forged.headers.get("x-cache-status").is_none());
    assert!(!forged.text().contains("alice"), "{}", forged.text());
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn behind_a_usage_plan_each_key_has_its_own_entries_and_refusals_are_never_cached() {
    let plans = UsagePlans::builder()
        .plan(
            UsagePlan::new("basic")
                .throttle(Rate::per_second(100), 100)
                .quota(1_000, QuotaPeriod::Day),
        )
        .build()
        .unwrap();
    let (first_key, first_secret) = plans.create_key(NewKey::new("basic")).await.unwrap();
    let (second_key, second_secret) = plans.create_key(NewKey::new("basic")).await.unwrap();
    let calls = Calls::default();
    let widgets = {
        let calls = calls.clone();
        move |principal: Principal| async move {
            Json(json!({
                "api_key_id": principal.api_key_id(),
                "call": calls.next(),
            }))
        }
    };
    let cache = CacheLayer::builder().build().unwrap();
    let app = Router::new()
        .route("/api/widgets", get(widgets))
        .layer(cache)
        .layer(plans.layer().keep_inner_body());
    let addr = serve_axum(app).await;
    let client = Client::new();
    let (first_secret, second_secret) = (first_secret.expose(), second_secret.expose());

    // Before anything is cached, and after: a request without a key is refused by the plan.
    let refused = client.get(addr, "/api/widgets", &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), "ApiKey");
    assert!(refused.headers.get("x-cache-status").is_none());

    let first = client.with_key(addr, "/api/widgets", first_secret).await;
    assert_served(&first, "MISS");
    assert_eq!(
        first.json(),
        json!({ "api_key_id": first_key.id(), "call": 1 })
    );
    let first_again = client.with_key(addr, "/api/widgets", first_secret).await;
    assert_served(&first_again, "HIT");
    assert_eq!(first_again.body, first.body);
    // The plan still applies to a hit: it is counted and told its allowance.
    assert_eq!(
        first_again.header("ratelimit-policy"),
        r#""basic";q=100;w=1, "quota";q=1000;w=86400"#
    );

    let second = client.with_key(addr, "/api/widgets", second_secret).await;
    assert_served(&second, "MISS");
    assert_eq!(
        second.json(),
        json!({ "api_key_id": second_key.id(), "call": 2 })
    );
    let second_again = client.with_key(addr, "/api/widgets", second_secret).await;
    assert_served(&second_again, "HIT");
    assert_eq!(second_again.body, second.body);

    // With entries cached for the path, a request without a key, or with a wrong one, is
    // still refused, and nothing cached is handed out.
    for headers in [
        &[][..],
        &[("x-api-key", "tg_unknown_0000000000000000000000000000")][..],
    ] {
        for _ in 0..2 {
            let refused = client.get(addr, "/api/widgets", headers).await;
            assert_eq!(refused.status, 401, "{refused:?}");
            assert_eq!(refused.header("www-authenticate"), "ApiKey");
            assert!(refused.headers.get("x-cache-status").is_none());
            assert!(!refused.text().contains(first_key.id()));
            assert!(!refused.text().contains(second_key.id()));
        }
    }
    assert_eq!(calls.count(), 2, "one upstream call per key");
    let first_later = client.with_key(addr, "/api/widgets", first_secret).await;
    assert_served(&first_later, "HIT");
    assert_eq!(first_later.body, first.body);
}

#[tokio::test]
async fn a_shared_route_serves_one_entry_to_every_user_but_never_a_private_response() {
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        tower::service_fn(move |request: Request<hyper::body::Incoming>| {
            let subject = request
                .extensions()
                .get::<Principal>()
                .and_then(|p| p.subject().map(str::to_owned))
                .unwrap_or_default();
            let call = calls.next();
            let path = request.uri().path().to_owned();
            async move {
                let body = json!({ "path": path, "for": subject, "call": call }).to_string();
                let mut response = Response::new(Full::new(Bytes::from(body)));
                if path == "/account" {
                    response
                        .headers_mut()
                        .insert(CACHE_CONTROL, "private".parse().unwrap());
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let shared = CachePolicy::new()
        .ttl(Duration::from_secs(30))
        .sharing(Sharing::Shared);
    let cache = CacheLayer::builder()
        .route("GET /catalog", shared.clone())
        .route("GET /account", shared)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(AuthLayer::new(jwt()))
        .layer(cache)
        .service(handler);
    let addr = serve_hyper(service).await;
    let client = Client::new();
    let (alice, bob) = (bearer("alice"), bearer("bob"));

    let first = client
        .get(addr, "/catalog", &[("authorization", &alice)])
        .await;
    assert_served(&first, "MISS");
    assert_eq!(
        first.json(),
        json!({ "path": "/catalog", "for": "alice", "call": 1 })
    );
    for user in [&bob, &alice, &bob] {
        let reply = client
            .get(addr, "/catalog", &[("authorization", user)])
            .await;
        assert_served(&reply, "HIT");
        assert_eq!(reply.body, first.body);
    }
    assert_eq!(calls.count(), 1);

    // `Cache-Control: private` is never stored under a shared key, whatever the route says.
    let alice_account = client
        .get(addr, "/account", &[("authorization", &alice)])
        .await;
    assert_served(&alice_account, "MISS");
    assert_eq!(alice_account.json()["for"], "alice");
    let bob_account = client
        .get(addr, "/account", &[("authorization", &bob)])
        .await;
    assert_served(&bob_account, "MISS");
    assert_eq!(bob_account.json()["for"], "bob");
    assert_eq!(calls.count(), 3);
}
