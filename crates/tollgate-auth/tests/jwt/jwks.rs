//! Keys from a JWKS endpoint: rotation, floods of unknown `kid`s, an identity provider that
//! is down, and the last good keys kept.

use std::net::SocketAddr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};
use tollgate_auth::jwt::{JwtAuthorizer, JwtProvider, Keys};
use tollgate_auth::AuthLayer;
use tollgate_core::ManualClock;

use crate::*;

fn rsa2() -> EncodingKey {
    EncodingKey::from_rsa_pem(&key_file("rsa-2.pem")).unwrap()
}

/// An app whose provider reads its keys from the JWKS server at `jwks`; the clock drives the
/// refetch limit. Returns once the start-up fetch has reached the server, so that counts of
/// fetches after it are exact.
async fn jwks_app(
    server: &JwksServer,
    jwks: SocketAddr,
    clock: ManualClock,
) -> (SocketAddr, JwtAuthorizer) {
    let jwt = JwtAuthorizer::builder()
        .provider(
            JwtProvider::new(ISSUER, Keys::jwks_url(format!("http://{jwks}/jwks")))
                .audience(AUDIENCE),
        )
        .clock(clock)
        .build()
        .unwrap();
    let addr = serve(app().layer(AuthLayer::new(jwt.clone()))).await;
    eventually(|| server.hits() >= 1).await;
    (addr, jwt)
}

#[tokio::test]
async fn a_rotated_key_is_accepted_after_one_refetch() {
    let (server, jwks) = JwksServer::start(Some(rsa_jwks(&[("rsa-1.pem", "k1")]))).await;
    let clock = ManualClock::new();
    let (addr, jwt) = jwks_app(&server, jwks, clock.clone()).await;
    jwt.refresh().await.unwrap();
    let http = Http::new();
    assert_eq!(
        http.bearer(addr, "/me", &sign(Algorithm::RS256, Some("k1"), &claims()))
            .await
            .status,
        200
    );

    // The identity provider rotates to k2; a token signed with it makes us refetch once.
    server.serve(Some(rsa_jwks(&[("rsa-1.pem", "k1"), ("rsa-2.pem", "k2")])));
    let before = server.hits();
    let rotated = sign_with(Algorithm::RS256, Some("k2"), &claims(), &rsa2());
    let reply = http.bearer(addr, "/me", &rotated).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(server.hits(), before + 1);
    // And the new key is now held: no further fetches.
    assert_eq!(http.bearer(addr, "/me", &rotated).await.status, 200);
    assert_eq!(server.hits(), before + 1);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_causes_at_most_one_refetch_per_window() {
    let (server, jwks) = JwksServer::start(Some(rsa_jwks(&[("rsa-1.pem", "k1")]))).await;
    let clock = ManualClock::new();
    let (addr, jwt) = jwks_app(&server, jwks, clock.clone()).await;
    jwt.refresh().await.unwrap();
    let before = server.hits();

    let http = Arc::new(Http::new());
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..1_000 {
        let http = http.clone();
        let token = sign(Algorithm::RS256, Some(&format!("random-{i}")), &claims());
        requests.spawn(async move { http.bearer(addr, "/me", &token).await });
        if i % 50 == 49 {
            while requests.len() > 25 {
                requests.join_next().await;
            }
        }
    }
    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.json()["detail"],
            "the token is signed with an unknown key"
        );
    }
    assert!(
        server.hits() - before <= 1,
        "{} refetches",
        server.hits() - before
    );

    // Once the window has passed, an unknown kid may refetch again.
    clock.advance(Duration::from_secs(31));
    let token = sign(Algorithm::RS256, Some("random-again"), &claims());
    assert_eq!(http.bearer(addr, "/me", &token).await.status, 401);
    assert_eq!(server.hits() - before, 2);
}

