//! Throttle checks, quota takes and whole usage-plan requests against Redis beside the same
//! calls in memory, measured in the same run, and the round trips each Redis call costs,
//! counted by Redis itself.
//!
//! Every case is measured the same way. One iteration is a batch of 256 calls spread over
//! 1 000 clients (client 0 onwards, taken in turn from one batch to the next), made by 32 (or
//! 64) tasks of 8 (or 4) calls in turn on a multi-threaded tokio runtime with one worker per
//! core; each answer is checked, and any other answer stops the bench. Criterion's throughput
//! line is calls per second. The timing loop runs on a runtime worker, as in
//! `aggregate/proxy`, after one pass over every client, so that each key is stored and the
//! connection is warm when timing starts.
//!
//! Group `redis/throttle`: one rule, `per-client`, of 1 000 000 requests per second with a
//! burst of 1000 per client IP (client n is 10.0.0.0 + n), so nothing the bench sends is ever
//! refused (the interval is 1 µs, which the Redis store counts exactly). A call is a check,
//! whose outcome must be `Allowed` (a response: 200).
//!
//! - `bare`: the bare service, one request per check: what the batch itself costs (tasks,
//!   requests), with no throttle.
//! - `memory_store`: `MemoryStore` (the layer's default store) through the same
//!   `ThrottleStore::check` call the layer makes.
//! - `memory_layer`: the whole `ThrottleLayer` with its in-memory store over the bare service,
//!   each request carrying its client's `PeerAddr` (the default `RateLimit` fields on every
//!   response).
//! - `memory_layer_two_rules`: the same with a second rule after `per-client`, `global`, of
//!   the same rate for all requests together (`Global`), with a burst of 100 000 000: the
//!   in-memory layer serves more than 1 000 000 requests per second on two cores, which would
//!   spend a burst of 1000 within the run; this one lasts over a minute of it.
//! - `redis_store_32_in_flight` and `redis_store_64_in_flight`: `RedisThrottleStore`'s
//!   `ThrottleStore::check`, awaited.
//! - `redis_layer_32_in_flight`: the whole `ThrottleLayer` built with `RedisThrottleStore` over
//!   the bare service, requests as in `memory_layer`.
//! - `redis_layer_two_rules_32_in_flight`: the two rules of `memory_layer_two_rules` built with
//!   `RedisThrottleStore`, which decides both in one `ThrottleStore::check_all` call.
//!
//! Group `redis/quota`: `QuotaStore::take` as the usage layer calls it, awaited: one unit of a
//! quota of `u32::MAX` per `QuotaPeriod::Day` (never exhausted) in the day's window, taken
//! when the case is made, from 1 000 keys (client n taking from key `kn`). A call is a take,
//! which must answer `Taken`.
//!
//! - `memory_store`: `MemoryQuotaStore`, keeping 90 days of usage as the usage layer's does.
//! - `redis_store_32_in_flight`: `RedisQuotaStore`.
//!
//! Group `redis/usage`: the whole usage layer (`UsagePlans::layer`) over the bare service with
//! one plan, `bench`: a throttle of 1 000 000 requests per second with a burst of 1000 per API
//! key and a quota of `u32::MAX` per `QuotaPeriod::Day`. 1 000 API keys are made with
//! `UsagePlans::create_key` before timing, one per client: client n sends key n in
//! `x-api-key`, so that, as in the other groups, no two requests of one key are in flight at
//! once (two at once on a loaded machine can see the in-memory throttle refuse the one whose
//! clock reading was delayed past the burst's 1 ms). A call is a request, whose response must
//! be 200. Both plans refuse with 503 when a store fails (`StoreFailure::Reject`), where by
//! default they would admit.
//!
//! - `memory_layer`: the plans built in memory (`build`).
//! - `redis_layer_32_in_flight`: the plans built with `RedisKeyStore`, `RedisQuotaStore` and
//!   `RedisThrottleStore` (`build_with`): each request is one `GET` of its key, then one
//!   `EVALSHA` for the plan throttle and one for the quota, in turn.
//!
//! The Redis stores use the defaults of `RedisConfig` (50 ms per call, the server's clock)
//! with the key prefix `bench`; all clone one `Redis`, so every call goes over one
//! multiplexed, reconnecting connection. The scripts are loaded before each Redis case (the
//! throttle's by `RedisThrottleStore::preload`; the quota's, which has no `preload`, by one
//! take of a key of the bench's own, before the statistics are reset). A call that fails (an
//! error, or no answer within the 50 ms) stops the bench: the breakers would otherwise answer
//! later calls without Redis and inflate the figure.
//!
//! The bench starts its own `redis-server` on a free loopback port with no persistence
//! (`--save "" --appendonly no`) and stops it at the end. Before each Redis case it resets
//! Redis's statistics (`CONFIG RESETSTAT`, over a connection of the bench's own); after it, it
//! reads `INFO commandstats`, `INFO errorstats` and `INFO stats` and prints the calls the case
//! made (the pass over every client before timing, warm-up and measurement) beside the round
//! trips Redis served for them, in all and by command, and what the case expects of each
//! call: one `EVALSHA` per check or take, and per usage request one `GET` and two `EVALSHA`.
//! Apart from those it prints the commands the scripts ran inside Redis, which are no round
//! trips (the throttle's `TIME`, and one `GET` and one `SET` per rule; the quota's `HMGET`,
//! `HSET`, `HINCRBY`, `PTTL` and `PEXPIRE` when it extends the key's life, and `HKEYS` and
//! `HDEL` on a key's first take of a day), any other command, any error and any new
//! connection. `GET` is also the key store's round trip: since the throttle script writes
//! every rule it allows with one `SET`, and here it allows all, the `GET`s beyond the `SET`s
//! are round trips. Without `redis-server` on the machine the Redis cases are skipped with a
//! line saying so (`apt-get install redis-server`, or `scripts/test`, which installs it), and
//! the in-memory cases still run.
//!
//! Group `redis/cache`: one lookup of a stored key (a 1 KiB response without `Vary`) through
//! `CacheStore::get`, as the cache layer makes it, one at a time.
//!
//! - `memory_store`: `MemoryStore`, the layer's default store.
//! - `redis_store_l1_hit`: `RedisCacheStore` with the key in its memory level.
//! - `redis_store_l2_hit`: `RedisCacheStore` with the key only in Redis: its memory level is
//!   emptied before each lookup (not timed), so each one is an `HGET` round trip, the decoding
//!   and the fill of memory, awaited with `block_on` from the bench's thread.
//!
//! Figures for the closing note were taken on a 2-core VM (AMD EPYC, Debian 12, Redis 7.0.15
//! from Debian), where the bench's runtime and `redis-server` share the two cores.
//!
//! Run with `cargo bench --bench redis --features redis`.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use http::header::HeaderName;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use tokio::runtime::Runtime;
use tollgate::cache::{CacheKey, CacheStore, CachedResponse, Lookup, Purge};
use tollgate::key::{Global, PeerIp};
use tollgate::redis::{
    Redis, RedisCacheStore, RedisConfig, RedisKeyStore, RedisQuotaStore, RedisThrottleStore,
};
use tollgate::throttle::{
    Check, MemoryStore, Outcome, Rate, Rule, StoreFailure, ThrottleLayer, ThrottleStore,
};
use tollgate::usage::{
    Day, MemoryQuotaStore, NewKey, QuotaPeriod, QuotaStore, Take, UsagePlan, UsagePlans,
    UsagePlansBuilder, Window, DEFAULT_RETENTION_DAYS,
};
use tollgate::{Key, SharedClock};
use tower::{Layer, Service, ServiceExt};

