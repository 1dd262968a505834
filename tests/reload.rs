//! Reloading a gateway built from configuration, over real loopback TCP: no request fails
//! while configurations change under load, state the new configuration did not change
//! survives (quota counts, throttle allowances, keys made at runtime), invalid
//! configurations are refused and the running one stays, requests in flight finish on the
//! configuration they started with, and a watched file is applied when it changes.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use support::{serve_axum, Calls, Client, Reply};
use tokio::sync::{mpsc, Notify};
use tollgate::config::{GatewayConfig, GatewayHandle, Handlers};
use tollgate::usage::{KeyHash, NewKey, ThrottleConfig};
use tollgate::ManualClock;

const THROTTLED: &str = "urn:tollgate:problem:throttled";
const QUOTA_EXCEEDED: &str = "urn:tollgate:problem:quota-exceeded";

/// API keys the configurations list by hash, and their plaintext.
const ACME: &str = "tg_acme_0123456789abcdef";
const BETA: &str = "tg_beta_fedcba9876543210";

fn config(yaml: &str) -> GatewayConfig {
    GatewayConfig::from_yaml(yaml).unwrap_or_else(|error| panic!("{error}\n{yaml}"))
}

/// A key record on `plan` for the key `key` (`tg_<id>_<secret>`).
fn key_record(key: &str, plan: &str) -> String {
    let id = key.split('_').nth(1).unwrap();
    let hash = KeyHash::of(key.as_bytes());
    format!(r#"{{ id: {id}, plan: {plan}, created: "2026-01-01T00:00:00Z", hash: "{hash}" }}"#)
}

/// A gateway whose clock stands still: allowances refill and quota days end only if a
/// reload resets them.
async fn still(config: GatewayConfig, handlers: Handlers) -> GatewayHandle {
    GatewayHandle::new(config, handlers.clock(ManualClock::new()))
        .await
        .unwrap()
}

fn assert_ok(reply: &Reply, body: &str) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.text(), body, "{reply:?}");
}

fn assert_refused(reply: &Reply, problem: &str) {
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(reply.problem(), problem);
}

/// A `routes` entry answering `GET path` with `body`.
fn mock_route(path: &str, body: &str) -> String {
    format!(
        "
  - route: GET {path}
    integration: {{ mock: {{ body: {body} }} }}"
    )
}

fn mock(body: &str) -> GatewayConfig {
    config(&format!("routes:{}", mock_route("/hello", body)))
}

