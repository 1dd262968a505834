use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, SET_COOKIE};
use http::response::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use tollgate_core::ratelimit::{RATELIMIT, RATELIMIT_POLICY};
use tollgate_core::remove_hop_by_hop;

use crate::policy::CompiledPolicy;
use crate::semantics::{age_at, explicit_lifetime, CacheControl, Vary};
use crate::store::CachedResponse;

/// The most tags one response carries into the store.
const MAX_TAGS: usize = 64;

/// Why a response is not stored, for the debug log.
pub(crate) type NotStored = &'static str;

/// A response the cache may store, and for how long.
#[derive(Debug)]
pub(crate) struct Admitted {
    vary: Vec<HeaderName>,
    initial_age: Duration,
    fresh_for: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
}

/// Decides by RFC 9111 (as a shared cache) and the route's policy whether a response may be
/// stored. `per_principal` says the key names the caller, which makes `private` storable.
pub(crate) fn admit(
    policy: &CompiledPolicy,
    response: &Parts,
    per_principal: bool,
    now: SystemTime,
) -> Result<Admitted, NotStored> {
    if !policy.stores_status(response.status) {
        return Err("status not stored on this route");
    }
    let headers = &response.headers;
    let cc = CacheControl::of(headers);
    if cc.no_store {
        return Err("no-store");
    }
    if cc.no_cache {
        // Reuse would need revalidation with the origin every time.
        return Err("no-cache");
    }
    if cc.private && !per_principal {
        return Err("private response to a request keyed for everyone");
    }
    if headers.contains_key(SET_COOKIE) && !policy.store_set_cookie {
        return Err("set-cookie");
    }
    let vary = match Vary::of(headers) {
        Vary::None => Vec::new(),
        Vary::Names(names) => names,
        Vary::Any => return Err("vary: *"),
    };
    let lifetime = explicit_lifetime(&cc, headers, now)
        .unwrap_or(policy.ttl)
        .min(policy.max_ttl);
    let initial_age = age_at(headers, now);
    let fresh_for = lifetime.saturating_sub(initial_age);
    if fresh_for.is_zero() {
        return Err("already stale");
    }
    // `s-maxage` carries `proxy-revalidate` for shared caches (RFC 9111 §5.2.2.10): only the
    // response's own stale directives, which RFC 5861 lets it add, may serve it stale.
    let (swr_default, sie_default) = if cc.s_maxage.is_some() {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (policy.stale_while_revalidate, policy.stale_if_error)
    };
    let (stale_while_revalidate, stale_if_error) = if cc.must_revalidate {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (
            cc.stale_while_revalidate.unwrap_or(swr_default),
            cc.stale_if_error.unwrap_or(sie_default),
        )
    };
    Ok(Admitted {
        vary,
        initial_age,
        fresh_for,
        stale_while_revalidate,
        stale_if_error,
    })
}

impl Admitted {
    /// The entry for an admitted response with its whole body.
    pub(crate) fn into_cached(
        self,
        response: Parts,
        body: Bytes,
        request: &HeaderMap,
        resource: Box<str>,
        tag_header: Option<&HeaderName>,
        now: SystemTime,
    ) -> CachedResponse {
        let (status, mut headers) = (response.status, response.headers);
        remove_hop_by_hop(&mut headers);
        // A caller's own allowance, as a rate limit inside the cache reported it: replayed to
        // another caller it would be wrong, and the limits outside the cache add their own.
        headers.remove(&RATELIMIT);
        headers.remove(&RATELIMIT_POLICY);
        if status != StatusCode::NO_CONTENT {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let vary = self
            .vary
            .into_iter()
            .map(|name| {
                // Copied: a value parsed from a request shares that request's whole head buffer.
                let values = request
                    .get_all(&name)
                    .iter()
                    .map(|v| HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone()))
                    .collect();
                (name, values)
            })
            .collect();
        let tags = tag_header.map_or_else(Vec::new, |name| tags(&headers, name));
        let fresh_until = now + self.fresh_for;
        CachedResponse {
            status,
            headers,
            body,
            vary,
            // Normalized only when a purge compares it: purges are rare, stores are not.
            resource,
            tags: tags.into_boxed_slice(),
            stored_at: now,
            initial_age: self.initial_age,
            fresh_until,
            stale_while_revalidate_until: fresh_until + self.stale_while_revalidate,
            stale_if_error_until: fresh_until + self.stale_if_error,
        }
    }
}

