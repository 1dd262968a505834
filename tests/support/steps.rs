//! Gateway steps whose work a test can count: a usage plan with one key on a clock that
//! stands still, and a custom authorizer that counts its calls.

use std::time::Duration;

use http::header::AUTHORIZATION;
use tollgate::auth::{
    Allow, AuthLayer, AuthorizerResponse, BoxError, CustomAuthorizer, IdentitySource,
};
use tollgate::usage::{Day, NewKey, QuotaPeriod, UsagePlan, UsagePlans};
use tollgate::{Clock, ManualClock};

use super::Calls;

/// The token the counting authorizer allows (as `alice`), the one it denies (403), and any
/// other is refused (401).
pub const ALICE: &str = "Bearer alice";
pub const MALLORY: &str = "Bearer mallory";

/// A usage plan `basic` with a daily quota, and one key on it, on a clock at noon UTC (so the
/// quota resets in exactly 12 hours) that moves only when told.
pub struct KeyedPlan {
    pub clock: ManualClock,
    pub plans: UsagePlans,
    pub key_id: String,
    pub key: String,
}

impl KeyedPlan {
    pub async fn new(quota: u32) -> Self {
        let noon = Day::from_ymd(2026, 3, 10).unwrap().start() + Duration::from_secs(12 * 3600);
        let clock = ManualClock::starting_at(noon);
        let plans = UsagePlans::builder()
            .clock(clock.clone())
            .plan(UsagePlan::new("basic").quota(quota, QuotaPeriod::Day))
            .build()
            .unwrap();
        let (key, secret) = plans.create_key(NewKey::new("basic")).await.unwrap();
        Self {
            clock,
            plans,
            key_id: key.id().to_owned(),
            key: secret.expose().to_owned(),
        }
    }

    /// The key's usage today: units used and left.
    pub async fn usage_today(&self) -> (u64, Option<u64>) {
        let today = Day::of(self.clock.system_time());
        let report = self.plans.usage(&self.key_id, today, today).await.unwrap();
        (report.days[0].used, report.days[0].remaining)
    }
}

/// A custom authorizer whose function counts its calls in `calls`, with no decision cache so
/// every request that reaches it calls it: [`ALICE`] is allowed, [`MALLORY`] denied, any
/// other token refused.
pub fn counting_authorizer(calls: Calls) -> AuthLayer<CustomAuthorizer> {
    let authorizer = CustomAuthorizer::builder([IdentitySource::Header(AUTHORIZATION)])
        .ttl(Duration::ZERO)
        .from_fn(move |identity| {
            calls.next();
            let response = match identity.header("authorization") {
                Some(ALICE) => AuthorizerResponse::Allow(Allow::new("alice")),
                Some(MALLORY) => AuthorizerResponse::Deny,
                _ => AuthorizerResponse::Unauthorized,
            };
            std::future::ready(Ok::<_, BoxError>(response))
        })
        .unwrap();
    AuthLayer::new(authorizer)
}
