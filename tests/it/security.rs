//! Hardened by default (docs/security.md): every refusal is sent as a raw request (no client-side
//! normalisation), answers its JSON code, and the upstream sees nothing. Limits trip cleanly and
//! the process keeps serving.

use std::time::Duration;

use patless::env::MapEnv;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::entra::{FakeEntra, ADO_AUDIENCE};
use crate::support::patless::{config, start_ado, try_load, Patless, ADO};
use crate::support::upstream::FakeUpstream;

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
    let (_entra, up, p) = start_ado("max_uri_bytes = 1024\nmax_header_bytes = 16384\nheader_read_timeout = \"400ms\"\nmax_connections = 3").await;

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
    let load = |server: &str| try_load(&format!("[server]\n{server}\n"));
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
    let err =
        load("idle_timeout = \"0s\"\nheader_read_timeout = \"soon\"").expect_err("bad clocks");
    let text = err.to_string();
    assert!(
        text.contains("server.idle_timeout") && text.contains("server.header_read_timeout"),
        "both reported at once: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_attacks_sent_raw_are_refused_before_anything_reaches_the_upstream() {
    let (_entra, up, p) = start_ado(
        "allowed_hosts = [\"patless.tools.svc\"]\nallowed_origins = [\"http://127.0.0.1:3000\"]",
    )
    .await;
    let post = |host: &str, extra: &str| {
        format!(
            "POST /ado/org/_apis/wit/workitems HTTP/1.1\r\nHost: {host}\r\n{extra}\
             Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
    };
    let attacks = [
        // DNS rebinding: the attacker's name resolves to 127.0.0.1; the browser still sends it.
        (post("evil.example:7070", ""), "host_not_allowed"),
        (post("EVIL.EXAMPLE", ""), "host_not_allowed"),
        (post("127.0.0.1.nip.io", ""), "host_not_allowed"),
        (post("localhost.evil.example", ""), "host_not_allowed"),
        (
            post("patless.tools.svc.evil.example", ""),
            "host_not_allowed",
        ),
        // CSRF from a page: the browser marks it, or names its origin.
        (
            post("127.0.0.1:7070", "Sec-Fetch-Site: cross-site\r\n"),
            "cross_site_request",
        ),
        (
            post("127.0.0.1:7070", "Sec-Fetch-Site: same-site\r\n"),
            "cross_site_request",
        ),
        (
            post("localhost", "Origin: https://evil.example\r\n"),
            "cross_site_request",
        ),
        (post("localhost", "Origin: null\r\n"), "cross_site_request"),
        (
            post("localhost", "Origin: http://127.0.0.1:3001\r\n"),
            "cross_site_request",
        ),
    ];
    for (req, code) in &attacks {
        let (status, json, text) = raw(p.addr, req).await;
        assert_eq!(status, 403, "{req:?}: {text}");
        let json = json.expect("a JSON error body");
        assert_eq!(json["error"], *code, "{req:?}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(text
            .to_ascii_lowercase()
            .contains("content-type: application/json"));
    }
    assert!(up.requests().is_empty(), "the upstream saw nothing");
    let m = p.metrics().await;
    assert!(
        m.contains(r#"patless_inbound_rejections_total{reason="host_not_allowed"} 5"#),
        "{m}"
    );
    assert!(
        m.contains(r#"patless_inbound_rejections_total{reason="cross_site_request"} 5"#),
        "{m}"
    );
    // The configured host and origin, and a tool that is no browser, pass.
    for req in [
        post("patless.tools.svc:7070", ""),
        post("127.0.0.1", "Origin: http://127.0.0.1:3000\r\n"),
        post("[::1]:7070", "Sec-Fetch-Site: none\r\n"),
    ] {
        let (status, _, text) = raw(p.addr, &req).await;
        assert_eq!(status, 200, "{req:?}: {text}");
    }
    assert_eq!(up.accepted(), 3);
}

/// Reads one HTTP/1.1 response with a `Content-Length` body from `s`; returns its status.
async fn read_response(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.expect("read head");
        assert_eq!(n, 1, "closed before the response head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.expect("body");
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status")
}

/// True when the server closed `s` within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_and_head_clocks_are_separate_and_spare_requests_in_flight() {
    let (_entra, up, p) =
        start_ado("header_read_timeout = \"300ms\"\nidle_timeout = \"1500ms\"").await;
    let keep_alive = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");

    // A kept-alive connection outlives the head clock while idle, and is reused…
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(keep_alive("/ado/one").as_bytes())
        .await
        .expect("w");
    assert_eq!(read_response(&mut s).await, 200);
    assert!(
        !closed_within(&mut s, Duration::from_millis(700)).await,
        "idle for over twice header_read_timeout, yet below idle_timeout: still open"
    );
    s.write_all(keep_alive("/ado/two").as_bytes())
        .await
        .expect("w");
    assert_eq!(read_response(&mut s).await, 200);
    // … and is closed once idle_timeout passes with no request.
    assert!(
        closed_within(&mut s, Duration::from_secs(4)).await,
        "an idle keep-alive connection is closed after idle_timeout"
    );

    // A head started after a request is timed from its first byte by the head clock.
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(keep_alive("/ado/three").as_bytes())
        .await
        .expect("w");
    assert_eq!(read_response(&mut s).await, 200);
    s.write_all(b"GET /ado/four HTTP/1.1\r\nHost: 12")
        .await
        .expect("w");
    let started = std::time::Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(4)).await);
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "a half-sent head is cut by header_read_timeout, not idle_timeout"
    );

    // A request in flight is never cut by either clock: a body trickling in for 1 s.
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(
        b"POST /ado/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("w");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"x").await.expect("the connection stays open");
    }
    assert_eq!(read_response(&mut s).await, 200);
    assert_eq!(up.accepted(), 4, "three GETs and the slow upload");
}

