//! The whole gateway from a configuration file, over real loopback TCP: one shop written in
//! YAML and in TOML answers the same; invalid files are refused naming the file, the line and
//! the field; cross-references and the names the application provides are checked before
//! anything serves; and each piece a route configures (stage variables, aggregates, upstreams,
//! API keys, custom authorizers) does what the file says.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum::http::Uri;
use axum::routing::get;
use axum::Router;
use http::HeaderMap;
use serde_json::json;
use support::{bearer, serve_axum, Calls, Client, Reply};
use tollgate::auth::{Allow, AuthorizerResponse, BoxError, CustomAuthorizer, IdentitySource};
use tollgate::config::{ConfigError, GatewayConfig, GatewayHandle, Handlers, Problem};
use tollgate::usage::KeyHash;
use tollgate::{ManualClock, Principal, Stage};

const THROTTLED: &str = "urn:tollgate:problem:throttled";
const UNAUTHORIZED: &str = "urn:tollgate:problem:unauthorized";
const INVALID_API_KEY: &str = "urn:tollgate:problem:invalid-api-key";
const NOT_FOUND: &str = "urn:tollgate:problem:not-found";
const METHOD_NOT_ALLOWED: &str = "urn:tollgate:problem:method-not-allowed";
const BAD_GATEWAY: &str = "urn:tollgate:problem:bad-gateway";

/// The plaintext of the key `acme` whose hash the shop fixtures hold.
const SHOP_KEY: &str = "tg_acme_Sh0pKey2026";
const SHOP_KEY_HASH: &str =
    "sha256:5f876da9f1fc198ce2be2e15a60f7b6f72e7f0dd57d500f5c1374a913b0ae5fb";

/// How long one client call may take before the test fails instead of hanging.
const CALL_LIMIT: Duration = Duration::from_secs(10);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

/// A clock frozen at noon UTC on 2026-03-10, so throttles, quotas and cache ages are the same
/// in every run.
fn frozen_clock() -> ManualClock {
    ManualClock::starting_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_773_144_000))
}

async fn call(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    tokio::time::timeout(CALL_LIMIT, Client::new().get(addr, path, headers))
        .await
        .unwrap_or_else(|_| panic!("GET {path} took more than {CALL_LIMIT:?}"))
}

#[track_caller]
fn only_problem(error: &ConfigError) -> &Problem {
    assert_eq!(error.problems().len(), 1, "{error}");
    &error.problems()[0]
}

fn problem(path: &str, line: usize, column: usize, message: &str) -> Problem {
    Problem {
        path: path.to_owned(),
        line: Some(line),
        column: Some(column),
        message: message.to_owned(),
    }
}

/// A problem found after reading, which has a field but no line.
fn unplaced(path: &str, message: &str) -> Problem {
    Problem {
        path: path.to_owned(),
        line: None,
        column: None,
        message: message.to_owned(),
    }
}

// The shop: the same gateway in shop.yaml and shop.toml.

/// The shop's handlers, each answering with how many calls reached it, on `clock`.
fn shop_handlers(clock: &ManualClock) -> Handlers {
    let (catalog, whoami, search, reports) = (
        Calls::default(),
        Calls::default(),
        Calls::default(),
        Calls::default(),
    );
    Handlers::new()
        .clock(clock.clone())
        .handler("catalog", move || {
            let n = catalog.next();
            async move { format!("catalog #{n}") }
        })
        .handler("whoami", move |headers: HeaderMap| {
            let n = whoami.next();
            // The authorizer copies the token's `sub` claim into `x-user-id`.
            let user = headers
                .get("x-user-id")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("nobody")
                .to_owned();
            async move { format!("{user} #{n}") }
        })
        .handler("search", move || {
            let n = search.next();
            async move { format!("search #{n}") }
        })
        .handler("reports", move |principal: Option<Principal>| {
            let n = reports.next();
            let key = principal
                .as_ref()
                .and_then(Principal::api_key_id)
                .unwrap_or("no key")
                .to_owned();
            async move { format!("report #{n} for {key}") }
        })
}

/// What a client saw: the status, every header but `date`, and the body.
#[derive(Debug, PartialEq)]
struct Seen {
    request: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    fn problem_type(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let body: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        body["type"].as_str().unwrap().to_owned()
    }
}

enum Step {
    Get(&'static str, Vec<(&'static str, String)>),
    Advance(Duration),
}

fn shop_script() -> Vec<Step> {
    let alice = bearer("alice");
    let key = SHOP_KEY.to_owned();
    let none = Vec::new;
    vec![
        Step::Get("/health", none()),
        Step::Get("/products", none()),
        Step::Get("/products", none()),
        Step::Get("/me", none()),
        Step::Get("/me", vec![("authorization", alice.clone())]),
        Step::Get("/me", vec![("authorization", alice.clone())]),
        Step::Get("/me", vec![("authorization", "Bearer not-a-jwt".into())]),
        Step::Get("/search", none()),
        Step::Get("/search", none()),
        Step::Get("/search", none()),
        Step::Get("/health", vec![("x-tenant", "t1".into())]),
        Step::Get("/health", vec![("x-tenant", "t1".into())]),
        Step::Get("/reports", none()),
        Step::Get("/reports", vec![("x-api-key", "tg_acme_NotTheKey".into())]),
        Step::Get("/reports", vec![("x-api-key", key.clone())]),
        Step::Get("/reports", vec![("x-api-key", key)]),
        Step::Get("/nowhere", none()),
        Step::Get("/nowhere", vec![("authorization", alice)]),
        Step::Advance(Duration::from_secs(60)),
        Step::Get("/products", none()),
        Step::Get("/search", none()),
        Step::Get(
            "/me",
            vec![
                ("authorization", bearer("alice")),
                ("x-user-id", "mallory".into()),
            ],
        ),
    ]
}

/// Builds the shop from `file` on a frozen clock, serves it, and runs the script.
async fn run_shop(file: &str) -> Vec<Seen> {
    let config = GatewayConfig::from_file(fixture(file)).unwrap_or_else(|e| panic!("{e}"));
    let clock = frozen_clock();
    let handle = GatewayHandle::new(config, shop_handlers(&clock))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = serve_axum(handle.router()).await;
    let mut seen = Vec::new();
    for step in shop_script() {
        match step {
            Step::Advance(by) => clock.advance(by),
            Step::Get(path, headers) => {
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let reply = call(addr, path, &headers).await;
                let names: Vec<_> = headers.iter().map(|(name, _)| *name).collect();
                seen.push(Seen {
                    request: format!("GET {path} {names:?}"),
                    status: reply.status.as_u16(),
                    headers: reply
                        .headers
                        .iter()
                        .filter(|(name, _)| *name != "date")
                        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
                        .collect(),
                    body: reply.text(),
                });
            }
        }
    }
    seen
}

