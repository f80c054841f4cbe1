//! The proxy as a client sees it (README.md, "The life of a request"): routing, token injection,
//! header hygiene, redirects, errors, streaming, the cold burst and an Entra outage. The fake
//! upstream verifies every token's signature, audience, expiry and identity (app, tenant, object
//! id), so a 200 here proves the right token of the route's profile arrived.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support;
use crate::support::entra::{FakeEntra, Fault, ADO_AUDIENCE, CLIENT_SECRET, DEFENDER_AUDIENCE};
use crate::support::patless::{
    config, load, route_toml, server_toml, start_ado, Patless, ADO, DEFENDER,
};
use crate::support::upstream::FakeUpstream;

async fn json(resp: reqwest::Response) -> Value {
    resp.json().await.expect("JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injects_token_and_strips_client_credentials_and_hop_by_hop_headers() {
    let entra = FakeEntra::start().await;
    let ado = FakeUpstream::start(ADO_AUDIENCE).await;
    let defender = FakeUpstream::start(DEFENDER_AUDIENCE).await;
    let p = Patless::start(&config(
        &entra,
        &[
            ("/ado", &ado.url(), ADO),
            ("/defender", &defender.url(), DEFENDER),
        ],
        "",
        "",
    ))
    .await;
    let client = support::http_client();
    let resp = client
        .get(p.url("/ado/org/_apis/projects?api-version=7.1"))
        .basic_auth("", Some("stale-pat-value"))
        .header("Proxy-Authorization", "Basic c29tZXRoaW5n")
        .header("Connection", "keep-alive, X-Drop-Me")
        .header("X-Drop-Me", "1")
        .header("Keep-Alive", "timeout=5")
        .header("X-Keep-Me", "yes")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(body["path"], "/org/_apis/projects?api-version=7.1");
    let rec = &ado.requests()[0];
    assert!(
        rec.token_valid,
        "upstream rejected the token: {:?}",
        rec.token_error
    );
    let h = &rec.headers;
    let auth = h["authorization"].to_str().expect("ascii");
    assert!(auth.starts_with("Bearer "), "{auth}");
    assert!(entra
        .issued_tokens()
        .iter()
        .any(|t| auth == format!("Bearer {t}")));
    assert!(h.get("proxy-authorization").is_none());
    assert!(h.get("x-drop-me").is_none());
    assert!(h.get("keep-alive").is_none());
    assert_eq!(h["x-keep-me"], "yes");
    assert_eq!(h["x-tfs-fedauthredirect"], "Suppress");
    assert_eq!(h["host"], ado.addr().to_string().as_str());
    assert!(h.get("x-forwarded-for").is_none());

    let resp = client
        .post(p.url("/defender/api/incidents"))
        .header("content-type", "application/json")
        .body(r#"{"a":1}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/api/incidents");
    assert_eq!(body["body_len"], 7);
    let rec = &defender.requests()[0];
    assert!(rec.token_valid, "{:?}", rec.token_error);
    assert!(
        rec.headers.get("x-tfs-fedauthredirect").is_none(),
        "Suppress is for Azure DevOps only"
    );
    assert_eq!(ado.rejected() + defender.rejected(), 0);
    // One token per scope.
    assert_eq!(entra.token_requests(), 2);
}

/// Two routes on one audience (Azure DevOps), each with its own client-secret profile: another
/// app in another tenant. Each upstream expects its profile's identity, so a route handed the
/// other profile's token (same audience, same signer) would be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_gets_its_own_profiles_token_on_a_shared_audience() {
    let entra = FakeEntra::start().await;
    let apps = [
        (
            "alpha",
            "a1a1a1a1-0000-4000-8000-00000000a1a1",
            "7e7e7e7e-0000-4000-8000-0000000000a1",
        ),
        (
            "beta",
            "b2b2b2b2-0000-4000-8000-00000000b2b2",
            "7e7e7e7e-0000-4000-8000-0000000000b2",
        ),
    ];
    let mut toml = format!(
        "{}\n[entra]\nauthority_host = \"{}\"\n",
        server_toml("shutdown_grace = \"5s\""),
        entra.authority()
    );
    let mut upstreams = Vec::new();
    for (name, client_id, tenant) in apps {
        let up = FakeUpstream::start(ADO_AUDIENCE).await;
        up.expect(entra.register_app(tenant, client_id));
        toml.push_str(&format!(
            "\n[profiles.{name}]\nkind = \"client_secret\"\ntenant_id = \"{tenant}\"\n\
             client_id = \"{client_id}\"\nclient_secret = \"{CLIENT_SECRET}\"\n"
        ));
        toml.push_str(&route_toml(&format!("/{name}"), &up.url(), name, ADO));
        upstreams.push(up);
    }
    let p = Patless::start(&toml).await;

    for round in 0..3 {
        for (name, _, _) in apps {
            let resp = p
                .get(&format!("/{name}/org/_apis/projects?round={round}"))
                .await;
            let status = resp.status();
            assert_eq!(
                status,
                200,
                "/{name}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
    }
    for ((name, client_id, tenant), up) in apps.iter().zip(&upstreams) {
        let seen = up.requests();
        assert_eq!(
            up.rejected(),
            0,
            "{name}: {:?}",
            up.counts().invalid_reasons
        );
        assert_eq!(up.accepted(), 3, "{name}");
        for claims in seen.iter().map(|r| r.claims.as_ref().expect("valid token")) {
            assert_eq!(claims["appid"], *client_id, "{name}");
            assert_eq!(claims["tid"], *tenant, "{name}");
        }
    }
    // One token per profile, from its own tenant's token endpoint.
    let requests = entra.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    for (name, client_id, tenant) in apps {
        assert!(
            requests
                .iter()
                .any(|r| r.path == format!("/{tenant}/oauth2/v2.0/token")
                    && r.form["client_id"] == client_id),
            "no token request of {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_on_whole_segments_longest_prefix_first() {
    let entra = FakeEntra::start().await;
    let a = FakeUpstream::start(ADO_AUDIENCE).await;
    let b = FakeUpstream::start(ADO_AUDIENCE).await;
    let base = format!("{}/base", b.url());
    let p = Patless::start(&config(
        &entra,
        &[("/ado", &a.url(), ADO), ("/ado/special/", &base, ADO)],
        "",
        "",
    ))
    .await;
    let client = support::http_client();

    let r = json(support::get(&client, p.url("/ado")).await).await;
    assert_eq!(r["path"], "/");
    let r = json(support::get(&client, p.url("/ado/x/y?q=1")).await).await;
    assert_eq!(r["path"], "/x/y?q=1");
    let r = json(support::get(&client, p.url("/ado/special/z")).await).await;
    assert_eq!(r["path"], "/base/z");
    let r = json(support::get(&client, p.url("/ado/specialist")).await).await;
    assert_eq!(
        r["path"], "/specialist",
        "a prefix matches whole segments only"
    );
    assert_eq!(a.requests().len(), 3);
    assert_eq!(b.requests().len(), 1);

    for path in ["/adox", "/", "/other/ado", "/dev.azure.com/org"] {
        let resp = support::get(&client, p.url(path)).await;
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body = json(resp).await;
        assert_eq!(body["error"], "no_route", "{path}");
        assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    }
    assert_eq!(
        a.requests().len() + b.requests().len(),
        4,
        "nothing unrouted reached an upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_paths_that_could_escape_their_prefix() {
    let (_entra, up, p) = start_ado("").await;
    for path in [
        "/ado/../admin",
        "/ado/%2e%2e/admin",
        "/ado/a%2Fb",
        "/ado/a%5cb",
        "/ado/%zz",
    ] {
        // A raw request, so no client normalises the path first.
        let mut s = tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert!(out.starts_with("HTTP/1.1 400"), "{path}: {out}");
        assert!(out.contains("\"invalid_path\""), "{path}: {out}");
    }
    assert!(up.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_redirects_into_the_upstream_back_to_the_proxy() {
    let (_entra, _up, p) = start_ado("").await;
    let client = support::http_client();
    let r = support::get(&client, p.url("/ado/redirect")).await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/ado/echo/after-redirect?x=1");
    let r = support::get(&client, p.url("/ado/redirect-relative")).await;
    assert_eq!(r.headers()["location"], "/ado/echo/relative");
    // A client that follows redirects stays behind the proxy and keeps working.
    let following = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let r = following
        .get(p.url("/ado/redirect"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    assert_eq!(r.url().port(), Some(p.addr.port()));
    assert_eq!(json(r).await["path"], "/echo/after-redirect?x=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_unreachable_and_timeout_are_json_errors() {
    let entra = FakeEntra::start().await;
    // A port with nothing behind it.
    let closed = support::ClosedPort::new();
    let closed_url = closed.url();
    // A server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        }
    });
    let p = Patless::start(&config(
        &entra,
        &[("/closed", &closed_url, ADO), ("/silent", &silent_url, ADO)],
        "response_header_timeout = \"300ms\"",
        "",
    ))
    .await;
    let client = support::http_client();
    let r = support::get(&client, p.url("/closed/x")).await;
    assert_eq!(r.status(), 502);
    let body = json(r).await;
    assert_eq!(body["error"], "upstream_unreachable");
    assert_eq!(body["route"], "/closed");
    assert_eq!(body["profile"], "bot");
    let r = support::get(&client, p.url("/silent/x")).await;
    assert_eq!(r.status(), 504);
    assert_eq!(json(r).await["error"], "upstream_timeout");
    let metrics = p.metrics().await;
    assert!(
        metrics.contains(r#"patless_upstream_errors_total{kind="connect",route="/closed"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"patless_upstream_errors_total{kind="timeout",route="/silent"} 1"#),
        "{metrics}"
    );
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_of_1000_requests_makes_one_token_request() {
    let entra = FakeEntra::start().await;
    // Slow Entra: every request of the burst arrives while the first acquisition is in flight.
    entra.push_fault(Fault::Delay(Duration::from_millis(800)));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start(&config(&entra, &[("/ado", &up.url(), ADO)], "", "")).await;
    let client = support::http_client();
    let started = std::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let c = client.clone();
        let url = p.url(&format!("/ado/org/_apis/item/{i}"));
        set.spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        if r.expect("task").expect("request") == 200 {
            ok += 1;
        }
    }
    eprintln!(
        "cold burst: 1000 requests in {:?}, {} token request(s)",
        started.elapsed(),
        entra.token_requests()
    );
    assert_eq!(ok, 1000);
    assert_eq!(
        entra.token_requests(),
        1,
        "single-flight: one acquisition for the whole burst"
    );
    assert_eq!(up.accepted(), 1000);
    assert_eq!(up.rejected(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_outage_serves_the_cached_token_until_the_skew_margin_then_503() {
    let entra = FakeEntra::start().await;
    // 4-s tokens: refresh due at 2 s, usable until 4 − 0.4 = 3.6 s.
    entra.set_lifetime(4);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start(&config(&entra, &[("/ado", &up.url(), ADO)], "", "")).await;
    let client = support::http_client();
    let r = support::get(&client, p.url("/ado/a")).await;
    assert_eq!(r.status(), 200);
    let t0 = std::time::Instant::now();
    entra.set_fault(Some(Fault::ServerError));
    // Through the outage, requests keep succeeding with the cached token …
    let mut last_ok = t0;
    let mut first_503 = None;
    while t0.elapsed() < Duration::from_secs(6) {
        let r = support::get(&client, p.url("/ado/b")).await;
        match r.status().as_u16() {
            200 => last_ok = std::time::Instant::now(),
            503 => {
                assert!(r.headers().contains_key("retry-after"));
                let body = json(r).await;
                assert_eq!(body["error"], "token_unavailable");
                assert!(
                    body["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("HTTP 500"),
                    "{body}"
                );
                first_503.get_or_insert(std::time::Instant::now());
                break;
            }
            s => panic!("unexpected status {s}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_503 = first_503.expect("requests must fail once the token is past its margin");
    let served = last_ok.duration_since(t0);
    assert!(
        served >= Duration::from_millis(2500),
        "cached token served for only {served:?}"
    );
    assert!(first_503.duration_since(t0) <= Duration::from_millis(4000));
    // … and the upstream never saw a request without a valid token.
    assert_eq!(up.rejected(), 0);
    // The refresher backed off: a trickle of retries, not a storm.
    let attempts = entra.token_requests();
    assert!(
        (2..=8).contains(&attempts),
        "{attempts} token requests during the outage"
    );
    let metrics = p.metrics().await;
    assert!(
        metrics.contains(r#"patless_token_refreshes_total{profile="bot",result="server_error"}"#),
        "{metrics}"
    );

    // Entra recovers: the refresher gets a new token on its next attempt.
    entra.set_fault(None);
    let mut recovered = false;
    for _ in 0..100 {
        if support::get(&client, p.url("/ado/c")).await.status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_streams_intact_both_ways() {
    const N: u64 = 10 * 1024 * 1024;
    let (_entra, _up, p) = start_ado("").await;
    let client = support::http_client();

    let payload: Vec<u8> = (0..N).map(support::pattern_byte).collect();
    let r = client
        .post(p.url("/ado/upload"))
        .body(payload)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    assert_eq!(body["len"], N);
    assert_eq!(body["fnv"], format!("{:016x}", support::pattern_fnv(N)));

    let mut r = support::get(&client, p.url(&format!("/ado/download/{N}"))).await;
    assert_eq!(r.status(), 200);
    let (mut len, mut fnv) = (0u64, support::FNV_OFFSET);
    while let Some(chunk) = r.chunk().await.expect("chunk") {
        len += chunk.len() as u64;
        fnv = support::fnv1a(fnv, &chunk);
    }
    assert_eq!(len, N);
    assert_eq!(fnv, support::pattern_fnv(N));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_rejection_is_a_503_with_the_aadsts_hint_and_no_secret() {
    let entra = FakeEntra::start().await;
    entra.set_fault(Some(Fault::InvalidClient));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start(&config(&entra, &[("/ado", &up.url(), ADO)], "", "")).await;
    let client = support::http_client();
    let r = support::get(&client, p.url("/ado/x")).await;
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry >= 1);
    let text = r.text().await.expect("text");
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["error"], "token_unavailable");
    assert_eq!(body["route"], "/ado");
    assert_eq!(body["profile"], "bot");
    let msg = body["message"].as_str().expect("message");
    assert!(msg.contains("AADSTS7000215"), "{msg}");
    assert!(msg.contains("not its ID"), "{msg}");
    assert!(!text.contains(support::entra::CLIENT_SECRET));
    assert!(
        up.requests().is_empty(),
        "nothing is forwarded without a token"
    );
    let metrics = p.metrics().await;
    assert!(
        metrics.contains(r#"patless_token_refreshes_total{profile="bot",result="invalid_client"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"patless_requests_total{route="/ado",status="503"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let entra = FakeEntra::start().await;
    // An upstream that answers 700 ms after the request arrives.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let slow_url = format!("http://{}", slow.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = slow.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(700)).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndone",
                    )
                    .await;
            });
        }
    });
    let mut p = Patless::start(&config(&entra, &[("/slow", &slow_url, ADO)], "", "")).await;
    let client = support::http_client();
    // Warm the token so the request is in the upstream phase when shutdown begins.
    for _ in 0..50 {
        if entra.token_requests() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = p.url("/slow/x");
    let c = client.clone();
    let inflight = tokio::spawn(async move { c.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.begin_shutdown();
    let resp = inflight
        .await
        .expect("task")
        .expect("in-flight request completes");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "done");
    p.stop().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_a_unix_socket_and_replaces_a_stale_one() {
    use http_body_util::BodyExt;
    use patless::config::ListenAddr;
    use patless::env::MapEnv;
    use patless::server::Listener;

    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("patless.sock");
    // A stale socket from a previous run is replaced, not an error.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("stale socket"));
    let env = MapEnv::default();
    let toml = config(&entra, &[("/ado", &up.url(), ADO)], "", "");
    let loaded = load(&toml, &env);
    let app = patless::App::new(
        loaded.config,
        std::sync::Arc::new(env),
        prometheus::Registry::new(),
    )
    .expect("app");
    let listener = Listener::bind(&ListenAddr::Unix(sock.clone()), 0o660)
        .await
        .expect("bind unix");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sock)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o660, "who may connect is who may use the identities");
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(patless::run(
        patless::Listeners {
            proxy: listener,
            admin: None,
            identity: None,
        },
        app,
        async move {
            let _ = rx.await;
        },
    ));

    let stream = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/ado/org/_apis/projects")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["path"], "/org/_apis/projects");
    assert_eq!(up.accepted(), 1);
    let _ = tx.send(());
    task.await.expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_act_with_the_proxys_identity() {
    let (_entra, up, p) = start_ado("allowed_hosts = [\"patless.tools.svc\"]").await;
    let client = support::http_client();
    let cases: [(&str, &str, &str); 4] = [
        ("sec-fetch-site", "cross-site", "cross_site_request"),
        ("origin", "https://evil.example", "cross_site_request"),
        // DNS rebinding: evil.example resolved to 127.0.0.1, the browser still says its name.
        ("host", "evil.example:7070", "host_not_allowed"),
        ("host", "127.0.0.1.nip.io", "host_not_allowed"),
    ];
    for (name, value, code) in cases {
        let r = client
            .post(p.url("/ado/org/_apis/wit/workitems"))
            .header(name, value)
            .body("{}")
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), 403, "{name}: {value}");
        assert_eq!(json(r).await["error"], code, "{name}: {value}");
    }
    assert!(
        up.requests().is_empty(),
        "nothing refused reached the upstream"
    );
    // Names the config allows, and ordinary tools, pass.
    let r = client
        .get(p.url("/ado/x"))
        .header("host", "patless.tools.svc:7070")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let r = client
        .get(p.url("/ado/x"))
        .header("sec-fetch-site", "none")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let m = p.metrics().await;
    assert!(
        m.contains(r#"patless_inbound_rejections_total{reason="cross_site_request"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"patless_inbound_rejections_total{reason="host_not_allowed"} 2"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_given_before_the_body_was_read_closes_the_connection_and_says_so() {
    let entra = FakeEntra::start().await;
    entra.set_fault(Some(Fault::InvalidClient));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start(&config(&entra, &[("/ado", &up.url(), ADO)], "", "")).await;
    // An upload that gets 503 token_unavailable before its body is read: a pooling client must be
    // told the connection will not be reused.
    let mut s = tokio::net::TcpStream::connect(p.addr)
        .await
        .expect("connect");
    let body = vec![b'x'; 256 * 1024];
    let head = format!(
        "POST /ado/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let _ = s.write_all(&body).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection is closed after the answer");
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 503"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    // A bodyless request keeps its connection.
    let client = support::http_client();
    let r = support::get(&client, p.url("/ado/x")).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("connection").is_none());
    assert!(up.requests().is_empty());
}

/// Upstream connections a burst opened are closed once they have been idle for the pool's idle
/// timeout (60 s), even if no further request comes to meet them.
#[tokio::test]
async fn upstream_connections_left_idle_are_closed_without_another_request() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let entra = FakeEntra::start().await;
    // An upstream by hand, to count connections: `200 ok` to each request after 100 ms.
    let listener = support::bind_loopback().await;
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (opened, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (o, c) = (Arc::clone(&opened), Arc::clone(&closed));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            o.fetch_add(1, Ordering::SeqCst);
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let p = Patless::start(&config(&entra, &[("/ado", &url, ADO)], "", "")).await;
    let client = support::http_client();
    let get = || client.get(format!("http://{}/ado/x", p.addr)).send();
    let (a, b) = tokio::join!(get(), get());
    for resp in [a, b] {
        let resp = resp.expect("answer");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.expect("body"), "ok");
    }
    assert_eq!(
        opened.load(Ordering::SeqCst),
        2,
        "two at once: two connections"
    );
    // 50 s idle: kept (the pool is swept every 15 s and closes what is idle for 60 s).
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(50)).await;
    tokio::time::resume();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(closed.load(Ordering::SeqCst), 0, "not idle long enough yet");
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(26)).await;
    tokio::time::resume();
    for _ in 0..200 {
        if closed.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        closed.load(Ordering::SeqCst),
        2,
        "both closed once idle 60 s"
    );
    // And the next request simply opens a new one.
    let resp = get().await.expect("answer");
    assert_eq!(resp.text().await.expect("body"), "ok");
    assert_eq!(opened.load(Ordering::SeqCst), 3);
    p.stop().await;
}
