//! The usage layer as a client sees it: a real server on loopback TCP, a real HTTP client,
//! and an injected clock for everything that depends on time.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::Request;
use axum::middleware::{from_fn, Next};
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use serde_json::json;
use support::{serve, utc, Client, Reply};
use tollgate_core::{Clock, ManualClock, Principal, Stage};
use tollgate_throttle::{AllowedFields, Rate};
use tollgate_usage::{
    DailyUsage, Day, KeyHash, KeySource, NewKey, QuotaPeriod, Secret, UsageConfig, UsagePlan,
    UsagePlans,
};

const QUOTA_EXCEEDED: &str = "urn:tollgate:problem:quota-exceeded";
const THROTTLED: &str = "urn:tollgate:problem:throttled";
const INVALID_API_KEY: &str = "urn:tollgate:problem:invalid-api-key";
const FORBIDDEN: &str = "urn:tollgate:problem:forbidden";

/// Routes whose handler answers with what the layer told it: the principal's subject, API
/// key id and plan id.
fn routes() -> Router {
    Router::new()
        .route("/widgets", get(whoami))
        .route("/search", get(whoami))
}

async fn whoami(principal: Principal) -> String {
    format!(
        "{} {} {}",
        principal.subject().unwrap_or("-"),
        principal.api_key_id().unwrap_or("-"),
        principal.usage_plan_id().unwrap_or("-"),
    )
}

/// `plans` enforced on [`routes`], served on loopback.
async fn start(plans: &UsagePlans) -> (SocketAddr, Client) {
    let addr = serve(routes().layer(plans.layer())).await;
    (addr, Client::new())
}

fn plans_on(clock: &ManualClock, plans: impl IntoIterator<Item = UsagePlan>) -> UsagePlans {
    plans
        .into_iter()
        .fold(
            UsagePlans::builder().clock(clock.clone()),
            |builder, plan| builder.plan(plan),
        )
        .build()
        .unwrap()
}

/// One key on `plan`, enforced on [`routes`] and served on loopback.
async fn serve_one_key(clock: &ManualClock, plan: UsagePlan) -> (SocketAddr, Client, Secret) {
    let id = plan.id().to_owned();
    let plans = plans_on(clock, [plan]);
    let (_, secret) = plans.create_key(NewKey::new(id)).await.unwrap();
    let (addr, client) = start(&plans).await;
    (addr, client, secret)
}

/// Moves `clock` forward to `at`.
fn advance_to(clock: &ManualClock, at: SystemTime) {
    clock.advance(at.duration_since(clock.system_time()).unwrap());
}

fn assert_refused(reply: &Reply, status: StatusCode, problem: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.problem(), problem, "{reply:?}");
}

fn assert_quota_exceeded(reply: &Reply, retry_after: u64) {
    assert_refused(reply, StatusCode::TOO_MANY_REQUESTS, QUOTA_EXCEEDED);
    assert_eq!(reply.header("retry-after"), retry_after.to_string());
}

fn assert_unknown_key(reply: &Reply) {
    assert_refused(reply, StatusCode::UNAUTHORIZED, INVALID_API_KEY);
    assert_eq!(reply.header("www-authenticate"), "ApiKey");
}

/// The `r` of the `"quota"` item of a `RateLimit` field.
/// Asserts the usage report of key `id` for `day` alone: `used` units, `remaining` left.
async fn assert_day_usage(plans: &UsagePlans, id: &str, day: Day, used: u64, remaining: u64) {
    let report = plans.usage(id, day, day).await.unwrap();
    let expected = DailyUsage {
        day,
        used,
        remaining: Some(remaining),
    };
    assert_eq!(report.days, [expected]);
}

fn quota_left(reply: &Reply) -> u64 {
    let field = reply.header("ratelimit");
    let item = field
        .split(", ")
        .find_map(|item| item.strip_prefix("\"quota\";r="))
        .unwrap_or_else(|| panic!("no quota item in RateLimit: {field}"));
    item.split(';').next().unwrap().parse().unwrap()
}

