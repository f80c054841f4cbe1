//! A kept-alive client connection that goes quiet is parked: after a second at rest patless lets
//! hyper's connection and its buffers go (`src/server/conn.rs`), and serves the same TCP
//! connection with a new one when the client speaks again. End to end through the proxy on its
//! worker threads: nothing reaches the client while it is parked, and the requests that follow —
//! one with a body, a pipelined pair — are answered in order, each sent upstream once.

use std::time::Duration;

use crate::support::patless::start_ado;
use crate::support::raw::Raw;

/// Longer than patless's release delay (1 s), with room for the watchdog's look.
const PAST_RELEASE: Duration = Duration::from_millis(1500);

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_keep_alive_connection_serves_on_after_its_release() {
    let (_entra, up, p) = start_ado("").await;
    let mut c = Raw::connect(p.addr).await;

    c.send(get("/ado/one").as_bytes()).await;
    let a = c.answer().await.expect("an answer");
    let (status, head, body) = (a.status, &a.head, a.json());
    assert_eq!((status, body["path"].as_str()), (200, Some("/one")));
    assert!(!head.contains("connection: close"), "{head}");

    // Parked; the next request on the same connection.
    assert!(c.quiet_for(PAST_RELEASE).await, "nothing sent, not closed");
    c.send(get("/ado/two").as_bytes()).await;
    let a = c.answer().await.expect("an answer");
    let (status, head, body) = (a.status, &a.head, a.json());
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
    let a = c.answer().await.expect("an answer");
    let (status, body) = (a.status, a.json());
    assert_eq!((status, body["len"].as_u64()), (200, Some(100_000)));

    // A pipelined pair arriving at a parked connection: both answered, in order.
    assert!(c.quiet_for(PAST_RELEASE).await);
    c.send(format!("{}{}", get("/ado/three"), get("/ado/four")).as_bytes())
        .await;
    for want in ["/three", "/four"] {
        let a = c.answer().await.expect("an answer");
        let (status, body) = (a.status, a.json());
        assert_eq!((status, body["path"].as_str()), (200, Some(want)));
    }
    assert_eq!(up.accepted(), 5, "each request reached the upstream once");
}