/// Tags from every line of the tag header, separated by commas or whitespace (`Cache-Tag`
/// uses commas, `Surrogate-Key` spaces).
fn tags(headers: &HeaderMap, name: &HeaderName) -> Vec<Box<str>> {
    let mut tags: Vec<Box<str>> = Vec::new();
    for value in headers.get_all(name) {
        let Ok(value) = value.to_str() else { continue };
        for tag in value.split(|c: char| c == ',' || c.is_ascii_whitespace()) {
            if !tag.is_empty() && tags.len() < MAX_TAGS && !tags.iter().any(|t| &**t == tag) {
                tags.push(tag.into());
            }
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::CachePolicy;

    fn parts(status: u16, headers: &[(&str, &str)]) -> Parts {
        let mut response = http::Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response.body(()).unwrap().into_parts().0
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn admitted(
        policy: CachePolicy,
        status: u16,
        headers: &[(&str, &str)],
    ) -> Result<Admitted, NotStored> {
        admit(&policy.compile(), &parts(status, headers), false, now())
    }

    #[test]
    fn silent_responses_get_the_route_ttl_and_explicit_ones_are_capped() {
        let policy = || {
            CachePolicy::new()
                .ttl(Duration::from_secs(30))
                .max_ttl(Duration::from_secs(600))
        };
        assert_eq!(
            admitted(policy(), 200, &[]).unwrap().fresh_for,
            Duration::from_secs(30)
        );
        assert_eq!(
            admitted(policy(), 200, &[("cache-control", "max-age=60")])
                .unwrap()
                .fresh_for,
            Duration::from_secs(60)
        );
        assert_eq!(
            admitted(policy(), 200, &[("cache-control", "max-age=86400")])
                .unwrap()
                .fresh_for,
            Duration::from_secs(600)
        );
        assert_eq!(
            admitted(
                policy(),
                200,
                &[("cache-control", "max-age=60"), ("age", "50")]
            )
            .unwrap()
            .fresh_for,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn responses_a_shared_cache_must_not_store_are_refused() {
        for headers in [
            &[("cache-control", "no-store")][..],
            &[("cache-control", "no-cache")],
            &[("cache-control", "private, max-age=60")],
            &[("set-cookie", "session=1")],
            &[("vary", "*")],
            &[("cache-control", "max-age=0")],
        ] {
            assert!(
                admitted(CachePolicy::new(), 200, headers).is_err(),
                "{headers:?}"
            );
        }
        assert!(admitted(CachePolicy::new(), 500, &[]).is_err());
        assert!(admitted(
            CachePolicy::new().store_set_cookie(true),
            200,
            &[("set-cookie", "a=1")]
        )
        .is_ok());
    }

    #[test]
    fn private_responses_are_stored_under_a_principal_key() {
        let policy = CachePolicy::new().compile();
        let response = parts(200, &[("cache-control", "private, max-age=60")]);
        assert!(admit(&policy, &response, true, now()).is_ok());
    }

    #[test]
    fn must_revalidate_turns_off_stale_serving() {
        let policy = CachePolicy::new().stale_if_error(Duration::from_secs(60));
        let with = admitted(
            policy.clone(),
            200,
            &[("cache-control", "max-age=5, must-revalidate")],
        )
        .unwrap();
        assert_eq!(with.stale_if_error, Duration::ZERO);
        let without = admitted(policy, 200, &[("cache-control", "max-age=5")]).unwrap();
        assert_eq!(without.stale_if_error, Duration::from_secs(60));
    }

    #[test]
    fn a_callers_rate_limit_fields_are_not_stored() {
        let response = parts(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("ratelimit", "\"basic\";r=1;t=1"),
                ("ratelimit-policy", "\"basic\";q=2;w=1"),
                ("x-kept", "yes"),
            ],
        );
        let stored = admit(&CachePolicy::new().compile(), &response, false, now())
            .unwrap()
            .into_cached(
                response,
                Bytes::from_static(b"ok"),
                &HeaderMap::new(),
                "/".into(),
                None,
                now(),
            );
        assert!(!stored.headers.contains_key(&RATELIMIT));
        assert!(!stored.headers.contains_key(&RATELIMIT_POLICY));
        assert_eq!(stored.headers["x-kept"], "yes");
    }

    #[test]
    fn tags_split_on_commas_and_spaces_without_repeats() {
        let mut headers = HeaderMap::new();
        headers.append("cache-tag", HeaderValue::from_static("a, b"));
        headers.append("cache-tag", HeaderValue::from_static("b c"));
        let tags = tags(&headers, &HeaderName::from_static("cache-tag"));
        assert_eq!(
            tags,
            vec!["a".into(), "b".into(), "c".into()] as Vec<Box<str>>
        );
    }
}