mod support;
use support::{configure, hello, peers, with_peer_addr};

/// Calls per iteration, and the clients they are spread over.
const BATCH: usize = 256;
const CLIENTS: u32 = 1_000;

/// Tasks of the baselines and the first Redis cases, each making `BATCH / IN_FLIGHT` calls in
/// turn.
const IN_FLIGHT: usize = 32;

const RULE: &str = "per-client";
const BURST: u32 = 1_000;
/// The global rule's burst: over a minute of what the in-memory layer serves beyond the rate.
const GLOBAL_BURST: u32 = 100_000_000;

/// The usage plan's id.
const PLAN: &str = "bench";

const THROTTLE: &str = "redis/throttle";
const QUOTA: &str = "redis/quota";
const USAGE: &str = "redis/usage";

/// The benchmark's clients, 10.0.0.0 onwards.
fn clients() -> Arc<[SocketAddr]> {
    peers(CLIENTS).into()
}

/// The bare service of `support::bare`, as a named type: its future must be known to be
/// `Send` to run on the runtime's workers.
#[derive(Clone, Copy)]
struct Bare;

impl Service<Request<()>> for Bare {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(hello(Empty::new())))
    }
}

/// A layer of the benchmark's one rule; its rules come back numbered for the store cases.
fn builder() -> tollgate::throttle::ThrottleBuilder {
    ThrottleLayer::builder().rule(Rule::new(RULE, Rate::per_second(1_000_000), PeerIp).burst(BURST))
}

