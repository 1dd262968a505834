//! HTTP caching rules for a shared cache: RFC 9111, the RFC 5861 stale extensions and the
//! RFC 9110 conditional requests the cache answers itself.
//!
//! Everything reads header bytes in place: these run on every request, and the values come
//! from clients and upstreams, so any byte sequence must parse to something conservative.

use std::time::{Duration, SystemTime};

use http::header::{
    AGE, CACHE_CONTROL, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue};

/// RFC 9111 §1.2.2: the largest delta-seconds a cache needs to represent.
const MAX_DELTA: u64 = 1 << 31;

/// Cache-Control directives the cache acts on (request or response).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    /// `no-store`.
    pub(crate) no_store: bool,
    /// `no-cache`, with or without field names (field-name forms are treated as the plain one:
    /// conservative).
    pub(crate) no_cache: bool,
    /// `private`, with or without field names (same reason).
    pub(crate) private: bool,
    /// `public`.
    pub(crate) public: bool,
    /// `must-revalidate` or `proxy-revalidate`: no stale serving.
    pub(crate) must_revalidate: bool,
    /// `max-age`; an invalid value is `Some(ZERO)` (RFC 9111 §4.2.1: treat as stale).
    pub(crate) max_age: Option<Duration>,
    /// `s-maxage`; an invalid value is `Some(ZERO)`, as for `max_age`.
    pub(crate) s_maxage: Option<Duration>,
    /// `stale-while-revalidate` (RFC 5861 §3); an invalid value is ignored.
    pub(crate) stale_while_revalidate: Option<Duration>,
    /// `stale-if-error` (RFC 5861 §4); an invalid value is ignored.
    pub(crate) stale_if_error: Option<Duration>,
}

impl CacheControl {
    /// Parses every `Cache-Control` field line in `headers` (there may be several lines; each a
    /// comma-separated list).
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        // The stale extensions may be seen with an ignored value; the outer Option records that
        // they were seen, so a later repetition cannot replace the first occurrence.
        let mut swr: Option<Option<Duration>> = None;
        let mut sie: Option<Option<Duration>> = None;
        for item in headers.get_all(CACHE_CONTROL).iter().flat_map(elements) {
            let (name, value) = directive(item);
            let delta = value.and_then(delta_seconds);
            let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
            if is("no-store") {
                cc.no_store = true;
            } else if is("no-cache") {
                cc.no_cache = true;
            } else if is("private") {
                cc.private = true;
            } else if is("public") {
                cc.public = true;
            } else if is("must-revalidate") || is("proxy-revalidate") {
                cc.must_revalidate = true;
            } else if is("max-age") {
                cc.max_age.get_or_insert(delta.unwrap_or(Duration::ZERO));
            } else if is("s-maxage") {
                cc.s_maxage.get_or_insert(delta.unwrap_or(Duration::ZERO));
            } else if is("stale-while-revalidate") {
                swr.get_or_insert(delta);
            } else if is("stale-if-error") {
                sie.get_or_insert(delta);
            }
        }
        cc.stale_while_revalidate = swr.flatten();
        cc.stale_if_error = sie.flatten();
        cc
    }

    /// True when a request asks the cache to go to the origin: `no-cache` or `max-age=0`.
    pub(crate) fn wants_refresh(&self) -> bool {
        self.no_cache || self.max_age == Some(Duration::ZERO)
    }
}

