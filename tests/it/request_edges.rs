//! Edges of a request's road that the other modules do not reach, each end to end through
//! patless (docs/errors.md for the answers):
//!
//! - `Expect: 100-continue`: the client gets `100 Continue` only when patless is about to read
//!   the body, the upstream gets the whole body and no `Expect`; an early answer comes without
//!   `100 Continue` and ends the connection cleanly;
//! - a request waiting for a token while the acquisition hangs: `503 token_unavailable` with
//!   `Retry-After` after `server.token_wait_timeout`, nothing sent upstream, and the token that
//!   arrives later serves the next request;
//! - a replayable body (a `Content-Length` ≤ 1 MiB, read before sending) that breaks off: nothing
//!   reaches the upstream, not even a partial request;
//! - a `Location` rewritten onto a route whose upstream has a base path, and one outside it;
//! - hop-by-hop headers in an answer (the fixed ones and those `Connection` names) dropped, the
//!   end-to-end ones kept.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::support;
use crate::support::entra::{FakeEntra, Fault, ADO_AUDIENCE};
use crate::support::patless::{config, metric, start_ado, Patless, ADO};
use crate::support::raw::{Answer, Raw};
use crate::support::upstream::FakeUpstream;

/// How long a raw read waits before the test calls the answer missing.
const LIMIT: Duration = Duration::from_secs(10);

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ 0x5a).collect()
}

fn fnv_hex(data: &[u8]) -> String {
    format!("{:016x}", support::fnv1a(support::FNV_OFFSET, data))
}

