//! The response cache shared through Redis: gateway instances over real loopback HTTP, each
//! with its own `RedisCacheStore` and cache layer, one Redis between them.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::StatusCode;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis::aio::MultiplexedConnection;
use support::RedisServer;
use tollgate_cache::{
    CacheHandle, CacheKey, CacheLayer, CacheStore, CachedResponse, Lookup, Purge, X_CACHE_STATUS,
};
use tollgate_redis::{BreakerConfig, Redis, RedisCacheStore, RedisConfig};

/// No request may take this long: past it, it counts as hung.
const HANG: Duration = Duration::from_secs(5);
/// How long a purge may take to reach another instance.
const DELIVERY: Duration = Duration::from_secs(2);

/// One gateway instance: `GET /items/{id}` behind a cache layer on Redis, served until
/// dropped, counting the requests that reach the handler.
struct Gateway {
    addr: SocketAddr,
    upstream: Arc<AtomicUsize>,
    purge: CacheHandle<RedisCacheStore>,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// Served until dropped.
    _served: support::Served,
}

/// What a client saw.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    cache: String,
    body: String,
    latency: Duration,
}

impl Gateway {
    /// The handler answers `<name> <id> #<how many requests it has had>`, fresh for a
    /// minute, usable 30 s more if the upstream fails, tagged `items` and `item-<id>`.
    async fn start(name: &'static str, store: RedisCacheStore) -> Self {
        let upstream = Arc::new(AtomicUsize::new(0));
        let calls = upstream.clone();
        let cache = CacheLayer::builder().build_with(store).unwrap();
        let purge = cache.handle();
        let app = Router::new()
            .route(
                "/items/{id}",
                get(move |Path(id): Path<String>| {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        (
                            [
                                ("cache-control", "max-age=60, stale-if-error=30".to_owned()),
                                ("cache-tag", format!("items item-{id}")),
                            ],
                            format!("{name} {id} #{n}"),
                        )
                    }
                }),
            )
            .layer(cache);
        let served = support::serve(app).await;
        Self {
            addr: served.addr,
            upstream,
            purge,
            client: Client::builder(TokioExecutor::new()).build_http(),
            _served: served,
        }
    }

    fn upstream_calls(&self) -> usize {
        self.upstream.load(Ordering::SeqCst)
    }

    /// `GET path`, read to the end; panics if it fails or hangs.
    async fn get(&self, path: &str) -> Reply {
        // The host is part of the cache key: behind a load balancer every instance sees the
        // same one, whatever address it listens on.
        let request = hyper::Request::get(format!("http://{}{path}", self.addr))
            .header(hyper::header::HOST, "shop.example")
            .body(Empty::new())
            .unwrap();
        let started = Instant::now();
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(HANG, exchange)
            .await
            .unwrap_or_else(|_| panic!("GET {path} hung past {HANG:?}"))
            .unwrap_or_else(|error| panic!("GET {path} failed: {error}"));
        Reply {
            status: parts.status,
            cache: parts
                .headers
                .get(X_CACHE_STATUS)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
            body: String::from_utf8(body.to_vec()).unwrap(),
            latency: started.elapsed(),
        }
    }
}

