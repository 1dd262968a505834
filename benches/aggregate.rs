//! The aggregate endpoint's cost beside calling its backends directly, and the HTTP upstream's
//! throughput beside nginx's `proxy_pass`, measured in the same run.
//!
//! Group `aggregate/in_process`: three in-process backends, each a [`Mock`] answering about
//! 1 KiB of JSON (19 top-level fields of its own, so the merge combines 57). Services
//! are driven directly, as in the other benches: `poll_ready`, `call`, then the response future
//! polled once with a no-op waker, inside a current-thread tokio runtime's context (the
//! endpoint arms its timeouts on tokio's clock). Every path measured here answers at that first
//! poll, and the bench fails if one does not. Every response's body is read to its end. No
//! `metrics` recorder or `tracing` subscriber is installed.
//!
//! - `direct_one`: one backend called directly, its body read: the slowest backend, since all
//!   three cost the same. The aggregate's overhead is its median minus this one's.
//! - `by_hand_three`: what a hand-written handler does: the three backends called one after
//!   another, each body parsed into a `serde_json::Map`, the fields merged (first wins) and the
//!   result serialized into a `Full<Bytes>` response with a `content-type`.
//! - `aggregate_three`: an [`Aggregate`] over the three (`Backend::service`), shallow merge,
//!   the defaults otherwise.
//! - `direct_one_enveloped`: one backend whose JSON is an envelope (`data` of ~0.9 KiB with a
//!   nested `address`, and `meta`), called directly.
//! - `aggregate_three_pipeline_deep`: an [`Aggregate`] over three enveloped backends, each with
//!   `target("data")`, an `allow` list of 8 fields and `address.city`, and a `group`; two share
//!   the group `account`, so [`Merge::Deep`] merges their objects (and their `address`) field by
//!   field.
//!
//! Group `aggregate/proxy`: requests over loopback. The backend is a bare axum server
//! answering `GET /hello` with `Hello, World!`; it and the client run on a multi-threaded tokio
//! runtime with one worker per core. The client is hyper-util's legacy client (a keep-alive
//! pool, HTTP/1.1); one iteration is a batch of 32 requests, 8 in flight (8 tasks of 4
//! requests in turn), each response's status and body checked. Criterion's throughput line is
//! requests per second.
//!
//! - `direct`: the client to the backend.
//! - `http_upstream_1_thread` and `http_upstream_2_threads`: through an [`HttpUpstream`] (the
//!   defaults: every end-to-end header forwarded, hop-by-hop headers removed, `X-Forwarded-*`
//!   and `Forwarded` set, a pooled keep-alive client) as an axum `fallback_service` with
//!   connect info, on a tokio runtime of its own with 1 or 2 worker threads: like nginx, the
//!   proxy is scheduled apart from the client and the backend, which share a runtime.
//! - `nginx_1_worker` and `nginx_2_workers`: through nginx in front of the same backend,
//!   started by the bench with a generated configuration in a temporary directory, on a free
//!   port, and stopped when the group ends. Skipped, with a line saying so, when nginx is not
//!   installed (`scripts/bench-proxy` installs it and runs this bench). The configuration, with
//!   `worker_processes` 1 or 2 (`auto` on this machine), and temp paths, logs and the pid file
//!   in the temporary directory:
//!
//! ```nginx
//! events { worker_connections 1024; }
//! http {
//!     access_log off;
//!     upstream backend { server 127.0.0.1:<backend port>; keepalive 64; }
//!     server {
//!         listen 127.0.0.1:<free port>;
//!         location / {
//!             proxy_pass http://backend;
//!             proxy_http_version 1.1;
//!             proxy_set_header Connection "";
//!             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
//!             proxy_set_header X-Forwarded-Proto $scheme;
//!             proxy_set_header X-Forwarded-Host $host;
//!             proxy_set_header Forwarded "for=$remote_addr;host=\"$host\";proto=$scheme";
//!         }
//!     }
//! }
//! ```
//!
//! The forwarding headers make nginx do the work `HttpUpstream` does by default. The figures
//! in the README were taken on a 2-core VM, where the client, the backend and the proxy share
//! the two cores; nginx 1.22.1 from Debian 12 (`nginx-light`, which installs `nginx`).
//!
//! Run with `cargo bench --bench aggregate`, or `scripts/bench-proxy`, which installs nginx
//! first when it is missing.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::{Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};
use tollgate::aggregate::{Aggregate, Backend, HttpUpstream, Merge, Mock, X_TOLLGATE_COMPLETED};
use tower::Service;

