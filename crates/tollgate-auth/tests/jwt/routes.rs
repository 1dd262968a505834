//! Route policies, claim headers, algorithms, providers, token sources and the cache.

use std::time::{Duration, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use serde_json::json;
use tollgate_auth::jwt::{JwtAuthorizer, JwtProvider, Keys, TokenSource};
use tollgate_auth::{AuthLayer, RoutePolicy};
use tollgate_core::{Clock, ManualClock};

use crate::*;

fn hmac_authorizer() -> JwtAuthorizer {
    JwtAuthorizer::builder()
        .provider(JwtProvider::new(ISSUER, Keys::hmac(SECRET)).audience(AUDIENCE))
        .build()
        .unwrap()
}

fn token_with(scope: &str) -> String {
    let mut claims = claims();
    claims["scope"] = json!(scope);
    sign(Algorithm::HS256, None, &claims)
}

#[tokio::test]
async fn any_of_and_all_of_scopes_are_enforced_per_route() {
    let auth = AuthLayer::builder(hmac_authorizer())
        .route(
            "GET /me",
            RoutePolicy::authenticated().any_scope(["orders:read", "orders:admin"]),
        )
        .route(
            "GET /headers",
            RoutePolicy::authenticated().all_scopes(["orders:read", "orders:write"]),
        )
        .build()
        .unwrap();
    let addr = serve(app().layer(auth)).await;
    let http = Http::new();

    assert_eq!(
        http.bearer(addr, "/me", &token_with("orders:admin"))
            .await
            .status,
        200
    );
    let refused = http.bearer(addr, "/me", &token_with("profile")).await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.header("www-authenticate"),
        r#"Bearer error="insufficient_scope", scope="orders:read orders:admin""#
    );
    assert_eq!(refused.json()["type"], "urn:tollgate:problem:forbidden");

    assert_eq!(
        http.bearer(addr, "/headers", &token_with("orders:read orders:write"))
            .await
            .status,
        200
    );
    let partial = http
        .bearer(addr, "/headers", &token_with("orders:read"))
        .await;
    assert_eq!(partial.status, 403);
    assert_eq!(
        partial.header("www-authenticate"),
        r#"Bearer error="insufficient_scope", scope="orders:read orders:write""#
    );
}

#[tokio::test]
async fn scp_arrays_grant_scopes_too() {
    let auth = AuthLayer::builder(hmac_authorizer())
        .route(
            "GET /me",
            RoutePolicy::authenticated().all_scopes(["a", "b"]),
        )
        .build()
        .unwrap();
    let addr = serve(app().layer(auth)).await;
    let mut claims = claims();
    claims.as_object_mut().unwrap().remove("scope");
    claims["scp"] = json!(["a", "b"]);
    let reply = Http::new()
        .bearer(addr, "/me", &sign(Algorithm::HS256, None, &claims))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["scopes"], json!(["a", "b"]));
}

#[tokio::test]
async fn anonymous_routes_need_no_token_but_still_verify_one_that_is_sent() {
    let auth = AuthLayer::builder(hmac_authorizer())
        .route("GET /optional", RoutePolicy::anonymous())
        .build()
        .unwrap();
    let addr = serve(app().layer(auth)).await;
    let http = Http::new();

    let reply = http.get(addr, "/optional", &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "anonymous")
    );
    let reply = http
        .bearer(addr, "/optional", &sign(Algorithm::HS256, None, &claims()))
        .await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "user-42")
    );
    let reply = http.bearer(addr, "/optional", "garbage.token.here").await;
    assert_eq!(reply.status, 401);
    // Other routes still need a token.
    let reply = http.get(addr, "/me", &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), "Bearer");
}

#[tokio::test]
async fn a_claim_header_replaces_the_one_a_client_forged() {
    let auth = AuthLayer::builder(hmac_authorizer())
        .route("GET /headers", RoutePolicy::anonymous())
        .claim_header("sub", "x-user-id")
        .build()
        .unwrap();
    let addr = serve(app().layer(auth)).await;
    let http = Http::new();
    let token = sign(Algorithm::HS256, None, &claims());

    let reply = http
        .get(
            addr,
            "/headers",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-user-id", "admin"),
            ],
        )
        .await;
    assert_eq!(reply.json()["x-user-id"], json!(["user-42"]));
    // Without a token the forged header is removed, not passed on.
    let reply = http.get(addr, "/headers", &[("x-user-id", "admin")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["x-user-id"], json!([]));
}