/// Makes `n` requests that must all be admitted.
async fn spend(client: &Client, addr: SocketAddr, key: &str, n: usize) {
    for _ in 0..n {
        let reply = client.with_key(addr, "/widgets", key).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_admits_exactly_its_limit_under_ten_thousand_concurrent_requests() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = plans_on(
        &clock,
        [UsagePlan::new("bulk").quota(1_000, QuotaPeriod::Day)],
    );
    let (key, secret) = plans.create_key(NewKey::new("bulk")).await.unwrap();
    let (addr, client) = start(&plans).await;
    let secret: Arc<str> = secret.expose().into();

    let started = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (client, secret) = (client.clone(), secret.clone());
            tokio::spawn(async move {
                let mut replies = Vec::with_capacity(50);
                for _ in 0..50 {
                    replies.push(client.with_key(addr, "/widgets", &secret).await);
                }
                replies
            })
        })
        .collect();
    let mut left_after_admitted = Vec::new();
    let mut refused = 0;
    for task in tasks {
        for reply in task.await.unwrap() {
            match reply.status {
                StatusCode::OK => left_after_admitted.push(quota_left(&reply)),
                _ => {
                    // Noon: twelve hours to the next UTC day.
                    assert_quota_exceeded(&reply, 43_200);
                    refused += 1;
                }
            }
        }
    }
    eprintln!(
        "10,000 requests over loopback, 200 at a time: {:?}",
        started.elapsed()
    );

    assert_eq!((left_after_admitted.len(), refused), (1_000, 9_000));
    // Each admitted request took its own unit: the units left are 999 down to 0, once each.
    let left: BTreeSet<u64> = left_after_admitted.into_iter().collect();
    assert_eq!(left, (0..1_000).collect());
    assert_day_usage(
        &plans,
        key.id(),
        Day::from_ymd(2026, 11, 24).unwrap(),
        1_000,
        0,
    )
    .await;
}

