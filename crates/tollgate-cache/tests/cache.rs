//! The cache layer as a client sees it: a real server on loopback TCP, a real HTTP client,
//! upstreams that count the requests reaching them, an injected clock for everything that
//! depends on time, and real concurrency for everything that claims to survive it.

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::{from_fn, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use support::{
    clock, get_request, open, respond, serve, serve_hyper, subject_of, upstream, verified, Calls,
    Client, Reply,
};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::timeout;
use tollgate_cache::{CacheLayer, CachePolicy, ClientRefresh, QueryKey, Sharing};
use tower::{ServiceBuilder, ServiceExt};

const FORBIDDEN: &str = "urn:tollgate:problem:forbidden";
const MIB: usize = 1024 * 1024;

/// Asserts a 200 with `x-cache-status: cache_status` and `body`.
#[track_caller]
fn assert_served(reply: &Reply, cache_status: &str, body: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("x-cache-status"), cache_status, "{reply:?}");
    assert_eq!(reply.text(), body, "{reply:?}");
}

/// The `x-cache-status` of a GET of each path, in order.
async fn cache_statuses(
    client: &Client,
    addr: std::net::SocketAddr,
    paths: &[&str],
) -> Vec<String> {
    let mut statuses = Vec::with_capacity(paths.len());
    for path in paths {
        let reply = client.get(addr, path, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
        statuses.push(reply.header("x-cache-status").to_owned());
    }
    statuses
}

/// An upstream answering `v<call index>` with the response headers `headers`.
fn versions(
    calls: &Calls,
    headers: &'static [(&'static str, &'static str)],
) -> axum::routing::MethodRouter {
    upstream(calls, move |n, _| respond(200, headers, format!("v{n}")))
}

/// An upstream answering with the path and query it was asked for and the call index.
fn echo_uri(calls: &Calls) -> axum::routing::MethodRouter {
    upstream(calls, |n, request| {
        respond(200, &[], format!("{} #{n}", request.uri()))
    })
}

#[tokio::test]
async fn a_second_request_is_a_hit_with_the_same_body_and_an_age() {
    let clock = clock();
    let calls = Calls::default();
    let cache = CacheLayer::builder().clock(clock.clone()).build().unwrap();
    let app = Router::new()
        .route(
            "/items",
            upstream(&calls, |n, _| {
                respond(
                    200,
                    &[("content-type", "text/plain")],
                    format!("items #{n}"),
                )
            }),
        )
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    let first = client.get(addr, "/items", &[]).await;
    assert_served(&first, "MISS", "items #0");
    clock.advance(Duration::from_secs(7));
    let second = client.get(addr, "/items", &[]).await;

    assert_served(&second, "HIT", "items #0");
    assert_eq!(second.header("age"), "7");
    assert_eq!(second.header("content-type"), "text/plain");
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn a_response_is_fresh_for_the_route_ttl_and_a_miss_from_then_on() {
    let clock = clock();
    let calls = Calls::default();
    let cache = CacheLayer::builder()
        .clock(clock.clone())
        .route(
            "GET /items",
            CachePolicy::new().ttl(Duration::from_secs(30)),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/items", versions(&calls, &[]))
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    assert_served(&client.get(addr, "/items", &[]).await, "MISS", "v0");
    clock.advance(Duration::from_secs(29));
    let fresh = client.get(addr, "/items", &[]).await;
    assert_served(&fresh, "HIT", "v0");
    assert_eq!(fresh.header("age"), "29");

    // RFC 9111 §4.2: fresh while the lifetime exceeds the age, so at 30 s it is stale.
    clock.advance(Duration::from_secs(1));
    assert_served(&client.get(addr, "/items", &[]).await, "MISS", "v1");
    let refilled = client.get(addr, "/items", &[]).await;
    assert_served(&refilled, "HIT", "v1");
    assert_eq!(refilled.header("age"), "0");
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn the_responses_max_age_beats_the_route_ttl() {
    let clock = clock();
    let calls = Calls::default();
    let cache = CacheLayer::builder()
        .clock(clock.clone())
        .route(
            "GET /items",
            CachePolicy::new().ttl(Duration::from_secs(30)),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/items",
            versions(&calls, &[("cache-control", "max-age=120")]),
        )
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    assert_served(&client.get(addr, "/items", &[]).await, "MISS", "v0");
    clock.advance(Duration::from_secs(119));
    let past_the_ttl = client.get(addr, "/items", &[]).await;
    assert_served(&past_the_ttl, "HIT", "v0");
    assert_eq!(past_the_ttl.header("age"), "119");
    clock.advance(Duration::from_secs(1));
    assert_served(&client.get(addr, "/items", &[]).await, "MISS", "v1");
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn max_ttl_caps_a_longer_max_age() {
    let clock = clock();
    let calls = Calls::default();
    let cache = CacheLayer::builder()
        .clock(clock.clone())
        .route(
            "GET /items",
            CachePolicy::new().max_ttl(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/items",
            versions(&calls, &[("cache-control", "max-age=3600")]),
        )
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    assert_served(&client.get(addr, "/items", &[]).await, "MISS", "v0");
    clock.advance(Duration::from_secs(59));
    assert_served(&client.get(addr, "/items", &[]).await, "HIT", "v0");
    clock.advance(Duration::from_secs(1));
    assert_served(&client.get(addr, "/items", &[]).await, "MISS", "v1");
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn vary_keeps_one_variant_per_value_of_the_named_request_header() {
    let calls = Calls::default();
    let cache = CacheLayer::builder().build().unwrap();
    let app = Router::new()
        .route(
            "/greeting",
            upstream(&calls, |n, request| {
                let language = request
                    .headers()
                    .get("accept-language")
                    .map_or("none", |v| v.to_str().unwrap());
                respond(
                    200,
                    &[("vary", "Accept-Language")],
                    format!("hello {language} #{n}"),
                )
            }),
        )
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];

    assert_served(
        &client.get(addr, "/greeting", &en).await,
        "MISS",
        "hello en #0",
    );
    assert_served(
        &client.get(addr, "/greeting", &fr).await,
        "MISS",
        "hello fr #1",
    );
    assert_served(
        &client.get(addr, "/greeting", &en).await,
        "HIT",
        "hello en #0",
    );
    assert_served(
        &client.get(addr, "/greeting", &fr).await,
        "HIT",
        "hello fr #1",
    );
    assert_served(
        &client.get(addr, "/greeting", &[]).await,
        "MISS",
        "hello none #2",
    );
    assert_served(
        &client.get(addr, "/greeting", &[]).await,
        "HIT",
        "hello none #2",
    );
    assert_eq!(calls.count(), 3);
}

#[tokio::test]
async fn responses_a_shared_cache_must_not_store_go_upstream_every_time() {
    let calls = Calls::default();
    let cache = CacheLayer::builder().build().unwrap();
    let app = Router::new()
        .route("/vary-star", versions(&calls, &[("vary", "*")]))
        .route(
            "/no-store",
            versions(&calls, &[("cache-control", "no-store")]),
        )
        .route(
            "/private",
            versions(&calls, &[("cache-control", "private, max-age=60")]),
        )
        .route(
            "/cookie",
            versions(&calls, &[("set-cookie", "session=secret; HttpOnly")]),
        )
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    let mut expected_calls = 0;
    for path in ["/vary-star", "/no-store", "/private", "/cookie"] {
        for _ in 0..2 {
            let reply = client.get(addr, path, &[]).await;
            assert_served(&reply, "MISS", &format!("v{expected_calls}"));
            expected_calls += 1;
        }
    }
    assert_eq!(calls.count(), expected_calls);
}

#[tokio::test]
async fn set_cookie_responses_are_stored_where_the_route_opts_in() {
    let calls = Calls::default();
    let cache = CacheLayer::builder()
        .route("GET /cookie", CachePolicy::new().store_set_cookie(true))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/cookie", versions(&calls, &[("set-cookie", "theme=dark")]))
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    assert_served(&client.get(addr, "/cookie", &[]).await, "MISS", "v0");
    let hit = client.get(addr, "/cookie", &[]).await;
    assert_served(&hit, "HIT", "v0");
    assert_eq!(hit.header("set-cookie"), "theme=dark");
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn callers_with_different_credentials_never_receive_each_others_response() {
    let calls = Calls::default();
    let cache = CacheLayer::builder().build().unwrap();
    let app = Router::new()
        .route(
            "/me",
            upstream(&calls, |n, request| {
                let header = |name: &str| request.headers().get(name).map(|v| v.to_str().unwrap());
                let who = header("authorization")
                    .or(header("x-api-key"))
                    .unwrap_or("anonymous");
                respond(200, &[], format!("{who} #{n}"))
            }),
        )
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    assert_served(
        &client.bearer(addr, "/me", "alice").await,
        "MISS",
        "Bearer alice #0",
    );
    assert_served(
        &client.bearer(addr, "/me", "bob").await,
        "MISS",
        "Bearer bob #1",
    );
    assert_served(
        &client.with_key(addr, "/me", "key-1").await,
        "MISS",
        "key-1 #2",
    );
    assert_served(
        &client.with_key(addr, "/me", "key-2").await,
        "MISS",
        "key-2 #3",
    );
    assert_served(&client.get(addr, "/me", &[]).await, "MISS", "anonymous #4");

    assert_served(
        &client.bearer(addr, "/me", "alice").await,
        "HIT",
        "Bearer alice #0",
    );
    assert_served(
        &client.bearer(addr, "/me", "bob").await,
        "HIT",
        "Bearer bob #1",
    );
    assert_served(
        &client.with_key(addr, "/me", "key-1").await,
        "HIT",
        "key-1 #2",
    );
    assert_served(
        &client.with_key(addr, "/me", "key-2").await,
        "HIT",
        "key-2 #3",
    );
    assert_served(&client.get(addr, "/me", &[]).await, "HIT", "anonymous #4");
    assert_eq!(calls.count(), 5);
}

#[tokio::test]
async fn verified_principals_are_keyed_by_subject() {
    let calls = Calls::default();
    let cache = CacheLayer::builder().build().unwrap();
    let app = verified(
        Router::new()
            .route(
                "/me",
                upstream(&calls, |n, request| {
                    respond(200, &[], format!("{} #{n}", subject_of(request)))
                }),
            )
            .layer(cache),
    );
    let (addr, client) = (serve(app).await, Client::new());
    let alice = [("x-user", "alice")];
    let bob = [("x-user", "bob")];

    assert_served(&client.get(addr, "/me", &alice).await, "MISS", "alice #0");
    assert_served(&client.get(addr, "/me", &bob).await, "MISS", "bob #1");
    assert_served(&client.get(addr, "/me", &alice).await, "HIT", "alice #0");
    assert_served(&client.get(addr, "/me", &bob).await, "HIT", "bob #1");
    // Keyed by who the authorizer verified, not by the token that proved it.
    let rotated = [("x-user", "alice"), ("authorization", "Bearer new-token")];
    assert_served(&client.get(addr, "/me", &rotated).await, "HIT", "alice #0");
    assert_served(&client.get(addr, "/me", &[]).await, "MISS", "anonymous #2");
    assert_eq!(calls.count(), 3);
}

#[tokio::test]
async fn private_responses_are_stored_per_principal_and_never_for_anonymous_callers() {
    let calls = Calls::default();
    let cache = CacheLayer::builder().build().unwrap();
    let app = verified(
        Router::new()
            .route(
                "/account",
                upstream(&calls, |n, request| {
                    let private = [("cache-control", "private, max-age=60")];
                    respond(200, &private, format!("{} #{n}", subject_of(request)))
                }),
            )
            .layer(cache),
    );
    let (addr, client) = (serve(app).await, Client::new());
    let alice = [("x-user", "alice")];
    let bob = [("x-user", "bob")];

    assert_served(
        &client.get(addr, "/account", &alice).await,
        "MISS",
        "alice #0",
    );
    assert_served(
        &client.get(addr, "/account", &alice).await,
        "HIT",
        "alice #0",
    );
    assert_served(&client.get(addr, "/account", &bob).await, "MISS", "bob #1");
    assert_served(&client.get(addr, "/account", &bob).await, "HIT", "bob #1");
    assert_served(
        &client.get(addr, "/account", &[]).await,
        "MISS",
        "anonymous #2",
    );
    assert_served(
        &client.get(addr, "/account", &[]).await,
        "MISS",
        "anonymous #3",
    );
    assert_eq!(calls.count(), 4);
}

#[tokio::test]
async fn a_shared_route_serves_the_first_callers_response_to_everyone() {
    let calls = Calls::default();
    let cache = CacheLayer::builder()
        .route("GET /catalog", CachePolicy::new().sharing(Sharing::Shared))
        .build()
        .unwrap();
    let app = verified(
        Router::new()
            .route(
                "/catalog",
                upstream(&calls, |n, request| {
                    respond(
                        200,
                        &[],
                        format!("catalog for {} #{n}", subject_of(request)),
                    )
                }),
            )
            .layer(cache),
    );
    let (addr, client) = (serve(app).await, Client::new());

    let alice = [("x-user", "alice"), ("authorization", "Bearer alice")];
    let bob = [("x-user", "bob"), ("authorization", "Bearer bob")];
    assert_served(
        &client.get(addr, "/catalog", &alice).await,
        "MISS",
        "catalog for alice #0",
    );
    assert_served(
        &client.get(addr, "/catalog", &bob).await,
        "HIT",
        "catalog for alice #0",
    );
    assert_served(
        &client.get(addr, "/catalog", &[]).await,
        "HIT",
        "catalog for alice #0",
    );
    assert_eq!(calls.count(), 1);
}

/// Counts the requests that reach `app` (before the cache), so an upstream can hold its
/// answer until every request is in.
fn counting_arrivals(app: Router, arrived: &Arc<Semaphore>) -> Router {
    let arrived = arrived.clone();
    app.layer(from_fn(move |request: Request, next: Next| {
        let arrived = arrived.clone();
        async move {
            arrived.add_permits(1);
            next.run(request).await
        }
    }))
}

/// Waits until `n` requests have arrived; panics after ten seconds.
async fn wait_for_arrivals(arrived: &Semaphore, n: usize) {
    let all = arrived.acquire_many(u32::try_from(n).unwrap());
    timeout(Duration::from_secs(10), all)
        .await
        .unwrap_or_else(|_| panic!("{n} requests did not all arrive"))
        .unwrap()
        .forget();
}

/// Sends every request in `requests` to `app` at once from its own task, in process, and
/// returns the replies in order; panics if they do not all finish within ten seconds.
async fn all_at_once(app: &Router, requests: Vec<Request>) -> Vec<Reply> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let app = app.clone();
            tokio::spawn(async move { Reply::of(app.oneshot(request).await.unwrap()).await })
        })
        .collect();
    let replies = async {
        let mut replies = Vec::with_capacity(tasks.len());
        for task in tasks {
            replies.push(task.await.unwrap());
        }
        replies
    };
    timeout(Duration::from_secs(10), replies)
        .await
        .expect("every request is answered; none hangs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_misses_on_one_key_send_one_upstream_request() {
    const CLIENTS: usize = 1_000;
    let calls = Calls::default();
    let arrived = Arc::new(Semaphore::new(0));
    let handler = {
        let (calls, arrived) = (calls.clone(), arrived.clone());
        get(move || {
            let (calls, arrived) = (calls.clone(), arrived.clone());
            async move {
                let n = calls.next();
                if n == 0 {
                    wait_for_arrivals(&arrived, CLIENTS).await;
                }
                format!("hot #{n}")
            }
        })
    };
    // Waiters must not give up on the leader while a slow machine spawns the rest.
    let cache = CacheLayer::builder()
        .wait_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let app = counting_arrivals(Router::new().route("/hot", handler).layer(cache), &arrived);

    let requests = (0..CLIENTS).map(|_| get_request("/hot", &[])).collect();
    let replies = all_at_once(&app, requests).await;

    assert_eq!(
        calls.count(),
        1,
        "one upstream request for {CLIENTS} misses"
    );
    let mut misses = 0;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.text(), "hot #0", "{reply:?}");
        match reply.header("x-cache-status") {
            "MISS" => misses += 1,
            "HIT" => {}
            other => panic!("unexpected x-cache-status {other}"),
        }
    }
    assert_eq!(misses, 1, "only the request that went upstream is a miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_leaders_response_is_not_stored_the_waiters_go_upstream_themselves() {
    const CLIENTS: usize = 100;
    let calls = Calls::default();
    let arrived = Arc::new(Semaphore::new(0));
    let handler = {
        let (calls, arrived) = (calls.clone(), arrived.clone());
        get(move || {
            let (calls, arrived) = (calls.clone(), arrived.clone());
            async move {
                let n = calls.next();
                if n == 0 {
                    wait_for_arrivals(&arrived, CLIENTS).await;
                    return respond(500, &[], "the leader failed");
                }
                respond(200, &[("cache-control", "max-age=60")], format!("ok #{n}"))
            }
        })
    };
    // A waiter left waiting would hang the test rather than go upstream after a timeout.
    let cache = CacheLayer::builder()
        .wait_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let app = counting_arrivals(
        Router::new().route("/flaky", handler).layer(cache),
        &arrived,
    );

    let requests = (0..CLIENTS).map(|_| get_request("/flaky", &[])).collect();
    let replies = all_at_once(&app, requests).await;

    let failed: Vec<_> = replies
        .iter()
        .filter(|reply| reply.status != StatusCode::OK)
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "only the leader sees its own 500: {failed:?}"
    );
    assert_eq!(failed[0].status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed[0].header("x-cache-status"), "MISS");
    // Released waiters went upstream (MISS); a request whose lookup came after one of them
    // stored its response was served that (HIT). None waited for the 500, none got it.
    let mut upstream_misses = 0;
    for reply in replies
        .iter()
        .filter(|reply| reply.status == StatusCode::OK)
    {
        assert!(reply.text().starts_with("ok #"), "{reply:?}");
        match reply.header("x-cache-status") {
            "MISS" => upstream_misses += 1,
            "HIT" => {}
            other => panic!("unexpected x-cache-status {other}"),
        }
    }
    assert!(upstream_misses >= 1, "the waiters went upstream themselves");
    assert_eq!(calls.count(), 1 + upstream_misses);

    let after = Reply::of(
        app.clone()
            .oneshot(get_request("/flaky", &[]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(after.header("x-cache-status"), "HIT", "{after:?}");
    assert_eq!(calls.count(), 1 + upstream_misses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_with_other_vary_values_than_the_leader_get_their_own_response() {
    const PER_LANGUAGE: usize = 50;
    let calls = Calls::default();
    let by_language: Arc<[AtomicUsize; 2]> = Arc::default();
    let arrived = Arc::new(Semaphore::new(0));
    let handler = {
        let (calls, by_language, arrived) = (calls.clone(), by_language.clone(), arrived.clone());
        get(move |request: Request| {
            let (calls, by_language, arrived) =
                (calls.clone(), by_language.clone(), arrived.clone());
            async move {
                let language = request.headers()["accept-language"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                by_language[usize::from(language == "fr")].fetch_add(1, Ordering::SeqCst);
                if calls.next() == 0 {
                    wait_for_arrivals(&arrived, 2 * PER_LANGUAGE).await;
                }
                respond(
                    200,
                    &[("vary", "accept-language")],
                    format!("hello {language}"),
                )
            }
        })
    };
    let cache = CacheLayer::builder()
        .wait_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let app = counting_arrivals(
        Router::new().route("/greeting", handler).layer(cache),
        &arrived,
    );

    let languages: Vec<&str> = (0..2 * PER_LANGUAGE)
        .map(|i| if i % 2 == 0 { "en" } else { "fr" })
        .collect();
    let requests = languages
        .iter()
        .map(|language| get_request("/greeting", &[("accept-language", language)]))
        .collect();
    let replies = all_at_once(&app, requests).await;

    for (reply, language) in replies.iter().zip(&languages) {
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.text(), format!("hello {language}"), "{reply:?}");
    }
    let mut upstream_by_language = by_language.each_ref().map(|n| n.load(Ordering::SeqCst));
    upstream_by_language.sort_unstable();
    assert_eq!(
        upstream_by_language[0], 1,
        "the leader's language is served from the leader's one upstream request"
    );
    assert!(upstream_by_language[1] >= 1 && upstream_by_language[1] <= PER_LANGUAGE);
    for language in ["en", "fr"] {
        let request = get_request("/greeting", &[("accept-language", language)]);
        let reply = Reply::of(app.clone().oneshot(request).await.unwrap()).await;
        assert_served(&reply, "HIT", &format!("hello {language}"));
    }
}

const CHUNK: usize = 64 * 1024;

/// A response body of unknown length that a producer task feeds one chunk at a time, counting
/// the bytes it has handed out.
struct ChannelBody {
    chunks: mpsc::Receiver<Bytes>,
    yielded: Arc<AtomicUsize>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        this.chunks.poll_recv(cx).map(|chunk| {
            chunk.map(|chunk| {
                this.yielded.fetch_add(chunk.len(), Ordering::SeqCst);
                Ok(Frame::data(chunk))
            })
        })
    }
}

/// Chunk `i` of a large body: `CHUNK` bytes of `i`, so any loss or reordering shows.
fn chunk(i: usize) -> Bytes {
    Bytes::from(vec![i as u8; CHUNK])
}

/// Asserts `body` is the `len` bytes the chunks make.
#[track_caller]
fn assert_chunks(body: &[u8], len: usize) {
    assert_eq!(body.len(), len);
    for (i, chunk) in body.chunks(CHUNK).enumerate() {
        assert!(chunk.iter().all(|&b| b == i as u8), "chunk {i} is damaged");
    }
}

/// A body of `len` bytes produced lazily; with a `hold`, production stops after `hold.0`
/// bytes until `hold.1` is notified.
fn lazy_body(len: usize, hold: Option<(usize, Arc<Notify>)>, yielded: Arc<AtomicUsize>) -> Body {
    let (sender, chunks) = mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..len / CHUNK {
            if let Some((at, release)) = &hold {
                if i * CHUNK == *at {
                    release.notified().await;
                }
            }
            if sender.send(chunk(i)).await.is_err() {
                return;
            }
        }
    });
    Body::new(ChannelBody { chunks, yielded })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_entry_limit_streams_through_without_being_held_or_stored() {
    const LEN: usize = 5 * MIB;
    let calls = Calls::default();
    let yielded = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let handler = {
        let (calls, yielded, release) = (calls.clone(), yielded.clone(), release.clone());
        get(move || {
            // The first response is held at 1 MiB and one chunk: the most the layer may read
            // before it must pass the response on.
            let hold = (calls.next() == 0).then(|| (MIB + CHUNK, release.clone()));
            let body = lazy_body(LEN, hold, yielded.clone());
            async move { Response::new(body) }
        })
    };
    let cache = CacheLayer::builder().build().unwrap();
    let app = Router::new().route("/large", handler).layer(cache.clone());
    let (addr, client) = (serve(app).await, Client::new());

    let response = timeout(Duration::from_secs(10), open(addr, "/large"))
        .await
        .expect("the head arrives while the upstream is held at 1 MiB + one chunk");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-cache-status"], "MISS");
    assert!(!response.headers().contains_key("content-length"));
    let mut body = response.into_body();
    let first = timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first bytes arrive while the upstream is held at 1 MiB + one chunk")
        .expect("a frame")
        .unwrap()
        .into_data()
        .unwrap();
    let produced = yielded.load(Ordering::SeqCst);
    assert!(
        produced <= MIB + CHUNK,
        "the upstream had produced {produced} bytes when the client got its first"
    );
    release.notify_one();
    let rest = timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the rest of the body arrives")
        .unwrap()
        .to_bytes();
    let mut received = first.to_vec();
    received.extend_from_slice(&rest);
    assert_chunks(&received, LEN);

    let again = client.get(addr, "/large", &[]).await;
    assert_eq!(again.header("x-cache-status"), "MISS");
    assert_chunks(&again.body, LEN);
    assert_eq!(calls.count(), 2);
    assert_eq!(cache.store().bytes(), 0);
}

#[tokio::test]
async fn a_response_declaring_a_length_over_the_entry_limit_is_not_stored() {
    const LEN: usize = 2 * MIB;
    let calls = Calls::default();
    let body: Bytes = (0..LEN / CHUNK).flat_map(|i| chunk(i).to_vec()).collect();
    let cache = CacheLayer::builder().build().unwrap();
    let app = Router::new()
        .route(
            "/large",
            upstream(&calls, move |_, _| {
                let length = LEN.to_string();
                respond(200, &[("content-length", length.as_str())], body.clone())
            }),
        )
        .route("/small", versions(&calls, &[]))
        .layer(cache.clone());
    let (addr, client) = (serve(app).await, Client::new());

    for _ in 0..2 {
        let reply = client.get(addr, "/large", &[]).await;
        assert_eq!(reply.header("x-cache-status"), "MISS");
        assert_eq!(reply.header("content-length"), LEN.to_string());
        assert_chunks(&reply.body, LEN);
    }
    assert_eq!(calls.count(), 2);
    assert_eq!(cache.store().bytes(), 0);

    // The store does count what it holds.
    assert_served(&client.get(addr, "/small", &[]).await, "MISS", "v2");
    assert!(cache.store().bytes() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_while_revalidate_serves_stale_at_once_and_refreshes_once_in_the_background() {
    const STALE_CLIENTS: usize = 20;
    let clock = clock();
    let calls = Calls::default();
    let release = Arc::new(Semaphore::new(0));
    let handler = {
        let (calls, release) = (calls.clone(), release.clone());
        get(move || {
            let (calls, release) = (calls.clone(), release.clone());
            async move {
                let n = calls.next();
                if n > 0 {
                    // The refresh waits until the test has seen every stale response.
                    timeout(Duration::from_secs(10), release.acquire())
                        .await
                        .expect("the test releases the refresh")
                        .unwrap()
                        .forget();
                }
                let cache_control = [("cache-control", "max-age=10, stale-while-revalidate=30")];
                respond(200, &cache_control, format!("v{n}"))
            }
        })
    };
    let cache = CacheLayer::builder().clock(clock.clone()).build().unwrap();
    let app = Router::new().route("/prices", handler).layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    assert_served(&client.get(addr, "/prices", &[]).await, "MISS", "v0");
    clock.advance(Duration::from_secs(15));
    let stale: Vec<_> = (0..STALE_CLIENTS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get(addr, "/prices", &[]).await })
        })
        .collect();
    for reply in stale {
        let reply = timeout(Duration::from_secs(10), reply)
            .await
            .expect("a stale response is served without waiting for the refresh")
            .unwrap();
        assert_served(&reply, "STALE", "v0");
        assert_eq!(reply.header("age"), "15");
    }
    calls.wait_for(2).await;

    release.add_permits(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = client.get(addr, "/prices", &[]).await;
        if reply.header("x-cache-status") == "HIT" {
            assert_served(&reply, "HIT", "v1");
            break;
        }
        assert_served(&reply, "STALE", "v0");
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh never landed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        calls.count(),
        2,
        "one background refresh for {STALE_CLIENTS} stale requests"
    );
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_response_when_the_upstream_fails() {
    let clock = clock();
    let (said, policy) = (Calls::default(), Calls::default());
    let failing_after_first = |calls: &Calls, cache_control: &'static str| {
        upstream(calls, move |n, _| match n {
            0 => respond(200, &[("cache-control", cache_control)], "v0"),
            _ => respond(503, &[], "down"),
        })
    };
    let cache = CacheLayer::builder()
        .clock(clock.clone())
        .route(
            "GET /policy",
            CachePolicy::new().stale_if_error(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/said",
            failing_after_first(&said, "max-age=10, stale-if-error=60"),
        )
        .route("/policy", failing_after_first(&policy, "max-age=10"))
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    for path in ["/said", "/policy"] {
        assert_served(&client.get(addr, path, &[]).await, "MISS", "v0");
    }
    clock.advance(Duration::from_secs(15));
    for path in ["/said", "/policy"] {
        let reply = client.get(addr, path, &[]).await;
        assert_served(&reply, "STALE", "v0");
        assert_eq!(reply.header("age"), "15");
    }
    assert_eq!(
        (said.count(), policy.count()),
        (2, 2),
        "each went upstream first"
    );

    // Past the stale-if-error window the failure passes through.
    clock.advance(Duration::from_secs(60));
    for path in ["/said", "/policy"] {
        let reply = client.get(addr, path, &[]).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert_eq!(reply.text(), "down");
    }
}

#[tokio::test]
async fn without_stale_if_error_an_upstream_failure_passes_through() {
    let clock = clock();
    let calls = Calls::default();
    let cache = CacheLayer::builder().clock(clock.clone()).build().unwrap();
    let app = Router::new()
        .route(
            "/prices",
            upstream(&calls, |n, _| match n {
                0 => respond(200, &[("cache-control", "max-age=10")], "v0"),
                _ => respond(503, &[], "down"),
            }),
        )
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    assert_served(&client.get(addr, "/prices", &[]).await, "MISS", "v0");
    clock.advance(Duration::from_secs(15));
    let reply = client.get(addr, "/prices", &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.header("x-cache-status"), "MISS");
    assert_eq!(reply.text(), "down");
    assert_eq!(calls.count(), 2);
}

const LAST_MODIFIED: &str = "Wed, 01 Mar 2028 12:00:00 GMT";
const DOCUMENT: &str = "the document";

/// A route answering [`DOCUMENT`] with an ETag and a Last-Modified.
fn document_app(calls: &Calls) -> Router {
    let headers = [
        ("etag", "\"v1\""),
        ("last-modified", LAST_MODIFIED),
        ("cache-control", "max-age=60"),
    ];
    let cache = CacheLayer::builder().build().unwrap();
    Router::new()
        .route(
            "/doc",
            upstream(calls, move |_, _| respond(200, &headers, DOCUMENT)),
        )
        .layer(cache)
}

#[tokio::test]
async fn if_none_match_on_the_stored_etag_is_answered_304_from_the_cache() {
    let calls = Calls::default();
    let (addr, client) = (serve(document_app(&calls)).await, Client::new());

    assert_served(&client.get(addr, "/doc", &[]).await, "MISS", DOCUMENT);
    let not_modified = client
        .get(addr, "/doc", &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(
        not_modified.status,
        StatusCode::NOT_MODIFIED,
        "{not_modified:?}"
    );
    assert_eq!(not_modified.header("x-cache-status"), "HIT");
    assert_eq!(not_modified.header("etag"), "\"v1\"");
    assert!(not_modified.body.is_empty());

    let changed = client
        .get(addr, "/doc", &[("if-none-match", "\"v0\"")])
        .await;
    assert_served(&changed, "HIT", DOCUMENT);
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn if_modified_since_not_before_last_modified_is_answered_304_from_the_cache() {
    let calls = Calls::default();
    let (addr, client) = (serve(document_app(&calls)).await, Client::new());

    assert_served(&client.get(addr, "/doc", &[]).await, "MISS", DOCUMENT);
    for since in [LAST_MODIFIED, "Thu, 02 Mar 2028 12:00:00 GMT"] {
        let reply = client
            .get(addr, "/doc", &[("if-modified-since", since)])
            .await;
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{since}: {reply:?}");
        assert_eq!(reply.header("x-cache-status"), "HIT");
        assert!(reply.body.is_empty());
    }
    let earlier = [("if-modified-since", "Tue, 28 Feb 2028 12:00:00 GMT")];
    assert_served(&client.get(addr, "/doc", &earlier).await, "HIT", DOCUMENT);
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn a_head_is_answered_from_the_get_entry() {
    let calls = Calls::default();
    let (addr, client) = (serve(document_app(&calls)).await, Client::new());

    assert_served(&client.get(addr, "/doc", &[]).await, "MISS", DOCUMENT);
    let head = client.send("HEAD", addr, "/doc", &[]).await;
    assert_eq!(head.status, StatusCode::OK, "{head:?}");
    assert_eq!(head.header("x-cache-status"), "HIT");
    assert_eq!(head.header("content-length"), DOCUMENT.len().to_string());
    assert_eq!(head.header("etag"), "\"v1\"");
    assert!(head.body.is_empty());
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn a_head_miss_fills_the_entry_a_get_is_then_served_from() {
    let calls = Calls::default();
    let (addr, client) = (serve(document_app(&calls)).await, Client::new());

    let head = client.send("HEAD", addr, "/doc", &[]).await;
    assert_eq!(head.status, StatusCode::OK, "{head:?}");
    assert_eq!(head.header("x-cache-status"), "MISS");
    assert_eq!(head.header("content-length"), DOCUMENT.len().to_string());
    assert!(head.body.is_empty());
    assert_served(&client.get(addr, "/doc", &[]).await, "HIT", DOCUMENT);
    assert_eq!(calls.count(), 1);
}

const NO_CACHE: [(&str, &str); 1] = [("cache-control", "no-cache")];
const MAX_AGE_0: [(&str, &str); 1] = [("cache-control", "max-age=0")];

/// `/prices` answering `v<call index>` under `policy`, behind the stand-in authorizer.
async fn prices_with(policy: CachePolicy, calls: &Calls) -> std::net::SocketAddr {
    let cache = CacheLayer::builder()
        .route("GET /prices", policy)
        .build()
        .unwrap();
    serve(verified(
        Router::new()
            .route("/prices", versions(calls, &[]))
            .layer(cache),
    ))
    .await
}

#[tokio::test]
async fn by_default_a_client_asking_for_a_fresh_response_gets_the_cached_one() {
    let calls = Calls::default();
    let (addr, client) = (prices_with(CachePolicy::new(), &calls).await, Client::new());

    assert_served(&client.get(addr, "/prices", &[]).await, "MISS", "v0");
    assert_served(&client.get(addr, "/prices", &NO_CACHE).await, "HIT", "v0");
    assert_served(&client.get(addr, "/prices", &MAX_AGE_0).await, "HIT", "v0");
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn an_allowed_client_refresh_goes_upstream_and_stores_the_new_response() {
    let calls = Calls::default();
    let policy = CachePolicy::new().client_refresh(ClientRefresh::Allow);
    let (addr, client) = (prices_with(policy, &calls).await, Client::new());

    assert_served(&client.get(addr, "/prices", &[]).await, "MISS", "v0");
    assert_served(
        &client.get(addr, "/prices", &NO_CACHE).await,
        "REFRESH",
        "v1",
    );
    assert_served(&client.get(addr, "/prices", &[]).await, "HIT", "v1");
    assert_served(
        &client.get(addr, "/prices", &MAX_AGE_0).await,
        "REFRESH",
        "v2",
    );
    assert_served(&client.get(addr, "/prices", &[]).await, "HIT", "v2");
    assert_eq!(calls.count(), 3);
}

#[tokio::test]
async fn a_client_refresh_needs_the_scope_the_route_requires() {
    let calls = Calls::default();
    let policy = CachePolicy::new()
        .sharing(Sharing::Shared)
        .client_refresh(ClientRefresh::RequireScope("cache:refresh".into()));
    let (addr, client) = (prices_with(policy, &calls).await, Client::new());
    let refresher = [
        ("x-user", "alice"),
        ("x-scopes", "prices:read cache:refresh"),
        ("cache-control", "no-cache"),
    ];
    let reader = [
        ("x-user", "bob"),
        ("x-scopes", "prices:read"),
        ("cache-control", "no-cache"),
    ];

    assert_served(&client.get(addr, "/prices", &[]).await, "MISS", "v0");
    assert_served(
        &client.get(addr, "/prices", &refresher).await,
        "REFRESH",
        "v1",
    );
    let refused = client.get(addr, "/prices", &reader).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    assert_eq!(refused.problem(), FORBIDDEN);
    assert!(refused
        .header("www-authenticate")
        .contains("insufficient_scope"));
    let anonymous = client.get(addr, "/prices", &MAX_AGE_0).await;
    assert_eq!(anonymous.status, StatusCode::FORBIDDEN, "{anonymous:?}");
    assert_eq!(anonymous.problem(), FORBIDDEN);

    assert_served(&client.get(addr, "/prices", &[]).await, "HIT", "v1");
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn a_route_that_denies_client_refresh_refuses_it_with_403() {
    let calls = Calls::default();
    let policy = CachePolicy::new().client_refresh(ClientRefresh::Deny);
    let (addr, client) = (prices_with(policy, &calls).await, Client::new());

    assert_served(&client.get(addr, "/prices", &[]).await, "MISS", "v0");
    for asks in [NO_CACHE, MAX_AGE_0] {
        let refused = client.get(addr, "/prices", &asks).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
        assert_eq!(refused.problem(), FORBIDDEN);
        assert_eq!(refused.header("x-cache-status"), "BYPASS");
    }
    assert_served(&client.get(addr, "/prices", &[]).await, "HIT", "v0");
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn purging_a_resource_drops_it_for_every_caller_and_nothing_else() {
    let calls = Calls::default();
    let cache = CacheLayer::builder().build().unwrap();
    let purge = cache.handle();
    let app = Router::new().route("/items", echo_uri(&calls)).layer(cache);
    let (addr, client) = (serve(app).await, Client::new());
    let alice = [("authorization", "Bearer alice")];

    assert_served(
        &client.get(addr, "/items?a=1&b=2", &[]).await,
        "MISS",
        "/items?a=1&b=2 #0",
    );
    assert_served(
        &client.get(addr, "/items?a=1&b=2", &alice).await,
        "MISS",
        "/items?a=1&b=2 #1",
    );
    assert_served(
        &client.get(addr, "/items?a=2", &[]).await,
        "MISS",
        "/items?a=2 #2",
    );

    purge.purge_resource("/items?b=2&a=1");

    assert_served(
        &client.get(addr, "/items?a=1&b=2", &[]).await,
        "MISS",
        "/items?a=1&b=2 #3",
    );
    assert_served(
        &client.get(addr, "/items?a=1&b=2", &alice).await,
        "MISS",
        "/items?a=1&b=2 #4",
    );
    assert_served(
        &client.get(addr, "/items?a=2", &[]).await,
        "HIT",
        "/items?a=2 #2",
    );
    assert_served(
        &client.get(addr, "/items?a=1&b=2", &[]).await,
        "HIT",
        "/items?a=1&b=2 #3",
    );
    assert_eq!(calls.count(), 5);
}

#[tokio::test]
async fn purging_a_prefix_drops_every_resource_under_it() {
    let calls = Calls::default();
    let cache = CacheLayer::builder().build().unwrap();
    let purge = cache.handle();
    let app = Router::new()
        .route("/items/{id}", echo_uri(&calls))
        .route("/itemsets", echo_uri(&calls))
        .route("/other", echo_uri(&calls))
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());
    let paths = ["/items/1", "/items/2?page=3", "/itemsets", "/other"];

    assert_eq!(cache_statuses(&client, addr, &paths).await, ["MISS"; 4]);
    assert_eq!(cache_statuses(&client, addr, &paths).await, ["HIT"; 4]);
    purge.purge_prefix("/items/");
    assert_eq!(
        cache_statuses(&client, addr, &paths).await,
        ["MISS", "MISS", "HIT", "HIT"]
    );
    assert_eq!(calls.count(), 6);
}

#[tokio::test]
async fn purging_a_tag_drops_the_responses_that_carried_it() {
    let calls = Calls::default();
    let cache = CacheLayer::builder().build().unwrap();
    let purge = cache.handle();
    let app = Router::new()
        .route("/a", versions(&calls, &[("cache-tag", "t1, t2")]))
        .route("/b", versions(&calls, &[("cache-tag", "t2")]))
        .route("/c", versions(&calls, &[]))
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());
    let paths = ["/a", "/b", "/c"];

    assert_eq!(cache_statuses(&client, addr, &paths).await, ["MISS"; 3]);
    purge.purge_tag("t1");
    assert_eq!(
        cache_statuses(&client, addr, &paths).await,
        ["MISS", "HIT", "HIT"]
    );
    purge.purge_tag("t2");
    assert_eq!(
        cache_statuses(&client, addr, &paths).await,
        ["MISS", "MISS", "HIT"]
    );
    assert_eq!(calls.count(), 6);
}

#[tokio::test]
async fn purging_everything_empties_the_cache() {
    let calls = Calls::default();
    let cache = CacheLayer::builder().build().unwrap();
    let purge = cache.handle();
    let app = Router::new()
        .route("/a", versions(&calls, &[]))
        .route("/b", versions(&calls, &[]))
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());
    let alice = [("authorization", "Bearer alice")];

    assert_eq!(
        cache_statuses(&client, addr, &["/a", "/b"]).await,
        ["MISS"; 2]
    );
    assert_served(&client.get(addr, "/a", &alice).await, "MISS", "v2");
    purge.purge_all();
    assert_eq!(
        cache_statuses(&client, addr, &["/a", "/b"]).await,
        ["MISS"; 2]
    );
    assert_served(&client.get(addr, "/a", &alice).await, "MISS", "v5");
    assert_eq!(
        cache_statuses(&client, addr, &["/a", "/b"]).await,
        ["HIT"; 2]
    );
    assert_eq!(calls.count(), 6);
}

#[tokio::test]
async fn other_methods_pass_through_untouched_and_are_never_cached() {
    let (reads, writes) = (Calls::default(), Calls::default());
    let cache = CacheLayer::builder().build().unwrap();
    let post = {
        let writes = writes.clone();
        move || {
            let created = format!("created #{}", writes.next());
            async move { respond(201, &[("cache-control", "max-age=60")], created) }
        }
    };
    let app = Router::new()
        .route("/items", versions(&reads, &[]).post(post))
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    for n in 0..2 {
        let reply = client.send("POST", addr, "/items", &[]).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        assert_eq!(reply.text(), format!("created #{n}"));
        assert!(!reply.headers.contains_key("x-cache-status"), "{reply:?}");
    }
    assert_served(&client.get(addr, "/items", &[]).await, "MISS", "v0");
    assert_eq!((reads.count(), writes.count()), (1, 2));
}

#[tokio::test]
async fn a_disabled_route_bypasses_the_cache() {
    let calls = Calls::default();
    let cache = CacheLayer::builder()
        .route("GET /live", CachePolicy::disabled())
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/live",
            versions(&calls, &[("cache-control", "max-age=60")]),
        )
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    assert_served(&client.get(addr, "/live", &[]).await, "BYPASS", "v0");
    assert_served(&client.get(addr, "/live", &[]).await, "BYPASS", "v1");
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn a_request_saying_no_store_bypasses_the_cache_and_leaves_the_entry() {
    let calls = Calls::default();
    let cache = CacheLayer::builder().build().unwrap();
    let app = Router::new()
        .route("/items", versions(&calls, &[]))
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());
    let no_store = [("cache-control", "no-store")];

    assert_served(&client.get(addr, "/items", &[]).await, "MISS", "v0");
    assert_served(&client.get(addr, "/items", &no_store).await, "BYPASS", "v1");
    assert_served(&client.get(addr, "/items", &[]).await, "HIT", "v0");
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn a_successful_write_invalidates_its_path_and_its_location_for_every_caller() {
    let clock = clock();
    let (reads, writes) = (Calls::default(), Calls::default());
    let cache = CacheLayer::builder().clock(clock.clone()).build().unwrap();
    let post = {
        let writes = writes.clone();
        move |headers: http::HeaderMap| {
            writes.next();
            let failed = headers.contains_key("x-fail");
            async move {
                if failed {
                    respond(400, &[], "refused")
                } else {
                    respond(201, &[("location", "/items/7")], "created")
                }
            }
        }
    };
    let app = Router::new()
        .route("/items", echo_uri(&reads).post(post))
        .route("/items/{id}", echo_uri(&reads))
        .layer(cache);
    let (addr, client) = (serve(app).await, Client::new());
    let alice = [("authorization", "Bearer alice")];
    let read_all = |expected: [&'static str; 3]| {
        let client = client.clone();
        async move {
            let replies = [
                client.get(addr, "/items?page=1", &[]).await,
                client.get(addr, "/items?page=1", &alice).await,
                client.get(addr, "/items/7", &[]).await,
            ];
            for (reply, expected) in replies.iter().zip(expected) {
                assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
                assert_eq!(reply.header("x-cache-status"), expected, "{reply:?}");
            }
        }
    };

    read_all(["MISS"; 3]).await;
    read_all(["HIT"; 3]).await;
    let failed = client
        .send("POST", addr, "/items", &[("x-fail", "1")])
        .await;
    assert_eq!(failed.status, StatusCode::BAD_REQUEST);
    read_all(["HIT"; 3]).await;

    clock.advance(Duration::from_secs(1));
    let created = client.send("POST", addr, "/items", &[]).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert!(!created.headers.contains_key("x-cache-status"));
    clock.advance(Duration::from_secs(1));
    read_all(["MISS"; 3]).await;
    read_all(["HIT"; 3]).await;
    assert_eq!((reads.count(), writes.count()), (6, 2));
}

#[tokio::test]
async fn the_layer_caches_a_plain_hyper_service() {
    let calls = Calls::default();
    let counted = calls.clone();
    let service = ServiceBuilder::new()
        .layer(CacheLayer::builder().build().unwrap())
        .service(tower::service_fn(move |_: http::Request<Incoming>| {
            let body = Full::new(Bytes::from(format!("plain #{}", counted.next())));
            async move { Ok::<_, Infallible>(http::Response::new(body)) }
        }));
    let (addr, client) = (serve_hyper(service).await, Client::new());

    assert_served(
        &client.get(addr, "/anything", &[]).await,
        "MISS",
        "plain #0",
    );
    let hit = client.get(addr, "/anything", &[]).await;
    assert_served(&hit, "HIT", "plain #0");
    assert_eq!(hit.header("age"), "0");
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn query_parameter_order_does_not_split_the_cache() {
    let calls = Calls::default();
    let cache = CacheLayer::builder().build().unwrap();
    let app = Router::new().route("/items", echo_uri(&calls)).layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    assert_served(
        &client.get(addr, "/items?b=2&a=1", &[]).await,
        "MISS",
        "/items?b=2&a=1 #0",
    );
    assert_served(
        &client.get(addr, "/items?a=1&b=2", &[]).await,
        "HIT",
        "/items?b=2&a=1 #0",
    );
    assert_served(
        &client.get(addr, "/items?a=1&b=3", &[]).await,
        "MISS",
        "/items?a=1&b=3 #1",
    );
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn only_the_chosen_query_parameters_split_the_cache() {
    let calls = Calls::default();
    let cache = CacheLayer::builder()
        .route(
            "GET /list",
            CachePolicy::new().query(QueryKey::Only(vec!["page".into()])),
        )
        .build()
        .unwrap();
    let app = Router::new().route("/list", echo_uri(&calls)).layer(cache);
    let (addr, client) = (serve(app).await, Client::new());

    let first = "/list?page=1&utm=mail #0";
    assert_served(
        &client.get(addr, "/list?page=1&utm=mail", &[]).await,
        "MISS",
        first,
    );
    assert_served(
        &client.get(addr, "/list?utm=ad&page=1", &[]).await,
        "HIT",
        first,
    );
    assert_served(&client.get(addr, "/list?page=1", &[]).await, "HIT", first);
    assert_served(
        &client.get(addr, "/list?page=2&utm=mail", &[]).await,
        "MISS",
        "/list?page=2&utm=mail #1",
    );
    assert_eq!(calls.count(), 2);
}

/// A layer in front of the cache that marks every request as the application's API key, the
/// way a usage plan without an authorizer does: a principal with a key id and no subject.
fn as_application(app: Router) -> Router {
    app.layer(from_fn(|mut request: Request, next: Next| async move {
        let principal = tollgate_core::Principal::builder()
            .build()
            .with_api_key("mobile-app", "pro");
        request.extensions_mut().insert(principal);
        next.run(request).await
    }))
}

#[tokio::test]
async fn users_behind_one_api_key_never_receive_each_others_private_responses() {
    let calls = Calls::default();
    let profile = upstream(&calls, |_, request| {
        let who = request.headers()["authorization"]
            .to_str()
            .unwrap()
            .to_owned();
        respond(
            200,
            &[("cache-control", "private, max-age=60")],
            format!("profile of {who}"),
        )
    });
    let app = Router::new()
        .route("/me", profile)
        .layer(CacheLayer::builder().build().unwrap());
    let (addr, client) = (serve(as_application(app)).await, Client::new());
    let alice = [("authorization", "Bearer alice")];
    let bob = [("authorization", "Bearer bob")];

    assert_served(
        &client.get(addr, "/me", &alice).await,
        "MISS",
        "profile of Bearer alice",
    );
    assert_served(
        &client.get(addr, "/me", &bob).await,
        "MISS",
        "profile of Bearer bob",
    );
    assert_served(
        &client.get(addr, "/me", &alice).await,
        "HIT",
        "profile of Bearer alice",
    );
    assert_served(
        &client.get(addr, "/me", &bob).await,
        "HIT",
        "profile of Bearer bob",
    );
    assert_eq!(calls.count(), 2);
}

/// `/items/7`: the first GET waits for `release` before answering `v0`; later GETs answer at
/// once with their call index; a PUT answers 204.
fn held_item(calls: &Calls, release: &Arc<Notify>) -> Router {
    let (calls, release) = (calls.clone(), release.clone());
    let read = get(move || {
        let (calls, release) = (calls.clone(), release.clone());
        async move {
            let n = calls.next();
            if n == 0 {
                release.notified().await;
            }
            respond(200, &[("cache-control", "max-age=300")], format!("v{n}"))
        }
    });
    Router::new().route("/items/7", read.put(|| async { StatusCode::NO_CONTENT }))
}

#[tokio::test]
async fn a_write_that_lands_while_a_read_is_upstream_invalidates_what_the_read_brings_back() {
    let (calls, release, clock) = (Calls::default(), Arc::new(Notify::new()), clock());
    let cache = CacheLayer::builder().clock(clock.clone()).build().unwrap();
    let addr = serve(held_item(&calls, &release).layer(cache)).await;
    let client = Client::new();

    let first = tokio::spawn({
        let client = client.clone();
        async move { client.get(addr, "/items/7", &[]).await }
    });
    calls.wait_for(1).await;
    clock.advance(Duration::from_secs(1));
    let write = client.send("PUT", addr, "/items/7", &[]).await;
    assert_eq!(write.status, StatusCode::NO_CONTENT);
    release.notify_one();
    assert_served(&first.await.unwrap(), "MISS", "v0");

    // v0 was read before the write: it must not be served after it.
    clock.advance(Duration::from_secs(1));
    assert_served(&client.get(addr, "/items/7", &[]).await, "MISS", "v1");
    clock.advance(Duration::from_secs(1));
    assert_served(&client.get(addr, "/items/7", &[]).await, "HIT", "v1");
}

#[tokio::test]
async fn a_purge_while_a_read_is_upstream_is_not_undone_by_its_response() {
    let (calls, release) = (Calls::default(), Arc::new(Notify::new()));
    let cache = CacheLayer::builder().build().unwrap();
    let purge = cache.handle();
    let addr = serve(held_item(&calls, &release).layer(cache)).await;
    let client = Client::new();

    let first = tokio::spawn({
        let client = client.clone();
        async move { client.get(addr, "/items/7", &[]).await }
    });
    calls.wait_for(1).await;
    purge.purge_resource("/items/7");
    release.notify_one();
    assert_served(&first.await.unwrap(), "MISS", "v0");

    assert_served(&client.get(addr, "/items/7", &[]).await, "MISS", "v1");
    assert_served(&client.get(addr, "/items/7", &[]).await, "HIT", "v1");
}

#[tokio::test]
async fn an_allowed_refresh_goes_upstream_even_while_an_older_request_is_in_flight() {
    let (calls, release) = (Calls::default(), Arc::new(Notify::new()));
    let cache = CacheLayer::builder()
        .policy(CachePolicy::new().client_refresh(ClientRefresh::Allow))
        .build()
        .unwrap();
    let addr = serve(held_item(&calls, &release).layer(cache)).await;
    let client = Client::new();

    let first = tokio::spawn({
        let client = client.clone();
        async move { client.get(addr, "/items/7", &[]).await }
    });
    calls.wait_for(1).await;
    let refreshed = client
        .get(addr, "/items/7", &[("cache-control", "no-cache")])
        .await;
    assert_served(&refreshed, "REFRESH", "v1");
    release.notify_one();
    assert_served(&first.await.unwrap(), "MISS", "v0");
}

#[tokio::test]
async fn a_head_whose_response_is_not_stored_keeps_the_get_bodys_length() {
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/report",
            upstream(&calls, |_, _| {
                respond(200, &[("cache-control", "no-store")], "hello world")
            }),
        )
        .layer(CacheLayer::builder().build().unwrap());
    let (addr, client) = (serve(app).await, Client::new());

    let head = client.send("HEAD", addr, "/report", &[]).await;
    assert_eq!(head.status, StatusCode::OK, "{head:?}");
    assert_eq!(head.header("content-length"), "11");
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn a_conditional_miss_fills_the_cache_and_is_answered_304_from_it() {
    let calls = Calls::default();
    // Like a real origin, it answers a matching If-None-Match with 304 and no body.
    let document = upstream(&calls, |_, request| {
        if request.headers().contains_key("if-none-match") {
            return respond(304, &[("etag", "\"v1\"")], "");
        }
        respond(
            200,
            &[("etag", "\"v1\""), ("cache-control", "max-age=60")],
            "the document",
        )
    });
    let app = Router::new()
        .route("/doc", document)
        .layer(CacheLayer::builder().build().unwrap());
    let (addr, client) = (serve(app).await, Client::new());

    let conditional = client
        .get(addr, "/doc", &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(
        conditional.status,
        StatusCode::NOT_MODIFIED,
        "{conditional:?}"
    );
    assert_eq!(conditional.header("x-cache-status"), "MISS");
    assert_served(&client.get(addr, "/doc", &[]).await, "HIT", "the document");
    assert_eq!(calls.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_the_upstream_fails_concurrent_stale_requests_send_it_one_request() {
    const CLIENTS: usize = 50;
    let (calls, clock) = (Calls::default(), clock());
    let arrived = Arc::new(Semaphore::new(0));
    let handler = {
        let (calls, arrived) = (calls.clone(), arrived.clone());
        get(move || {
            let (calls, arrived) = (calls.clone(), arrived.clone());
            async move {
                match calls.next() {
                    0 => respond(
                        200,
                        &[("cache-control", "max-age=10, stale-if-error=600")],
                        "v0",
                    ),
                    // The outage: the first request to see it holds until every stale request
                    // has reached the cache and joined its flight, then fails. Arrivals are
                    // counted just before the cache, so the last one gets a moment to join:
                    // one that looked only after the failure would rightly try again.
                    1 => {
                        wait_for_arrivals(&arrived, CLIENTS).await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        respond(503, &[], "down")
                    }
                    // A request that did go upstream again is refused at once, so the count
                    // below says so rather than the test hanging.
                    _ => respond(503, &[], "down"),
                }
            }
        })
    };
    let cache = CacheLayer::builder()
        .clock(clock.clone())
        .wait_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let app = Router::new().route("/status", handler).layer(cache);
    let first = Reply::of(
        app.clone()
            .oneshot(get_request("/status", &[]))
            .await
            .unwrap(),
    )
    .await;
    assert_served(&first, "MISS", "v0");
    clock.advance(Duration::from_secs(15));

    let app = counting_arrivals(app, &arrived);
    let requests = (0..CLIENTS).map(|_| get_request("/status", &[])).collect();
    let replies = all_at_once(&app, requests).await;

    for reply in &replies {
        assert_served(reply, "STALE", "v0");
    }
    assert_eq!(
        calls.count(),
        2,
        "one fill, then one request to the failing upstream"
    );
}