/// How long a response stays fresh, measured from when it was generated, by RFC 9111 §4.2.1 for
/// a shared cache: `s-maxage`, else `max-age`, else `Expires` minus `Date` (minus `received` when
/// there is no valid Date); an `Expires` that does not parse (e.g. "0") means already expired
/// (`Duration::ZERO`). `None` when the response says nothing (the caller then applies its route
/// default). Expires earlier than Date → ZERO.
pub(crate) fn explicit_lifetime(
    cc: &CacheControl,
    headers: &HeaderMap,
    received: SystemTime,
) -> Option<Duration> {
    if let Some(lifetime) = cc.s_maxage.or(cc.max_age) {
        return Some(lifetime);
    }
    if !headers.contains_key(EXPIRES) {
        return None;
    }
    // RFC 9111 §4.2 allows a duplicated Expires to be taken as stale; doubt must not extend
    // freshness, so it is treated like an unparsable one.
    let Some(expires) = sole(headers, &EXPIRES).and_then(http_date) else {
        return Some(Duration::ZERO);
    };
    let date = sole(headers, &DATE).and_then(http_date).unwrap_or(received);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// The response's age when it was received, RFC 9111 §4.2.3 (simplified for an in-process cache
/// with no request delay): max(Age header (delta-seconds; invalid ignored), received − Date (0 if
/// Date is missing, invalid, or in the future)).
pub(crate) fn age_at(headers: &HeaderMap, received: SystemTime) -> Duration {
    let age = sole(headers, &AGE)
        .and_then(|v| delta_seconds(v.as_bytes().trim_ascii()))
        .unwrap_or(Duration::ZERO);
    let apparent = sole(headers, &DATE)
        .and_then(http_date)
        .and_then(|date| received.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    age.max(apparent)
}

/// What a response's `Vary` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Vary {
    /// No Vary, or an empty one.
    None,
    /// `Vary: *` (anywhere in the list): the response can never be reused.
    Any,
    /// The request header names (lower-cased by `HeaderName`), in order of appearance, without
    /// duplicates.
    Names(Vec<HeaderName>),
}

impl Vary {
    /// Reads every `Vary` line of `headers`; a token that is not a valid header name makes it `Any`
    /// (cannot be matched safely).
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut names = Vec::new();
        for item in headers.get_all(VARY).iter().flat_map(elements) {
            let Ok(name) = HeaderName::from_bytes(item) else {
                return Self::Any;
            };
            if name == "*" {
                return Self::Any;
            }
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if names.is_empty() {
            Self::None
        } else {
            Self::Names(names)
        }
    }
}

/// Whether a conditional request can be answered 304 from a stored response (RFC 9110 §13.1.2,
/// §13.1.3, §13.2.2): if the request has If-None-Match: true when it is `*` or any listed
/// entity-tag weakly matches the stored ETag (weak comparison: `W/"a"` matches `"a"`);
/// If-Modified-Since is then ignored. Otherwise if it has If-Modified-Since and the stored response
/// has Last-Modified: true when both parse (httpdate) and Last-Modified <= If-Modified-Since.
/// Otherwise false. Malformed values → false (never 304 on doubt).
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if request.contains_key(IF_NONE_MATCH) {
        let current = sole(stored, &ETAG).and_then(|v| opaque_tag(v.as_bytes().trim_ascii()));
        let (mut count, mut star, mut matched) = (0, false, false);
        for item in request.get_all(IF_NONE_MATCH).iter().flat_map(elements) {
            count += 1;
            if item == b"*" {
                star = true;
            } else {
                let Some(tag) = opaque_tag(item) else {
                    return false;
                };
                matched |= current == Some(tag);
            }
        }
        // `*` is only meaningful alone; inside a list it is malformed.
        return if star { count == 1 } else { matched };
    }
    let since = sole(request, &IF_MODIFIED_SINCE).and_then(http_date);
    let modified = sole(stored, &LAST_MODIFIED).and_then(http_date);
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

/// The non-empty, trimmed elements of a comma-separated list; commas inside quoted strings do not
/// split it.
fn elements(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    let mut rest = value.as_bytes();
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let (mut quoted, mut escaped) = (false, false);
        let mut end = rest.len();
        for (i, &b) in rest.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted {
                escaped = b == b'\\';
                quoted = b != b'"';
            } else if b == b'"' {
                quoted = true;
            } else if b == b',' {
                end = i;
                break;
            }
        }
        let item = rest[..end].trim_ascii();
        rest = rest.get(end + 1..).unwrap_or_default();
        if !item.is_empty() {
            return Some(item);
        }
    })
}

