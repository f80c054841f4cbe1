use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// An HTTP/1.1 upstream by hand: answers every request `200 ok` after `delay`, closing the
/// connection after each answer when `close_after` (without saying so, as an upstream that
/// ends idle keep-alive connections does). Counts connections opened and seen closed, and
/// records each request line.
#[derive(Default)]
struct Upstream {
    opened: AtomicUsize,
    closed: AtomicUsize,
    lines: Mutex<Vec<String>>,
}

async fn upstream(delay: Duration, close_after: bool) -> (Arc<Upstream>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let state = Arc::new(Upstream::default());
    let st = Arc::clone(&state);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            st.opened.fetch_add(1, Ordering::SeqCst);
            let st = Arc::clone(&st);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let line = String::from_utf8_lossy(&head);
                        let line = line.lines().next().unwrap_or_default().to_string();
                        lock(&st.lines).push(line);
                        tokio::time::sleep(delay).await;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(answer).await.is_err() {
                            break;
                        }
                        if close_after {
                            let _ = s.shutdown().await;
                        }
                    }
                }
                st.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (state, url)
}

fn client(idle: Duration) -> UpstreamClient {
    client_keeping(idle, 64)
}

fn client_keeping(idle: Duration, max_idle: usize) -> UpstreamClient {
    crate::tls::install_crypto_provider();
    let tls = crate::tls::client_config(None).expect("tls");
    UpstreamClient::new(
        crate::proxy::connector(tls, Duration::from_secs(5), None, true),
        PoolSettings {
            idle_timeout: idle,
            max_idle,
            max_head: crate::proxy::UPSTREAM_MAX_HEAD,
            http2: true,
        },
    )
}

fn get(url: &str, path: &str) -> Request<ProxyBody> {
    Request::get(format!("{url}{path}"))
        .header(http::header::HOST, "upstream")
        .body(Empty::new().map_err(BoxError::from).boxed_unsync())
        .expect("request")
}

async fn body(resp: Response<UpstreamBody>) -> String {
    assert_eq!(resp.status(), 200);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn sequential_requests_share_one_connection_in_origin_form() {
    let (up, url) = upstream(Duration::ZERO, false).await;
    let c = client(Duration::from_secs(60));
    for i in 0..10 {
        let resp = c
            .request(get(&url, &format!("/x/{i}?q=1")))
            .await
            .expect("answer");
        assert_eq!(body(resp).await, "ok");
    }
    assert_eq!(up.opened.load(Ordering::SeqCst), 1);
    let lines = lock(&up.lines).clone();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[3], "GET /x/3?q=1 HTTP/1.1");
    assert_eq!(c.pooled(), 1);
}

#[tokio::test]
async fn concurrent_requests_open_a_connection_each_then_reuse_them() {
    let (up, url) = upstream(Duration::from_millis(100), false).await;
    let c = Arc::new(client(Duration::from_secs(60)));
    for round in 0..3 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..4 {
            let (c, url) = (Arc::clone(&c), url.clone());
            tasks.spawn(async move {
                let resp = c.request(get(&url, &format!("/{round}/{i}"))).await;
                body(resp.expect("answer")).await
            });
        }
        while let Some(r) = tasks.join_next().await {
            assert_eq!(r.expect("task"), "ok");
        }
        // A connection is ready again once hyper has seen its answer end.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(up.opened.load(Ordering::SeqCst), 4, "round {round}");
    }
    assert_eq!(lock(&up.lines).len(), 12);
}

#[tokio::test]
async fn an_answer_not_read_to_its_end_does_not_poison_the_next_request() {
    let (up, url) = upstream(Duration::ZERO, false).await;
    let c = client(Duration::from_secs(60));
    let resp = c.request(get(&url, "/dropped")).await.expect("answer");
    drop(resp);
    for _ in 0..3 {
        let resp = c.request(get(&url, "/next")).await.expect("answer");
        assert_eq!(body(resp).await, "ok");
    }
    assert!(up.opened.load(Ordering::SeqCst) <= 2);
}

/// An upstream that ends each connection after its answer, without saying so: the next request
/// goes on a new connection without an error, whether it comes at once (sent on the closed one,
/// nothing comes back, and a `GET` is sent again) or after the idle look finds it closed.
#[tokio::test]
async fn a_connection_the_upstream_closed_is_replaced_without_an_error() {
    for pause in [Duration::ZERO, LOOK_AFTER * 3] {
        let (up, url) = upstream(Duration::ZERO, true).await;
        let c = client(Duration::from_secs(60));
        for i in 0..3 {
            let resp = c.request(get(&url, "/x")).await.expect("answer");
            assert_eq!(body(resp).await, "ok", "request {i} after {pause:?}");
            tokio::time::sleep(pause).await;
        }
        assert_eq!(up.opened.load(Ordering::SeqCst), 3, "after {pause:?}");
        until("the closed ones are closed on this side too", || {
            up.closed.load(Ordering::SeqCst) >= 2
        })
        .await;
    }
}