#[tokio::test]
async fn every_supported_algorithm_verifies_with_its_own_key() {
    let cases = [
        (Algorithm::HS256, Keys::hmac(SECRET)),
        (Algorithm::HS384, Keys::hmac(SECRET)),
        (Algorithm::HS512, Keys::hmac(SECRET)),
        (Algorithm::RS256, Keys::rsa_pem(key_file("rsa-1.pub.pem"))),
        (Algorithm::RS384, Keys::rsa_pem(key_file("rsa-1.pub.pem"))),
        (Algorithm::RS512, Keys::rsa_pem(key_file("rsa-1.pub.pem"))),
        (Algorithm::PS256, Keys::rsa_pem(key_file("rsa-1.pub.pem"))),
        (Algorithm::PS384, Keys::rsa_pem(key_file("rsa-1.pub.pem"))),
        (Algorithm::PS512, Keys::rsa_pem(key_file("rsa-1.pub.pem"))),
        (Algorithm::ES256, Keys::ec_pem(key_file("ec-p256.pub.pem"))),
        (Algorithm::ES384, Keys::ec_pem(key_file("ec-p384.pub.pem"))),
        (Algorithm::EdDSA, Keys::ed_pem(key_file("ed25519.pub.pem"))),
    ];
    let http = Http::new();
    for (alg, keys) in cases {
        let jwt = JwtAuthorizer::builder()
            .provider(
                JwtProvider::new(ISSUER, keys)
                    .audience(AUDIENCE)
                    .algorithms([alg]),
            )
            .build()
            .unwrap();
        let addr = serve(app().layer(AuthLayer::new(jwt))).await;
        let reply = http.bearer(addr, "/me", &sign(alg, None, &claims())).await;
        assert_eq!(reply.status, 200, "{alg:?}: {}", reply.text());
        // An algorithm off the allow-list is refused even with the right key.
        let other = if alg == Algorithm::HS256 {
            Algorithm::HS512
        } else {
            Algorithm::HS256
        };
        assert_eq!(
            http.bearer(addr, "/me", &sign(other, None, &claims()))
                .await
                .status,
            401,
            "{alg:?}"
        );
    }
}

#[tokio::test]
async fn with_several_providers_the_issuer_picks_the_keys() {
    let jwt = JwtAuthorizer::builder()
        .provider(JwtProvider::new(ISSUER, Keys::hmac(SECRET)).audience(AUDIENCE))
        .provider(
            JwtProvider::new("https://rsa.test", Keys::rsa_pem(key_file("rsa-1.pub.pem")))
                .audience(AUDIENCE),
        )
        .build()
        .unwrap();
    let addr = serve(app().layer(AuthLayer::new(jwt))).await;
    let http = Http::new();

    let mut rsa_claims = claims();
    rsa_claims["iss"] = json!("https://rsa.test");
    assert_eq!(
        http.bearer(addr, "/me", &sign(Algorithm::RS256, None, &rsa_claims))
            .await
            .status,
        200
    );
    assert_eq!(
        http.bearer(addr, "/me", &sign(Algorithm::HS256, None, &claims()))
            .await
            .status,
        200
    );
    // An RS256 token claiming the HMAC provider's issuer meets only that provider's key.
    let reply = http
        .bearer(addr, "/me", &sign(Algorithm::RS256, None, &claims()))
        .await;
    assert_eq!(reply.status, 401);
    let mut unknown = claims();
    unknown["iss"] = json!("https://elsewhere.test");
    let reply = http
        .bearer(addr, "/me", &sign(Algorithm::HS256, None, &unknown))
        .await;
    assert_eq!(reply.json()["detail"], "the token's issuer is not accepted");
}

