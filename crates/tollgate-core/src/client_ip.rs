//! The client's address behind trusted proxies: which proxies to believe, which header they
//! write, and the walk along the forwarding chain that throttles and quotas key by.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use http::header::{HeaderName, FORWARDED};
use http::HeaderMap;
use ipnet::{IpNet, Ipv4Net};
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The proxies whose forwarding headers are believed, as a list of CIDRs.
///
/// Empty (the default) trusts nobody: the TCP peer is the client, and forwarding headers are
/// ignored. List only the proxies in front of this service, because anyone listed can name
/// any client address it likes.
///
/// # Example
///
/// ```
/// use tollgate_core::TrustedProxies;
///
/// let proxies = TrustedProxies::new(["10.0.0.0/8", "::1"])?;
/// assert!(proxies.contains("10.1.2.3".parse()?));
/// assert!(proxies.contains("::ffff:10.1.2.3".parse()?));
/// assert!(!proxies.contains("192.0.2.1".parse()?));
///
/// // The same list from an environment variable.
/// let from_env: TrustedProxies = "10.0.0.0/8, ::1".parse()?;
/// assert_eq!(from_env, proxies);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trusts no proxy: the TCP peer is always the client.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses CIDRs (`"10.0.0.0/8"`, `"2001:db8::/32"`) and bare addresses (`"127.0.0.1"` is
    /// a `/32`, `"::1"` a `/128`).
    ///
    /// # Errors
    ///
    /// [`TrustedProxiesError::InvalidCidr`] naming the first value that is neither.
    pub fn new<I, S>(cidrs: I) -> Result<Self, TrustedProxiesError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = cidrs
            .into_iter()
            .map(|cidr| parse_net(cidr.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self { nets })
    }

    /// Whether `ip` is one of the trusted proxies; an IPv4-mapped IPv6 address
    /// (`::ffff:10.1.2.3`) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

fn parse_net(value: &str) -> Result<IpNet, TrustedProxiesError> {
    let trimmed = value.trim();
    let net = trimmed
        .parse::<IpNet>()
        .or_else(|_| trimmed.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| TrustedProxiesError::InvalidCidr {
            value: trimmed.to_owned(),
        })?;
    Ok(canonical_net(net.trunc()))
}

/// `::ffff:10.0.0.0/104` becomes `10.0.0.0/8`, because addresses are matched canonicalised.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .network()
            .to_ipv4_mapped()
            .and_then(|v4| Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        _ => net,
    }
}

/// Parses a comma-separated list, such as `"10.0.0.0/8, 2001:db8::/32"`; an empty string
/// trusts nobody.
impl FromStr for TrustedProxies {
    type Err = TrustedProxiesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self::none());
        }
        Self::new(s.split(','))
    }
}

/// Deserializes from a sequence of strings, such as `["10.0.0.0/8", "::1"]`.
impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CidrList;

        impl<'de> Visitor<'de> for CidrList {
            type Value = TrustedProxies;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of IP addresses or CIDRs such as [\"10.0.0.0/8\"]")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut nets = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(cidr) = seq.next_element::<String>()? {
                    nets.push(parse_net(&cidr).map_err(de::Error::custom)?);
                }
                Ok(TrustedProxies { nets })
            }
        }

        deserializer.deserialize_seq(CidrList)
    }
}

/// Which header carries the forwarding chain.
///
/// Configure the one your proxy writes. Reading the other lets a client spoof its address:
/// nginx, for example, appends to `X-Forwarded-For` but passes a client's `Forwarded` header
/// through untouched. In configuration files: `x-forwarded-for` or `forwarded`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: 192.0.2.60, 10.0.0.1`, the de facto standard.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=192.0.2.60;proto=https, for=10.0.0.1` (RFC 7239).
    Forwarded,
}

/// A trusted proxy list that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustedProxiesError {
    /// An entry is neither an IP address nor a CIDR.
    #[error("invalid trusted proxy {value:?}: expected an IP address or CIDR such as 10.0.0.0/8")]
    InvalidCidr {
        /// The entry as written.
        value: String,
    },
}

