//! The authorizer layer and the JWT authorizer from a configuration file.

use std::collections::BTreeMap;

use serde::Deserialize;
use tollgate_core::RouteTable;

use crate::{AuthError, AuthLayer, Authorizer, RoutePolicy};

/// An [`AuthLayer`]'s policies as configuration: per-route policies, the default policy, and
/// claim-to-header mappings. Unknown fields are refused.
///
/// ```
/// use tollgate_auth::AuthConfig;
///
/// let config: AuthConfig = serde_json::from_str(r#"{
///     "routes": {
///         "GET /health": { "anonymous": true },
///         "POST /orders": { "all_of": ["orders:write"] }
///     },
///     "claim_headers": { "sub": "x-user-id" }
/// }"#).unwrap();
/// # let _ = config;
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Policies by route (`"GET /orders/{id}"`).
    #[serde(default)]
    pub routes: RouteTable<RoutePolicy>,
    /// The policy of requests that match no route (default: credentials required).
    #[serde(default)]
    pub default: RoutePolicy,
    /// Claims copied into request headers, `claim: header`.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
}

impl AuthConfig {
    /// Builds the layer around `authorizer`.
    pub fn build<A: Authorizer>(self, authorizer: A) -> Result<AuthLayer<A>, AuthError> {
        let mut builder = AuthLayer::builder(authorizer)
            .routes(self.routes)
            .default_policy(self.default);
        for (claim, header) in self.claim_headers {
            builder = builder.claim_header(claim, header);
        }
        builder.build()
    }
}

#[cfg(feature = "jwt")]
pub use self::jwt::{JwtConfig, KeysConfig, ProviderConfig};

#[cfg(feature = "jwt")]
mod jwt {
    use std::path::PathBuf;

    use serde::Deserialize;
    use tollgate_core::HumanDuration;

    use crate::jwt::{
        Algorithm, JwtAuthorizer, JwtError, JwtProvider, Keys, TokenSource, DEFAULT_CACHE_CAPACITY,
        DEFAULT_MAX_TOKEN_BYTES,
    };

