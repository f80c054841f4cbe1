//! The identity endpoint for SDKs (docs/migrate-from-pat.md): the App Service managed-identity
//! protocol (`GET /msi/token?resource=R&api-version=2019-08-01`, `X-IDENTITY-HEADER`) served from
//! patless's token cache. Raw HTTP checks of every rule (the header, the resources, the answer's
//! shape, the errors, reload, validation, no secret in the logs), then the real SDKs: Python
//! `azure-identity` and npm `@azure/identity`, whose `ManagedIdentityCredential` picks the App
//! Service protocol from `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`. Every token handed out is
//! verified (signature, audience, expiry) with the fake Entra's key.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use crate::support;
use crate::support::capture::Hygiene;
use crate::support::entra::{FakeEntra, Fault, ADO_AUDIENCE, ADO_SCOPE, CLIENT_ID, OBJECT_ID};
use crate::support::patless::{config, metric, Patless, ADO};
use crate::support::sandbox::Sandbox;
use crate::support::upstream::{test_decoding_key, verify_bearer, FakeUpstream, Identity};

/// The header secret the tests configure.
pub(crate) const HEADER: &str = "idh-7Qm2xV9pL4sK8wN3rT6yB1cZ5";
pub(crate) const GRAPH: &str = "https://graph.microsoft.com";

/// `[identity_endpoint]` for profile `bot` with `extra` keys, beside one `/ado` route of `bot`.
pub(crate) fn ie_config(entra: &FakeEntra, upstream: &str, extra: &str) -> String {
    config(
        entra,
        &[("/ado", upstream, ADO)],
        "",
        &format!(
            "\n[identity_endpoint]\nlisten = \"127.0.0.1:0\"\nheader = \"{HEADER}\"\nprofile = \"bot\"\n{extra}"
        ),
    )
}

async fn start(extra: &str) -> (FakeEntra, FakeUpstream, Patless) {
    support::capture::init();
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start(&ie_config(&entra, &upstream.url(), extra)).await;
    (entra, upstream, p)
}

