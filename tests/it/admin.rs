//! The admin listener (docs/metrics.md) and the `auto` profile's environment service principal.

use std::time::Duration;

use patless::env::MapEnv;
use serde_json::Value;

use crate::support;
use crate::support::entra::{FakeEntra, Fault, ADO_AUDIENCE, CLIENT_ID, CLIENT_SECRET, TENANT};
use crate::support::patless::{config, try_load, Patless, ADO};
use crate::support::upstream::FakeUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_green_once_every_route_holds_a_token_and_metrics_follow() {
    let entra = FakeEntra::start().await;
    entra.push_fault(Fault::Delay(Duration::from_millis(600)));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start(&config(&entra, &[("/ado", &up.url(), ADO)], "", "")).await;
    let client = support::http_client();

    let r = support::get(&client, p.admin_url("/healthz")).await;
    assert_eq!(r.status(), 200);
    let r = support::get(&client, p.admin_url("/readyz")).await;
    assert_eq!(
        r.status(),
        503,
        "not ready while the first token is being acquired"
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["routes"][0]["profile"], "bot");
    assert_eq!(body["routes"][0]["has_held_valid_token"], false);

    let mut ready = false;
    for _ in 0..50 {
        if support::get(&client, p.admin_url("/readyz")).await.status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "ready after the prefetch, without any request");
    assert_eq!(entra.token_requests(), 1);

    assert_eq!(support::get(&client, p.url("/ado/a")).await.status(), 200);
    let m = support::get(&client, p.admin_url("/metrics")).await;
    assert!(m.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain"));
    let m = m.text().await.expect("text");
    support::assert_contains_all(
        &m,
        &[
            r#"patless_token_refreshes_total{profile="bot",result="success"} 1"#,
            r#"patless_token_refresh_duration_seconds_count{profile="bot"} 1"#,
            r#"patless_token_expiry_timestamp_seconds{profile="bot",scope="499b84ac-1321-427f-aa17-267ca6975798/.default"}"#,
            r#"patless_requests_total{route="/ado",status="200"} 1"#,
            r#"patless_request_duration_seconds_count{route="/ado"} 1"#,
            r#"patless_build_info{version=""#,
        ],
    );
    let expiry: f64 = m
        .lines()
        .find(|l| l.starts_with("patless_token_expiry_timestamp_seconds{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("expiry gauge value");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        (expiry - now - 3599.0).abs() < 30.0,
        "expiry {expiry} vs now {now}"
    );
    let r = support::get(&client, p.admin_url("/nope")).await;
    assert_eq!(r.status(), 404);
}

const AUTO_CONFIG: &str = r#"
[server]
host_routes = false
[entra]
authority_host = "AUTHORITY"
[profiles.auto]
kind = "auto"
[[routes]]
prefix = "/ado"
upstream = "UPSTREAM"
profile = "auto"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_uses_the_environment_service_principal() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let toml = AUTO_CONFIG
        .replace("AUTHORITY", &entra.authority())
        .replace("UPSTREAM", &format!("{}/", up.url()))
        + "scope = \"499b84ac-1321-427f-aa17-267ca6975798/.default\"\n";
    let env = MapEnv::new([
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
    ]);
    let p = Patless::start_with_env(&toml, env).await;
    let r = p.get("/ado/org/_apis/projects").await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.accepted(), 1);
    let form = &entra.requests()[0].form;
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["scope"], ADO);
    assert_eq!(entra.requests()[0].headers["accept"], "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_without_credentials_says_what_it_tried_and_how_to_fix_it() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let toml = AUTO_CONFIG
        .replace("AUTHORITY", &entra.authority())
        .replace("UPSTREAM", &up.url())
        + "scope = \"499b84ac-1321-427f-aa17-267ca6975798/.default\"\n";
    // IMDS at a closed local port: the probe fails at once instead of waiting on 169.254.169.254.
    let closed = support::ClosedPort::new();
    let imds = closed.url();
    let env = MapEnv::new([
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.as_str()),
    ]);
    let p = Patless::start_with_env(&toml, env).await;
    let r = p.get("/ado/x").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "token_unavailable");
    let msg = body["message"].as_str().expect("message");
    assert!(msg.contains("environment service principal"), "{msg}");
    for skipped in [
        "environment service principal — AZURE_TENANT_ID, AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH not set",
        "workload identity — AZURE_FEDERATED_TOKEN_FILE not set",
        &format!("managed identity — IMDS at {imds}/ did not answer"),
        "Azure CLI — ",
        "Azure Developer CLI — ",
    ] {
        assert!(msg.contains(skipped), "each source and why it was skipped: missing `{skipped}` in {msg}");
    }
    assert!(
        msg.contains("Fix: export AZURE_CLIENT_ID"),
        "the fix is named: {msg}"
    );
    assert_eq!(entra.token_requests(), 0);
    assert!(up.requests().is_empty());
    let m = p.metrics().await;
    assert!(
        m.contains(r#"patless_token_refreshes_total{profile="auto",result="not_configured"}"#),
        "{m}"
    );
}