#[test]
fn the_fixture_key_hash_is_the_hash_of_the_key_the_tests_present() {
    assert_eq!(KeyHash::of(SHOP_KEY.as_bytes()).to_string(), SHOP_KEY_HASH);
    for file in ["shop.yaml", "shop.toml"] {
        let text = std::fs::read_to_string(fixture(file)).unwrap();
        assert!(text.contains(SHOP_KEY_HASH), "{file}");
    }
}

#[test]
fn the_yaml_and_toml_shops_read_as_the_same_configuration() {
    let yaml = GatewayConfig::from_file(fixture("shop.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let toml = GatewayConfig::from_file(fixture("shop.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(yaml.routes.len(), 5);
    let (yaml, toml) = (format!("{yaml:#?}"), format!("{toml:#?}"));
    for (line, (yaml, toml)) in yaml.lines().zip(toml.lines()).enumerate() {
        assert_eq!(yaml, toml, "line {} of the configurations' Debug", line + 1);
    }
    assert_eq!(yaml.lines().count(), toml.lines().count());
}

#[tokio::test]
async fn the_shop_serves_what_its_file_says() {
    let seen = run_shop("shop.yaml").await;
    let at = |index: usize| &seen[index];

    // A mock integration.
    assert_eq!(at(0).status, 200, "{:?}", at(0));
    assert_eq!(at(0).header("content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&at(0).body).unwrap(),
        json!({ "status": "ok" })
    );

    // An anonymous route whose cache override shares a five-minute entry.
    assert_eq!((at(1).status, at(1).body.as_str()), (200, "catalog #1"));
    assert_eq!(at(1).header("x-cache-status"), Some("MISS"));
    assert_eq!((at(2).status, at(2).body.as_str()), (200, "catalog #1"));
    assert_eq!(at(2).header("x-cache-status"), Some("HIT"));

    // The default policy needs a token; the route's cache override turns caching off.
    assert_eq!(at(3).status, 401, "{:?}", at(3));
    assert_eq!(at(3).problem_type(), UNAUTHORIZED);
    assert!(
        at(3)
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer"),
        "{:?}",
        at(3)
    );
    assert_eq!((at(4).status, at(4).body.as_str()), (200, "alice #1"));
    assert_eq!((at(5).status, at(5).body.as_str()), (200, "alice #2"));
    assert_eq!(at(6).status, 401, "{:?}", at(6));
    assert!(
        at(6)
            .header("www-authenticate")
            .unwrap()
            .contains("invalid_token"),
        "{:?}",
        at(6)
    );

    // The route's own throttle: two at once, then 429 for a minute; the default cache
    // answers the second.
    assert_eq!((at(7).status, at(7).body.as_str()), (200, "search #1"));
    assert_eq!((at(8).status, at(8).body.as_str()), (200, "search #1"));
    assert_eq!(at(8).header("x-cache-status"), Some("HIT"));
    assert_eq!(at(9).status, 429, "{:?}", at(9));
    assert_eq!(at(9).problem_type(), THROTTLED);
    assert_eq!(at(9).header("retry-after"), Some("60"));

    // The coarse throttle's per-tenant rule.
    assert_eq!(at(10).status, 200, "{:?}", at(10));
    assert_eq!(at(11).status, 429, "{:?}", at(11));
    assert_eq!(at(11).problem_type(), THROTTLED);

    // An API key route: no key, a wrong key, the key, then the plan's route throttle.
    for refused in [at(12), at(13)] {
        assert_eq!(refused.status, 401, "{refused:?}");
        assert_eq!(refused.problem_type(), INVALID_API_KEY);
        assert!(
            refused
                .header("www-authenticate")
                .unwrap()
                .starts_with("ApiKey"),
            "{refused:?}"
        );
    }
    assert_eq!(
        (at(14).status, at(14).body.as_str()),
        (200, "report #1 for acme")
    );
    assert_eq!(at(15).status, 429, "{:?}", at(15));
    assert_eq!(at(15).problem_type(), THROTTLED);
    assert_eq!(at(15).header("retry-after"), Some("60"));

    // No route: the authorizer first, then a problem+json 404.
    assert_eq!(at(16).status, 401, "{:?}", at(16));
    assert_eq!(at(17).status, 404, "{:?}", at(17));
    assert_eq!(at(17).problem_type(), NOT_FOUND);

    // A minute later the five-minute entry still answers; the 30-second default has expired.
    assert_eq!((at(18).status, at(18).body.as_str()), (200, "catalog #1"));
    assert_eq!(at(18).header("x-cache-status"), Some("HIT"));
    assert_eq!(at(18).header("age"), Some("60"));
    assert_eq!((at(19).status, at(19).body.as_str()), (200, "search #2"));
    assert_eq!(at(19).header("x-cache-status"), Some("MISS"));

    // The claim header is the token's, whatever the client sends under its name.
    assert_eq!((at(20).status, at(20).body.as_str()), (200, "alice #3"));
}

#[tokio::test]
async fn the_yaml_and_toml_shops_answer_every_request_alike() {
    let yaml = run_shop("shop.yaml").await;
    let toml = run_shop("shop.toml").await;
    assert_eq!((yaml.len(), toml.len()), (21, 21));
    for (yaml, toml) in yaml.iter().zip(&toml) {
        assert_eq!(yaml, toml);
    }
}

// Files that cannot be read: the file, the line and column, the field.

#[test]
fn a_bad_duration_names_the_file_line_and_field() {
    let path = fixture("bad-duration.yaml");
    let error = GatewayConfig::from_file(&path).unwrap_err();
    let message = r#"expected a duration like "30s", "5m" or "500ms", found "thirty""#;
    assert_eq!(
        error.problems(),
        [problem("routes[1].cache.ttl", 10, 12, message)]
    );
    assert_eq!(error.file(), Some(path.as_path()));
    assert_eq!(
        error.to_string(),
        format!("{}:10:12: routes[1].cache.ttl: {message}", path.display())
    );
}

#[test]
fn an_unknown_field_is_refused_by_its_path() {
    let path = fixture("unknown-field.yaml");
    let error = GatewayConfig::from_file(&path).unwrap_err();
    let found = only_problem(&error);
    assert_eq!(found.path, "routes[0].brust", "{error}");
    assert_eq!((found.line, found.column), (Some(5), Some(5)), "{error}");
    assert!(
        found
            .message
            .starts_with("unknown field `brust`, expected one of"),
        "{error}"
    );
    assert!(
        error.to_string().starts_with(&format!(
            "{}:5:5: routes[0].brust: unknown field `brust`",
            path.display()
        )),
        "{error}"
    );
}

#[test]
fn a_bad_rate_names_the_rule_and_what_a_rate_looks_like() {
    let path = fixture("bad-rate.toml");
    let error = GatewayConfig::from_file(&path).unwrap_err();
    let message = r#"invalid rate "10 per second": expected <requests>/<period>, such as 10/s, 100/min or 0.5/s"#;
    assert_eq!(
        error.problems(),
        [problem("throttle.rules[0].rate", 4, 8, message)]
    );
    assert_eq!(
        error.to_string(),
        format!("{}:4:8: throttle.rules[0].rate: {message}", path.display())
    );
}

#[test]
fn a_value_of_the_wrong_type_is_refused_in_each_format() {
    let yaml = "usage:\n  plans:\n    basic:\n      quota: { limit: lots, period: day }\n";
    let error = GatewayConfig::from_yaml(yaml).unwrap_err();
    let found = only_problem(&error);
    assert_eq!(found.path, "usage.plans.basic.quota.limit", "{error}");
    assert_eq!((found.line, found.column), (Some(4), Some(23)), "{error}");
    // serde-saphyr names the type wanted, not the value found.
    assert!(found.message.contains("u32"), "{error}");
    // Without a file, the place is spelled out.
    assert_eq!(
        error.to_string(),
        format!(
            "line 4, column 23: usage.plans.basic.quota.limit: {}",
            found.message
        )
    );

    let toml = "[usage.plans.basic]\nquota = { limit = \"lots\", period = \"day\" }\n";
    let error = GatewayConfig::from_toml(toml).unwrap_err();
    assert_eq!(
        error.problems(),
        [problem(
            "usage.plans.basic.quota.limit",
            2,
            19,
            r#"invalid type: string "lots", expected u32"#
        )]
    );

    let json =
        r#"{"routes": [{"route": "GET /a", "integration": {"mock": {}}, "api_key": "yes"}]}"#;
    let error = GatewayConfig::from_json(json).unwrap_err();
    assert_eq!(
        error.problems(),
        [problem(
            "routes[0].api_key",
            1,
            77,
            r#"invalid type: string "yes", expected a boolean"#
        )]
    );
}

#[test]
fn an_unknown_integration_names_the_kinds_there_are() {
    let yaml = "routes:\n  - route: GET /a\n    integration: { lambda: orders }\n";
    let error = GatewayConfig::from_yaml(yaml).unwrap_err();
    let found = only_problem(&error);
    assert_eq!(found.path, "routes[0].integration", "{error}");
    assert_eq!(found.line, Some(3), "{error}");
    assert!(
        found.message.contains("lambda")
            && ["handler", "upstream", "aggregate", "mock"]
                .iter()
                .all(|kind| found.message.contains(kind)),
        "{error}"
    );
}

#[test]
fn a_yaml_syntax_error_names_the_line_and_column() {
    let path = fixture("broken.yaml");
    let error = GatewayConfig::from_file(&path).unwrap_err();
    // The flow mapping opened on line 4 is never closed: the reader finds out at the next
    // item, and names the field it was reading then.
    let message = r#""-" is only valid inside a block"#;
    assert_eq!(
        error.problems(),
        [problem("routes[0].integration.mock", 5, 3, message)]
    );
    assert_eq!(
        error.to_string(),
        format!(
            "{}:5:3: routes[0].integration.mock: {message}",
            path.display()
        )
    );
}

#[test]
fn a_toml_syntax_error_names_the_line_and_column() {
    let path = fixture("broken.toml");
    let error = GatewayConfig::from_file(&path).unwrap_err();
    let found = only_problem(&error);
    assert_eq!(found.path, "", "{error}");
    assert_eq!((found.line, found.column), (Some(3), Some(9)), "{error}");
    assert!(!found.message.is_empty(), "{error}");
    assert_eq!(
        error.to_string(),
        format!("{}:3:9: {}", path.display(), found.message)
    );
}

#[test]
fn a_json_syntax_error_names_the_line_and_column() {
    let json = "{\n  \"routes\": [\n    { \"route\": \"GET /a\", }\n  ]\n}\n";
    let error = GatewayConfig::from_json(json).unwrap_err();
    let found = only_problem(&error);
    assert_eq!((found.line, found.column), (Some(3), Some(26)), "{error}");
    assert_eq!(found.message, "trailing comma", "{error}");
    assert!(
        error.to_string().starts_with("line 3, column 26: "),
        "{error}"
    );

    let error = GatewayConfig::from_json("{} {}").unwrap_err();
    assert_eq!(
        error.problems(),
        [problem(
            "",
            1,
            4,
            "trailing characters after the configuration"
        )]
    );
}

#[test]
fn a_key_that_cannot_be_read_leaves_no_placeholder_in_the_path() {
    // serde_path_to_error writes `?` for a map key it could not read; users see field names.
    let json = GatewayConfig::from_json(r#"{"usage": {"plans": {"basic": {}, }}}"#).unwrap_err();
    let yaml = GatewayConfig::from_yaml(
        "routes:\n  - route: GET /a\n    integration: { mock: {} }\n    [x]: 1\n",
    )
    .unwrap_err();
    assert_eq!(
        (
            only_problem(&json).path.as_str(),
            only_problem(&yaml).path.as_str()
        ),
        ("usage.plans", "routes[0]"),
        "{json}\n{yaml}"
    );
}

#[test]
fn a_file_of_an_unknown_format_is_refused_by_its_extension() {
    let path = fixture("gateway.ini");
    assert!(path.exists());
    let error = GatewayConfig::from_file(&path).unwrap_err();
    let message = "unknown format: expected a .yaml, .yml, .toml or .json file";
    assert_eq!(error.problems(), [unplaced("", message)]);
    assert_eq!(error.to_string(), format!("{}: {message}", path.display()));
}

#[test]
fn a_missing_file_is_refused_with_its_name() {
    let path = fixture("missing.yaml");
    assert!(!path.exists());
    let error = GatewayConfig::from_file(&path).unwrap_err();
    let found = only_problem(&error);
    assert_eq!((found.path.as_str(), found.line), ("", None), "{error}");
    assert!(
        found.message.starts_with("cannot read the file: "),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        format!("{}: {}", path.display(), found.message)
    );
}

// Cross-references, all listed at once when the file is read.

#[test]
fn every_broken_cross_reference_is_listed_at_once() {
    let yaml = format!(
        r#"
usage:
  plans:
    basic: {{ stages: [prod, staging] }}
  keys:
    - {{ id: acme, plan: gold, created: "2026-01-01T00:00:00Z", hash: "{SHOP_KEY_HASH}" }}
stages:
  default_stage: live
  stages:
    beta: {{ base_paths: [/beta], variables: {{ color: red }} }}
    prod:
      variables: {{ v: blue }}
      canary: {{ percent: 10, variables: {{ v: green }} }}
routes:
  - route: GET /orders
    integration: {{ handler: "orders-${{stageVariables.color}}" }}
    api_key: true
    plan_throttles: {{ gold: {{ rate: 1/s }} }}
  - route: GET /orders
    integration: {{ mock: {{ status: 204 }} }}
  - route: GET /search
    integration: {{ mock: {{ status: 204 }} }}
    plan_throttles: {{ basic: {{ rate: 1/s }} }}
"#
    );
    let error = GatewayConfig::from_yaml(&yaml).unwrap_err();
    assert_eq!(
        error.problems(),
        [
            unplaced(
                "routes[0].plan_throttles.gold",
                r#"no plan "gold" in usage.plans"#
            ),
            unplaced(
                "routes[0].integration.handler",
                r#"stage variable "color" is not defined for deployment "prod" (stages.prod)"#
            ),
            unplaced(
                "routes[0].integration.handler",
                r#"stage variable "color" is not defined for deployment "prod-canary" (stages.prod.canary)"#
            ),
            unplaced(
                "routes[1].route",
                r#"route "GET /orders" conflicts with "GET /orders""#
            ),
            unplaced(
                "routes[2].plan_throttles",
                "plan throttles apply to requests with an API key: set `api_key: true`"
            ),
            unplaced("usage.keys[0].plan", r#"no plan "gold" in usage.plans"#),
            unplaced(
                "usage.plans.basic.stages",
                r#"no stage "staging" in stages.stages"#
            ),
            unplaced(
                "stages.default_stage",
                r#"no stage "live" in stages.stages"#
            ),
        ]
    );
    // One problem a line, each naming its field.
    let display = error.to_string();
    assert_eq!(display.lines().count(), 8, "{display}");
    assert!(
        display.starts_with("routes[0].plan_throttles.gold: no plan \"gold\" in usage.plans\n"),
        "{display}"
    );
}

#[test]
fn routes_needing_a_section_the_file_lacks_are_refused() {
    let yaml = r#"
routes:
  - route: GET /reports
    integration: { mock: { status: 204 } }
    api_key: true
  - route: GET /me
    integration: { handler: whoami }
    auth: { any_of: [profile] }
    cache: { ttl: 5m }
  - route: GET /orders
    integration: { handler: "orders-${stageVariables.v}" }
"#;
    let error = GatewayConfig::from_yaml(yaml).unwrap_err();
    assert_eq!(
        error.problems(),
        [
            unplaced(
                "routes[0].api_key",
                "the route needs an API key but there is no `usage` section with plans"
            ),
            unplaced(
                "routes[1].auth",
                "the route has a policy but there is no `auth` section with an authorizer"
            ),
            unplaced(
                "routes[1].cache",
                "the route has a cache policy but there is no `cache` section"
            ),
            unplaced(
                "routes[2].integration.handler",
                r#"stage variable "v" is not defined; there are no stages to define it"#
            ),
        ]
    );
}

#[test]
fn a_problem_found_after_reading_a_file_names_the_file_but_no_line() {
    let path = fixture("cross-reference.yaml");
    let error = GatewayConfig::from_file(&path).unwrap_err();
    assert_eq!(
        error.problems(),
        [unplaced(
            "routes[0].plan_throttles",
            "plan throttles apply to requests with an API key: set `api_key: true`"
        )]
    );
    assert_eq!(
        error.to_string(),
        format!(
            "{}: routes[0].plan_throttles: plan throttles apply to requests with an API key: set `api_key: true`",
            path.display()
        )
    );
}

// What only the application can tell: checked when the gateway is built.

#[tokio::test]
async fn a_handler_the_application_does_not_provide_is_named_with_those_it_does() {
    let config = GatewayConfig::from_yaml(
        "routes:\n  - { route: GET /products, integration: { handler: catalog } }\n",
    )
    .unwrap();
    let handlers = Handlers::new()
        .handler("products", || async { "[]" })
        .handler("orders", || async { "[]" });
    let error = GatewayHandle::new(config, handlers).await.unwrap_err();
    assert_eq!(
        error.problems(),
        [unplaced(
            "routes[0].integration.handler",
            r#"no handler named "catalog"; the application provides "orders", "products""#
        )]
    );
}

#[tokio::test]
async fn a_handler_only_the_canary_names_is_checked_before_serving() {
    let config = GatewayConfig::from_yaml(
        r#"
stages:
  default_stage: prod
  stages:
    prod:
      variables: { v: blue }
      canary: { percent: 5, variables: { v: green } }
routes:
  - route: GET /orders
    integration: { handler: "orders-${stageVariables.v}" }
"#,
    )
    .unwrap();
    let handlers = Handlers::new().handler("orders-blue", || async { "blue" });
    let error = GatewayHandle::new(config, handlers).await.unwrap_err();
    assert_eq!(
        error.problems(),
        [unplaced(
            "routes[0].integration.handler",
            r#"no handler named "orders-green" (deployment "prod-canary", stages.prod.canary); the application provides "orders-blue""#
        )]
    );
}

#[tokio::test]
async fn building_a_file_names_the_file_and_the_missing_handler() {
    let path = fixture("shop.yaml");
    let handlers = Handlers::new().handler("catalog", || async { "[]" });
    let error = GatewayHandle::from_file(&path, handlers).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            r#"{}: routes[2].integration.handler: no handler named "whoami"; the application provides "catalog""#,
            path.display()
        )
    );
}

#[tokio::test]
async fn a_custom_authorizer_the_application_does_not_provide_is_refused() {
    let config = GatewayConfig::from_yaml(
        "auth: { authorizer: { custom: sessions } }\nroutes:\n  - { route: GET /me, integration: { mock: {} } }\n",
    )
    .unwrap();
    let error = GatewayHandle::new(config, Handlers::new())
        .await
        .unwrap_err();
    assert_eq!(
        error.problems(),
        [unplaced(
            "auth.authorizer.custom",
            r#"the application provides no custom authorizer named "sessions""#
        )]
    );
}

#[tokio::test]
async fn an_aggregate_backend_naming_an_unknown_handler_is_refused() {
    let config = GatewayConfig::from_yaml(
        r#"
routes:
  - route: GET /products/{id}/details
    integration:
      aggregate:
        backends:
          - { name: product, service: product }
          - { name: reviews, service: ghost, optional: true }
"#,
    )
    .unwrap();
    let handlers = Handlers::new().handler("product", || async { "{}" });
    let error = GatewayHandle::new(config, handlers).await.unwrap_err();
    assert_eq!(
        error.problems(),
        [unplaced(
            "routes[0].integration.aggregate",
            r#"backend "reviews": no in-process service is named "ghost""#
        )]
    );
}

#[tokio::test]
async fn an_hmac_secret_from_an_unset_variable_is_refused() {
    let config = GatewayConfig::from_yaml(
        r#"
auth:
  authorizer:
    jwt:
      providers:
        - { issuer: "https://issuer.test", audiences: [api], keys: { hmac_secret_env: TOLLGATE_CONFIG_TEST_NEVER_SET } }
routes:
  - { route: GET /me, integration: { mock: {} } }
"#,
    )
    .unwrap();
    let error = GatewayHandle::new(config, Handlers::new())
        .await
        .unwrap_err();
    assert_eq!(
        error.problems(),
        [unplaced(
            "auth.authorizer.jwt",
            r#"invalid key: environment variable "TOLLGATE_CONFIG_TEST_NEVER_SET" is not set"#
        )]
    );
}

// Route pieces over loopback.

/// A gateway serving `yaml` with `handlers`, on loopback.
async fn serve(yaml: &str, handlers: Handlers) -> SocketAddr {
    let config = GatewayConfig::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
    let handle = GatewayHandle::new(config, handlers)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    serve_axum(handle.router()).await
}

#[tokio::test]
async fn stage_variables_choose_the_handler_of_each_deployment() {
    for (percent, deployment, body) in [
        (100, "prod-canary", "green on prod-canary"),
        (0, "prod", "blue on prod"),
    ] {
        let yaml = format!(
            r#"
stages:
  default_stage: prod
  stages:
    prod:
      variables: {{ v: blue }}
      canary: {{ percent: {percent}, variables: {{ v: green }} }}
routes:
  - route: GET /orders
    integration: {{ handler: "orders-${{stageVariables.v}}" }}
"#
        );
        let handlers = Handlers::new()
            .handler("orders-blue", |stage: Stage| async move {
                format!("blue on {}", stage.deployment())
            })
            .handler("orders-green", |stage: Stage| async move {
                format!("green on {}", stage.deployment())
            });
        let addr = serve(&yaml, handlers).await;
        let reply = call(addr, "/orders", &[]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("x-deployment"), deployment, "{reply:?}");
        assert_eq!(reply.text(), body, "{reply:?}");
    }
}

/// Handlers for aggregates: `product` echoes the id of its path (a path parameter, under a
/// route or a backend's path template alike), `reviews` always fails.
fn aggregate_handlers() -> Handlers {
    Handlers::new()
        .handler(
            "product",
            |axum::extract::Path(id): axum::extract::Path<String>| async move {
                axum::Json(json!({ "id": id, "name": "lamp" }))
            },
        )
        .handler("reviews", || async {
            (http::StatusCode::INTERNAL_SERVER_ERROR, "reviews are down")
        })
}

#[tokio::test]
async fn an_aggregate_of_named_handlers_answers_without_its_failing_optional_backend() {
    let yaml = r#"
routes:
  - route: GET /products/{id}
    integration: { handler: product }
  - route: GET /products/{id}/details
    integration:
      aggregate:
        errors_field: errors
        backends:
          - { name: product, service: product, path: "/products/{id}" }
          - { name: reviews, service: reviews, optional: true }
  - route: GET /products/{id}/reviews
    integration:
      aggregate:
        backends:
          - { name: reviews, service: reviews }
"#;
    let addr = serve(yaml, aggregate_handlers()).await;

    // One handler reads its path parameter as a route's integration and as a backend.
    let reply = call(addr, "/products/7", &[]).await;
    assert_eq!(
        reply.json(),
        json!({ "id": "7", "name": "lamp" }),
        "{reply:?}"
    );
    let reply = call(addr, "/products/7/details", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-tollgate-completed"), "false");
    assert_eq!(
        reply.json(),
        json!({ "id": "7", "name": "lamp", "errors": { "reviews": { "status": 500 } } })
    );

    // A required backend that fails fails the whole answer.
    let reply = call(addr, "/products/7/reviews", &[]).await;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.problem(), BAD_GATEWAY);
}

#[tokio::test]
async fn an_upstream_integration_proxies_to_another_server() {
    let upstream = serve_axum(Router::new().route(
        "/inventory/{sku}",
        get(|uri: Uri| async move {
            (
                [("x-served-by", "inventory")],
                format!("upstream saw {uri}"),
            )
        }),
    ))
    .await;
    // A port nothing listens on any more.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let yaml = format!(
        r#"
routes:
  - route: GET /inventory/{{sku}}
    integration: {{ upstream: {{ url: "http://{upstream}" }} }}
  - route: GET /warehouse
    integration: {{ upstream: {{ url: "http://{closed}" }} }}
"#
    );
    let addr = serve(&yaml, Handlers::new()).await;

    let reply = call(addr, "/inventory/lamp-7?fields=count", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-served-by"), "inventory");
    assert_eq!(reply.text(), "upstream saw /inventory/lamp-7?fields=count");

    let reply = call(addr, "/warehouse", &[]).await;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.problem(), BAD_GATEWAY);
}

#[tokio::test]
async fn a_path_no_route_matches_is_a_problem_json_404() {
    let yaml = "routes:\n  - { route: GET /orders, integration: { mock: { body: orders } } }\n";
    let addr = serve(yaml, Handlers::new()).await;

    let reply = call(addr, "/orders", &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "orders")
    );

    let reply = call(addr, "/orders/7", &[]).await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.problem(), NOT_FOUND);
    assert_eq!(reply.json()["detail"], "no route matches the request");
}

