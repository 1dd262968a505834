//! Gateways built from one configuration file with a `redis` section: two instances over real
//! loopback TCP share quotas, throttles, keys and the cache through a `redis-server` of the
//! test's own, a reload keeps what lives in Redis, and the Redis URL is a secret read from a
//! file that errors never print.
//!
//! Without `redis-server` these tests skip with a printed reason, unless
//! `TOLLGATE_REQUIRE_REDIS=1` (set by `scripts/test`) makes that a failure.

#[path = "../crates/tollgate-redis/tests/support/mod.rs"]
mod redis_support;
mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_support::RedisServer;
use support::{serve_axum, Client, Reply};
use tollgate::config::{GatewayConfig, GatewayHandle, Handlers};
use tollgate::usage::{KeyHash, NewKey};

const QUOTA_EXCEEDED: &str = "urn:tollgate:problem:quota-exceeded";
const THROTTLED: &str = "urn:tollgate:problem:throttled";

/// An API key the configuration lists by hash, and its plaintext.
const ACME: &str = "tg_acme_0123456789abcdef";

/// A file holding the Redis URL, removed when dropped.
struct UrlFile(PathBuf);

impl UrlFile {
    fn new(server: &RedisServer, name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "tollgate-config-redis-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, format!("{}\n", server.url())).unwrap();
        Self(path)
    }
}

impl Drop for UrlFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A gateway sharing everything through Redis: a route throttle of 2 per minute, plan
/// `basic` with a quota of `quota` a day and the key ACME, a cached report.
fn shop(url: &UrlFile, quota: u32, extra_route: &str) -> GatewayConfig {
    let hash = KeyHash::of(ACME.as_bytes());
    let yaml = format!(
        r#"
redis:
  url: {{ file: "{url}" }}
  prefix: shop-test
usage:
  plans:
    basic: {{ quota: {{ limit: {quota}, period: day }} }}
  keys:
    - {{ id: acme, plan: basic, created: "2026-01-01T00:00:00Z", hash: "{hash}" }}
cache:
  default: {{ enabled: false }}
routes:
  - route: GET /orders
    integration: {{ mock: {{ body: orders }} }}
    api_key: true
  - route: GET /limited
    integration: {{ mock: {{ body: limited }} }}
    throttle: {{ rate: 2/min, burst: 2 }}
  - route: GET /report
    integration: {{ handler: report }}
    cache: {{ enabled: true, ttl: 60s, sharing: shared }}
{extra_route}"#,
        url = url.0.display(),
    );
    GatewayConfig::from_yaml(&yaml).unwrap_or_else(|error| panic!("{error}\n{yaml}"))
}

/// Handlers with a report that counts its calls.
fn handlers(reports: &Arc<AtomicUsize>) -> Handlers {
    let reports = reports.clone();
    Handlers::new().handler("report", move || {
        let reports = reports.clone();
        async move {
            let n = reports.fetch_add(1, Ordering::SeqCst) + 1;
            format!("report {n}")
        }
    })
}

fn assert_refused(reply: &Reply, problem: &str) {
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(reply.problem(), problem, "{reply:?}");
}

/// Two instances built from one configuration ([`shop`] with a quota of 6), served.
struct Shop {
    a: GatewayHandle,
    a_addr: std::net::SocketAddr,
    b_addr: std::net::SocketAddr,
    reports: Arc<AtomicUsize>,
    _url: UrlFile,
}

impl Shop {
    async fn start(server: &RedisServer, name: &str) -> Self {
        let url = UrlFile::new(server, name);
        let reports = Arc::new(AtomicUsize::new(0));
        let a = GatewayHandle::new(shop(&url, 6, ""), handlers(&reports))
            .await
            .unwrap();
        let b = GatewayHandle::new(shop(&url, 6, ""), handlers(&reports))
            .await
            .unwrap();
        let (a_addr, b_addr) = (serve_axum(a.router()).await, serve_axum(b.router()).await);
        Self {
            a,
            a_addr,
            b_addr,
            reports,
            _url: url,
        }
    }
}