mod support;
use support::configure;

/// The in-process backends, each with top-level fields of its own.
const BACKENDS: [&str; 3] = ["profile", "orders", "offers"];

/// Fields per backend document: about 1 KiB of JSON.
const FIELDS: usize = 19;

/// What the proxy group's backend answers.
const HELLO: &str = "Hello, World!";

/// Requests per iteration of the proxy group, and how many are in flight at once.
const BATCH: usize = 32;
const IN_FLIGHT: usize = 8;

/// A backend's flat document: `FIELDS` fields named after it, about 1 KiB.
fn document(backend: &str) -> Map<String, Value> {
    fields(backend, FIELDS)
}

/// `count` fields named after `backend`.
fn fields(backend: &str, count: usize) -> Map<String, Value> {
    (0..count)
        .map(|i| {
            let value = json!({ "id": i, "label": format!("{backend} item {i}"), "n": i * 7 });
            (format!("{backend}_{i:02}"), value)
        })
        .collect()
}

/// A backend's enveloped document: fewer flat fields and an `address` under `data`, and
/// `meta`; about 1 KiB too.
fn enveloped(backend: &str) -> Value {
    let mut data = fields(backend, FIELDS - 2);
    data.insert(
        "address".to_owned(),
        json!({ "city": format!("{backend} city"), "street": "1 Main St", "zip": "12345" }),
    );
    json!({ "data": data, "meta": { "request_id": "0af7651916cd43dd8448eb211c80319c", "took_ms": 3 } })
}

/// A mock backend answering `value` as JSON, checked to be about 1 KiB.
fn backend(value: &Value) -> Mock {
    let size = value.to_string().len();
    assert!(
        (1000..=1100).contains(&size),
        "a backend answers {size} bytes"
    );
    Mock::json(StatusCode::OK, value)
}

/// Serves one request: `poll_ready`, `call`, and one poll of the response future with a no-op
/// waker, which must answer (every path measured here does not wait on anything).
#[inline(always)]
fn serve_now<S, R>(service: &mut S, request: R) -> S::Response
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    match pin!(service.call(request)).poll(&mut cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(error)) => panic!("the service failed: {error:?}"),
        Poll::Pending => panic!("the service did not answer at the first poll"),
    }
}

/// Reads a body whole the way a server writes it out, with a no-op waker.
#[inline(always)]
fn read_now<B: Body<Data = Bytes>>(body: B) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    let mut body = pin!(body);
    let mut whole = BytesMut::new();
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    whole.extend_from_slice(data);
                }
            }
            Poll::Ready(Some(Err(_))) => panic!("the body failed"),
            Poll::Ready(None) => return whole.freeze(),
            Poll::Pending => panic!("the body was not ready at once"),
        }
    }
}

/// The hand-written handler: the backends called one after another, their JSON parsed and
/// merged (first wins), the result serialized.
#[derive(Clone)]
struct ByHand {
    backends: Vec<Mock>,
}

impl Service<Request<()>> for ByHand {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        let mut merged = Map::new();
        for backend in &mut self.backends {
            let response = serve_now(backend, Request::new(()));
            let body = read_now(response.into_body());
            let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
                panic!("a backend did not answer a JSON object");
            };
            for (name, value) in fields {
                merged.entry(name).or_insert(value);
            }
        }
        let body = serde_json::to_vec(&merged).expect("a map of JSON values serializes");
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        ready(Ok(response))
    }
}

/// The body `service` answers, checked to be a whole 200.
fn answer<S, B>(service: &mut S) -> Bytes
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
{
    let response = serve_now(service, Request::new(()));
    assert_eq!(response.status(), StatusCode::OK);
    if let Some(completed) = response.headers().get(X_TOLLGATE_COMPLETED) {
        assert_eq!(completed, "true");
    }
    read_now(response.into_body())
}

/// Measures `service`, each response checked to be a 200 of `len` bytes.
fn bench_in_process<S, B>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut service: S)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
{
    let len = answer(&mut service).len();
    group.bench_function(name, |b| {
        b.iter(|| {
            let response = serve_now(&mut service, black_box(Request::new(())));
            let status = response.status();
            let body = read_now(response.into_body());
            // A wrong setup fails loudly instead of measuring the wrong path.
            assert_eq!((status, body.len()), (StatusCode::OK, len), "{name}");
            body
        })
    });
}

