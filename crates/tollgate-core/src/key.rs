//! What a limit or quota counts by.
//!
//! A [`KeyExtractor`] reads a request and returns the [`Key`] its budget is kept under: the
//! client's IP (behind trusted proxies), a header, a cookie, the principal's subject, the API
//! key id, the matched route, or one key for everyone. When it cannot (no such header, no principal), it
//! returns a [`KeyError`]; the caller decides what that means — refuse with the error's
//! [`Rejection`], or fall back to another extractor with [`KeyExtractorExt::or`].
//!
//! ```
//! use http::Request;
//! use tollgate_core::key::{ClientIp, HeaderKey};
//! use tollgate_core::{KeyExtractor, KeyExtractorExt, PeerAddr, RequestHead, TrustedProxies};
//!
//! // Count by the X-Client-Id header, or by the client's IP when it is absent.
//! let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
//! let extractor = HeaderKey::new("x-client-id").or(ClientIp::new(proxies));
//!
//! let mut request = Request::new(());
//! request.extensions_mut().insert(PeerAddr("10.0.0.7:50000".parse().unwrap()));
//! request.headers_mut().insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
//! let key = extractor.extract(&RequestHead::of(&request)).unwrap();
//! assert_eq!(key.to_string(), "ip:203.0.113.9");
//! ```

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use http::{Extensions, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};

use crate::client_ip::{canonical_ip, resolve_client_ip};
use crate::{ForwardedHeader, Principal, Rejection, RouteTable, TrustedProxies};

/// The parts of a request an extractor may read. Borrowed, so building one costs nothing.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request URI.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions (where `Principal`, `Stage` and `PeerAddr` live).
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// Borrows the head of `request`.
    #[inline]
    pub fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }

    /// The connection's peer address: a [`PeerAddr`] extension, or (with the `axum` feature)
    /// axum's `ConnectInfo<SocketAddr>`.
    #[inline]
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // axum's ConnectInfo first: with the axum feature on, it is the common case.
        #[cfg(feature = "axum")]
        if let Some(info) = self
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
        {
            return Some(info.0);
        }
        self.extensions.get::<PeerAddr>().map(|peer| peer.0)
    }
}

/// The TCP peer of the connection a request came on, for servers that are not axum.
///
/// Insert it into each request's extensions in your hyper service (axum users serve with
/// `into_make_service_with_connect_info::<SocketAddr>()` instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// What kind of budget a key stands for, so rules can be checked narrowest first: a request
/// refused by its own client's budget must not consume a budget shared with everyone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyScope {
    /// One budget per client (IP, header value, subject, API key).
    Client,
    /// One budget per route, shared by every client.
    Route,
    /// One budget for everyone.
    Global,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
enum KeyKind {
    Global,
    Ip,
    Header,
    Subject,
    ApiKey,
    Route,
    Cookie,
    Custom,
}

impl KeyKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Ip => "ip",
            Self::Header => "header",
            Self::Subject => "sub",
            Self::ApiKey => "key",
            Self::Route => "route",
            Self::Cookie => "cookie",
            Self::Custom => "custom",
        }
    }
}

#[derive(Clone, Debug)]
enum KeyValue {
    None,
    Ip(IpAddr),
    Bytes(Bytes),
    Header(HeaderValue),
    Shared(Arc<str>),
}

/// The identity a budget is kept under.
///
/// Keys from different sources never collide: a header whose value is `203.0.113.9` is not the
/// key of the client at `203.0.113.9`, so a client cannot spend someone else's budget by
/// naming them. Cloning is cheap (no copy of the value).
#[derive(Clone, Debug)]
pub struct Key {
    kind: KeyKind,
    value: KeyValue,
}

impl Key {
    /// The one key every request shares.
    pub const fn global() -> Self {
        Self {
            kind: KeyKind::Global,
            value: KeyValue::None,
        }
    }

