//! A connection's life over real sockets (`conn.rs`): parked before its first byte and after
//! [`RELEASE_AFTER`] of quiet, served by a new hyper connection when the client speaks again, on
//! the real clock (the release and the clocks are timers; the sockets are real).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn::{self, Rewind, Shared, RELEASE_AFTER};
use super::watchdog::ConnClock;
use super::{accept_loop, ConnServer, Listener};
use crate::config::{Limits, ListenAddr};

type Body = BoxBody<Bytes, Infallible>;
type Answer = Pin<Box<dyn Future<Output = hyper::Response<Body>> + Send>>;
type Handler = fn(hyper::Request<Incoming>) -> Answer;

/// `/slow`: answers after 800 ms. `/big/N`: N bytes at once. `/stream`: 5 chunks, 250 ms apart.
/// Anything else: `METHOD PATH BODY-LENGTH`.
fn handler(req: hyper::Request<Incoming>) -> Answer {
    Box::pin(async move {
        let path = req.uri().path().to_string();
        let full = |b: Vec<u8>| Full::new(Bytes::from(b)).boxed();
        let body = if path == "/slow" {
            tokio::time::sleep(Duration::from_millis(800)).await;
            full(b"slow".to_vec())
        } else if let Some(n) = path.strip_prefix("/big/") {
            full(pattern(n.parse().unwrap_or(0)))
        } else if path == "/stream" {
            let chunks = futures_util::stream::unfold(0u8, |i| async move {
                if i == 5 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                let frame = Frame::data(Bytes::from(vec![b'a' + i; 100]));
                Some((Ok::<_, Infallible>(frame), i + 1))
            });
            StreamBody::new(chunks).boxed()
        } else {
            let method = req.method().to_string();
            let n = match req.into_body().collect().await {
                Ok(b) => b.to_bytes().len(),
                Err(_) => usize::MAX,
            };
            full(format!("{method} {path} {n}").into_bytes())
        };
        hyper::Response::new(body)
    })
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn limits() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        ..Limits::default()
    }
}

/// A server on `127.0.0.1:0` with [`handler`].
struct Server {
    addr: SocketAddr,
    shared: Arc<Shared<Handler>>,
    stop: Option<tokio::sync::oneshot::Sender<Duration>>,
    done: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(limits: Limits) -> Server {
        let addr = ListenAddr::Tcp("127.0.0.1:0".parse().expect("addr"));
        let listener = Listener::bind(&addr, 0o600).await.expect("bind");
        let addr = listener.describe().parse().expect("bound address");
        let server = ConnServer::new(handler as Handler, limits, "test");
        let shared = Arc::clone(&server.shared);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let done = tokio::spawn(accept_loop(listener, server, async move {
            stopped.await.unwrap_or_default()
        }));
        Server {
            addr,
            shared,
            stop: Some(stop),
            done,
        }
    }

    /// Connections without a hyper connection now.
    fn parked(&self) -> usize {
        self.shared.parked.load(Ordering::Relaxed)
    }

    /// Waits up to 3 s for `n` parked connections.
    async fn wait_parked(&self, n: usize) {
        let until = Instant::now() + Duration::from_secs(3);
        while self.parked() != n {
            assert!(Instant::now() < until, "{} parked, not {n}", self.parked());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn connect(&self) -> Client {
        Client {
            s: TcpStream::connect(self.addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    /// Stops accepting and drains with `grace`; resolves when the server has stopped.
    async fn shut_down(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        tokio::time::timeout(grace + Duration::from_secs(2), &mut self.done)
            .await
            .expect("the server stops")
            .expect("server task");
    }
}

/// One answer: status, head (lower-cased), body.
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("send");
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.send(get(path).as_bytes()).await;
        self.reply().await
    }

    /// More bytes into `buf`; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no answer within 5 s"),
        }
    }

    async fn take_line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).to_string();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await, "closed mid-answer");
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "closed mid-body");
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one answer (Content-Length or chunked).
    async fn reply(&mut self) -> Reply {
        let status_line = self.take_line().await;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("status line: {status_line:?}"));
        let mut head = String::new();
        loop {
            let line = self.take_line().await.to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            head.push_str(&line);
            head.push('\n');
        }
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().expect("content-length"));
        let body = match len {
            Some(n) => self.take(n).await,
            None => {
                assert!(head.contains("transfer-encoding: chunked"), "{head}");
                let mut body = Vec::new();
                loop {
                    let size = self.take_line().await;
                    let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
                    body.extend(self.take(size).await);
                    assert_eq!(self.take_line().await, "");
                    if size == 0 {
                        break;
                    }
                }
                body
            }
        };
        Reply { status, head, body }
    }

    /// True when nothing arrives for `within` and the connection stays open.
    async fn silent_for(&mut self, within: Duration) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(within, self.s.read(&mut byte))
            .await
            .is_err()
    }

    /// Whether the server closes the connection within `within` (sending nothing more).
    async fn closed_within(&mut self, within: Duration) -> bool {
        let mut rest = Vec::new();
        match tokio::time::timeout(within, self.s.read_to_end(&mut rest)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {
                assert!(rest.is_empty(), "bytes before the close: {rest:?}");
                true
            }
            Err(_) => false,
        }
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).to_string()
}

