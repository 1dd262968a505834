//! The admin router as an operator sees it: a real server on loopback TCP, a real HTTP client
//! sending JSON, and an API route behind the usage layer to show what each change does to a
//! key's next request. Time is a manual clock.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::{serve, utc, Reply};
use tollgate_core::{ManualClock, Principal};
use tollgate_usage::{admin, QuotaPeriod, UsagePlan, UsagePlans};

const BAD_REQUEST: &str = "urn:tollgate:problem:bad-request";
const NOT_FOUND: &str = "urn:tollgate:problem:not-found";
const INVALID_API_KEY: &str = "urn:tollgate:problem:invalid-api-key";
const FORBIDDEN: &str = "urn:tollgate:problem:forbidden";

/// An application with one API route behind the usage layer and the admin router at `/admin`,
/// on loopback, with a client for it.
struct Gateway {
    addr: SocketAddr,
    client: HyperClient<HttpConnector, Full<Bytes>>,
    clock: ManualClock,
}

impl Gateway {
    /// Plans `basic` (100 a day) and `pro` (10,000 a month), at 2026-11-24T09:00:00Z.
    async fn start() -> Self {
        let clock = ManualClock::starting_at(utc(2026, 11, 24, (9, 0, 0)));
        let plans = UsagePlans::builder()
            .clock(clock.clone())
            .plan(UsagePlan::new("basic").quota(100, QuotaPeriod::Day))
            .plan(UsagePlan::new("pro").quota(10_000, QuotaPeriod::Month))
            .build()
            .unwrap();
        let api = Router::new()
            .route("/widgets", get(plan_of_caller))
            .layer(plans.layer());
        let app = api.nest("/admin", admin::router(plans));
        Self {
            addr: serve(app).await,
            client: HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new()),
            clock,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        Reply::of(self.client.request(request).await.unwrap()).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], "").await
    }

    /// A request with a JSON body.
    async fn json(&self, method: Method, path: &str, body: &str) -> Reply {
        self.send(method, path, &[("content-type", "application/json")], body)
            .await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.json(Method::POST, path, &body.to_string()).await
    }

    /// Creates a key from `new`, which must succeed; the reply's body.
    async fn create(&self, new: Value) -> Value {
        let reply = self.post("/admin/keys", new).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.json()
    }

    /// `GET /widgets` with `key`.
    async fn call_api(&self, key: &str) -> Reply {
        self.send(Method::GET, "/widgets", &[("x-api-key", key)], "")
            .await
    }
}

async fn plan_of_caller(principal: Principal) -> String {
    principal.usage_plan_id().unwrap_or("-").to_owned()
}

fn secret_of(issued: &Value) -> &str {
    issued["secret"].as_str().unwrap()
}

/// Asserts a problem+json refusal with `status` and `problem` type; its `detail`.
fn refused(reply: &Reply, status: StatusCode, problem: &str) -> String {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.problem(), problem, "{reply:?}");
    assert_eq!(reply.json()["status"], status.as_u16());
    reply.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn assert_bad_request(reply: &Reply, detail_starts: &str) {
    let detail = refused(reply, StatusCode::BAD_REQUEST, BAD_REQUEST);
    assert!(detail.starts_with(detail_starts), "{detail:?}");
}

#[tokio::test]
async fn a_created_key_is_answered_with_its_secret_and_works_on_the_api_at_once() {
    let gateway = Gateway::start().await;

    let reply = gateway
        .post("/admin/keys", json!({"plan": "basic", "name": "Acme"}))
        .await;

    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("cache-control"), "no-store");
    let issued = reply.json();
    let key = &issued["key"];
    let id = key["id"].as_str().unwrap();
    assert_eq!(key["name"], "Acme");
    assert_eq!(key["plan"], "basic");
    assert_eq!(key["enabled"], true);
    assert_eq!(key["created"], "2026-11-24T09:00:00Z");
    assert_eq!(key["expires"], Value::Null);
    assert!(
        secret_of(&issued).starts_with(&format!("tg_{id}_")),
        "{issued}"
    );
    let api = gateway.call_api(secret_of(&issued)).await;
    assert_eq!(api.status, StatusCode::OK, "{api:?}");
    assert_eq!(api.text(), "basic");
}

