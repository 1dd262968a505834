//! Throttle checks against Redis beside the same checks in memory, measured in the same run,
//! and the commands each Redis check costs, counted by Redis itself.
//!
//! Group `redis/throttle`: one rule, `per-client`, of 1 000 000 requests per second with a
//! burst of 1000 per client IP, so nothing the bench sends is ever refused (the interval is
//! 1 µs, which the Redis store counts exactly). One iteration is a batch of 256 checks
//! spread over 1 000 clients (10.0.0.0 onwards, taken in turn from one batch to the next),
//! made by 32 (or 64) tasks of 8 (or 4) checks in turn on a multi-threaded tokio runtime with
//! one worker per core; each outcome is checked to be `Allowed`. Criterion's throughput line
//! is checks per second. The timing loop runs on a runtime worker, as in
//! `aggregate/proxy`.
//!
//! - `bare`: the bare service, one request per check: what the batch itself costs (tasks,
//!   requests), with no throttle.
//! - `memory_store`: `MemoryStore` (the layer's default store) through the same
//!   `ThrottleStore::check` call the layer makes.
//! - `memory_layer`: the whole `ThrottleLayer` with its in-memory store over the bare service,
//!   each request carrying its client's `PeerAddr` (the default `RateLimit` fields on every
//!   response).
//! - `redis_store_32_in_flight` and `redis_store_64_in_flight`: `RedisThrottleStore`'s
//!   `ThrottleStore::check`, awaited.
//! - `redis_layer_32_in_flight`: the whole `ThrottleLayer` built with `RedisThrottleStore` over
//!   the bare service, requests as in `memory_layer`.
//!
//! The Redis stores use the defaults of `RedisConfig` (50 ms per call, the server's clock)
//! with the key prefix `bench`; both clone one `Redis`, so every check goes over one
//! multiplexed, reconnecting connection. The script is loaded before each Redis case. A check
//! that fails (an error, or no answer within the 50 ms) stops the bench: the breaker would
//! otherwise answer later checks without Redis and inflate the figure.
//!
//! The bench starts its own `redis-server` on a free loopback port with no persistence
//! (`--save "" --appendonly no`) and stops it at the end. Before each Redis case it resets
//! Redis's statistics (`CONFIG RESETSTAT`, over a connection of the bench's own); after it, it
//! reads `INFO commandstats`, `INFO errorstats` and `INFO stats` and prints the checks the case
//! made (warm-up, the pass over every client before timing, and the measurement) beside the
//! `EVALSHA` calls Redis served, the commands the script ran inside Redis (`TIME`, `GET`,
//! `SET`: no round trips), any other command, any error and any new connection: one `EVALSHA`
//! per check and nothing else is one round trip per check. Without `redis-server` on the
//! machine the Redis cases are skipped with a line saying so (`apt-get install redis-server`,
//! or `scripts/test`, which installs it), and the in-memory cases still run.
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
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tokio::runtime::Runtime;
use tollgate::key::PeerIp;
use tollgate::redis::{RedisConfig, RedisThrottleStore};
use tollgate::throttle::{
    Check, MemoryStore, Outcome, Rate, Rule, StoreFailure, ThrottleLayer, ThrottleStore,
};
use tollgate::{Key, SharedClock};
use tower::{Layer, Service, ServiceExt};

mod support;
use support::{configure, hello, peers, with_peer_addr};

/// Checks per iteration, and the clients they are spread over.
const BATCH: usize = 256;
const CLIENTS: u32 = 1_000;

/// Tasks of the baselines and the first Redis cases, each making `BATCH / IN_FLIGHT` checks in
/// turn.
const IN_FLIGHT: usize = 32;

const RULE: &str = "per-client";
const BURST: u32 = 1_000;

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

/// The `index`th check of a run: which client, counted across batches so that every client
/// comes up in turn.
fn client(start: usize, index: usize) -> usize {
    (start + index) % CLIENTS as usize
}

/// What one case does for each check: given the client's position, decide (and panic when the
/// decision is not the expected one).
trait Case: Clone + Send + Sync + 'static {
    fn run(&mut self, client: usize) -> impl Future<Output = ()> + Send;
}

/// `ThrottleStore::check`, as the layer calls it, on the keys of the layer's `PeerIp`.
struct StoreCase<St> {
    store: Arc<St>,
    rule: Arc<Rule>,
    keys: Arc<[Key]>,
    checks: Arc<AtomicU64>,
}

impl<St> Clone for StoreCase<St> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            rule: self.rule.clone(),
            keys: self.keys.clone(),
            checks: self.checks.clone(),
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
        self.checks.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(Outcome::Allowed { .. }) => {}
            other => panic!("the check of {key} was not allowed: {other:?}"),
        }
    }
}

/// A service answering one request per check, each from its client's address.
#[derive(Clone)]
struct ServiceCase<S> {
    service: S,
    peers: Arc<[SocketAddr]>,
    checks: Arc<AtomicU64>,
}

impl<S, B> Case for ServiceCase<S>
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    async fn run(&mut self, client: usize) {
        let request = with_peer_addr(self.peers[client]);
        let service = self.service.ready().await.expect("the service is ready");
        let response = service.call(request).await.expect("the service answers");
        self.checks.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the request of {} was not allowed",
            self.peers[client]
        );
    }
}

fn serving<S>(service: S, peers: &Arc<[SocketAddr]>, checks: &Arc<AtomicU64>) -> ServiceCase<S> {
    ServiceCase {
        service,
        peers: peers.clone(),
        checks: checks.clone(),
    }
}

