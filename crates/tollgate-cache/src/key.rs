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
    /// Whose request the key says it is; a key that names the caller makes `private`
    /// responses storable.
    pub(crate) caller: Caller,
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
        caller: Caller::Anonymous,
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
                key.part(b'q', &name);
                key.part(b'v', &value);
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
        key.caller = principal_part(
            &mut key,
            extensions.get::<Principal>(),
            headers,
            credential_headers,
        );
    }
    key
}

/// Whose request a key says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No credentials and no principal: the key is shared by every anonymous caller.
    Anonymous,
    /// The key names the caller.
    Named,
    /// A principal nothing in the request identifies (no subject, no API key, no credential
    /// header): its responses must not be shared, and cannot be keyed, so they bypass.
    Unnamed,
}

/// Adds whose request this is.
fn principal_part(
    key: &mut KeyBuf,
    principal: Option<&Principal>,
    headers: &HeaderMap,
    credential_headers: &[HeaderName],
) -> Caller {
    let mut named = false;
    let mut subject = false;
    if let Some(principal) = principal {
        if let Some(sub) = principal.subject() {
            // Two issuers may hand out the same subject to different people.
            if let Some(issuer) = principal.claim("iss").and_then(|v| v.as_str()) {
                key.part(b'i', issuer.as_bytes());
            }
            key.part(b'u', sub.as_bytes());
            (named, subject) = (true, true);
        }
        if let Some(api_key) = principal.api_key_id() {
            key.part(b'k', api_key.as_bytes());
            named = true;
        }
    }
    // A verified subject is the user whatever token they send; without one (an API key names
    // an application, not its users) the credentials still split the cache. They are hashed,
    // so the key never holds a secret.
    if !subject {
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
        if let Some(digest) = digest {
            key.part(b'c', &digest.finalize());
            named = true;
        }
    }
    match (named, principal.is_some()) {
        (true, _) => Caller::Named,
        (false, false) => Caller::Anonymous,
        (false, true) => Caller::Unnamed,
    }
}

/// One query parameter, decoded to bytes (`+` is a space, `%XX` a byte): no decoding is
/// lossy, so two different queries never share a key.
type Param<'q> = (Cow<'q, [u8]>, Cow<'q, [u8]>);

fn decode(part: &[u8]) -> Cow<'_, [u8]> {
    let spaced: Cow<'_, [u8]> = if part.contains(&b'+') {
        Cow::Owned(
            part.iter()
                .map(|&b| if b == b'+' { b' ' } else { b })
                .collect(),
        )
    } else {
        Cow::Borrowed(part)
    };
    match spaced {
        Cow::Borrowed(part) => percent_encoding::percent_decode(part).into(),
        Cow::Owned(part) => Cow::Owned(percent_encoding::percent_decode(&part).collect()),
    }
}

/// The query's parameters the rule keeps, decoded and sorted by name, then value.
fn sorted_query<'q>(query: &'q str, rule: &QueryRule) -> Vec<Param<'q>> {
    let mut pairs: Vec<Param<'q>> = query
        .as_bytes()
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, &b""[..]),
            };
            (decode(name), decode(value))
        })
        .filter(|(name, _)| match rule {
            QueryRule::All => true,
            QueryRule::Only(names) => names.binary_search_by(|n| n.as_bytes().cmp(name)).is_ok(),
            QueryRule::Ignore => false,
        })
        .collect();
    pairs.sort_unstable();
    pairs
}

/// A path and the given parameters, encoded again in one canonical form.
fn canonical(path: &str, pairs: &[Param<'_>]) -> Box<str> {
    if pairs.is_empty() {
        return path.into();
    }
    let mut out = String::with_capacity(path.len() + 32);
    out.push_str(path);
    for (i, (name, value)) in pairs.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.extend(form_urlencoded::byte_serialize(name));
        out.push('=');
        out.extend(form_urlencoded::byte_serialize(value));
    }
    out.into_boxed_str()
}

