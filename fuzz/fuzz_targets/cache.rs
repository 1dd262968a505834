//! The response cache on hostile headers, through its public layer: `Cache-Control`,
//! `Pragma`, conditional and credential headers on requests; `Cache-Control`, `Expires`, `Age`,
//! `Date`, validators, `Vary`, `Set-Cookie`, `Location` and cache tags on responses; and the
//! path and query the cache key is built from. A run is a short session of requests against
//! one cache, with time moving between them, so stores, hits, revalidations, stale serving,
//! invalidations and purges all meet the parsed values.
//!
//! Every answer must be complete (its body readable to the end) and never panic.
#![no_main]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use tollgate::cache::{CacheLayer, CachePolicy, ClientRefresh, QueryKey, Sharing, X_CACHE_STATUS};
use tollgate::core::{ManualClock, Principal};
use tower::{service_fn, Layer, ServiceExt};

const REQUEST_HEADERS: [&str; 9] = [
    "cache-control",
    "pragma",
    "if-none-match",
    "if-modified-since",
    "authorization",
    "cookie",
    "x-api-key",
    "accept-language",
    "host",
];

const RESPONSE_HEADERS: [&str; 12] = [
    "cache-control",
    "expires",
    "age",
    "date",
    "etag",
    "last-modified",
    "vary",
    "set-cookie",
    "location",
    "content-location",
    "cache-tag",
    "pragma",
];

#[derive(Arbitrary, Debug)]
struct Step<'a> {
    advance_secs: u8,
    method: Verb,
    target: Target<'a>,
    headers: Vec<(u8, &'a [u8])>,
    principal: Option<(&'a str, Vec<&'a str>)>,
    /// What the upstream answers if the cache asks it.
    upstream: Upstream<'a>,
    purge: Option<Purge<'a>>,
}

#[derive(Arbitrary, Debug)]
enum Verb {
    Get,
    Head,
    Post,
    Delete,
}

#[derive(Arbitrary, Debug)]
enum Target<'a> {
    /// `/items/{id}?{query}`: the route with a per-principal policy and key headers.
    Item(&'a str, Option<&'a str>),
    /// `/only?{query}`: a shared route keyed by chosen parameters.
    Only(Option<&'a str>),
    /// Any path and query (the default policy).
    Raw(&'a str),
}

#[derive(Arbitrary, Debug)]
struct Upstream<'a> {
    fail: bool,
    status: u16,
    headers: Vec<(u8, &'a [u8])>,
    body: &'a [u8],
}

#[derive(Arbitrary, Debug)]
enum Purge<'a> {
    Resource(&'a str),
    Prefix(&'a str),
    Tag(&'a str),
    All,
}

fn uri(target: &Target<'_>) -> String {
    let with_query = |path: String, query: &Option<&str>| match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    match target {
        Target::Item(id, query) => with_query(format!("/items/{id}"), query),
        Target::Only(query) => with_query("/only".to_owned(), query),
        Target::Raw(raw) => format!("/{raw}"),
    }
}

/// What the upstream answers one request with.
type Answer = Result<Response<Full<Bytes>>, &'static str>;

fn upstream_response(upstream: &Upstream<'_>) -> Answer {
    if upstream.fail {
        return Err("upstream failed");
    }
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(upstream.body)));
    *response.status_mut() = StatusCode::from_u16(upstream.status).unwrap_or(StatusCode::OK);
    for (name, value) in &upstream.headers {
        let name = RESPONSE_HEADERS[usize::from(*name) % RESPONSE_HEADERS.len()];
        if let Ok(value) = HeaderValue::from_bytes(value) {
            response
                .headers_mut()
                .append(HeaderName::from_static(name), value);
        }
    }
    Ok(response)
}

fuzz_target!(|steps: Vec<Step<'_>>| {
    let clock = ManualClock::starting_at(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let layer = CacheLayer::builder()
        .policy(
            CachePolicy::new()
                .client_refresh(ClientRefresh::RequireScope("admin".into()))
                .stale_if_error(Duration::from_secs(30)),
        )
        .route(
            "GET /items/{id}",
            CachePolicy::new()
                .ttl(Duration::from_secs(60))
                .key_headers([HeaderName::from_static("accept-language")])
                .stale_while_revalidate(Duration::from_secs(20))
                .client_refresh(ClientRefresh::Allow),
        )
        .route(
            "GET /only",
            CachePolicy::new()
                .query(QueryKey::Only(vec!["page".into(), "a b".into()]))
                .sharing(Sharing::Shared)
                .store_set_cookie(true),
        )
        .max_bytes(1 << 20)
        .max_entry_bytes(4096)
        .wait_timeout(Duration::from_millis(50))
        .clock(clock.clone())
        .build()
        .expect("a valid cache layer");
    let handle = layer.handle();
    let answers: Arc<Mutex<VecDeque<Answer>>> = Arc::default();
    let upstream = {
        let answers = answers.clone();
        service_fn(move |_: Request<Full<Bytes>>| {
            let answer = answers
                .lock()
                .expect("not poisoned")
                .pop_front()
                .unwrap_or_else(|| Ok(Response::new(Full::new(Bytes::from_static(b"default")))));
            async move { answer }
        })
    };
    let service = layer.layer(upstream);

    for step in steps.iter().take(16) {
        clock.advance(Duration::from_secs(u64::from(step.advance_secs)));
        if let Some(purge) = &step.purge {
            match purge {
                Purge::Resource(path) => handle.purge_resource(path),
                Purge::Prefix(prefix) => handle.purge_prefix(prefix),
                Purge::Tag(tag) => handle.purge_tag(tag),
                Purge::All => handle.purge_all(),
            }
        }
        let method = match step.method {
            Verb::Get => Method::GET,
            Verb::Head => Method::HEAD,
            Verb::Post => Method::POST,
            Verb::Delete => Method::DELETE,
        };
        let Ok(mut request) = Request::builder()
            .method(method.clone())
            .uri(uri(&step.target))
            .body(Full::new(Bytes::new()))
        else {
            continue;
        };
        for (name, value) in &step.headers {
            let name = REQUEST_HEADERS[usize::from(*name) % REQUEST_HEADERS.len()];
            if let Ok(value) = HeaderValue::from_bytes(value) {
                request
                    .headers_mut()
                    .append(HeaderName::from_static(name), value);
            }
        }
        if let Some((subject, scopes)) = &step.principal {
            let principal = Principal::builder()
                .subject(*subject)
                .scopes(scopes.iter().copied())
                .build();
            request.extensions_mut().insert(principal);
        }
        answers
            .lock()
            .expect("not poisoned")
            .push_back(upstream_response(&step.upstream));

        let outcome = tollgate_fuzz::runtime().block_on(async {
            let response = service.clone().oneshot(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map(|_| ());
            Ok::<_, &'static str>((parts, body.is_ok()))
        });
        let Ok((parts, complete)) = outcome else {
            continue;
        };
        assert!(complete, "the body of a {} ended early", parts.status);
        if (method == Method::GET || method == Method::HEAD)
            && parts.status != StatusCode::FORBIDDEN
        {
            assert!(
                parts.headers.contains_key(X_CACHE_STATUS),
                "a {method} answer without X-Cache-Status"
            );
        }
        answers.lock().expect("not poisoned").clear();
    }
});