#[tokio::test]
async fn a_key_created_with_id_expiry_stages_and_disabled_reads_back_as_given() {
    let gateway = Gateway::start().await;
    gateway
        .create(json!({
            "id": "acme-prod",
            "name": "Acme",
            "plan": "pro",
            "expires": "2027-01-01T00:00:00Z",
            "stages": ["prod"],
            "enabled": false,
        }))
        .await;

    let reply = gateway.get("/admin/keys/acme-prod").await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("cache-control"), "no-store");
    assert_eq!(
        reply.json(),
        json!({
            "id": "acme-prod",
            "name": "Acme",
            "plan": "pro",
            "enabled": false,
            "created": "2026-11-24T09:00:00Z",
            "expires": "2027-01-01T00:00:00Z",
            "stages": ["prod"],
            "previous_secret_valid_until": null,
        })
    );
}

#[tokio::test]
async fn listing_keys_shows_them_by_id_without_hashes_or_secrets() {
    let gateway = Gateway::start().await;
    for id in ["carol", "alice", "bob"] {
        gateway.create(json!({"id": id, "plan": "basic"})).await;
    }
    // A rotated key holds two hashes.
    let rotated = gateway.post("/admin/keys/bob/rotate", json!({})).await;
    assert_eq!(rotated.status, StatusCode::OK, "{rotated:?}");

    let reply = gateway.get("/admin/keys").await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("cache-control"), "no-store");
    let listing = reply.json();
    let ids: Vec<_> = listing["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice", "bob", "carol"]);
    assert_eq!(
        listing["keys"][1]["previous_secret_valid_until"],
        "2026-11-25T09:00:00Z"
    );
    assert_eq!(listing["next"], Value::Null);
    let text = reply.text();
    assert!(!text.contains("sha256:"), "{text}");
    assert!(!text.contains("tg_"), "{text}");
    assert!(!text.contains("hash"), "{text}");
}

#[tokio::test]
async fn keys_are_listed_a_page_at_a_time_after_the_id_given() {
    let gateway = Gateway::start().await;
    for id in ["e", "d", "c", "b", "a"] {
        gateway.create(json!({"id": id, "plan": "basic"})).await;
    }
    let page = |query: &'static str| {
        let gateway = &gateway;
        async move {
            let reply = gateway.get(&format!("/admin/keys{query}")).await;
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            let body = reply.json();
            let ids: Vec<String> = body["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|key| key["id"].as_str().unwrap().to_owned())
                .collect();
            (ids, body["next"].clone())
        }
    };

    assert_eq!(
        page("?limit=2").await,
        (vec!["a".into(), "b".into()], json!("b"))
    );
    assert_eq!(
        page("?limit=2&after=b").await,
        (vec!["c".into(), "d".into()], json!("d"))
    );
    assert_eq!(
        page("?limit=2&after=d").await,
        (vec!["e".into()], Value::Null)
    );
    assert_eq!(
        page("?after=bb").await,
        (vec!["c".into(), "d".into(), "e".into()], Value::Null)
    );
    assert_eq!(page("?after=e").await, (vec![], Value::Null));
    assert_eq!(page("").await.0.len(), 5);
}