    /// A client IP address (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn ip(ip: IpAddr) -> Self {
        Self {
            kind: KeyKind::Ip,
            value: KeyValue::Ip(canonical_ip(ip)),
        }
    }

    /// A key chosen by a custom extractor. Keep it short (a store holds it for as long as the
    /// key is active) and hash it first if it is a secret.
    pub fn custom(value: impl Into<Bytes>) -> Self {
        Self {
            kind: KeyKind::Custom,
            value: KeyValue::Bytes(value.into()),
        }
    }

    /// The key of an API key, by its id (never the key's secret).
    pub fn api_key(id: Arc<str>) -> Self {
        Self::shared(KeyKind::ApiKey, id)
    }

    fn bytes(kind: KeyKind, value: Bytes) -> Self {
        Self {
            kind,
            value: KeyValue::Bytes(value),
        }
    }

    fn shared(kind: KeyKind, value: Arc<str>) -> Self {
        Self {
            kind,
            value: KeyValue::Shared(value),
        }
    }

    /// This key with its value copied into its own allocation, so a key kept for a long time
    /// does not hold on to the request buffer its value was parsed from.
    #[must_use]
    pub fn detached(&self) -> Self {
        match &self.value {
            KeyValue::Bytes(bytes) => Self::bytes(self.kind, Bytes::copy_from_slice(bytes)),
            KeyValue::Header(value) => Self {
                kind: self.kind,
                value: HeaderValue::from_bytes(value.as_bytes())
                    .map_or_else(|_| self.value.clone(), KeyValue::Header),
            },
            _ => self.clone(),
        }
    }

    /// The IP address, when this is an IP key.
    pub fn as_ip(&self) -> Option<IpAddr> {
        match self.value {
            KeyValue::Ip(ip) => Some(ip),
            _ => None,
        }
    }

    fn value_bytes(&self) -> &[u8] {
        match &self.value {
            KeyValue::Bytes(bytes) => bytes,
            KeyValue::Header(value) => value.as_bytes(),
            KeyValue::Shared(text) => text.as_bytes(),
            KeyValue::None | KeyValue::Ip(_) => &[],
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && match (&self.value, &other.value) {
                (KeyValue::Ip(a), KeyValue::Ip(b)) => a == b,
                (KeyValue::Ip(_), _) | (_, KeyValue::Ip(_)) => false,
                _ => self.value_bytes() == other.value_bytes(),
            }
    }
}

impl Eq for Key {}

impl Hash for Key {
    // One write per key where possible: this hash is on every request's path.
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let kind = self.kind as u8;
        match &self.value {
            KeyValue::Ip(IpAddr::V4(ip)) => {
                state.write_u64(u64::from(kind) << 40 | 4 << 32 | u64::from(ip.to_bits()));
            }
            KeyValue::Ip(IpAddr::V6(ip)) => {
                state.write_u8(kind);
                state.write_u128(ip.to_bits());
            }
            _ => {
                state.write_u8(kind);
                state.write(self.value_bytes());
            }
        }
    }
}

/// `kind:value`, with non-printable bytes escaped: stable across processes, so it can name a
/// key in a shared store. Log it only where the value is not a secret.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.prefix())?;
        match &self.value {
            KeyValue::None => Ok(()),
            KeyValue::Ip(ip) => write!(f, ":{ip}"),
            _ => write!(f, ":{}", self.value_bytes().escape_ascii()),
        }
    }
}

/// Why an extractor found no key for a request.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The server passes no peer address to the service.
    #[error(
        "no peer address on the request: serve axum with into_make_service_with_connect_info::<SocketAddr>() \
         or insert tollgate_core::PeerAddr in your hyper service"
    )]
    MissingPeerAddr,
    /// The request lacks the header the key is read from.
    #[error("missing header {0}")]
    MissingHeader(HeaderName),
    /// The header the key is read from is longer than [`MAX_KEY_BYTES`].
    #[error("header {0} is longer than {MAX_KEY_BYTES} bytes")]
    KeyTooLong(HeaderName),
    /// No authorizer set a principal with a subject.
    #[error("no authenticated principal on the request")]
    MissingPrincipal,
    /// No usage plan layer set an API key id.
    #[error("no API key on the request")]
    MissingApiKey,
    /// The request's path matches no configured route.
    #[error("no configured route matches the request")]
    NoRoute,
    /// The request lacks the cookie the key is read from (or it is longer than
    /// [`MAX_KEY_BYTES`]).
    #[error("missing cookie {0}")]
    MissingCookie(Arc<str>),
    /// A custom extractor could not find its key. The message is sent to the client as the
    /// refusal's detail, so it must say what was expected and hold no secret.
    #[error("{0}")]
    Custom(String),
}

