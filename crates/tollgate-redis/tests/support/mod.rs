//! A `redis-server` of the test's own: started on a free loopback port with no persistence,
//! stopped when dropped. Never a system service.
//!
//! Without `redis-server` on the machine the Redis tests skip with a printed reason, unless
//! `TOLLGATE_REQUIRE_REDIS=1` (which `scripts/test` sets) makes that a failure.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts a server, or returns `None` (having said why) when `redis-server` is missing and
    /// not required.
    pub fn start() -> Option<Self> {
        let port = free_port();
        let mut server = Self { child: None, port };
        match server.spawn() {
            Ok(()) => Some(server),
            Err(reason) if std::env::var_os("TOLLGATE_REQUIRE_REDIS").is_some_and(|v| v == "1") => {
                panic!("redis-server is required (TOLLGATE_REQUIRE_REDIS=1) but {reason}")
            }
            Err(reason) => {
                eprintln!(
                    "skipping a Redis test: {reason}; run scripts/test to install redis-server"
                );
                None
            }
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
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
            .map_err(|error| format!("redis-server could not be started: {error}"))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("redis-server did not accept connections within 10 s".to_owned())
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
        self.spawn().expect("redis-server restarts");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port is free");
    listener
        .local_addr()
        .expect("the listener has an address")
        .port()
}
