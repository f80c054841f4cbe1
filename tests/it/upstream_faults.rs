//! Upstreams failing under the proxy (issue 6, part B), each counted in
//! `patless_upstream_errors_total{route,kind}`: refused (`502 upstream_unreachable`), silent
//! past `server.response_header_timeout` (`504 upstream_timeout`), reset mid-answer (the client's
//! connection is cut, so a short body never passes for a complete 200), and a client that goes
//! away mid-download or mid-upload (the upstream request is cancelled, not left running). After
//! every fault the pooled upstream connections recover: the next request succeeds.
//!
//! The upstream is a raw-TCP [`FaultServer`] scripted per request; Entra is the fake Entra, so
//! every forwarded request carries a real token.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support;
use crate::support::entra::FakeEntra;
use crate::support::faults::{self, Action, End, FaultServer, Framing, Reply};
use crate::support::patless::{Patless, ADO};

/// How long an upstream may take to notice that patless dropped its request.
const NOTICE: Duration = Duration::from_secs(2);

/// The normal answer of the upstream once a fault has passed.
fn ok_reply() -> Action {
    Action::Reply(Reply::json(200, r#"{"ok":true}"#))
}

/// Entra, a scripted upstream behind route `/up`, and patless.
async fn setup(server_extra: &str) -> (FakeEntra, FaultServer, Patless) {
    let entra = FakeEntra::start().await;
    let up = FaultServer::start(ok_reply()).await;
    let p = Patless::start(&faults::config(
        &entra.authority(),
        &[("/up", &up.url(), ADO)],
        server_extra,
        "",
    ))
    .await;
    (entra, up, p)
}

/// `patless_upstream_errors_total{kind,route="/up"}`.
fn upstream_errors(metrics: &str, kind: &str) -> u64 {
    let prefix = format!(r#"patless_upstream_errors_total{{kind="{kind}",route="/up"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("counter"))
}

/// A normal request through the same route succeeds (on a new or pooled upstream connection),
/// with the profile's token.
async fn expect_recovered(p: &Patless, up: &FaultServer, entra: &FakeEntra) {
    let r = p.get("/up/again").await;
    assert_eq!(r.status(), 200, "the upstream pool recovers");
    assert_eq!(r.json::<Value>().await.expect("json")["ok"], true);
    let last = up.received().pop().expect("a request");
    assert_eq!(last.target, "/again");
    let auth = last.header("authorization").expect("authorization");
    assert!(
        entra
            .issued_tokens()
            .iter()
            .any(|t| auth == format!("Bearer {t}")),
        "forwarded with the profile's token"
    );
}

/// A raw request; `extra` goes after the headers (a body, or its start).
async fn raw_request(p: &Patless, head: &str, extra: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(extra).await.expect("write body");
    s
}

/// Reads until the connection ends (EOF or an error), at most `limit`; `None` when it did not end.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| out)
}

/// Splits an answer into (status, lower-cased head, body bytes).
fn split_answer(answer: &[u8]) -> (u16, String, Vec<u8>) {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let status = head[9..12].parse().expect("status");
    (status, head, answer[end + 4..].to_vec())
}

/// Decodes a chunked body: (data, whether the terminating chunk arrived).
fn dechunk(mut body: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return (data, false);
        };
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return (data, false);
        };
        body = &body[eol + 2..];
        if size == 0 {
            return (data, body.starts_with(b"\r\n"));
        }
        if body.len() < size + 2 {
            data.extend_from_slice(&body[..size.min(body.len())]);
            return (data, false);
        }
        data.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_502_upstream_unreachable() {
    let entra = FakeEntra::start().await;
    let closed = support::ClosedPort::new();
    let closed_url = closed.url();
    let p = Patless::start(&faults::config(
        &entra.authority(),
        &[("/up", &closed_url, ADO)],
        "",
        "",
    ))
    .await;
    let client = support::http_client();
    for _ in 0..2 {
        let r = support::get(&client, p.url("/up/x")).await;
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"], "upstream_unreachable");
        assert_eq!(body["route"], "/up");
        let msg = body["message"].as_str().expect("message");
        assert!(msg.to_ascii_lowercase().contains("refused"), "{msg}");
    }
    let m = p.metrics().await;
    assert_eq!(upstream_errors(&m, "connect"), 2, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_response_headers_are_504_and_the_upstream_request_is_dropped() {
    let (entra, up, p) = setup("response_header_timeout = \"300ms\"").await;
    // One answer that would come after 10 s, one that never comes.
    up.push(Action::Reply(
        Reply::json(200, r#"{"late":true}"#).after(Duration::from_secs(10)),
    ));
    up.push(Action::Hang);
    let client = support::http_client();
    for n in 0..2 {
        let started = std::time::Instant::now();
        let r = support::get(&client, p.url("/up/slow")).await;
        assert_eq!(r.status(), 504);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"], "upstream_timeout");
        assert_eq!(body["route"], "/up");
        assert!(started.elapsed() < Duration::from_secs(3));
        // patless hung up on the upstream: it does not keep waiting on a request nobody wants.
        let gone = up.wait_dropped(n, NOTICE).await;
        assert!(gone.is_some(), "the upstream still holds request {n}");
    }
    let m = p.metrics().await;
    assert_eq!(upstream_errors(&m, "timeout"), 2, "{m}");
    expect_recovered(&p, &up, &entra).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_answer_cuts_the_clients_connection_never_a_clean_short_200() {
    const TOTAL: u64 = 1024 * 1024;
    const SENT: u64 = 64 * 1024;
    let (entra, up, p) = setup("").await;
    let get = "GET /up/download HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

    // Content-Length framing: the client gets fewer bytes than announced, then the end.
    up.push(Action::Truncated {
        framing: Framing::ContentLength,
        total: TOTAL,
        sent: SENT,
        end: End::Reset,
    });
    let mut s = raw_request(&p, get, b"").await;
    let answer = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("patless closes the client's connection");
    let (status, head, body) = split_answer(&answer);
    assert_eq!(status, 200);
    assert!(head.contains(&format!("content-length: {TOTAL}")), "{head}");
    assert!(
        (body.len() as u64) < TOTAL,
        "a short body must not look complete"
    );
    assert_eq!(
        body.len() as u64,
        SENT,
        "what the upstream sent came through"
    );

    // Chunked framing: chunks, then the end without the last chunk.
    up.push(Action::Truncated {
        framing: Framing::Chunked,
        total: 0,
        sent: SENT,
        end: End::Reset,
    });
    let mut s = raw_request(&p, get, b"").await;
    let answer = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("patless closes the client's connection");
    let (status, head, body) = split_answer(&answer);
    assert_eq!(status, 200);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let (data, complete) = dechunk(&body);
    assert!(!complete, "the terminating chunk must not be sent");
    assert_eq!(data.len() as u64, SENT);

    // What an HTTP client makes of it (a FIN this time): an error, not a body.
    up.push(Action::Truncated {
        framing: Framing::ContentLength,
        total: TOTAL,
        sent: SENT,
        end: End::Close,
    });
    let r = p.get("/up/download").await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "reading the body must fail");
    expect_recovered(&p, &up, &entra).await;
}

// `proxy::body::CountedBody` wraps every upstream answer body (src/proxy/mod.rs, step 8): a failure
// after the headers is counted as kind `body`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_broken_off_mid_answer_is_counted_as_kind_body() {
    let (entra, up, p) = setup("").await;
    let client = support::http_client();
    for (framing, end) in [
        (Framing::ContentLength, End::Reset),
        (Framing::Chunked, End::Reset),
        (Framing::ContentLength, End::Close),
        (Framing::Chunked, End::Close),
    ] {
        up.push(Action::Truncated {
            framing,
            total: 256 * 1024,
            sent: 16 * 1024,
            end,
        });
        let r = support::get(&client, p.url("/up/download")).await;
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.is_err(), "{framing:?} {end:?}: incomplete");
    }
    // A complete answer is not an error.
    let r = support::get(&client, p.url("/up/fine")).await;
    assert_eq!(
        r.bytes().await.expect("complete").as_ref(),
        br#"{"ok":true}"#
    );
    let m = p.metrics().await;
    assert_eq!(upstream_errors(&m, "body"), 4, "{m}");
    assert_eq!(upstream_errors(&m, "protocol"), 0, "{m}");
    expect_recovered(&p, &up, &entra).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_download_cancels_the_upstream_request() {
    let (entra, up, p) = setup("").await;
    up.push(Action::Endless {
        chunk: 16 * 1024,
        every: Duration::from_millis(5),
    });
    let mut s = raw_request(
        &p,
        "GET /up/endless HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"",
    )
    .await;
    // Read the head and some of the stream, then hang up.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < 256 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the stream flows")
            .expect("read");
        assert!(n > 0, "the stream ended early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(up.dropped().is_empty(), "still streaming");
    drop(s);
    let hung_up = std::time::Instant::now();
    let gone = up
        .wait_dropped(0, NOTICE)
        .await
        .expect("the upstream request is cancelled when the client goes");
    assert_eq!(gone.during, "endless");
    assert!(gone.at.duration_since(hung_up) < NOTICE);
    // The client left; the upstream did not fail: not an upstream error.
    let m = p.metrics().await;
    assert_eq!(upstream_errors(&m, "body"), 0, "{m}");
    expect_recovered(&p, &up, &entra).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_upload_cancels_the_upstream_request() {
    // Larger than the replay buffer (1 MiB), so it streams.
    const DECLARED: u64 = 8 * 1024 * 1024;
    const SENT: usize = 2 * 1024 * 1024;
    let (entra, up, p) = setup("").await;
    up.push(Action::Drain);
    let head = format!(
        "POST /up/upload HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/octet-stream\r\ncontent-length: {DECLARED}\r\n\r\n"
    );
    let part: Vec<u8> = (0..SENT as u64).map(support::pattern_byte).collect();
    let s = tokio::time::timeout(Duration::from_secs(5), raw_request(&p, &head, &part))
        .await
        .expect("the upload flows");
    // Wait until the upload is streaming through to the upstream.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while up.body_bytes() < 64 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream received {} bytes",
            up.body_bytes()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(up.dropped().is_empty(), "still uploading");
    drop(s);
    let hung_up = std::time::Instant::now();
    let gone = up
        .wait_dropped(0, NOTICE)
        .await
        .expect("the upstream request is cancelled when the client goes");
    assert_eq!(gone.during, "drain");
    assert!(gone.bytes < DECLARED, "the body was cut, not completed");
    assert!(gone.bytes <= SENT as u64);
    assert!(gone.at.duration_since(hung_up) < NOTICE);
    expect_recovered(&p, &up, &entra).await;
}

/// An upstream's response head is bounded (`proxy::UPSTREAM_MAX_HEAD`, 256 KiB): a large but
/// sane head (192 KiB of headers) passes whole; one over the bound is a
/// `502 upstream_unreachable` counted as `protocol`, never a truncated answer, and the route
/// keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_head_over_256_kib_is_502_and_a_large_one_passes() {
    let (entra, up, p) = setup("").await;
    let client = support::http_client();
    // `count` header lines of `kib` KiB each (under hyper's 100-header limit either way).
    let with_headers = |count: usize, kib: usize| {
        let mut reply = Reply::json(200, r#"{"big":true}"#);
        for i in 0..count {
            reply = reply.header(&format!("x-bulk-{i:04}"), "v".repeat(kib * 1024 - 18));
        }
        Action::Reply(reply)
    };
    up.push(with_headers(48, 4));
    let r = support::get(&client, p.url("/up/large")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .keys()
            .filter(|k| k.as_str().starts_with("x-bulk-"))
            .count(),
        48
    );
    assert_eq!(r.text().await.expect("body"), r#"{"big":true}"#);

    up.push(with_headers(90, 8));
    let r = support::get(&client, p.url("/up/huge")).await;
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "upstream_unreachable");
    assert_eq!(body["route"], "/up");
    let m = p.metrics().await;
    assert_eq!(upstream_errors(&m, "protocol"), 1, "{m}");
    expect_recovered(&p, &up, &entra).await;
}