#[tokio::test]
async fn throttled_requests_take_no_quota() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = plans_on(
        &clock,
        [UsagePlan::new("metered")
            .throttle(Rate::per_minute(1), 2)
            .quota(5, QuotaPeriod::Day)],
    );
    let (key, secret) = plans.create_key(NewKey::new("metered")).await.unwrap();
    let (addr, client) = start(&plans).await;

    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(client.with_key(addr, "/widgets", secret.expose()).await);
    }
    let statuses: Vec<_> = replies.iter().map(|reply| reply.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!((quota_left(&replies[0]), quota_left(&replies[1])), (4, 3));
    for throttled in &replies[2..] {
        assert_refused(throttled, StatusCode::TOO_MANY_REQUESTS, THROTTLED);
        assert_eq!(throttled.header("retry-after"), "60");
        assert_eq!(
            throttled.header("ratelimit-policy"),
            r#""metered";q=1;w=60, "quota";q=5;w=86400"#
        );
        assert!(
            throttled
                .header("ratelimit")
                .starts_with(r#""metered";r=0;t="#),
            "{throttled:?}"
        );
    }

    clock.advance(Duration::from_secs(120));
    let after = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_eq!(after.status, StatusCode::OK, "{after:?}");
    // Two admitted before and this one: the two throttled requests took nothing.
    assert_eq!(quota_left(&after), 2);
    assert_day_usage(&plans, key.id(), Day::from_ymd(2026, 11, 24).unwrap(), 3, 2).await;
}

#[tokio::test]
async fn route_override_applies_on_its_route_with_its_own_allowance() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = plans_on(
        &clock,
        [UsagePlan::new("search")
            .throttle(Rate::per_minute(1), 1)
            .route_throttle("GET /search", Rate::per_minute(3), 3)],
    );
    let (_, secret) = plans.create_key(NewKey::new("search")).await.unwrap();
    let (addr, client) = start(&plans).await;
    let get = |path: &'static str| client.with_key(addr, path, secret.expose());

    let widgets = get("/widgets").await;
    assert_eq!(widgets.status, StatusCode::OK, "{widgets:?}");
    assert_eq!(widgets.header("ratelimit-policy"), r#""search";q=1;w=60"#);
    assert_refused(
        &get("/widgets").await,
        StatusCode::TOO_MANY_REQUESTS,
        THROTTLED,
    );

    // The plan's allowance is spent; the route's is whole, and three deep.
    for _ in 0..3 {
        let search = get("/search").await;
        assert_eq!(search.status, StatusCode::OK, "{search:?}");
        assert_eq!(search.header("ratelimit-policy"), r#""search";q=3;w=60"#);
    }
    assert_refused(
        &get("/search").await,
        StatusCode::TOO_MANY_REQUESTS,
        THROTTLED,
    );

    // A third of a minute gives the route one request back, and the plan none.
    clock.advance(Duration::from_secs(20));
    assert_eq!(get("/search").await.status, StatusCode::OK);
    let widgets = get("/widgets").await;
    assert_refused(&widgets, StatusCode::TOO_MANY_REQUESTS, THROTTLED);
    assert_eq!(widgets.header("retry-after"), "40");
}

#[tokio::test]
async fn daily_quota_resets_at_utc_midnight() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (23, 59, 59)));
    let (addr, client, secret) =
        serve_one_key(&clock, UsagePlan::new("daily").quota(2, QuotaPeriod::Day)).await;

    spend(&client, addr, secret.expose(), 2).await;
    let refused = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_quota_exceeded(&refused, 1);
    assert_eq!(refused.header("ratelimit"), r#""quota";r=0;t=1"#);

    clock.advance(Duration::from_secs(1));
    let allowed = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_eq!(allowed.status, StatusCode::OK, "{allowed:?}");
    assert_eq!(allowed.header("ratelimit-policy"), r#""quota";q=2;w=86400"#);
    assert_eq!(allowed.header("ratelimit"), r#""quota";r=1;t=86400"#);
}

#[tokio::test]
async fn weekly_quota_resets_on_monday_at_midnight_utc() {
    // 2026-11-24 is a Tuesday; the week ends as Sunday 2026-11-29 does.
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (10, 0, 0)));
    let (addr, client, secret) =
        serve_one_key(&clock, UsagePlan::new("weekly").quota(2, QuotaPeriod::Week)).await;

    spend(&client, addr, secret.expose(), 2).await;
    let refused = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_quota_exceeded(&refused, 5 * 86_400 + 14 * 3_600);
    assert_eq!(
        refused.header("ratelimit-policy"),
        r#""quota";q=2;w=604800"#
    );

    advance_to(&clock, utc(2026, 11, 29, (23, 59, 59)));
    assert_quota_exceeded(&client.with_key(addr, "/widgets", secret.expose()).await, 1);

    clock.advance(Duration::from_secs(1));
    let allowed = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_eq!(allowed.status, StatusCode::OK, "{allowed:?}");
    assert_eq!(allowed.header("ratelimit"), r#""quota";r=1;t=604800"#);
}

#[tokio::test]
async fn monthly_quota_resets_on_march_first_after_a_common_february() {
    let clock = ManualClock::starting_at(utc(2026, 2, 10, (8, 0, 0)));
    let (addr, client, secret) = serve_one_key(
        &clock,
        UsagePlan::new("monthly").quota(2, QuotaPeriod::Month),
    )
    .await;

    spend(&client, addr, secret.expose(), 2).await;
    let refused = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_quota_exceeded(&refused, 18 * 86_400 + 16 * 3_600);
    assert_eq!(
        refused.header("ratelimit-policy"),
        r#""quota";q=2;w=2419200"#
    );

    advance_to(&clock, utc(2026, 2, 28, (23, 59, 59)));
    assert_quota_exceeded(&client.with_key(addr, "/widgets", secret.expose()).await, 1);

    clock.advance(Duration::from_secs(1));
    let allowed = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_eq!(allowed.status, StatusCode::OK, "{allowed:?}");
    assert_eq!(
        allowed.header("ratelimit-policy"),
        r#""quota";q=2;w=2678400"#
    );
    assert_eq!(allowed.header("ratelimit"), r#""quota";r=1;t=2678400"#);
}

#[tokio::test]
async fn monthly_quota_lasts_through_february_29th_in_a_leap_year() {
    let clock = ManualClock::starting_at(utc(2028, 2, 28, (23, 59, 59)));
    let (addr, client, secret) = serve_one_key(
        &clock,
        UsagePlan::new("monthly").quota(2, QuotaPeriod::Month),
    )
    .await;

    spend(&client, addr, secret.expose(), 2).await;
    let refused = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_quota_exceeded(&refused, 86_401);
    assert_eq!(
        refused.header("ratelimit-policy"),
        r#""quota";q=2;w=2505600"#
    );

    clock.advance(Duration::from_secs(1));
    assert_quota_exceeded(
        &client.with_key(addr, "/widgets", secret.expose()).await,
        86_400,
    );
    advance_to(&clock, utc(2028, 2, 29, (23, 59, 59)));
    assert_quota_exceeded(&client.with_key(addr, "/widgets", secret.expose()).await, 1);

    clock.advance(Duration::from_secs(1));
    let allowed = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_eq!(allowed.status, StatusCode::OK, "{allowed:?}");
    assert_eq!(allowed.header("ratelimit"), r#""quota";r=1;t=2678400"#);
}

#[tokio::test]
async fn fixed_length_quota_windows_are_aligned_to_the_epoch() {
    // Half past ten: an hourly window that started with the key would end at half past
    // eleven; one aligned to the epoch ends at eleven.
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (10, 30, 0)));
    let hourly = QuotaPeriod::Every(Duration::from_secs(3_600));
    let (addr, client, secret) =
        serve_one_key(&clock, UsagePlan::new("hourly").quota(2, hourly)).await;

    spend(&client, addr, secret.expose(), 2).await;
    let refused = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_quota_exceeded(&refused, 1_800);
    assert_eq!(refused.header("ratelimit-policy"), r#""quota";q=2;w=3600"#);

    clock.advance(Duration::from_secs(1_799));
    assert_quota_exceeded(&client.with_key(addr, "/widgets", secret.expose()).await, 1);

    clock.advance(Duration::from_secs(1));
    spend(&client, addr, secret.expose(), 2).await;
    assert_quota_exceeded(
        &client.with_key(addr, "/widgets", secret.expose()).await,
        3_600,
    );
}

#[tokio::test]
async fn quota_spent_before_a_plan_change_stays_spent_until_the_new_period_resets() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = plans_on(
        &clock,
        [
            UsagePlan::new("daily").quota(2, QuotaPeriod::Day),
            UsagePlan::new("monthly").quota(3, QuotaPeriod::Month),
        ],
    );
    let (key, secret) = plans.create_key(NewKey::new("daily")).await.unwrap();
    let (addr, client) = start(&plans).await;

    spend(&client, addr, secret.expose(), 1).await;
    plans.change_plan(key.id(), "monthly").await.unwrap();
    let mut left = Vec::new();
    for _ in 0..2 {
        let reply = client.with_key(addr, "/widgets", secret.expose()).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        left.push(quota_left(&reply));
    }
    assert_eq!(left, [1, 0]);
    // Six and a half days to December.
    assert_quota_exceeded(
        &client.with_key(addr, "/widgets", secret.expose()).await,
        6 * 86_400 + 12 * 3_600,
    );

    advance_to(&clock, utc(2026, 12, 1, (0, 0, 0)));
    let december = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_eq!(december.status, StatusCode::OK, "{december:?}");
    assert_eq!(quota_left(&december), 2);
}

#[tokio::test]
async fn rotated_key_accepts_both_secrets_until_the_grace_period_ends() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = plans_on(&clock, [UsagePlan::new("open")]);
    let (key, old) = plans
        .create_key(NewKey::new("open").id("acme"))
        .await
        .unwrap();
    let (addr, client) = start(&plans).await;

    let (_, new) = plans
        .rotate(key.id(), Duration::from_secs(3_600))
        .await
        .unwrap();
    assert_ne!(old.expose(), new.expose());
    for secret in [&old, &new] {
        let reply = client.with_key(addr, "/widgets", secret.expose()).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.text(), "- acme open");
    }

    clock.advance(Duration::from_secs(3_599));
    for secret in [&old, &new] {
        let reply = client.with_key(addr, "/widgets", secret.expose()).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }

    clock.advance(Duration::from_secs(1));
    assert_unknown_key(&client.with_key(addr, "/widgets", old.expose()).await);
    let reply = client.with_key(addr, "/widgets", new.expose()).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

