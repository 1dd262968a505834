//! Usage plans stacked with the other layers as DESIGN.md orders them: an authorizer that
//! chooses the caller's API key (Amazon API Gateway's `AUTHORIZER` key source), and the
//! authorizer, usage plan and a per-key throttle together on one route.

mod support;

use std::time::SystemTime;

use axum::routing::get;
use axum::Router;
use serde_json::json;
use support::{bearer, jwt, serve_axum, Client};
use tollgate::auth::{
    Allow, AuthLayer, AuthorizerResponse, BoxError, CustomAuthorizer, IdentitySource,
};
use tollgate::throttle::Rate;
use tollgate::usage::{KeySource, NewKey, QuotaPeriod, UsagePlan, UsagePlans};
use tollgate::Principal;
use tower::ServiceBuilder;

fn plans(sources: &[KeySource]) -> UsagePlans {
    let mut builder = UsagePlans::builder().plan(
        UsagePlan::new("basic")
            .throttle(Rate::per_second(100), 100)
            .quota(2, QuotaPeriod::Day),
    );
    for source in sources {
        builder = builder.key_source(source.clone());
    }
    builder.build().unwrap()
}

/// The handler answers who called and on which key and plan.
async fn whoami(principal: Principal) -> axum::Json<serde_json::Value> {
    axum::Json(json!({
        "subject": principal.subject(),
        "api_key_id": principal.api_key_id(),
        "plan": principal.usage_plan_id(),
    }))
}

#[tokio::test]
async fn an_authorizer_chooses_the_key_the_caller_spends() {
    let plans = plans(&[KeySource::Authorizer]);
    let (key, secret) = plans.create_key(NewKey::new("basic")).await.unwrap();
    let secret = secret.expose().to_owned();
    // The authorizer maps a caller's token to the tenant's API key: the caller never sends it.
    let authorizer =
        CustomAuthorizer::builder([IdentitySource::Header(http::header::AUTHORIZATION)])
            .from_fn(move |identity| {
                let secret = secret.clone();
                async move {
                    let tenant = identity
                        .header("authorization")
                        .unwrap_or_default()
                        .to_owned();
                    Ok::<_, BoxError>(match tenant.as_str() {
                        "Bearer tenant-a" => AuthorizerResponse::Allow(
                            Allow::new("alice").usage_identifier_key(secret),
                        ),
                        "Bearer tenant-b" => AuthorizerResponse::Allow(Allow::new("bob")),
                        _ => AuthorizerResponse::Deny,
                    })
                }
            })
            .unwrap();
    let stack = ServiceBuilder::new()
        .layer(
            AuthLayer::builder(authorizer)
                .keep_inner_body()
                .build()
                .unwrap(),
        )
        .layer(plans.layer().keep_inner_body());
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route_layer(stack);
    let addr = serve_axum(app).await;
    let client = Client::new();

    let alice = client
        .get(addr, "/whoami", &[("authorization", "Bearer tenant-a")])
        .await;
    assert_eq!(alice.status, 200);
    assert_eq!(
        alice.json(),
        json!({ "subject": "alice", "api_key_id": key.id(), "plan": "basic" })
    );
    assert_eq!(
        alice.header("ratelimit-policy"),
        r#""basic";q=100;w=1, "quota";q=2;w=86400"#
    );

    // Bob's authorizer decision names no key: the usage layer refuses as for a missing key.
    let bob = client
        .get(addr, "/whoami", &[("authorization", "Bearer tenant-b")])
        .await;
    assert_eq!(bob.status, 401);
    assert_eq!(bob.header("www-authenticate"), "ApiKey");

    // A key sent by the caller is not read: only the authorizer's choice counts.
    let sent = client
        .get(
            addr,
            "/whoami",
            &[
                ("authorization", "Bearer tenant-b"),
                ("x-api-key", "tg_x_abc"),
            ],
        )
        .await;
    assert_eq!(sent.status, 401);

    // Alice's second request spends the quota of 2; the third is refused.
    let second = client
        .get(addr, "/whoami", &[("authorization", "Bearer tenant-a")])
        .await;
    assert_eq!(second.status, 200);
    let third = client
        .get(addr, "/whoami", &[("authorization", "Bearer tenant-a")])
        .await;
    assert_eq!(third.status, 429);
    assert_eq!(third.json()["type"], "urn:tollgate:problem:quota-exceeded");
}

#[tokio::test]
async fn jwt_then_api_key_gives_the_handler_both_the_user_and_the_key() {
    let jwt = jwt();
    let plans = plans(&[]);
    let (key, secret) = plans.create_key(NewKey::new("basic")).await.unwrap();
    let stack = ServiceBuilder::new()
        .layer(AuthLayer::builder(jwt).keep_inner_body().build().unwrap())
        .layer(plans.layer().keep_inner_body());
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route_layer(stack);
    let addr = serve_axum(app).await;
    let client = Client::new();

    let bearer = bearer("carol");

    let both = client
        .get(
            addr,
            "/whoami",
            &[("authorization", &bearer), ("x-api-key", secret.expose())],
        )
        .await;
    assert_eq!(both.status, 200);
    assert_eq!(
        both.json(),
        json!({ "subject": "carol", "api_key_id": key.id(), "plan": "basic" })
    );

    // The authorizer runs first: no token, no quota spent.
    let no_token = client
        .get(addr, "/whoami", &[("x-api-key", secret.expose())])
        .await;
    assert_eq!(no_token.status, 401);
    assert_eq!(no_token.header("www-authenticate"), "Bearer");
    let report = plans
        .usage(
            key.id(),
            tollgate::usage::Day::of(SystemTime::now()),
            tollgate::usage::Day::of(SystemTime::now()),
        )
        .await
        .unwrap();
    assert_eq!(report.days[0].used, 1);
    assert_eq!(report.days[0].remaining, Some(1));
}