/// `PUT {path}` with `Content-Length: {len}` and `Expect: 100-continue`, no body yet.
fn put_expecting_continue(path: &str, len: usize) -> String {
    format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Expect: 100-continue
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_then_the_whole_body_goes_upstream_without_expect() {
    let (_entra, up, p) = start_ado("").await;
    p.wait_ready().await;
    let mut c = Raw::connect(p.addr).await;
    // A body kept for a replay (read first) and one streamed (over 1 MiB), on one connection.
    let sizes = [64 * 1024, 2 * 1024 * 1024 + 7];
    for n in sizes {
        c.send(put_expecting_continue("/ado/upload", n).as_bytes())
            .await;
        let (status, head) = c.head().await.expect("an interim answer");
        assert_eq!(status, 100, "{n}: {head}");
        assert!(head.starts_with("http/1.1 100 continue"), "{n}: {head}");
        let body = payload(n);
        c.send(&body).await;
        let answer = c.answer().await.expect("the final answer");
        assert_eq!(answer.status, 200, "{n}: {answer:?}");
        let json = answer.json();
        assert_eq!(
            json["len"], n as u64,
            "{n}: the upstream read the whole body"
        );
        assert_eq!(json["fnv"], fnv_hex(&body), "{n}: intact");
    }
    // The connection is still usable: a plain request on it.
    c.send(b"GET /ado/after HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let answer = c.answer().await.expect("an answer on the same connection");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["path"], "/after");

    let seen = up.requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (rec, n) in seen.iter().zip(sizes) {
        assert!(rec.token_valid);
        assert_eq!(rec.body_len, n as u64);
        assert!(
            rec.headers.get("expect").is_none(),
            "Expect is between the client and patless: {:?}",
            rec.headers
        );
    }
}

/// An early answer to a request that waits for `100 Continue`: that answer and no `100`, with
/// `Connection: close`, and the connection then closed cleanly (the body the client still holds
/// is never read, so the connection cannot carry another request).
async fn early_answer_without_continue(p: &Patless, path: &str) -> Answer {
    let mut c = Raw::connect(p.addr).await;
    c.send(put_expecting_continue(path, 1000).as_bytes()).await;
    let answer = c.answer().await.expect("an answer");
    assert_ne!(answer.status, 100, "no 100 Continue before an early answer");
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert!(
        c.closed_cleanly().await,
        "{path}: the connection ends with the answer (FIN, nothing more)"
    );
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_expect_100_continue_comes_without_100_and_closes_the_connection() {
    // No route: 404 before any body is wanted.
    let (_entra, up, p) = start_ado("").await;
    p.wait_ready().await;
    let answer = early_answer_without_continue(&p, "/nowhere/upload").await;
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(answer.json()["error"], "no_route");
    assert!(up.requests().is_empty());

    // No token: 503 token_unavailable with Retry-After, before any body is wanted.
    let entra = FakeEntra::start().await;
    entra.set_fault(Some(Fault::InvalidClient));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start(&config(&entra, &[("/ado", &up.url(), ADO)], "", "")).await;
    let answer = early_answer_without_continue(&p, "/ado/upload").await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.json()["error"], "token_unavailable");
    assert!(answer.header("retry-after").is_some(), "{answer:?}");
    assert!(up.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// A token wait that runs out while the acquisition hangs
// ---------------------------------------------------------------------------------------------

/// On paused time: the fake Entra's silence and patless's wait are `tokio::time`, and loopback
/// I/O between in-process tasks is ready as soon as it is written, so the clock jumps only when
/// every task waits on a timer, and the wait is measured exactly.
#[tokio::test(start_paused = true)]
async fn a_token_wait_runs_out_while_entra_hangs_and_the_late_token_serves_the_next_request() {
    const WAIT: Duration = Duration::from_secs(2);
    const ENTRA_SILENT: Duration = Duration::from_secs(20);
    let entra = FakeEntra::start().await;
    // The first acquisition (the route's, at start) gets no answer for 20 s (within
    // `[entra] request_timeout`, 30 s: patless keeps waiting for it).
    entra.push_fault(Fault::Delay(ENTRA_SILENT));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start_on_test_clock(&config(
        &entra,
        &[("/ado", &up.url(), ADO)],
        "token_wait_timeout = \"2s\"",
        "",
    ))
    .await;
    let client = support::http_client();

    // Two requests, one after the other, each waits its 2 s for the acquisition in flight.
    for _ in 0..2 {
        let started = Instant::now();
        let resp = support::get(&client, p.url("/ado/org/_apis/projects")).await;
        let waited = started.elapsed();
        assert_eq!(resp.status(), 503);
        let retry_after: u64 = resp.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("Retry-After in seconds");
        assert!(retry_after >= 1, "{retry_after}");
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(body["error"], "token_unavailable");
        assert_eq!(body["route"], "/ado");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("still running after 2s"), "{message}");
        assert!(
            waited >= WAIT && waited < WAIT + Duration::from_millis(100),
            "answered after {waited:?}, not after the 2 s wait"
        );
    }
    assert!(up.requests().is_empty(), "nothing is sent without a token");
    assert_eq!(
        entra.token_requests(),
        1,
        "the waiting requests start no acquisition of their own"
    );

    // Entra answers at last: its token serves the next request at once.
    let asked = entra.requests()[0].at;
    tokio::time::sleep_until(asked + ENTRA_SILENT + Duration::from_millis(50)).await;
    let started = Instant::now();
    let resp = support::get(&client, p.url("/ado/org/_apis/projects")).await;
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(100), "no wait");
    assert_eq!(up.accepted(), 1);
    assert_eq!(entra.token_requests(), 1);
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, r#"patless_requests_total{route="/ado",status="503"}"#),
        2.0,
        "{m}"
    );
}

// ---------------------------------------------------------------------------------------------
// A replayable body that breaks off
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayable_body_that_breaks_off_never_reaches_the_upstream() {
    let (_entra, up, p) = start_ado("").await;
    p.wait_ready().await;
    let head = "PUT /ado/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n";

    // Half the body, then the client shuts its side (it can still read): `400 invalid_body` on
    // the route, and the connection ends (its framing is lost).
    let mut c = Raw::connect(p.addr).await;
    c.send(head.as_bytes()).await;
    c.send(&payload(500)).await;
    c.shut_writes().await;
    let answer = c
        .answer()
        .await
        .expect("an answer to a half-closed request");
    assert_eq!(answer.status, 400, "{answer:?}");
    let json = answer.json();
    assert_eq!(json["error"], "invalid_body");
    assert_eq!(json["route"], "/ado");
    assert!(
        c.closed_cleanly().await,
        "the connection ends after the answer"
    );

    // Half the body, then the client is gone altogether: the same refusal, counted, with no one
    // left to read it.
    let mut c = Raw::connect(p.addr).await;
    c.send(head.as_bytes()).await;
    c.send(&payload(500)).await;
    drop(c);
    let counted = r#"patless_requests_total{route="/ado",status="400"}"#;
    let began = Instant::now();
    while metric(&p.metrics().await, counted) < 2.0 {
        assert!(
            began.elapsed() < LIMIT,
            "the second refusal was never counted:\n{}",
            p.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert!(
        up.requests().is_empty(),
        "no partial request may reach the upstream: {:?}",
        up.requests()
    );
    let m = p.metrics().await;
    assert!(!m.contains("patless_upstream_errors_total{"), "{m}");
    // The route still serves whole bodies.
    let body = payload(1000);
    let resp = support::http_client()
        .put(p.url("/ado/upload"))
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let json: Value = resp.json().await.expect("JSON");
    assert_eq!(json["len"], 1000);
    assert_eq!(up.requests().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Location onto a route whose upstream has a base path
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_under_the_upstreams_base_path_is_rewritten_onto_the_route() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let base = format!("{}/base/path", up.url());
    let p = Patless::start(&config(&entra, &[("/ado", &base, ADO)], "", "")).await;
    let origin = up.url();
    let other = support::ClosedPort::new();
    let cases = [
        // Into the upstream under its base path: onto the route, absolute or relative.
        (
            format!("{origin}/base/path/next?x=1"),
            "/ado/next?x=1".to_string(),
        ),
        (format!("{origin}/base/path"), "/ado".to_string()),
        (format!("{origin}/base/path/"), "/ado/".to_string()),
        (format!("{origin}/base/path?q=1"), "/ado?q=1".to_string()),
        ("/base/path/x".to_string(), "/ado/x".to_string()),
        ("/base/path".to_string(), "/ado".to_string()),
        // Not under the base path on whole segments, or not the upstream's origin: no path of
        // the route, so passed on as the upstream sent it.
        ("/other".to_string(), "/other".to_string()),
        ("/base/pathology".to_string(), "/base/pathology".to_string()),
        (format!("{origin}/other"), format!("{origin}/other")),
        (
            format!("{}/base/path/x", other.url()),
            format!("{}/base/path/x", other.url()),
        ),
    ];
    let client = support::http_client();
    for (sent, want) in &cases {
        let path = format!(
            "/ado/redirect-to?to={}",
            url::form_urlencoded::byte_serialize(sent.as_bytes()).collect::<String>()
        );
        let resp = support::get(&client, p.url(&path)).await;
        assert_eq!(resp.status(), 302, "{sent}");
        assert_eq!(
            resp.headers().get("location").and_then(|v| v.to_str().ok()),
            Some(want.as_str()),
            "{sent}"
        );
    }
    // Every redirect was asked of the upstream under its base path, with the route's token.
    let seen = up.requests();
    assert_eq!(seen.len(), cases.len());
    assert!(seen
        .iter()
        .all(|r| r.token_valid && r.path_and_query.starts_with("/base/path/redirect-to?to=")));
}

// ---------------------------------------------------------------------------------------------
// Hop-by-hop headers in answers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_in_an_answer_stop_at_patless() {
    let (_entra, up, p) = start_ado("").await;
    // Raw, so that what patless writes is read as it is on the wire (a client library could
    // hide or consume `Connection` and `Keep-Alive`).
    let mut c = Raw::connect(p.addr).await;
    c.send(b"GET /ado/hop-by-hop HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let answer = c.answer().await.expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("x-end"), Some("kept"), "{answer:?}");
    assert_eq!(answer.header("x-upstream"), Some("fake"), "{answer:?}");
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "upgrade",
    ] {
        assert_eq!(answer.header(hop), None, "{hop}: {answer:?}");
    }
    // The connection is still the client's to reuse.
    c.send(b"GET /ado/after HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    assert_eq!(c.answer().await.expect("a second answer").status, 200);
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.token_valid));
}
