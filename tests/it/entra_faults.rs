//! Entra failing in every way a network can make it fail (issue 6, part A). Each fault is seen
//! three ways, and all three must name the same class: the `result` label of
//! `patless_token_refreshes_total`, `/readyz`'s `last_error`, and the client's
//! `503 token_unavailable` message. Then the refresher itself: `Retry-After` holds off the next
//! attempt, backoff is bounded and jittered, one acquisition at a time, and 500 clients
//! hammering through an outage make a trickle of token requests that the backoff schedule
//! bounds — not a storm.
//!
//! Read timeouts and the other faults run on real time (with a short `[entra] request_timeout`
//! where it matters), with the proxy on worker threads as `serve` runs it; the connect timeout,
//! `Retry-After` and the storm run on paused time, with the proxy on the test's runtime
//! (`Patless::start_on_test_clock`: worker threads keep the real clock): the fakes' delays and the
//! refresher's sleeps are all `tokio::time`, and loopback I/O between in-process tasks is ready as
//! soon as it is written, so the clock only jumps when every task waits on a timer.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use patless::credentials::ErrorClass;
use patless::token::schedule::backoff;
use serde_json::Value;
use tokio::time::Instant;

use crate::support;
use crate::support::entra::{FakeEntra, Fault, ADO_AUDIENCE, CLIENT_SECRET};
use crate::support::faults::{self, Action, Blackhole, End, FaultServer, Framing, Reply};
use crate::support::patless::{Patless, ADO};
use crate::support::upstream::FakeUpstream;

/// Short enough to keep the timeout tests fast, long enough for a loaded CI machine's loopback.
const REQUEST_TIMEOUT: &str = "request_timeout = \"600ms\"";

/// What a client, `/readyz` and `/metrics` say while Entra fails, checked for one class; returns
/// the client's `Retry-After` seconds.
async fn expect_failure(p: &Patless, class: &str, needle: &str) -> u64 {
    let client = support::http_client();
    let r = support::get(&client, p.url("/ado/x")).await;
    assert_eq!(r.status(), 503, "{class}");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry >= 1, "{class}: Retry-After {retry}");
    let text = r.text().await.expect("body");
    assert!(!text.contains(CLIENT_SECRET), "{class}: the secret leaked");
    let body: Value = serde_json::from_str(&text).expect("JSON error");
    assert_eq!(body["error"], "token_unavailable", "{class}: {body}");
    assert_eq!(body["route"], "/ado");
    assert_eq!(body["profile"], "bot");
    let msg = body["message"].as_str().expect("message");
    assert!(msg.contains(needle), "{class}: client message: {msg}");

    let r = support::get(&client, p.admin_url("/readyz")).await;
    assert_eq!(r.status(), 503, "{class}: not ready without a token");
    let text = r.text().await.expect("body");
    assert!(!text.contains(CLIENT_SECRET), "{class}: the secret leaked");
    let ready: Value = serde_json::from_str(&text).expect("JSON readyz");
    let route = &ready["routes"][0];
    assert_eq!(route["route"], "/ado", "{ready}");
    assert_eq!(route["has_held_valid_token"], false, "{ready}");
    assert_eq!(route["last_error"]["class"], class, "{ready}");
    let ready_msg = route["last_error"]["message"].as_str().expect("message");
    assert!(
        ready_msg.contains(needle),
        "{class}: /readyz message: {ready_msg}"
    );

    let m = p.metrics().await;
    assert!(!m.contains(CLIENT_SECRET), "{class}: the secret leaked");
    assert_eq!(
        refresh_results(&m),
        BTreeSet::from([class.to_string()]),
        "{class}: every attempt so far has this class"
    );
    retry
}

