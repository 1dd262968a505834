//! The usage-plan layer's cost beside a bare service, measured in the same run.
//!
//! Every variant of a group builds its requests the same way inside the timed loop: a fresh
//! `Request<()>` with an `x-api-key` header cloned from a static value made before timing,
//! the keys taken in turn from a list of 10,000. Services are driven directly (`poll_ready`,
//! `call`, one poll with a no-op waker), as in the other benches.
//!
//! - `usage/allowed`: `bare` is the baseline; `one_key` and `million_keys` are the bare
//!   service behind a [`UsageLayer`] with a plan whose throttle (10⁹/s, burst 10⁹)
//!   and quota (`u32::MAX` a day) never refuse, so every request does the whole
//!   admitted path: key lookup, SHA-256 and constant-time compare, plan throttle (GCRA),
//!   quota (one compare-and-swap for the period, one for the day), the `Principal`, and the
//!   `RateLimit-Policy` / `RateLimit` fields. `million_keys` has 1,000,000 keys loaded, of
//!   which the requests use 10,000 in turn; `one_key` has only the key it uses. The
//!   `_no_fields` variants leave the fields off admitted responses
//!   (`AllowedFields::None`), to show what the fields cost apart from the checks.
//! - `usage/refused`: `missing_key` (no header: 401) beside `bare`; `unknown_key` (a key id
//!   no key has: 401) and `quota_exceeded` (a key whose quota is spent: 429) beside
//!   `bare_with_key`, which sends the same kind of header.
//!
//! Run with `cargo bench --bench usage`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use tollgate::throttle::{AllowedFields, Rate};
use tollgate::usage::{ApiKey, KeyHash, QuotaPeriod, UsagePlan, UsagePlans};
use tower::{Service, ServiceBuilder};

mod support;
use support::{bare, configure, serve};

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The default (`RateLimit-Policy` and `RateLimit` on admitted responses) and no fields.
const VARIANTS: [(&str, AllowedFields); 2] = [
    ("", AllowedFields::RateLimitAndPolicy),
    ("_no_fields", AllowedFields::None),
];

/// Keys the requests take in turn.
const ACTIVE_KEYS: usize = 10_000;

/// A plan that never refuses: the whole admitted path, every time.
fn open_plan() -> UsagePlan {
    UsagePlan::new("bench")
        .throttle(Rate::per_second(1_000_000_000), 1_000_000_000)
        .quota(u32::MAX, QuotaPeriod::Day)
}

/// The plaintext of key number `n` (a fixed secret: hashing costs the same for any).
fn plaintext(n: usize) -> String {
    format!("tg_k{n:07}_Q8vJ2xLm4Rt7Wp9Zc3Nh6Ysd")
}

/// `count` keys on plan `plan`, made from their plaintexts' hashes.
fn keys(count: usize, plan: &str) -> impl Iterator<Item = ApiKey> + '_ {
    let plan: Arc<str> = plan.into();
    let created = SystemTime::now();
    (0..count).map(move |n| {
        let hash = KeyHash::of(plaintext(n).as_bytes());
        ApiKey::new(format!("k{n:07}"), plan.clone(), hash, created).expect("the key id is valid")
    })
}

/// Static header values of the first `count` keys.
fn headers(count: usize) -> Vec<HeaderValue> {
    (0..count)
        .map(|n| HeaderValue::from_static(Box::leak(plaintext(n).into_boxed_str())))
        .collect()
}

/// Measures `service` with requests carrying `keys` in turn (or no key).
fn bench<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut service: S,
    keys: &[HeaderValue],
    expected: StatusCode,
) where
    S: Service<Request<()>, Response = Response<B>>,
{
    let request = |n: usize| {
        let mut request = Request::new(());
        if !keys.is_empty() {
            let value = keys[n % keys.len()].clone();
            request.headers_mut().insert(X_API_KEY.clone(), value);
        }
        request
    };
    // A wrong setup fails loudly instead of measuring the wrong path.
    assert_eq!(serve(&mut service, request(0)).status(), expected, "{name}");
    let mut n = 0;
    group.bench_function(name, |b| {
        b.iter(|| {
            n += 1;
            let response = serve(&mut service, request(black_box(n)));
            assert_eq!(
                response.status(),
                expected,
                "{name} request {n}: {:?}",
                response.headers()
            );
            response
        })
    });
}

fn allowed(c: &mut Criterion) {
    let active = headers(ACTIVE_KEYS);
    let mut group = c.benchmark_group("usage/allowed");
    configure(&mut group);
    bench(&mut group, "bare", bare(), &active, StatusCode::OK);

    for (suffix, fields) in VARIANTS {
        let one = UsagePlans::builder()
            .plan(open_plan())
            .allowed_fields(fields)
            .key(keys(1, "bench").next().expect("one key"))
            .build()
            .expect("the benchmark's plans are valid");
        let service = ServiceBuilder::new().layer(one.layer()).service(bare());
        let name = format!("one_key{suffix}");
        bench(&mut group, &name, service, &active[..1], StatusCode::OK);
    }

    for (suffix, fields) in VARIANTS {
        let mut builder = UsagePlans::builder()
            .plan(open_plan())
            .allowed_fields(fields);
        for key in keys(1_000_000, "bench") {
            builder = builder.key(key);
        }
        let million = builder.build().expect("the benchmark's plans are valid");
        let service = ServiceBuilder::new().layer(million.layer()).service(bare());
        let name = format!("million_keys{suffix}");
        bench(&mut group, &name, service, &active, StatusCode::OK);
    }
    group.finish();
}

fn refused(c: &mut Criterion) {
    let active = headers(ACTIVE_KEYS);
    let mut group = c.benchmark_group("usage/refused");
    configure(&mut group);
    let plans = UsagePlans::builder()
        .plan(open_plan())
        .plan(
            UsagePlan::new("spent").quota(1, QuotaPeriod::Every(Duration::from_secs(86_400 * 365))),
        )
        .key(keys(1, "spent").next().expect("one key"))
        .build()
        .expect("the benchmark's plans are valid");
    let layered = || ServiceBuilder::new().layer(plans.layer()).service(bare());

    bench(&mut group, "bare", bare(), &[], StatusCode::OK);
    bench(
        &mut group,
        "missing_key",
        layered(),
        &[],
        StatusCode::UNAUTHORIZED,
    );
    bench(&mut group, "bare_with_key", bare(), &active, StatusCode::OK);
    // Key 1 onwards are not in the store.
    bench(
        &mut group,
        "unknown_key",
        layered(),
        &active[1..],
        StatusCode::UNAUTHORIZED,
    );
    // Key 0's only unit of quota goes to the setup check; every timed request is refused.
    let mut service = layered();
    assert_eq!(
        serve(&mut service, keyed(&active[0])).status(),
        StatusCode::OK
    );
    bench(
        &mut group,
        "quota_exceeded",
        service,
        &active[..1],
        StatusCode::TOO_MANY_REQUESTS,
    );
    group.finish();
}

fn keyed(key: &HeaderValue) -> Request<()> {
    let mut request = Request::new(());
    request.headers_mut().insert(X_API_KEY.clone(), key.clone());
    request
}

criterion_group!(benches, allowed, refused);
criterion_main!(benches);