impl KeyError {
    /// The refusal sent when no fallback is configured.
    ///
    /// Client mistakes get a 4xx that says what was expected; a server that passes no peer
    /// address is misconfigured, which is a 500 whose cause goes to the log, not the client.
    pub fn rejection(&self) -> Rejection {
        match self {
            Self::MissingPeerAddr => {
                // A misconfigured server fails every request: say so loudly once, then quietly.
                static LOGGED: AtomicBool = AtomicBool::new(false);
                if LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::debug!(error = %self, "tollgate: no peer address");
                    Rejection::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        crate::ProblemType::Internal,
                    )
                } else {
                    Rejection::internal(self)
                }
            }
            Self::MissingHeader(name) => {
                Rejection::bad_request(format!("expected a {name} header"))
            }
            Self::KeyTooLong(name) => Rejection::bad_request(format!(
                "the {name} header must be at most {MAX_KEY_BYTES} bytes"
            )),
            Self::MissingPrincipal => Rejection::unauthorized(crate::BearerError::Missing)
                .with_detail("authentication required"),
            Self::MissingApiKey => {
                Rejection::invalid_api_key().with_detail("an API key is required")
            }
            Self::NoRoute => Rejection::not_found(),
            Self::MissingCookie(name) => {
                Rejection::bad_request(format!("expected a {name} cookie"))
            }
            Self::Custom(message) => {
                Rejection::new(StatusCode::BAD_REQUEST, crate::ProblemType::BadRequest)
                    .with_detail(message.clone())
            }
        }
    }
}

/// Reads the key a budget is counted by from a request.
///
/// Implement it for custom keys; compose with [`KeyExtractorExt::or`].
pub trait KeyExtractor: fmt::Debug + Send + Sync + 'static {
    /// The key of `request`, or why there is none.
    fn extract(&self, request: &RequestHead<'_>) -> Result<Key, KeyError>;

    /// Which kind of budget the keys stand for. Defaults to [`KeyScope::Client`].
    fn scope(&self) -> KeyScope {
        KeyScope::Client
    }
}

impl<E: KeyExtractor + ?Sized> KeyExtractor for Arc<E> {
    fn extract(&self, request: &RequestHead<'_>) -> Result<Key, KeyError> {
        (**self).extract(request)
    }

    fn scope(&self) -> KeyScope {
        (**self).scope()
    }
}

impl<E: KeyExtractor + ?Sized> KeyExtractor for Box<E> {
    fn extract(&self, request: &RequestHead<'_>) -> Result<Key, KeyError> {
        (**self).extract(request)
    }

    fn scope(&self) -> KeyScope {
        (**self).scope()
    }
}

/// Combinators for every [`KeyExtractor`].
pub trait KeyExtractorExt: KeyExtractor + Sized {
    /// Uses `fallback` when `self` finds no key.
    fn or<F: KeyExtractor>(self, fallback: F) -> OrElse<Self, F> {
        OrElse {
            first: self,
            fallback,
        }
    }
}

impl<E: KeyExtractor> KeyExtractorExt for E {}

/// One key for every request: a global budget.
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

impl KeyExtractor for Global {
    #[inline]
    fn extract(&self, _: &RequestHead<'_>) -> Result<Key, KeyError> {
        Ok(Key::global())
    }

    fn scope(&self) -> KeyScope {
        KeyScope::Global
    }
}

/// The TCP peer's IP address, ignoring every forwarding header. Right when clients connect
/// directly; behind a proxy or load balancer use [`ClientIp`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerIp;

impl KeyExtractor for PeerIp {
    #[inline]
    fn extract(&self, request: &RequestHead<'_>) -> Result<Key, KeyError> {
        request
            .peer_addr()
            .map(|addr| Key::ip(addr.ip()))
            .ok_or(KeyError::MissingPeerAddr)
    }
}

/// The client's IP address as reported by trusted proxies.
///
/// The forwarding chain (`X-Forwarded-For` by default, or `Forwarded`) is read only when the
/// peer is a trusted proxy, and walked from the right: the first address that is not a
/// trusted proxy is the client. A header sent by an untrusted peer is ignored, so a client
/// cannot pick its own key. With no trusted proxies this is [`PeerIp`].
#[derive(Clone, Debug, Default)]
pub struct ClientIp {
    trusted: TrustedProxies,
    header: ForwardedHeader,
}

