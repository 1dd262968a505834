//! The forwarding headers a proxy adds: `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded`
//! (RFC 7239), believed from trusted proxies only.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{FORWARDED, HOST};
use http::{HeaderMap, HeaderName, HeaderValue};
use tollgate_core::TrustedProxies;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the request looked like when it reached this gateway.
pub(crate) struct Hop<'a> {
    /// The TCP peer, when the server recorded it.
    pub(crate) peer: Option<IpAddr>,
    /// `http` or `https` as this gateway received it.
    pub(crate) proto: &'a str,
    /// The `Host` (or `:authority`) the client asked for.
    pub(crate) host: Option<HeaderValue>,
}

/// Rewrites the forwarding headers of an outgoing request.
///
/// A trusted peer's chain is kept and this hop appended, the way nginx's
/// `$proxy_add_x_forwarded_for` does; an untrusted peer's forwarding headers are dropped, so a
/// client cannot plant a fake address for the upstream to believe.
pub(crate) fn set_forwarding(headers: &mut HeaderMap, hop: &Hop<'_>, trusted: &TrustedProxies) {
    let keep = hop.peer.is_some_and(|peer| trusted.contains(peer));
    if !keep {
        for name in [
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            FORWARDED,
        ] {
            headers.remove(name);
        }
    }

    let node = hop.peer.map(|peer| peer.to_canonical());
    if let Some(peer) = node {
        append_list(headers, X_FORWARDED_FOR, &peer.to_string());
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_str(hop.proto).unwrap_or(HeaderValue::from_static("http")),
        );
    }
    if let Some(host) = &hop.host {
        if !headers.contains_key(X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    }

    let mut element = String::with_capacity(64);
    match node {
        Some(IpAddr::V4(ip)) => {
            let _ = write!(element, "for={ip}");
        }
        Some(IpAddr::V6(ip)) => {
            let _ = write!(element, "for=\"[{ip}]\"");
        }
        None => element.push_str("for=unknown"),
    }
    if let Some(host) = hop.host.as_ref().and_then(|host| host.to_str().ok()) {
        if host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            let _ = write!(element, ";host=\"{host}\"");
        }
    }
    let _ = write!(element, ";proto={}", hop.proto);
    append_list(headers, FORWARDED, &element);
}

/// Appends `item` to the comma-separated list in `name`, folding earlier lines into one.
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut list = String::new();
    for line in headers.get_all(&name) {
        if let Ok(line) = line.to_str() {
            let line = line.trim();
            if !line.is_empty() {
                list.push_str(line);
                list.push_str(", ");
            }
        }
    }
    list.push_str(item);
    if let Ok(value) = HeaderValue::try_from(list) {
        headers.insert(name, value);
    }
}

/// The host the client asked for: the request target's authority when it has one (HTTP/2,
/// or an absolute-form HTTP/1.1 target, which RFC 9112 §3.2.2 puts before `Host`), else the
/// `Host` header.
pub(crate) fn requested_host(headers: &HeaderMap, uri: &http::Uri) -> Option<HeaderValue> {
    uri.authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
        .or_else(|| headers.get(HOST).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(peer: &str) -> Hop<'static> {
        Hop {
            peer: Some(peer.parse().unwrap()),
            proto: "http",
            host: Some(HeaderValue::from_static("shop.example:8080")),
        }
    }

    fn spoofed() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        headers.insert(X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        headers.insert(FORWARDED, HeaderValue::from_static("for=1.2.3.4"));
        headers
    }

    #[test]
    fn an_untrusted_peers_forwarding_headers_are_replaced() {
        let mut headers = spoofed();
        set_forwarding(&mut headers, &hop("192.0.2.7"), &TrustedProxies::none());
        assert_eq!(headers[X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(headers[X_FORWARDED_PROTO], "http");
        assert_eq!(headers[X_FORWARDED_HOST], "shop.example:8080");
        assert_eq!(
            headers[FORWARDED],
            "for=192.0.2.7;host=\"shop.example:8080\";proto=http"
        );
    }

    #[test]
    fn a_trusted_peers_chain_is_kept_and_extended() {
        let mut headers = spoofed();
        let trusted = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
        set_forwarding(&mut headers, &hop("10.0.0.2"), &trusted);
        assert_eq!(headers[X_FORWARDED_FOR], "1.2.3.4, 10.0.0.2");
        assert_eq!(headers[X_FORWARDED_PROTO], "https");
        assert_eq!(headers[X_FORWARDED_HOST], "evil.example");
        assert_eq!(
            headers[FORWARDED],
            "for=1.2.3.4, for=10.0.0.2;host=\"shop.example:8080\";proto=http"
        );
    }

    #[test]
    fn ipv6_peers_are_quoted_in_forwarded() {
        let mut headers = HeaderMap::new();
        set_forwarding(&mut headers, &hop("2001:db8::1"), &TrustedProxies::none());
        assert_eq!(headers[X_FORWARDED_FOR], "2001:db8::1");
        assert!(headers[FORWARDED]
            .to_str()
            .unwrap()
            .starts_with("for=\"[2001:db8::1]\";"));
    }

    #[test]
    fn an_unknown_peer_is_named_unknown() {
        let mut headers = spoofed();
        let hop = Hop {
            peer: None,
            proto: "https",
            host: None,
        };
        set_forwarding(&mut headers, &hop, &TrustedProxies::none());
        assert!(!headers.contains_key(X_FORWARDED_FOR));
        assert_eq!(headers[FORWARDED], "for=unknown;proto=https");
    }
}