/// One batch: `BATCH` checks from client `start` on, `in_flight` tasks of checks in turn.
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
        done.expect("a checking task finished");
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

/// Prints what Redis served for `checks` checks: one `EVALSHA` each is one round trip each.
fn report_round_trips(admin: &mut Admin, name: &str, checks: u64) {
    let calls = admin.command_calls();
    let count = |command: &str| {
        calls
            .iter()
            .find(|(name, _)| name == command)
            .map_or(0, |(_, calls)| *calls)
    };
    let evalsha = count("evalsha");
    // The script's own calls run inside Redis; the bench's own statistics commands are its.
    let in_script = ["time", "get", "set"];
    let bench_own = ["info", "config|resetstat"];
    let inside: Vec<String> = in_script
        .iter()
        .map(|command| format!("{} {}", command.to_uppercase(), count(command)))
        .collect();
    let others: Vec<String> = calls
        .iter()
        .filter(|(name, _)| {
            name != "evalsha"
                && !in_script.contains(&name.as_str())
                && !bench_own.contains(&name.as_str())
        })
        .map(|(name, calls)| format!("{name} {calls}"))
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
    let per_check = if checks == 0 {
        0.0
    } else {
        evalsha as f64 / checks as f64
    };
    println!(
        "redis/throttle/{name}: {checks} checks, {evalsha} EVALSHA ({per_check:.4} per check); \
         inside the script: {}; other commands: {}; errors: {}; new connections: {connections}",
        inside.join(", "),
        if others.is_empty() {
            "none".to_owned()
        } else {
            others.join(", ")
        },
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(", ")
        },
    );
}

fn throttle(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a multi-thread runtime starts");
    let peers = clients();
    let keys: Arc<[Key]> = peers.iter().map(|peer| Key::ip(peer.ip())).collect();

    let memory_layer = builder()
        .build()
        .expect("the benchmark's throttle layer is valid");
    let rule = Arc::new(memory_layer.rules()[0].clone());
    let checks = Arc::new(AtomicU64::new(0));
    let memory_store = StoreCase {
        store: Arc::new(MemoryStore::new(
            memory_layer.rules(),
            tollgate::throttle::DEFAULT_CAPACITY,
            SharedClock::default(),
        )),
        rule: rule.clone(),
        keys: keys.clone(),
        checks: checks.clone(),
    };

    let server = match RedisServer::start() {
        Ok(server) => Some(server),
        Err(reason) => {
            println!(
                "redis/throttle: the Redis cases are skipped: {reason} \
                 (apt-get install redis-server, or scripts/test installs it)"
            );
            None
        }
    };

    let mut group = c.benchmark_group("redis/throttle");
    configure(&mut group);
    // A Redis batch takes milliseconds: the same iterations in every sample keep the
    // measurement time as asked.
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(BATCH as u64));
    bench(
        &mut group,
        &runtime,
        "bare",
        &serving(Bare, &peers, &checks),
        IN_FLIGHT,
    );
    bench(
        &mut group,
        &runtime,
        "memory_store",
        &memory_store,
        IN_FLIGHT,
    );
    bench(
        &mut group,
        &runtime,
        "memory_layer",
        &serving(memory_layer.layer(Bare), &peers, &checks),
        IN_FLIGHT,
    );

    if let Some(server) = &server {
        let redis = runtime
            .block_on(RedisConfig::new(server.url()).prefix("bench").connect())
            .expect("the bench connects to its redis-server");
        let make = |rules: &[Rule], clock: &SharedClock| {
            RedisThrottleStore::new(redis.clone(), rules, clock)
        };
        let store = make(memory_layer.rules(), &SharedClock::default());
        // Refusing on store errors: a fail-open 200 must not pass for a decided check.
        let redis_layer = builder()
            .on_store_error(StoreFailure::Reject)
            .build_with_store(make)
            .expect("the benchmark's throttle layer is valid");
        let redis_store = StoreCase {
            store: Arc::new(store),
            rule,
            keys,
            checks: checks.clone(),
        };
        let mut admin = Admin::connect(server.addr);
        let mut measure =
            |group: &mut BenchmarkGroup<'_, WallTime>,
             name: &str,
             case: &dyn Fn(&mut BenchmarkGroup<'_, WallTime>, &str) -> bool| {
                runtime
                    .block_on(redis_store.store.preload())
                    .expect("the script loads");
                assert_eq!(admin.command(&["CONFIG", "RESETSTAT"]), "OK");
                checks.store(0, Ordering::Relaxed);
                if case(group, name) {
                    report_round_trips(&mut admin, name, checks.load(Ordering::Relaxed));
                }
            };
        for in_flight in [IN_FLIGHT, 2 * IN_FLIGHT] {
            measure(
                &mut group,
                &format!("redis_store_{in_flight}_in_flight"),
                &|group, name| bench(group, &runtime, name, &redis_store, in_flight),
            );
        }
        measure(
            &mut group,
            &format!("redis_layer_{IN_FLIGHT}_in_flight"),
            &|group, name| {
                bench(
                    group,
                    &runtime,
                    name,
                    &serving(redis_layer.layer(Bare), &peers, &checks),
                    IN_FLIGHT,
                )
            },
        );
    }
    group.finish();
    drop(server);
}

criterion_group!(benches, throttle);
criterion_main!(benches);