/// The body generation `generation` serves in the load test: "A" first, then "B", "A", ...
fn body_of(generation: u64) -> &'static str {
    if generation % 2 == 1 {
        "A"
    } else {
        "B"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_concurrent_load_drop_no_request() {
    const TASKS: usize = 8;
    const REQUESTS: usize = 300;
    // More if the reloads are not done yet (a slow machine), up to this many.
    const MOST_REQUESTS: usize = 1500;
    const RELOADS: u64 = 20;
    // Requests each configuration serves before the next reload.
    const SERVED: usize = 40;
    let handle = GatewayHandle::new(mock(body_of(1)), Handlers::new())
        .await
        .unwrap();
    let addr = serve_axum(handle.router()).await;

    // Each client reports the generation of the requests that surely ran on one (the
    // generation did not change while they were sent and answered).
    let (served, mut progress) = mpsc::unbounded_channel();
    let reloaded = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..TASKS)
        .map(|_| {
            let (handle, served, reloaded) = (handle.clone(), served.clone(), reloaded.clone());
            tokio::spawn(async move {
                let client = Client::new();
                let mut bodies = Vec::with_capacity(REQUESTS);
                for n in 0..MOST_REQUESTS {
                    if n >= REQUESTS && reloaded.load(Ordering::SeqCst) {
                        break;
                    }
                    let before = handle.generation();
                    let reply = client.get(addr, "/hello", &[]).await;
                    let after = handle.generation();
                    assert_eq!(reply.status, 200, "{reply:?}");
                    if before == after {
                        assert_eq!(reply.text(), body_of(before), "generation {before}");
                        let _ = served.send(before);
                    }
                    bodies.push(reply.text());
                }
                bodies
            })
        })
        .collect();
    drop(served);
    let reloader = {
        let (handle, reloaded) = (handle.clone(), reloaded.clone());
        tokio::spawn(async move {
            for generation in 1..=RELOADS {
                let mut count = 0;
                while count < SERVED {
                    let served = progress.recv().await;
                    let served = served.unwrap_or_else(|| {
                        panic!(
                            "the clients finished before generation {generation} served {SERVED}"
                        )
                    });
                    count += usize::from(served == generation);
                }
                handle.reload(mock(body_of(generation + 1))).await.unwrap();
            }
            reloaded.store(true, Ordering::SeqCst);
        })
    };

    let mut seen = [0usize; 2];
    for client in clients {
        for body in client.await.unwrap() {
            match body.as_str() {
                "A" => seen[0] += 1,
                "B" => seen[1] += 1,
                other => panic!("unexpected body {other:?}"),
            }
        }
    }
    reloader.await.unwrap();
    assert!(seen[0] + seen[1] >= TASKS * REQUESTS, "{seen:?}");
    assert!(seen[0] >= 10 * SERVED && seen[1] >= 10 * SERVED, "{seen:?}");
    assert_eq!(handle.generation(), 1 + RELOADS);
    assert_ok(
        &Client::new().get(addr, "/hello", &[]).await,
        body_of(1 + RELOADS),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reloads_are_applied_one_after_another() {
    let handle = GatewayHandle::new(mock("start"), Handlers::new())
        .await
        .unwrap();
    let addr = serve_axum(handle.router()).await;
    let reloads: Vec<_> = (0..10)
        .map(|n| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.reload(mock(&format!("v{n}"))).await })
        })
        .collect();
    for reload in reloads {
        reload.await.unwrap().unwrap();
    }
    assert_eq!(handle.generation(), 11);
    // The last one applied is the one serving.
    let serving = match &handle.config().routes[0].integration {
        tollgate::config::IntegrationConfig::Mock(mock) => mock.body.clone().unwrap(),
        other => panic!("{other:?}"),
    };
    assert_ok(&Client::new().get(addr, "/hello", &[]).await, &serving);
}

/// Plan `basic` with a daily quota of `limit`; plan `other` with a throttle of `other_burst`;
/// the route `GET /r` needs a key; `keys` are listed; `extra` routes are added.
fn quota_config(limit: u32, other_burst: u32, keys: &[&str], extra: &str) -> GatewayConfig {
    let keys: Vec<_> = keys.iter().map(|key| key_record(key, "basic")).collect();
    config(&format!(
        "
usage:
  plans:
    basic: {{ quota: {{ limit: {limit}, period: day }} }}
    other: {{ throttle: {{ rate: 1/min, burst: {other_burst} }} }}
  keys: [{keys}]
routes:
  - route: GET /r
    integration: {{ mock: {{ body: ok }} }}
    api_key: true{extra}
",
        keys = keys.join(", ")
    ))
}