/// A resource's normalized form, which purges match: the path, then every query parameter
/// decoded, sorted and encoded again.
pub(crate) fn resource(path: &str, query: Option<&str>) -> Box<str> {
    let pairs = query.map_or_else(Vec::new, |q| sorted_query(q, &QueryRule::All));
    canonical(path, &pairs)
}

/// The normalized form of a `path?query` string given to a purge.
pub(crate) fn resource_of(path_and_query: &str) -> Box<str> {
    match path_and_query.split_once('?') {
        Some((path, query)) => resource(path, Some(query)),
        None => path_and_query.into(),
    }
}

/// The resource a stored response is for, as purges will compare it: the request's own path
/// and query when every parameter is in the key (normalized only when a purge compares it:
/// purges are rare, stores are not), or the path and the kept parameters when the route keys
/// on fewer, so `/p/7?utm=x` stored under `/p/7`'s key is purged as `/p/7`.
pub(crate) fn stored_resource(uri: &Uri, rule: &QueryRule) -> Box<str> {
    match rule {
        QueryRule::All => uri
            .path_and_query()
            .map_or_else(|| uri.path(), |pq| pq.as_str())
            .into(),
        rule => {
            let pairs = uri.query().map_or_else(Vec::new, |q| sorted_query(q, rule));
            canonical(uri.path(), &pairs)
        }
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
        assert!(a.caller == Caller::Named && b.caller == Caller::Named);
        assert_ne!(a.bytes, b.bytes);
        assert!(
            !a.bytes.windows(5).any(|w| w == b"alice"),
            "credentials are hashed"
        );

        let shared = CachePolicy::new().sharing(Sharing::Shared);
        let a = key_of("/me", &alice, &ext, shared.clone());
        let b = key_of("/me", &bob, &ext, shared);
        assert_eq!(a.caller, Caller::Anonymous);
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
    fn an_api_key_names_the_application_so_user_credentials_still_split_the_cache() {
        let mut by_key = http::Extensions::new();
        by_key.insert(Principal::builder().build().with_api_key("app", "basic"));
        let mut alice = HeaderMap::new();
        alice.insert("authorization", HeaderValue::from_static("Bearer alice"));
        let mut bob = HeaderMap::new();
        bob.insert("authorization", HeaderValue::from_static("Bearer bob"));
        let a = key_of("/me", &alice, &by_key, CachePolicy::new());
        let b = key_of("/me", &bob, &by_key, CachePolicy::new());
        assert_eq!(a.caller, Caller::Named);
        assert_ne!(a.bytes, b.bytes);
    }

    #[test]
    fn a_principal_nothing_identifies_is_unnamed() {
        let mut ext = http::Extensions::new();
        ext.insert(Principal::builder().build());
        let key = key_of("/me", &HeaderMap::new(), &ext, CachePolicy::new());
        assert_eq!(key.caller, Caller::Unnamed);
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
    fn undecodable_bytes_and_empty_names_keep_queries_apart() {
        assert_ne!(plain("/a?id=%FE"), plain("/a?id=%FF"));
        assert_ne!(plain("/b?=x"), plain("/b?=y"));
        assert_eq!(plain("/c?a=1&&b=2"), plain("/c?b=2&a=1"));
    }

    #[test]
    fn stored_resources_keep_only_the_keyed_parameters() {
        let uri: Uri = "/p/7?utm=x&page=2".parse().unwrap();
        let only = CachePolicy::new()
            .query(crate::QueryKey::Only(vec!["page".into()]))
            .compile();
        assert_eq!(&*stored_resource(&uri, &only.query), "/p/7?page=2");
        let ignore = CachePolicy::new().query(crate::QueryKey::Ignore).compile();
        assert_eq!(&*stored_resource(&uri, &ignore.query), "/p/7");
        let all = CachePolicy::new().compile();
        assert_eq!(&*stored_resource(&uri, &all.query), "/p/7?utm=x&page=2");
    }

    #[test]
    fn resources_normalize_queries() {
        assert_eq!(&*resource_of("/items?b=2&a=x%20y"), "/items?a=x+y&b=2");
        assert_eq!(&*resource_of("/items"), "/items");
        assert_eq!(&*resource_of("/items?"), "/items");
    }
}