#[tokio::test]
async fn rotating_again_inside_the_grace_period_ends_the_oldest_secret_at_once() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = plans_on(&clock, [UsagePlan::new("open")]);
    let (key, first) = plans.create_key(NewKey::new("open")).await.unwrap();
    let (addr, client) = start(&plans).await;
    let grace = Duration::from_secs(3_600);

    let (_, second) = plans.rotate(key.id(), grace).await.unwrap();
    let (_, third) = plans.rotate(key.id(), grace).await.unwrap();
    assert_unknown_key(&client.with_key(addr, "/widgets", first.expose()).await);
    spend(&client, addr, second.expose(), 1).await;
    spend(&client, addr, third.expose(), 1).await;
}

#[tokio::test]
async fn revoked_key_is_refused_from_its_next_request() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = plans_on(&clock, [UsagePlan::new("open")]);
    let (key, secret) = plans.create_key(NewKey::new("open")).await.unwrap();
    let (addr, client) = start(&plans).await;

    spend(&client, addr, secret.expose(), 1).await;
    plans.revoke(key.id()).await.unwrap();
    assert_unknown_key(&client.with_key(addr, "/widgets", secret.expose()).await);
}

#[tokio::test]
async fn disabled_key_is_forbidden_from_its_next_request_until_enabled_again() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = plans_on(&clock, [UsagePlan::new("open")]);
    let (key, secret) = plans.create_key(NewKey::new("open")).await.unwrap();
    let (addr, client) = start(&plans).await;

    spend(&client, addr, secret.expose(), 1).await;
    plans.set_enabled(key.id(), false).await.unwrap();
    let refused = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_refused(&refused, StatusCode::FORBIDDEN, FORBIDDEN);
    assert!(refused.headers.get("www-authenticate").is_none());

    plans.set_enabled(key.id(), true).await.unwrap();
    spend(&client, addr, secret.expose(), 1).await;
}

