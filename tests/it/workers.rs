//! The proxy served on worker threads of its own (`server.workers`, what `serve` does): each
//! thread runs its own event loop and upstream pool, and the accepting runtime hands it
//! connections. The same promises hold as on one runtime: every request gets a valid token, one
//! acquisition serves them all, the connection limit answers its JSON 503, and shutdown drains
//! what is in flight on every worker (the grace bound on workers is in tests/it/shutdown.rs).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support;
use crate::support::entra::{FakeEntra, ADO_AUDIENCE};
use crate::support::patless::{config, metric, Gate, Patless, ADO};
use crate::support::upstream::FakeUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_over_workers_all_get_valid_tokens_from_one_acquisition() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p =
        Patless::start_with_workers(&config(&entra, &[("/ado", &up.url(), ADO)], "", ""), 3).await;
    p.wait_ready().await;
    let (conns, per_conn) = (24, 15);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let url = p.url(&format!("/ado/org{c}/_apis/projects"));
        tasks.push(tokio::spawn(async move {
            // Its own client: its own keep-alive connection, on whichever worker took it.
            let client = support::http_client();
            let mut ok = 0;
            for i in 0..per_conn {
                let resp = client
                    .post(format!("{url}?i={i}"))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"conn":{c},"i":{i}}}"#))
                    .send()
                    .await
                    .expect("request");
                let status = resp.status();
                let body: serde_json::Value = resp.json().await.expect("JSON");
                assert_eq!(status, 200, "{body}");
                assert_eq!(body["path"], format!("/org{c}/_apis/projects?i={i}"));
                ok += 1;
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("join");
    }
    assert_eq!(total, conns * per_conn);
    let counts = up.counts();
    assert_eq!(
        counts.valid.load(Ordering::Relaxed),
        (conns * per_conn) as u64
    );
    assert_eq!(counts.invalid.load(Ordering::Relaxed), 0);
    assert_eq!(
        entra.token_requests(),
        1,
        "one acquisition for every worker"
    );
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, r#"patless_requests_total{route="/ado",status="200"}"#),
        (conns * per_conn) as f64,
        "{m}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds_across_workers() {
    let entra = FakeEntra::start().await;
    let gate = Gate::start("held").await;
    let p = Patless::start_with_workers(
        &config(
            &entra,
            &[("/held", &gate.url(), ADO)],
            "max_connections = 2",
            "",
        ),
        2,
    )
    .await;
    p.wait_ready().await;
    // Two connections, one per worker, each with a request held upstream.
    let held: Vec<_> = (0..2)
        .map(|i| {
            let url = p.url(&format!("/held/{i}"));
            tokio::spawn(async move {
                support::http_client()
                    .get(url)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    gate.wait_arrived(2).await;
    // A third is one too many, whichever worker it would go to.
    let mut s = tokio::net::TcpStream::connect(p.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /held/3 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains(r#""error":"too_many_connections""#),
        "{answer}"
    );
    gate.open(2);
    for h in held {
        assert_eq!(h.await.expect("join").expect("answer"), 200);
    }
    // Their slots are free again once they close.
    gate.open(100);
    let began = Instant::now();
    loop {
        if let Ok(r) = support::http_client().get(p.url("/held/4")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "slots never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_requests_in_flight_on_every_worker() {
    let entra = FakeEntra::start().await;
    let gate = Gate::start("slow").await;
    let mut p =
        Patless::start_with_workers(&config(&entra, &[("/slow", &gate.url(), ADO)], "", ""), 2)
            .await;
    p.wait_ready().await;
    // Two connections go to the two workers (the one with fewer open connections takes the next).
    let in_flight: Vec<_> = (0..2)
        .map(|i| {
            let url = p.url(&format!("/slow/{i}"));
            tokio::spawn(async move {
                let r = support::http_client()
                    .get(url)
                    .send()
                    .await
                    .expect("request");
                let code = r.status().as_u16();
                let body: serde_json::Value = r.json().await.expect("JSON");
                (code, body["from"].as_str().map(str::to_owned))
            })
        })
        .collect();
    gate.wait_arrived(2).await;
    p.begin_shutdown();
    p.assert_closed_while_draining().await;
    gate.open(2);
    for t in in_flight {
        assert_eq!(t.await.expect("join"), (200, Some("slow".to_string())));
    }
    assert!(
        p.wait_stopped(Duration::from_secs(3)).await,
        "run did not return"
    );
}