/// `GET /msi/token?{query}` with `header` as `X-IDENTITY-HEADER` (none when `None`).
async fn get(p: &Patless, query: &str, header: Option<&str>) -> (u16, HeaderMap, String) {
    let mut req = support::http_client().get(p.identity_url(&format!("/msi/token?{query}")));
    if let Some(h) = header {
        req = req.header("X-IDENTITY-HEADER", h);
    }
    let resp = req.send().await.expect("request to the identity endpoint");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

fn query(resource: &str) -> String {
    format!(
        "resource={}&api-version=2019-08-01",
        url::form_urlencoded::byte_serialize(resource.as_bytes()).collect::<String>()
    )
}

pub(crate) fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Verifies `token` as the fake upstream would, for `audience` and the endpoint's profile `bot`
/// (the fake Entra's default app); returns its claims.
pub(crate) fn verify(token: &str, audience: &str) -> Value {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    verify_bearer(&h, &test_decoding_key(), audience, &Identity::default_app())
        .unwrap_or_else(|e| panic!("the token handed out does not verify: {e}"))
        .1
}

/// The error body's code, checked to be the contract's JSON shape without the secret.
fn error_code(status: u16, headers: &HeaderMap, body: &str) -> String {
    assert_eq!(headers["content-type"], "application/json", "{body}");
    assert!(!body.contains(HEADER), "an error echoes the header: {body}");
    let v = json(body);
    assert_eq!(v["statusCode"], status, "{body}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(v["request_id"].is_string(), "{body}");
    v["error"].as_str().expect("error code").to_string()
}

/// Token requests the fake Entra got for `scope`.
pub(crate) fn asked_for(entra: &FakeEntra, scope: &str) -> usize {
    entra
        .requests()
        .iter()
        .filter(|r| r.form.get("scope").map(String::as_str) == Some(scope))
        .count()
}

/// Resources = [Graph], which no route uses: a token request for it can come only from the
/// identity endpoint (the `/ado` route's refresher asks for Azure DevOps from the start).
pub(crate) const ONLY_GRAPH: &str = "resources = [\"https://graph.microsoft.com\"]\n";
pub(crate) const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_the_app_service_shape_from_the_shared_cache() {
    let (entra, upstream, p) = start("").await;
    let (status, headers, body) = get(&p, &query(ADO_AUDIENCE), Some(HEADER)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-store");
    let v = json(&body);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["resource"], ADO_AUDIENCE);
    assert_eq!(v["client_id"], CLIENT_ID, "the profile's client id");
    let expires_on = v["expires_on"].as_str().expect("expires_on is a string");
    assert!(
        !expires_on.is_empty() && expires_on.bytes().all(|b| b.is_ascii_digit()),
        "{expires_on}"
    );
    let expires_on: u64 = expires_on.parse().expect("epoch seconds");
    assert!(
        expires_on > support::now_secs() + 60,
        "expires_on {expires_on} is not in the future"
    );
    let token = v["access_token"].as_str().expect("access_token");
    let claims = verify(token, ADO_AUDIENCE);
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(
        expires_on <= exp && exp - expires_on <= 1,
        "expires_on {expires_on} is the token's expiry as patless holds it (exp {exp})"
    );
    assert!(entra.issued_tokens().iter().any(|t| t == token));

    // The same resource spelled otherwise (case, trailing '/', or as a scope) is the same entry,
    // and the proxy's route shares it: one token request in all.
    for spelling in ["499B84AC-1321-427F-AA17-267CA6975798/", ADO_SCOPE] {
        let (status, _, body) = get(&p, &query(spelling), Some(HEADER)).await;
        assert_eq!(status, 200, "{spelling}: {body}");
        assert_eq!(json(&body)["access_token"], token, "{spelling}");
        assert_eq!(
            json(&body)["resource"],
            spelling,
            "resource is echoed as asked"
        );
    }
    let resp = p.get("/ado/org/_apis/projects").await;
    assert_eq!(resp.status(), 200);
    let rec = upstream.requests().pop().expect("upstream saw it");
    assert_eq!(
        rec.headers["authorization"],
        format!("Bearer {token}").as_str()
    );
    assert_eq!(
        entra.token_requests(),
        1,
        "routes and SDKs share one cache entry"
    );

    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"patless_identity_requests_total{protocol="app_service",result="success"}"#
        ),
        3.0,
        "{m}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_is_required_and_must_match() {
    let (entra, _upstream, p) = start(ONLY_GRAPH).await;
    let wrong_same_length: String = HEADER
        .chars()
        .map(|c| if c == '7' { '8' } else { c })
        .collect();
    assert_eq!(wrong_same_length.len(), HEADER.len());
    for (header, what) in [
        (None, "no header"),
        (Some("wrong"), "a short wrong header"),
        (
            Some(wrong_same_length.as_str()),
            "a wrong header of the same length",
        ),
        (Some(&HEADER[..HEADER.len() - 1]), "a prefix of the header"),
        (Some(""), "an empty header"),
    ] {
        let (status, headers, body) = get(&p, &query(GRAPH), header).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(
            error_code(status, &headers, &body),
            "inbound_auth_required",
            "{what}"
        );
        assert!(!body.contains("access_token"), "{what}: {body}");
    }
    assert_eq!(
        asked_for(&entra, GRAPH_SCOPE),
        0,
        "nothing is acquired for a refused request"
    );
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"patless_identity_requests_total{protocol="app_service",result="inbound_auth_required"}"#
        ),
        5.0,
        "{m}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_resources_are_handed_out() {
    // Default: the resources of the profile's routes (here only Azure DevOps).
    let (entra, _upstream, p) = start("").await;
    for resource in [GRAPH, "https://api.security.microsoft.com", "499b84ac"] {
        let (status, headers, body) = get(&p, &query(resource), Some(HEADER)).await;
        assert_eq!(status, 403, "{resource}: {body}");
        assert_eq!(error_code(status, &headers, &body), "resource_not_allowed");
        assert!(body.contains(ADO_AUDIENCE), "names what is allowed: {body}");
    }
    assert!(
        entra
            .requests()
            .iter()
            .all(|r| r.form["scope"] == ADO_SCOPE),
        "only the route's token was asked for"
    );
    p.stop().await;

    // Listed: exactly those, whatever the routes use.
    let (entra, _upstream, p) = start(&format!("resources = [\"{GRAPH}/\"]\n")).await;
    let (status, _, body) = get(&p, &query(GRAPH), Some(HEADER)).await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    verify(v["access_token"].as_str().expect("token"), GRAPH);
    assert_eq!(
        asked_for(&entra, GRAPH_SCOPE),
        1,
        "the cache is asked for R/.default"
    );
    let (status, _, body) = get(&p, &query(ADO_AUDIENCE), Some(HEADER)).await;
    assert_eq!(status, 403, "a route's resource is not listed: {body}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_errors() {
    let (entra, _upstream, p) = start(ONLY_GRAPH).await;
    for (q, what) in [
        ("api-version=2019-08-01".to_string(), "no resource"),
        (
            "resource=&api-version=2019-08-01".to_string(),
            "an empty resource",
        ),
        (format!("resource={GRAPH}"), "no api-version"),
        (
            format!("resource={GRAPH}&api-version=2018-02-01"),
            "IMDS's api-version",
        ),
        (
            format!("resource={GRAPH}&resource={GRAPH}&api-version=2019-08-01"),
            "two resources",
        ),
    ] {
        let (status, headers, body) = get(&p, &q, Some(HEADER)).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(
            error_code(status, &headers, &body),
            "invalid_request",
            "{what}"
        );
    }
    let client = support::http_client();
    let resp = client
        .get(p.identity_url("/metadata/instance?api-version=2021-02-01"))
        .header("X-IDENTITY-HEADER", HEADER)
        .send()
        .await
        .expect("request");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.text().await.expect("body");
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_code(status, &headers, &body), "not_found");
    let resp = client
        .post(p.identity_url(&format!("/msi/token?{}", query(GRAPH))))
        .header("X-IDENTITY-HEADER", HEADER)
        .send()
        .await
        .expect("request");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.text().await.expect("body");
    assert_eq!(status, 405, "{body}");
    assert_eq!(headers["allow"], "GET");
    assert_eq!(error_code(status, &headers, &body), "method_not_allowed");
    // A browser page cannot use it either (the SDKs send no Origin).
    let resp = client
        .get(p.identity_url(&format!("/msi/token?{}", query(GRAPH))))
        .header("X-IDENTITY-HEADER", HEADER)
        .header("Origin", "https://evil.example")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 403);
    assert_eq!(asked_for(&entra, GRAPH_SCOPE), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_selectors_must_name_this_identity() {
    let (_entra, _upstream, p) = start("").await;
    let base = query(ADO_AUDIENCE);
    for ok in [
        format!("{base}&client_id={CLIENT_ID}"),
        format!("{base}&client_id={}", CLIENT_ID.to_uppercase()),
        format!("{base}&principal_id={OBJECT_ID}"),
        format!("{base}&object_id={OBJECT_ID}"),
    ] {
        let (status, _, body) = get(&p, &ok, Some(HEADER)).await;
        assert_eq!(status, 200, "{ok}: {body}");
    }
    for (bad, names) in [
        (
            format!("{base}&client_id=99999999-9999-9999-9999-999999999999"),
            "client_id",
        ),
        (
            format!("{base}&principal_id=99999999-9999-9999-9999-999999999999"),
            "principal_id",
        ),
        (
            format!("{base}&mi_res_id=%2Fsubscriptions%2Fx"),
            "mi_res_id",
        ),
    ] {
        let (status, headers, body) = get(&p, &bad, Some(HEADER)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(error_code(status, &headers, &body), "invalid_request");
        assert!(body.contains(names), "{body}");
        assert!(!body.contains("access_token"), "{body}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_503_token_unavailable() {
    let (entra, _upstream, p) = start(ONLY_GRAPH).await;
    entra.set_fault(Some(Fault::InvalidClient));
    let (status, headers, body) = get(&p, &query(GRAPH), Some(HEADER)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_code(status, &headers, &body), "token_unavailable");
    let retry: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry >= 1);
    assert!(!body.contains(support::entra::CLIENT_SECRET), "{body}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_profile_and_resources_follow_a_reload_but_the_listener_does_not() {
    support::capture::init();
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("patless.toml");
    let write = |text: &str| std::fs::write(&path, text).expect("write config");
    let first = ie_config(&entra, &upstream.url(), "");
    write(&first);
    let p = Patless::start_file(
        &path,
        patless::env::MapEnv::default(),
        Duration::from_secs(60),
    )
    .await;
    let (status, _, body) = get(&p, &query(ADO_AUDIENCE), Some(HEADER)).await;
    assert_eq!(status, 200, "{body}");

    let second_header = "idh-second-Rt5Wq8Zp2Lm6Xc9Vb";
    write(&first.replace(
        &format!("header = \"{HEADER}\"\n"),
        &format!("header = \"{second_header}\"\n{ONLY_GRAPH}"),
    ));
    let report = p.reloader().reload().await.expect("reload");
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let (status, _, _) = get(&p, &query(GRAPH), Some(HEADER)).await;
    assert_eq!(status, 401, "the old header no longer works");
    let (status, _, body) = get(&p, &query(GRAPH), Some(second_header)).await;
    assert_eq!(status, 200, "{body}");
    verify(json(&body)["access_token"].as_str().expect("token"), GRAPH);
    let (status, _, _) = get(&p, &query(ADO_AUDIENCE), Some(second_header)).await;
    assert_eq!(status, 403, "the new resources apply");

    // A new listen address needs a restart: refused, the rest applies.
    write(&first.replace(
        "[identity_endpoint]\nlisten = \"127.0.0.1:0\"",
        "[identity_endpoint]\nlisten = \"127.0.0.1:17072\"",
    ));
    let report = p.reloader().reload().await.expect("reload");
    assert_eq!(report.refused, vec!["identity_endpoint.listen".to_string()]);
    let (status, _, body) = get(&p, &query(ADO_AUDIENCE), Some(HEADER)).await;
    assert_eq!(status, 200, "the old header and resources are back: {body}");

    // Removed: nothing more is handed out, though the listener stays until a restart.
    let without = first[..first.find("\n[identity_endpoint]").expect("table")].to_string();
    write(&without);
    let report = p.reloader().reload().await.expect("reload");
    assert_eq!(report.refused, vec!["identity_endpoint.listen".to_string()]);
    let (status, headers, body) = get(&p, &query(ADO_AUDIENCE), Some(HEADER)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_code(status, &headers, &body), "not_found");
    p.stop().await;
}

/// `patless ARGS --config FILE` with `toml` in a scrubbed environment plus `env`.
pub(crate) fn run_patless(
    args: &[&str],
    toml: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let sb = Sandbox::new();
    let path = sb.write("patless.toml", toml);
    let args: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--config", path.to_str().expect("UTF-8 path")])
        .collect();
    let run = sb.run(&args, env);
    (run.code, run.stdout, run.stderr)
}

const BASE: &str = r#"
[server]
host_routes = false

[profiles.bot]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = { env = "BOT_SECRET" }

[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com"
profile = "bot"
"#;

#[test]
fn bad_identity_endpoint_settings_exit_64_naming_each_key() {
    let bad = format!(
        "{BASE}\n[identity_endpoint]\nlisten = \"0.0.0.0:7072\"\nprofile = \"nobody\"\nresources = [\"\", \"has space\"]\n"
    );
    let (code, _, stderr) = run_patless(&["config"], &bad, &[]);
    assert_eq!(code, Some(64), "{stderr}");
    support::assert_contains_all(
        &stderr,
        &[
            "identity_endpoint.listen: 0.0.0.0:7072 is not a loopback address",
            "identity_endpoint.header: missing",
            "identity_endpoint.profile: profile `nobody` is not defined",
            "identity_endpoint.resources[0]",
            "identity_endpoint.resources[1]",
        ],
    );

    let short =
        format!("{BASE}\n[identity_endpoint]\nheader = \"short\"\nlisten = \"127.0.0.1:7070\"\n");
    let (code, _, stderr) = run_patless(&["config"], &short, &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("identity_endpoint.header: is 5 characters long"),
        "{stderr}"
    );
    assert!(
        stderr.contains("identity_endpoint.listen: 127.0.0.1:7070 is also server.listen"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("\"short\""),
        "the value is never shown: {stderr}"
    );

    // A profile no route uses has no default resources.
    let unused = format!(
        "{BASE}\n[profiles.spare]\nkind = \"azure_cli\"\n\n[identity_endpoint]\nheader = {{ env = \"H\" }}\nprofile = \"spare\"\n"
    );
    let (code, _, stderr) = run_patless(&["config"], &unused, &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("identity_endpoint.resources: no route of profile `spare`"),
        "{stderr}"
    );

    let typo =
        format!("{BASE}\n[identity_endpoint]\nheader = {{ env = \"H\" }}\nresource = [\"x\"]\n");
    let (code, _, stderr) = run_patless(&["config"], &typo, &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("identity_endpoint"), "{stderr}");
    assert!(stderr.contains("resource"), "{stderr}");

    // The header's variable unset: `serve` exits 64 before binding anything.
    let unset = format!("{BASE}\n[identity_endpoint]\nheader = {{ env = \"PATLESS_IDENTITY_HEADER\" }}\nprofile = \"bot\"\nlisten = \"127.0.0.1:0\"\n")
        .replace("[server]\n", "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"\"\n");
    let (code, _, stderr) = run_patless(&["serve"], &unset, &[("BOT_SECRET", "x")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(
            "identity_endpoint.header: environment variable PATLESS_IDENTITY_HEADER is not set"
        ),
        "{stderr}"
    );
}

#[test]
fn patless_config_prints_the_table_with_the_header_redacted() {
    let literal =
        format!("{BASE}\n[identity_endpoint]\nheader = \"{HEADER}\"\nprofile = \"bot\"\n");
    let (code, stdout, stderr) = run_patless(&["config"], &literal, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stdout.contains(HEADER) && !stderr.contains(HEADER),
        "{stdout}"
    );
    let printed: toml::Value = toml::from_str(
        stdout
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            .as_str(),
    )
    .expect("TOML");
    let ie = &printed["identity_endpoint"];
    assert_eq!(ie["header"].as_str(), Some("<redacted>"), "{stdout}");
    assert_eq!(ie["listen"].as_str(), Some("127.0.0.1:7072"), "the default");
    assert_eq!(ie["profile"].as_str(), Some("bot"));
    let resources: Vec<&str> = ie["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert_eq!(
        resources,
        vec![ADO_AUDIENCE],
        "the default, from the routes"
    );

    let by_env = format!(
        "{BASE}\n[identity_endpoint]\nheader = {{ env = \"PATLESS_IDENTITY_HEADER\" }}\nprofile = \"bot\"\n"
    );
    let (code, stdout, stderr) = run_patless(&["config"], &by_env, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("PATLESS_IDENTITY_HEADER"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_header_nor_a_token_is_logged() {
    let mut hygiene = Hygiene::new("identity endpoint");
    let (entra, _upstream, p) = start("").await;
    hygiene.forbid("identity header", HEADER);
    let (status, _, ok) = get(&p, &query(ADO_AUDIENCE), Some(HEADER)).await;
    assert_eq!(status, 200, "{ok}");
    let (_, _, wrong) = get(
        &p,
        &query(ADO_AUDIENCE),
        Some("idh-wrong-but-long-enough-0"),
    )
    .await;
    let (_, _, forbidden) = get(&p, &query(GRAPH), Some(HEADER)).await;
    hygiene.output("a 401 body", wrong);
    hygiene.output("a 403 body", forbidden);
    hygiene.output("/metrics", p.metrics().await);
    let issued = entra.issued_tokens();
    assert_eq!(hygiene.forbid_all("access token", &issued), 1);
    hygiene.expect_logged(&["identity endpoint: token handed out", ADO_AUDIENCE]);
    hygiene.expect_logged(&["identity endpoint", "inbound_auth_required"]);
    p.stop().await;
    hygiene.finish();
}

/// Runs `program args` with IDENTITY_ENDPOINT/IDENTITY_HEADER pointing at `p`; its stdout as
/// JSON.
async fn run_sdk(p: &Patless, program: &str, args: &[&str], extra_env: &[(&str, String)]) -> Value {
    let mut env = vec![
        ("IDENTITY_ENDPOINT", p.identity_url("/msi/token")),
        ("IDENTITY_HEADER", HEADER.to_string()),
    ];
    env.extend(extra_env.iter().cloned());
    support::clients::run_json(program, args, &env).await
}

/// Both tokens an SDK printed verify for Azure DevOps, and patless answered both requests.
async fn assert_sdk_tokens(p: &Patless, entra: &FakeEntra, got: &Value) {
    for key in ["system", "by_client_id"] {
        let token = got[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} in {got}"));
        verify(token, ADO_AUDIENCE);
        assert!(entra.issued_tokens().iter().any(|t| t == token), "{key}");
    }
    let expires = got["expires_on"].as_f64().expect("expires_on");
    assert!(
        expires > support::now_secs() as f64,
        "the SDK parsed expires_on: {expires}"
    );
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"patless_identity_requests_total{protocol="app_service",result="success"}"#
        ),
        2.0,
        "each credential asked patless once: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_azure_identity_managed_identity_credential_gets_a_token() {
    if !support::clients::require_python_module(
        "azure.identity",
        "python3 -m pip install azure-identity==1.27.0",
    ) {
        return;
    }
    let (entra, _upstream, p) = start("").await;
    let script = format!(
        r#"
import json
from azure.identity import ManagedIdentityCredential
scope = "{ADO_SCOPE}"
a = ManagedIdentityCredential().get_token(scope)
b = ManagedIdentityCredential(client_id="{CLIENT_ID}").get_token(scope)
print(json.dumps({{"system": a.token, "expires_on": a.expires_on, "by_client_id": b.token}}))
"#
    );
    let got = run_sdk(&p, "python3", &["-c", &script], &[]).await;
    assert_sdk_tokens(&p, &entra, &got).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_azure_identity_managed_identity_credential_gets_a_token() {
    if !support::clients::require_node_module(
        "@azure/identity",
        "npm install --global @azure/identity@4.13.1",
    ) {
        return;
    }
    let (entra, _upstream, p) = start("").await;
    let script = format!(
        r#"
const {{ ManagedIdentityCredential }} = require("@azure/identity");
(async () => {{
  const scope = "{ADO_SCOPE}";
  const a = await new ManagedIdentityCredential().getToken(scope);
  const b = await new ManagedIdentityCredential({{ clientId: "{CLIENT_ID}" }}).getToken(scope);
  console.log(JSON.stringify({{ system: a.token, expires_on: a.expiresOnTimestamp / 1000, by_client_id: b.token }}));
}})().catch((e) => {{ console.error(String(e && e.message)); process.exit(1); }});
"#
    );
    let got = run_sdk(
        &p,
        "node",
        &["-e", &script],
        &[("NODE_PATH", support::clients::node_path())],
    )
    .await;
    assert_sdk_tokens(&p, &entra, &got).await;
    p.stop().await;
}
