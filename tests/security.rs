//! Hardened by default (SPEC §3, §6): every refusal is sent as a raw request (no client-side
//! normalisation), answers its JSON code, and the upstream sees nothing. Limits trip cleanly and
//! the process keeps serving.

mod support;

use std::time::Duration;

use patless::env::MapEnv;
use serde_json::Value;
use support::entra::{FakeEntra, ADO_AUDIENCE};
use support::patless::{config, Patless, ADO};
use support::upstream::FakeUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const INBOUND: &str = "inbound-shared-secret-0123456789";

/// Sends `head` (CRLF-terminated request head, plus any body) and reads the answer until the server
/// closes or 3 s pass. Returns (status, body as JSON if it is JSON, whole text).
async fn raw(addr: std::net::SocketAddr, head: &str) -> (u16, Option<Value>, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok());
    (status, json, text)
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n")
}

async fn with_token() -> (FakeEntra, FakeUpstream, Patless) {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start_with_env(
        &config(
            &entra,
            &[("/ado", &up.url(), ADO)],
            "inbound_token = { env = \"PATLESS_TEST_INBOUND\" }",
            "",
        ),
        MapEnv::new([("PATLESS_TEST_INBOUND", INBOUND)]),
    )
    .await;
    (entra, up, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_token_is_required_compared_and_never_forwarded() {
    let (_entra, up, p) = with_token().await;
    let refused = [
        String::new(),
        "X-Patless-Token: wrong\r\n".to_string(),
        format!("X-Patless-Token: {}\r\n", &INBOUND[..INBOUND.len() - 1]),
        format!("X-Patless-Token: {INBOUND}x\r\n"),
        format!("Proxy-Authorization: Basic {INBOUND}\r\n"),
        "Proxy-Authorization: Bearer \r\n".to_string(),
        // A client's own Authorization is not the inbound token.
        format!("Authorization: Bearer {INBOUND}\r\n"),
    ];
    for extra in &refused {
        let (status, json, text) = raw(p.addr, &get("/ado/x", extra)).await;
        assert_eq!(status, 401, "{extra:?}: {text}");
        let json = json.expect("JSON");
        assert_eq!(json["error"], "inbound_auth_required", "{extra:?}");
        assert!(!text.contains(INBOUND), "the token is never echoed");
    }
    assert!(
        up.requests().is_empty(),
        "nothing unauthenticated reached the upstream"
    );

    for extra in [
        format!("Proxy-Authorization: Bearer {INBOUND}\r\n"),
        format!("proxy-authorization: bearer   {INBOUND}\r\n"),
        format!("X-Patless-Token: {INBOUND}\r\n"),
    ] {
        let (status, _, text) = raw(p.addr, &get("/ado/x", &extra)).await;
        assert_eq!(status, 200, "{extra:?}: {text}");
    }
    for rec in up.requests() {
        assert!(rec.token_valid);
        assert!(rec.headers.get("proxy-authorization").is_none());
        assert!(rec.headers.get("x-patless-token").is_none());
        for v in rec.headers.values() {
            assert!(!v
                .as_bytes()
                .windows(INBOUND.len())
                .any(|w| w == INBOUND.as_bytes()));
        }
    }
    let m = p.metrics().await;
    assert!(
        m.contains(r#"patless_inbound_rejections_total{reason="inbound_auth_required"} 7"#),
        "{m}"
    );
    assert!(!m.contains(INBOUND));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_an_open_proxy() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let toml = config(&entra, &[("/ado", &up.url(), ADO)], "", "").replace(
        "host_routes = false",
        "host_routes = true\ndefault_profile = \"bot\"",
    );
    let p = Patless::start(&toml).await;
    let attacks = [
        ("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n".to_string(), 403, "host_not_allowed"),
        ("CONNECT dev.azure.com:443 HTTP/1.1\r\nHost: dev.azure.com:443\r\nConnection: close\r\n\r\n".to_string(), 403, "host_not_allowed"),
        (get("http://evil.example/ado/x", ""), 403, "host_not_allowed"),
        (get("http://dev.azure.com/ado/x", ""), 403, "host_not_allowed"),
        (get("/evil.example/steal", ""), 404, "no_route"),
        (get("/169.254.169.254/metadata/identity/oauth2/token", ""), 404, "no_route"),
        (get("/dev.azure.com.evil.example/x", ""), 404, "no_route"),
        (get("/ado/%2e%2e/%2e%2e/etc/passwd", ""), 400, "invalid_path"),
        (get("/ado/..%2fadmin", ""), 400, "invalid_path"),
        (get("/ado/a%5C..%5Cb", ""), 400, "invalid_path"),
        (get("/ado/%00", ""), 400, "invalid_path"),
    ];
    for (req, want_status, want_code) in &attacks {
        let (status, json, text) = raw(p.addr, req).await;
        assert_eq!(status, *want_status, "{req:?}: {text}");
        assert_eq!(json.expect("JSON")["error"], *want_code, "{req:?}");
    }
    assert!(up.requests().is_empty(), "the upstream saw nothing");
    assert_eq!(
        entra.token_requests(),
        1,
        "only the prefetch of /ado's token"
    );
    // An absolute-form request to patless's own address is just a request.
    let (status, _, text) = raw(p.addr, &get(&format!("http://{}/ado/ok", p.addr), "")).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_trip_cleanly_and_the_process_keeps_serving() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start(&config(
        &entra,
        &[("/ado", &up.url(), ADO)],
        "max_uri_bytes = 1024\nmax_header_bytes = 16384\nheader_read_timeout = \"400ms\"\nmax_connections = 3",
        "",
    ))
    .await;

    // Request target too long.
    let long = format!("/ado/{}", "a".repeat(2000));
    let (status, json, _) = raw(p.addr, &get(&long, "")).await;
    assert_eq!(status, 414);
    assert_eq!(json.expect("JSON")["error"], "uri_too_long");

    // Headers too large: hyper answers 431 and closes.
    let big = format!("X-Big: {}\r\n", "b".repeat(20_000));
    let (status, _, _) = raw(p.addr, &get("/ado/x", &big)).await;
    assert_eq!(status, 431);

    // Slowloris: half a head, then silence: the connection is closed after the timeout.
    let mut slow = TcpStream::connect(p.addr).await.expect("connect");
    slow.write_all(b"GET /ado/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(Duration::from_secs(3), slow.read(&mut buf)).await;
    assert!(closed.is_ok(), "a slow client is cut off");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        up.requests().is_empty(),
        "nothing over a limit reached the upstream"
    );

    // Connection limit: three idle keep-alive connections hold every slot…
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(p.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // … so a fourth gets a complete JSON 503 and is closed.
    let (status, json, text) = raw(p.addr, &get("/ado/x", "")).await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(json.expect("JSON")["error"], "too_many_connections");
    drop(held);
    // Slots free again (the idle ones also time out): the process serves on.
    let mut ok = false;
    for _ in 0..30 {
        let (status, _, _) = raw(p.addr, &get("/ado/fine", "")).await;
        if status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "patless recovers once connections close");
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn a_non_loopback_listen_needs_an_inbound_token_or_an_explicit_opt_in() {
    use patless::config::{load_from_str, ConfigSource, Format};
    let env = MapEnv::default();
    let load = |server: &str| {
        load_from_str(
            &format!("[server]\n{server}\n"),
            Format::Toml,
            ConfigSource::Embedded,
            &env,
        )
    };
    let err = load("listen = \"0.0.0.0:7070\"").expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("server.listen") && text.contains("inbound_token"),
        "{text}"
    );
    assert!(load("listen = \"0.0.0.0:7070\"\ninbound_token = { env = \"T\" }").is_ok());
    assert!(load("listen = \"0.0.0.0:7070\"\nallow_unauthenticated_clients = true").is_ok());
    let err = load("unix_socket_mode = \"0666\"").expect_err("world-writable socket refused");
    assert!(err.to_string().contains("server.unix_socket_mode"));
}
