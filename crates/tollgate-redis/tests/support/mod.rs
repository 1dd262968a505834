//! A `redis-server` of the test's own: started on a free loopback port with no persistence,
//! stopped when dropped. Never a system service.
//!
//! Without `redis-server` on the machine the Redis tests skip with a printed reason, unless
//! `TOLLGATE_REQUIRE_REDIS=1` (which `scripts/test` sets) makes that a failure. A server that
//! is installed but does not come up is always a failure.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

/// Why a server did not start.
enum Start {
    /// The binary is not installed.
    Missing(String),
    /// It is installed but did not come up.
    Failed(String),
}

impl RedisServer {
    /// Starts a server, or returns `None` (having said why) when `redis-server` is missing and
    /// not required.
    pub fn start() -> Option<Self> {
        let port = free_port();
        let mut server = Self { child: None, port };
        let required = std::env::var_os("TOLLGATE_REQUIRE_REDIS").is_some_and(|v| v == "1");
        match server.spawn() {
            Ok(()) => Some(server),
            Err(Start::Missing(reason)) if !required => {
                eprintln!(
                    "skipping a Redis test: {reason}; run scripts/test to install redis-server"
                );
                None
            }
            Err(Start::Missing(reason) | Start::Failed(reason)) => {
                panic!("redis-server is required but {reason}")
            }
        }
    }

    fn spawn(&mut self) -> Result<(), Start> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => {
                    Start::Missing("redis-server is not installed".to_owned())
                }
                _ => Start::Failed(format!("redis-server could not be started: {error}")),
            })?;
        let child = self.child.insert(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // A server that exited (its port taken meanwhile) must not be mistaken for
            // whatever else answers on that port.
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Start::Failed(format!(
                    "redis-server exited at once: {status}"
                )));
            }
            if pong(addr) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(Start::Failed(
            "redis-server did not answer PING within 10 s".to_owned(),
        ))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(Start::Missing(reason) | Start::Failed(reason)) = self.spawn() {
            panic!("redis-server did not restart: {reason}");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis answers PING at `addr`.
fn pong(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port is free");
    listener
        .local_addr()
        .expect("the listener has an address")
        .port()
}

/// An axum app served on a free loopback port until dropped: one gateway instance.
pub struct Served {
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves `app` on `127.0.0.1:0`.
pub async fn serve(app: axum::Router) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .expect("the gateway serves");
    });
    Served { addr, server }
}

/// A TCP proxy to Redis whose open connections can be frozen: they stay open but carry
/// nothing more, as across a partition that resets nothing. New connections get through.
pub struct Partition {
    pub addr: SocketAddr,
    /// Connections accepted before the last freeze carry nothing.
    freezes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Partition {
    pub async fn start(server: &RedisServer) -> Self {
        let target = server.url().trim_start_matches("redis://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let freezes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let current = freezes.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let era = current.load(std::sync::atomic::Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, era, current.clone()));
                tokio::spawn(forward(server_read, client_write, era, current.clone()));
            }
        });
        Self {
            addr,
            freezes,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Freezes every connection open now.
    pub fn freeze(&self) {
        self.freezes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn forward(
    from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    era: usize,
    freezes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        if from.readable().await.is_err() {
            return;
        }
        let read = match from.try_read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        if freezes.load(std::sync::atomic::Ordering::SeqCst) != era {
            // Frozen: held open, carrying nothing, until the test ends.
            std::future::pending::<()>().await;
        }
        let mut sent = 0;
        while sent < read {
            if to.writable().await.is_err() {
                return;
            }
            match to.try_write(&buffer[sent..read]) {
                Ok(wrote) => sent += wrote,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}
