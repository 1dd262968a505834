//! tower-http's CORS layer from a configuration file.

use http::{HeaderName, HeaderValue, Method};
use tollgate_core::HumanDuration;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer, ExposeHeaders};

/// A CORS setting that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorsConfigError {
    /// A value that is not a valid origin, method or header name.
    #[error("{field}: {value:?} is not a valid {what}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
        /// What it should be.
        what: &'static str,
    },
    /// `"*"` beside credentials, which browsers refuse (and tower-http would panic on).
    #[error("{field}: \"*\" cannot be used with allow_credentials; list the values")]
    WildcardWithCredentials {
        /// The field.
        field: &'static str,
    },
}

/// CORS as configuration, built into tower-http's `CorsLayer`. `"*"` in a list means any.
///
/// ```
/// let config: tollgate_access::CorsConfig = serde_json::from_value(serde_json::json!({
///     "allow_origins": ["https://shop.example"],
///     "allow_methods": ["GET", "POST"],
///     "allow_headers": ["authorization", "x-api-key", "content-type"],
///     "max_age": "10m"
/// })).unwrap();
/// let cors = config.build().unwrap();
/// # let _ = cors;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed (`https://shop.example`), or `["*"]`.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Methods allowed, or `["*"]` (default: `GET`, `HEAD`, `POST`).
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Request headers allowed, or `["*"]`.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Whether cookies and credentials are allowed (then no list may be `"*"`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may reuse a preflight's answer.
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
}

fn any(values: &[String]) -> bool {
    values.iter().any(|value| value == "*")
}

fn parse<T>(
    field: &'static str,
    what: &'static str,
    values: &[String],
    read: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, CorsConfigError> {
    values
        .iter()
        .map(|value| {
            read(value).ok_or_else(|| CorsConfigError::Invalid {
                field,
                value: value.clone(),
                what,
            })
        })
        .collect()
}

impl CorsConfig {
    /// The layer.
    ///
    /// # Errors
    ///
    /// A value that is not an origin, method or header name, or `"*"` with credentials.
    pub fn build(&self) -> Result<CorsLayer, CorsConfigError> {
        if self.allow_credentials {
            for (field, values) in [
                ("allow_origins", &self.allow_origins),
                ("allow_methods", &self.allow_methods),
                ("allow_headers", &self.allow_headers),
                ("expose_headers", &self.expose_headers),
            ] {
                if any(values) {
                    return Err(CorsConfigError::WildcardWithCredentials { field });
                }
            }
        }
        let origins = if any(&self.allow_origins) {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(parse(
                "allow_origins",
                "origin",
                &self.allow_origins,
                |v| {
                    HeaderValue::from_str(v)
                        .ok()
                        .filter(|_| v.contains("://") && !v.ends_with('/'))
                },
            )?)
        };
        let methods = if any(&self.allow_methods) {
            AllowMethods::any()
        } else if self.allow_methods.is_empty() {
            AllowMethods::list([Method::GET, Method::HEAD, Method::POST])
        } else {
            AllowMethods::list(parse(
                "allow_methods",
                "method",
                &self.allow_methods,
                |v| Method::from_bytes(v.as_bytes()).ok(),
            )?)
        };
        let header = |v: &str| HeaderName::from_bytes(v.as_bytes()).ok();
        let headers = if any(&self.allow_headers) {
            AllowHeaders::any()
        } else {
            AllowHeaders::list(parse(
                "allow_headers",
                "header name",
                &self.allow_headers,
                header,
            )?)
        };
        let exposed = if any(&self.expose_headers) {
            ExposeHeaders::any()
        } else {
            ExposeHeaders::list(parse(
                "expose_headers",
                "header name",
                &self.expose_headers,
                header,
            )?)
        };
        let mut layer = CorsLayer::new()
            .allow_origin(origins)
            .allow_methods(methods)
            .allow_headers(headers)
            .expose_headers(exposed)
            .allow_credentials(self.allow_credentials);
        if let Some(max_age) = self.max_age {
            layer = layer.max_age(max_age.0);
        }
        Ok(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_with_credentials_and_bad_values_are_refused_by_field() {
        let config = CorsConfig {
            allow_origins: vec!["*".into()],
            allow_credentials: true,
            ..CorsConfig::default()
        };
        assert_eq!(
            config.build().unwrap_err().to_string(),
            "allow_origins: \"*\" cannot be used with allow_credentials; list the values"
        );
        let config = CorsConfig {
            allow_origins: vec!["shop.example".into()],
            ..CorsConfig::default()
        };
        assert_eq!(
            config.build().unwrap_err().to_string(),
            "allow_origins: \"shop.example\" is not a valid origin"
        );
        let config = CorsConfig {
            allow_headers: vec!["x api key".into()],
            ..CorsConfig::default()
        };
        assert!(config.build().is_err());
    }
}