fn in_process(c: &mut Criterion) {
    // The endpoint arms its deadline and timeouts on tokio's clock, which needs a runtime's
    // context; nothing here waits on it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime starts");
    let _context = runtime.enter();

    let flat: Vec<Mock> = BACKENDS
        .iter()
        .map(|name| backend(&Value::Object(document(name))))
        .collect();
    let mut aggregate = BACKENDS
        .iter()
        .zip(&flat)
        .fold(Aggregate::builder(), |builder, (name, mock)| {
            builder.backend(Backend::service(*name, mock.clone()))
        })
        .build()
        .expect("the benchmark's endpoint is valid");
    let mut by_hand = ByHand {
        backends: flat.clone(),
    };
    // Both combine the same 57 fields in the same order.
    let merged: Value =
        serde_json::from_slice(&answer(&mut aggregate)).expect("the aggregate answers JSON");
    assert_eq!(merged.as_object().map(Map::len), Some(3 * FIELDS));
    assert_eq!(
        merged,
        serde_json::from_slice::<Value>(&answer(&mut by_hand)).expect("by hand answers JSON")
    );

    let enveloped_backends: Vec<Mock> = BACKENDS
        .iter()
        .map(|name| backend(&enveloped(name)))
        .collect();
    let groups = ["account", "account", "offers"];
    let mut pipeline = Aggregate::builder().merge(Merge::Deep);
    for ((name, mock), group) in BACKENDS.iter().zip(&enveloped_backends).zip(groups) {
        let allow = (0..8)
            .map(|i| format!("{name}_{i:02}"))
            .chain(["address.city".to_owned()]);
        pipeline = pipeline.backend(
            Backend::service(*name, mock.clone())
                .target("data")
                .allow(allow)
                .group(group),
        );
    }
    let mut pipeline = pipeline.build().expect("the benchmark's endpoint is valid");
    let deep: Value =
        serde_json::from_slice(&answer(&mut pipeline)).expect("the aggregate answers JSON");
    // profile and orders share `account` (8 + 8 fields and one address, whose city the first
    // backend keeps); offers has its own group.
    assert_eq!(deep["account"].as_object().map(Map::len), Some(17));
    assert_eq!(
        deep["account"]["address"],
        json!({ "city": "profile city" })
    );
    assert_eq!(deep["offers"].as_object().map(Map::len), Some(9));

    let mut group = c.benchmark_group("aggregate/in_process");
    configure(&mut group);
    bench_in_process(&mut group, "direct_one", flat[0].clone());
    bench_in_process(&mut group, "by_hand_three", by_hand);
    bench_in_process(&mut group, "aggregate_three", aggregate);
    bench_in_process(
        &mut group,
        "direct_one_enveloped",
        enveloped_backends[0].clone(),
    );
    bench_in_process(&mut group, "aggregate_three_pipeline_deep", pipeline);
    group.finish();
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Sends `BATCH` requests to `uri`, `IN_FLIGHT` at a time, each checked to be the backend's
/// `Hello, World!`.
async fn batch(client: &HttpClient, uri: &Uri) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let client = client.clone();
        let uri = uri.clone();
        tasks.spawn(async move {
            for _ in 0..BATCH / IN_FLIGHT {
                let response = client.get(uri.clone()).await.expect("the request is sent");
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .expect("the body arrives")
                    .to_bytes();
                assert_eq!((status, &body[..]), (StatusCode::OK, HELLO.as_bytes()));
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a client task finished");
    }
}

/// Serves `app` on a free loopback port of the current runtime, with connect info.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port is free");
    let addr = listener.local_addr().expect("the listener has an address");
    // As nginx's `tcp_nodelay on` (its default): a head and a body chunk written apart are not
    // held back waiting for an ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("the server runs");
    });
    addr
}

/// An [`HttpUpstream`] to `backend` as an axum fallback service, on a runtime of its own with
/// `threads` workers: like nginx, it is scheduled apart from the client and the backend.
fn gateway(threads: usize, backend: SocketAddr) -> (tokio::runtime::Runtime, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("gateway") // to tell its threads apart in a profile
        .enable_all()
        .build()
        .expect("the gateway's runtime starts");
    let upstream = HttpUpstream::builder(format!("http://{backend}"))
        .build()
        .expect("the benchmark's upstream is valid");
    let addr = runtime.block_on(serve(Router::new().fallback_service(upstream)));
    (runtime, addr)
}