/// A `tracing` writer into a shared buffer.
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// A current-thread runtime: the server, the client and this test all run on the thread whose
// default subscriber captures the logs.
#[tokio::test(flavor = "current_thread")]
async fn plaintext_keys_never_reach_the_logs() {
    let logs = Arc::new(Mutex::new(Vec::new()));
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || Captured(writer.clone()))
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    // While only one `Dispatch` exists, a callsite that another test's thread reaches first
    // caches "never" (tokio-rs/tracing#3611); a second live one makes every thread ask all.
    let _second = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .finish(),
    );
    tracing::callsite::rebuild_interest_cache();

    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = plans_on(
        &clock,
        [
            UsagePlan::new("metered")
                .throttle(Rate::per_minute(1), 2)
                .quota(3, QuotaPeriod::Day),
            UsagePlan::new("open"),
        ],
    );
    let (metered, metered_secret) = plans.create_key(NewKey::new("metered")).await.unwrap();
    let (disabled, disabled_secret) = plans.create_key(NewKey::new("open")).await.unwrap();
    let (rotated, old_secret) = plans.create_key(NewKey::new("open")).await.unwrap();
    let (addr, client) = start(&plans).await;
    let wrong_secret = format!("tg_{}_{}", metered.id(), "Wr0ngSecretWr0ngSecret12");
    let status = |reply: Reply| reply.status.as_u16();

    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(status(
            client
                .with_key(addr, "/widgets", metered_secret.expose())
                .await,
        ));
    }
    statuses.push(status(
        client.with_key(addr, "/widgets", &wrong_secret).await,
    ));
    clock.advance(Duration::from_secs(60));
    statuses.push(status(
        client
            .with_key(addr, "/widgets", metered_secret.expose())
            .await,
    ));
    clock.advance(Duration::from_secs(60));
    statuses.push(status(
        client
            .with_key(addr, "/widgets", metered_secret.expose())
            .await,
    ));
    plans.set_enabled(disabled.id(), false).await.unwrap();
    statuses.push(status(
        client
            .with_key(addr, "/widgets", disabled_secret.expose())
            .await,
    ));
    let (_, new_secret) = plans
        .rotate(rotated.id(), Duration::from_secs(60))
        .await
        .unwrap();
    statuses.push(status(
        client.with_key(addr, "/widgets", old_secret.expose()).await,
    ));
    statuses.push(status(
        client.with_key(addr, "/widgets", new_secret.expose()).await,
    ));
    clock.advance(Duration::from_secs(60));
    statuses.push(status(
        client.with_key(addr, "/widgets", old_secret.expose()).await,
    ));
    // allowed ×2, throttled, wrong secret, allowed, quota, disabled, old + new, old after grace
    assert_eq!(statuses, [200, 200, 429, 401, 200, 429, 403, 200, 200, 401]);

    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    for event in [
        "throttled",
        "quota exceeded",
        "unknown API key",
        "key refused",
    ] {
        assert!(logs.contains(event), "no {event:?} event in {logs}");
    }
    for id in [metered.id(), disabled.id(), rotated.id()] {
        assert!(logs.contains(id), "key id {id} not logged: {logs}");
    }
    for secret in [
        metered_secret.expose(),
        disabled_secret.expose(),
        old_secret.expose(),
        new_secret.expose(),
        &wrong_secret,
    ] {
        let (_, random) = secret.rsplit_once('_').unwrap();
        assert!(!logs.contains(secret), "a plaintext key was logged: {logs}");
        assert!(
            !logs.contains(random),
            "a key's secret part was logged: {logs}"
        );
    }
}

#[tokio::test]
async fn usage_report_counts_each_utc_day_against_a_daily_quota() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (22, 0, 0)));
    let plans = plans_on(
        &clock,
        [UsagePlan::new("daily").quota(10, QuotaPeriod::Day)],
    );
    let (key, secret) = plans.create_key(NewKey::new("daily")).await.unwrap();
    let (addr, client) = start(&plans).await;

    spend(&client, addr, secret.expose(), 3).await;
    advance_to(&clock, utc(2026, 11, 25, (1, 0, 0)));
    spend(&client, addr, secret.expose(), 2).await;

    let (first, second) = (
        Day::from_ymd(2026, 11, 24).unwrap(),
        Day::from_ymd(2026, 11, 25).unwrap(),
    );
    let report = plans.usage(key.id(), first, second).await.unwrap();
    assert_eq!(
        (report.key.as_str(), report.plan.as_str()),
        (key.id(), "daily")
    );
    assert_eq!(
        report.days,
        [
            DailyUsage {
                day: first,
                used: 3,
                remaining: Some(7)
            },
            DailyUsage {
                day: second,
                used: 2,
                remaining: Some(8)
            },
        ]
    );
}

