//! Hop-by-hop header fields, which describe one connection and must not be forwarded or stored.

use http::header::{
    CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName};

/// The fixed hop-by-hop fields (RFC 9110 §7.6.1), plus the legacy ones still seen in the wild.
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
];

/// Removes the hop-by-hop fields from `headers` (RFC 9110 §7.6.1): `Connection`, `Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`,
/// `Proxy-Authorization`, and every field the `Connection` header names.
///
/// Proxies call it on what they forward both ways, and caches on what they store.
///
/// # Example
///
/// ```
/// use http::HeaderMap;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("connection", "close, x-session-hint".parse()?);
/// headers.insert("x-session-hint", "abc".parse()?);
/// headers.insert("keep-alive", "timeout=5".parse()?);
/// headers.insert("content-type", "text/plain".parse()?);
/// tollgate_core::remove_hop_by_hop(&mut headers);
/// assert_eq!(headers.len(), 1);
/// assert!(headers.contains_key("content-type"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: a scan of their few names is cheaper than nine removals.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    // Connection stays in the map until the end so its line indices stay valid; each line is
    // cloned (a reference-count bump) only so the map can be mutated while its tokens are read.
    let mut index = 0;
    while let Some(line) = headers.get_all(CONNECTION).iter().nth(index).cloned() {
        for token in line.as_bytes().split(|&b| b == b',') {
            match std::str::from_utf8(token.trim_ascii()) {
                Ok(name) if !name.is_empty() && !name.eq_ignore_ascii_case("connection") => {
                    headers.remove(name); // an invalid name finds nothing
                }
                _ => {}
            }
        }
        index += 1;
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_named_on_every_connection_line_are_removed() {
        let mut headers = HeaderMap::new();
        headers.append(CONNECTION, "keep-alive, X-One".parse().unwrap());
        headers.append(CONNECTION, " x-two ,".parse().unwrap());
        headers.insert("x-one", "1".parse().unwrap());
        headers.insert("x-two", "2".parse().unwrap());
        headers.insert(TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert("x-three", "3".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-three"], "3");
    }

    #[test]
    fn a_message_without_hop_fields_is_untouched() {
        let mut headers = HeaderMap::new();
        headers.insert("x-one", "1".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
    }
}
