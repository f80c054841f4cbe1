//! Graceful shutdown (docs/commands.md, `serve`): on SIGTERM/SIGINT `/readyz` turns 503 first, for
//! `server.shutdown_delay`, while the proxy still serves; then the listeners close, requests in
//! flight get up to `server.shutdown_grace`, and the background tasks (token refreshers, the
//! config watcher) stop; a second SIGTERM/SIGINT ends the process at once. In process through
//! the shutdown future, and with real signals to the binary.

use std::time::{Duration, Instant};

use patless::env::MapEnv;
use serde_json::Value;
use tempfile::TempDir;

use crate::support;
use crate::support::entra::{FakeEntra, ADO_AUDIENCE};
use crate::support::patless::{config, poll_status, refused, Gate, Patless, PatlessProcess, ADO};
use crate::support::upstream::FakeUpstream;

/// A status over a fresh connection, or `None` when nothing accepts one.
async fn status(url: &str) -> Option<u16> {
    support::http_client()
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_for_the_delay_while_the_proxy_serves_then_listeners_close() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let toml = config(&entra, &[("/api", &up.url(), ADO)], "", "")
        .replace("shutdown_delay = \"0s\"", "shutdown_delay = \"1s\"");
    let mut p = Patless::start(&toml).await;
    p.wait_ready().await;

    let began = Instant::now();
    p.begin_shutdown();
    assert!(poll_status(&p.admin_url("/readyz"), 503, Duration::from_millis(500)).await);
    let body: Value = support::http_client()
        .get(p.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(body["shutting_down"], true, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    // Still serving, on new connections too, and still alive.
    assert_eq!(status(&p.url("/api/x")).await, Some(200));
    assert_eq!(status(&p.admin_url("/healthz")).await, Some(200));
    assert!(
        began.elapsed() < Duration::from_millis(900),
        "checks took too long to mean anything"
    );

    // Then both listeners close.
    while !(refused(p.addr) && refused(p.admin)) {
        assert!(
            began.elapsed() < Duration::from_secs(4),
            "listeners never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed_after = began.elapsed();
    assert!(
        closed_after >= Duration::from_millis(950),
        "closed {closed_after:?} after the signal, before the 1-s delay ran out"
    );
    assert!(
        p.wait_stopped(Duration::from_secs(3)).await,
        "run did not return"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_drain_after_the_listener_closes() {
    let entra = FakeEntra::start().await;
    let gate = Gate::start("slow").await;
    let mut p = Patless::start(&config(&entra, &[("/slow", &gate.url(), ADO)], "", "")).await;
    p.wait_ready().await;

    let in_flight = tokio::spawn(status_and_body(p.url("/slow/x")));
    gate.wait_arrived(1).await;
    p.begin_shutdown();
    // Closed to new connections, the request in flight still gets its answer.
    p.assert_closed_while_draining().await;
    gate.open(1);
    let (code, body) = in_flight.await.expect("join");
    assert_eq!((code, body["from"].as_str()), (200, Some("slow")));
    assert!(
        p.wait_stopped(Duration::from_secs(3)).await,
        "run did not return"
    );
}

async fn status_and_body(url: String) -> (u16, Value) {
    let resp = support::http_client()
        .get(url)
        .send()
        .await
        .expect("request");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

/// A request stuck upstream does not hold shutdown past `shutdown_grace` (300 ms here): `run`
/// returns within about that and the stuck request is cut off, with the proxy on the harness's
/// worker threads (`None`) or on `Some(n)` of them.
async fn grace_bounds_the_drain(workers: Option<usize>) {
    let entra = FakeEntra::start().await;
    let gate = Gate::start("stuck").await;
    let toml = config(&entra, &[("/stuck", &gate.url(), ADO)], "", "")
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"300ms\"");
    let mut p = match workers {
        Some(n) => Patless::start_with_workers(&toml, n).await,
        None => Patless::start(&toml).await,
    };
    p.wait_ready().await;
    let url = p.url("/stuck/x");
    let in_flight = tokio::spawn(async move {
        support::http_client()
            .get(url)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    gate.wait_arrived(1).await;
    let began = Instant::now();
    p.begin_shutdown();
    assert!(
        p.wait_stopped(Duration::from_secs(3)).await,
        "run did not return"
    );
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "stopped after {took:?}, expected about the 300-ms grace"
    );
    let outcome = in_flight.await.expect("join");
    assert!(
        outcome.is_err(),
        "the stuck request was cut off: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_the_drain() {
    grace_bounds_the_drain(None).await;
}

/// More workers than connections: the ones that hold none stop at once, and do not hold up the
/// one that has the stuck request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_the_drain_with_idle_workers() {
    grace_bounds_the_drain(Some(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_tasks_stop_with_the_server() {
    let entra = FakeEntra::start().await;
    // Tokens of 2 s: a refresher left running asks again every second.
    entra.set_lifetime(2);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("patless.toml");
    let base = config(
        &entra,
        &[("/api", &up.url(), ADO)],
        "watch_config = true",
        "",
    );
    std::fs::write(&path, &base).expect("write");
    let mut p = Patless::start_file(&path, MapEnv::default(), Duration::from_millis(100)).await;
    p.wait_ready().await;
    // The reload handle keeps the last app alive: its refreshers must be stopped, not dropped.
    let handle = p.reloader().clone();
    let app = handle.current().expect("running");
    p.begin_shutdown();
    assert!(
        p.wait_stopped(Duration::from_secs(3)).await,
        "run did not return"
    );
    let after_stop = entra.token_requests();
    std::fs::write(&path, base.replace("/api", "/moved")).expect("write");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        entra.token_requests(),
        after_stop,
        "a token refresher outlived the server"
    );
    assert!(
        handle.reload().await.is_err(),
        "the config watcher and reload task are gone"
    );
    assert!(
        app.proxy
            .router()
            .routes()
            .iter()
            .any(|r| &*r.label == "/api"),
        "no reload happened after the stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_binary_turns_readyz_503_before_the_listener_closes() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("patless.toml");
    let toml = config(&entra, &[("/api", &up.url(), ADO)], "", "")
        .replace("shutdown_delay = \"0s\"", "shutdown_delay = \"1500ms\"");
    std::fs::write(&path, &toml).expect("write");
    let mut child = PatlessProcess::spawn(dir.path(), &path).await;
    child.wait_ready().await;

    child.signal("TERM");
    let began = Instant::now();
    assert!(
        poll_status(&child.admin_url("/readyz"), 503, Duration::from_secs(1)).await,
        "/readyz did not turn 503; log:\n{}",
        child.log()
    );
    assert_eq!(
        status(&child.url("/api/x")).await,
        Some(200),
        "the proxy still serves"
    );
    assert!(
        began.elapsed() < Duration::from_millis(1400),
        "checks took too long to mean anything"
    );
    assert!(child.running());

    while !refused(child.addr) {
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "listener never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        began.elapsed() >= Duration::from_millis(1300),
        "closed after {:?}, before the delay ran out",
        began.elapsed()
    );
    assert_eq!(
        child.wait(Duration::from_secs(5)).await,
        Some(Some(0)),
        "log:\n{}",
        child.log()
    );
}

/// The first signal's log line says what happens now, for how long, and how to stop at once.
fn assert_says_the_plan(log: &str, delay: Option<&str>, grace: &str) {
    let line = log
        .lines()
        .find(|l| l.contains("shutting down"))
        .unwrap_or_else(|| panic!("no shutdown line; log:\n{log}"));
    if let Some(delay) = delay {
        assert!(
            line.contains(&format!(
                "/readyz answers 503 for {delay} (server.shutdown_delay)"
            )),
            "{line}"
        );
    }
    assert!(
        line.contains(&format!("get up to {grace} (server.shutdown_grace)")),
        "{line}"
    );
    assert!(line.contains("press Ctrl-C again"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_delay_stops_at_once() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("patless.toml");
    let toml = config(&entra, &[("/api", &up.url(), ADO)], "", "")
        .replace("shutdown_delay = \"0s\"", "shutdown_delay = \"60s\"");
    std::fs::write(&path, &toml).expect("write");
    let mut child = PatlessProcess::spawn(dir.path(), &path).await;
    child.wait_ready().await;
    child.signal("TERM");
    assert!(poll_status(&child.admin_url("/readyz"), 503, Duration::from_secs(1)).await);
    assert_says_the_plan(&child.log(), Some("60s"), "5s");
    child.signal("INT");
    // 128 + SIGINT, as a shell reports a process Ctrl-C ended.
    assert_eq!(
        child.wait(Duration::from_secs(3)).await,
        Some(Some(130)),
        "log:\n{}",
        child.log()
    );
    assert!(
        child.log().contains("SIGINT again: stopping now"),
        "{}",
        child.log()
    );
}

/// Ctrl-C twice with a request in flight and a long grace: the first starts the drain and says
/// how to skip it, the second ends the process at once, cutting the request off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_stops_the_drain_at_once() {
    let entra = FakeEntra::start().await;
    let gate = Gate::start("slow").await;
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("patless.toml");
    let toml = config(&entra, &[("/slow", &gate.url(), ADO)], "", "")
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"60s\"");
    std::fs::write(&path, &toml).expect("write");
    let mut child = PatlessProcess::spawn(dir.path(), &path).await;
    child.wait_ready().await;
    let url = child.url("/slow/x");
    let in_flight = tokio::spawn(async move {
        let resp = support::http_client().get(url).send().await?;
        resp.bytes().await
    });
    gate.wait_arrived(1).await;

    child.signal("INT");
    while !refused(child.addr) {
        assert!(
            child.running(),
            "exited on the first signal; log:\n{}",
            child.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        child.running(),
        "stopped draining on its own; log:\n{}",
        child.log()
    );
    assert_says_the_plan(&child.log(), None, "60s");

    let began = Instant::now();
    child.signal("INT");
    assert_eq!(
        child.wait(Duration::from_secs(3)).await,
        Some(Some(130)),
        "still draining 3 s after the second Ctrl-C; log:\n{}",
        child.log()
    );
    assert!(began.elapsed() < Duration::from_secs(3));
    assert!(
        child.log().contains("SIGINT again: stopping now"),
        "{}",
        child.log()
    );
    let outcome = tokio::time::timeout(Duration::from_secs(3), in_flight)
        .await
        .expect("the request in flight ended with the process")
        .expect("join");
    assert!(
        outcome.is_err(),
        "the request in flight was cut off: {outcome:?}"
    );
}
