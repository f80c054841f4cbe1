//! A raw HTTP/1.1 client connection for the tests that must see the wire: interim answers,
//! pipelining, a connection closed or kept quiet.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a read waits before the test calls the answer missing.
const LIMIT: Duration = Duration::from_secs(10);

/// One raw HTTP/1.1 client connection, reading answers head by head.
pub struct Raw {
    stream: TcpStream,
    /// Bytes read past the last head or body handed out.
    buf: Vec<u8>,
}

/// One answer as read off the wire.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The head, lower-cased.
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more into `buf`; `false` at EOF (or a reset).
    pub async fn fill(&mut self) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        match tokio::time::timeout(LIMIT, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("nothing more came within {LIMIT:?}"),
        }
    }

    /// The next head (status line and headers, lower-cased); `None` when the connection ended
    /// before one was complete.
    pub async fn head(&mut self) -> Option<(u16, String)> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                self.buf.drain(..end + 4);
                let status = head.get(9..12)?.parse().ok()?;
                return Some((status, head));
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Exactly `n` bytes.
    pub async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "the connection ended mid-body");
        }
        self.buf.drain(..n).collect()
    }

    /// One line (without its CRLF).
    pub async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return line;
            }
            assert!(self.fill().await, "the connection ended mid-line");
        }
    }

    /// The next final answer (an interim `1xx` is an error here), body framed by `Content-Length`
    /// or chunked.
    pub async fn answer(&mut self) -> Option<Answer> {
        let (status, head) = self.head().await?;
        let mut answer = Answer {
            status,
            head,
            body: Vec::new(),
        };
        if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = self.line().await;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                    .expect("chunk size");
                let data = self.take(size + 2).await;
                if size == 0 {
                    break;
                }
                answer.body.extend_from_slice(&data[..size]);
            }
        } else if let Some(n) = answer.header("content-length") {
            let n = n.parse().expect("content-length");
            answer.body = self.take(n).await;
        }
        Some(answer)
    }

    /// Whether the peer closes the connection (a clean EOF, not a reset) with nothing more sent;
    /// panics when it neither closes nor sends within [`LIMIT`].
    pub async fn closed_cleanly(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(LIMIT, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) => self.buf.is_empty(),
            Ok(Ok(_)) | Ok(Err(_)) => false,
            Err(_) => panic!("the connection stayed open"),
        }
    }

    /// Shuts the client's sending side (it can still read).
    pub async fn shut_writes(&mut self) {
        self.stream.shutdown().await.expect("shutdown");
    }

    /// True when nothing, not even a close, arrives for `d`.
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(d, self.stream.read(&mut byte))
            .await
            .is_err()
    }
}