#[tokio::test]
async fn quota_counts_keys_made_at_runtime_survive_a_reload_and_dropped_keys_stop_working() {
    let handle = still(quota_config(5, 10, &[ACME, BETA], ""), Handlers::new()).await;
    let addr = serve_axum(handle.router()).await;
    let client = Client::new();
    for _ in 0..2 {
        assert_ok(&client.with_key(addr, "/r", ACME).await, "ok");
    }
    assert_ok(&client.with_key(addr, "/r", BETA).await, "ok");
    let (_, runtime) = handle
        .plans()
        .unwrap()
        .create_key(NewKey::new("basic"))
        .await
        .unwrap();
    let runtime = runtime.expose().to_owned();
    assert_ok(&client.with_key(addr, "/r", &runtime).await, "ok");

    // Another plan's throttle changes, a route is added, and BETA is no longer listed.
    handle
        .reload(quota_config(5, 20, &[ACME], &mock_route("/new", "new")))
        .await
        .unwrap();
    assert_eq!(handle.generation(), 2);
    assert_ok(&client.get(addr, "/new", &[]).await, "new");

    // ACME spent 2 of 5, the runtime key 1 of 5.
    for n in 0..3 {
        let reply = client.with_key(addr, "/r", ACME).await;
        assert_eq!(reply.status, 200, "ACME request {n}: {reply:?}");
    }
    assert_refused(&client.with_key(addr, "/r", ACME).await, QUOTA_EXCEEDED);
    for n in 0..4 {
        let reply = client.with_key(addr, "/r", &runtime).await;
        assert_eq!(reply.status, 200, "runtime key request {n}: {reply:?}");
    }
    assert_refused(&client.with_key(addr, "/r", &runtime).await, QUOTA_EXCEEDED);

    let dropped = client.with_key(addr, "/r", BETA).await;
    assert_eq!(dropped.status, 401, "{dropped:?}");
    assert_eq!(dropped.header("www-authenticate"), "ApiKey");
}

#[tokio::test]
async fn a_changed_quota_limit_counts_what_was_already_spent() {
    let handle = still(quota_config(5, 10, &[ACME], ""), Handlers::new()).await;
    let addr = serve_axum(handle.router()).await;
    let client = Client::new();
    for _ in 0..3 {
        assert_ok(&client.with_key(addr, "/r", ACME).await, "ok");
    }
    handle
        .reload(quota_config(4, 10, &[ACME], ""))
        .await
        .unwrap();
    assert_ok(&client.with_key(addr, "/r", ACME).await, "ok");
    assert_refused(&client.with_key(addr, "/r", ACME).await, QUOTA_EXCEEDED);
}

#[tokio::test]
async fn a_key_rotated_in_the_configuration_takes_its_new_secret_and_keeps_its_count() {
    const ROTATED: &str = "tg_acme_rotated0123456789";
    let handle = still(quota_config(5, 10, &[ACME], ""), Handlers::new()).await;
    let addr = serve_axum(handle.router()).await;
    let client = Client::new();
    for _ in 0..4 {
        assert_ok(&client.with_key(addr, "/r", ACME).await, "ok");
    }
    handle
        .reload(quota_config(5, 10, &[ROTATED], ""))
        .await
        .unwrap();
    let old = client.with_key(addr, "/r", ACME).await;
    assert_eq!(old.status, 401, "{old:?}");
    assert_ok(&client.with_key(addr, "/r", ROTATED).await, "ok");
    assert_refused(&client.with_key(addr, "/r", ROTATED).await, QUOTA_EXCEEDED);
}

