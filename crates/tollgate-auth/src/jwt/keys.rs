use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};

use super::JwtError;

/// The shortest HMAC secret accepted: 32 bytes, the output size of SHA-256 (RFC 7518 §3.2).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Where a provider's verification keys come from.
///
/// Static keys are read when the authorizer is built; a JWKS URL (given, or found through
/// OIDC discovery) is fetched at start-up, polled, and refetched when a token names a key it
/// does not hold.
#[derive(Clone)]
pub struct Keys(pub(super) KeysKind);

#[derive(Clone)]
pub(super) enum KeysKind {
    Hmac(Vec<u8>),
    Pem(AlgorithmFamily, Vec<u8>),
    JwkSet(String),
    JwkSetFile(PathBuf),
    JwksUrl(String),
    Discovery,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match &self.0 {
            KeysKind::Hmac(_) => f.write_str("Keys::Hmac(<redacted>)"),
            KeysKind::Pem(family, _) => write!(f, "Keys::Pem({family:?})"),
            KeysKind::JwkSet(_) => f.write_str("Keys::JwkSet(..)"),
            KeysKind::JwkSetFile(path) => write!(f, "Keys::JwkSetFile({path:?})"),
            KeysKind::JwksUrl(url) => write!(f, "Keys::JwksUrl({url:?})"),
            KeysKind::Discovery => f.write_str("Keys::Discovery"),
        }
    }
}

impl Keys {
    /// A shared HMAC secret (HS256/384/512), at least [`MIN_HMAC_SECRET_BYTES`] long.
    pub fn hmac(secret: impl AsRef<[u8]>) -> Self {
        Self(KeysKind::Hmac(secret.as_ref().to_vec()))
    }

    /// An RSA public key in PEM (RS* and PS*).
    pub fn rsa_pem(pem: impl AsRef<[u8]>) -> Self {
        Self(KeysKind::Pem(AlgorithmFamily::Rsa, pem.as_ref().to_vec()))
    }

    /// An EC public key (P-256 or P-384) in PEM (ES256, ES384).
    pub fn ec_pem(pem: impl AsRef<[u8]>) -> Self {
        Self(KeysKind::Pem(AlgorithmFamily::Ec, pem.as_ref().to_vec()))
    }

    /// An Ed25519 public key in PEM (EdDSA).
    pub fn ed_pem(pem: impl AsRef<[u8]>) -> Self {
        Self(KeysKind::Pem(AlgorithmFamily::Ed, pem.as_ref().to_vec()))
    }

    /// A JWK set (`{"keys": [...]}`) given as JSON text.
    pub fn jwk_set(json: impl Into<String>) -> Self {
        Self(KeysKind::JwkSet(json.into()))
    }

    /// A JWK set read from a file when the authorizer is built.
    pub fn jwk_set_file(path: impl Into<PathBuf>) -> Self {
        Self(KeysKind::JwkSetFile(path.into()))
    }

    /// A JWKS URL, fetched at start-up and kept fresh.
    pub fn jwks_url(url: impl Into<String>) -> Self {
        Self(KeysKind::JwksUrl(url.into()))
    }

    /// The JWKS URL named by the issuer's OIDC discovery document,
    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery() -> Self {
        Self(KeysKind::Discovery)
    }

    pub(super) fn is_remote(&self) -> bool {
        matches!(self.0, KeysKind::JwksUrl(_) | KeysKind::Discovery)
    }
}

/// One verification key with the validation that goes with it: the provider's rules, and the
/// algorithms both the provider allows and the key's family (and its JWK `alg`) permits. So a
/// token's `alg` can never make an RSA public key serve as an HMAC secret.
pub(crate) struct VerifyKey {
    pub(crate) key: DecodingKey,
    pub(crate) validation: Validation,
}

/// A provider's keys: by `kid`, and those without one.
#[derive(Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, VerifyKey>,
    unnamed: Vec<VerifyKey>,
}