impl ClientIp {
    /// Believes forwarding headers from `trusted` proxies only.
    pub fn new(trusted: TrustedProxies) -> Self {
        Self {
            trusted,
            header: ForwardedHeader::default(),
        }
    }

    /// Reads the chain from `header` (the one your proxy writes) instead of `X-Forwarded-For`.
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The client's IP address for `request`.
    pub fn client_ip(&self, request: &RequestHead<'_>) -> Option<IpAddr> {
        let peer = request.peer_addr()?.ip();
        if self.trusted.is_empty() {
            return Some(canonical_ip(peer));
        }
        Some(resolve_client_ip(
            peer,
            request.headers,
            &self.trusted,
            self.header,
        ))
    }
}

impl KeyExtractor for ClientIp {
    fn extract(&self, request: &RequestHead<'_>) -> Result<Key, KeyError> {
        self.client_ip(request)
            .map(Key::ip)
            .ok_or(KeyError::MissingPeerAddr)
    }
}

/// The longest header value a key is made of. Stores hold a configured number of keys, so
/// this bounds their memory too: a client cannot make each key kilobytes long.
pub const MAX_KEY_BYTES: usize = 256;

/// The value of a request header (for example `X-Client-Id`), at most [`MAX_KEY_BYTES`] long.
#[derive(Clone, Debug)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys by header `name`, in any case (`X-Client-Id` or `x-client-id`).
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name: it is written in the code, so this is a bug
    /// found on first run. Use [`HeaderKey::from_name`] for names that come from
    /// configuration.
    pub fn new(name: &'static str) -> Self {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => Self { name },
            Err(_) => panic!("HeaderKey::new: {name:?} is not a valid header name"),
        }
    }

    /// Keys by header `name`.
    pub fn from_name(name: HeaderName) -> Self {
        Self { name }
    }
}

impl KeyExtractor for HeaderKey {
    #[inline]
    fn extract(&self, request: &RequestHead<'_>) -> Result<Key, KeyError> {
        match request.headers.get(&self.name) {
            Some(value) if value.len() > MAX_KEY_BYTES => {
                Err(KeyError::KeyTooLong(self.name.clone()))
            }
            // A clone shares the request's buffer; `Key::detached` copies it when it is stored.
            Some(value) if !value.is_empty() => Ok(Key {
                kind: KeyKind::Header,
                value: KeyValue::Header(value.clone()),
            }),
            _ => Err(KeyError::MissingHeader(self.name.clone())),
        }
    }
}

/// The value of a cookie (a session or visitor id), at most [`MAX_KEY_BYTES`] long.
#[derive(Clone, Debug)]
pub struct CookieKey {
    name: Arc<str>,
}

impl CookieKey {
    /// Keys by the cookie `name` (case-sensitive, as cookie names are).
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self { name: name.into() }
    }
}

impl KeyExtractor for CookieKey {
    fn extract(&self, request: &RequestHead<'_>) -> Result<Key, KeyError> {
        let name = self.name.as_bytes();
        for line in request.headers.get_all(http::header::COOKIE) {
            for pair in line.as_bytes().split(|&b| b == b';') {
                let pair = pair.trim_ascii();
                let Some(value) = pair
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(b"="))
                else {
                    continue;
                };
                if !value.is_empty() && value.len() <= MAX_KEY_BYTES {
                    return Ok(Key::bytes(KeyKind::Cookie, Bytes::copy_from_slice(value)));
                }
            }
        }
        Err(KeyError::MissingCookie(self.name.clone()))
    }
}

/// The subject of the [`Principal`] an authorizer verified.
#[derive(Clone, Copy, Debug, Default)]
pub struct Subject;

impl KeyExtractor for Subject {
    #[inline]
    fn extract(&self, request: &RequestHead<'_>) -> Result<Key, KeyError> {
        request
            .extensions
            .get::<Principal>()
            .and_then(Principal::subject_shared)
            .map(|subject| Key::shared(KeyKind::Subject, subject.clone()))
            .ok_or(KeyError::MissingPrincipal)
    }
}

/// The id of the API key the usage plan layer matched (never the key itself).
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiKeyId;