/// A token from `https://issuer.test` for the audience `api`, signed with `secret`.
fn token(secret: &[u8]) -> String {
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({
        "sub": "alice", "iss": "https://issuer.test", "aud": "api", "exp": expires,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap();
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_reload_reads_a_rotated_secret_file() {
    const OLD: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NEW: &[u8] = b"fedcba9876543210fedcba9876543210";
    let scratch = Scratch::new("secret");
    let secret = scratch.write("jwt-secret", std::str::from_utf8(OLD).unwrap());
    let yaml = format!(
        r#"
auth:
  authorizer:
    jwt:
      providers:
        - issuer: https://issuer.test
          audiences: [api]
          keys: {{ hmac_secret_file: "{}" }}
routes:{}
"#,
        secret.display(),
        mock_route("/me", "me"),
    );
    let handle = GatewayHandle::new(config(&yaml), Handlers::new())
        .await
        .unwrap();
    let addr = serve_axum(handle.router()).await;
    let client = Client::new();
    let as_bearer = |secret: &[u8]| {
        let token = token(secret);
        let client = client.clone();
        async move {
            client
                .get(addr, "/me", &[("authorization", token.as_str())])
                .await
                .status
        }
    };
    assert_eq!(as_bearer(OLD).await, 200);
    assert_eq!(as_bearer(NEW).await, 401);

    // The secret is rotated: the file changes, the configuration does not.
    scratch.write("jwt-secret", std::str::from_utf8(NEW).unwrap());
    handle.reload(config(&yaml)).await.unwrap();
    assert_eq!(as_bearer(NEW).await, 200, "the new secret is refused");
    assert_eq!(as_bearer(OLD).await, 401, "the old secret is accepted");
}

/// A global throttle rule on `GET /r` (rate per minute, burst), and the `extra` routes.
fn throttle_config(rate: u32, burst: u32, extra: &str) -> GatewayConfig {
    config(&format!(
        r#"
throttle:
  rules:
    - {{ name: everyone, rate: {rate}/min, burst: {burst}, key: global, routes: ["GET /r"] }}
routes:{r}{extra}
"#,
        r = mock_route("/r", "r"),
    ))
}

/// Spends `burst` requests of `path` and checks the next is throttled.
async fn spend(
    client: &Client,
    addr: std::net::SocketAddr,
    path: &str,
    key: Option<&str>,
    burst: u32,
) {
    let headers: &[(&str, &str)] = match &key {
        Some(key) => &[("x-api-key", key)],
        None => &[],
    };
    for n in 0..burst {
        let reply = client.get(addr, path, headers).await;
        assert_eq!(reply.status, 200, "{path} request {n}: {reply:?}");
    }
    assert_refused(&client.get(addr, path, headers).await, THROTTLED);
}

#[tokio::test]
async fn an_unchanged_throttle_rule_keeps_its_spent_burst_and_a_changed_one_starts_afresh() {
    let handle = still(throttle_config(1, 2, ""), Handlers::new()).await;
    let addr = serve_axum(handle.router()).await;
    let client = Client::new();
    spend(&client, addr, "/r", None, 2).await;

    // Only the routes changed: the rule's allowance is still spent.
    handle
        .reload(throttle_config(1, 2, &mock_route("/other", "other")))
        .await
        .unwrap();
    assert_ok(&client.get(addr, "/other", &[]).await, "other");
    assert_refused(&client.get(addr, "/r", &[]).await, THROTTLED);

    // A new burst is a new rule.
    handle.reload(throttle_config(1, 3, "")).await.unwrap();
    spend(&client, addr, "/r", None, 3).await;

    // So is a new rate.
    handle.reload(throttle_config(2, 3, "")).await.unwrap();
    spend(&client, addr, "/r", None, 3).await;
    assert_eq!(handle.generation(), 4);
}

#[tokio::test]
async fn a_routes_own_throttle_unchanged_keeps_its_spent_burst() {
    let route_config = |burst: u32, extra: &str| {
        config(&format!(
            "
routes:
  - route: GET /r
    integration: {{ mock: {{ body: r }} }}
    throttle: {{ rate: 1/min, burst: {burst} }}{extra}
"
        ))
    };
    let handle = still(route_config(1, ""), Handlers::new()).await;
    let addr = serve_axum(handle.router()).await;
    let client = Client::new();
    spend(&client, addr, "/r", None, 1).await;

    handle
        .reload(route_config(1, &mock_route("/other", "other")))
        .await
        .unwrap();
    assert_ok(&client.get(addr, "/other", &[]).await, "other");
    assert_refused(&client.get(addr, "/r", &[]).await, THROTTLED);

    handle.reload(route_config(2, "")).await.unwrap();
    spend(&client, addr, "/r", None, 2).await;
}

/// Plan `basic` throttled at 1/min with `burst`, ACME on it, the route `GET /r` with a key,
/// and the `extra` routes.
fn plan_throttle_config(burst: u32, extra: &str) -> GatewayConfig {
    config(&format!(
        "
usage:
  plans:
    basic: {{ throttle: {{ rate: 1/min, burst: {burst} }} }}
  keys: [{key}]
routes:
  - route: GET /r
    integration: {{ mock: {{ body: ok }} }}
    api_key: true{extra}
",
        key = key_record(ACME, "basic"),
    ))
}

#[tokio::test]
async fn an_unchanged_plan_throttle_keeps_its_spent_burst_and_a_changed_one_starts_afresh() {
    let handle = still(plan_throttle_config(2, ""), Handlers::new()).await;
    let addr = serve_axum(handle.router()).await;
    let client = Client::new();
    spend(&client, addr, "/r", Some(ACME), 2).await;

    handle
        .reload(plan_throttle_config(2, &mock_route("/other", "other")))
        .await
        .unwrap();
    assert_ok(&client.get(addr, "/other", &[]).await, "other");
    assert_refused(&client.with_key(addr, "/r", ACME).await, THROTTLED);

    handle.reload(plan_throttle_config(3, "")).await.unwrap();
    spend(&client, addr, "/r", Some(ACME), 3).await;
}

/// A plan's route throttles are named after their route, not their position: a new override
/// that sorts first must not take the name, and with the same rate and burst the spent
/// state, of `GET /z`'s.
#[tokio::test]
async fn a_plan_throttle_on_a_route_stays_with_its_route_when_another_route_gets_one() {
    // `GET /z` has a plan throttle of its own; the reload gives `GET /a` one just like it.
    let routes_config = |a_throttled: bool| {
        let a_throttle = if a_throttled {
            "\n    plan_throttles: { basic: { rate: 1/min, burst: 1 } }"
        } else {
            ""
        };
        config(&format!(
            "
usage:
  plans:
    basic: {{}}
  keys: [{key}]
routes:
  - route: GET /a
    integration: {{ mock: {{ body: a }} }}
    api_key: true{a_throttle}
  - route: GET /z
    integration: {{ mock: {{ body: z }} }}
    api_key: true
    plan_throttles: {{ basic: {{ rate: 1/min, burst: 1 }} }}
",
            key = key_record(ACME, "basic"),
        ))
    };
    let handle = still(routes_config(false), Handlers::new()).await;
    let addr = serve_axum(handle.router()).await;
    let client = Client::new();
    spend(&client, addr, "/z", Some(ACME), 1).await;

    handle.reload(routes_config(true)).await.unwrap();
    // `GET /z`'s throttle did not change: its allowance is still spent. `GET /a`'s is new.
    assert_refused(&client.with_key(addr, "/z", ACME).await, THROTTLED);
    assert_ok(&client.with_key(addr, "/a", ACME).await, "a");
}

/// A scratch directory under the system's temporary one, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tollgate-reload-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `text` to `name` in the directory, returning its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Plan `basic` with `keys` (records), the route `GET /hello` served by `handler`, and
/// `GET /keyed` when `keyed`.
fn hello_yaml(keys: &str, handler: &str, keyed: bool) -> String {
    let keyed = if keyed {
        "\n  - route: GET /keyed\n    integration: { mock: { body: keyed } }\n    api_key: true"
    } else {
        ""
    };
    format!(
        "
usage:
  plans:
    basic: {{}}
  keys: [{keys}]
routes:
  - route: GET /hello
    integration: {{ handler: {handler} }}{keyed}
"
    )
}

#[tokio::test]
async fn an_invalid_reload_is_refused_and_the_running_configuration_keeps_answering() {
    let scratch = Scratch::new("invalid");
    let handlers = Handlers::new().handler("hello", || async { "hello" });
    let running = config(&hello_yaml(&key_record(ACME, "basic"), "hello", true));
    let handle = still(running, handlers).await;
    let addr = serve_axum(handle.router()).await;
    let client = Client::new();
    let answers = || async {
        assert_ok(&client.get(addr, "/hello", &[]).await, "hello");
        assert_ok(&client.with_key(addr, "/keyed", ACME).await, "keyed");
    };
    answers().await;

    // Not YAML.
    let bad_yaml = scratch.write(
        "bad.yaml",
        "routes:\n  - route: GET /hello\n   integration: [\n",
    );
    let error = handle.reload_file(&bad_yaml).await.unwrap_err();
    assert_eq!(error.file(), Some(bad_yaml.as_path()));
    assert!(error.problems()[0].line.is_some(), "{error}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}:", bad_yaml.display())),
        "{error}"
    );

    // A route throttled for a plan there is not: built in code, where the reader's checks did
    // not run, so the reload's own check refuses it.
    let mut unknown_plan = config(&hello_yaml("", "hello", false));
    unknown_plan.routes[0].api_key = true;
    unknown_plan.routes[0].plan_throttles.insert(
        "gold".to_owned(),
        ThrottleConfig {
            rate: "1/s".parse().unwrap(),
            burst: None,
        },
    );
    let error = handle.reload(unknown_plan).await.unwrap_err();
    assert_eq!(error.problems().len(), 1, "{error}");
    assert_eq!(error.problems()[0].path, "routes[0].plan_throttles.gold");
    assert_eq!(
        error.problems()[0].message,
        r#"no plan "gold" in usage.plans"#
    );
    // A key on a plan there is not, from a file.
    let unknown_key_plan = scratch.write(
        "unknown-plan.yaml",
        &hello_yaml(&key_record(BETA, "gold"), "hello", false),
    );
    let error = handle.reload_file(&unknown_key_plan).await.unwrap_err();
    assert_eq!(error.file(), Some(unknown_key_plan.as_path()));
    assert_eq!(error.problems()[0].path, "usage.keys[0].plan");

    // A handler the application does not provide, in a configuration that is otherwise
    // valid: applied, it would also have dropped ACME's key and `GET /keyed`.
    let unknown_handler = config(&hello_yaml("", "missing", false));
    let error = handle.reload(unknown_handler).await.unwrap_err();
    assert_eq!(error.problems()[0].path, "routes[0].integration.handler");
    assert_eq!(
        error.problems()[0].message,
        r#"no handler named "missing"; the application provides "hello""#
    );

    assert_eq!(handle.generation(), 1);
    assert_eq!(handle.config().routes.len(), 2);
    answers().await;
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_configuration_it_started_with() {
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let handlers = {
        let (started, release) = (started.clone(), release.clone());
        Handlers::new().handler("slow", move || {
            let (started, release) = (started.clone(), release.clone());
            async move {
                started.notify_one();
                release.notified().await;
                "old"
            }
        })
    };
    let slow = config("routes:\n  - route: GET /answer\n    integration: { handler: slow }\n");
    let handle = GatewayHandle::new(slow, handlers).await.unwrap();
    let addr = serve_axum(handle.router()).await;
    let client = Client::new();

    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { client.get(addr, "/answer", &[]).await })
    };
    started.notified().await;
    handle
        .reload(config(&format!("routes:{}", mock_route("/answer", "new"))))
        .await
        .unwrap();
    assert_ok(&client.get(addr, "/answer", &[]).await, "new");
    assert!(!in_flight.is_finished());
    release.notify_one();
    assert_ok(&in_flight.await.unwrap(), "old");
}

