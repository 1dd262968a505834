//! Stores that answer later, as stores across a network do, give the same decisions as the
//! in-memory ones: each store in turn answers `Pending`, so every way the layer resumes a
//! decision is taken.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use support::{serve, utc, Client};
use tollgate_core::{Key, ManualClock, Principal};
use tollgate_throttle::{
    Check, MemoryStore, Outcome, Rate, Rule, StoreError as ThrottleError, ThrottleStore,
};
use tollgate_usage::{
    ApiKey, Day, Found, KeyStore, MemoryKeyStore, MemoryQuotaStore, NewKey, QuotaPeriod,
    QuotaStore, StoreError, Take, UsagePlan, UsagePlans, Window,
};

type Later<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `value`, after yielding to the runtime once.
fn later<T: Send + 'static>(value: T) -> Later<T> {
    Box::pin(async move {
        tokio::task::yield_now().await;
        value
    })
}

/// A store that answers later when `slow`, and at once otherwise.
struct Slow<S> {
    inner: S,
    slow: bool,
}

fn ready<T, F>(found: Found<T, F>) -> Result<T, StoreError> {
    match found {
        Found::Ready(result) => result,
        Found::Pending(_) => panic!("the in-memory stores answer at once"),
    }
}

impl KeyStore for Slow<MemoryKeyStore> {
    type Get = Later<Result<Option<Arc<ApiKey>>, StoreError>>;

    fn get(&self, id: &str) -> Found<Option<Arc<ApiKey>>, Self::Get> {
        let found = ready(self.inner.get(id));
        if self.slow {
            Found::Pending(later(found))
        } else {
            Found::Ready(found)
        }
    }

    fn insert(&self, key: ApiKey) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.inner.insert(key)
    }

    fn put(&self, key: ApiKey) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.put(key)
    }

    fn update<F>(
        &self,
        id: &str,
        edit: F,
    ) -> impl Future<Output = Result<Option<Arc<ApiKey>>, StoreError>> + Send
    where
        F: Fn(&ApiKey) -> ApiKey + Send,
    {
        self.inner.update(id, edit)
    }

    fn remove(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.inner.remove(id)
    }

    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Arc<ApiKey>>, StoreError>> + Send {
        self.inner.list(after, limit)
    }
}

impl QuotaStore for Slow<MemoryQuotaStore> {
    type Take = Later<Result<Take, StoreError>>;

    fn take(
        &self,
        key: &Arc<str>,
        quota: Option<(u32, &Window)>,
        day: Day,
    ) -> Found<Take, Self::Take> {
        let taken = ready(self.inner.take(key, quota, day));
        if self.slow {
            Found::Pending(later(taken))
        } else {
            Found::Ready(taken)
        }
    }

    fn daily_usage(
        &self,
        key: &str,
        from: Day,
        to: Day,
    ) -> impl Future<Output = Result<Vec<(Day, u64)>, StoreError>> + Send {
        self.inner.daily_usage(key, from, to)
    }

    fn forget(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.forget(key)
    }
}

impl ThrottleStore for Slow<MemoryStore> {
    type Future = Later<Result<Outcome, ThrottleError>>;

    fn check(&self, rule: &Rule, key: &Key) -> Check<Self::Future> {
        let checked = match self.inner.check(rule, key) {
            Check::Ready(result) => result,
            Check::Pending(_) => panic!("the in-memory throttle answers at once"),
        };
        if self.slow {
            Check::Pending(later(checked))
        } else {
            Check::Ready(checked)
        }
    }
}

async fn whoami(principal: Principal) -> String {
    format!(
        "{} {}",
        principal.api_key_id().unwrap_or("-"),
        principal.usage_plan_id().unwrap_or("-")
    )
}

#[tokio::test]
async fn every_store_may_answer_later_and_the_decisions_stay_the_same() {
    // (key store, throttle store, quota store): which of them answer later.
    for (keys_slow, throttle_slow, quota_slow) in [
        (true, true, true),
        (true, false, false),
        (false, true, false),
        (false, false, true),
    ] {
        let case = format!("slow keys {keys_slow}, throttle {throttle_slow}, quota {quota_slow}");
        let clock = ManualClock::starting_at(utc(2026, 11, 24, (12, 0, 0)));
        let plans = UsagePlans::builder()
            .clock(clock.clone())
            .plan(
                UsagePlan::new("basic")
                    .throttle(Rate::per_second(1), 1)
                    .quota(2, QuotaPeriod::Day),
            )
            .build_with(
                Slow {
                    inner: MemoryKeyStore::new(),
                    slow: keys_slow,
                },
                Slow {
                    inner: MemoryQuotaStore::default(),
                    slow: quota_slow,
                },
                |rules, clock| Slow {
                    inner: MemoryStore::new(rules, 1_000, clock.clone()),
                    slow: throttle_slow,
                },
            )
            .unwrap();
        let (key, secret) = plans.create_key(NewKey::new("basic")).await.unwrap();
        let app = Router::new()
            .route("/widgets", get(whoami))
            .layer(plans.layer());
        let addr = serve(app).await;
        let client = Client::new();
        let call = || client.with_key(addr, "/widgets", secret.expose());

        let admitted = call().await;
        assert_eq!(admitted.status, StatusCode::OK, "{case}");
        assert_eq!(admitted.text(), format!("{} basic", key.id()), "{case}");
        assert_eq!(
            admitted.header("ratelimit"),
            r#""basic";r=0;t=1, "quota";r=1;t=43200"#,
            "{case}"
        );

        let throttled = call().await;
        assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS, "{case}");
        assert_eq!(
            throttled.problem(),
            "urn:tollgate:problem:throttled",
            "{case}"
        );

        clock.advance(Duration::from_secs(1));
        assert_eq!(call().await.status, StatusCode::OK, "{case}");
        clock.advance(Duration::from_secs(1));
        let spent = call().await;
        assert_eq!(spent.status, StatusCode::TOO_MANY_REQUESTS, "{case}");
        assert_eq!(
            spent.problem(),
            "urn:tollgate:problem:quota-exceeded",
            "{case}"
        );
        assert_eq!(spent.header("retry-after"), "43198", "{case}");

        let wrong = format!("tg_{}_{}", key.id(), "Wr0ngSecretWr0ngSecret12");
        let refused = client.with_key(addr, "/widgets", &wrong).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{case}");

        let today = Day::of(clock_now(&clock));
        let report = plans.usage(key.id(), today, today).await.unwrap();
        assert_eq!(report.days[0].used, 2, "{case}");
    }
}

fn clock_now(clock: &ManualClock) -> SystemTime {
    tollgate_core::Clock::system_time(clock)
}
