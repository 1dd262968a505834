use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, Uri};
use sha2::{Digest, Sha256};
use tollgate_core::{Principal, Stage};

use crate::policy::{CompiledPolicy, QueryRule, Sharing};

/// Where a cached response is found: the method class, stage, path, the chosen query parameters
/// and request headers, and — unless the route is shared — whose response it is.
///
/// The values of the headers a stored response's `Vary` names are matched within the entry, so
/// one key holds every variant of a resource for one caller.
#[derive(Clone)]
pub struct CacheKey {
    // Hashed once, with a per-process random seed: the tables that hold keys then rehash a
    // u64, not the key's bytes, when they grow or clean up.
    hash: u64,
    bytes: Arc<[u8]>,
}

impl CacheKey {
    /// The key's bytes: a stable, unambiguous encoding, for stores that keep entries elsewhere.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A key from bytes that [`as_bytes`](Self::as_bytes) returned.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        static SEED: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
        Self {
            hash: SEED.get_or_init(Default::default).hash_one(bytes),
            bytes: bytes.into(),
        }
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.bytes == other.bytes
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({:?})", String::from_utf8_lossy(&self.bytes))
    }
}

/// A key being built for one request.
pub(crate) struct KeyBuf {
    bytes: Vec<u8>,
    /// Whether the key names a principal, which makes `private` responses storable.
    pub(crate) per_principal: bool,
}

impl KeyBuf {
    pub(crate) fn to_key(&self) -> CacheKey {
        CacheKey::from_bytes(&self.bytes)
    }

    // Each part is a tag and a length, so no choice of values can make two keys collide.
    fn part(&mut self, tag: u8, value: &[u8]) {
        self.bytes.push(tag);
        self.bytes
            .extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
        self.bytes.extend_from_slice(value);
    }
}

/// Builds the key of a GET or HEAD request under `policy`.
pub(crate) fn build(
    uri: &Uri,
    headers: &HeaderMap,
    extensions: &http::Extensions,
    policy: &CompiledPolicy,
    credential_headers: &[HeaderName],
) -> KeyBuf {
    let mut key = KeyBuf {
        bytes: Vec::with_capacity(64 + uri.path().len()),
        per_principal: false,
    };
    // GET and HEAD share entries: a HEAD is answered from the GET response's head.
    key.bytes.push(b'G');
    if let Some(stage) = extensions.get::<Stage>() {
        key.part(b's', stage.name().as_bytes());
        key.part(b'd', stage.deployment().as_bytes());
    }
    // One router may serve several hosts; their resources are different resources.
    let host = uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| headers.get(http::header::HOST).map(|h| h.as_bytes()));
    if let Some(host) = host {
        key.part(b'a', host);
    }
    key.part(b'p', uri.path().as_bytes());
    match (&policy.query, uri.query()) {
        (QueryRule::Ignore, _) | (_, None) => {}
        (rule, Some(query)) => {
            for (name, value) in sorted_query(query, rule) {
                key.part(b'q', name.as_bytes());
                key.part(b'v', value.as_bytes());
            }
        }
    }
    for name in policy.headers.iter() {
        key.part(b'h', name.as_str().as_bytes());
        for value in headers.get_all(name) {
            key.part(b'v', value.as_bytes());
        }
    }
    if policy.sharing == Sharing::PerPrincipal {
        key.per_principal = principal_part(
            &mut key,
            extensions.get::<Principal>(),
            headers,
            credential_headers,
        );
    }
    key
}

/// Adds whose request this is; false for an anonymous one.
fn principal_part(
    key: &mut KeyBuf,
    principal: Option<&Principal>,
    headers: &HeaderMap,
    credential_headers: &[HeaderName],
) -> bool {
    if let Some(principal) = principal {
        let subject = principal.subject();
        let api_key = principal.api_key_id();
        if subject.is_some() || api_key.is_some() {
            if let Some(subject) = subject {
                // Two issuers may hand out the same subject to different people.
                if let Some(issuer) = principal.claim("iss").and_then(|v| v.as_str()) {
                    key.part(b'i', issuer.as_bytes());
                }
                key.part(b'u', subject.as_bytes());
            }
            if let Some(api_key) = api_key {
                key.part(b'k', api_key.as_bytes());
            }
            return true;
        }
    }
    // Unverified credentials still mark the caller; they are hashed so the key never holds a
    // secret.
    let mut digest: Option<Sha256> = None;
    for name in credential_headers {
        for value in headers.get_all(name) {
            let digest = digest.get_or_insert_with(Sha256::new);
            digest.update(name.as_str().as_bytes());
            digest.update([0]);
            digest.update(value.as_bytes());
            digest.update([0]);
        }
    }
    match digest {
        Some(digest) => {
            key.part(b'c', &digest.finalize());
            true
        }
        None => false,
    }
}