#[tokio::test]
async fn a_handler_reads_the_path_parameters_of_its_route() {
    let yaml = "routes:\n  - { route: \"GET /orders/{id}/lines/{line}\", integration: { handler: line } }\n";
    let handlers = Handlers::new().handler(
        "line",
        |axum::extract::Path((id, line)): axum::extract::Path<(u32, u32)>| async move {
            format!("order {id}, line {line}")
        },
    );
    let addr = serve(yaml, handlers).await;

    let reply = call(addr, "/orders/7/lines/2", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.text(), "order 7, line 2");
}

#[tokio::test]
async fn a_method_the_route_does_not_serve_is_refused_as_problem_json() {
    let yaml = "routes:\n  - { route: GET /orders, integration: { mock: { body: orders } } }\n";
    let addr = serve(yaml, Handlers::new()).await;

    let reply = tokio::time::timeout(
        CALL_LIMIT,
        Client::new().send("DELETE", addr, "/orders", &[]),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 405, "{reply:?}");
    assert!(reply.header("allow").contains("GET"), "{reply:?}");
    assert_eq!(reply.problem(), METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn only_routes_with_api_key_need_a_key() {
    let yaml = format!(
        r#"
usage:
  plans:
    basic: {{ quota: {{ limit: 100, period: day }} }}
  keys:
    - {{ id: acme, plan: basic, created: "2026-01-01T00:00:00Z", hash: "{SHOP_KEY_HASH}" }}
routes:
  - route: GET /reports
    integration: {{ handler: reports }}
    api_key: true
  - route: GET /catalog
    integration: {{ mock: {{ body: catalog }} }}
"#
    );
    let handlers = Handlers::new().handler("reports", |principal: Option<Principal>| async move {
        let plan = principal
            .as_ref()
            .and_then(Principal::usage_plan_id)
            .unwrap_or("no plan")
            .to_owned();
        format!("reports on {plan}")
    });
    let addr = serve(&yaml, handlers).await;

    let refused = call(addr, "/reports", &[]).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.problem(), INVALID_API_KEY);
    assert!(refused.header("www-authenticate").starts_with("ApiKey"));

    let allowed = call(addr, "/reports", &[("x-api-key", SHOP_KEY)]).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.text(), "reports on basic");

    let open = call(addr, "/catalog", &[]).await;
    assert_eq!(
        (open.status.as_u16(), open.text().as_str()),
        (200, "catalog")
    );
}