/// Normalises IPv4-mapped IPv6 addresses to IPv4.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The client's address as the trusted proxies report it.
///
/// Headers are believed only from a trusted `peer`. The chain is walked from the right, since
/// each proxy appends the address it saw and everything left of the first untrusted hop was
/// written by that hop, so may be forged. A hop that is not an address stops the walk at the
/// last trusted hop reached.
pub(crate) fn resolve_client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
    header: ForwardedHeader,
) -> IpAddr {
    let peer = canonical_ip(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    match header {
        ForwardedHeader::XForwardedFor => {
            let hops = headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .rev()
                .flat_map(|line| line.as_bytes().rsplit(|&b| b == b','))
                .map(|element| parse_node(element.trim_ascii()));
            walk_from_right(peer, hops, trusted)
        }
        ForwardedHeader::Forwarded => {
            // Lines are parsed one by one, so an unbalanced quote in a client's line cannot
            // swallow the line a proxy added after it.
            let hops = headers
                .get_all(FORWARDED)
                .iter()
                .rev()
                .flat_map(|line| forwarded_hops(line.as_bytes()).into_iter().rev());
            walk_from_right(peer, hops, trusted)
        }
    }
}

/// `hops` runs right to left; `None` is a hop that is not an address.
fn walk_from_right(
    peer: IpAddr,
    hops: impl Iterator<Item = Option<IpAddr>>,
    trusted: &TrustedProxies,
) -> IpAddr {
    let mut client = peer;
    for hop in hops {
        let Some(ip) = hop else { break };
        client = canonical_ip(ip);
        if !trusted.contains(client) {
            break;
        }
    }
    client
}

/// Parses `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]` and `[2001:db8::1]:443`.
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    let node = std::str::from_utf8(node).ok()?;
    if let Some(bracketed) = node.strip_prefix('[') {
        let (addr, rest) = bracketed.split_once(']')?;
        if !rest.is_empty() && !is_port(rest.strip_prefix(':')?) {
            return None;
        }
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    let (addr, port) = node.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A decimal port, or an obfuscated one (`_abc`, RFC 7239 section 6.3).
fn is_port(port: &str) -> bool {
    match port.strip_prefix('_') {
        Some(obfuscated) => {
            !obfuscated.is_empty()
                && obfuscated
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        // `u16::from_str` alone would accept a leading `+`.
        None => port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok(),
    }
}

/// The `for=` address of each element of one `Forwarded` line, left to right; `None` for an
/// element that is malformed, lacks `for=`, or whose `for=` is not an address.
fn forwarded_hops(line: &[u8]) -> Vec<Option<IpAddr>> {
    let mut cursor = ForwardedCursor {
        bytes: line,
        pos: 0,
    };
    let mut hops = Vec::new();
    loop {
        let (hop, more) = cursor.element();
        hops.push(hop);
        if !more {
            return hops;
        }
    }
}

struct ForwardedCursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> ForwardedCursor<'a> {
    /// Consumes one element and the comma after it; returns its hop and whether a comma
    /// followed.
    fn element(&mut self) -> (Option<IpAddr>, bool) {
        let mut for_value: Option<Option<IpAddr>> = None;
        loop {
            self.skip_whitespace();
            match self.peek() {
                None => return (for_value.flatten(), false),
                Some(b',') => {
                    self.pos += 1;
                    return (for_value.flatten(), true);
                }
                Some(b';') => {
                    self.pos += 1;
                    continue;
                }
                Some(_) => {}
            }
            let name = self.take_while(|b| !matches!(b, b'=' | b';' | b',' | b'"' | b' ' | b'\t'));
            if name.is_empty() || self.peek() != Some(b'=') {
                return (None, self.skip_to_next_element());
            }
            self.pos += 1;
            let value = if self.peek() == Some(b'"') {
                match self.quoted_string() {
                    Some(value) => value,
                    None => return (None, false),
                }
            } else {
                Cow::Borrowed(self.take_while(|b| !matches!(b, b';' | b',' | b'"' | b' ' | b'\t')))
            };
            if name.eq_ignore_ascii_case(b"for") {
                // RFC 7239 allows one `for` per element; two is a forgery or a bug.
                if for_value.is_some() {
                    return (None, self.skip_to_next_element());
                }
                for_value = Some(parse_node(&value));
            }
            self.skip_whitespace();
            if !matches!(self.peek(), None | Some(b';' | b',')) {
                return (None, self.skip_to_next_element());
            }
        }
    }

    /// Reads a quoted-string at the cursor, unescaping only if it has escapes; `None` if it
    /// is unterminated.
    fn quoted_string(&mut self) -> Option<Cow<'a, [u8]>> {
        let start = self.pos + 1;
        let mut escaped = false;
        let mut i = start;
        while i < self.bytes.len() {
            match self.bytes[i] {
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                b'"' => {
                    self.pos = i + 1;
                    let raw = &self.bytes[start..i];
                    return Some(if escaped {
                        Cow::Owned(unescape(raw))
                    } else {
                        Cow::Borrowed(raw)
                    });
                }
                _ => i += 1,
            }
        }
        self.pos = self.bytes.len();
        None
    }

    /// Skips the rest of a malformed element, honouring quotes so a quoted comma does not
    /// end it; returns whether a comma followed.
    fn skip_to_next_element(&mut self) -> bool {
        while let Some(b) = self.peek() {
            match b {
                b',' => {
                    self.pos += 1;
                    return true;
                }
                b'"' => {
                    if self.quoted_string().is_none() {
                        return false;
                    }
                }
                _ => self.pos += 1,
            }
        }
        false
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        self.take_while(|b| matches!(b, b' ' | b'\t'));
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        &self.bytes[start..self.pos]
    }
}

fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            if let Some(&next) = bytes.next() {
                out.push(next);
            }
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn proxies(cidrs: &[&str]) -> TrustedProxies {
        TrustedProxies::new(cidrs).expect("test CIDRs")
    }

    fn headers(name: &HeaderName, lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(name, HeaderValue::from_str(line).expect("test header"));
        }
        map
    }

    fn xff(peer: &str, trusted: &[&str], lines: &[&str]) -> IpAddr {
        resolve_client_ip(
            ip(peer),
            &headers(&X_FORWARDED_FOR, lines),
            &proxies(trusted),
            ForwardedHeader::XForwardedFor,
        )
    }

    fn forwarded(peer: &str, trusted: &[&str], lines: &[&str]) -> IpAddr {
        resolve_client_ip(
            ip(peer),
            &headers(&FORWARDED, lines),
            &proxies(trusted),
            ForwardedHeader::Forwarded,
        )
    }

    #[test]
    fn untrusted_peer_ignores_spoofed_x_forwarded_for() {
        let client = xff("203.0.113.9", &["10.0.0.0/8"], &["198.51.100.1"]);
        assert_eq!(client, ip("203.0.113.9"));
    }

    #[test]
    fn no_trusted_proxies_ignores_headers() {
        let client = xff("10.0.0.1", &[], &["198.51.100.1"]);
        assert_eq!(client, ip("10.0.0.1"));
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let client = xff(
            "10.0.0.1",
            &["10.0.0.0/8"],
            &["198.51.100.66, 203.0.113.7, 10.0.0.3, 10.0.0.2"],
        );
        assert_eq!(client, ip("203.0.113.7"));
    }

    #[test]
    fn first_untrusted_hop_is_the_client() {
        let client = xff("10.0.0.1", &["10.0.0.0/8"], &["1.1.1.1, 203.0.113.7"]);
        assert_eq!(client, ip("203.0.113.7"));
    }

    #[test]
    fn all_trusted_returns_leftmost() {
        let client = xff("10.0.0.1", &["10.0.0.0/8"], &["10.0.0.9, 10.0.0.8"]);
        assert_eq!(client, ip("10.0.0.9"));
    }

    #[test]
    fn unknown_hop_stops_at_last_trusted() {
        let client = xff(
            "10.0.0.1",
            &["10.0.0.0/8"],
            &["198.51.100.1, unknown, 10.0.0.2"],
        );
        assert_eq!(client, ip("10.0.0.2"));
    }

    #[test]
    fn empty_or_garbage_rightmost_hop_returns_peer() {
        assert_eq!(xff("10.0.0.1", &["10.0.0.0/8"], &[""]), ip("10.0.0.1"));
        assert_eq!(
            xff("10.0.0.1", &["10.0.0.0/8"], &["1.2.3.4,"]),
            ip("10.0.0.1")
        );
        assert_eq!(
            xff("10.0.0.1", &["10.0.0.0/8"], &["1.2.3.4, 1.2.3.4.5"]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn missing_header_from_trusted_peer_returns_peer() {
        assert_eq!(xff("10.0.0.1", &["10.0.0.0/8"], &[]), ip("10.0.0.1"));
    }

    #[test]
    fn xff_with_ports() {
        let trusted = &["10.0.0.0/8", "2001:db8:ffff::/48"];
        for (line, expected) in [
            ("203.0.113.7:5678", "203.0.113.7"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            (" 203.0.113.7:5678 ,\t[2001:db8:ffff::1]:80 ", "203.0.113.7"),
        ] {
            assert_eq!(xff("10.0.0.1", trusted, &[line]), ip(expected), "{line}");
        }
    }

    #[test]
    fn xff_malformed_ports_stop_the_walk() {
        for line in [
            "203.0.113.7:",
            "203.0.113.7:+80",
            "203.0.113.7:70000",
            "[2001:db8::1]x",
        ] {
            assert_eq!(
                xff("10.0.0.1", &["10.0.0.0/8"], &[line]),
                ip("10.0.0.1"),
                "{line}"
            );
        }
    }

    #[test]
    fn multiple_header_lines_concatenate() {
        let client = xff(
            "10.0.0.1",
            &["10.0.0.0/8"],
            &["198.51.100.1, 203.0.113.7", "10.0.0.3", "10.0.0.2"],
        );
        assert_eq!(client, ip("203.0.113.7"));

        let client = forwarded(
            "10.0.0.1",
            &["10.0.0.0/8"],
            &["for=198.51.100.1", "for=10.0.0.2;proto=https"],
        );
        assert_eq!(client, ip("198.51.100.1"));
    }

    #[test]
    fn ipv4_mapped_peer_is_matched_against_ipv4_cidr() {
        let client = xff("::ffff:10.0.0.1", &["10.0.0.0/8"], &["203.0.113.7"]);
        assert_eq!(client, ip("203.0.113.7"));
    }

    #[test]
    fn ipv4_mapped_hops_are_returned_as_ipv4() {
        let client = xff(
            "10.0.0.1",
            &["10.0.0.0/8"],
            &["::ffff:203.0.113.7, ::ffff:10.0.0.2"],
        );
        assert_eq!(client, ip("203.0.113.7"));
    }

    #[test]
    fn untrusted_ipv4_mapped_peer_is_returned_as_ipv4() {
        let client = xff("::ffff:203.0.113.7", &["10.0.0.0/8"], &["198.51.100.1"]);
        assert_eq!(client, ip("203.0.113.7"));
    }

    #[test]
    fn ipv4_mapped_cidr_matches_ipv4_peer() {
        let trusted = proxies(&["::ffff:10.0.0.0/104"]);
        assert_eq!(trusted, proxies(&["10.0.0.0/8"]));
        assert!(trusted.contains(ip("10.9.9.9")));
    }

    #[test]
    fn forwarded_token_and_quoted_values() {
        let client = forwarded(
            "10.0.0.1",
            &["10.0.0.0/8"],
            &["for=192.0.2.60;proto=http;by=203.0.113.43, for=\"10.0.0.2:47011\""],
        );
        assert_eq!(client, ip("192.0.2.60"));
    }

    #[test]
    fn forwarded_quoted_ipv6_with_port() {
        for value in ["\"[2001:db8:cafe::17]:4711\"", "\"[2001:db8:cafe::17]\""] {
            let line = format!("for={value}");
            let client = forwarded("10.0.0.1", &["10.0.0.0/8"], &[&line]);
            assert_eq!(client, ip("2001:db8:cafe::17"), "{line}");
        }
    }

    #[test]
    fn forwarded_parameter_names_are_case_insensitive() {
        let client = forwarded("10.0.0.1", &["10.0.0.0/8"], &["Proto=https;FOR=192.0.2.60"]);
        assert_eq!(client, ip("192.0.2.60"));
    }

    #[test]
    fn forwarded_quoted_comma_does_not_split() {
        // Split naively, `for=198.51.100.1"` would look like its own element.
        let client = forwarded(
            "10.0.0.1",
            &["10.0.0.0/8"],
            &["for=192.0.2.60;ext=\"a, for=198.51.100.1\", for=10.0.0.2"],
        );
        assert_eq!(client, ip("192.0.2.60"));
    }

    #[test]
    fn forwarded_quoted_semicolon_does_not_split() {
        let client = forwarded(
            "10.0.0.1",
            &["10.0.0.0/8"],
            &["ext=\"x;for=198.51.100.1\";for=192.0.2.60"],
        );
        assert_eq!(client, ip("192.0.2.60"));
    }

    #[test]
    fn forwarded_escaped_quote_stays_inside_the_string() {
        let client = forwarded(
            "10.0.0.1",
            &["10.0.0.0/8"],
            &["for=192.0.2.60;ext=\"a\\\", for=198.51.100.1\""],
        );
        assert_eq!(client, ip("192.0.2.60"));
    }

    #[test]
    fn forwarded_escapes_are_unescaped_in_values() {
        let client = forwarded("10.0.0.1", &["10.0.0.0/8"], &["for=\"\\192.0.2.60\""]);
        assert_eq!(client, ip("192.0.2.60"));
    }

    #[test]
    fn forwarded_unknown_and_obfuscated_stop_at_last_trusted() {
        for hop in ["unknown", "_hidden", "\"_hidden:_port\""] {
            let line = format!("for=198.51.100.1, for={hop}, for=10.0.0.2");
            let client = forwarded("10.0.0.1", &["10.0.0.0/8"], &[&line]);
            assert_eq!(client, ip("10.0.0.2"), "{line}");
        }
    }

    #[test]
    fn forwarded_obfuscated_port_keeps_the_address() {
        let client = forwarded("10.0.0.1", &["10.0.0.0/8"], &["for=\"192.0.2.60:_abc\""]);
        assert_eq!(client, ip("192.0.2.60"));
    }

    #[test]
    fn forwarded_element_without_for_stops_the_walk() {
        let client = forwarded(
            "10.0.0.1",
            &["10.0.0.0/8"],
            &["for=198.51.100.1, proto=https;by=10.0.0.5, for=10.0.0.2"],
        );
        assert_eq!(client, ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_duplicate_for_stops_the_walk() {
        let client = forwarded(
            "10.0.0.1",
            &["10.0.0.0/8"],
            &["for=198.51.100.1;for=192.0.2.60"],
        );
        assert_eq!(client, ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_unterminated_quote_in_client_line_cannot_hide_proxy_line() {
        let client = forwarded(
            "10.0.0.1",
            &["10.0.0.0/8"],
            &["for=\"198.51.100.1", "for=192.0.2.60"],
        );
        assert_eq!(client, ip("192.0.2.60"));
    }

    #[test]
    fn forwarded_unterminated_quote_before_proxy_element_returns_peer() {
        // The client left a quote open and the proxy appended to the same line.
        let client = forwarded(
            "10.0.0.1",
            &["10.0.0.0/8"],
            &["for=\"198.51.100.1, for=\"[2001:db8::1]\""],
        );
        assert_eq!(client, ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_header_is_ignored_when_x_forwarded_for_is_configured() {
        let map = headers(&FORWARDED, &["for=198.51.100.1"]);
        let client = resolve_client_ip(
            ip("10.0.0.1"),
            &map,
            &proxies(&["10.0.0.0/8"]),
            ForwardedHeader::XForwardedFor,
        );
        assert_eq!(client, ip("10.0.0.1"));
    }

    #[test]
    fn non_utf8_header_does_not_panic() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let bytes: &[u8] = b"for=\"\xff\xfe\", 198.51.100.\xff, \"\\";
        for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
            let name = match header {
                ForwardedHeader::XForwardedFor => X_FORWARDED_FOR,
                ForwardedHeader::Forwarded => FORWARDED,
            };
            let mut map = HeaderMap::new();
            map.append(
                &name,
                HeaderValue::from_bytes(bytes).expect("obs-text is allowed"),
            );
            assert_eq!(
                resolve_client_ip(ip("10.0.0.1"), &map, &trusted, header),
                ip("10.0.0.1")
            );
        }
    }

    #[test]
    fn hostile_forwarded_values_do_not_panic() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let huge = "for=10.0.0.2, ".repeat(10_000);
        for line in [
            "",
            ",",
            ";",
            "=",
            "\"",
            "\\",
            "for",
            "for=",
            "for=\"",
            "for=\"\\",
            "=x;=y,,",
            "for=[",
            "for=\"[\"",
            "for=\"[::1]:\"",
            "for=\"[::1]:99999\"",
            huge.as_str(),
        ] {
            for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
                let mut map = HeaderMap::new();
                map.append(
                    &FORWARDED,
                    HeaderValue::from_str(line).expect("test header"),
                );
                map.append(
                    &X_FORWARDED_FOR,
                    HeaderValue::from_str(line).expect("test header"),
                );
                resolve_client_ip(ip("10.0.0.1"), &map, &trusted, header);
            }
        }
    }

    #[test]
    fn bare_addresses_are_single_host_cidrs() {
        let trusted = proxies(&["127.0.0.1", "::1"]);
        assert!(trusted.contains(ip("127.0.0.1")));
        assert!(!trusted.contains(ip("127.0.0.2")));
        assert!(trusted.contains(ip("::1")));
        assert!(!trusted.contains(ip("::2")));
    }

    #[test]
    fn none_trusts_nobody() {
        assert!(TrustedProxies::none().is_empty());
        assert!(!TrustedProxies::none().contains(ip("127.0.0.1")));
        assert_eq!(TrustedProxies::default(), TrustedProxies::none());
    }

    #[test]
    fn invalid_cidr_error_names_value() {
        let err = TrustedProxies::new(["10.0.0.0/8", "10.0.0.0/33"]).unwrap_err();
        assert_eq!(
            err,
            TrustedProxiesError::InvalidCidr {
                value: "10.0.0.0/33".to_owned()
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid trusted proxy \"10.0.0.0/33\": expected an IP address or CIDR such as 10.0.0.0/8"
        );
    }

    #[test]
    fn from_str_parses_comma_separated_list() {
        let parsed: TrustedProxies = "10.0.0.0/8, 2001:db8::/32,127.0.0.1".parse().unwrap();
        assert_eq!(
            parsed,
            proxies(&["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"])
        );
        assert_eq!("".parse::<TrustedProxies>(), Ok(TrustedProxies::none()));
        assert_eq!(
            "10.0.0.0/8,".parse::<TrustedProxies>(),
            Err(TrustedProxiesError::InvalidCidr {
                value: String::new()
            })
        );
    }

    #[test]
    fn deserialize_from_json_array() {
        let parsed: TrustedProxies = serde_json::from_str(r#"["10.0.0.0/8", "::1"]"#).unwrap();
        assert_eq!(parsed, proxies(&["10.0.0.0/8", "::1"]));

        let err =
            serde_json::from_str::<TrustedProxies>(r#"["10.0.0.0/8", "localhost"]"#).unwrap_err();
        assert!(err.to_string().contains("\"localhost\""), "{err}");

        let err = serde_json::from_str::<TrustedProxies>(r#""10.0.0.0/8""#).unwrap_err();
        assert!(err.to_string().contains("expected a list"), "{err}");
    }

    #[test]
    fn forwarded_header_deserializes_kebab_case() {
        let header: ForwardedHeader = serde_json::from_str(r#""x-forwarded-for""#).unwrap();
        assert_eq!(header, ForwardedHeader::XForwardedFor);
        let header: ForwardedHeader = serde_json::from_str(r#""forwarded""#).unwrap();
        assert_eq!(header, ForwardedHeader::Forwarded);
    }
}
