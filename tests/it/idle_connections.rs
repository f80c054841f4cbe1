//! A kept-alive client connection that goes quiet is parked: after a second at rest patless lets
//! hyper's connection and its buffers go (`src/server/conn.rs`), and serves the same TCP
//! connection with a new one when the client speaks again. End to end through the proxy on its
//! worker threads: nothing reaches the client while it is parked, and the requests that follow —
//! one with a body, a pipelined pair — are answered in order, each sent upstream once.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::patless::start_ado;

/// How long a read waits before the test calls the answer missing.
const LIMIT: Duration = Duration::from_secs(10);

/// Longer than patless's release delay (1 s), with room for the watchdog's look.
const PAST_RELEASE: Duration = Duration::from_millis(1500);

/// One raw HTTP/1.1 client connection.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    async fn fill(&mut self) {
        let mut chunk = vec![0u8; 64 * 1024];
        match tokio::time::timeout(LIMIT, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
            Ok(_) => panic!("the connection ended; had {:?}", self.buf),
            Err(_) => panic!("nothing came within {LIMIT:?}"),
        }
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return line;
            }
            self.fill().await;
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill().await;
        }
        self.buf.drain(..n).collect()
    }

    /// The next answer: status, head (lower-cased), body as JSON (`Content-Length` or chunked).
    async fn answer(&mut self) -> (u16, String, Value) {
        let status_line = self.line().await;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        let mut head = String::new();
        loop {
            let line = self.line().await.to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            head.push_str(&line);
            head.push('\n');
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|n| n.trim().parse().expect("content-length"));
        let body = match length {
            Some(n) => self.take(n).await,
            None => {
                let mut body = Vec::new();
                loop {
                    let size = self.line().await;
                    let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
                    let data = self.take(size + 2).await;
                    if size == 0 {
                        break;
                    }
                    body.extend_from_slice(&data[..size]);
                }
                body
            }
        };
        let json = serde_json::from_slice(&body).expect("a JSON answer");
        (status, head, json)
    }

    /// True when nothing, not even a close, arrives for `d`.
    async fn quiet_for(&mut self, d: Duration) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(d, self.stream.read(&mut byte))
            .await
            .is_err()
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_keep_alive_connection_serves_on_after_its_release() {
    let (_entra, up, p) = start_ado("").await;
    let mut c = Raw::connect(p.addr).await;

    c.send(get("/ado/one").as_bytes()).await;
    let (status, head, body) = c.answer().await;
    assert_eq!((status, body["path"].as_str()), (200, Some("/one")));
    assert!(!head.contains("connection: close"), "{head}");

    // Parked; the next request on the same connection.
    assert!(c.quiet_for(PAST_RELEASE).await, "nothing sent, not closed");
    c.send(get("/ado/two").as_bytes()).await;
    let (status, head, body) = c.answer().await;
    assert_eq!((status, body["path"].as_str()), (200, Some("/two")));
    assert!(!head.contains("connection: close"), "{head}");

    // A body, after the next release.
    assert!(c.quiet_for(PAST_RELEASE).await);
    let payload = vec![b'x'; 100_000];
    c.send(
        format!(
            "POST /ado/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        )
        .as_bytes(),
    )
    .await;
    c.send(&payload).await;
    let (status, _, body) = c.answer().await;
    assert_eq!((status, body["len"].as_u64()), (200, Some(100_000)));

    // A pipelined pair arriving at a parked connection: both answered, in order.
    assert!(c.quiet_for(PAST_RELEASE).await);
    c.send(format!("{}{}", get("/ado/three"), get("/ado/four")).as_bytes())
        .await;
    for want in ["/three", "/four"] {
        let (status, _, body) = c.answer().await;
        assert_eq!((status, body["path"].as_str()), (200, Some(want)));
    }
    assert_eq!(up.accepted(), 5, "each request reached the upstream once");
}