impl KeyExtractor for ApiKeyId {
    #[inline]
    fn extract(&self, request: &RequestHead<'_>) -> Result<Key, KeyError> {
        request
            .extensions
            .get::<Principal>()
            .and_then(Principal::api_key_id_shared)
            .map(|id| Key::api_key(id.clone()))
            .ok_or(KeyError::MissingApiKey)
    }
}

/// The matched route (`GET /pets/{id}`): one budget per route, shared by all clients.
///
/// Routes are matched against the configured [`RouteTable`], so this works in front of the
/// application's router. Inside an axum `Router` (`Router::layer`), an empty table uses axum's
/// `MatchedPath` instead (with the `axum` feature).
#[derive(Clone, Debug, Default)]
pub struct RouteKey {
    routes: RouteTable<()>,
}

impl RouteKey {
    /// Keys by the route of `routes` that matches the request.
    pub fn new(routes: RouteTable<()>) -> Self {
        Self { routes }
    }
}

impl KeyExtractor for RouteKey {
    fn extract(&self, request: &RequestHead<'_>) -> Result<Key, KeyError> {
        if let Some(matched) = self.routes.at(request.method, request.uri.path()) {
            return Ok(Key::shared(KeyKind::Route, matched.route_shared().clone()));
        }
        #[cfg(feature = "axum")]
        if let Some(path) = request.extensions.get::<axum::extract::MatchedPath>() {
            let route = format!("{} {}", request.method, path.as_str());
            return Ok(Key::bytes(KeyKind::Route, Bytes::from(route)));
        }
        Err(KeyError::NoRoute)
    }

    fn scope(&self) -> KeyScope {
        KeyScope::Route
    }
}

/// Uses a fallback extractor when the first finds no key. Built by [`KeyExtractorExt::or`].
#[derive(Clone, Debug)]
pub struct OrElse<A, B> {
    first: A,
    fallback: B,
}

impl<A: KeyExtractor, B: KeyExtractor> KeyExtractor for OrElse<A, B> {
    #[inline]
    fn extract(&self, request: &RequestHead<'_>) -> Result<Key, KeyError> {
        self.first
            .extract(request)
            .or_else(|_| self.fallback.extract(request))
    }

    /// The wider of the two scopes: the budget is shared at least that much.
    fn scope(&self) -> KeyScope {
        self.first.scope().max(self.fallback.scope())
    }
}

#[cfg(test)]
mod cookie_tests {
    use super::*;

    fn head_with(cookie: &'static str) -> Request<()> {
        Request::builder()
            .header("cookie", cookie)
            .body(())
            .unwrap()
    }