/// A plain connection, to look at what the stores left in Redis.
async fn inspect(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The cache entries under `prefix` (`<prefix>:cache:<64 hex digits>`, not those of a
/// prefix that starts with ours).
async fn entries(redis: &mut MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:cache:*"))
        .query_async(redis)
        .await
        .unwrap();
    names.retain(|name| {
        let hash = &name[prefix.len() + ":cache:".len()..];
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
    });
    names
}

/// Waits (polling, at most `within`) until `done` holds.
async fn eventually<F, Fut>(within: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `count` entries are in Redis under `prefix` (stores write in the background).
async fn stored(redis: &mut MultiplexedConnection, prefix: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let found = entries(redis, prefix).await;
        if found.len() == count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{count} entries were expected under {prefix}, found {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `count` stores listen for purges on `prefix`'s channel.
async fn subscribed(redis: &mut MultiplexedConnection, prefix: &str, count: i64, within: Duration) {
    let channel = format!("{prefix}:cache:purge");
    let deadline = Instant::now() + within;
    loop {
        let (_, listening): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(redis)
            .await
            .unwrap();
        if listening == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} subscribers were expected on {channel}, found {listening}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn delete_entries(redis: &mut MultiplexedConnection, prefix: &str) {
    for name in entries(redis, prefix).await {
        let _: () = redis::cmd("DEL")
            .arg(name)
            .query_async(redis)
            .await
            .unwrap();
    }
}

/// Instances `a` and `b`, each with a connection of its own, both subscribed to purges.
async fn two_instances(
    server: &RedisServer,
    redis: &mut MultiplexedConnection,
) -> (Gateway, Gateway) {
    let a = Gateway::start("a", RedisCacheStore::new(connect(server).await)).await;
    let b = Gateway::start("b", RedisCacheStore::new(connect(server).await)).await;
    subscribed(redis, "tollgate", 2, DELIVERY).await;
    (a, b)
}

async fn connect(server: &RedisServer) -> Redis {
    Redis::connect(&server.url()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cached_through_one_instance_is_a_hit_on_another() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut redis = inspect(&server).await;
    let (a, b) = two_instances(&server, &mut redis).await;

    let first = a.get("/items/1").await;
    assert_eq!((first.status, &*first.cache), (StatusCode::OK, "MISS"));
    assert_eq!(first.body, "a 1 #1");
    stored(&mut redis, "tollgate", 1).await;

    for _ in 0..2 {
        let on_b = b.get("/items/1").await;
        assert_eq!((on_b.status, &*on_b.cache), (StatusCode::OK, "HIT"));
        assert_eq!(on_b.body, "a 1 #1");
    }
    assert_eq!(a.upstream_calls(), 1);
    assert_eq!(b.upstream_calls(), 0, "B's upstream is never called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_instance_empties_the_memory_of_another() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut redis = inspect(&server).await;
    let (a, b) = two_instances(&server, &mut redis).await;

    assert_eq!(a.get("/items/2").await.cache, "MISS");
    stored(&mut redis, "tollgate", 1).await;
    assert_eq!(b.get("/items/2").await.cache, "HIT");
    // With Redis's copy gone, B can only be answering from its memory.
    delete_entries(&mut redis, "tollgate").await;
    let from_memory = b.get("/items/2").await;
    assert_eq!((&*from_memory.cache, &*from_memory.body), ("HIT", "a 2 #1"));
    assert_eq!(b.upstream_calls(), 0);

    a.purge.purge_resource("/items/2");

    eventually(DELIVERY, "B going upstream after A's purge", || async {
        let reply = b.get("/items/2").await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.cache == "MISS"
    })
    .await;
    assert_eq!(b.upstream_calls(), 1);
    let after = b.get("/items/2").await;
    assert_eq!((&*after.cache, &*after.body), ("HIT", "b 2 #1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_after_a_purge_the_purging_instance_does_not_read_the_entry_back_from_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut redis = inspect(&server).await;
    let a = Gateway::start("a", RedisCacheStore::new(connect(&server).await)).await;

    assert_eq!(a.get("/items/3").await.body, "a 3 #1");
    let name = stored(&mut redis, "tollgate", 1).await.remove(0);
    let dump: Vec<u8> = redis::cmd("DUMP")
        .arg(&name)
        .query_async(&mut redis)
        .await
        .unwrap();

    a.purge.purge_tag("item-3");
    stored(&mut redis, "tollgate", 0).await;
    // Put back as it was: as if the purge's delete in Redis had not run yet.
    let _: () = redis::cmd("RESTORE")
        .arg(&name)
        .arg(60_000)
        .arg(dump)
        .query_async(&mut redis)
        .await
        .unwrap();

    let after = a.get("/items/3").await;
    assert_eq!(
        (after.status, &*after.cache, &*after.body),
        (StatusCode::OK, "MISS", "a 3 #2")
    );
    assert_eq!(a.upstream_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_survive_redis_dying_and_the_instances_recover_when_it_returns() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let breaker = BreakerConfig {
        failures: 3,
        open_for: Duration::from_millis(200),
    };
    let store = |redis| RedisCacheStore::new(redis).breaker(breaker);
    let a = Gateway::start("a", store(connect(&server).await)).await;
    let b = Gateway::start("b", store(connect(&server).await)).await;
    let mut redis = inspect(&server).await;
    subscribed(&mut redis, "tollgate", 2, DELIVERY).await;
    assert_eq!(a.get("/items/4").await.cache, "MISS");
    stored(&mut redis, "tollgate", 1).await;
    assert_eq!(b.get("/items/4").await.cache, "HIT");

    server.kill();
    let down = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut requests = 0;
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    while down.elapsed() < Duration::from_millis(1_500) {
        pace.tick().await;
        requests += 1;
        let cached = b.get("/items/4").await;
        assert_eq!((cached.status, &*cached.cache), (StatusCode::OK, "HIT"));
        assert_eq!(cached.body, "a 4 #1");
        let missed = a.get(&format!("/items/down-{requests}")).await;
        assert_eq!((missed.status, &*missed.cache), (StatusCode::OK, "MISS"));
        slowest = slowest.max(cached.latency).max(missed.latency);
    }
    // The call timeout is 50 ms; the breaker opens after three of them.
    assert!(
        slowest < Duration::from_millis(400),
        "a request took {slowest:?} with Redis down"
    );
    eprintln!("{requests} request pairs with Redis down; the slowest took {slowest:?}");

    server.restart();
    let mut redis = inspect(&server).await;
    // B reads what A stores again: new resources until A's write and B's read both get
    // through (each breaker probes after 200 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    for attempt in 1.. {
        assert!(
            Instant::now() < deadline,
            "B did not read A's entries again"
        );
        let path = format!("/items/up-{attempt}");
        let had = entries(&mut redis, "tollgate").await.len();
        assert_eq!(a.get(&path).await.cache, "MISS");
        let written = Instant::now() + Duration::from_millis(300);
        while entries(&mut redis, "tollgate").await.len() == had && Instant::now() < written {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = b.upstream_calls();
        if b.get(&path).await.cache == "HIT" && b.upstream_calls() == before {
            break;
        }
    }

    // Both subscribers are back, and a purge on A reaches B's memory.
    subscribed(&mut redis, "tollgate", 2, Duration::from_secs(5)).await;
    b.get("/items/4").await;
    assert_eq!(b.get("/items/4").await.cache, "HIT");
    delete_entries(&mut redis, "tollgate").await;
    let before = b.upstream_calls();
    assert_eq!(b.get("/items/4").await.cache, "HIT");
    a.purge.purge_resource("/items/4");
    eventually(DELIVERY, "B going upstream after A's purge", || async {
        b.get("/items/4").await.cache == "MISS"
    })
    .await;
    assert_eq!(b.upstream_calls(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keeps_an_entry_while_it_is_usable_and_prefixes_do_not_collide() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut redis = inspect(&server).await;
    // Every key of the second is also under `shop:cache:`, where the first keeps its entries.
    let (shop, nested) = ("shop", "shop:cache:x");
    let store = |prefix| {
        let url = server.url();
        async move {
            let redis = RedisConfig::new(url).prefix(prefix).connect().await;
            RedisCacheStore::new(redis.unwrap())
        }
    };
    let one = Gateway::start("one", store(shop).await).await;
    let two = Gateway::start("two", store(nested).await).await;

    assert_eq!(one.get("/items/5").await.body, "one 5 #1");
    let name = stored(&mut redis, shop, 1).await.remove(0);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&name)
        .query_async(&mut redis)
        .await
        .unwrap();
    // Fresh for 60 s, then usable 30 s more if the upstream fails.
    assert!(
        (85_000..=90_000).contains(&pttl),
        "the entry expires in {pttl} ms"
    );

    let other = two.get("/items/5").await;
    assert_eq!((&*other.cache, &*other.body), ("MISS", "two 5 #1"));
    let nested_name = stored(&mut redis, nested, 1).await.remove(0);
    assert!(nested_name.starts_with("shop:cache:"), "{nested_name}");
    assert_eq!(entries(&mut redis, shop).await, [name]);

    // The nested entry's fields match this purge too: only its name tells it apart.
    one.purge.purge_tag("item-5");
    stored(&mut redis, shop, 0).await;
    assert_eq!(one.get("/items/5").await.body, "one 5 #2");
    stored(&mut redis, shop, 1).await;
    one.purge.purge_all();
    stored(&mut redis, shop, 0).await;
    // Purges are done in Redis once the first prefix's entries are gone; a little longer to
    // be sure nothing else goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(entries(&mut redis, nested).await, [nested_name]);
    let kept = two.get("/items/5").await;
    assert_eq!((&*kept.cache, &*kept.body), ("HIT", "two 5 #1"));
    assert_eq!(two.upstream_calls(), 1);
    assert_eq!(one.get("/items/5").await.body, "one 5 #3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_stops_answering_is_replaced_and_memory_emptied() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut redis = inspect(&server).await;
    let partition = support::Partition::start(&server).await;
    let a = Gateway::start("a", RedisCacheStore::new(connect(&server).await)).await;
    let b_redis = Redis::connect(&partition.url()).await.unwrap();
    let b = Gateway::start("b", RedisCacheStore::new(b_redis)).await;
    subscribed(&mut redis, "tollgate", 2, DELIVERY).await;

    assert_eq!(a.get("/items/6").await.cache, "MISS");
    stored(&mut redis, "tollgate", 1).await;
    assert_eq!(b.get("/items/6").await.cache, "HIT");
    delete_entries(&mut redis, "tollgate").await;

    // B's connections go silent without being reset; A's purge never reaches B.
    partition.freeze();
    a.purge.purge_resource("/items/6");
    let from_memory = b.get("/items/6").await;
    assert_eq!((&*from_memory.cache, &*from_memory.body), ("HIT", "a 6 #1"));

    // A PING every 5 s, answered within 1 s, or B subscribes again and empties its memory.
    let frozen = Instant::now();
    eventually(
        Duration::from_secs(10),
        "B noticing its dead subscription",
        || async { b.get("/items/6").await.cache == "MISS" },
    )
    .await;
    eprintln!("B noticed after {:?}", frozen.elapsed());
    assert_eq!(b.upstream_calls(), 1);
    // A, B's silent subscription (Redis still holds it) and B's new one.
    subscribed(&mut redis, "tollgate", 3, DELIVERY).await;

    // Purges reach B again.
    assert_eq!(b.get("/items/6").await.body, "b 6 #1");
    a.purge.purge_resource("/items/6");
    eventually(DELIVERY, "B going upstream after A's purge", || async {
        b.get("/items/6").await.cache == "MISS"
    })
    .await;
    assert_eq!(b.upstream_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_answers_its_pings_is_kept() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut redis = inspect(&server).await;
    let (a, b) = two_instances(&server, &mut redis).await;
    assert_eq!(a.get("/items/8").await.cache, "MISS");
    stored(&mut redis, "tollgate", 1).await;
    assert_eq!(b.get("/items/8").await.cache, "HIT");
    delete_entries(&mut redis, "tollgate").await;

    // Past the first PING: memory was not emptied, so B did not subscribe again.
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    let kept = b.get("/items/8").await;
    assert_eq!((&*kept.cache, &*kept.body), ("HIT", "a 8 #1"));
    a.purge.purge_resource("/items/8");
    eventually(DELIVERY, "B going upstream after A's purge", || async {
        b.get("/items/8").await.cache == "MISS"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_fetched_before_another_instances_purge_is_not_stored_after_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut redis = inspect(&server).await;
    let a = RedisCacheStore::new(connect(&server).await);
    let b = RedisCacheStore::new(connect(&server).await);
    subscribed(&mut redis, "tollgate", 2, DELIVERY).await;

    let fetched = SystemTime::now();
    let response = |body: &'static str| {
        Arc::new(CachedResponse {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
            vary: Box::from([]),
            resource: "/items/7".into(),
            tags: Box::from([]),
            stored_at: fetched,
            initial_age: Duration::ZERO,
            fresh_until: fetched + Duration::from_secs(60),
            stale_while_revalidate_until: fetched,
            stale_if_error_until: fetched,
        })
    };
    let in_memory = |store: &RedisCacheStore, key: &CacheKey| {
        matches!(store.memory().get(key), Lookup::Ready(Some(_)))
    };
    let (seen, late) = (CacheKey::from_bytes(b"seen"), CacheKey::from_bytes(b"late"));
    b.put(seen.clone(), response("seen"));
    assert!(in_memory(&b, &seen));
    stored(&mut redis, "tollgate", 1).await;

    a.purge(&Purge::resource("/items/7"));
    eventually(DELIVERY, "B receiving A's purge", || async {
        !in_memory(&b, &seen)
    })
    .await;
    // The upstream answered before the purge; the layer stores it only now.
    b.put(late.clone(), response("late"));
    assert!(!in_memory(&b, &late));
    stored(&mut redis, "tollgate", 0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(entries(&mut redis, "tollgate").await, Vec::<String>::new());
}