/// The one rule and, after it, one budget for every request together.
fn two_rules() -> tollgate::throttle::ThrottleBuilder {
    builder().rule(Rule::new("global", Rate::per_second(1_000_000), Global).burst(GLOBAL_BURST))
}

/// The usage cases' plans, before their stores are chosen.
fn plans() -> UsagePlansBuilder {
    UsagePlans::builder()
        .plan(
            UsagePlan::new(PLAN)
                .throttle(Rate::per_second(1_000_000), BURST)
                .quota(u32::MAX, QuotaPeriod::Day),
        )
        // Refusing on store errors: a fail-open 200 must not pass for a decided request.
        .on_store_error(StoreFailure::Reject)
}

/// The `index`th call of a run: which client, counted across batches so that every client
/// comes up in turn.
fn client(start: usize, index: usize) -> usize {
    (start + index) % CLIENTS as usize
}

/// What one case does for each call: given the client's position, call (and panic when the
/// answer is not the expected one).
trait Case: Clone + Send + Sync + 'static {
    fn run(&mut self, client: usize) -> impl Future<Output = ()> + Send;
}

/// `ThrottleStore::check`, as the layer calls it, on the keys of the layer's `PeerIp`.
struct StoreCase<St> {
    store: Arc<St>,
    rule: Arc<Rule>,
    keys: Arc<[Key]>,
    calls: Arc<AtomicU64>,
}

impl<St> Clone for StoreCase<St> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            rule: self.rule.clone(),
            keys: self.keys.clone(),
            calls: self.calls.clone(),
        }
    }
}

impl<St: ThrottleStore> Case for StoreCase<St> {
    async fn run(&mut self, client: usize) {
        let key = &self.keys[client];
        let result = match self.store.check(&self.rule, key) {
            Check::Ready(result) => result,
            Check::Pending(future) => future.await,
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(Outcome::Allowed { .. }) => {}
            other => panic!("the check of {key} was not allowed: {other:?}"),
        }
    }
}

/// `QuotaStore::take`, as the usage layer calls it, of one unit of a quota never exhausted.
struct QuotaCase<Q> {
    store: Arc<Q>,
    keys: Arc<[Arc<str>]>,
    window: Window,
    day: Day,
    calls: Arc<AtomicU64>,
}

impl<Q> Clone for QuotaCase<Q> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            keys: self.keys.clone(),
            window: self.window,
            day: self.day,
            calls: self.calls.clone(),
        }
    }
}

impl<Q: QuotaStore> Case for QuotaCase<Q> {
    async fn run(&mut self, client: usize) {
        let key = &self.keys[client];
        let result = self
            .store
            .take(key, Some((u32::MAX, &self.window)), self.day)
            .settle()
            .await;
        self.calls.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(Take::Taken { .. }) => {}
            other => panic!("the take of {key} took nothing: {other:?}"),
        }
    }
}

fn taking<Q>(store: Q, calls: &Arc<AtomicU64>) -> QuotaCase<Q> {
    let now = SystemTime::now();
    QuotaCase {
        store: Arc::new(store),
        keys: (0..CLIENTS).map(|n| Arc::from(format!("k{n}"))).collect(),
        window: QuotaPeriod::Day.window(now),
        day: Day::of(now),
        calls: calls.clone(),
    }
}

/// A service answering one request per call, each made by `request` from its client's
/// position.
#[derive(Clone)]
struct ServiceCase<S, R> {
    service: S,
    request: R,
    calls: Arc<AtomicU64>,
}