#[tokio::test]
async fn a_page_limit_outside_1_to_1000_or_an_unknown_parameter_is_refused() {
    let gateway = Gateway::start().await;

    for limit in ["0", "1001", "ten", "-1"] {
        let reply = gateway.get(&format!("/admin/keys?limit={limit}")).await;
        assert_bad_request(
            &reply,
            &format!("limit: expected a number from 1 to 1000, found \"{limit}\""),
        );
    }
    let reply = gateway.get("/admin/keys?page=2").await;
    assert_bad_request(
        &reply,
        "page: unknown field `page`, expected `limit` or `after`",
    );
    assert_eq!(
        gateway.get("/admin/keys?limit=1000").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_disabled_key_is_refused_with_403_until_it_is_enabled_again() {
    let gateway = Gateway::start().await;
    let issued = gateway.create(json!({"id": "acme", "plan": "basic"})).await;
    let secret = secret_of(&issued);

    let disabled = gateway.post("/admin/keys/acme/disable", json!(null)).await;
    assert_eq!(disabled.status, StatusCode::OK, "{disabled:?}");
    assert_eq!(disabled.json()["enabled"], false);
    let detail = refused(
        &gateway.call_api(secret).await,
        StatusCode::FORBIDDEN,
        FORBIDDEN,
    );
    assert_eq!(detail, "the API key is disabled");

    let enabled = gateway
        .send(Method::POST, "/admin/keys/acme/enable", &[], "")
        .await;
    assert_eq!(enabled.status, StatusCode::OK, "{enabled:?}");
    assert_eq!(enabled.json()["enabled"], true);
    assert_eq!(gateway.call_api(secret).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_key_is_unknown_to_the_api_and_to_the_admin_router() {
    let gateway = Gateway::start().await;
    let issued = gateway.create(json!({"id": "acme", "plan": "basic"})).await;
    assert_eq!(
        gateway.call_api(secret_of(&issued)).await.status,
        StatusCode::OK
    );

    let reply = gateway
        .send(Method::DELETE, "/admin/keys/acme", &[], "")
        .await;

    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{reply:?}");
    assert!(reply.body.is_empty(), "{reply:?}");
    let api = gateway.call_api(secret_of(&issued)).await;
    refused(&api, StatusCode::UNAUTHORIZED, INVALID_API_KEY);
    assert_eq!(api.header("www-authenticate"), "ApiKey");
    let detail = refused(
        &gateway.get("/admin/keys/acme").await,
        StatusCode::NOT_FOUND,
        NOT_FOUND,
    );
    assert_eq!(detail, r#"no API key has the id "acme""#);
    let again = gateway
        .send(Method::DELETE, "/admin/keys/acme", &[], "")
        .await;
    refused(&again, StatusCode::NOT_FOUND, NOT_FOUND);
}

#[tokio::test]
async fn a_rotated_key_takes_both_secrets_for_the_grace_period_then_only_the_new_one() {
    let gateway = Gateway::start().await;
    let issued = gateway.create(json!({"id": "acme", "plan": "basic"})).await;
    let old = secret_of(&issued);

    let reply = gateway
        .post("/admin/keys/acme/rotate", json!({"grace": "1h"}))
        .await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("cache-control"), "no-store");
    let rotated = reply.json();
    let new = secret_of(&rotated);
    assert!(new.starts_with("tg_acme_") && new != old, "{rotated}");
    assert_eq!(
        rotated["key"]["previous_secret_valid_until"],
        "2026-11-24T10:00:00Z"
    );
    gateway.clock.advance(Duration::from_secs(3599));
    assert_eq!(gateway.call_api(old).await.status, StatusCode::OK);
    assert_eq!(gateway.call_api(new).await.status, StatusCode::OK);
    gateway.clock.advance(Duration::from_secs(1));
    refused(
        &gateway.call_api(old).await,
        StatusCode::UNAUTHORIZED,
        INVALID_API_KEY,
    );
    assert_eq!(gateway.call_api(new).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_rotation_without_a_body_keeps_the_old_secret_for_24_hours() {
    let gateway = Gateway::start().await;
    let issued = gateway.create(json!({"id": "acme", "plan": "basic"})).await;
    let old = secret_of(&issued);

    let reply = gateway
        .send(Method::POST, "/admin/keys/acme/rotate", &[], "")
        .await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        reply.json()["key"]["previous_secret_valid_until"],
        "2026-11-25T09:00:00Z"
    );
    gateway.clock.advance(Duration::from_secs(24 * 3600 - 1));
    assert_eq!(gateway.call_api(old).await.status, StatusCode::OK);
    gateway.clock.advance(Duration::from_secs(1));
    refused(
        &gateway.call_api(old).await,
        StatusCode::UNAUTHORIZED,
        INVALID_API_KEY,
    );
}

#[tokio::test]
async fn a_grace_that_is_not_a_duration_is_refused_naming_grace_and_nothing_rotates() {
    let gateway = Gateway::start().await;
    let issued = gateway.create(json!({"id": "acme", "plan": "basic"})).await;

    let reply = gateway
        .post("/admin/keys/acme/rotate", json!({"grace": "soon"}))
        .await;
    assert_bad_request(
        &reply,
        r#"grace: expected a duration like "30s", "5m" or "500ms", found "soon""#,
    );
    let reply = gateway
        .post("/admin/keys/acme/rotate", json!({"grace": 3600}))
        .await;
    assert_bad_request(
        &reply,
        "grace: invalid type: integer `3600`, expected a string",
    );

    let key = gateway.get("/admin/keys/acme").await.json();
    assert_eq!(key["previous_secret_valid_until"], Value::Null);
    assert_eq!(
        gateway.call_api(secret_of(&issued)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_key_moved_to_another_plan_is_on_it_from_its_next_request() {
    let gateway = Gateway::start().await;
    let issued = gateway.create(json!({"id": "acme", "plan": "basic"})).await;

    let reply = gateway
        .json(Method::PUT, "/admin/keys/acme/plan", r#"{"plan": "pro"}"#)
        .await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json()["plan"], "pro");
    assert_eq!(gateway.call_api(secret_of(&issued)).await.text(), "pro");
}

#[tokio::test]
async fn a_move_to_an_unknown_plan_is_refused_naming_plan() {
    let gateway = Gateway::start().await;
    let issued = gateway.create(json!({"id": "acme", "plan": "basic"})).await;

    let reply = gateway
        .json(Method::PUT, "/admin/keys/acme/plan", r#"{"plan": "gold"}"#)
        .await;

    assert_bad_request(&reply, r#"plan: no usage plan has the id "gold""#);
    assert_eq!(gateway.call_api(secret_of(&issued)).await.text(), "basic");
}

#[tokio::test]
async fn a_usage_report_counts_each_day_and_what_is_left_of_the_quota() {
    let gateway = Gateway::start().await;
    let issued = gateway.create(json!({"id": "acme", "plan": "basic"})).await;
    for _ in 0..3 {
        assert_eq!(
            gateway.call_api(secret_of(&issued)).await.status,
            StatusCode::OK
        );
    }

    let reply = gateway
        .get("/admin/keys/acme/usage?from=2026-11-23&to=2026-11-25")
        .await;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        reply.json(),
        json!({
            "key": "acme",
            "plan": "basic",
            "from": "2026-11-23",
            "to": "2026-11-25",
            "days": [
                {"day": "2026-11-23", "used": 0, "remaining": 100},
                {"day": "2026-11-24", "used": 3, "remaining": 97},
                {"day": "2026-11-25", "used": 0, "remaining": 100},
            ],
        })
    );
}

#[tokio::test]
async fn a_usage_range_that_is_not_two_days_in_order_is_refused_naming_the_parameter() {
    let gateway = Gateway::start().await;
    gateway.create(json!({"id": "acme", "plan": "basic"})).await;
    let usage = |query: &str| {
        let path = format!("/admin/keys/acme/usage?{query}");
        let gateway = &gateway;
        async move { gateway.get(&path).await }
    };

    assert_bad_request(
        &usage("from=yesterday&to=2026-11-24").await,
        r#"from: expected a day like "2026-11-24", found "yesterday""#,
    );
    assert_bad_request(
        &usage("from=2026-02-01&to=2026-02-30").await,
        "to: expected a calendar date from 1970-01-01 to 9999-12-31, found 2026-02-30",
    );
    assert_bad_request(
        &usage("from=2026-11-24&to=2026-11-01").await,
        "invalid range 2026-11-24..2026-11-01: expected from <= to",
    );
    assert_bad_request(
        &usage("from=2025-01-01&to=2026-11-24").await,
        "invalid range 2025-01-01..2026-11-24",
    );
    assert_bad_request(&usage("from=2026-11-24").await, "missing field `to`");
}

#[tokio::test]
async fn malformed_json_is_refused_with_problem_json() {
    let gateway = Gateway::start().await;

    let reply = gateway
        .json(Method::POST, "/admin/keys", r#"{"plan": "basic""#)
        .await;

    assert_bad_request(&reply, "EOF while parsing an object");
    assert_eq!(gateway.get("/admin/keys").await.json()["keys"], json!([]));
}

#[tokio::test]
async fn an_unknown_field_is_refused_naming_it() {
    let gateway = Gateway::start().await;

    let reply = gateway
        .post("/admin/keys", json!({"plan": "basic", "colour": "red"}))
        .await;

    assert_bad_request(
        &reply,
        "colour: unknown field `colour`, expected one of `id`, `name`, `plan`, `expires`",
    );
}

#[tokio::test]
async fn a_field_of_the_wrong_type_or_a_bad_expiry_is_refused_naming_the_field() {
    let gateway = Gateway::start().await;

    let reply = gateway.post("/admin/keys", json!({"plan": 5})).await;
    assert_bad_request(&reply, "plan: invalid type: integer `5`, expected a string");
    let reply = gateway
        .post(
            "/admin/keys",
            json!({"plan": "basic", "expires": "next year"}),
        )
        .await;
    assert_bad_request(
        &reply,
        r#"expires: expected a UTC time like "2026-11-24T09:30:00Z", found "next year""#,
    );
    let reply = gateway.post("/admin/keys", json!({"name": "Acme"})).await;
    assert_bad_request(&reply, "missing field `plan`");
}

#[tokio::test]
async fn a_key_on_an_unknown_plan_is_refused_naming_plan() {
    let gateway = Gateway::start().await;

    let reply = gateway.post("/admin/keys", json!({"plan": "gold"})).await;

    assert_bad_request(&reply, r#"plan: no usage plan has the id "gold""#);
}

#[tokio::test]
async fn a_key_id_that_is_taken_is_refused_with_409_and_the_first_key_keeps_working() {
    let gateway = Gateway::start().await;
    let first = gateway.create(json!({"id": "acme", "plan": "basic"})).await;

    let reply = gateway
        .post("/admin/keys", json!({"id": "acme", "plan": "pro"}))
        .await;

    let detail = refused(
        &reply,
        StatusCode::CONFLICT,
        "urn:tollgate:problem:conflict",
    );
    assert_eq!(
        detail,
        r#"id: an API key with the id "acme" exists already"#
    );
    assert!(!reply.text().contains("tg_"), "{reply:?}");
    assert_eq!(gateway.call_api(secret_of(&first)).await.text(), "basic");
}

#[tokio::test]
async fn a_key_id_that_cannot_name_a_key_is_refused_naming_id() {
    let gateway = Gateway::start().await;

    let reply = gateway
        .post("/admin/keys", json!({"id": "acme corp", "plan": "basic"}))
        .await;

    assert_bad_request(&reply, r#"id: invalid key id "acme corp""#);
}

#[tokio::test]
async fn every_key_route_answers_404_for_an_unknown_key() {
    let gateway = Gateway::start().await;
    let requests = [
        (Method::GET, "/admin/keys/nobody", ""),
        (Method::POST, "/admin/keys/nobody/enable", ""),
        (Method::POST, "/admin/keys/nobody/disable", ""),
        (
            Method::POST,
            "/admin/keys/nobody/rotate",
            r#"{"grace": "1h"}"#,
        ),
        (Method::PUT, "/admin/keys/nobody/plan", r#"{"plan": "pro"}"#),
        (
            Method::GET,
            "/admin/keys/nobody/usage?from=2026-11-01&to=2026-11-24",
            "",
        ),
        (Method::DELETE, "/admin/keys/nobody", ""),
    ];

    for (method, path, body) in requests {
        let reply = gateway.json(method.clone(), path, body).await;
        let detail = refused(&reply, StatusCode::NOT_FOUND, NOT_FOUND);
        assert_eq!(
            detail, r#"no API key has the id "nobody""#,
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_refused_with_415() {
    let gateway = Gateway::start().await;

    let reply = gateway
        .send(
            Method::POST,
            "/admin/keys",
            &[("content-type", "text/plain")],
            r#"{"plan": "basic"}"#,
        )
        .await;

    let detail = refused(
        &reply,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "urn:tollgate:problem:unsupported-media-type",
    );
    assert_eq!(
        detail,
        "expected a JSON body with Content-Type: application/json"
    );
}

#[tokio::test]
async fn unknown_admin_routes_and_methods_are_refused_with_problem_json() {
    let gateway = Gateway::start().await;

    let reply = gateway.get("/admin/plans").await;
    refused(&reply, StatusCode::NOT_FOUND, NOT_FOUND);
    let reply = gateway.send(Method::PATCH, "/admin/keys", &[], "").await;
    refused(
        &reply,
        StatusCode::METHOD_NOT_ALLOWED,
        "urn:tollgate:problem:method-not-allowed",
    );
    assert_eq!(reply.header("allow"), "GET,HEAD,POST");
}