    /// A [`JwtAuthorizer`] as configuration. Durations read as `30s`, `5m`, `1h`.
    ///
    /// ```
    /// use tollgate_auth::JwtConfig;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config: JwtConfig = serde_json::from_str(r#"{
    ///     "providers": [{
    ///         "issuer": "https://login.example.com/",
    ///         "audiences": ["orders-api"],
    ///         "algorithms": ["RS256"],
    ///         "keys": { "jwks_url": "https://login.example.com/.well-known/jwks.json" }
    ///     }],
    ///     "cache_ttl": "2m"
    /// }"#).unwrap();
    /// let authorizer = config.build().unwrap();
    /// # let _ = authorizer;
    /// # }
    /// ```
    #[derive(Clone, Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct JwtConfig {
        /// The identity providers.
        pub providers: Vec<ProviderConfig>,
        /// Where tokens are looked for (default: `["bearer"]`).
        #[serde(default)]
        pub token_sources: Option<Vec<TokenSource>>,
        /// The largest token accepted, in bytes (default 8192).
        #[serde(default)]
        pub max_token_bytes: Option<usize>,
        /// How long a verified token is remembered (default `5m`; `0` turns the cache off).
        #[serde(default)]
        pub cache_ttl: Option<HumanDuration>,
        /// How many verified tokens are remembered (default 10 000).
        #[serde(default)]
        pub cache_capacity: Option<u64>,
        /// How often JWKS URLs are fetched again (default `10m`).
        #[serde(default)]
        pub poll_interval: Option<HumanDuration>,
        /// The shortest time between refetches on unknown `kid`s (default `30s`).
        #[serde(default)]
        pub refetch_interval: Option<HumanDuration>,
        /// How long a JWKS fetch may take (default `5s`).
        #[serde(default)]
        pub fetch_timeout: Option<HumanDuration>,
    }

    /// One identity provider as configuration.
    #[derive(Clone, Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ProviderConfig {
        /// The `iss` its tokens carry.
        pub issuer: String,
        /// Audiences accepted; a token must hold one.
        #[serde(default)]
        pub audiences: Vec<String>,
        /// Accept any audience (default `false`).
        #[serde(default)]
        pub any_audience: bool,
        /// The algorithm allow-list (default: what the keys can verify).
        #[serde(default)]
        pub algorithms: Vec<Algorithm>,
        /// Clock skew allowed (default `60s`).
        #[serde(default)]
        pub leeway: Option<HumanDuration>,
        /// The oldest `iat` accepted.
        #[serde(default)]
        pub max_age: Option<HumanDuration>,
        /// Claims a token must carry.
        #[serde(default)]
        pub required_claims: Vec<String>,
        /// Where the keys come from.
        pub keys: KeysConfig,
    }

    /// Where a provider's keys come from. An HMAC secret is read from an environment
    /// variable or a file, so it never sits in the configuration.
    #[derive(Clone, Debug, Deserialize)]
    #[serde(rename_all = "snake_case", deny_unknown_fields)]
    pub enum KeysConfig {
        /// `{ "hmac_secret_env": "JWT_SECRET" }`
        HmacSecretEnv(String),
        /// `{ "hmac_secret_file": "/run/secrets/jwt" }`: the file's contents, without a
        /// trailing newline.
        HmacSecretFile(PathBuf),
        /// `{ "rsa_pem_file": "keys/idp.pem" }`
        RsaPemFile(PathBuf),
        /// `{ "ec_pem_file": "keys/idp.pem" }`
        EcPemFile(PathBuf),
        /// `{ "ed_pem_file": "keys/idp.pem" }`
        EdPemFile(PathBuf),
        /// `{ "jwk_set_file": "keys/jwks.json" }`
        JwkSetFile(PathBuf),
        /// `{ "jwks_url": "https://…" }`
        JwksUrl(String),
        /// `"discovery"`: the issuer's OIDC discovery document names the JWKS URL.
        Discovery,
    }

    impl KeysConfig {
        fn keys(&self) -> Result<Keys, JwtError> {
            let pem = |path: &PathBuf| {
                std::fs::read(path).map_err(|error| JwtError::KeyFile {
                    path: path.clone(),
                    error,
                })
            };
            Ok(match self {
                Self::HmacSecretEnv(name) => {
                    let secret = std::env::var(name).map_err(|_| {
                        JwtError::InvalidKey(format!("environment variable {name:?} is not set"))
                    })?;
                    Keys::hmac(secret)
                }
                Self::HmacSecretFile(path) => {
                    let secret = pem(path)?;
                    let end = secret.len()
                        - secret
                            .iter()
                            .rev()
                            .take_while(|b| matches!(b, b'\n' | b'\r'))
                            .count();
                    Keys::hmac(&secret[..end])
                }
                Self::RsaPemFile(path) => Keys::rsa_pem(pem(path)?),
                Self::EcPemFile(path) => Keys::ec_pem(pem(path)?),
                Self::EdPemFile(path) => Keys::ed_pem(pem(path)?),
                Self::JwkSetFile(path) => Keys::jwk_set_file(path),
                Self::JwksUrl(url) => Keys::jwks_url(url),
                Self::Discovery => Keys::discovery(),
            })
        }
    }

    impl JwtConfig {
        /// Builds the authorizer (inside a tokio runtime when a provider uses a JWKS URL).
        pub fn build(self) -> Result<JwtAuthorizer, JwtError> {
            let mut builder = JwtAuthorizer::builder()
                .max_token_bytes(self.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES))
                .cache_capacity(self.cache_capacity.unwrap_or(DEFAULT_CACHE_CAPACITY));
            if let Some(sources) = self.token_sources {
                builder = builder.token_sources(sources);
            }
            if let Some(ttl) = self.cache_ttl {
                builder = builder.cache_ttl(ttl.0);
            }
            if let Some(interval) = self.poll_interval {
                builder = builder.poll_interval(interval.0);
            }
            if let Some(interval) = self.refetch_interval {
                builder = builder.refetch_interval(interval.0);
            }
            if let Some(timeout) = self.fetch_timeout {
                builder = builder.fetch_timeout(timeout.0);
            }
            for provider in self.providers {
                let mut config = JwtProvider::new(provider.issuer, provider.keys.keys()?)
                    .algorithms(provider.algorithms)
                    .leeway(provider.leeway.map_or(crate::jwt::DEFAULT_LEEWAY, |l| l.0));
                for audience in provider.audiences {
                    config = config.audience(audience);
                }
                if provider.any_audience {
                    config = config.any_audience();
                }
                if let Some(age) = provider.max_age {
                    config = config.max_age(age.0);
                }
                for claim in provider.required_claims {
                    config = config.require_claim(claim);
                }
                builder = builder.provider(config);
            }
            builder.build()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn errors_name_the_field_and_unknown_fields_are_refused() {
            let error =
                serde_json::from_str::<JwtConfig>(r#"{"providers": [], "cache_ttl": "thirty"}"#)
                    .unwrap_err();
            assert!(error.to_string().contains(r#"found "thirty""#), "{error}");
            let error = serde_json::from_str::<JwtConfig>(
                r#"{"providers": [{"issuer": "x", "keys": "discovery", "audience": "a"}]}"#,
            )
            .unwrap_err();
            assert!(
                error.to_string().contains("unknown field `audience`"),
                "{error}"
            );
        }

        #[test]
        fn an_hmac_secret_comes_from_the_environment() {
            let config: JwtConfig = serde_json::from_str(
                r#"{"providers": [{"issuer": "x", "audiences": ["a"], "keys": {"hmac_secret_env": "TOLLGATE_TEST_UNSET_SECRET"}}]}"#,
            )
            .unwrap();
            let error = config.build().unwrap_err();
            assert!(
                error.to_string().contains("TOLLGATE_TEST_UNSET_SECRET"),
                "{error}"
            );
        }

        #[test]
        fn a_static_provider_builds_with_its_settings() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa-1.pub.pem");
            let config: JwtConfig = serde_json::from_str(&format!(
                r#"{{"providers": [{{"issuer": "x", "audiences": ["a"], "algorithms": ["RS256"],
                    "leeway": "10s", "max_age": "1h", "keys": {{"rsa_pem_file": "{path}"}}}}],
                    "token_sources": ["bearer", {{"cookie": "id"}}], "cache_ttl": "0"}}"#
            ))
            .unwrap();
            assert!(config.build().is_ok());
        }
    }
}