/// Splits a directive into its name and value; a value that opens a quote without closing it is
/// no value.
fn directive(item: &[u8]) -> (&[u8], Option<&[u8]>) {
    let Some(eq) = item.iter().position(|&b| b == b'=') else {
        return (item, None);
    };
    let value = item[eq + 1..].trim_ascii();
    let value = match value.strip_prefix(b"\"") {
        Some(inner) => inner.strip_suffix(b"\""),
        None => Some(value),
    };
    (item[..eq].trim_ascii(), value)
}

/// RFC 9111 §1.2.2 delta-seconds: digits only, saturating at 2^31.
fn delta_seconds(value: &[u8]) -> Option<Duration> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = value.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Some(Duration::from_secs(secs.min(MAX_DELTA)))
}

/// The opaque-tag of an entity-tag (RFC 9110 §8.8.3) without its weakness, for weak comparison.
fn opaque_tag(tag: &[u8]) -> Option<&[u8]> {
    let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
    let inner = tag.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let etagc = |&b: &u8| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80;
    inner.iter().all(etagc).then_some(inner)
}

/// The value of a singleton field, or `None` when it is missing or repeated (a repeated one
/// cannot be trusted).
fn sole<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// An HTTP-date (any of the three RFC 9110 §5.6.7 forms); `None` for anything else.
fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    let text = std::str::from_utf8(value.as_bytes()).ok()?;
    httpdate::parse_http_date(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONNECTION;
    use std::time::UNIX_EPOCH;
    use tollgate_core::remove_hop_by_hop;

    const ZERO: Duration = Duration::ZERO;
    const NOW: u64 = 1_700_000_000;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Builds a map from `name: value` lines, so tests read like the wire.
    fn map(text: impl AsRef<[u8]>) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in text
            .as_ref()
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':').unwrap());
            let value = HeaderValue::from_bytes(value[1..].trim_ascii()).unwrap();
            map.append(HeaderName::from_bytes(name).unwrap(), value);
        }
        map
    }

    fn cc(value: &str) -> CacheControl {
        CacheControl::of(&map(format!("cache-control: {value}")))
    }

    /// An HTTP-date `offset` seconds from `NOW`.
    fn date(offset: i64) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + secs(NOW.saturating_add_signed(offset)))
    }

    fn lifetime(text: impl AsRef<[u8]>) -> Option<Duration> {
        let map = map(text);
        explicit_lifetime(&CacheControl::of(&map), &map, UNIX_EPOCH + secs(NOW))
    }

    fn age(text: impl AsRef<[u8]>) -> Duration {
        age_at(&map(text), UNIX_EPOCH + secs(NOW))
    }

    fn conditional(request: impl AsRef<[u8]>, stored: impl AsRef<[u8]>) -> bool {
        not_modified(&map(request), &map(stored))
    }

    #[test]
    fn s_maxage_wins_over_max_age_which_wins_over_expires() {
        let expires = format!("expires: {}", date(500));
        assert_eq!(
            lifetime(format!("cache-control: max-age=60, s-maxage=30\n{expires}")),
            Some(secs(30))
        );
        assert_eq!(
            lifetime(format!("cache-control: max-age=60\n{expires}")),
            Some(secs(60))
        );
    }

    #[test]
    fn expires_counts_from_date_or_else_from_received() {
        let (later, earlier) = (date(500), date(-100));
        assert_eq!(
            lifetime(format!("expires: {later}\ndate: {earlier}")),
            Some(secs(600))
        );
        assert_eq!(lifetime(format!("expires: {later}")), Some(secs(500)));
        assert_eq!(
            lifetime(format!("expires: {earlier}\ndate: {later}")),
            Some(ZERO)
        );
    }

    #[test]
    fn unparsable_or_repeated_expires_is_already_expired_and_silence_is_none() {
        assert_eq!(lifetime("expires: 0"), Some(ZERO));
        assert_eq!(
            lifetime(format!("expires: {0}\nexpires: {0}", date(9))),
            Some(ZERO)
        );
        assert_eq!(lifetime("cache-control: public, no-cache"), None);
        assert_eq!(lifetime(""), None);
    }

    #[test]
    fn quoted_commas_do_not_split_directives() {
        let parsed = cc(r#"no-cache="Set-Cookie, X-Foo", max-age="60", private="a,b""#);
        assert!(parsed.no_cache && parsed.private && !parsed.public);
        assert_eq!(parsed.max_age, Some(secs(60)));
    }

    #[test]
    fn first_occurrence_of_a_directive_wins_across_lines() {
        let text = "cache-control: max-age=10\ncache-control: max-age=20, stale-if-error=x";
        let parsed = CacheControl::of(&map(format!("{text}, stale-if-error=5")));
        assert_eq!(
            (parsed.max_age, parsed.stale_if_error),
            (Some(secs(10)), None)
        );
    }

    #[test]
    fn invalid_max_age_is_zero_but_invalid_stale_extensions_are_ignored() {
        for bad in [
            "max-age=",
            "max-age=-1",
            "max-age=1a",
            "max-age",
            "max-age=\"5",
            "max-age=+5",
        ] {
            assert_eq!(cc(bad).max_age, Some(ZERO), "{bad}");
        }
        assert_eq!(cc("s-maxage=x").s_maxage, Some(ZERO));
        let parsed = cc("stale-while-revalidate=-5, stale-if-error");
        assert_eq!(
            (parsed.stale_while_revalidate, parsed.stale_if_error),
            (None, None)
        );
    }

    #[test]
    fn huge_delta_seconds_saturate_at_two_to_the_31() {
        let parsed = cc("max-age=99999999999999999999999, stale-while-revalidate=2147483649");
        assert_eq!(parsed.max_age, Some(secs(1 << 31)));
        assert_eq!(parsed.stale_while_revalidate, Some(secs(1 << 31)));
    }

    #[test]
    fn directive_names_are_case_insensitive_and_whitespace_tolerant() {
        let parsed = cc(" No-Store ,MAX-AGE = 7,\tProxy-Revalidate , S-MaxAge= \"9\" ,PUBLIC");
        let expected = CacheControl {
            no_store: true,
            public: true,
            must_revalidate: true,
            max_age: Some(secs(7)),
            s_maxage: Some(secs(9)),
            ..CacheControl::default()
        };
        assert_eq!(parsed, expected);
    }

    #[test]
    fn refresh_is_wanted_on_no_cache_or_max_age_zero_only() {
        assert!(cc("no-cache").wants_refresh());
        assert!(cc("max-age=0").wants_refresh());
        assert!(!cc("max-age=1, no-store").wants_refresh());
    }

    #[test]
    fn age_is_the_larger_of_age_header_and_apparent_age() {
        let sent = date(-30);
        assert_eq!(age(format!("age: 100\ndate: {sent}")), secs(100));
        assert_eq!(age(format!("age: 10\ndate: {sent}")), secs(30));
        assert_eq!(age("age: ten\ndate: garbage"), ZERO);
    }

    #[test]
    fn date_in_the_future_gives_no_apparent_age() {
        assert_eq!(age(format!("date: {}", date(60))), ZERO);
    }

    #[test]
    fn vary_reads_names_in_order_without_duplicates() {
        assert_eq!(Vary::of(&map("")), Vary::None);
        assert_eq!(Vary::of(&map("vary: ,")), Vary::None);
        let names = ["accept-encoding", "x-tenant"]
            .map(HeaderName::from_static)
            .to_vec();
        let vary = Vary::of(&map(
            "vary: Accept-Encoding, X-Tenant\nvary: accept-encoding",
        ));
        assert_eq!(vary, Vary::Names(names));
    }

    #[test]
    fn vary_star_or_invalid_token_is_any() {
        assert_eq!(Vary::of(&map("vary: accept\nvary: origin, *")), Vary::Any);
        assert_eq!(Vary::of(&map("vary: accept, bad name")), Vary::Any);
        assert_eq!(Vary::of(&map("vary: \"quoted\"")), Vary::Any);
    }

    #[test]
    fn if_none_match_uses_weak_comparison_over_the_list() {
        assert!(conditional(r#"if-none-match: W/"a""#, r#"etag: "a""#));
        assert!(conditional(r#"if-none-match: "a""#, r#"etag: W/"a""#));
        assert!(conditional(
            r#"if-none-match: W/"x","a,b" , "y""#,
            r#"etag: "a,b""#
        ));
        assert!(conditional(
            "if-none-match: \"x\"\nif-none-match: \"y\"",
            r#"etag: "y""#
        ));
        assert!(!conditional(r#"if-none-match: "a", "b""#, r#"etag: "a,b""#));
        assert!(!conditional(r#"if-none-match: "b""#, r#"etag: "a""#));
    }

    #[test]
    fn if_none_match_star_matches_any_stored_response_but_only_alone() {
        assert!(conditional("if-none-match: *", ""));
        assert!(!conditional(r#"if-none-match: *, "a""#, r#"etag: "a""#));
    }

    #[test]
    fn malformed_entity_tags_never_match() {
        assert!(!conditional("if-none-match: a", "etag: a"));
        assert!(!conditional(r#"if-none-match: "a", junk"#, r#"etag: "a""#));
        assert!(!conditional(r#"if-none-match: "a""#, ""));
    }

    #[test]
    fn if_modified_since_compares_against_last_modified() {
        let ims = format!("if-modified-since: {}", date(0));
        let modified = |offset| format!("last-modified: {}", date(offset));
        assert!(conditional(&ims, modified(0)));
        assert!(conditional(&ims, modified(-60)));
        assert!(!conditional(&ims, modified(60)));
        assert!(!conditional("if-modified-since: yesterday", modified(-60)));
        assert!(!conditional(&ims, ""));
    }

    #[test]
    fn non_matching_if_none_match_overrides_a_matching_if_modified_since() {
        let request = format!("if-none-match: \"new\"\nif-modified-since: {}", date(0));
        let stored = format!("etag: \"old\"\nlast-modified: {}", date(-60));
        assert!(!conditional(request, stored));
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut headers = map(b"connection: close, X-Secret\nkeep-alive: timeout=5
connection: x-other, connection, bad name, \xff\nproxy-connection: keep-alive\nte: trailers
transfer-encoding: chunked\ntrailer: x-sum\nupgrade: h2c\nproxy-authenticate: Basic
proxy-authorization: Basic eA==\nx-secret: 1\nx-other: 2\ncontent-type: text/plain
cache-control: max-age=5");
        remove_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type", "cache-control"]);
    }

    #[test]
    fn non_ascii_header_bytes_do_not_panic() {
        let mut headers = map(
            b"cache-control: \xff\xfe, max-age=\xc3\xa9, \"\xe2\x82\xac,\", public
cache-control: \x80\nvary: \xe9t\xe9\netag: \"\xff\"\nif-none-match: W/\"\xff\"\nage: \xff1
expires: Thu, 01 Jan 1970 00:00:00 \xc3\xa9\ndate: \xff\nconnection: \xff, x-\xfe",
        );
        let parsed = CacheControl::of(&headers);
        assert!(parsed.public);
        assert_eq!(parsed.max_age, Some(ZERO));
        let now = UNIX_EPOCH + secs(NOW);
        assert_eq!(
            explicit_lifetime(&CacheControl::default(), &headers, now),
            Some(ZERO)
        );
        assert_eq!(age_at(&headers, now), ZERO);
        assert_eq!(Vary::of(&headers), Vary::Any);
        assert!(not_modified(&headers, &headers)); // obs-text is legal inside an entity-tag
        remove_hop_by_hop(&mut headers);
        assert!(!headers.contains_key(CONNECTION));
    }
}