const ADMIN_TOKEN: &str = "admin-token-for-prometheus-0123456789";

/// `GET {path}` on the admin listener with these headers: (status, body).
async fn admin_get(p: &Patless, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = support::http_client().get(p.admin_url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("admin request");
    (r.status().as_u16(), r.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_refuses_browsers_and_foreign_hosts_and_guards_metrics_with_its_token() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    // No admin_token: loopback callers read everything, browsers and rebinding pages nothing.
    let p = Patless::start(&config(&entra, &[("/ado", &up.url(), ADO)], "", "")).await;
    for path in ["/readyz", "/metrics", "/healthz"] {
        for (headers, code) in [
            (vec![("host", "attacker.example")], "host_not_allowed"),
            (vec![("host", "attacker.example:7071")], "host_not_allowed"),
            (vec![("host", "[::1]evil.example")], "host_not_allowed"),
            (vec![("sec-fetch-site", "cross-site")], "cross_site_request"),
            (
                vec![("origin", "https://attacker.example")],
                "cross_site_request",
            ),
        ] {
            let (status, body) = admin_get(&p, path, &headers).await;
            assert_eq!(status, 403, "{path} {headers:?}: {body}");
            let json: Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(json["error"], code, "{path} {headers:?}");
            assert!(!body.contains("patless_"), "no metrics in a refusal");
        }
    }
    let (status, body) = admin_get(&p, "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("patless_build_info"));
    // A probe or scraper dialling an address sends it as the Host: accepted.
    for host in ["10.1.2.3:7071", "[fd00::5]:7071", "127.0.0.1"] {
        let (status, _) = admin_get(&p, "/healthz", &[("host", host)]).await;
        assert_eq!(status, 200, "{host}");
    }
    p.stop().await;

    // With admin_token: /metrics and /readyz's details need it; /healthz and /readyz's status
    // do not (orchestrator probes).
    let p = Patless::start_with_env(
        &config(
            &entra,
            &[("/ado", &up.url(), ADO)],
            "admin_token = { env = \"PATLESS_TEST_ADMIN\" }",
            "",
        ),
        MapEnv::new([("PATLESS_TEST_ADMIN", ADMIN_TOKEN)]),
    )
    .await;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for wrong in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![(
            "authorization",
            "Bearer admin-token-for-prometheus-012345678",
        )],
        vec![("x-patless-token", ADMIN_TOKEN)],
    ] {
        let (status, body) = admin_get(&p, "/metrics", &wrong).await;
        assert_eq!(status, 401, "{wrong:?}: {body}");
        let json: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(json["error"], "inbound_auth_required");
        assert!(!body.contains(ADMIN_TOKEN));
    }
    let (status, body) = admin_get(&p, "/metrics", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200);
    assert!(body.contains("patless_build_info"));
    assert!(!body.contains(ADMIN_TOKEN), "the token is no metric");
    let (status, _) = admin_get(&p, "/healthz", &[]).await;
    assert_eq!(status, 200);
    let mut ready = None;
    for _ in 0..100 {
        let (status, body) = admin_get(&p, "/readyz", &[]).await;
        if status == 200 {
            ready = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body: Value = serde_json::from_str(&ready.expect("ready")).expect("JSON");
    assert_eq!(body, serde_json::json!({"ready": true}), "only the status");
    let (status, body) = admin_get(&p, "/readyz", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        body["routes"][0]["profile"], "bot",
        "the details, with the token"
    );
    p.stop().await;
}

#[test]
fn a_non_loopback_admin_listen_needs_a_token_or_an_explicit_opt_in() {
    let load = |server: &str| try_load(&format!("[server]\n{server}\n"));
    let err = load("admin_listen = \"0.0.0.0:7071\"").expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("server.admin_listen")
            && text.contains("admin_token")
            && text.contains("allow_unauthenticated_admin"),
        "{text}"
    );
    assert!(load("admin_listen = \"[::]:7071\"").is_err());
    assert!(load("admin_listen = \"0.0.0.0:7071\"\nadmin_token = { env = \"T\" }").is_ok());
    assert!(load("admin_listen = \"0.0.0.0:7071\"\nallow_unauthenticated_admin = true").is_ok());
    assert!(load("admin_listen = \"127.0.0.1:7071\"").is_ok());
    assert!(load("admin_listen = \"unix:/run/patless/admin.sock\"").is_ok());
}
