//! Every attack is a 401 with an `invalid_token` challenge, and nothing panics.

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use tollgate_auth::jwt::{JwtAuthorizer, JwtProvider, Keys};
use tollgate_auth::AuthLayer;

use crate::*;

/// An app that accepts RS256 from `rsa-1` — and, to make confusion attacks as tempting as
/// possible, lists HS256 among the allowed algorithms too.
async fn rsa_app() -> SocketAddr {
    let jwt = JwtAuthorizer::builder()
        .provider(
            JwtProvider::new(ISSUER, Keys::rsa_pem(key_file("rsa-1.pub.pem")))
                .audience(AUDIENCE)
                .algorithms([Algorithm::RS256, Algorithm::HS256]),
        )
        .build()
        .unwrap();
    serve(app().layer(AuthLayer::new(jwt))).await
}

async fn assert_refused(addr: SocketAddr, token: &str, detail: &str) {
    let reply = Http::new().bearer(addr, "/me", token).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(
        reply.header("www-authenticate"),
        r#"Bearer error="invalid_token""#
    );
    assert_eq!(reply.header("content-type"), "application/problem+json");
    let problem = reply.json();
    assert_eq!(problem["type"], "urn:tollgate:problem:unauthorized");
    assert_eq!(problem["detail"], detail, "{problem}");
    // The refusal never echoes the token.
    assert!(!reply.text().contains(token), "{}", reply.text());
}

fn unsigned(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[tokio::test]
async fn a_valid_token_is_accepted_as_the_baseline() {
    let addr = rsa_app().await;
    let reply = Http::new()
        .bearer(addr, "/me", &sign(Algorithm::RS256, None, &claims()))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["subject"], "user-42");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let addr = rsa_app().await;
    let token = unsigned(&json!({"alg": "none", "typ": "JWT"}), &claims());
    assert_refused(addr, &token, "the token is malformed").await;
    let token = unsigned(&json!({"alg": "None", "typ": "JWT"}), &claims());
    assert_refused(addr, &token, "the token is malformed").await;
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_bytes_is_refused() {
    let addr = rsa_app().await;
    let forged = EncodingKey::from_secret(&key_file("rsa-1.pub.pem"));
    let token = sign_with(Algorithm::HS256, None, &claims(), &forged);
    assert_refused(addr, &token, "the token's algorithm is not accepted").await;
}

#[tokio::test]
async fn expired_tokens_are_refused_beyond_the_leeway() {
    let addr = rsa_app().await;
    let mut expired = claims();
    expired["exp"] = json!(now() - 61);
    assert_refused(
        addr,
        &sign(Algorithm::RS256, None, &expired),
        "the token has expired",
    )
    .await;
}

#[tokio::test]
async fn tokens_not_yet_valid_beyond_the_leeway_are_refused() {
    let addr = rsa_app().await;
    let mut early = claims();
    early["nbf"] = json!(now() + 120);
    assert_refused(
        addr,
        &sign(Algorithm::RS256, None, &early),
        "the token is not valid yet",
    )
    .await;
}

#[tokio::test]
async fn a_wrong_issuer_is_refused() {
    let addr = rsa_app().await;
    let mut other = claims();
    other["iss"] = json!("https://evil.test");
    assert_refused(
        addr,
        &sign(Algorithm::RS256, None, &other),
        "the token's issuer is not accepted",
    )
    .await;
}

#[tokio::test]
async fn a_token_without_a_matching_audience_is_refused() {
    let addr = rsa_app().await;
    let mut other = claims();
    other["aud"] = json!(["billing-api", "search-api"]);
    assert_refused(
        addr,
        &sign(Algorithm::RS256, None, &other),
        "the token is not meant for this audience",
    )
    .await;
    let mut none = claims();
    none.as_object_mut().unwrap().remove("aud");
    assert_refused(
        addr,
        &sign(Algorithm::RS256, None, &none),
        "the token lacks a required claim",
    )
    .await;
}

#[tokio::test]
async fn a_signature_of_another_key_is_refused() {
    let addr = rsa_app().await;
    let other = EncodingKey::from_rsa_pem(&key_file("rsa-2.pem")).unwrap();
    let token = sign_with(Algorithm::RS256, None, &claims(), &other);
    assert_refused(addr, &token, "the token's signature is invalid").await;
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let addr = rsa_app().await;
    let good = sign(Algorithm::RS256, None, &claims());
    let (header, rest) = good.split_once('.').unwrap();
    let cases = [
        "not-a-token".to_owned(),
        "a.b".to_owned(),
        "a.b.c.d".to_owned(),
        format!("{header}.{rest}.extra"),
        format!("!!!.{rest}"),
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode("{not json")),
        format!("{header}.{}.sig", URL_SAFE_NO_PAD.encode("[1,2,3]")),
        format!("{header}.@@@.sig"),
    ];
    for token in cases {
        let reply = Http::new().bearer(addr, "/me", &token).await;
        assert_eq!(reply.status, 401, "{token}: {}", reply.text());
        assert_eq!(
            reply.header("www-authenticate"),
            r#"Bearer error="invalid_token""#
        );
    }
}

#[tokio::test]
async fn oversized_tokens_are_refused_before_decoding() {
    let addr = rsa_app().await;
    let mut big = claims();
    big["padding"] = json!("x".repeat(9 * 1024));
    let token = sign(Algorithm::RS256, None, &big);
    assert_refused(addr, &token, "the token is too large").await;
}

#[tokio::test]
async fn a_token_in_the_query_is_ignored_unless_that_source_is_on() {
    let addr = rsa_app().await;
    let token = sign(Algorithm::RS256, None, &claims());
    let reply = Http::new()
        .get(addr, &format!("/me?access_token={token}"), &[])
        .await;
    assert_eq!(reply.status, 401);
    // No credentials were found, so the challenge carries no error (RFC 6750 §3.1).
    assert_eq!(reply.header("www-authenticate"), "Bearer");
}

#[tokio::test]
async fn a_bad_authorization_header_is_an_invalid_request() {
    let addr = rsa_app().await;
    let reply = Http::new()
        .get(addr, "/me", &[("authorization", "Bearer ")])
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        r#"Bearer error="invalid_request""#
    );
}

#[tokio::test]
async fn a_token_of_non_text_bytes_is_refused_without_panicking() {
    use tower::{Layer, ServiceExt};

    let jwt = JwtAuthorizer::builder()
        .provider(JwtProvider::new(ISSUER, Keys::hmac(SECRET)).audience(AUDIENCE))
        .build()
        .unwrap();
    let inner = tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(
            http_body_util::Empty::<bytes::Bytes>::new(),
        ))
    });
    let service = AuthLayer::new(jwt).layer(inner);
    for value in [
        &b"Bearer \xff\xfe.\x80.abc"[..],
        b"Bearer a\xc3(.b.c",
        b"bearer \xff",
    ] {
        let request = http::Request::get("/")
            .header(
                "authorization",
                http::HeaderValue::from_bytes(value).unwrap(),
            )
            .body(())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 401, "{value:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Bearer error="invalid_token""#
        );
    }
}
