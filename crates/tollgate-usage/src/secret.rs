//! API key secrets: how they are made, recognised, hashed and compared.
//!
//! A key reads `tg_<id>_<secret>`: the `tg_` prefix lets secret scanners (GitHub's, gitleaks)
//! find leaked keys, the id finds the stored key in one lookup, and the secret is 24 base62
//! characters from the operating system's CSPRNG (about 143 bits). The store keeps only the
//! SHA-256 of the whole key, so a key of 38 bytes hashes in one SHA-256 block.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every key tollgate makes starts with.
pub const KEY_PREFIX: &str = "tg_";

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SECRET_CHARS: usize = 24;
const ID_CHARS: usize = 12;
/// Longer values are not keys of ours, and are refused before hashing.
const MAX_KEY_BYTES: usize = 256;

/// A plaintext API key, handed out once when a key is created or rotated.
///
/// It is never stored and never logged: `Debug` prints `Secret(<redacted>)`, and there is no
/// `Display`. Give it to the key's owner with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The plaintext key, to show its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key's hash, as the store keeps it.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.0.as_bytes())
    }

    /// A new key for the key id `id`.
    pub(crate) fn generate(id: &str) -> Result<Self, getrandom::Error> {
        let mut key = String::with_capacity(KEY_PREFIX.len() + id.len() + 1 + SECRET_CHARS);
        key.push_str(KEY_PREFIX);
        key.push_str(id);
        key.push('_');
        key.push_str(&random_base62(SECRET_CHARS)?);
        Ok(Self(key))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A new random key id: 12 base62 characters.
pub(crate) fn generate_id() -> Result<String, getrandom::Error> {
    random_base62(ID_CHARS)
}

/// `len` characters drawn uniformly from base62: bytes of 248 and up are dropped so that every
/// character is equally likely.
fn random_base62(len: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf)?;
        for &byte in buf.iter().filter(|&&b| b < 248) {
            if out.len() == len {
                break;
            }
            out.push(char::from(BASE62[usize::from(byte % 62)]));
        }
    }
    Ok(out)
}

/// Whether `id` may name a key: 1 to 64 characters of `A-Z a-z 0-9 - . _`, starting with a
/// letter or digit (so that no id is a `.` or `..` path segment, which URLs drop).
pub(crate) fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// The key id in a presented key, when it has the shape of one of ours.
#[inline]
pub(crate) fn key_id(presented: &[u8]) -> Option<&str> {
    if presented.len() > MAX_KEY_BYTES {
        return None;
    }
    let rest = presented.strip_prefix(KEY_PREFIX.as_bytes())?;
    let split = rest.iter().rposition(|&b| b == b'_')?;
    let (id, secret) = (&rest[..split], &rest[split + 1..]);
    if secret.is_empty() || !secret.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let id = std::str::from_utf8(id).ok()?;
    is_valid_id(id).then_some(id)
}

/// The SHA-256 of a whole API key: all the store keeps of it.
///
/// Written `sha256:` and 64 hex digits, which is what `printf %s "$KEY" | sha256sum` prints
/// after the prefix, so hashes for a configuration file can be made without tollgate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

/// A key hash that could not be read. The value is not repeated: what was written there may be
/// a key itself, and errors are logged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(r#"expected a key hash like "sha256:" followed by 64 hex digits, found {0}"#)]
pub struct KeyHashError(String);

impl KeyHash {
    /// The hash of the presented key `key`.
    #[inline]
    pub fn of(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    /// Whether `self` and `other` are equal, in time that does not depend on where they differ.
    #[inline]
    pub fn matches(&self, other: &KeyHash) -> bool {
        // Word by word: `subtle` hides each comparison from the optimiser, and four words
        // cost a fraction of thirty-two bytes.
        let words = |hash: &[u8; 32]| -> [u64; 4] {
            std::array::from_fn(|i| {
                let mut word = [0u8; 8];
                word.copy_from_slice(&hash[i * 8..i * 8 + 8]);
                u64::from_ne_bytes(word)
            })
        };
        let (ours, theirs) = (words(&self.0), words(&other.0));
        let equal = ours
            .iter()
            .zip(&theirs)
            .fold(subtle::Choice::from(1), |equal, (a, b)| equal & a.ct_eq(b));
        equal.into()
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({self})")
    }
}

impl FromStr for KeyHash {
    type Err = KeyHashError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = || {
            KeyHashError(if input.starts_with("sha256:") {
                format!("\"sha256:\" and {} other characters", input.len() - 7)
            } else {
                format!("{} characters without the \"sha256:\" prefix", input.len())
            })
        };
        let hex = input.strip_prefix("sha256:").ok_or_else(error)?;
        if hex.len() != 64 {
            return Err(error());
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| error())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| error())?;
        }
        Ok(Self(bytes))
    }
}

impl serde::Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_prefix_the_id_and_enough_entropy() {
        let id = generate_id().unwrap();
        assert_eq!(id.len(), ID_CHARS);
        let secret = Secret::generate(&id).unwrap();
        let key = secret.expose();
        assert!(key.starts_with("tg_"));
        assert_eq!(key_id(key.as_bytes()), Some(id.as_str()));
        let random = &key[KEY_PREFIX.len() + id.len() + 1..];
        assert_eq!(random.len(), SECRET_CHARS);
        assert!((SECRET_CHARS as f64) * 62f64.log2() >= 128.0);
        assert_ne!(Secret::generate(&id).unwrap(), secret);
    }

    #[test]
    fn key_ids_may_hold_underscores_but_secrets_may_not() {
        assert_eq!(key_id(b"tg_team_a_Abc123"), Some("team_a"));
        assert_eq!(key_id(b"tg_a_"), None);
        assert_eq!(key_id(b"tg__abc"), None);
        assert_eq!(key_id(b"tg_.._abc"), None);
        assert_eq!(key_id(b"tg_-a_abc"), None);
        assert_eq!(key_id(b"tg_a_b-c"), None);
        assert_eq!(key_id(b"sk_a_abc"), None);
        assert_eq!(key_id(b"tg_\xff_abc"), None);
        assert_eq!(key_id(&[b'a'; 300]), None);
    }

    #[test]
    fn hashes_read_what_sha256sum_prints() {
        // printf %s tg_demo_abc | sha256sum
        let hash: KeyHash =
            "sha256:4ef7303f4cb824eef2ae3f88a9ed54bac663c1aa5c30e1680404fe3d0a890a1c"
                .parse()
                .unwrap();
        let made = KeyHash::of(b"tg_demo_abc");
        assert!(made.matches(&hash));
        assert!(made.matches(&made.to_string().parse().unwrap()));
        assert!(!made.matches(&KeyHash::of(b"tg_demo_abd")));
        for bad in [
            "5ab0",
            "sha256:xyz",
            "sha1:00",
            &format!("sha256:{}", "é".repeat(32)),
        ] {
            let error = bad.parse::<KeyHash>().unwrap_err().to_string();
            assert!(error.contains("expected a key hash"), "{error}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::generate("x").unwrap();
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }
}