#[tokio::test]
async fn usage_report_carries_remaining_across_the_days_of_a_weekly_or_monthly_quota() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (22, 0, 0)));
    let plans = plans_on(
        &clock,
        [
            UsagePlan::new("weekly").quota(10, QuotaPeriod::Week),
            UsagePlan::new("monthly").quota(10, QuotaPeriod::Month),
        ],
    );
    let (weekly, weekly_secret) = plans.create_key(NewKey::new("weekly")).await.unwrap();
    let (monthly, monthly_secret) = plans.create_key(NewKey::new("monthly")).await.unwrap();
    let (addr, client) = start(&plans).await;

    spend(&client, addr, weekly_secret.expose(), 3).await;
    spend(&client, addr, monthly_secret.expose(), 3).await;
    advance_to(&clock, utc(2026, 11, 25, (1, 0, 0)));
    spend(&client, addr, weekly_secret.expose(), 2).await;
    spend(&client, addr, monthly_secret.expose(), 2).await;

    let [monday, tuesday, wednesday] =
        [23, 24, 25].map(|day| Day::from_ymd(2026, 11, day).unwrap());
    for key in [weekly.id(), monthly.id()] {
        let report = plans.usage(key, monday, wednesday).await.unwrap();
        assert_eq!(
            report.days,
            [
                DailyUsage {
                    day: monday,
                    used: 0,
                    remaining: Some(10)
                },
                DailyUsage {
                    day: tuesday,
                    used: 3,
                    remaining: Some(7)
                },
                DailyUsage {
                    day: wednesday,
                    used: 2,
                    remaining: Some(5)
                },
            ],
            "{key}"
        );
        // A report that starts mid-period still counts the period's earlier days.
        let report = plans.usage(key, wednesday, wednesday).await.unwrap();
        assert_eq!(report.days[0].remaining, Some(5), "{key}");
    }
}

#[tokio::test]
async fn admitted_responses_carry_ratelimit_fields_and_the_principal_names_key_and_plan() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 33, 0)));
    let plans = plans_on(
        &clock,
        [UsagePlan::new("basic")
            .throttle(Rate::per_second(2), 2)
            .quota(20, QuotaPeriod::Day)],
    );
    let (_, secret) = plans
        .create_key(NewKey::new("basic").id("acme"))
        .await
        .unwrap();
    let (addr, client) = start(&plans).await;

    let first = client.with_key(addr, "/widgets", secret.expose()).await;
    let second = client.with_key(addr, "/widgets", secret.expose()).await;
    for reply in [&first, &second] {
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.text(), "- acme basic");
        assert_eq!(
            reply.header("ratelimit-policy"),
            r#""basic";q=2;w=1, "quota";q=20;w=86400"#
        );
    }
    assert_eq!(
        first.header("ratelimit"),
        r#""basic";r=1;t=1, "quota";r=19;t=41220"#
    );
    assert_eq!(
        second.header("ratelimit"),
        r#""basic";r=0;t=1, "quota";r=18;t=41220"#
    );
}

#[tokio::test]
async fn missing_key_is_refused_with_an_api_key_challenge() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = plans_on(&clock, [UsagePlan::new("open")]);
    let (addr, client) = start(&plans).await;

    assert_unknown_key(&client.get(addr, "/widgets", &[]).await);
}

#[tokio::test]
async fn malformed_and_wrong_keys_are_refused_without_spending_quota() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = plans_on(&clock, [UsagePlan::new("daily").quota(5, QuotaPeriod::Day)]);
    let (key, secret) = plans
        .create_key(NewKey::new("daily").id("acme"))
        .await
        .unwrap();
    let (addr, client) = start(&plans).await;
    let (_, random) = secret.expose().rsplit_once('_').unwrap();

    let long = format!("tg_acme_{}", "a".repeat(8_000));
    let refused = [
        "garbage".to_owned(),
        "tg_acme_Wr0ngSecretWr0ngSecret12".to_owned(),
        format!("sk_acme_{random}"),
        format!("tg_nobody_{random}"),
        format!("tg_acme_{random}x"),
        long,
    ];
    for presented in &refused {
        let reply = client.with_key(addr, "/widgets", presented).await;
        assert_unknown_key(&reply);
    }
    assert_day_usage(&plans, key.id(), Day::from_ymd(2026, 11, 24).unwrap(), 0, 5).await;

    let admitted = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_eq!(admitted.status, StatusCode::OK, "{admitted:?}");
    assert_eq!(quota_left(&admitted), 4);
}