/// The query's parameters the rule keeps, decoded and sorted by name, then value.
fn sorted_query<'q>(query: &'q str, rule: &QueryRule) -> Vec<(Cow<'q, str>, Cow<'q, str>)> {
    let mut pairs: Vec<_> = form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| match rule {
            QueryRule::All => !name.is_empty(),
            QueryRule::Only(names) => names.binary_search_by(|n| (**n).cmp(name)).is_ok(),
            QueryRule::Ignore => false,
        })
        .collect();
    pairs.sort_unstable();
    pairs
}

/// A resource's normalized form, which purges match: the path, then every query parameter
/// decoded, sorted and encoded again.
pub(crate) fn resource(path: &str, query: Option<&str>) -> Box<str> {
    let pairs = query.map_or_else(Vec::new, |q| sorted_query(q, &QueryRule::All));
    if pairs.is_empty() {
        return path.into();
    }
    let mut out = form_urlencoded::Serializer::for_suffix(format!("{path}?"), path.len() + 1);
    out.extend_pairs(pairs);
    out.finish().into_boxed_str()
}

/// The normalized form of a `path?query` string given to a purge.
pub(crate) fn resource_of(path_and_query: &str) -> Box<str> {
    match path_and_query.split_once('?') {
        Some((path, query)) => resource(path, Some(query)),
        None => path_and_query.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CachePolicy;
    use http::HeaderValue;

    fn key_of(
        uri: &str,
        headers: &HeaderMap,
        ext: &http::Extensions,
        policy: CachePolicy,
    ) -> KeyBuf {
        let uri: Uri = uri.parse().unwrap();
        let credentials = [
            http::header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
        ];
        build(&uri, headers, ext, &policy.compile(), &credentials)
    }

    fn plain(uri: &str) -> Vec<u8> {
        key_of(
            uri,
            &HeaderMap::new(),
            &http::Extensions::new(),
            CachePolicy::new(),
        )
        .bytes
    }

    #[test]
    fn query_order_and_encoding_do_not_split_the_cache() {
        assert_eq!(plain("/a?b=2&a=1"), plain("/a?a=1&b=2"));
        assert_eq!(plain("/a?q=x%20y"), plain("/a?q=x+y"));
        assert_ne!(plain("/a?a=1"), plain("/a?a=2"));
        assert_ne!(plain("/a"), plain("/b"));
    }

    #[test]
    fn chosen_parameters_alone_split_the_cache() {
        let only = || CachePolicy::new().query(crate::QueryKey::Only(vec!["page".into()]));
        let none = HeaderMap::new();
        let ext = http::Extensions::new();
        assert_eq!(
            key_of("/a?page=1&utm=x", &none, &ext, only()).bytes,
            key_of("/a?utm=y&page=1", &none, &ext, only()).bytes
        );
        assert_ne!(
            key_of("/a?page=1", &none, &ext, only()).bytes,
            key_of("/a?page=2", &none, &ext, only()).bytes
        );
    }

    #[test]
    fn values_cannot_be_shifted_between_parts_to_collide() {
        assert_ne!(plain("/a?x=1&y=2"), plain("/a?x=1%26y%3D2"));
    }

    #[test]
    fn principals_and_credentials_split_the_cache_unless_shared() {
        let ext = http::Extensions::new();
        let mut alice = HeaderMap::new();
        alice.insert("authorization", HeaderValue::from_static("Bearer alice"));
        let mut bob = HeaderMap::new();
        bob.insert("authorization", HeaderValue::from_static("Bearer bob"));
        let a = key_of("/me", &alice, &ext, CachePolicy::new());
        let b = key_of("/me", &bob, &ext, CachePolicy::new());
        assert!(a.per_principal && b.per_principal);
        assert_ne!(a.bytes, b.bytes);
        assert!(
            !a.bytes.windows(5).any(|w| w == b"alice"),
            "credentials are hashed"
        );

        let shared = CachePolicy::new().sharing(Sharing::Shared);
        let a = key_of("/me", &alice, &ext, shared.clone());
        let b = key_of("/me", &bob, &ext, shared);
        assert!(!a.per_principal);
        assert_eq!(a.bytes, b.bytes);

        let mut by_subject = http::Extensions::new();
        by_subject.insert(Principal::builder().subject("alice").build());
        let verified = key_of("/me", &alice, &by_subject, CachePolicy::new());
        let rotated_token = key_of("/me", &bob, &by_subject, CachePolicy::new());
        assert_eq!(
            verified.bytes, rotated_token.bytes,
            "keyed by the subject, not the token"
        );
    }

    #[test]
    fn hosts_split_the_cache() {
        let ext = http::Extensions::new();
        let host = |name: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("host", HeaderValue::from_static(name));
            key_of("/a", &headers, &ext, CachePolicy::new()).bytes
        };
        assert_ne!(host("a.example"), host("b.example"));
        assert_eq!(host("a.example"), host("a.example"));
    }

    #[test]
    fn resources_normalize_queries() {
        assert_eq!(&*resource_of("/items?b=2&a=x%20y"), "/items?a=x+y&b=2");
        assert_eq!(&*resource_of("/items"), "/items");
        assert_eq!(&*resource_of("/items?"), "/items");
    }
}