#[tokio::test]
async fn a_custom_authorizer_is_found_by_its_name() {
    let calls = Calls::default();
    let counted = calls.clone();
    let sessions = CustomAuthorizer::builder([IdentitySource::Header(http::header::AUTHORIZATION)])
        .from_fn(move |identity| {
            counted.next();
            let response = match identity.header("authorization") {
                Some("Bearer let-me-in") => Allow::new("user-42").into(),
                _ => AuthorizerResponse::Unauthorized,
            };
            std::future::ready(Ok::<_, BoxError>(response))
        })
        .unwrap();
    let yaml = r#"
auth:
  authorizer: { custom: sessions }
routes:
  - route: GET /me
    integration: { handler: whoami }
  - route: GET /health
    integration: { mock: { body: ok } }
    auth: { anonymous: true }
"#;
    let handlers = Handlers::new().authorizer("sessions", sessions).handler(
        "whoami",
        |principal: Principal| async move {
            format!("hello {}", principal.subject().unwrap_or("nobody"))
        },
    );
    let addr = serve(yaml, handlers).await;

    let missing = call(addr, "/me", &[]).await;
    assert_eq!(missing.status, 401, "{missing:?}");
    assert_eq!(missing.problem(), UNAUTHORIZED);
    let wrong = call(addr, "/me", &[("authorization", "Bearer guess")]).await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert!(wrong.header("www-authenticate").contains("invalid_token"));
    let allowed = call(addr, "/me", &[("authorization", "Bearer let-me-in")]).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.text(), "hello user-42");
    let open = call(addr, "/health", &[]).await;
    assert_eq!((open.status.as_u16(), open.text().as_str()), (200, "ok"));
    // No header, no call; the anonymous route calls nothing either.
    assert_eq!(calls.count(), 2);
}