#[tokio::test]
async fn expired_key_is_forbidden() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = plans_on(&clock, [UsagePlan::new("open")]);
    let expires = utc(2026, 11, 24, (13, 0, 0));
    let (_, secret) = plans
        .create_key(NewKey::new("open").expires(expires))
        .await
        .unwrap();
    let (addr, client) = start(&plans).await;

    clock.advance(Duration::from_secs(3_599));
    spend(&client, addr, secret.expose(), 1).await;
    clock.advance(Duration::from_secs(1));
    let refused = client.with_key(addr, "/widgets", secret.expose()).await;
    assert_refused(&refused, StatusCode::FORBIDDEN, FORBIDDEN);
}

/// Puts the stage named by the `x-stage` header on the request, as a stage router would.
async fn stage_from_header(mut request: Request, next: Next) -> axum::response::Response {
    let stage = request
        .headers()
        .get("x-stage")
        .and_then(|value| value.to_str().ok())
        .map(|name| Stage::new(name.to_owned()));
    if let Some(stage) = stage {
        request.extensions_mut().insert(stage);
    }
    next.run(request).await
}

#[tokio::test]
async fn keys_and_plans_limited_to_stages_are_forbidden_on_other_stages() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = plans_on(
        &clock,
        [
            UsagePlan::new("open"),
            UsagePlan::new("staged").stages(["prod", "beta"]),
        ],
    );
    let (_, prod_key) = plans
        .create_key(NewKey::new("open").stages(["prod"]))
        .await
        .unwrap();
    let (_, staged_plan_key) = plans.create_key(NewKey::new("staged")).await.unwrap();
    let app = routes()
        .layer(plans.layer())
        .layer(from_fn(stage_from_header));
    let addr = serve(app).await;
    let client = Client::new();
    for (key, stage, allowed) in [
        (prod_key.expose(), Some("prod"), true),
        (prod_key.expose(), Some("beta"), false),
        (prod_key.expose(), None, false),
        (staged_plan_key.expose(), Some("beta"), true),
        (staged_plan_key.expose(), Some("dev"), false),
        (staged_plan_key.expose(), None, false),
    ] {
        let mut headers = vec![("x-api-key", key)];
        headers.extend(stage.map(|stage| ("x-stage", stage)));
        let reply = client.get(addr, "/widgets", &headers).await;
        if allowed {
            assert_eq!(reply.status, StatusCode::OK, "{stage:?}: {reply:?}");
        } else {
            assert_refused(&reply, StatusCode::FORBIDDEN, FORBIDDEN);
        }
    }
}

#[tokio::test]
async fn authorizer_key_source_spends_the_key_the_authorizer_chose() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = UsagePlans::builder()
        .clock(clock.clone())
        .plan(UsagePlan::new("basic").quota(10, QuotaPeriod::Day))
        .key_source(KeySource::Authorizer)
        .build()
        .unwrap();
    let (_, secret) = plans
        .create_key(NewKey::new("basic").id("acme"))
        .await
        .unwrap();
    let usage_key: Arc<str> = secret.expose().into();
    // An authorizer that knows user alice and which API key her requests spend.
    let authorizer = move |mut request: Request, next: Next| {
        let usage_key = usage_key.clone();
        async move {
            if request
                .headers()
                .get("x-user")
                .is_some_and(|user| user == "alice")
            {
                let principal = Principal::builder()
                    .subject("alice")
                    .usage_identifier_key(usage_key)
                    .build();
                request.extensions_mut().insert(principal);
            }
            next.run(request).await
        }
    };
    let addr = serve(routes().layer(plans.layer()).layer(from_fn(authorizer))).await;
    let client = Client::new();

    let alice = client.get(addr, "/widgets", &[("x-user", "alice")]).await;
    assert_eq!(alice.status, StatusCode::OK, "{alice:?}");
    assert_eq!(alice.text(), "alice acme basic");
    assert_eq!(quota_left(&alice), 9);
    // The header is not a source once the authorizer is the only one.
    assert_unknown_key(&client.with_key(addr, "/widgets", secret.expose()).await);
    assert_unknown_key(&client.get(addr, "/widgets", &[("x-user", "bob")]).await);
}