#[tokio::test]
async fn two_instances_from_one_file_share_quota_throttle_and_keys() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let shop = Shop::start(&server, "shared").await;
    let (a_addr, b_addr, client) = (shop.a_addr, shop.b_addr, Client::new());

    // The quota of 6 is one for both instances: 3 on each, then both refuse.
    for addr in [a_addr, b_addr, a_addr, b_addr, a_addr, b_addr] {
        let reply = client.with_key(addr, "/orders", ACME).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.text(), "orders");
    }
    assert_refused(
        &client.with_key(a_addr, "/orders", ACME).await,
        QUOTA_EXCEEDED,
    );
    assert_refused(
        &client.with_key(b_addr, "/orders", ACME).await,
        QUOTA_EXCEEDED,
    );

    // The route's own throttle (burst 2) too: one on each, then the third is refused.
    assert_eq!(client.get(a_addr, "/limited", &[]).await.status, 200);
    assert_eq!(client.get(b_addr, "/limited", &[]).await.status, 200);
    assert_refused(&client.get(a_addr, "/limited", &[]).await, THROTTLED);

    // A key made on one instance works on the other at once.
    let plans = shop.a.plans().expect("the configuration has plans");
    let (_, secret) = plans.create_key(NewKey::new("basic")).await.unwrap();
    let reply = client.with_key(b_addr, "/orders", secret.expose()).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn a_response_cached_through_one_instance_is_a_hit_on_the_other() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let shop = Shop::start(&server, "cache").await;
    let (a_addr, b_addr, client) = (shop.a_addr, shop.b_addr, Client::new());

    // The cache key holds the host: both instances serve one site.
    let host = [("host", "shop.example")];
    let first = client.get(a_addr, "/report", &host).await;
    assert_eq!(first.header("x-cache-status"), "MISS", "{first:?}");
    assert_eq!(first.text(), "report 1");
    // The store reaches Redis in the background: wait (bounded) until it is there.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache_entries(&server).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the response never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let on_b = client.get(b_addr, "/report", &host).await;
    assert_eq!(on_b.header("x-cache-status"), "HIT", "{on_b:?}");
    assert_eq!(on_b.text(), "report 1", "{on_b:?}");
    assert_eq!(shop.reports.load(Ordering::SeqCst), 1);
}

/// How many cache entries Redis holds under the test's prefix (an inline `KEYS` command).
async fn cache_entries(server: &RedisServer) -> usize {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let url = server.url();
    let addr = url.trim_start_matches("redis://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"KEYS shop-test:cache:*\r\n")
        .await
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await.unwrap();
    // `*<count>` for an array reply.
    line.trim()
        .strip_prefix('*')
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reply to KEYS: {line:?}"))
}

#[tokio::test]
async fn a_reload_keeps_what_lives_in_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = UrlFile::new(&server, "reload");
    let reports = Arc::new(AtomicUsize::new(0));
    let handle = GatewayHandle::new(shop(&url, 4, ""), handlers(&reports))
        .await
        .unwrap();
    let addr = serve_axum(handle.router()).await;
    let client = Client::new();
    for _ in 0..2 {
        assert_eq!(client.with_key(addr, "/orders", ACME).await.status, 200);
    }
    assert_eq!(client.get(addr, "/limited", &[]).await.status, 200);
    assert_eq!(client.get(addr, "/limited", &[]).await.status, 200);

    let extra = "  - route: GET /new\n    integration: { mock: { body: new } }\n";
    handle.reload(shop(&url, 4, extra)).await.unwrap();
    assert_eq!(client.get(addr, "/new", &[]).await.text(), "new");
    // 2 of 4 were spent before the reload, and the route's burst of 2 is still spent.
    for _ in 0..2 {
        assert_eq!(client.with_key(addr, "/orders", ACME).await.status, 200);
    }
    assert_refused(
        &client.with_key(addr, "/orders", ACME).await,
        QUOTA_EXCEEDED,
    );
    assert_refused(&client.get(addr, "/limited", &[]).await, THROTTLED);
}

#[tokio::test]
async fn the_redis_url_is_a_secret_errors_never_print() {
    let unset =
        GatewayConfig::from_yaml("redis:\n  url: { env: TOLLGATE_CONFIG_REDIS_TEST_NEVER_SET }\n")
            .unwrap();
    let error = GatewayHandle::new(unset, Handlers::new())
        .await
        .unwrap_err();
    assert_eq!(error.problems()[0].path, "redis.url");
    assert_eq!(
        error.problems()[0].message,
        "environment variable \"TOLLGATE_CONFIG_REDIS_TEST_NEVER_SET\" is not set"
    );

    let wrong =
        GatewayConfig::from_yaml("redis:\n  url: \"http://:hunter2@example.com\"\n").unwrap();
    let error = GatewayHandle::new(wrong, Handlers::new())
        .await
        .unwrap_err();
    assert_eq!(error.problems()[0].path, "redis.url");
    let shown = format!(
        "{error} {error:?} {:?}",
        GatewayConfig::from_yaml("redis:\n  url: \"redis://:hunter2@h\"\n").unwrap()
    );
    assert!(shown.contains("not a usable Redis URL"), "{shown}");
    assert!(!shown.contains("hunter2"), "the password leaked: {shown}");
}

#[tokio::test]
async fn a_throttle_rule_named_like_a_plan_is_refused_with_redis() {
    let yaml = r#"
redis:
  url: "redis://127.0.0.1:1"
throttle:
  rules: [{ name: basic, rate: 10/s, key: api-key }]
usage:
  plans:
    basic: { quota: { limit: 5, period: day } }
"#;
    let error = GatewayConfig::from_yaml(yaml).unwrap_err();
    assert_eq!(error.problems().len(), 1, "{error}");
    assert_eq!(error.problems()[0].path, "throttle.rules[0].name");
    // Without Redis the two live in separate memory stores: no conflict.
    let memory = yaml.replace("redis:\n  url: \"redis://127.0.0.1:1\"\n", "");
    assert!(GatewayConfig::from_yaml(&memory).is_ok());
}