/// Longer than the release delay, with room for the watchdog's look.
const PAST_RELEASE: Duration = RELEASE_AFTER.saturating_add(Duration::from_millis(300));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_served_by_hyper_only_while_it_has_something_to_serve() {
    let server = Server::start(limits()).await;
    let mut c = server.connect().await;
    // Before its first byte: parked.
    server.wait_parked(1).await;

    let first = c.get("/one").await;
    assert_eq!((first.status, text(&first)), (200, "GET /one 0".into()));
    assert!(!first.head.contains("connection: close"), "{}", first.head);
    assert_eq!(server.parked(), 0, "served by hyper right after its answer");

    // Quiet: released, and nothing is written to the client meanwhile.
    assert!(c.silent_for(PAST_RELEASE).await, "no byte, no close");
    assert_eq!(server.parked(), 1, "parked after RELEASE_AFTER of quiet");

    // The same TCP connection serves the next request: a new hyper connection.
    let second = c.get("/two").await;
    assert_eq!((second.status, text(&second)), (200, "GET /two 0".into()));
    assert!(
        !second.head.contains("connection: close"),
        "{}",
        second.head
    );
    // A request with a body, after another release.
    assert!(c.silent_for(PAST_RELEASE).await);
    server.wait_parked(1).await;
    c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let third = c.reply().await;
    assert_eq!((third.status, text(&third)), (200, "POST /up 5".into()));
    server.shut_down(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_after_a_release_are_all_answered_in_order() {
    let server = Server::start(limits()).await;
    let mut c = server.connect().await;
    assert_eq!(c.get("/first").await.status, 200);
    assert!(c.silent_for(PAST_RELEASE).await);
    server.wait_parked(1).await;
    // Three requests in one write, one with a body, arriving at a parked connection.
    c.send(
        format!(
            "{}POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz{}",
            get("/a"),
            get("/c")
        )
        .as_bytes(),
    )
    .await;
    for want in ["GET /a 0", "POST /b 3", "GET /c 0"] {
        let r = c.reply().await;
        assert_eq!((r.status, text(&r).as_str()), (200, want));
    }
    // And again across the next release, the second request split over two writes.
    assert!(c.silent_for(PAST_RELEASE).await);
    server.wait_parked(1).await;
    c.send(format!("{}GET /e HTTP/1.1\r\n", get("/d")).as_bytes())
        .await;
    let d = c.reply().await;
    assert_eq!(text(&d), "GET /d 0");
    c.send(b"Host: t\r\n\r\n").await;
    assert_eq!(text(&c.reply().await), "GET /e 0");
    server.shut_down(Duration::from_secs(1)).await;
}

/// Bytes hyper had read and not parsed when it let the connection go are read first by the next
/// hyper connection, before the socket's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_read_ahead_are_replayed_before_the_socket() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut client = Client {
        s: TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect"),
        buf: Vec::new(),
    };
    let (accepted, _) = listener.accept().await.expect("accept");
    let server = ConnServer::new(handler as Handler, limits(), "test");
    let (_stop, mut stop) = tokio::sync::watch::channel(());
    // Half of a request was read ahead; the rest, and a second request, come from the socket.
    let ahead = Bytes::from_static(b"GET /ahead HTTP/1.1\r\nHo");
    let io = Rewind::new(Box::new(accepted), ahead);
    let clock = ConnClock::new();
    let serving =
        tokio::spawn(async move { conn::serve(&server.shared, io, &clock, &mut stop).await });
    client
        .send(format!("st: t\r\n\r\n{}", get("/socket")).as_bytes())
        .await;
    assert_eq!(text(&client.reply().await), "GET /ahead 0");
    assert_eq!(text(&client.reply().await), "GET /socket 0");
    // Then released, with nothing read ahead.
    let parked = tokio::time::timeout(Duration::from_secs(3), serving)
        .await
        .expect("released")
        .expect("task");
    assert!(parked.is_some_and(|io| io.pending() == 0));
}