/// Waits (in real time, up to `within`) until `done`; whether it came.
async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

const WATCH_INTERVAL: Duration = Duration::from_millis(20);
/// How long a change the watcher must not apply is given to show up anyway.
const QUIET: Duration = Duration::from_millis(300);

/// A configuration file whose `GET /v` answers `body`.
fn answering(body: &str) -> String {
    format!("routes:{}", mock_route("/v", body))
}

#[tokio::test]
async fn a_watched_file_is_applied_when_it_changes_until_the_watcher_is_dropped() {
    let scratch = Scratch::new("watch");
    let path = scratch.write("gateway.yaml", &answering("one"));
    let handle = GatewayHandle::from_file(&path, Handlers::new())
        .await
        .unwrap();
    let addr = serve_axum(handle.router()).await;
    let client = Client::new();
    let watcher = handle.watch(&path, WATCH_INTERVAL);

    scratch.write("gateway.yaml", &answering("two"));
    let changed = || handle.generation() >= 2;
    let applied = wait_until(Duration::from_secs(5), changed).await;
    assert!(applied, "the change was not applied");
    let generation = handle.generation();
    assert_ok(&client.get(addr, "/v", &[]).await, "two");

    // An invalid file is refused; the running configuration stays.
    let invalid = "routes:\n  - route: GET /v\n    integration: { handler: none }\n";
    scratch.write("gateway.yaml", invalid);
    let moved = || handle.generation() != generation;
    assert!(
        !wait_until(QUIET, moved).await,
        "an invalid file was applied"
    );
    assert_ok(&client.get(addr, "/v", &[]).await, "two");

    // The watcher is still watching: the next valid file is applied.
    scratch.write("gateway.yaml", &answering("three"));
    let applied = || handle.generation() == generation + 1;
    assert!(wait_until(Duration::from_secs(5), applied).await);
    assert_ok(&client.get(addr, "/v", &[]).await, "three");

    drop(watcher);
    scratch.write("gateway.yaml", &answering("four"));
    let moved = || handle.generation() != generation + 1;
    assert!(
        !wait_until(QUIET, moved).await,
        "applied after the watcher was dropped"
    );
    assert_ok(&client.get(addr, "/v", &[]).await, "three");
}