/// nginx in a temporary directory of its own, stopped (and the directory removed) on drop.
struct Nginx {
    binary: PathBuf,
    dir: PathBuf,
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    /// The nginx binary on `PATH` or in `/usr/sbin`, if any.
    fn find() -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join("nginx"))
            .find(|binary| binary.is_file())
    }

    /// Starts nginx with `workers` worker processes in front of `backend`, and waits until it
    /// accepts connections.
    fn start(binary: &Path, workers: usize, backend: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-bench-nginx-{}-{workers}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("the temporary directory is made");
        let addr = free_port();
        let d = dir.display();
        // Only the temp paths of the modules this binary has (nginx refuses unknown directives).
        let built = Command::new(binary)
            .arg("-V")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
            .unwrap_or_default();
        let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .filter(|module| !built.contains(&format!("--without-http_{module}_module")))
            .map(|module| format!("    {module}_temp_path {d}/{module};\n"))
            .collect();
        let config = format!(
            r#"worker_processes {workers};
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp_paths}    upstream backend {{ server {backend}; keepalive 64; }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header Forwarded "for=$remote_addr;host=\"$host\";proto=$scheme";
        }}
    }}
}}
"#
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).expect("the nginx configuration is written");
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx {
            binary: binary.to_owned(),
            dir,
            child,
            addr,
        };
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            let exited = nginx.child.try_wait().ok().flatten();
            if exited.is_some() || started.elapsed() > Duration::from_secs(10) {
                let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                panic!("nginx did not start ({exited:?}); its error log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // `-s stop` sends the master SIGTERM through the pid file; the master stops its workers.
        let _ = Command::new(&self.binary)
            .arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status();
        let started = Instant::now();
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if started.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback address nothing listens on (a port the OS just handed out and took back).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a loopback port is free")
}

fn proxy(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a multi-thread runtime starts");
    let backend = runtime.block_on(serve(
        Router::new().route("/hello", get(|| async { HELLO })),
    ));
    let gateways: Vec<_> = [1, 2]
        .into_iter()
        .map(|threads| (threads, gateway(threads, backend)))
        .collect();

    let nginx = match Nginx::find() {
        Some(binary) => [1, 2]
            .into_iter()
            .map(|workers| (workers, Nginx::start(&binary, workers, backend)))
            .collect(),
        None => {
            println!(
                "aggregate/proxy: the nginx cases are skipped: nginx is not installed \
                 (scripts/bench-proxy installs it and runs this bench; or apt-get install nginx-light)"
            );
            Vec::new()
        }
    };

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let hello =
        |addr: SocketAddr| -> Uri { format!("http://{addr}/hello").parse().expect("a valid URI") };
    let mut cases = vec![("direct".to_owned(), hello(backend))];
    for (threads, (_runtime, addr)) in &gateways {
        let name = if *threads == 1 {
            "http_upstream_1_thread".to_owned()
        } else {
            format!("http_upstream_{threads}_threads")
        };
        cases.push((name, hello(*addr)));
    }
    for (workers, nginx) in &nginx {
        let name = if *workers == 1 {
            "nginx_1_worker".to_owned()
        } else {
            format!("nginx_{workers}_workers")
        };
        cases.push((name, hello(nginx.addr)));
    }

    let mut group = c.benchmark_group("aggregate/proxy");
    configure(&mut group);
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, uri) in &cases {
        // Checks the path and fills the keep-alive pools before timing.
        runtime.block_on(batch(&client, uri));
        group.bench_function(name.as_str(), |b| {
            b.iter_custom(|iterations| {
                let (client, uri) = (client.clone(), uri.clone());
                // The timing loop runs on a worker too: the bench's own thread only waits, so
                // the client's wake-ups stay on the runtime's threads.
                let timed = runtime.spawn(async move {
                    let started = Instant::now();
                    for _ in 0..iterations {
                        batch(&client, &uri).await;
                    }
                    started.elapsed()
                });
                runtime.block_on(timed).expect("the timed batches finished")
            })
        });
    }
    group.finish();
    drop(nginx);
    drop(gateways);
}

criterion_group!(benches, in_process, proxy);
criterion_main!(benches);