/// Sends `GET {path}` with `Host: {host}` (none when `None`) and returns (status, the `Location`
/// header if any, the JSON body if any).
async fn get_location(
    addr: std::net::SocketAddr,
    path: &str,
    host: Option<&str>,
) -> (u16, Option<String>, Option<Value>) {
    let head = match host {
        Some(h) => format!("GET {path} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n"),
        None => format!("GET {path} HTTP/1.0\r\n\r\n"),
    };
    let (status, json, text) = raw(addr, &head).await;
    let location = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        });
    (status, location, json)
}

fn redirect_to(location: &str) -> String {
    format!(
        "/redirect-to?to={}",
        url::form_urlencoded::byte_serialize(location.as_bytes()).collect::<String>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_redirect_never_sends_the_client_off_the_proxy() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    // A route on `/`: its prefix adds nothing in front of the upstream's path.
    let base = format!("{}/org", up.url());
    let p = Patless::start(&config(&entra, &[("/", &base, ADO)], "", "")).await;
    let host = p.addr.to_string();
    let on_proxy = |path: &str| format!("http://{host}{path}");
    let cases = [
        // An empty segment in the upstream's path becomes `//host` once the base is cut off.
        (
            "/org//127.0.0.1:19090/steal".to_string(),
            on_proxy("//127.0.0.1:19090/steal"),
        ),
        (
            format!("{}/org//evil.example/x", up.url()),
            on_proxy("//evil.example/x"),
        ),
        // Browsers read `/\host` as `//host`.
        (
            "/org/\\evil.example/x".to_string(),
            on_proxy("/\\evil.example/x"),
        ),
        // What stays a path stays a path.
        ("/org/x/y?z=1".to_string(), "/x/y?z=1".to_string()),
        ("/org".to_string(), "/".to_string()),
        ("/org?q=1".to_string(), "/?q=1".to_string()),
        // Another host's URL is the upstream's own redirect, passed on as it is.
        (
            "https://elsewhere.example/x".to_string(),
            "https://elsewhere.example/x".to_string(),
        ),
    ];
    for (sent, want) in &cases {
        let (status, location, _) = get_location(p.addr, &redirect_to(sent), Some(&host)).await;
        assert_eq!(status, 302, "{sent}");
        assert_eq!(location.as_deref(), Some(want.as_str()), "{sent}");
    }
    // A reflected `//host/…` that is no path under the upstream's base, and a redirect that needs
    // anchoring when the client sent no Host: refused, never passed on.
    for (sent, host) in [
        ("//evil.example/steal/", Some(host.as_str())),
        ("/\\evil.example/steal/", Some(host.as_str())),
        ("/org//127.0.0.1:19090/steal", None),
    ] {
        let (status, location, json) = get_location(p.addr, &redirect_to(sent), host).await;
        assert_eq!(status, 502, "{sent} {host:?}");
        assert_eq!(location, None, "{sent}");
        assert_eq!(json.expect("JSON")["error"], "unsafe_redirect", "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bracketed_host_is_an_ipv6_literal_and_a_port_or_it_is_refused() {
    const HEADER: &str = "idh-security-test-0123456789abcdef";
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start(&config(
        &entra,
        &[("/ado", &up.url(), ADO)],
        "",
        &format!(
            "\n[identity_endpoint]\nlisten = \"127.0.0.1:0\"\nheader = \"{HEADER}\"\nprofile = \"bot\"\n"
        ),
    ))
    .await;
    let identity = p.identity.expect("identity endpoint");
    let token_path =
        "/msi/token?resource=499b84ac-1321-427f-aa17-267ca6975798&api-version=2019-08-01";
    for host in [
        "[::1]evil.com",
        "[::1]@evil.com",
        "[::1].evil.com:80",
        "[localhost]evil",
        "[::1",
        "[::1]:7070@evil.example",
        "localhost@evil.example",
    ] {
        let (status, json, text) = raw(p.addr, &get("/ado/x", "").replace("127.0.0.1", host)).await;
        assert_eq!(status, 403, "proxy, Host {host}: {text}");
        assert_eq!(json.expect("JSON")["error"], "host_not_allowed", "{host}");
        let head = format!(
            "GET {token_path} HTTP/1.1\r\nHost: {host}\r\nX-IDENTITY-HEADER: {HEADER}\r\nConnection: close\r\n\r\n"
        );
        let (status, _, text) = raw(identity, &head).await;
        assert_eq!(status, 403, "identity endpoint, Host {host}: {text}");
        assert!(!text.contains("access_token"), "no token for Host {host}");
    }
    assert!(up.requests().is_empty(), "the upstream saw nothing");
    // The loopback literal itself still works, with or without a port.
    for host in ["[::1]", "[::1]:7070"] {
        let (status, _, text) = raw(p.addr, &get("/ado/x", "").replace("127.0.0.1", host)).await;
        assert_eq!(status, 200, "Host {host}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_is_refused_and_never_forwarded() {
    let (_entra, up, p) = start_ado("").await;
    let (status, json, text) = raw(
        p.addr,
        "TRACE /ado/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "{text}");
    assert_eq!(json.expect("JSON")["error"], "method_not_allowed");
    assert!(text.to_ascii_lowercase().contains("\r\nallow: "), "{text}");
    assert!(up.requests().is_empty(), "the upstream saw nothing");
}