#[tokio::test]
async fn tokens_are_read_from_the_sources_chosen() {
    let jwt = JwtAuthorizer::builder()
        .provider(JwtProvider::new(ISSUER, Keys::hmac(SECRET)).audience(AUDIENCE))
        .token_sources([
            TokenSource::Bearer,
            TokenSource::Cookie("id_token".into()),
            TokenSource::Query("access_token".into()),
        ])
        .build()
        .unwrap();
    let addr = serve(app().layer(AuthLayer::new(jwt))).await;
    let http = Http::new();
    let token = sign(Algorithm::HS256, None, &claims());
    let cookie = format!("theme=dark; id_token={token}");
    assert_eq!(
        http.get(addr, "/me", &[("cookie", &cookie)]).await.status,
        200
    );
    assert_eq!(
        http.get(addr, &format!("/me?access_token={token}"), &[])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_cached_token_stops_being_accepted_at_its_exp() {
    let clock = ManualClock::new();
    let start = clock
        .system_time()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = JwtAuthorizer::builder()
        .provider(
            JwtProvider::new(ISSUER, Keys::hmac(SECRET))
                .audience(AUDIENCE)
                .leeway(Duration::ZERO),
        )
        .clock(clock.clone())
        .build()
        .unwrap();
    let addr = serve(app().layer(AuthLayer::new(jwt))).await;
    let http = Http::new();
    let mut claims = claims();
    claims["exp"] = json!(start + 10);
    claims["iat"] = json!(start);
    let token = sign(Algorithm::HS256, None, &claims);

    assert_eq!(http.bearer(addr, "/me", &token).await.status, 200);
    clock.advance(Duration::from_secs(9));
    assert_eq!(http.bearer(addr, "/me", &token).await.status, 200);
    clock.advance(Duration::from_secs(1));
    let reply = http.bearer(addr, "/me", &token).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["detail"], "the token has expired");
}

#[tokio::test]
async fn the_default_leeway_accepts_a_token_a_little_past_exp() {
    let clock = ManualClock::new();
    let start = clock
        .system_time()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = JwtAuthorizer::builder()
        .provider(JwtProvider::new(ISSUER, Keys::hmac(SECRET)).audience(AUDIENCE))
        .clock(clock.clone())
        .build()
        .unwrap();
    let addr = serve(app().layer(AuthLayer::new(jwt))).await;
    let http = Http::new();
    let mut claims = claims();
    claims["exp"] = json!(start);
    let token = sign(Algorithm::HS256, None, &claims);
    clock.advance(Duration::from_secs(59));
    assert_eq!(http.bearer(addr, "/me", &token).await.status, 200);
    clock.advance(Duration::from_secs(1));
    assert_eq!(http.bearer(addr, "/me", &token).await.status, 401);
}

#[tokio::test]
async fn max_age_refuses_old_tokens() {
    let jwt = JwtAuthorizer::builder()
        .provider(
            JwtProvider::new(ISSUER, Keys::hmac(SECRET))
                .audience(AUDIENCE)
                .max_age(Duration::from_secs(600))
                .require_claim("tenant"),
        )
        .build()
        .unwrap();
    let addr = serve(app().layer(AuthLayer::new(jwt))).await;
    let http = Http::new();
    let mut fresh = claims();
    fresh["tenant"] = json!("acme");
    assert_eq!(
        http.bearer(addr, "/me", &sign(Algorithm::HS256, None, &fresh))
            .await
            .status,
        200
    );
    let mut old = fresh.clone();
    old["iat"] = json!(now() - 3600);
    let reply = http
        .bearer(addr, "/me", &sign(Algorithm::HS256, None, &old))
        .await;
    assert_eq!(reply.json()["detail"], "the token was issued too long ago");
    let reply = http
        .bearer(addr, "/me", &sign(Algorithm::HS256, None, &claims()))
        .await;
    assert_eq!(reply.json()["detail"], "the token lacks a required claim");
}

#[test]
fn unsafe_configurations_are_build_errors() {
    let weak = JwtAuthorizer::builder()
        .provider(JwtProvider::new(ISSUER, Keys::hmac(b"short")).audience(AUDIENCE))
        .build()
        .unwrap_err();
    assert!(weak.to_string().contains("at least 32"), "{weak}");
    let no_audience = JwtAuthorizer::builder()
        .provider(JwtProvider::new(ISSUER, Keys::hmac(SECRET)))
        .build()
        .unwrap_err();
    assert!(
        no_audience.to_string().contains("no audience"),
        "{no_audience}"
    );
    let bad_pem = JwtAuthorizer::builder()
        .provider(JwtProvider::new(ISSUER, Keys::rsa_pem("not a pem")).audience(AUDIENCE))
        .build()
        .unwrap_err();
    assert!(bad_pem.to_string().contains("invalid key"), "{bad_pem}");
    let confused = JwtAuthorizer::builder()
        .provider(
            JwtProvider::new(ISSUER, Keys::rsa_pem(key_file("rsa-1.pub.pem")))
                .audience(AUDIENCE)
                .algorithms([Algorithm::HS256]),
        )
        .build()
        .unwrap_err();
    assert!(
        confused.to_string().contains("no key can verify"),
        "{confused}"
    );
}

#[tokio::test]
async fn a_static_jwk_set_from_text_or_file_picks_the_key_by_kid() {
    let set = rsa_jwks(&[("rsa-1.pem", "k1"), ("rsa-2.pem", "k2")]);
    let path = std::env::temp_dir().join(format!("tollgate-jwks-{}.json", std::process::id()));
    std::fs::write(&path, &set).unwrap();
    let rsa2 = jsonwebtoken::EncodingKey::from_rsa_pem(&key_file("rsa-2.pem")).unwrap();
    let http = Http::new();
    for keys in [Keys::jwk_set(set.clone()), Keys::jwk_set_file(&path)] {
        let jwt = JwtAuthorizer::builder()
            .provider(JwtProvider::new(ISSUER, keys).audience(AUDIENCE))
            .build()
            .unwrap();
        let addr = serve(app().layer(AuthLayer::new(jwt))).await;
        let by_k2 = sign_with(Algorithm::RS256, Some("k2"), &claims(), &rsa2);
        assert_eq!(http.bearer(addr, "/me", &by_k2).await.status, 200);
        // The same signature under the other key's kid fails: the kid chooses the key.
        let mislabelled = sign_with(Algorithm::RS256, Some("k1"), &claims(), &rsa2);
        assert_eq!(http.bearer(addr, "/me", &mislabelled).await.status, 401);
        let unknown = sign(Algorithm::RS256, Some("k9"), &claims());
        let reply = http.bearer(addr, "/me", &unknown).await;
        assert_eq!(
            reply.json()["detail"],
            "the token is signed with an unknown key"
        );
    }
    std::fs::remove_file(&path).unwrap();
}
