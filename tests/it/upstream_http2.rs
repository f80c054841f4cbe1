//! HTTP/2 toward upstreams (docs/configuration.md, `server.upstream_http2`): an `https` upstream
//! that offers `h2` by ALPN gets HTTP/2, many client connections share one upstream connection
//! per worker, and the token, replay, claims-challenge, `Location` and streaming behaviours hold
//! over it as over HTTP/1.1. The upstream is `support/h2front.rs` (TLS with the test CA, which
//! patless trusts through `[entra] ca_file`) in front of the usual token-checking fake.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support;
use crate::support::egress::write_ca;
use crate::support::entra::{FakeEntra, ADO_AUDIENCE};
use crate::support::h2front::H2Front;
use crate::support::patless::{config, Patless, ADO};
use crate::support::upstream::FakeUpstream;

struct H2Setup {
    entra: FakeEntra,
    up: FakeUpstream,
    front: H2Front,
    p: Patless,
    _dir: tempfile::TempDir,
}

/// `/ado` → the HTTPS front of an Azure DevOps fake, `server_extra` in `[server]`.
async fn start(server_extra: &str) -> H2Setup {
    start_delayed(server_extra, Duration::ZERO).await
}

/// [`start`], the front holding each request for `delay`.
async fn start_delayed(server_extra: &str, delay: Duration) -> H2Setup {
    support::install_crypto_provider();
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let front = H2Front::start(up.addr(), delay).await;
    let dir = tempfile::TempDir::new().expect("tempdir");
    let ca = write_ca(dir.path());
    let toml = config(&entra, &[("/ado", &front.url(), ADO)], server_extra, "");
    let toml = toml.replacen(
        "[entra]\n",
        &format!("[entra]\nca_file = \"{}\"\n", ca.display()),
        1,
    );
    let p = Patless::start(&toml).await;
    H2Setup {
        entra,
        up,
        front,
        p,
        _dir: dir,
    }
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

fn fnv_hex(data: &[u8]) -> String {
    format!("{:016x}", support::fnv1a(support::FNV_OFFSET, data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_client_connections_share_one_http2_connection_per_worker() {
    let s = start("").await;
    // 64 clients at once, each on its own connection to patless.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let url =
                s.p.url(&format!("/ado/org/_apis/projects/{i}?api-version=7.1"));
            tokio::spawn(async move {
                let client = support::http_client();
                let r = support::get(&client, url).await;
                let status = r.status().as_u16();
                let version = r.version();
                let json: Value = r.json().await.expect("json");
                (status, version, json)
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, version, json) = t.await.expect("task");
        assert_eq!(status, 200, "{json}");
        assert_eq!(
            version,
            reqwest::Version::HTTP_11,
            "clients still get HTTP/1.1"
        );
        assert_eq!(
            json["path"],
            format!("/org/_apis/projects/{i}?api-version=7.1")
        );
        // The fake saw the injected token and the upstream's own name.
        assert_eq!(
            json["headers"]["host"],
            format!("localhost:{}", s.front.addr.port())
        );
    }
    assert_eq!(s.up.accepted(), 64, "every token was valid for the API");
    assert_eq!(s.front.h2_requests(), 64, "every request came over HTTP/2");
    assert_eq!(s.front.h1_connections(), 0);
    let h2 = s.front.h2_connections();
    assert!(
        (1..=2).contains(&h2),
        "one HTTP/2 connection per worker (2 workers), not one per client: {h2}"
    );
    assert_eq!(
        s.front
            .seen()
            .h2_with_host
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "`:authority` names the upstream; no `Host` besides it"
    );
    assert_eq!(s.entra.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_opens_only_past_the_streams_one_carries() {
    // One worker, 150 requests held open upstream at once: one connection carries 100.
    let s = start_delayed("workers = 1", Duration::from_millis(700)).await;
    let client = support::http_client();
    assert_eq!(
        support::get(&client, s.p.url("/ado/warm")).await.status(),
        200
    );
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let url = s.p.url(&format!("/ado/held/{i}"));
            tokio::spawn(async move { support::get(&support::http_client(), url).await.status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    let peak = s
        .front
        .seen()
        .h2_peak_streams
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        peak > patless::proxy::pool::MAX_STREAMS,
        "they were open at once: {peak}"
    );
    assert_eq!(
        s.front.h2_connections(),
        2,
        "100 streams on the first, the rest on a second"
    );
    assert_eq!(s.front.h1_connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_and_concurrent_uploads_replayed_over_http2() {
    let s = start("").await;
    let client = support::http_client();
    assert_eq!(
        support::get(&client, s.p.url("/ado/warm")).await.status(),
        200
    );
    let first = s.entra.issued_tokens().last().cloned().expect("a token");
    s.up.revoke(&first);
    let tasks: Vec<_> = (0..20u8)
        .map(|i| {
            let client = client.clone();
            let url = s.p.url("/ado/upload");
            tokio::spawn(async move {
                let body = payload(30_000 + usize::from(i) * 997, i);
                let want = (body.len() as u64, fnv_hex(&body));
                let r = client.post(url).body(body).send().await.expect("req");
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.expect("json"), want)
            })
        })
        .collect();
    for t in tasks {
        let (status, json, (len, fnv)) = t.await.expect("task");
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["len"], len, "the replayed body arrived whole");
        assert_eq!(json["fnv"], fnv);
    }
    assert_eq!(
        s.entra.token_requests(),
        2,
        "one replacement, single-flight"
    );
    assert!(s.front.h1_connections() == 0 && s.front.h2_requests() >= 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_challenge_over_http2_is_answered_with_a_token_carrying_the_claims() {
    let s = start("").await;
    let client = support::http_client();
    assert_eq!(
        support::get(&client, s.p.url("/ado/warm")).await.status(),
        200
    );
    let challenge = json!({"access_token": {"nbf": {"essential": true, "value": "1726000000"}}});
    s.up.require_claims(challenge.clone());
    let r = client
        .post(s.p.url("/ado/upload"))
        .body(payload(4000, 1))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let last = s.entra.requests().last().cloned().expect("a token request");
    let sent: Value =
        serde_json::from_str(last.form.get("claims").expect("claims sent")).expect("json");
    assert_eq!(sent, challenge);
    assert_eq!(s.front.h1_connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_and_redirects_point_back_at_patless_over_http2() {
    let s = start("").await;
    let client = support::http_client();
    // 24 MiB down, streamed (no Content-Length from the fake), byte for byte.
    let n: u64 = 24 * 1024 * 1024;
    let r = support::get(&client, s.p.url(&format!("/ado/download/{n}"))).await;
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.expect("download");
    assert_eq!(bytes.len() as u64, n);
    assert!(bytes
        .iter()
        .enumerate()
        .step_by(4093)
        .all(|(i, b)| *b == support::pattern_byte(i as u64)));
    // 5 MiB up, longer than a replayable body: streamed.
    let body = payload(5 * 1024 * 1024, 9);
    let want = fnv_hex(&body);
    let r = client
        .post(s.p.url("/ado/upload"))
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let json: Value = r.json().await.expect("json");
    assert_eq!(json["fnv"], want);
    // A redirect into the upstream comes back pointed at the route.
    let to = format!("{}/echo/after", s.front.url());
    let r = support::get(&client, s.p.url(&format!("/ado/redirect-to?to={to}"))).await;
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().expect("ascii");
    assert_eq!(
        location, "/ado/echo/after",
        "into the route, relative to patless"
    );
    assert_eq!(s.front.h1_connections(), 0);
    assert!(s.front.h2_connections() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_http2_false_keeps_http1_and_a_front_without_h2_is_spoken_to_in_http1() {
    let s = start("upstream_http2 = false").await;
    let client = support::http_client();
    for i in 0..3 {
        let r = support::get(&client, s.p.url(&format!("/ado/x/{i}"))).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(s.front.h2_connections(), 0, "h2 was not offered");
    assert!(s.front.h1_connections() >= 1);
    assert_eq!(s.up.accepted(), 3);
}