#[tokio::test]
async fn an_identity_provider_down_at_start_up_gives_503_then_recovers_without_restart() {
    let (server, jwks) = JwksServer::start(None).await;
    let clock = ManualClock::new();
    let (addr, jwt) = jwks_app(&server, jwks, clock.clone()).await;
    assert!(jwt.refresh().await.is_err());

    let http = Http::new();
    let token = sign(Algorithm::RS256, Some("k1"), &claims());
    let reply = http.bearer(addr, "/me", &token).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    let retry_after: u64 = reply.header("retry-after").parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(reply.json()["type"], "urn:tollgate:problem:unavailable");

    // Still down within the refetch window: 503 again, without hammering the endpoint.
    let hits = server.hits();
    assert_eq!(http.bearer(addr, "/me", &token).await.status, 503);
    assert_eq!(server.hits(), hits);

    // The endpoint comes back; after the window, the next request fetches and succeeds.
    server.serve(Some(rsa_jwks(&[("rsa-1.pem", "k1")])));
    clock.advance(Duration::from_secs(31));
    let reply = http.bearer(addr, "/me", &token).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn the_last_good_keys_stay_in_use_when_a_poll_fails() {
    let (server, jwks) = JwksServer::start(Some(rsa_jwks(&[("rsa-1.pem", "k1")]))).await;
    let (addr, jwt) = jwks_app(&server, jwks, ManualClock::new()).await;
    jwt.refresh().await.unwrap();

    server.serve(None);
    let error = jwt.refresh().await.unwrap_err();
    assert!(error.to_string().contains("503"), "{error}");
    let reply = Http::new()
        .bearer(addr, "/me", &sign(Algorithm::RS256, Some("k1"), &claims()))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // A poll that returns garbage is a failure too, and changes nothing.
    server.serve(Some("{\"keys\": 7}".into()));
    assert!(jwt.refresh().await.is_err());
    let reply = Http::new()
        .bearer(addr, "/me", &sign(Algorithm::RS256, Some("k1"), &claims()))
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn keys_are_found_through_oidc_discovery() {
    let (_server, jwks) = JwksServer::start(Some(rsa_jwks(&[("rsa-1.pem", "k1")]))).await;
    let issuer = format!("http://{jwks}");
    let jwt = JwtAuthorizer::builder()
        .provider(JwtProvider::new(&issuer, Keys::discovery()).audience(AUDIENCE))
        .build()
        .unwrap();
    jwt.refresh().await.unwrap();
    let addr = serve(app().layer(AuthLayer::new(jwt))).await;
    let mut claims = claims();
    claims["iss"] = issuer.into();
    let reply = Http::new()
        .bearer(addr, "/me", &sign(Algorithm::RS256, Some("k1"), &claims))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn a_jwks_url_outside_a_runtime_or_malformed_is_a_build_error() {
    let error = JwtAuthorizer::builder()
        .provider(
            JwtProvider::new(ISSUER, Keys::jwks_url("http://127.0.0.1:1/jwks")).audience(AUDIENCE),
        )
        .build();
    assert!(error.is_ok(), "inside a runtime it builds");
    let error = JwtAuthorizer::builder()
        .provider(JwtProvider::new(ISSUER, Keys::jwks_url("ftp://keys")).audience(AUDIENCE))
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("ftp://keys"), "{error}");
}

#[tokio::test]
async fn a_verified_token_is_served_from_the_cache_until_its_ttl() {
    let (server, jwks) = JwksServer::start(Some(rsa_jwks(&[("rsa-1.pem", "k1")]))).await;
    let clock = ManualClock::new();
    let jwt = JwtAuthorizer::builder()
        .provider(
            JwtProvider::new(ISSUER, Keys::jwks_url(format!("http://{jwks}/jwks")))
                .audience(AUDIENCE),
        )
        .cache_ttl(Duration::from_secs(60))
        .clock(clock.clone())
        .build()
        .unwrap();
    jwt.refresh().await.unwrap();
    let addr = serve(app().layer(AuthLayer::new(jwt.clone()))).await;
    let http = Http::new();
    let token = sign(Algorithm::RS256, Some("k1"), &claims());
    assert_eq!(http.bearer(addr, "/me", &token).await.status, 200);

    // The provider drops k1. A token verified before is still answered from the cache (a
    // signature check now would fail), while one never seen is refused.
    server.serve(Some(rsa_jwks(&[("rsa-2.pem", "k2")])));
    jwt.refresh().await.unwrap();
    assert_eq!(http.bearer(addr, "/me", &token).await.status, 200);
    let mut other = claims();
    other["sub"] = "someone-else".into();
    let unseen = sign(Algorithm::RS256, Some("k1"), &other);
    assert_eq!(http.bearer(addr, "/me", &unseen).await.status, 401);

    // The TTL bounds how long a cached verification outlives its key.
    clock.advance(Duration::from_secs(60));
    assert_eq!(http.bearer(addr, "/me", &token).await.status, 401);
}
