//! Resident memory of the throttle's keyed state and the cache's store as distinct keys pour
//! in: a million client keys through a `ThrottleLayer`, or a million cache keys through a
//! `CacheLayer`, in process (each request served with `tower::ServiceExt::oneshot`), printing
//! the process's RSS (`VmRSS` in `/proc/self/status`) after every 100,000.
//!
//! ```sh
//! cargo run --release --example memory -- throttle                      # capacity 100,000 (the default)
//! cargo run --release --example memory -- throttle --capacity 1000000
//! cargo run --release --example memory -- cache                         # max_bytes 64 MiB (the default)
//! cargo run --release --example memory -- cache --max-bytes 1073741824
//! ```
//!
//! `--keys N` changes the million. Run one mode per process: memory a finished mode freed
//! stays with the allocator and would hide the next one's.
//!
//! - `throttle`: one rule per peer IP, 1,000 requests an hour with a burst of 1,000, so no key
//!   comes back to full allowance during the run and none can be dropped as idle: once the
//!   store holds its capacity, each new key evicts the key closest to full. Client `n` is
//!   `PeerAddr` 10.0.0.0 + `n` (an extension; nothing goes on the network).
//! - `cache`: `GET /items/{n}`, anonymous, answered `200` with a 64-byte body and
//!   `Cache-Control: max-age=3600`, so every response is stored until the store's byte bound
//!   evicts it. The stored bytes are the store's own weights (body, headers, key, and a fixed
//!   256 bytes for the entry's bookkeeping).
//!
//! Each row: keys sent, RSS, RSS over the baseline taken after the layer was built and one
//! request served, the keys (or entries) held, and for the cache the weighed bytes held.

use std::convert::Infallible;
use std::future::ready;
use std::net::{Ipv4Addr, SocketAddr};

use axum::body::Body;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use tollgate::cache::CacheLayer;
use tollgate::core::Key;
use tollgate::key::PeerIp;
use tollgate::throttle::{Rate, Rule, ThrottleLayer, DEFAULT_CAPACITY};
use tollgate::PeerAddr;
use tower::{Layer, Service, ServiceExt};

type Error = Box<dyn std::error::Error>;

const STEP: u64 = 100_000;
const BODY: &[u8; 64] =
    b"{\"id\":0,\"name\":\"a widget\",\"price\":\"12.50\",\"stock\":17,\"pad\":\"..\"}";

/// The process's resident set, in bytes.
fn rss() -> Result<u64, Error> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .ok_or("no VmRSS line in /proc/self/status")?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

/// The value after `flag`, parsed, or `default`.
fn option(args: &[String], flag: &str, default: u64) -> Result<u64, Error> {
    match args.iter().position(|arg| arg == flag) {
        None => Ok(default),
        Some(at) => {
            let value = args.get(at + 1).ok_or(format!("{flag} needs a number"))?;
            Ok(value
                .replace('_', "")
                .parse()
                .map_err(|_| format!("{flag}: expected a number, got {value:?}"))?)
        }
    }
}

fn handler(
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(|_: Request<Body>| {
        let mut response = Response::new(Body::from(&BODY[..]));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
        ready(Ok::<_, Infallible>(response))
    })
}

fn header_row(extra: &str) {
    println!("| keys sent | RSS MB | over baseline MB | held{extra} |");
    println!(
        "|---|---|---|---|{}",
        if extra.is_empty() { "" } else { "---|" }
    );
}

async fn throttle(keys: u64, capacity: u64) -> Result<(), Error> {
    let layer = ThrottleLayer::builder()
        .rule(Rule::new("per-client", Rate::per_hour(1_000), PeerIp).burst(1_000))
        .capacity(usize::try_from(capacity)?)
        .build()?;
    let service = layer.layer(handler());
    let request = |n: u64| -> Result<Request<Body>, Error> {
        let ip = Ipv4Addr::from(0x0a00_0000 + u32::try_from(n)?);
        let mut request = Request::new(Body::empty());
        request
            .extensions_mut()
            .insert(PeerAddr(SocketAddr::from((ip, 40_000))));
        Ok(request)
    };
    // The baseline includes one served request: the runtime, the layer and the first shard.
    let response = service.clone().oneshot(request(u64::MAX >> 40)?).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let baseline = rss()?;
    println!(
        "throttle: capacity {capacity} keys, {keys} distinct client keys, {} bytes per table slot; baseline RSS {:.1} MB\n",
        std::mem::size_of::<(Key, u64)>(),
        mb(baseline)
    );
    header_row("");
    for n in 0..keys {
        let response = service.clone().oneshot(request(n)?).await?;
        if response.status() != StatusCode::OK {
            return Err(format!("client {n} was refused: {}", response.status()).into());
        }
        if (n + 1) % STEP == 0 {
            let now = rss()?;
            let held = layer.stored_keys("per-client").unwrap_or(0);
            println!(
                "| {} | {:.1} | {:.1} | {held} |",
                n + 1,
                mb(now),
                mb(now.saturating_sub(baseline))
            );
        }
    }
    Ok(())
}

async fn cache(keys: u64, max_bytes: u64) -> Result<(), Error> {
    let layer = CacheLayer::builder().max_bytes(max_bytes).build()?;
    let service = layer.layer(handler());
    let request = |n: u64| -> Result<Request<Body>, Error> {
        Ok(Request::get(format!("/items/{n}")).body(Body::empty())?)
    };
    let response = service.clone().oneshot(request(u64::MAX)?).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let baseline = rss()?;
    println!(
        "cache: max_bytes {max_bytes} ({:.1} MB), {keys} distinct cache keys, {} body bytes; baseline RSS {:.1} MB\n",
        mb(max_bytes),
        BODY.len(),
        mb(baseline)
    );
    header_row(" | weighed MB held");
    for n in 0..keys {
        let response = service.clone().oneshot(request(n)?).await?;
        if response.status() != StatusCode::OK {
            return Err(format!("key {n} answered {}", response.status()).into());
        }
        if (n + 1) % STEP == 0 {
            layer.store().settle();
            let now = rss()?;
            println!(
                "| {} | {:.1} | {:.1} | {} | {:.1} |",
                n + 1,
                mb(now),
                mb(now.saturating_sub(baseline)),
                layer.store().entries(),
                mb(layer.store().bytes())
            );
        }
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keys = option(&args, "--keys", 1_000_000)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    match args.first().map(String::as_str) {
        Some("throttle") => {
            let capacity = option(&args, "--capacity", DEFAULT_CAPACITY as u64)?;
            runtime.block_on(throttle(keys, capacity))
        }
        Some("cache") => {
            let max_bytes = option(&args, "--max-bytes", tollgate::cache::DEFAULT_MAX_BYTES)?;
            runtime.block_on(cache(keys, max_bytes))
        }
        _ => {
            Err("usage: memory (throttle [--capacity N] | cache [--max-bytes N]) [--keys N]".into())
        }
    }
}