/// `watch` reads the file as it is before returning: a change written after `watch` returns
/// but before its task first runs (in a current-thread runtime, always) is applied.
#[tokio::test]
async fn a_change_right_after_watch_starts_is_applied() {
    let scratch = Scratch::new("watch-start");
    let path = scratch.write("gateway.yaml", &answering("one"));
    let handle = GatewayHandle::from_file(&path, Handlers::new())
        .await
        .unwrap();
    let addr = serve_axum(handle.router()).await;
    let _watcher = handle.watch(&path, WATCH_INTERVAL);
    scratch.write("gateway.yaml", &answering("two"));
    let applied = wait_until(Duration::from_secs(2), || handle.generation() == 2).await;
    assert!(
        applied,
        "a change made just after `watch` returned was never applied"
    );
    assert_ok(&Client::new().get(addr, "/v", &[]).await, "two");
}

/// Steps only: a global throttle of `burst` at 1/min.
fn steps_config(burst: u32) -> GatewayConfig {
    config(&format!(
        "throttle:\n  rules:\n    - {{ name: everyone, rate: 1/min, burst: {burst}, key: global }}\n"
    ))
}

#[tokio::test]
async fn the_layer_on_an_applications_router_follows_reloads() {
    let handle = still(steps_config(2), Handlers::new()).await;
    let calls = Calls::default();
    let app = {
        let calls = calls.clone();
        Router::new()
            .route(
                "/app",
                get(move || {
                    calls.next();
                    async { "app" }
                }),
            )
            .layer(handle.layer())
    };
    let addr = serve_axum(app).await;
    let client = Client::new();
    spend(&client, addr, "/app", None, 2).await;
    assert_eq!(calls.count(), 2);

    handle.reload(steps_config(4)).await.unwrap();
    spend(&client, addr, "/app", None, 4).await;
    assert_eq!(calls.count(), 6);

    // No steps at all: the application answers everything.
    handle.reload(GatewayConfig::default()).await.unwrap();
    for _ in 0..5 {
        assert_ok(&client.get(addr, "/app", &[]).await, "app");
    }
    assert_eq!(calls.count(), 11);
}