    #[test]
    fn a_cookie_key_is_its_value_and_a_missing_cookie_is_an_error() {
        let key = CookieKey::new("visitor");
        let request = head_with("theme=dark; visitor=abc123; visitorx=no");
        let found = key.extract(&RequestHead::of(&request)).unwrap();
        assert_eq!(found.to_string(), "cookie:abc123");
        let other = head_with("visitorx=no; theme=dark");
        assert_eq!(
            key.extract(&RequestHead::of(&other)).unwrap_err(),
            KeyError::MissingCookie("visitor".into())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_from(peer: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(PeerAddr(peer.parse().unwrap()));
        request
    }

    fn key_of(extractor: &impl KeyExtractor, request: &Request<()>) -> Result<Key, KeyError> {
        extractor.extract(&RequestHead::of(request))
    }

    #[test]
    fn keys_from_different_sources_never_collide() {
        let mut request = request_from("203.0.113.9:1000");
        request
            .headers_mut()
            .insert("x-client-id", "203.0.113.9".parse().unwrap());
        let by_header = key_of(&HeaderKey::new("x-client-id"), &request).unwrap();
        let by_ip = key_of(&PeerIp, &request).unwrap();
        assert_ne!(by_header, by_ip);
        assert_eq!(by_header.to_string(), "header:203.0.113.9");
        assert_eq!(by_ip.to_string(), "ip:203.0.113.9");
    }

    #[test]
    fn peer_ip_treats_ipv4_mapped_addresses_as_ipv4() {
        let mapped = request_from("[::ffff:192.0.2.1]:80");
        let plain = request_from("192.0.2.1:80");
        assert_eq!(key_of(&PeerIp, &mapped), key_of(&PeerIp, &plain));
    }

    #[test]
    fn missing_peer_address_is_a_server_error_that_hides_the_hint() {
        let error = key_of(&PeerIp, &Request::new(())).unwrap_err();
        assert_eq!(error, KeyError::MissingPeerAddr);
        let rejection = error.rejection();
        assert_eq!(rejection.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(rejection.detail(), None);
    }

    #[test]
    fn missing_header_is_a_bad_request_naming_the_header() {
        let error =
            key_of(&HeaderKey::new("x-client-id"), &request_from("192.0.2.1:1")).unwrap_err();
        let rejection = error.rejection();
        assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
        assert_eq!(rejection.detail(), Some("expected a x-client-id header"));
    }

    #[test]
    fn header_key_accepts_names_in_any_case() {
        let mut request = request_from("192.0.2.1:1");
        request
            .headers_mut()
            .insert("x-client-id", "abc".parse().unwrap());
        let key = key_of(&HeaderKey::new("X-Client-Id"), &request).unwrap();
        assert_eq!(key.to_string(), "header:abc");
    }

    #[test]
    fn an_overlong_key_header_is_refused_by_name() {
        let mut request = request_from("192.0.2.1:1");
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        request
            .headers_mut()
            .insert("x-client-id", long.parse().unwrap());
        let error = key_of(&HeaderKey::new("x-client-id"), &request).unwrap_err();
        let rejection = error.rejection();
        assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            rejection.detail(),
            Some("the x-client-id header must be at most 256 bytes")
        );
    }

    #[test]
    fn fallback_is_used_only_when_first_extractor_fails() {
        let extractor = HeaderKey::new("x-client-id").or(PeerIp);
        let mut request = request_from("192.0.2.1:1");
        assert_eq!(
            key_of(&extractor, &request).unwrap().to_string(),
            "ip:192.0.2.1"
        );
        request
            .headers_mut()
            .insert("x-client-id", "abc".parse().unwrap());
        assert_eq!(
            key_of(&extractor, &request).unwrap().to_string(),
            "header:abc"
        );
    }

    #[test]
    fn subject_and_api_key_come_from_the_principal() {
        let mut request = request_from("192.0.2.1:1");
        assert_eq!(key_of(&Subject, &request), Err(KeyError::MissingPrincipal));
        assert_eq!(key_of(&ApiKeyId, &request), Err(KeyError::MissingApiKey));
        request.extensions_mut().insert(
            Principal::builder()
                .subject("alice")
                .api_key("key-1", "gold")
                .build(),
        );
        assert_eq!(key_of(&Subject, &request).unwrap().to_string(), "sub:alice");
        assert_eq!(
            key_of(&ApiKeyId, &request).unwrap().to_string(),
            "key:key-1"
        );
    }

    #[test]
    fn route_key_names_the_matched_template_and_is_route_scoped() {
        let routes = RouteTable::new().with("GET /pets/{id}", ()).unwrap();
        let extractor = RouteKey::new(routes);
        let mut request = request_from("192.0.2.1:1");
        *request.uri_mut() = "/pets/7?x=1".parse().unwrap();
        assert_eq!(
            key_of(&extractor, &request).unwrap().to_string(),
            "route:GET /pets/{id}"
        );
        assert_eq!(extractor.scope(), KeyScope::Route);
        *request.uri_mut() = "/owners".parse().unwrap();
        assert_eq!(key_of(&extractor, &request), Err(KeyError::NoRoute));
    }

    #[test]
    fn detached_key_is_equal_and_owns_its_bytes() {
        let buffer = Bytes::from(vec![b'a'; 4096]);
        let key = Key::custom(buffer.slice(0..3));
        let detached = key.detached();
        assert_eq!(key, detached);
        drop(key);
        drop(buffer);
        assert_eq!(detached.to_string(), "custom:aaa");
    }

    #[test]
    fn global_key_is_shared_and_global_scoped() {
        let a = key_of(&Global, &request_from("192.0.2.1:1")).unwrap();
        let b = key_of(&Global, &request_from("192.0.2.2:1")).unwrap();
        assert_eq!(a, b);
        assert_eq!(Global.scope(), KeyScope::Global);
    }
}
