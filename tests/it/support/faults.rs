//! Fault servers over raw TCP, for the faults a well-behaved hyper server will not commit on
//! purpose (tests/it/entra_faults.rs, tests/it/upstream_faults.rs).
//!
//! - [`Blackhole`]: a listener whose accept backlog is full and never drained, so the SYN of a
//!   new connection is dropped and `connect` hangs (a firewall that drops packets).
//! - [`FaultServer`]: HTTP/1.1 by hand, answering each request with a scripted [`Action`]
//!   (queued one-shot actions first, then the sticky fallback): a reply (after a `tokio::time`
//!   delay, so paused-time tests control it), an RST after reading the request, silence, a body
//!   cut short, an endless stream, or an upload drained to its end. It records every request
//!   (arrival on the tokio clock), the requests in flight and their peak, and every peer that went
//!   away before the action was done ([`Dropped`]).
//!
//! Request bodies are framed by `Content-Length` only (what reqwest's forms and hyper's
//! forwarding of a sized body send); a chunked request body is not read.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::{lock, AbortOnDrop};

/// A config like [`super::patless::config`] (profile `bot`, the fake Entra's app and secret),
/// with Entra at `authority` and `entra_extra` inside `[entra]` (say `request_timeout = "…"`).
pub fn config(
    authority: &str,
    routes: &[(&str, &str, &str)],
    server_extra: &str,
    entra_extra: &str,
) -> String {
    let server = format!("shutdown_grace = \"5s\"\n{server_extra}");
    super::patless::bot_config(authority, routes, &server, entra_extra)
}

/// A loopback listener that completes no new handshake: its accept queue (backlog 0) is filled
/// by connections nobody accepts, so Linux drops further SYNs and `connect` hangs until the
/// client's connect timeout.
pub struct Blackhole {
    addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    /// Binds, fills the backlog and checks that a new connect now hangs (real time: ~0.3 s).
    pub async fn start() -> Blackhole {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind 127.0.0.1:0");
        let listener = socket.listen(0).expect("listen");
        let addr = listener.local_addr().expect("local_addr");
        let mut fillers = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => fillers.push(s),
                Ok(Err(e)) => panic!("connect to the black hole failed outright: {e}"),
                // This connect hung: the backlog is full.
                Err(_) => break,
            }
            assert!(
                fillers.len() <= 64,
                "the accept backlog never filled: cannot make a black hole here"
            );
        }
        Blackhole {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// How a [`Action::Truncated`] body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: total`, then fewer bytes.
    ContentLength,
    /// `Transfer-Encoding: chunked`, then chunks and no terminating chunk.
    Chunked,
}

/// What ends a cut-short answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// RST (SO_LINGER 0).
    Reset,
    /// FIN.
    Close,
    /// Nothing: the connection stays open and silent.
    Hang,
}

/// A complete HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers besides `Content-Length`.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Time (tokio clock) between reading the request and answering.
    pub delay: Duration,
}

impl Reply {
    /// `status` with an `application/json` body.
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: vec![(
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: body.into().into_bytes(),
            delay: Duration::ZERO,
        }
    }

    /// `status` with a `text/html` body.
    pub fn html(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
            body: body.into().into_bytes(),
            delay: Duration::ZERO,
        }
    }

    /// A successful Entra token answer for `audience`, a token of the fake Entra's default app
    /// (the profile `bot` of [`config`]) signed as the fake Entra signs, so the fake upstream,
    /// which expects that app by default, accepts it.
    pub fn token(audience: &str, lifetime_secs: u64) -> Reply {
        let token = super::entra::mint_token(audience, lifetime_secs);
        Reply::json(
            200,
            serde_json::json!({
                "token_type": "Bearer",
                "expires_in": lifetime_secs,
                "ext_expires_in": lifetime_secs,
                "access_token": token,
            })
            .to_string(),
        )
    }

    /// An Entra-shaped error body.
    pub fn entra_error(status: u16, error: &str, code: u32) -> Reply {
        Reply::json(
            status,
            serde_json::json!({
                "error": error,
                "error_description": format!("AADSTS{code}: scripted failure. Trace ID: 0 Correlation ID: 0"),
                "error_codes": [code],
            })
            .to_string(),
        )
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Answers after `delay` (tokio clock).
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Reads the request, answers, keeps the connection for the next one.
    Reply(Reply),
    /// Reads the request, then closes with RST (SO_LINGER 0).
    Reset,
    /// Reads the request, then closes with FIN, no answer.
    Close,
    /// Reads the request and never answers; records the peer going away.
    Hang,
    /// A 200 head announcing `total` body bytes (or chunked), `sent` of them, then `end`.
    Truncated {
        framing: Framing,
        total: u64,
        sent: u64,
        end: End,
    },
    /// A 200 chunked body without end: `chunk` bytes every `every` (tokio clock) until the peer
    /// goes away (recorded with the bytes sent).
    Endless { chunk: usize, every: Duration },
    /// Reads the request body as it comes (counting [`FaultServer::body_bytes`]); at its end
    /// answers 200 `{"len": n}`, or records the peer going away before.
    Drain,
}