impl<S, B, R> Case for ServiceCase<S, R>
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    R: Fn(usize) -> Request<()> + Clone + Send + Sync + 'static,
{
    async fn run(&mut self, client: usize) {
        let request = (self.request)(client);
        let service = self.service.ready().await.expect("the service is ready");
        let response = service.call(request).await.expect("the service answers");
        self.calls.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the request of client {client} was not admitted: {:?}",
            response.headers()
        );
    }
}

/// `service` answering each client from its address.
fn serving<S>(
    service: S,
    peers: &Arc<[SocketAddr]>,
    calls: &Arc<AtomicU64>,
) -> ServiceCase<S, impl Fn(usize) -> Request<()> + Clone + Send + Sync + 'static> {
    let peers = peers.clone();
    ServiceCase {
        service,
        request: move |client: usize| with_peer_addr(peers[client]),
        calls: calls.clone(),
    }
}

/// `service` answering each client with its own key of `keys` in `x-api-key`.
fn serving_keys<S>(
    service: S,
    keys: &Arc<[HeaderValue]>,
    calls: &Arc<AtomicU64>,
) -> ServiceCase<S, impl Fn(usize) -> Request<()> + Clone + Send + Sync + 'static> {
    let keys = keys.clone();
    ServiceCase {
        service,
        request: move |client: usize| {
            let mut request = Request::new(());
            request
                .headers_mut()
                .insert(HeaderName::from_static("x-api-key"), keys[client].clone());
            request
        },
        calls: calls.clone(),
    }
}

/// One batch: `BATCH` calls from client `start` on, `in_flight` tasks of calls in turn.
async fn batch<C: Case>(case: &C, start: usize, in_flight: usize) {
    let per_task = BATCH / in_flight;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..in_flight {
        let mut case = case.clone();
        tasks.spawn(async move {
            for n in 0..per_task {
                case.run(client(start, task * per_task + n)).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a calling task finished");
    }
}

/// Measures `case` under `name`, after one pass over every client so that each key is stored
/// (in memory) and the connection is warm when timing starts. Returns whether it ran (a filter
/// may skip it).
fn bench<C: Case>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &Runtime,
    name: &str,
    case: &C,
    in_flight: usize,
) -> bool {
    let mut warm = false;
    let mut next = 0;
    group.bench_function(name, |b| {
        if !warm {
            runtime.block_on(async {
                for start in (0..CLIENTS as usize).step_by(BATCH) {
                    batch(case, start, in_flight).await;
                }
            });
            warm = true;
        }
        b.iter_custom(|iterations| {
            let case = case.clone();
            let start = next;
            next = (next + iterations as usize * BATCH) % CLIENTS as usize;
            // The timing loop runs on a worker too: the bench's own thread only waits.
            let timed = runtime.spawn(async move {
                let started = Instant::now();
                let mut from = start;
                for _ in 0..iterations {
                    batch(&case, from, in_flight).await;
                    from = (from + BATCH) % CLIENTS as usize;
                }
                started.elapsed()
            });
            runtime.block_on(timed).expect("the timed batches finished")
        })
    });
    warm
}

/// A group of the bench's, its calls counted per unit of time.
fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    configure(&mut group);
    // A Redis batch takes milliseconds: the same iterations in every sample keep the
    // measurement time as asked.
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(BATCH as u64));
    group
}

