use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use tollgate_core::Principal;

use super::jwks::RemoteKeys;
use super::keys::{KeySet, Keys, VerifyKey};
use super::JwtError;

/// The clock skew allowed on `exp`, `nbf` and `iat` unless told otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// One identity provider: who issues tokens, for whom, signed how, with which keys.
///
/// ```
/// use std::time::Duration;
/// use jsonwebtoken::Algorithm;
/// use tollgate_auth::jwt::{JwtProvider, Keys};
///
/// let provider = JwtProvider::new("https://login.example.com/", Keys::discovery())
///     .audience("orders-api")
///     .algorithms([Algorithm::RS256, Algorithm::ES256])
///     .max_age(Duration::from_secs(3600))
///     .require_claim("tenant");
/// # let _ = provider;
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct JwtProvider {
    pub(super) issuer: String,
    pub(super) audiences: Vec<String>,
    pub(super) any_audience: bool,
    pub(super) algorithms: Vec<Algorithm>,
    pub(super) leeway: Duration,
    pub(super) max_age: Option<Duration>,
    pub(super) required_claims: Vec<String>,
    pub(super) keys: Keys,
}

impl JwtProvider {
    /// A provider whose tokens carry `iss` = `issuer`, verified with `keys`.
    ///
    /// It needs at least one [`audience`](Self::audience) (or an explicit
    /// [`any_audience`](Self::any_audience)). Allowed algorithms default to those the keys can
    /// verify among RS256, PS256, ES256, ES384, EdDSA and, for an HMAC secret, HS256.
    pub fn new(issuer: impl Into<String>, keys: Keys) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: Vec::new(),
            any_audience: false,
            algorithms: Vec::new(),
            leeway: DEFAULT_LEEWAY,
            max_age: None,
            required_claims: Vec::new(),
            keys,
        }
    }

    /// Accepts tokens whose `aud` holds this audience (or any other one added).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Accepts tokens for any audience, or none. Only for a provider whose tokens are meant for
    /// this API alone: otherwise a token issued for another service is accepted here too.
    pub fn any_audience(mut self) -> Self {
        self.any_audience = true;
        self
    }

    /// The algorithms accepted (the token's `alg` is never trusted beyond this list; `none`
    /// is never accepted).
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algorithms.into_iter().collect();
        self
    }

    /// The clock skew allowed on `exp`, `nbf` and `iat`: [`DEFAULT_LEEWAY`] unless set.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Refuses tokens issued (`iat`) longer ago than this; such tokens must carry `iat`.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Refuses tokens without this claim.
    pub fn require_claim(mut self, claim: impl Into<String>) -> Self {
        self.required_claims.push(claim.into());
        self
    }

    /// The validation every key of this provider starts from; each key narrows the algorithms
    /// to those of its family.
    pub(super) fn template(&self) -> Result<Validation, JwtError> {
        if self.audiences.is_empty() && !self.any_audience {
            return Err(JwtError::NoAudience(self.issuer.clone()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = if self.algorithms.is_empty() {
            vec![
                Algorithm::RS256,
                Algorithm::PS256,
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::EdDSA,
                Algorithm::HS256,
            ]
        } else {
            self.algorithms.clone()
        };
        // Times are checked against the authorizer's clock after decoding, not jsonwebtoken's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_issuer(&[&self.issuer]);
        let mut required = vec!["exp", "iss"];
        if self.any_audience {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Ok(validation)
    }
}

/// Where a built provider's keys are.
pub(super) enum KeySource {
    Static(KeySet),
    Remote(Arc<RemoteKeys>),
}

/// A provider ready to verify.
pub(super) struct Provider {
    pub(super) issuer: String,
    leeway: u64,
    max_age: Option<u64>,
    required_claims: Box<[String]>,
    pub(super) keys: KeySource,
}

/// A verified token.
pub(super) struct Verified {
    pub(super) principal: Principal,
    /// `exp`, in seconds since the epoch.
    pub(super) exp: u64,
}

/// Why a token was refused, in the general terms a client may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    TooLarge,
    Malformed,
    Algorithm,
    Signature,
    UnknownKey,
    NoKeys,
    UnknownIssuer,
    Issuer,
    Audience,
    Expired,
    NotYetValid,
    TooOld,
    MissingClaim,
}

impl Failure {
    pub(super) fn detail(self) -> &'static str {
        match self {
            Self::TooLarge => "the token is too large",
            Self::Malformed => "the token is malformed",
            Self::Algorithm => "the token's algorithm is not accepted",
            Self::Signature => "the token's signature is invalid",
            Self::UnknownKey => "the token is signed with an unknown key",
            Self::NoKeys => "the identity provider's keys are not available yet",
            Self::UnknownIssuer | Self::Issuer => "the token's issuer is not accepted",
            Self::Audience => "the token is not meant for this audience",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::TooOld => "the token was issued too long ago",
            Self::MissingClaim => "the token lacks a required claim",
        }
    }

    fn from_jwt(error: &jsonwebtoken::errors::Error) -> Self {
        match error.kind() {
            ErrorKind::InvalidSignature => Self::Signature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::InvalidKeyFormat => Self::Algorithm,
            ErrorKind::InvalidIssuer => Self::Issuer,
            ErrorKind::InvalidAudience => Self::Audience,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::MissingRequiredClaim(_) => Self::MissingClaim,
            _ => Self::Malformed,
        }
    }
}

impl Provider {
    pub(super) fn new(config: &JwtProvider, keys: KeySource) -> Self {
        Self {
            issuer: config.issuer.clone(),
            leeway: config.leeway.as_secs(),
            max_age: config.max_age.map(|age| age.as_secs()),
            required_claims: config.required_claims.clone().into(),
            keys,
        }
    }

    /// Verifies `token` with this provider's keys at `now` (seconds since the epoch).
    pub(super) fn verify(&self, token: &[u8], now: u64) -> Result<Verified, Failure> {
        let remote;
        let keys = match &self.keys {
            KeySource::Static(keys) => keys,
            KeySource::Remote(source) => {
                remote = source.current().ok_or(Failure::NoKeys)?;
                &*remote
            }
        };
        let key = match keys.sole_unnamed() {
            Some(key) => key,
            None => {
                let header =
                    jsonwebtoken::decode_header(token).map_err(|e| Failure::from_jwt(&e))?;
                keys.select(header.kid.as_deref(), header.alg)
                    .ok_or(if header.kid.is_some() {
                        Failure::UnknownKey
                    } else {
                        Failure::Algorithm
                    })?
            }
        };
        self.decode(token, key, now)
    }

    fn decode(&self, token: &[u8], key: &VerifyKey, now: u64) -> Result<Verified, Failure> {
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)
            .map_err(|error| {
                tracing::debug!(%error, issuer = self.issuer, "tollgate auth: token refused");
                Failure::from_jwt(&error)
            })?
            .claims;
        let exp = seconds(claims.get("exp")).ok_or(Failure::Malformed)?;
        // RFC 7519 §4.1.4: not accepted on or after `exp`, give or take the leeway.
        if now >= exp.saturating_add(self.leeway) {
            return Err(Failure::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = seconds(Some(nbf)).ok_or(Failure::Malformed)?;
            if nbf > now.saturating_add(self.leeway) {
                return Err(Failure::NotYetValid);
            }
        }
        if let Some(max_age) = self.max_age {
            let iat = seconds(claims.get("iat")).ok_or(Failure::MissingClaim)?;
            if iat > now.saturating_add(self.leeway) {
                return Err(Failure::NotYetValid);
            }
            if now.saturating_sub(iat) > max_age.saturating_add(self.leeway) {
                return Err(Failure::TooOld);
            }
        }
        if self
            .required_claims
            .iter()
            .any(|claim| !claims.contains_key(claim))
        {
            return Err(Failure::MissingClaim);
        }
        Ok(Verified {
            principal: principal(claims),
            exp,
        })
    }
}

/// A NumericDate claim as whole seconds (fractions are allowed by RFC 7519 and dropped).
fn seconds(value: Option<&Value>) -> Option<u64> {
    let value = value?;
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| s as u64)
    })
}

/// The principal of verified claims: `sub`, the scopes of `scope` (space-separated) or `scp`
/// (an array, or a space-separated string), and every claim.
fn principal(claims: Map<String, Value>) -> Principal {
    let mut builder = Principal::builder();
    if let Some(Value::String(subject)) = claims.get("sub") {
        builder = builder.subject(subject.as_str());
    }
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(list)) => {
                builder = builder.scopes(list.split_ascii_whitespace());
            }
            Some(Value::Array(list)) => {
                builder = builder.scopes(list.iter().filter_map(Value::as_str));
            }
            _ => {}
        }
    }
    builder.claims(claims).build()
}