/// A peer that went away before an action was done.
#[derive(Debug, Clone)]
pub struct Dropped {
    /// Real time at which the server noticed.
    pub at: std::time::Instant,
    /// Body bytes sent (Endless, Truncated) or received (Drain) by then.
    pub bytes: u64,
    /// Which action: `hang`, `reply`, `endless`, `drain`.
    pub during: &'static str,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Arrival on the tokio clock (virtual in paused-time tests).
    pub at: tokio::time::Instant,
    /// `POST`, `GET`, …
    #[allow(dead_code)] // shown by `{:?}` when a test fails
    pub method: String,
    /// Request target.
    pub target: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, when the action read it whole (not `Drain`).
    #[allow(dead_code)] // shown by `{:?}` when a test fails
    pub body: Vec<u8>,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    script: Mutex<VecDeque<Action>>,
    fallback: Mutex<Action>,
    received: Mutex<Vec<Received>>,
    dropped: Mutex<Vec<Dropped>>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    body_bytes: AtomicU64,
}

/// The scripted raw HTTP/1.1 server; stops (dropping every connection) when dropped.
pub struct FaultServer {
    addr: SocketAddr,
    state: Arc<State>,
    _server: AbortOnDrop,
}

impl FaultServer {
    /// Starts on `127.0.0.1:0`, answering every request with `fallback` unless one-shot actions
    /// are queued.
    pub async fn start(fallback: Action) -> FaultServer {
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            script: Mutex::new(VecDeque::new()),
            fallback: Mutex::new(fallback),
            received: Mutex::new(Vec::new()),
            dropped: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            body_bytes: AtomicU64::new(0),
        });
        let st = Arc::clone(&state);
        let server = super::accept_each(listener, move |stream| {
            let _ = stream.set_nodelay(true);
            connection(Arc::clone(&st), stream)
        });
        FaultServer {
            addr,
            state,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a one-shot action (FIFO, before the fallback).
    pub fn push(&self, action: Action) {
        lock(&self.state.script).push_back(action);
    }

    /// Replaces the fallback action.
    pub fn set(&self, action: Action) {
        *lock(&self.state.fallback) = action;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    /// Number of requests so far.
    pub fn requests(&self) -> usize {
        lock(&self.state.received).len()
    }

    /// Requests whose action is not done yet.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests ever in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.state.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Request body bytes received by `Drain` actions so far.
    pub fn body_bytes(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    /// Peers that went away mid-action, in order.
    pub fn dropped(&self) -> Vec<Dropped> {
        lock(&self.state.dropped).clone()
    }

    /// Waits (real time, at most `limit`) for the next peer to go away mid-action, after the
    /// `seen` already recorded.
    pub async fn wait_dropped(&self, seen: usize, limit: Duration) -> Option<Dropped> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(d) = lock(&self.state.dropped).get(seen) {
                return Some(d.clone());
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Decrements the in-flight count when the action ends, however it ends (abort included).
struct InFlight(Arc<State>);

impl InFlight {
    fn new(state: &Arc<State>) -> InFlight {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    content_length: u64,
    close: bool,
}

/// Reads one request head; `None` at EOF or on garbage. Bytes after the head stay in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Head> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = text.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let method = first.next()?.to_string();
            let target = first.next()?.to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let get = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            };
            let content_length = get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            return Some(Head {
                method,
                target,
                headers,
                content_length,
                close,
            });
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads the rest of a `len`-byte body (some may be in `buf` already).
async fn read_body(stream: &mut TcpStream, buf: &mut Vec<u8>, len: u64) -> Option<Vec<u8>> {
    let len = len as usize;
    while buf.len() < len {
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(buf.drain(..len).collect())
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

fn record_drop(state: &State, bytes: u64, during: &'static str) {
    lock(&state.dropped).push(Dropped {
        at: std::time::Instant::now(),
        bytes,
        during,
    });
}

/// Waits until the peer closes or resets (reading and discarding anything it sends).
async fn peer_gone(stream: &mut TcpStream) {
    let mut scratch = [0u8; 4096];
    loop {
        match stream.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn connection(state: Arc<State>, mut stream: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let _in_flight = InFlight::new(&state);
        let action = lock(&state.script)
            .pop_front()
            .unwrap_or_else(|| lock(&state.fallback).clone());
        let body = if matches!(action, Action::Drain) {
            Vec::new()
        } else {
            match read_body(&mut stream, &mut buf, head.content_length).await {
                Some(b) => b,
                None => return,
            }
        };
        lock(&state.received).push(Received {
            at: tokio::time::Instant::now(),
            method: head.method.clone(),
            target: head.target.clone(),
            headers: head.headers.clone(),
            body,
        });
        match action {
            Action::Reply(reply) => {
                if !reply.delay.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(reply.delay) => {}
                        _ = peer_gone(&mut stream) => {
                            record_drop(&state, 0, "reply");
                            return;
                        }
                    }
                }
                let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
                for (n, v) in &reply.headers {
                    out.push_str(&format!("{n}: {v}\r\n"));
                }
                out.push_str(&format!("content-length: {}\r\n", reply.body.len()));
                if head.close {
                    out.push_str("connection: close\r\n");
                }
                out.push_str("\r\n");
                let mut bytes = out.into_bytes();
                bytes.extend_from_slice(&reply.body);
                if stream.write_all(&bytes).await.is_err() || head.close {
                    return;
                }
            }
            Action::Reset => return reset(stream),
            Action::Close => return,
            Action::Hang => {
                peer_gone(&mut stream).await;
                record_drop(&state, 0, "hang");
                return;
            }
            Action::Truncated {
                framing,
                total,
                sent,
                end,
            } => {
                let mut out =
                    String::from("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n");
                match framing {
                    Framing::ContentLength => out.push_str(&format!("content-length: {total}\r\n")),
                    Framing::Chunked => out.push_str("transfer-encoding: chunked\r\n"),
                }
                out.push_str("\r\n");
                let mut bytes = out.into_bytes();
                let data: Vec<u8> = (0..sent).map(super::pattern_byte).collect();
                match framing {
                    Framing::ContentLength => bytes.extend_from_slice(&data),
                    Framing::Chunked => {
                        for piece in data.chunks(16 * 1024) {
                            bytes.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                            bytes.extend_from_slice(piece);
                            bytes.extend_from_slice(b"\r\n");
                        }
                    }
                }
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
                // Let the bytes leave before the RST discards what is still queued.
                tokio::time::sleep(Duration::from_millis(50)).await;
                match end {
                    End::Reset => return reset(stream),
                    End::Close => return,
                    End::Hang => {
                        peer_gone(&mut stream).await;
                        record_drop(&state, sent, "hang");
                        return;
                    }
                }
            }
            Action::Endless { chunk, every } => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    record_drop(&state, 0, "endless");
                    return;
                }
                let mut sent = 0u64;
                let piece: Vec<u8> = (0..chunk as u64).map(super::pattern_byte).collect();
                let mut framed = format!("{chunk:x}\r\n").into_bytes();
                framed.extend_from_slice(&piece);
                framed.extend_from_slice(b"\r\n");
                loop {
                    tokio::select! {
                        _ = peer_gone(&mut stream) => break,
                        _ = tokio::time::sleep(every) => {
                            if stream.write_all(&framed).await.is_err() {
                                break;
                            }
                            sent += chunk as u64;
                        }
                    }
                }
                record_drop(&state, sent, "endless");
                return;
            }
            Action::Drain => {
                let total = head.content_length;
                let mut got = buf.len().min(total as usize) as u64;
                buf.drain(..got as usize);
                state.body_bytes.fetch_add(got, Ordering::SeqCst);
                let mut chunk = vec![0u8; 64 * 1024];
                while got < total {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            record_drop(&state, got, "drain");
                            return;
                        }
                        Ok(n) => {
                            got += n as u64;
                            state.body_bytes.fetch_add(n as u64, Ordering::SeqCst);
                        }
                    }
                }
                let body = format!("{{\"len\":{got}}}");
                let out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}