/// A `redis-server` of the bench's own, stopped on drop.
struct RedisServer {
    child: Child,
    addr: SocketAddr,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port with no persistence and waits until it
    /// accepts connections; `Err` says why it could not.
    fn start() -> Result<Self, String> {
        let addr = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => "redis-server is not installed".to_owned(),
                _ => format!("redis-server could not be started: {error}"),
            })?;
        let mut server = RedisServer { child, addr };
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            let exited = server.child.try_wait().ok().flatten();
            if exited.is_some() || started.elapsed() > Duration::from_secs(10) {
                return Err(format!("redis-server did not start ({exited:?})"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address nothing listens on (a port the OS just handed out and took back).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a loopback port is free")
}

/// The bench's own connection to Redis, for its statistics: RESP by hand, one command at a
/// time, so the bench needs no Redis client of its own.
struct Admin {
    reader: BufReader<TcpStream>,
}

impl Admin {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("the bench connects to its redis-server");
        Self {
            reader: BufReader::new(stream),
        }
    }

    /// Sends `args` as one command; returns a simple or bulk string reply.
    fn command(&mut self, args: &[&str]) -> String {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .expect("the command is sent");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("Redis answers");
        let line = line.trim_end();
        match line.split_at(1) {
            ("+", text) => text.to_owned(),
            ("$", len) => {
                let len: usize = len.parse().expect("a bulk string's length");
                let mut body = vec![0; len + 2];
                std::io::Read::read_exact(&mut self.reader, &mut body).expect("the reply arrives");
                body.truncate(len);
                String::from_utf8(body).expect("INFO is text")
            }
            _ => panic!("Redis answered {args:?} with {line:?}"),
        }
    }

    /// `name:value` lines of an `INFO` section.
    fn info(&mut self, section: &str) -> Vec<(String, String)> {
        self.command(&["INFO", section])
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    /// Calls per command since the last reset, from `INFO commandstats`.
    fn command_calls(&mut self) -> Vec<(String, u64)> {
        self.info("commandstats")
            .into_iter()
            .filter_map(|(name, stats)| {
                let name = name.strip_prefix("cmdstat_")?.to_owned();
                let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
                Some((name, calls.parse().ok()?))
            })
            .collect()
    }
}

/// What a Redis case expects Redis to serve: what one of its calls is, and the round trips
/// each costs, by command (lower case, as `INFO commandstats` names them).
struct Expected {
    call: &'static str,
    round_trips: &'static [(&'static str, u64)],
}

const ONE_EVALSHA_PER_CHECK: Expected = Expected {
    call: "check",
    round_trips: &[("evalsha", 1)],
};

/// The commands the stores' scripts run inside Redis: the throttle's `TIME`, `GET` and `SET`,
/// the quota's hash commands and `PTTL`.
const IN_SCRIPTS: [&str; 10] = [
    "time", "get", "set", "hmget", "hset", "hincrby", "pttl", "pexpire", "hkeys", "hdel",
];

/// The bench's own statistics commands.
const BENCH_OWN: [&str; 2] = ["info", "config|resetstat"];

/// Prints what Redis served for `calls` calls of case `id` beside what `expected` says.
fn report_round_trips(admin: &mut Admin, id: &str, calls: u64, expected: &Expected) {
    let served = admin.command_calls();
    let count = |command: &str| {
        served
            .iter()
            .find(|(name, _)| name == command)
            .map_or(0, |(_, calls)| *calls)
    };
    // `GET` is also the key store's round trip; the throttle script writes every rule it
    // allows (here, all) with one `SET` after its `GET`.
    let in_scripts = |command: &str| match command {
        "get" => count("get").min(count("set")),
        _ if IN_SCRIPTS.contains(&command) => count(command),
        _ => 0,
    };
    let round_trips = |command: &str| count(command) - in_scripts(command);
    let per_call = |n: u64| {
        if calls == 0 {
            0.0
        } else {
            n as f64 / calls as f64
        }
    };
    let call = expected.call;
    let total: u64 = served
        .iter()
        .filter(|(name, _)| !BENCH_OWN.contains(&name.as_str()))
        .map(|(name, _)| round_trips(name))
        .sum();
    let expected_total: u64 = expected.round_trips.iter().map(|(_, n)| n).sum();
    let by_command: Vec<String> = expected
        .round_trips
        .iter()
        .map(|&(command, per)| {
            let n = round_trips(command);
            format!(
                "{} {n} ({:.4} per {call}, expected {per})",
                command.to_uppercase(),
                per_call(n)
            )
        })
        .collect();
    let inside: Vec<String> = IN_SCRIPTS
        .iter()
        .filter(|command| in_scripts(command) > 0)
        .map(|command| format!("{} {}", command.to_uppercase(), in_scripts(command)))
        .collect();
    let others: Vec<String> = served
        .iter()
        .filter(|(name, _)| {
            !BENCH_OWN.contains(&name.as_str())
                && !expected
                    .round_trips
                    .iter()
                    .any(|(command, _)| command == name)
                && round_trips(name) > 0
        })
        .map(|(name, _)| format!("{name} {}", round_trips(name)))
        .collect();
    let errors: Vec<String> = admin
        .info("errorstats")
        .into_iter()
        .map(|(name, value)| format!("{name} {value}"))
        .collect();
    let connections = admin
        .info("stats")
        .into_iter()
        .find(|(name, _)| name == "total_connections_received")
        .map_or_else(|| "?".to_owned(), |(_, value)| value);
    let listed = |items: &[String]| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    println!(
        "{id}: {calls} {call}s, {total} round trips ({:.4} per {call}, expected \
         {expected_total}): {}; inside the scripts: {}; other commands: {}; errors: {}; \
         new connections: {connections}",
        per_call(total),
        by_command.join(", "),
        listed(&inside),
        listed(&others),
        listed(&errors),
    );
}

