//! One JWT issuer for the whole-stack tests: an HS256 authorizer and tokens it accepts.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use tollgate::auth::jwt::{JwtAuthorizer, JwtProvider, Keys};

/// The issuer's HMAC secret.
pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// An authorizer for tokens from `https://issuer.test` to the audience `api`.
pub fn jwt() -> JwtAuthorizer {
    JwtAuthorizer::builder()
        .provider(JwtProvider::new("https://issuer.test", Keys::hmac(SECRET)).audience("api"))
        .build()
        .unwrap()
}

/// `Bearer <a token for subject>`, valid for ten minutes.
pub fn bearer(subject: &str) -> String {
    bearer_with_claims(json!({ "sub": subject }))
}

/// `Bearer <a token for subject with the space-separated scopes>`.
pub fn bearer_with_scopes(subject: &str, scopes: &str) -> String {
    bearer_with_claims(json!({ "sub": subject, "scope": scopes }))
}

fn bearer_with_claims(mut claims: serde_json::Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    claims["iss"] = json!("https://issuer.test");
    claims["aud"] = json!("api");
    claims["exp"] = json!(now + 600);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    format!("Bearer {token}")
}
