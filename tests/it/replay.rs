//! Upstream refusals (docs/credentials.md, "Token lifecycle"): a `401` (or Azure DevOps's sign-in
//! answers) on a replayable request drops that token, acquires a fresh one — once, single-flight —
//! and replays; a claims challenge re-acquires with its claims; large or streaming bodies pass the
//! refusal through; and a token that was itself a replacement is not replaced again within 30 s, so
//! an identity the API refuses cannot turn requests into a token storm.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use patless::credentials::{AccessToken, BoxFuture, Credential, CredentialError};
use patless::metrics::Metrics;
use patless::secret::Secret;
use patless::token::{CacheSettings, NoReplay, TokenCache, FORCED_REACQUIRE_INTERVAL};
use serde_json::{json, Value};

use crate::support;
use crate::support::entra::{FakeEntra, ADO_AUDIENCE, CLAIMS_REQUEST_CLAIM, DEFENDER_AUDIENCE};
use crate::support::msi::FakeMsi;
use crate::support::patless::{
    config, profile_config, start_ado, try_load, Patless, ADO, DEFENDER,
};
use crate::support::upstream::{FakeUpstream, RevokedAnswer};

fn metric(m: &str, line_start: &str) -> u64 {
    m.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn retries(m: &str, route: &str) -> u64 {
    metric(
        m,
        &format!("patless_upstream_auth_retries_total{{route=\"{route}\"}}"),
    )
}

/// The token the proxy holds now: the last one the fake Entra issued.
fn current_token(entra: &FakeEntra) -> String {
    entra.issued_tokens().last().cloned().expect("a token")
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn fnv_hex(data: &[u8]) -> String {
    format!("{:016x}", support::fnv1a(support::FNV_OFFSET, data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_drops_the_token_acquires_once_and_replays_every_waiting_request_intact() {
    let (entra, up, p) = start_ado("").await;
    let client = support::http_client();
    let r = support::get(&client, p.url("/ado/org/_apis/projects")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(entra.token_requests(), 1);
    // The session behind the token is revoked: the upstream now refuses it.
    let first = current_token(&entra);
    up.revoke(&first);

    // 50 concurrent uploads (bodies ≤ 1 MiB, so replayable), each with its own content.
    let tasks: Vec<_> = (0..50u8)
        .map(|i| {
            let client = client.clone();
            let url = p.url("/ado/upload");
            tokio::spawn(async move {
                let body = payload(20_000 + usize::from(i) * 1000, i);
                let want = (body.len() as u64, fnv_hex(&body));
                let r = client.post(url).body(body).send().await.expect("req");
                let status = r.status().as_u16();
                let json: Value = r.json().await.expect("json");
                (status, json, want)
            })
        })
        .collect();
    for t in tasks {
        let (status, json, (len, fnv)) = t.await.expect("task");
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["len"], len, "the replayed body arrived whole");
        assert_eq!(json["fnv"], fnv.as_str(), "and unchanged");
    }
    assert_eq!(
        entra.token_requests(),
        2,
        "one replacement for 50 refused requests: single-flight"
    );
    assert_ne!(current_token(&entra), first);
    let reqs = up.requests();
    let refused = reqs.iter().filter(|r| r.refused.is_some()).count();
    assert!(refused >= 1, "the revoked token was refused at least once");
    assert!(
        reqs.iter().all(|r| r.token_valid),
        "nothing arrived without a valid, unexpired token"
    );
    assert_eq!(up.accepted(), 51);
    let m = p.metrics().await;
    assert_eq!(retries(&m, "/ado"), refused as u64, "{m}");
}

/// Waits (a bounded while) until the fake Entra has served `n` token requests.
async fn token_requests_reach(entra: &FakeEntra, n: usize) {
    for _ in 0..200 {
        if entra.token_requests() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "only {} token requests, expected {n}",
        entra.token_requests()
    );
}

async fn chunked_upload(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"POST /ado/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_streaming_bodies_pass_the_refusal_through_and_the_token_is_replaced_for_the_next(
) {
    let (entra, up, p) = start_ado("").await;
    let client = support::http_client();
    assert_eq!(
        support::get(&client, p.url("/ado/warm")).await.status(),
        200
    );
    up.revoke(&current_token(&entra));

    // Over 1 MiB, with a Content-Length: streamed, so not replayable: the refusal is the answer…
    let big = payload(1024 * 1024 + 1, 7);
    let r = client
        .post(p.url("/ado/upload"))
        .body(big.clone())
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["x-upstream"],
        "fake",
        "the upstream's own answer"
    );
    assert!(
        up.requests().iter().any(|r| r.body_len == big.len() as u64),
        "the large body did stream upstream"
    );
    // … and the token is replaced in the background, so the client's retry goes through.
    token_requests_reach(&entra, 2).await;
    let r = client
        .post(p.url("/ado/upload"))
        .body(big)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);

    // Small, but chunked (no length known in advance): streamed too.
    up.revoke(&current_token(&entra));
    let answer = chunked_upload(p.addr).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    token_requests_reach(&entra, 3).await;
    let answer = chunked_upload(p.addr).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(entra.token_requests(), 3);
    assert_eq!(
        retries(&p.metrics().await, "/ado"),
        0,
        "nothing was replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_devops_sign_in_redirect_is_replayed_its_2xx_sign_in_pages_are_not() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let client = support::http_client();
    // The redirect to Azure DevOps's own sign-in host refuses the token before anything is done:
    // the request is replayed with a fresh token.
    up.set_revoked_answer(RevokedAnswer::AdoSignInRedirect);
    let p = Patless::start(&config(&entra, &[("/ado", &up.url(), ADO)], "", "")).await;
    let r = support::get(&client, p.url("/ado/org/_apis/projects")).await;
    assert_eq!(r.status(), 200);
    let before = entra.token_requests();
    up.revoke(&current_token(&entra));
    let r = client
        .get(p.url("/ado/org/_apis/projects"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200, "replayed with a fresh token");
    assert_eq!(entra.token_requests(), before + 1);
    assert_eq!(retries(&p.metrics().await, "/ado"), 1);
    p.stop().await;

    // A 2xx sign-in page refuses the token too, but a 2xx is an answer the upstream may have acted
    // on: never replayed, whatever the method. The answer is passed on and the token replaced for
    // the requests that follow.
    for answer in [RevokedAnswer::AdoNonAuthoritative, RevokedAnswer::AdoHtml] {
        up.set_revoked_answer(answer);
        let p = Patless::start(&config(&entra, &[("/ado", &up.url(), ADO)], "", "")).await;
        let warm = support::get(&client, p.url("/ado/warm")).await;
        assert_eq!(warm.status(), 200, "{answer:?}");
        let before = entra.token_requests();
        up.revoke(&current_token(&entra));
        let posts_before = up
            .requests()
            .iter()
            .filter(|r| r.method == http::Method::POST)
            .count();
        let r = client
            .post(p.url("/ado/org/_apis/wit/workitems"))
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .body(r#"{"title":"once"}"#)
            .send()
            .await
            .expect("req");
        let want = if answer == RevokedAnswer::AdoHtml {
            200
        } else {
            203
        };
        assert_eq!(r.status(), want, "{answer:?}: the sign-in page, passed on");
        assert!(
            r.text().await.expect("body").contains("Sign In"),
            "{answer:?}"
        );
        let posts = up
            .requests()
            .iter()
            .filter(|r| r.method == http::Method::POST)
            .count();
        assert_eq!(posts, posts_before + 1, "{answer:?}: the POST arrived once");
        assert_eq!(retries(&p.metrics().await, "/ado"), 0, "{answer:?}");
        token_requests_reach(&entra, before + 1).await;
        let r = client
            .get(p.url("/ado/org/_apis/projects"))
            .header("accept", "application/json")
            .send()
            .await
            .expect("req");
        assert_eq!(
            r.status(),
            200,
            "{answer:?}: the next request has a fresh token"
        );
        assert_eq!(entra.token_requests(), before + 1, "{answer:?}");
        p.stop().await;
    }

    // A redirect to `/_signin` on any other host is an answer like any other: passed on, the
    // request not replayed, the token kept.
    up.set_revoked_answer(RevokedAnswer::ForeignSignInRedirect);
    let p = Patless::start(&config(&entra, &[("/ado", &up.url(), ADO)], "", "")).await;
    let warm = support::get(&client, p.url("/ado/warm")).await;
    assert_eq!(warm.status(), 200);
    let before = entra.token_requests();
    up.revoke(&current_token(&entra));
    let seen = up.requests().len();
    let r = client
        .post(p.url("/ado/org/_apis/wit/workitems"))
        .header("accept", "application/json")
        .body(r#"{"title":"once"}"#)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 302);
    assert_eq!(up.requests().len(), seen + 1, "sent once");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(entra.token_requests(), before, "the token is kept");
    assert_eq!(retries(&p.metrics().await, "/ado"), 0);
    p.stop().await;

    // A web page (HTML asked for, no _apis) is an answer, not a refusal.
    up.set_revoked_answer(RevokedAnswer::AdoHtml);
    let p = Patless::start(&config(&entra, &[("/ado", &up.url(), ADO)], "", "")).await;
    assert_eq!(
        support::get(&client, p.url("/ado/warm")).await.status(),
        200
    );
    up.revoke(&current_token(&entra));
    let before = entra.token_requests();
    let r = client
        .get(p.url("/ado/org/project/_wiki"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    assert_eq!(entra.token_requests(), before);
    assert_eq!(retries(&p.metrics().await, "/ado"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_is_refused_too_is_passed_through_without_a_token_storm() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(DEFENDER_AUDIENCE).await;
    // The API refuses this identity whatever its token (no permission, say).
    let p = Patless::start(&config(&entra, &[("/def", &up.url(), DEFENDER)], "", "")).await;
    let client = support::http_client();
    up.refuse_every_token();
    let mut statuses = Vec::new();
    for i in 0..20 {
        let r = support::get(&client, p.url(&format!("/def/api/machines/{i}"))).await;
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(
        entra.token_requests(),
        2,
        "the first token and one replacement; then the refusals pass through"
    );
    assert_eq!(retries(&p.metrics().await, "/def"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_challenge_is_answered_with_a_token_carrying_those_claims() {
    let (entra, up, p) = start_ado("").await;
    let client = support::http_client();
    assert_eq!(
        support::get(&client, p.url("/ado/warm")).await.status(),
        200
    );
    // The session changed (a CAE event): the API wants a token issued after it.
    let challenge = json!({"access_token": {"nbf": {"essential": true, "value": "1726000000"}}});
    up.require_claims(challenge.clone());
    let r = client
        .post(p.url("/ado/upload"))
        .body(payload(5000, 3))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let last = entra.requests().last().cloned().expect("a token request");
    let sent: Value = serde_json::from_str(last.form.get("claims").expect("claims sent")).unwrap();
    assert_eq!(sent, challenge, "exactly the challenge's claims");
    let token = current_token(&entra);
    let claims = support::certs::jwt_claims(&token);
    assert!(claims[CLAIMS_REQUEST_CLAIM].is_string());
    // The new token serves what follows: no more challenges, no more token requests.
    let before = entra.token_requests();
    for i in 0..5 {
        let r = support::get(&client, p.url(&format!("/ado/x/{i}"))).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(entra.token_requests(), before);
    assert_eq!(retries(&p.metrics().await, "/ado"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cp1_capability_is_declared_and_merged_with_a_challenge() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let toml = config(&entra, &[("/ado", &up.url(), ADO)], "", "").replace(
        "client_secret = \"",
        "client_capabilities = [\"cp1\"]\nclient_secret = \"",
    );
    let p = Patless::start(&toml).await;
    let client = support::http_client();
    assert_eq!(
        support::get(&client, p.url("/ado/warm")).await.status(),
        200
    );
    let cp1 = json!({"access_token": {"xms_cc": {"values": ["cp1"]}}});
    let first = entra.requests().last().cloned().expect("token request");
    let sent: Value = serde_json::from_str(first.form.get("claims").expect("claims")).unwrap();
    assert_eq!(sent, cp1, "every token request declares the capability");

    let challenge = json!({"access_token": {"nbf": {"essential": true, "value": "1726000000"}}});
    up.require_claims(challenge);
    let r = support::get(&client, p.url("/ado/after-event")).await;
    assert_eq!(r.status(), 200);
    let last = entra.requests().last().cloned().expect("token request");
    let sent: Value = serde_json::from_str(last.form.get("claims").expect("claims")).unwrap();
    assert_eq!(
        sent,
        json!({"access_token": {
            "nbf": {"essential": true, "value": "1726000000"},
            "xms_cc": {"values": ["cp1"]}
        }}),
        "the challenge merged with the capability"
    );
    // A kind that cannot send claims cannot declare capabilities.
    let bad = toml.replace("kind = \"client_secret\"", "kind = \"azure_cli\"");
    let err = try_load(&bad).expect_err("refused");
    assert!(
        err.to_string().contains("profiles.bot.client_capabilities"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_cannot_pass_claims_so_the_challenge_bypasses_the_cache() {
    let imds = FakeMsi::imds().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(support::msi::system_assigned());
    let body = format!("kind = \"managed_identity\"\nendpoint = \"{}\"", imds.url());
    let toml = profile_config(None, &up.url(), "mi", &body, "");
    let p = Patless::start(&toml).await;
    let client = support::http_client();
    assert_eq!(
        support::get(&client, p.url("/ado/warm")).await.status(),
        200
    );
    assert_eq!(imds.requests().len(), 1);
    up.require_claims(json!({"access_token": {"nbf": {"essential": true, "value": "1"}}}));
    let r = support::get(&client, p.url("/ado/challenged")).await;
    // IMDS was asked again (the cached token was bypassed), without claims: it cannot satisfy
    // the challenge, so the upstream's answer is passed on.
    assert_eq!(imds.requests().len(), 2, "the cache entry was bypassed");
    assert!(imds
        .requests()
        .iter()
        .all(|r| !r.query.contains_key("claims")));
    assert_eq!(r.status(), 401);
    assert!(r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .any(|v| v.to_str().unwrap_or("").contains("insufficient_claims")));
    assert_eq!(retries(&p.metrics().await, "/ado"), 1);
}

/// A credential that counts acquisitions and hands out distinct tokens.
#[derive(Debug, Default)]
struct Counting(AtomicUsize);

impl Credential for Counting {
    fn acquire<'a>(
        &'a self,
        _scope: &'a str,
        _claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        Box::pin(async move {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Ok(AccessToken {
                token: Secret::new(format!("token-{n}")),
                expires_in: Duration::from_secs(3600),
                refresh_in: None,
            })
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_replacement_may_be_replaced_again_once_the_interval_has_passed() {
    let cred = Arc::new(Counting::default());
    let mut creds: std::collections::HashMap<String, Arc<dyn Credential>> = Default::default();
    creds.insert("p".into(), cred.clone());
    let cache = TokenCache::new(
        creds,
        CacheSettings {
            acquire_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(5),
        },
        Metrics::new(prometheus::Registry::new()),
    );
    let entry = cache.entry("p", "s/.default", None).expect("entry");
    let t0 = entry.get().await.expect("token");
    assert_eq!(t0.secret().expose(), "token-0");
    let t1 = entry.reacquire(&t0, None).await.expect("a replacement");
    assert_eq!(t1.secret().expose(), "token-1");
    assert!(t1.forced);
    // A second refusal of t0 (a request that was in flight with it): the newer token, no new
    // acquisition.
    let again = entry.reacquire(&t0, None).await.expect("the newer one");
    assert_eq!(again.secret().expose(), "token-1");
    // t1 refused moments later: not replaced.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(matches!(
        entry.reacquire(&t1, None).await,
        Err(NoReplay::RecentlyReplaced)
    ));
    assert_eq!(cred.0.load(Ordering::SeqCst), 2);
    // Once the interval has passed, it may be.
    tokio::time::advance(FORCED_REACQUIRE_INTERVAL).await;
    let t2 = entry.reacquire(&t1, None).await.expect("replaced");
    assert_eq!(t2.secret().expose(), "token-2");
    // A claims challenge on a young replacement no upstream accepted yet: the same rule.
    assert!(matches!(
        entry.reacquire(&t2, Some("{}".into())).await,
        Err(NoReplay::RecentlyReplaced)
    ));
    assert_eq!(cred.0.load(Ordering::SeqCst), 3);
    // Once an upstream accepted it, a later refusal (a revocation) replaces it at once.
    t2.mark_accepted();
    let t3 = entry.reacquire(&t2, None).await.expect("replaced");
    assert_eq!(t3.secret().expose(), "token-3");
    assert_eq!(cred.0.load(Ordering::SeqCst), 4);
}