/// What every Redis case shares: the stores' connection, stores to load the scripts with,
/// the bench's own connection for Redis's statistics, and the count of the case's calls.
struct RedisBench {
    redis: Redis,
    throttle: RedisThrottleStore,
    quota: RedisQuotaStore,
    admin: Admin,
    calls: Arc<AtomicU64>,
}

impl RedisBench {
    fn connect(runtime: &Runtime, server: &RedisServer, calls: &Arc<AtomicU64>) -> Self {
        let redis = runtime
            .block_on(RedisConfig::new(server.url()).prefix("bench").connect())
            .expect("the bench connects to its redis-server");
        let layer = builder()
            .build()
            .expect("the benchmark's throttle layer is valid");
        Self {
            throttle: RedisThrottleStore::new(
                redis.clone(),
                layer.rules(),
                &SharedClock::default(),
            ),
            quota: RedisQuotaStore::new(redis.clone()),
            redis,
            admin: Admin::connect(server.addr),
            calls: calls.clone(),
        }
    }

    /// Runs case `name` of group `group` (by `run`, which says whether it ran) with the
    /// scripts loaded and Redis's statistics reset, then reports what Redis served for it.
    fn measure(
        &mut self,
        runtime: &Runtime,
        group: &str,
        name: &str,
        expected: &Expected,
        run: impl FnOnce(&str) -> bool,
    ) {
        runtime
            .block_on(self.throttle.preload())
            .expect("the throttle script loads");
        let load = self
            .quota
            .take(&Arc::from("script-load"), None, Day::of(SystemTime::now()));
        runtime
            .block_on(load.settle())
            .expect("the quota script loads");
        assert_eq!(self.admin.command(&["CONFIG", "RESETSTAT"]), "OK");
        self.calls.store(0, Ordering::Relaxed);
        if run(name) {
            let calls = self.calls.load(Ordering::Relaxed);
            report_round_trips(&mut self.admin, &format!("{group}/{name}"), calls, expected);
        }
    }
}