// The configuration as a layer for the application's own router.

#[tokio::test]
async fn a_configuration_without_routes_throttles_the_applications_router() {
    let config = GatewayConfig::from_yaml(
        "throttle:\n  rules:\n    - { name: per-client, rate: 1/min, burst: 2, key: client-ip }\n",
    )
    .unwrap();
    let clock = frozen_clock();
    let handle = GatewayHandle::new(config, Handlers::new().clock(clock.clone()))
        .await
        .unwrap();
    let app = Router::new()
        .route("/hello", get(|| async { "hello from the app" }))
        .layer(handle.layer());
    let addr = serve_axum(app).await;

    for _ in 0..2 {
        let reply = call(addr, "/hello", &[]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.text(), "hello from the app");
    }
    let throttled = call(addr, "/hello", &[]).await;
    assert_eq!(throttled.status, 429, "{throttled:?}");
    assert_eq!(throttled.problem(), THROTTLED);
    assert_eq!(throttled.header("retry-after"), "60");

    clock.advance(Duration::from_secs(60));
    let reply = call(addr, "/hello", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

/// A custom authorizer that lets `Bearer let-me-in` through.
fn let_me_in() -> CustomAuthorizer {
    CustomAuthorizer::builder([IdentitySource::Header(http::header::AUTHORIZATION)])
        .from_fn(|identity| {
            let response = match identity.header("authorization") {
                Some("Bearer let-me-in") => Allow::new("user-42").into(),
                _ => AuthorizerResponse::Unauthorized,
            };
            std::future::ready(Ok::<_, BoxError>(response))
        })
        .unwrap()
}

#[tokio::test]
async fn a_request_is_judged_by_the_route_that_serves_it_not_a_wider_template() {
    // `GET /items/secret` is more specific than the anonymous `GET /items/{id}`: it serves the
    // request, so its policy (credentials) applies, and the wider route's throttle does not.
    let yaml = r#"
auth:
  authorizer: { custom: sessions }
routes:
  - route: GET /items/{id}
    integration: { mock: { body: public } }
    auth: { anonymous: true }
    throttle: { rate: 1/min, burst: 1 }
  - route: GET /items/secret
    integration: { mock: { body: secret } }
"#;
    let handlers = Handlers::new().authorizer("sessions", let_me_in());
    let addr = serve(yaml, handlers).await;

    let refused = call(addr, "/items/secret", &[]).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    let key = [("authorization", "Bearer let-me-in")];
    for _ in 0..3 {
        let allowed = call(addr, "/items/secret", &key).await;
        assert_eq!(allowed.status, 200, "{allowed:?}");
        assert_eq!(allowed.text(), "secret");
    }
    assert_eq!(call(addr, "/items/7", &[]).await.text(), "public");
    let throttled = call(addr, "/items/8", &[]).await;
    assert_eq!(throttled.status, 429, "{throttled:?}");
}

#[tokio::test]
async fn routes_of_one_path_and_different_methods_or_parameter_names_all_serve() {
    // axum's router refuses these side by side (one tree for every method); the gateway's
    // table takes them, method first.
    let yaml = r#"
routes:
  - { route: "GET\t/p/{id}", integration: { mock: { body: get } } }
  - { route: "POST /p/{name}", integration: { mock: { body: post } } }
  - { route: "GET /x/{*rest}", integration: { mock: { body: rest } } }
  - { route: "POST /x/{id}", integration: { mock: { body: one } } }
"#;
    let addr = serve(yaml, Handlers::new()).await;
    let client = Client::new();
    assert_eq!(call(addr, "/p/1", &[]).await.text(), "get");
    assert_eq!(client.send("POST", addr, "/p/1", &[]).await.text(), "post");
    assert_eq!(call(addr, "/x/a/b", &[]).await.text(), "rest");
    assert_eq!(client.send("POST", addr, "/x/7", &[]).await.text(), "one");
    let refused = client.send("DELETE", addr, "/p/1", &[]).await;
    assert_eq!(refused.status, 405, "{refused:?}");
    assert_eq!(refused.header("allow"), "GET, HEAD");
}

#[test]
fn templates_the_router_cannot_serve_are_refused_at_load() {
    let yaml = r#"
routes:
  - { route: GET /users/:id, integration: { mock: {} } }
  - { route: GET /static/*, integration: { mock: {} } }
  - { route: "GET /files/{name}.json", integration: { mock: {} } }
"#;
    let error = GatewayConfig::from_yaml(yaml).unwrap_err();
    let paths: Vec<_> = error.problems().iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["routes[0].route", "routes[1].route", "routes[2].route"],
        "{error}"
    );
    assert!(
        error.problems()[0].message.contains("{id}"),
        "{}",
        error.problems()[0].message
    );
    assert!(
        error.problems()[2].message.contains("whole segment"),
        "{}",
        error.problems()[2].message
    );
}

#[test]
fn one_deployment_name_with_two_sets_of_variables_is_refused() {
    let yaml = r#"
stages:
  default_stage: prod
  stages:
    beta: { deployment: v2, base_paths: [/beta], variables: { o: b } }
    prod: { variables: { o: p }, canary: { deployment: v2, percent: 100, variables: { o: c } } }
routes:
  - { route: GET /orders, integration: { handler: "orders-${stageVariables.o}" } }
"#;
    let error = GatewayConfig::from_yaml(yaml).unwrap_err();
    assert_eq!(error.problems().len(), 1, "{error}");
    assert_eq!(error.problems()[0].path, "stages.prod.canary");
    assert!(
        error.problems()[0].message.contains("stages.beta"),
        "{error}"
    );
}

#[test]
fn a_key_written_where_its_hash_belongs_is_not_repeated_in_the_error() {
    let yaml = r#"
usage:
  plans: { basic: {} }
  keys:
    - { id: acme, plan: basic, created: "2026-01-01T00:00:00Z", hash: tg_acme_PLAINTEXTSECRET }
"#;
    let error = GatewayConfig::from_yaml(yaml).unwrap_err().to_string();
    assert!(error.contains("usage.keys[0].hash"), "{error}");
    assert!(
        !error.contains("PLAINTEXTSECRET"),
        "the key leaked: {error}"
    );
}

#[tokio::test]
async fn a_plan_throttle_on_a_wider_template_leaves_a_more_specific_route_on_the_plans_own() {
    let yaml = format!(
        r#"
usage:
  plans:
    basic: {{ throttle: {{ rate: 100/s, burst: 100 }} }}
  keys:
    - {{ id: acme, plan: basic, created: "2026-01-01T00:00:00Z", hash: "{SHOP_KEY_HASH}" }}
routes:
  - route: GET /items/{{id}}
    integration: {{ mock: {{ body: item }} }}
    api_key: true
    plan_throttles: {{ basic: {{ rate: 1/min, burst: 1 }} }}
  - route: GET /items/special
    integration: {{ mock: {{ body: special }} }}
    api_key: true
"#
    );
    let addr = serve(&yaml, Handlers::new().clock(ManualClock::new())).await;
    let key = [("x-api-key", SHOP_KEY)];
    for _ in 0..3 {
        let reply = call(addr, "/items/special", &key).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.text(), "special");
    }
    assert_eq!(call(addr, "/items/1", &key).await.status, 200);
    let throttled = call(addr, "/items/2", &key).await;
    assert_eq!(throttled.status, 429, "{throttled:?}");
}

#[tokio::test]
async fn the_ip_lists_then_cors_come_first() {
    let yaml = r#"
cors:
  allow_origins: ["https://shop.example"]
  allow_methods: [GET]
  allow_headers: [authorization]
ip_filter:
  deny: ["127.0.0.9"]
throttle:
  rules: [{ name: everyone, rate: 1/min, burst: 1, key: global }]
routes:
  - route: GET /hello
    integration: { mock: { body: hello } }
"#;
    let addr = serve(yaml, Handlers::new().clock(ManualClock::new())).await;
    let preflight = |client: Client| async move {
        client
            .send(
                "OPTIONS",
                addr,
                "/hello",
                &[
                    ("origin", "https://shop.example"),
                    ("access-control-request-method", "GET"),
                ],
            )
            .await
    };
    // Preflights are answered by CORS, before the throttle (burst 1) spends anything.
    for _ in 0..3 {
        let answered = preflight(Client::new()).await;
        assert_eq!(answered.status, 200, "{answered:?}");
        assert_eq!(
            answered.header("access-control-allow-origin"),
            "https://shop.example"
        );
    }
    let origin = [("origin", "https://shop.example")];
    let served = call(addr, "/hello", &origin).await;
    assert_eq!(served.text(), "hello", "{served:?}");
    let throttled = call(addr, "/hello", &origin).await;
    assert_eq!(throttled.status, 429, "{throttled:?}");
    assert_eq!(
        throttled.header("access-control-allow-origin"),
        "https://shop.example"
    );
    // A denied client is refused first, even its preflight.
    let denied = preflight(Client::from_ip("127.0.0.9")).await;
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.problem(), "urn:tollgate:problem:forbidden");
}

#[test]
fn cors_and_ip_lists_that_cannot_be_built_are_refused_at_load() {
    let yaml = r#"
cors:
  allow_origins: ["*"]
  allow_credentials: true
ip_filter:
  allow: ["10.0.0.0/33"]
"#;
    let error = GatewayConfig::from_yaml(yaml).unwrap_err();
    let paths: Vec<_> = error.problems().iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["cors", "ip_filter"], "{error}");
}

#[tokio::test]
async fn request_ids_are_made_kept_echoed_on_refusals_and_passed_to_an_upstream() {
    // The upstream answers with the request id it was sent.
    let upstream = serve_axum(Router::new().route(
        "/echo",
        get(|headers: http::HeaderMap| async move {
            headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned()
        }),
    ))
    .await;
    let yaml = format!(
        r#"
request_id: {{}}
throttle:
  rules: [{{ name: everyone, rate: 1/min, burst: 2, key: global }}]
routes:
  - route: GET /echo
    integration: {{ upstream: {{ url: "http://{upstream}" }} }}
"#
    );
    let addr = serve(&yaml, Handlers::new().clock(ManualClock::new())).await;

    // Made when absent: a UUID, the one the upstream saw, echoed.
    let made = call(addr, "/echo", &[]).await;
    assert_eq!(made.status, 200, "{made:?}");
    let id = made.header("x-request-id").to_owned();
    assert_eq!(id.len(), 36, "{made:?}");
    assert_eq!(id.matches('-').count(), 4, "{id}");
    assert_eq!(made.text(), id);
    // Kept when the client sent one.
    let kept = call(addr, "/echo", &[("x-request-id", "trace-42")]).await;
    assert_eq!(kept.header("x-request-id"), "trace-42");
    assert_eq!(kept.text(), "trace-42");
    // Echoed on the gateway's own refusals.
    let refused = call(addr, "/echo", &[("x-request-id", "trace-43")]).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("x-request-id"), "trace-43");
}

#[tokio::test]
async fn request_ids_the_access_log_metrics_and_validation_are_steps_of_the_configured_gateway() {
    let yaml = "request_id: {}\naccess_log: { trusted_proxies: [10.0.0.0/8] }\nmetrics: true\nroutes:\n  - { route: GET /a, integration: { mock: {} }, validate: { headers: [x-a] } }\n";
    let config = GatewayConfig::from_yaml(yaml).unwrap();
    let handle = GatewayHandle::new(config, Handlers::new()).await.unwrap();
    let shown = format!("{handle:?}");
    assert!(
        shown.contains(r#"steps: ["request_id", "access_log", "metrics", "routes", "validate"]"#),
        "{shown}"
    );
}

/// `POST path` with a JSON `body` and `headers`, over the real client of hyper-util.
async fn post_json(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    use hyper_util::client::legacy::Client as HyperClient;
    use hyper_util::rt::TokioExecutor;
    let client = HyperClient::builder(TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .unwrap();
    Reply::of(client.request(request).await.unwrap()).await
}

#[tokio::test]
async fn a_route_checks_its_requests_before_its_handler_and_lists_every_violation() {
    let yaml = r#"
routes:
  - route: POST /orders
    integration: { handler: orders }
    validate:
      headers: [x-client-id]
      query:
        limit: { type: integer, min: 1, max: 10 }
        sort: { enum: [price, name], required: true }
      body:
        schema:
          type: object
          required: [items]
          properties:
            items: { type: array, minItems: 1, items: { type: integer } }
        max_bytes: 64
  - route: POST /orders/{id}
    integration: { handler: orders }
    validate:
      query:
        dry_run: { type: boolean, required: true }
  # More specific than /orders/{id}, and checks nothing: it is judged by itself.
  - route: POST /orders/bulk
    integration: { handler: orders }
"#;
    let calls = Calls::default();
    let counted = calls.clone();
    let handlers = Handlers::new().handler("orders", move |body: String| {
        counted.next();
        async move { body }
    });
    let addr = serve(yaml, handlers).await;

    let refused = post_json(addr, "/orders?limit=0&sort=size", &[], r#"{"items":["x"]}"#).await;
    assert_eq!(refused.status, 400, "{refused:?}");
    let errors = refused.json()["errors"].clone();
    let at: Vec<(String, String)> = errors
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["in"].as_str().unwrap().to_owned(),
                e["pointer"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("header", "/x-client-id"),
        ("query", "/limit"),
        ("query", "/sort"),
        ("body", "/items/0"),
    ] {
        assert!(
            at.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} not in {errors}"
        );
    }
    assert_eq!(calls.count(), 0);

    let too_large = post_json(
        addr,
        "/orders?sort=price",
        &[("x-client-id", "c1")],
        &format!(r#"{{"items":[{}]}}"#, "1,".repeat(40) + "1"),
    )
    .await;
    assert_eq!(too_large.status, 413, "{too_large:?}");
    assert_eq!(calls.count(), 0);

    let body = r#"{"items":[1,2]}"#;
    let passed = post_json(
        addr,
        "/orders?sort=price&limit=3",
        &[("x-client-id", "c1")],
        body,
    )
    .await;
    assert_eq!(passed.status, 200, "{passed:?}");
    assert_eq!(passed.text(), body);
    assert_eq!(calls.count(), 1);

    // Each route by its own checks: /orders/7 needs dry_run; /orders/bulk needs nothing.
    let missing = post_json(addr, "/orders/7", &[], "{}").await;
    assert_eq!(missing.status, 400, "{missing:?}");
    assert_eq!(missing.json()["errors"][0]["pointer"], "/dry_run");
    let bulk = post_json(addr, "/orders/bulk", &[], "anything").await;
    assert_eq!(bulk.status, 200, "{bulk:?}");
    assert_eq!(calls.count(), 2);
}

#[test]
fn validation_that_cannot_mean_anything_is_refused_at_load() {
    let yaml = r#"
routes:
  - route: GET /a
    integration: { mock: {} }
    validate:
      headers: ["bad header"]
      query:
        n: { type: integer, enum: [a] }
        s: { min: 1 }
        r: { type: integer, min: 5, max: 1 }
      body: { schema: {}, schema_file: a.json, max_bytes: 0 }
"#;
    let error = GatewayConfig::from_yaml(yaml).unwrap_err();
    let paths: Vec<&str> = error.problems().iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[0].validate.headers[0]",
            "routes[0].validate.query.n",
            "routes[0].validate.query.r",
            "routes[0].validate.query.s",
            "routes[0].validate.body",
            "routes[0].validate.body.max_bytes",
        ],
        "{error}"
    );
}

#[tokio::test]
async fn a_schema_file_is_read_beside_the_configuration_and_a_bad_schema_is_refused() {
    let dir = std::env::temp_dir().join(format!("tollgate-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("order.json"),
        r#"{"type":"object","required":["sku"]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("gateway.yaml"),
        "routes:\n  - route: POST /o\n    integration: { handler: o }\n    validate: { body: { schema_file: order.json } }\n",
    )
    .unwrap();
    let config = GatewayConfig::from_file(dir.join("gateway.yaml")).unwrap();
    let handle = GatewayHandle::new(config, Handlers::new().handler("o", || async { "ok" }))
        .await
        .unwrap();
    let addr = serve_axum(handle.router()).await;
    let refused = post_json(addr, "/o", &[], "{}").await;
    assert_eq!(refused.status, 400, "{refused:?}");
    assert_eq!(refused.json()["errors"][0]["keyword"], "required");
    assert_eq!(
        post_json(addr, "/o", &[], r#"{"sku":"a"}"#).await.status,
        200
    );

    // A schema that is not one is refused when the configuration is read, at its field.
    let yaml = "routes:\n  - route: POST /o\n    integration: { handler: o }\n    validate: { body: { schema: { type: 12 } } }\n";
    let error = GatewayConfig::from_yaml(yaml).unwrap_err();
    assert!(
        error.to_string().contains("routes[0].validate.body.schema"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