/// The `result` labels of `patless_token_refreshes_total{profile="bot"}` with a non-zero count.
fn refresh_results(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(r#"patless_token_refreshes_total{profile="bot",result=""#))
        .filter_map(|rest| rest.split_once("\"} "))
        .filter(|(_, n)| n.trim() != "0")
        .map(|(result, _)| result.to_string())
        .collect()
}

/// `patless_token_refreshes_total{profile="bot",result}`.
fn refresh_count(metrics: &str, result: &str) -> u64 {
    let prefix = format!(r#"patless_token_refreshes_total{{profile="bot",result="{result}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("counter"))
}

/// Patless with Entra at `authority` and one route `/ado` to `upstream`, the proxy on worker
/// threads as `serve` runs it.
async fn patless(authority: &str, upstream: &str, entra_extra: &str) -> Patless {
    Patless::start(&faults_config(authority, upstream, entra_extra)).await
}

/// [`patless`] for the tests on paused time: the proxy on the test's runtime, so that its clock
/// (the `Retry-After` left, the waits for a token) is the one the test controls.
async fn patless_on_test_clock(authority: &str, upstream: &str) -> Patless {
    Patless::start_on_test_clock(&faults_config(authority, upstream, "")).await
}

fn faults_config(authority: &str, upstream: &str, entra_extra: &str) -> String {
    faults::config(authority, &[("/ado", upstream, ADO)], "", entra_extra)
}

/// Once Entra answers again, the refresher's next attempt succeeds and requests pass (real time).
async fn expect_recovery(p: &Patless, up: &FakeUpstream) {
    let client = support::http_client();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = support::get(&client, p.url("/ado/after")).await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up.rejected(), 0, "nothing forwarded without a valid token");
    let ready = support::get(&client, p.admin_url("/readyz")).await;
    assert_eq!(ready.status(), 200);
    assert!(refresh_count(&p.metrics().await, "success") >= 1);
}

#[tokio::test]
async fn connect_timeout_to_a_black_hole_is_timeout() {
    // The black hole is made on real time; then the clock stops, and the connect timeout
    // (`[entra] request_timeout`, 30 s by default, capped at 10 s for connecting) passes in
    // virtual time. A dropped SYN leaves nothing in flight that the jump could overtake.
    let hole = Blackhole::start().await;
    tokio::time::pause();
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = patless_on_test_clock(&hole.url(), &up.url()).await;
    let started = Instant::now();
    expect_failure(&p, "timeout", "timed out connecting to Entra").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(11),
        "the 10-s connect timeout, not the 30-s request timeout, ended the attempt: {took:?}"
    );
    assert!(up.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_a_read_timeout() {
    let entra = FaultServer::start(Action::Hang).await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = patless(&entra.url(), &up.url(), REQUEST_TIMEOUT).await;
    expect_failure(&p, "timeout", "Entra did not answer in time").await;
    assert!(entra.requests() >= 1, "the request reached the server");
    // patless gave up on the connection rather than leave it hanging.
    let gone = entra.wait_dropped(0, Duration::from_secs(3)).await;
    assert_eq!(
        gone.expect("connection dropped after the timeout").during,
        "hang"
    );
    entra.set(Action::Reply(Reply::token(ADO_AUDIENCE, 3599)));
    expect_recovery(&p, &up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_a_read_timeout() {
    let entra = FaultServer::start(Action::Truncated {
        framing: Framing::ContentLength,
        total: 400,
        sent: 20,
        end: End::Hang,
    })
    .await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = patless(&entra.url(), &up.url(), REQUEST_TIMEOUT).await;
    expect_failure(&p, "timeout", "Entra did not answer in time").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_is_network() {
    let entra = FaultServer::start(Action::Reset).await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = patless(&entra.url(), &up.url(), "").await;
    expect_failure(&p, "network", "broke before a complete answer").await;
    let m = p.metrics().await;
    let client = support::http_client();
    let msg = support::get(&client, p.url("/ado/x"))
        .await
        .json::<Value>()
        .await
        .expect("json")["message"]
        .as_str()
        .expect("message")
        .to_ascii_lowercase();
    assert!(msg.contains("reset"), "the cause is named: {msg}");
    assert!(refresh_count(&m, "network") >= 1);
    entra.set(Action::Reply(Reply::token(ADO_AUDIENCE, 3599)));
    expect_recovery(&p, &up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_without_an_answer_or_mid_body_is_network() {
    for action in [
        Action::Close,
        Action::Truncated {
            framing: Framing::ContentLength,
            total: 400,
            sent: 20,
            end: End::Reset,
        },
        Action::Truncated {
            framing: Framing::Chunked,
            total: 0,
            sent: 20,
            end: End::Close,
        },
    ] {
        let entra = FaultServer::start(action.clone()).await;
        let up = FakeUpstream::start(ADO_AUDIENCE).await;
        let p = patless(&entra.url(), &up.url(), "").await;
        expect_failure(&p, "network", "broke before a complete answer").await;
        drop(p);
        drop(entra);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_server_error() {
    // Entra's own 500 (a JSON error body) …
    let entra = FakeEntra::start().await;
    entra.set_fault(Some(Fault::ServerError));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = patless(&entra.authority(), &up.url(), "").await;
    expect_failure(&p, "server_error", "HTTP 500").await;
    entra.set_fault(None);
    expect_recovery(&p, &up).await;

    // … and a bare 503 from a load balancer in front of it.
    let lb = FaultServer::start(Action::Reply(Reply::json(503, ""))).await;
    let p = patless(&lb.url(), &up.url(), "").await;
    expect_failure(&p, "server_error", "HTTP 503").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_on_200_is_bad_response() {
    let entra = FakeEntra::start().await;
    entra.set_fault(Some(Fault::MalformedJson));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = patless(&entra.authority(), &up.url(), "").await;
    expect_failure(&p, "bad_response", "not a token response").await;
    entra.set_fault(None);
    expect_recovery(&p, &up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_page_is_bad_response_whatever_its_status() {
    // A 502 page from a broken intermediary.
    let entra = FakeEntra::start().await;
    entra.set_fault(Some(Fault::HtmlPage));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = patless(&entra.authority(), &up.url(), "").await;
    expect_failure(&p, "bad_response", "HTTP 502 with an HTML page").await;

    // A corporate proxy's or captive portal's sign-in page, served as 200.
    let portal = FaultServer::start(Action::Reply(Reply::html(
        200,
        "<!DOCTYPE html><html><head><title>Network login</title></head><body>Accept the terms</body></html>",
    )))
    .await;
    let p = patless(&portal.url(), &up.url(), "").await;
    expect_failure(&p, "bad_response", "HTTP 200 with an HTML page").await;
    portal.set(Action::Reply(Reply::token(ADO_AUDIENCE, 3599)));
    expect_recovery(&p, &up).await;
}

/// Sends `n` concurrent requests; every one must be a `503 token_unavailable`. Returns the
/// largest `Retry-After`.
async fn burst_of_503s(client: &reqwest::Client, url: &str, n: usize) -> u64 {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (c, url) = (client.clone(), url.to_string());
        set.spawn(async move {
            let r = c.get(url).send().await.expect("request");
            assert_eq!(r.status(), 503);
            r.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse::<u64>()
                .expect("seconds")
        });
    }
    let mut max = 0;
    while let Some(r) = set.join_next().await {
        max = max.max(r.expect("task"));
    }
    max
}

#[tokio::test(start_paused = true)]
async fn a_429_holds_off_the_next_attempt_for_retry_after() {
    let entra = FakeEntra::start().await;
    entra.set_fault(Some(Fault::Throttled {
        retry_after_secs: 30,
    }));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = patless_on_test_clock(&entra.authority(), &up.url()).await;
    let retry = expect_failure(&p, "throttled", "HTTP 429").await;
    assert_eq!(
        retry, 30,
        "the client is told to come back when patless will try again"
    );
    let t0 = entra.requests()[0].at;
    // Clients keep coming all through the Retry-After: none of them causes an attempt, and each
    // is told how long is left.
    let client = support::http_client();
    let url = p.url("/ado/x");
    while t0.elapsed() < Duration::from_millis(29_500) {
        let left = Duration::from_secs(30).saturating_sub(t0.elapsed());
        let retry = burst_of_503s(&client, &url, 10).await;
        assert!(
            retry <= left.as_secs() + 1 && retry + 1 >= left.as_secs(),
            "Retry-After {retry}s with {left:?} left"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(entra.token_requests(), 1, "no attempt before Retry-After");
    entra.set_fault(None);
    tokio::time::sleep_until(t0 + Duration::from_millis(30_100)).await;
    let r = support::get(&client, p.url("/ado/x")).await;
    assert_eq!(r.status(), 200);
    let requests = entra.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at - t0;
    assert!(
        gap >= Duration::from_secs(30) && gap < Duration::from_millis(30_100),
        "second attempt {gap:?} after the 429"
    );
    assert_eq!(up.rejected(), 0);
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_a_503_is_honoured_too() {
    // Entra may throttle with a 5xx and Retry-After, not only with a 429.
    let entra = FaultServer::start(Action::Reply(
        Reply::entra_error(503, "temporarily_unavailable", 90_033).header("retry-after", "20"),
    ))
    .await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = patless_on_test_clock(&entra.url(), &up.url()).await;
    assert_eq!(expect_failure(&p, "server_error", "HTTP 503").await, 20);
    let t0 = entra.received()[0].at;
    entra.set(Action::Reply(Reply::token(ADO_AUDIENCE, 3599)));
    let client = support::http_client();
    tokio::time::sleep(Duration::from_millis(19_900)).await;
    burst_of_503s(&client, &p.url("/ado/x"), 10).await;
    assert_eq!(entra.requests(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(support::get(&client, p.url("/ado/x")).await.status(), 200);
    assert!(entra.received()[1].at - t0 >= Duration::from_secs(20));
}

/// The most attempts that can start within `window` of the first one, if each fails after
/// `latency` and the refresher waits at least the schedule's shortest backoff (jitter 0).
fn most_attempts(window: Duration, latency: Duration, cap: Duration) -> usize {
    let (mut t, mut n) = (Duration::ZERO, 1u32);
    loop {
        let next = t + latency + backoff(n, cap, None, 0.0);
        if next > window {
            return n as usize;
        }
        t = next;
        n += 1;
    }
}

/// The fewest attempts that must have started within `window`, if the refresher waits at most
/// the schedule's longest backoff (jitter 1), give or take `slack` per attempt.
fn fewest_attempts(window: Duration, latency: Duration, cap: Duration, slack: Duration) -> usize {
    let (mut t, mut n) = (Duration::ZERO, 1u32);
    loop {
        let next = t + latency + backoff(n, cap, None, 1.0) + slack;
        if next > window {
            return n as usize;
        }
        t = next;
        n += 1;
    }
}

#[tokio::test(start_paused = true)]
async fn no_storm_500_clients_through_a_five_minute_outage_make_a_bounded_trickle() {
    const CLIENTS: usize = 500;
    // Each failing answer takes 2 s, so clients also pile up behind acquisitions in flight.
    let latency = Duration::from_secs(2);
    let outage = Duration::from_secs(300);
    let entra = FaultServer::start(Action::Reply(
        Reply::entra_error(500, "server_error", 50_000).after(latency),
    ))
    .await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = patless_on_test_clock(&entra.url(), &up.url()).await;
    let client = support::http_client();
    let t0 = Instant::now();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let (c, url, answered) = (client.clone(), p.url("/ado/x"), Arc::clone(&answered));
        set.spawn(async move {
            // Spread over the first second, then hammer: every second for the first 10 s (the
            // short backoffs, where a storm would start), then every 40–80 s.
            tokio::time::sleep(Duration::from_millis((i as u64 * 997) % 1000)).await;
            let mut max_retry = 0;
            while t0.elapsed() < outage {
                let r = c.get(&url).send().await.expect("request");
                assert_eq!(r.status(), 503, "no token, no forwarding");
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("seconds");
                max_retry = max_retry.max(retry);
                let body: Value = r.json().await.expect("json");
                assert_eq!(body["error"], "token_unavailable");
                answered.fetch_add(1, Ordering::Relaxed);
                let pause = if t0.elapsed() < Duration::from_secs(10) {
                    1_000
                } else {
                    40_000 + (i as u64 * 7_919) % 40_000
                };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            max_retry
        });
    }
    let mut max_retry = 0;
    while let Some(r) = set.join_next().await {
        max_retry = max_retry.max(r.expect("client task"));
    }
    let requests = answered.load(Ordering::Relaxed);
    let attempts: Vec<Instant> = entra.received().iter().map(|r| r.at).collect();
    let window = Instant::now() - attempts[0];
    let cap = ErrorClass::ServerError.backoff_cap();
    let most = most_attempts(window, latency, cap);
    let fewest = fewest_attempts(window, latency, cap, Duration::from_millis(10));
    eprintln!(
        "storm: {requests} client requests over {window:?} (virtual), {} token requests \
         (schedule bound {fewest}..={most}), peak {} in flight",
        attempts.len(),
        entra.peak_in_flight()
    );
    assert!(
        requests >= CLIENTS * 8,
        "the clients did hammer: {requests}"
    );
    assert!(
        attempts.len() <= most,
        "{} token requests in {window:?}: more than the backoff schedule allows ({most})",
        attempts.len()
    );
    assert!(
        attempts.len() >= fewest,
        "{} token requests in {window:?}: the refresher gave up early (at least {fewest})",
        attempts.len()
    );
    assert_eq!(entra.peak_in_flight(), 1, "one acquisition at a time");
    // Each gap is the failed attempt plus one jittered backoff, within the schedule's range and
    // never past its cap; the jitter really varies.
    let mut jitters = Vec::new();
    for (k, pair) in attempts.windows(2).enumerate() {
        let attempt = k as u32 + 1;
        let gap = pair[1] - pair[0];
        let lo = latency + backoff(attempt, cap, None, 0.0);
        let hi = latency + backoff(attempt, cap, None, 1.0);
        assert!(
            gap >= lo && gap <= hi + Duration::from_millis(5),
            "gap {attempt}: {gap:?} outside [{lo:?}, {hi:?}]"
        );
        assert!(gap <= latency + cap, "backoff past its cap");
        jitters.push((gap - lo).as_secs_f64() / (hi - lo).as_secs_f64());
    }
    let spread = jitters.iter().cloned().fold(f64::MIN, f64::max)
        - jitters.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.05, "backoff is not jittered: {jitters:?}");
    // The same, without trusting `backoff`: with waits drawn from [d/2, d] and d doubling, each
    // wait is at least the one before until they reach half the cap, where they stay.
    let waits: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0] - latency).collect();
    for (k, w) in waits.windows(2).enumerate() {
        if w[0] < cap / 2 {
            assert!(
                w[1] + Duration::from_millis(2) >= w[0],
                "wait {} ({:?}) shorter than wait {} ({:?}): {waits:?}",
                k + 2,
                w[1],
                k + 1,
                w[0]
            );
        }
    }
    assert!(
        *waits.last().expect("several attempts") + Duration::from_millis(2) >= cap / 2,
        "five minutes into the outage the backoff is still short: {waits:?}"
    );
    // Clients are told to come back no later than the capped backoff.
    assert!(max_retry <= cap.as_secs() + 1, "Retry-After {max_retry}");
    // An attempt can be in flight as the clients finish (Entra has it, its answer not yet
    // counted): let it land before comparing. Up to 5 s, longer than an answer's 2-s latency.
    let mut counted = 0;
    let mut made = 0;
    for _ in 0..500 {
        made = entra.received().len();
        counted = refresh_count(&p.metrics().await, "server_error") as usize;
        if counted == made && entra.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(made >= attempts.len());
    assert_eq!(counted, made, "every attempt counted once");
    assert!(
        up.requests().is_empty(),
        "nothing forwarded without a token"
    );
}