fn throttle(
    c: &mut Criterion,
    runtime: &Runtime,
    redis: Option<&mut RedisBench>,
    calls: &Arc<AtomicU64>,
) {
    let peers = clients();
    let keys: Arc<[Key]> = peers.iter().map(|peer| Key::ip(peer.ip())).collect();

    let memory_layer = builder()
        .build()
        .expect("the benchmark's throttle layer is valid");
    let memory_two_rules = two_rules()
        .build()
        .expect("the benchmark's two-rule throttle layer is valid");
    let rule = Arc::new(memory_layer.rules()[0].clone());
    let memory_store = StoreCase {
        store: Arc::new(MemoryStore::new(
            memory_layer.rules(),
            tollgate::throttle::DEFAULT_CAPACITY,
            SharedClock::default(),
        )),
        rule: rule.clone(),
        keys: keys.clone(),
        calls: calls.clone(),
    };

    let mut group = group(c, THROTTLE);
    bench(
        &mut group,
        runtime,
        "bare",
        &serving(Bare, &peers, calls),
        IN_FLIGHT,
    );
    bench(
        &mut group,
        runtime,
        "memory_store",
        &memory_store,
        IN_FLIGHT,
    );
    bench(
        &mut group,
        runtime,
        "memory_layer",
        &serving(memory_layer.layer(Bare), &peers, calls),
        IN_FLIGHT,
    );
    bench(
        &mut group,
        runtime,
        "memory_layer_two_rules",
        &serving(memory_two_rules.layer(Bare), &peers, calls),
        IN_FLIGHT,
    );

    if let Some(redis) = redis {
        let make = |rules: &[Rule], clock: &SharedClock| {
            RedisThrottleStore::new(redis.redis.clone(), rules, clock)
        };
        let redis_store = StoreCase {
            store: Arc::new(make(memory_layer.rules(), &SharedClock::default())),
            rule,
            keys,
            calls: calls.clone(),
        };
        // Refusing on store errors: a fail-open 200 must not pass for a decided check.
        let redis_layer = builder()
            .on_store_error(StoreFailure::Reject)
            .build_with_store(make)
            .expect("the benchmark's throttle layer is valid");
        let redis_two_rules = two_rules()
            .on_store_error(StoreFailure::Reject)
            .build_with_store(make)
            .expect("the benchmark's two-rule throttle layer is valid");
        for in_flight in [IN_FLIGHT, 2 * IN_FLIGHT] {
            redis.measure(
                runtime,
                THROTTLE,
                &format!("redis_store_{in_flight}_in_flight"),
                &ONE_EVALSHA_PER_CHECK,
                |name| bench(&mut group, runtime, name, &redis_store, in_flight),
            );
        }
        redis.measure(
            runtime,
            THROTTLE,
            &format!("redis_layer_{IN_FLIGHT}_in_flight"),
            &ONE_EVALSHA_PER_CHECK,
            |name| {
                let case = serving(redis_layer.layer(Bare), &peers, calls);
                bench(&mut group, runtime, name, &case, IN_FLIGHT)
            },
        );
        redis.measure(
            runtime,
            THROTTLE,
            &format!("redis_layer_two_rules_{IN_FLIGHT}_in_flight"),
            // Both rules in one `EVALSHA`, not one each.
            &ONE_EVALSHA_PER_CHECK,
            |name| {
                let case = serving(redis_two_rules.layer(Bare), &peers, calls);
                bench(&mut group, runtime, name, &case, IN_FLIGHT)
            },
        );
    }
    group.finish();
}

fn quota(
    c: &mut Criterion,
    runtime: &Runtime,
    redis: Option<&mut RedisBench>,
    calls: &Arc<AtomicU64>,
) {
    let mut group = group(c, QUOTA);
    let memory_store = taking(MemoryQuotaStore::new(DEFAULT_RETENTION_DAYS), calls);
    bench(
        &mut group,
        runtime,
        "memory_store",
        &memory_store,
        IN_FLIGHT,
    );
    if let Some(redis) = redis {
        let redis_store = taking(RedisQuotaStore::new(redis.redis.clone()), calls);
        redis.measure(
            runtime,
            QUOTA,
            &format!("redis_store_{IN_FLIGHT}_in_flight"),
            &Expected {
                call: "take",
                round_trips: &[("evalsha", 1)],
            },
            |name| bench(&mut group, runtime, name, &redis_store, IN_FLIGHT),
        );
    }
    group.finish();
}

/// A new key of the plan for each client, as `x-api-key` values.
fn api_keys<K, Q, T>(runtime: &Runtime, plans: &UsagePlans<K, Q, T>) -> Arc<[HeaderValue]>
where
    K: tollgate::usage::KeyStore,
    Q: QuotaStore,
    T: ThrottleStore,
{
    runtime.block_on(async {
        let mut keys = Vec::with_capacity(CLIENTS as usize);
        for _ in 0..CLIENTS {
            let (_, secret) = plans
                .create_key(NewKey::new(PLAN))
                .await
                .expect("the bench's key is made");
            keys.push(HeaderValue::from_str(secret.expose()).expect("a key is a header value"));
        }
        keys.into()
    })
}