/// A request that could not be sent again (a body, or a method that is not idempotent) is not
/// sent on a connection without a look at it first, however recently it was used: a `POST`
/// right after the upstream ended the connection goes on a new one.
#[tokio::test]
async fn a_post_looks_at_its_connection_before_it_is_sent() {
    let (up, url) = upstream(Duration::ZERO, true).await;
    let c = client(Duration::from_secs(60));
    assert_eq!(
        body(c.request(get(&url, "/first")).await.expect("answer")).await,
        "ok"
    );
    // Less than LOOK_AFTER: a GET now would be sent on the closed connection (and again).
    tokio::time::sleep(LOOK_AFTER / 2).await;
    let post = Request::post(format!("{url}/upload"))
        .header(http::header::HOST, "upstream")
        .body(
            http_body_util::Full::new(bytes::Bytes::from_static(b"data"))
                .map_err(BoxError::from)
                .boxed_unsync(),
        )
        .expect("request");
    assert_eq!(body(c.request(post).await.expect("answer")).await, "ok");
    assert_eq!(up.opened.load(Ordering::SeqCst), 2);
    let lines = lock(&up.lines).clone();
    assert_eq!(lines, ["GET /first HTTP/1.1", "POST /upload HTTP/1.1"]);
}

/// Idle time on the tokio clock: paused only between requests (a paused clock would also
/// advance through the connector's connect timeout while a connection is being made).
async fn idle_for(d: Duration) {
    tokio::time::pause();
    tokio::time::advance(d).await;
    tokio::time::resume();
}

#[tokio::test]
async fn a_connection_idle_past_the_timeout_is_closed_not_reused() {
    let (up, url) = upstream(Duration::ZERO, false).await;
    let c = client(Duration::from_secs(60));
    let resp = c.request(get(&url, "/first")).await.expect("answer");
    assert_eq!(body(resp).await, "ok");
    until("the connection is ready again", || c.pooled() == 1).await;
    idle_for(Duration::from_secs(30)).await;
    let resp = c.request(get(&url, "/within")).await.expect("answer");
    assert_eq!(body(resp).await, "ok");
    assert_eq!(up.opened.load(Ordering::SeqCst), 1, "reused within 60 s");
    idle_for(Duration::from_secs(61)).await;
    let resp = c.request(get(&url, "/after")).await.expect("answer");
    assert_eq!(body(resp).await, "ok");
    assert_eq!(
        up.opened.load(Ordering::SeqCst),
        2,
        "a new one after 60 s idle"
    );
    until("the expired connection is closed", || {
        up.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(c.pooled(), 1);
}

#[tokio::test]
async fn the_sweep_closes_connections_left_idle_and_keeps_busy_ones() {
    let (up, url) = upstream(Duration::from_millis(50), false).await;
    let c = client(Duration::from_secs(60));
    // A burst of three at once opens three connections.
    let (a, b, d) = tokio::join!(
        c.request(get(&url, "/a")),
        c.request(get(&url, "/b")),
        c.request(get(&url, "/c")),
    );
    for resp in [a, b, d] {
        assert_eq!(body(resp.expect("answer")).await, "ok");
    }
    until("all three are ready again", || c.ready() == 3).await;
    // An answer whose body is still arriving keeps its connection busy (another upstream,
    // which sends 2 of the 11 bytes it announced, then waits).
    let slow = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let slow_url = format!("http://{}", slow.local_addr().expect("addr"));
    let (rest_tx, rest_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = slow.accept().await.expect("accept");
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nok";
        s.write_all(head).await.expect("write");
        let _ = rest_rx.await;
        s.write_all(b"-the-rest").await.expect("write");
        let _ = s.read(&mut buf).await;
    });
    let busy = c.request(get(&slow_url, "/busy")).await.expect("answer");
    assert_eq!(c.pooled(), 4);
    idle_for(Duration::from_secs(30)).await;
    assert_eq!(c.close_idle(), 0, "nothing has been idle for 60 s");
    idle_for(Duration::from_secs(31)).await;
    assert_eq!(c.close_idle(), 3, "the three idle ones go");
    until("the upstream sees them closed", || {
        up.closed.load(Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(c.pooled(), 1, "the busy one stays");
    rest_tx.send(()).expect("the slow upstream waits");
    assert_eq!(body(busy).await, "ok-the-rest");
    assert_eq!(up.opened.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let err = client(Duration::from_secs(60))
        .request(get(&url, "/x"))
        .await
        .expect_err("refused");
    assert!(err.is_connect(), "{err:?}");
}

#[tokio::test]
async fn the_sweep_keeps_at_most_max_idle_connections_the_newest() {
    let (up, url) = upstream(Duration::from_millis(50), false).await;
    let c = Arc::new(client_keeping(Duration::from_secs(60), 2));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5 {
        let (c, url) = (Arc::clone(&c), url.clone());
        tasks.spawn(async move {
            body(
                c.request(get(&url, &format!("/{i}")))
                    .await
                    .expect("answer"),
            )
            .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.expect("task"), "ok");
    }
    until("all five are ready again", || c.ready() == 5).await;
    assert_eq!(c.close_idle(), 3, "the three oldest idle ones go");
    until("the upstream sees them closed", || {
        up.closed.load(Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(c.pooled(), 2);
    // The two kept still serve, without a new connection.
    for _ in 0..4 {
        let resp = c.request(get(&url, "/again")).await.expect("answer");
        assert_eq!(body(resp).await, "ok");
    }
    assert_eq!(up.opened.load(Ordering::SeqCst), 5);
    assert_eq!(c.close_idle(), 0);
}

#[tokio::test]
async fn a_plain_http_upstream_is_never_offered_http2() {
    let (up, url) = upstream(Duration::ZERO, false).await;
    let c = client(Duration::from_secs(60));
    let resp = c.request(get(&url, "/x")).await.expect("answer");
    assert_eq!(resp.version(), http::Version::HTTP_11);
    assert_eq!(body(resp).await, "ok");
    assert_eq!(c.multiplexed(), 0);
    assert_eq!(lock(&up.lines)[0], "GET /x HTTP/1.1");
}