/// An answer that hyper has taken whole but the client has not read yet is not cut by a release:
/// the connection waits until hyper has flushed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_still_being_written_is_never_cut_by_a_release() {
    let server = Server::start(limits()).await;
    let mut c = server.connect().await;
    let n = 32 << 20;
    c.send(get(&format!("/big/{n}")).as_bytes()).await;
    // The client reads nothing for longer than the release delay: much of the 32 MiB waits in
    // hyper's write buffer, after the body (and so the request) has ended.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(server.parked(), 0, "not released with bytes unwritten");
    let r = c.reply().await;
    assert_eq!(r.status, 200);
    assert!(r.body == pattern(n), "the whole answer, intact");
    // Flushed, then released; the connection serves on.
    assert!(c.silent_for(PAST_RELEASE + Duration::from_secs(1)).await);
    assert_eq!(server.parked(), 1);
    assert_eq!(text(&c.get("/after").await), "GET /after 0");
    server.shut_down(Duration::from_secs(1)).await;
}

/// A response body that streams for longer than the release delay keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_is_not_released_midway() {
    let server = Server::start(limits()).await;
    let mut c = server.connect().await;
    let r = c.get("/stream").await;
    assert_eq!(r.body.len(), 500);
    assert_eq!(&r.body[..1], b"a");
    assert_eq!(&r.body[400..], &[b'e'; 100][..]);
    assert_eq!(text(&c.get("/next").await), "GET /next 0");
    server.shut_down(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_by_the_idle_timeout_from_its_last_answer() {
    let server = Server::start(Limits {
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(2500),
        ..Limits::default()
    })
    .await;
    let mut c = server.connect().await;
    assert_eq!(c.get("/one").await.status, 200);
    let answered = Instant::now();
    // Parked after a second; not closed then, nor by the head clock (it is not reading a head).
    assert!(c.silent_for(Duration::from_millis(1500)).await);
    assert_eq!(server.parked(), 1);
    assert!(c.closed_within(Duration::from_secs(3)).await);
    let after = answered.elapsed();
    assert!(
        after >= Duration::from_millis(2400) && after < Duration::from_millis(3300),
        "closed {after:?} after the answer; idle_timeout is 2.5 s"
    );
    server.wait_parked(0).await;
    server.shut_down(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_speaks_is_closed_by_the_head_clock_and_gives_back_its_slot() {
    let server = Server::start(Limits {
        header_read_timeout: Duration::from_millis(500),
        max_connections: 1,
        ..limits()
    })
    .await;
    let mut silent = server.connect().await;
    let opened = Instant::now();
    server.wait_parked(1).await;
    assert!(silent.closed_within(Duration::from_secs(3)).await);
    let after = opened.elapsed();
    assert!(
        after >= Duration::from_millis(450) && after < Duration::from_millis(1500),
        "closed {after:?} after opening; header_read_timeout is 500 ms"
    );
    // Its slot is free again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut next = server.connect().await;
    assert_eq!(text(&next.get("/next").await), "GET /next 0");
    server.shut_down(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_holds_its_slot() {
    let server = Server::start(Limits {
        max_connections: 1,
        ..limits()
    })
    .await;
    let mut kept = server.connect().await;
    assert_eq!(kept.get("/one").await.status, 200);
    assert!(kept.silent_for(PAST_RELEASE).await);
    assert_eq!(server.parked(), 1);
    let mut extra = server.connect().await;
    let refused = extra.reply().await;
    assert_eq!(refused.status, 503);
    assert!(text(&refused).contains("too_many_connections"));
    // Still served, and once it is closed the slot is free.
    assert_eq!(text(&kept.get("/two").await), "GET /two 0");
    drop(kept);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut next = server.connect().await;
    assert_eq!(text(&next.get("/three").await), "GET /three 0");
    server.shut_down(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_parked_connections_and_drains_served_ones() {
    let server = Server::start(limits()).await;
    // Parked after a request; parked before any; served, with a request in flight.
    let mut released = server.connect().await;
    assert_eq!(released.get("/one").await.status, 200);
    let mut fresh = server.connect().await;
    assert!(released.silent_for(PAST_RELEASE).await);
    server.wait_parked(2).await;
    let mut busy = server.connect().await;
    busy.send(get("/slow").as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let begun = Instant::now();
    let stopping = tokio::spawn(server.shut_down(Duration::from_secs(5)));
    assert!(released.closed_within(Duration::from_millis(500)).await);
    assert!(fresh.closed_within(Duration::from_millis(500)).await);
    let slow = busy.reply().await;
    assert_eq!((slow.status, text(&slow).as_str()), (200, "slow"));
    assert!(slow.head.contains("connection: close"), "{}", slow.head);
    assert!(busy.closed_within(Duration::from_millis(500)).await);
    stopping.await.expect("drained");
    assert!(
        begun.elapsed() < Duration::from_secs(2),
        "drained when the last request was answered, not at the grace"
    );
}