fn usage(
    c: &mut Criterion,
    runtime: &Runtime,
    redis: Option<&mut RedisBench>,
    calls: &Arc<AtomicU64>,
) {
    let memory_plans = plans().build().expect("the benchmark's plans are valid");
    let memory_keys = api_keys(runtime, &memory_plans);
    let mut group = group(c, USAGE);
    bench(
        &mut group,
        runtime,
        "memory_layer",
        &serving_keys(memory_plans.layer().layer(Bare), &memory_keys, calls),
        IN_FLIGHT,
    );
    if let Some(redis) = redis {
        let shared = &redis.redis;
        let redis_plans = plans()
            .build_with(
                RedisKeyStore::new(shared.clone()),
                RedisQuotaStore::new(shared.clone()),
                |rules, clock| RedisThrottleStore::new(shared.clone(), rules, clock),
            )
            .expect("the benchmark's plans are valid");
        let redis_keys = api_keys(runtime, &redis_plans);
        redis.measure(
            runtime,
            USAGE,
            &format!("redis_layer_{IN_FLIGHT}_in_flight"),
            // The key, then the plan throttle and the quota.
            &Expected {
                call: "request",
                round_trips: &[("get", 1), ("evalsha", 2)],
            },
            |name| {
                let case = serving_keys(redis_plans.layer().layer(Bare), &redis_keys, calls);
                bench(&mut group, runtime, name, &case, IN_FLIGHT)
            },
        );
    }
    group.finish();
}

/// A 1 KiB response, fresh for an hour.
fn cached_response() -> Arc<CachedResponse> {
    let now = SystemTime::now();
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("content-length", HeaderValue::from(1024));
    Arc::new(CachedResponse {
        status: StatusCode::OK,
        headers,
        body: Bytes::from(vec![b'x'; 1024]),
        vary: Box::from([]),
        resource: "/products/7".into(),
        tags: Box::from([Box::from("products")]),
        stored_at: now,
        initial_age: Duration::ZERO,
        fresh_until: now + Duration::from_secs(3600),
        stale_while_revalidate_until: now,
        stale_if_error_until: now,
    })
}

/// Awaits a lookup and checks that it found the response.
fn found(runtime: &Runtime, lookup: Lookup) {
    let variants = match lookup {
        Lookup::Ready(found) => found,
        Lookup::Pending(pending) => runtime.block_on(pending),
    };
    assert_eq!(variants.map(|v| v.len()), Some(1), "the key is a hit");
}

fn cache(c: &mut Criterion, runtime: &Runtime, redis: Option<&mut RedisBench>) {
    let key = CacheKey::from_bytes(b"G\x01/products/7");
    let memory = tollgate::cache::MemoryStore::new(tollgate::cache::DEFAULT_MAX_BYTES);
    memory.put(key.clone(), cached_response());

    let mut group = c.benchmark_group("redis/cache");
    configure(&mut group);
    group.bench_function("memory_store", |b| {
        b.iter(|| found(runtime, memory.get(&key)))
    });
    let Some(redis) = redis else {
        group.finish();
        return;
    };
    // Entered for the rest: the store spawns its subscriber and its writes to Redis on the
    // current runtime.
    let _entered = runtime.enter();
    let store = RedisCacheStore::new(redis.redis.clone());
    store.put(key.clone(), cached_response());
    // The write to Redis runs in the background: wait until a lookup from Redis finds it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        store.memory().purge(&Purge::All);
        if let Lookup::Pending(pending) = store.get(&key) {
            if runtime.block_on(pending).is_some() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the entry did not reach Redis");
        std::thread::sleep(Duration::from_millis(10));
    }
    group.bench_function("redis_store_l1_hit", |b| {
        b.iter(|| found(runtime, store.get(&key)))
    });
    group.bench_function("redis_store_l2_hit", |b| {
        b.iter_batched(
            || store.memory().purge(&Purge::All),
            |()| found(runtime, store.get(&key)),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn redis(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a multi-thread runtime starts");
    let calls = Arc::new(AtomicU64::new(0));
    let server = match RedisServer::start() {
        Ok(server) => Some(server),
        Err(reason) => {
            println!(
                "redis: the Redis cases are skipped: {reason} \
                 (apt-get install redis-server, or scripts/test installs it)"
            );
            None
        }
    };
    let mut redis = server
        .as_ref()
        .map(|server| RedisBench::connect(&runtime, server, &calls));
    throttle(c, &runtime, redis.as_mut(), &calls);
    quota(c, &runtime, redis.as_mut(), &calls);
    usage(c, &runtime, redis.as_mut(), &calls);
    cache(c, &runtime, redis.as_mut());
    drop(redis);
    drop(server);
}

criterion_group!(benches, redis);
criterion_main!(benches);
