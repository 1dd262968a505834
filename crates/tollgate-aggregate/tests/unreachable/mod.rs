//! Upstream addresses that fail in the two ways a proxy must tell apart, shared by the
//! aggregate and upstream tests.

use std::time::Duration;

/// A base URL nothing listens on: a port bound, read and released.
pub fn nothing_listening() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A base URL where connections are never accepted: a listener whose accept queue is full,
/// so further connection attempts get no answer (Linux drops their SYNs), and the listener
/// and the connections that fill it, which must be kept alive.
pub async fn nothing_accepting() -> (String, tokio::net::TcpListener, Vec<std::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    // Connect until an attempt hangs: the queue is full from then on.
    loop {
        let attempt = tokio::task::spawn_blocking(move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        })
        .await
        .unwrap();
        match attempt {
            Ok(stream) => queued.push(stream),
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => break,
            Err(error) => panic!("connecting to fill the queue: {error}"),
        }
        assert!(queued.len() < 64, "the accept queue never fills");
    }
    (format!("http://{addr}"), listener, queued)
}