impl KeySet {
    /// The only key, when the set holds exactly one key and it has no `kid`: such a set
    /// verifies tokens without reading their header first.
    pub(crate) fn sole_unnamed(&self) -> Option<&VerifyKey> {
        match (&self.unnamed[..], self.by_kid.is_empty()) {
            ([only], true) => Some(only),
            _ => None,
        }
    }

    /// The key for a token's `kid` (or, for a token without one, the set's only key usable
    /// with `alg`).
    pub(crate) fn select(&self, kid: Option<&str>, alg: Algorithm) -> Option<&VerifyKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None => {
                let mut usable = self
                    .unnamed
                    .iter()
                    .chain(self.by_kid.values())
                    .filter(|key| key.validation.algorithms.contains(&alg));
                match (usable.next(), usable.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    fn add(&mut self, kid: Option<String>, key: VerifyKey) {
        match kid {
            Some(kid) => {
                self.by_kid.insert(kid, key);
            }
            None => self.unnamed.push(key),
        }
    }

    /// Builds the set of static keys.
    pub(super) fn from_static(keys: &Keys, template: &Validation) -> Result<Self, JwtError> {
        let mut set = Self::default();
        match &keys.0 {
            KeysKind::Hmac(secret) => {
                if secret.len() < MIN_HMAC_SECRET_BYTES {
                    return Err(JwtError::WeakSecret(secret.len()));
                }
                let key = DecodingKey::from_secret(secret);
                set.add(
                    None,
                    verify_key(key, template, None).ok_or(JwtError::NoUsableKey)?,
                );
            }
            KeysKind::Pem(family, pem) => {
                let key = match family {
                    AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
                    AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
                    _ => DecodingKey::from_ed_pem(pem),
                }
                .map_err(|error| JwtError::InvalidKey(error.to_string()))?;
                set.add(
                    None,
                    verify_key(key, template, None).ok_or(JwtError::NoUsableKey)?,
                );
            }
            KeysKind::JwkSet(json) => set = Self::from_jwks_json(json.as_bytes(), template)?,
            KeysKind::JwkSetFile(path) => {
                let json = std::fs::read(path).map_err(|error| JwtError::KeyFile {
                    path: path.clone(),
                    error,
                })?;
                set = Self::from_jwks_json(&json, template)?;
            }
            KeysKind::JwksUrl(_) | KeysKind::Discovery => {}
        }
        Ok(set)
    }

    /// Builds a set from a JWKS document. Keys for encryption, of unknown types, or usable
    /// with none of the provider's algorithms are skipped; a set left with no key is an error.
    pub(crate) fn from_jwks_json(json: &[u8], template: &Validation) -> Result<Self, JwtError> {
        let jwks: JwkSet = serde_json::from_slice(json)
            .map_err(|error| JwtError::InvalidJwks(error.to_string()))?;
        let mut set = Self::default();
        for jwk in &jwks.keys {
            match jwk_key(jwk, template) {
                Some(key) => set.add(jwk.common.key_id.clone(), key),
                None => tracing::debug!(
                    kid = jwk.common.key_id,
                    "tollgate auth: JWK skipped (not a usable signing key)"
                ),
            }
        }
        if set.len() == 0 {
            return Err(JwtError::NoUsableKey);
        }
        Ok(set)
    }
}

fn jwk_key(jwk: &Jwk, template: &Validation) -> Option<VerifyKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) || !jwk.is_supported() {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        Some(alg) => Some(Algorithm::from_str(&format!("{alg:?}")).ok()?),
        None => None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    verify_key(key, template, alg)
}

/// The key with the template's validation narrowed to the algorithms it can verify; `None`
/// when that leaves none.
fn verify_key(
    key: DecodingKey,
    template: &Validation,
    alg: Option<Algorithm>,
) -> Option<VerifyKey> {
    let family = key.family();
    let mut validation = template.clone();
    validation
        .algorithms
        .retain(|a| a.family() == family && alg.is_none_or(|only| only == *a));
    (!validation.algorithms.is_empty()).then_some(VerifyKey { key, validation })
}