#[tokio::test]
async fn query_parameter_carries_the_key_only_when_chosen_as_a_source() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let by_header = plans_on(&clock, [UsagePlan::new("open")]);
    let by_query = UsagePlans::builder()
        .clock(clock.clone())
        .plan(UsagePlan::new("open"))
        .key_source(KeySource::Query("api_key".to_owned()))
        .build()
        .unwrap();
    let (_, header_secret) = by_header
        .create_key(NewKey::new("open").id("acme"))
        .await
        .unwrap();
    let (_, query_secret) = by_query
        .create_key(NewKey::new("open").id("acme"))
        .await
        .unwrap();
    let (header_addr, client) = start(&by_header).await;
    let (query_addr, _) = start(&by_query).await;

    let path = |secret: &str| format!("/widgets?page=2&api_key={secret}");
    assert_unknown_key(
        &client
            .get(header_addr, &path(header_secret.expose()), &[])
            .await,
    );
    let admitted = client
        .get(query_addr, &path(query_secret.expose()), &[])
        .await;
    assert_eq!(admitted.status, StatusCode::OK, "{admitted:?}");
    assert_eq!(admitted.text(), "- acme open");
    assert_unknown_key(
        &client
            .with_key(query_addr, "/widgets", query_secret.expose())
            .await,
    );
}

#[tokio::test]
async fn keys_loaded_from_configuration_hashes_authenticate_their_plaintext() {
    let config: UsageConfig = serde_json::from_value(json!({
        "plans": { "pro": { "quota": { "limit": 100, "period": "day" } } },
        "keys": [
            {
                "id": "demo",
                "plan": "pro",
                "created": "2026-11-01T00:00:00Z",
                // printf %s tg_demo_abc | sha256sum
                "hash": "sha256:4ef7303f4cb824eef2ae3f88a9ed54bac663c1aa5c30e1680404fe3d0a890a1c"
            },
            {
                "id": "acme",
                "plan": "pro",
                "created": "2026-11-01T00:00:00Z",
                "hash": KeyHash::of(b"tg_acme_S3cretFromConfig").to_string()
            }
        ]
    }))
    .unwrap();
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plans = config.builder().unwrap().clock(clock).build().unwrap();
    let (addr, client) = start(&plans).await;

    for (key, principal) in [
        ("tg_demo_abc", "- demo pro"),
        ("tg_acme_S3cretFromConfig", "- acme pro"),
    ] {
        let reply = client.with_key(addr, "/widgets", key).await;
        assert_eq!(reply.status, StatusCode::OK, "{key}: {reply:?}");
        assert_eq!(reply.text(), principal);
        assert_eq!(quota_left(&reply), 99);
    }
    for wrong in ["tg_demo_abd", "tg_acme_abc", "tg_demo_S3cretFromConfig"] {
        assert_unknown_key(&client.with_key(addr, "/widgets", wrong).await);
    }
}

#[tokio::test]
async fn admitted_responses_carry_only_the_fields_chosen_and_refusals_carry_both() {
    let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
    let plan = || {
        UsagePlan::new("basic")
            .throttle(Rate::per_second(1), 1)
            .quota(20, QuotaPeriod::Day)
    };
    for (fields, policy, ratelimit) in [
        (AllowedFields::None, false, false),
        (AllowedFields::RateLimit, false, true),
        (AllowedFields::RateLimitAndPolicy, true, true),
    ] {
        let plans = UsagePlans::builder()
            .clock(clock.clone())
            .plan(plan())
            .allowed_fields(fields)
            .build()
            .unwrap();
        let (_, secret) = plans.create_key(NewKey::new("basic")).await.unwrap();
        let (addr, client) = start(&plans).await;

        let admitted = client.with_key(addr, "/widgets", secret.expose()).await;
        assert_eq!(admitted.status, StatusCode::OK);
        assert_eq!(
            admitted.headers.contains_key("ratelimit-policy"),
            policy,
            "{fields:?}"
        );
        assert_eq!(
            admitted.headers.contains_key("ratelimit"),
            ratelimit,
            "{fields:?}"
        );
        if ratelimit {
            assert_eq!(
                admitted.header("ratelimit"),
                r#""basic";r=0;t=1, "quota";r=19;t=43200"#
            );
        }

        let refused = client.with_key(addr, "/widgets", secret.expose()).await;
        assert_refused(&refused, StatusCode::TOO_MANY_REQUESTS, THROTTLED);
        assert_eq!(
            refused.header("ratelimit-policy"),
            r#""basic";q=1;w=1, "quota";q=20;w=86400"#
        );
        assert_eq!(refused.header("ratelimit"), r#""basic";r=0;t=1"#);
    }
}
