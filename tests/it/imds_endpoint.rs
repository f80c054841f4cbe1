//! The identity endpoint's IMDS-compatible path (docs/migrate-from-pat.md, "The IMDS-compatible
//! path"): with `identity_endpoint.imds = true`, `GET /metadata/identity/oauth2/token` answers as
//! the Instance Metadata Service does. Raw HTTP checks of every rule (`Metadata: true`, no relayed
//! request, `api-version`, `resource`, the allow-list, identity selectors, IMDS's answer with every
//! number a string, IMDS's error shape, the probes SDKs send, off by default, the config), patless's
//! own `managed_identity` kind reading it, then the real SDKs: Python `azure-identity` and npm
//! `@azure/identity`, started with only `AZURE_POD_IDENTITY_AUTHORITY_HOST`. Every token handed
//! out is verified (signature, audience, expiry, whose) with the fake Entra's key.

use std::time::Duration;

use http::HeaderMap;
use serde_json::Value;

use crate::identity_endpoint::{
    asked_for, ie_config, json, run_patless, verify, GRAPH, GRAPH_SCOPE, HEADER, ONLY_GRAPH,
};
use crate::support;
use crate::support::entra::{
    FakeEntra, Fault, ADO_AUDIENCE, ADO_SCOPE, CLIENT_ID, DEFAULT_LIFETIME_SECS, OBJECT_ID,
};
use crate::support::patless::{metric, profile_config, Patless};
use crate::support::upstream::{FakeUpstream, Identity};

const PATH: &str = "/metadata/identity/oauth2/token";
const OTHER_ID: &str = "99999999-9999-9999-9999-999999999999";

/// patless with `[identity_endpoint]` (profile `bot`, `imds = true`, then `extra`) beside one
/// `/ado` route of `bot`.
async fn start(extra: &str) -> (FakeEntra, FakeUpstream, Patless) {
    support::capture::init();
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;
    let toml = ie_config(&entra, &upstream.url(), &format!("imds = true\n{extra}"));
    let p = Patless::start(&toml).await;
    (entra, upstream, p)
}

/// `GET {path}?{query}` on the identity listener with `headers`: status, headers, body.
async fn get_with(
    p: &Patless,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap, String) {
    let mut req = support::http_client().get(p.identity_url(path_and_query));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request to the identity endpoint");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

/// An IMDS client's request: `Metadata: true` and `query`.
async fn get(p: &Patless, query: &str) -> (u16, HeaderMap, String) {
    get_with(p, &format!("{PATH}?{query}"), &[("Metadata", "true")]).await
}

/// The query IMDS clients send for `resource`.
fn query(resource: &str) -> String {
    format!(
        "api-version=2018-02-01&resource={}",
        url::form_urlencoded::byte_serialize(resource.as_bytes()).collect::<String>()
    )
}

/// IMDS's error shape (`error`, `error_description`) with patless's own fields; returns the code
/// and the description.
fn imds_error(headers: &HeaderMap, body: &str) -> (String, String) {
    assert_eq!(headers["content-type"], "application/json", "{body}");
    assert!(!body.contains("access_token"), "{body}");
    assert!(!body.contains(HEADER), "an error echoes the header: {body}");
    let v = json(body);
    let description = v["error_description"]
        .as_str()
        .unwrap_or_else(|| panic!("no error_description: {body}"));
    assert_eq!(v["message"].as_str(), Some(description), "{body}");
    assert!(v["request_id"].is_string(), "{body}");
    assert!(v.get("statusCode").is_none(), "App Service's field: {body}");
    let code = v["error"].as_str().expect("error code").to_string();
    (code, description.to_string())
}

fn imds_metric(m: &str, result: &str) -> f64 {
    metric(
        m,
        &format!(r#"patless_identity_requests_total{{protocol="imds",result="{result}"}}"#),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_imds_shape_with_every_number_a_string() {
    let (entra, upstream, p) = start("").await;
    let (status, headers, body) = get(&p, &query(ADO_AUDIENCE)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-store");
    let v = json(&body);
    let fields: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(|k| &k[..])
        .collect();
    assert_eq!(
        fields.join(" "),
        "access_token client_id expires_in expires_on ext_expires_in not_before resource token_type",
        "IMDS's fields, no more: {body}"
    );
    let number = |k: &str| -> u64 {
        let text = v[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} is not a string: {body}"));
        text.parse()
            .unwrap_or_else(|_| panic!("{k} is not digits: {body}"))
    };
    let now = support::now_secs();
    let (expires_in, expires_on) = (number("expires_in"), number("expires_on"));
    assert!(
        expires_in <= DEFAULT_LIFETIME_SECS && expires_in + 30 >= DEFAULT_LIFETIME_SECS,
        "expires_in {expires_in}"
    );
    assert!(
        expires_on.abs_diff(now + expires_in) <= 2,
        "expires_on {expires_on} is now + expires_in ({now} + {expires_in})"
    );
    assert_eq!(number("ext_expires_in"), expires_in, "{body}");
    assert_eq!(v["resource"], ADO_AUDIENCE);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["client_id"], CLIENT_ID, "the profile's client id");

    let token = v["access_token"].as_str().expect("access_token");
    let claims = verify(token, ADO_AUDIENCE);
    assert_eq!(
        Some(number("not_before")),
        claims["nbf"].as_u64(),
        "the token's nbf"
    );
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(
        expires_on <= exp && exp - expires_on <= 1,
        "{expires_on} vs exp {exp}"
    );
    assert!(entra.issued_tokens().iter().any(|t| t == token));

    // Spelled as IMDS clients spell it (trailing '/', as a scope, other case), the resource is
    // the same cache entry, which the route shares; `resource` is echoed as asked.
    for spelling in ["499B84AC-1321-427F-AA17-267CA6975798/", ADO_SCOPE] {
        let (status, _, body) = get(&p, &query(spelling)).await;
        assert_eq!(status, 200, "{spelling}: {body}");
        assert_eq!(json(&body)["access_token"], token, "{spelling}");
        assert_eq!(json(&body)["resource"], spelling);
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
        "routes and IMDS clients share one entry"
    );

    // A later IMDS version is IMDS too.
    let (status, _, body) = get(&p, &query(ADO_AUDIENCE).replace("2018-02-01", "2025-04-07")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(imds_metric(&p.metrics().await, "success"), 4.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_true_is_required_and_relayed_requests_are_refused() {
    let (entra, _upstream, p) = start(ONLY_GRAPH).await;
    let q = format!("{PATH}?{}", query(GRAPH));
    for (headers, what) in [
        (&[][..], "no Metadata header"),
        (&[("Metadata", "false")][..], "Metadata: false"),
        (
            &[("Metadata", "True")][..],
            "Metadata: True (IMDS wants lower case)",
        ),
        (
            &[("X-IDENTITY-HEADER", HEADER)][..],
            "App Service's secret instead of Metadata",
        ),
    ] {
        let (status, h, body) = get_with(&p, &q, headers).await;
        assert_eq!(status, 400, "{what}: {body}");
        let (code, description) = imds_error(&h, &body);
        assert_eq!(code, "invalid_request", "{what}");
        assert!(
            description.starts_with("Required metadata header not specified"),
            "IMDS's words, {what}: {body}"
        );
    }
    // The probes the SDKs send to see whether IMDS is there: @azure/identity's has no query and
    // no Metadata header, azure-identity's (Python) and Azure.Identity's (.NET) have the query
    // but no header. Each expects IMDS's quick 400, never a token.
    for probe in [PATH.to_string(), q.clone()] {
        let (status, h, body) = get_with(&p, &probe, &[("Accept", "application/json")]).await;
        assert_eq!(status, 400, "{probe}: {body}");
        assert_eq!(imds_error(&h, &body).0, "invalid_request");
    }
    for (header, value) in [
        ("X-Forwarded-For", "10.1.2.3"),
        ("Forwarded", "for=10.1.2.3"),
    ] {
        let (status, h, body) = get_with(&p, &q, &[("Metadata", "true"), (header, value)]).await;
        assert_eq!(status, 400, "{header}: {body}");
        let (code, description) = imds_error(&h, &body);
        assert_eq!(code, "invalid_request");
        assert!(description.contains(header), "{body}");
    }
    // A browser page cannot use it either.
    let (status, _, body) = get_with(
        &p,
        &q,
        &[("Metadata", "true"), ("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        asked_for(&entra, GRAPH_SCOPE),
        0,
        "nothing acquired for a refusal"
    );
    let m = p.metrics().await;
    assert_eq!(imds_metric(&m, "invalid_request"), 8.0, "{m}");
    assert_eq!(imds_metric(&m, "cross_site_request"), 1.0, "{m}");

    // The method, and the App Service path beside it, which still wants its secret.
    let resp = support::http_client()
        .post(p.identity_url(&q))
        .header("Metadata", "true")
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET");
    let app_service = format!("/msi/token?resource={GRAPH}&api-version=2019-08-01");
    let (status, _, body) = get_with(&p, &app_service, &[("Metadata", "true")]).await;
    assert_eq!(status, 401, "Metadata opens only the IMDS path: {body}");
    let (status, _, body) = get_with(&p, &app_service, &[("X-IDENTITY-HEADER", HEADER)]).await;
    assert_eq!(status, 200, "{body}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_version_and_resource_are_required() {
    let (entra, _upstream, p) = start(ONLY_GRAPH).await;
    let v = "api-version=2018-02-01";
    let g = query(GRAPH).replace(&format!("{v}&"), "");
    for (q, what, names) in [
        (g.clone(), "no api-version", "api-version"),
        (format!("api-version=2017-09-01&{g}"), "older", "2018-02-01"),
        (
            format!("api-version=latest&{g}"),
            "not a version",
            "api-version",
        ),
        (v.to_string(), "no resource", "resource"),
        (format!("{v}&resource="), "an empty resource", "resource"),
        (format!("{v}&{g}&{g}"), "two resources", "more than once"),
    ] {
        let (status, h, body) = get(&p, &q).await;
        assert_eq!(status, 400, "{what}: {body}");
        let (code, description) = imds_error(&h, &body);
        assert_eq!(code, "invalid_request", "{what}");
        assert!(description.contains(names), "{what}: {body}");
    }
    assert_eq!(asked_for(&entra, GRAPH_SCOPE), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_resources_are_handed_out() {
    let (entra, _upstream, p) = start("").await;
    for resource in [GRAPH, "https://management.azure.com/", "499b84ac"] {
        let (status, h, body) = get(&p, &query(resource)).await;
        assert_eq!(status, 403, "{resource}: {body}");
        let (code, description) = imds_error(&h, &body);
        assert_eq!(code, "resource_not_allowed");
        assert!(
            description.contains(ADO_AUDIENCE),
            "names what is allowed: {body}"
        );
        assert!(
            !description.contains("unreachable"),
            "the SDKs read that as no IMDS"
        );
    }
    assert!(
        entra
            .requests()
            .iter()
            .all(|r| r.form["scope"] == ADO_SCOPE),
        "only the route's token was asked for"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_selectors_must_name_this_identity() {
    let (_entra, _upstream, p) = start("").await;
    let base = query(ADO_AUDIENCE);
    for ok in [
        format!("{base}&client_id={CLIENT_ID}"),
        format!("{base}&client_id={}", CLIENT_ID.to_uppercase()),
        format!("{base}&object_id={OBJECT_ID}"),
    ] {
        let (status, _, body) = get(&p, &ok).await;
        assert_eq!(status, 200, "{ok}: {body}");
        verify(
            json(&body)["access_token"].as_str().expect("token"),
            ADO_AUDIENCE,
        );
    }
    for (bad, names) in [
        (format!("{base}&client_id={OTHER_ID}"), "client_id"),
        (format!("{base}&object_id={OTHER_ID}"), "object_id"),
        (
            format!("{base}&msi_res_id=%2Fsubscriptions%2Fx"),
            "msi_res_id",
        ),
        // App Service's spellings are checked too, never ignored.
        (
            format!("{base}&mi_res_id=%2Fsubscriptions%2Fx"),
            "msi_res_id",
        ),
        (format!("{base}&principal_id={OTHER_ID}"), "object_id"),
    ] {
        let (status, h, body) = get(&p, &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let (code, description) = imds_error(&h, &body);
        assert_eq!(code, "invalid_request");
        assert!(
            description.starts_with("Identity not found: ") && description.contains(names),
            "IMDS's words, and which selector: {body}"
        );
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_503_with_retry_after() {
    let (entra, _upstream, p) = start(ONLY_GRAPH).await;
    entra.set_fault(Some(Fault::InvalidClient));
    let (status, h, body) = get(&p, &query(GRAPH)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(imds_error(&h, &body).0, "token_unavailable");
    let retry: u64 = h["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry >= 1);
    assert!(!body.contains(support::entra::CLIENT_SECRET), "{body}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_unless_asked_for_and_a_reload_turns_it_on() {
    support::capture::init();
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("patless.toml");
    let off = ie_config(&entra, &upstream.url(), "");
    std::fs::write(&path, &off).expect("write config");
    let p = Patless::start_file(
        &path,
        patless::env::MapEnv::default(),
        Duration::from_secs(60),
    )
    .await;
    let (status, h, body) = get(&p, &query(ADO_AUDIENCE)).await;
    assert_eq!(status, 404, "off by default: {body}");
    let (code, description) = imds_error(&h, &body);
    assert_eq!(code, "not_found");
    assert!(
        description.contains("identity_endpoint.imds = true"),
        "{body}"
    );
    assert_eq!(
        entra.token_requests(),
        1,
        "only the route's refresher asked"
    );

    std::fs::write(
        &path,
        off.replace(
            "[identity_endpoint]\n",
            "[identity_endpoint]\nimds = true\n",
        ),
    )
    .expect("write config");
    let report = p.reloader().reload().await.expect("reload");
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let (status, _, body) = get(&p, &query(ADO_AUDIENCE)).await;
    assert_eq!(status, 200, "on after a reload: {body}");
    verify(
        json(&body)["access_token"].as_str().expect("token"),
        ADO_AUDIENCE,
    );
    p.stop().await;
}

/// patless's own `managed_identity` kind, pointed at another patless's IMDS path as it would be
/// at IMDS, gets that patless's token and the upstream accepts it as the fake Entra's app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patless_managed_identity_reads_it_as_imds() {
    let (entra, _upstream, a) = start("").await;
    let base = a.identity_url("");
    let downstream = FakeUpstream::start(ADO_AUDIENCE).await;
    downstream.expect(Identity::default_app());
    let body = format!("kind = \"managed_identity\"\nendpoint = \"{base}\"");
    let b = Patless::start(&profile_config(None, &downstream.url(), "mi", &body, "")).await;
    let resp = b.get("/ado/org/_apis/projects").await;
    let status = resp.status();
    assert_eq!(status, 200, "{}", resp.text().await.unwrap_or_default());
    let rec = downstream.requests().pop().expect("the upstream saw it");
    assert!(rec.token_valid, "{:?}", rec.token_error);
    let auth = rec.headers["authorization"].to_str().expect("ascii");
    assert!(entra
        .issued_tokens()
        .iter()
        .any(|t| auth == format!("Bearer {t}")));
    assert_eq!(imds_metric(&a.metrics().await, "success"), 1.0);
    b.stop().await;
    a.stop().await;
}

#[test]
fn the_imds_key_defaults_to_false_reads_the_environment_and_needs_tcp() {
    let base = "[server]\nhost_routes = false\n\n[profiles.bot]\nkind = \"azure_cli\"\n\n\
                [[routes]]\nprefix = \"/ado\"\nupstream = \"https://dev.azure.com\"\nprofile = \"bot\"\n\n\
                [identity_endpoint]\nheader = \"idh-0123456789abcdef\"\nprofile = \"bot\"\n";
    let imds_of = |stdout: &str| -> Option<bool> {
        let printed: toml::Value = toml::from_str(
            &stdout
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .expect("TOML");
        printed["identity_endpoint"]["imds"].as_bool()
    };
    let (code, stdout, stderr) = run_patless(&["config"], base, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(imds_of(&stdout), Some(false), "{stdout}");
    let (code, stdout, stderr) = run_patless(
        &["config"],
        base,
        &[("PATLESS_IDENTITY_ENDPOINT__IMDS", "true")],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(imds_of(&stdout), Some(true), "{stdout}");

    let unix = format!("{base}imds = true\nlisten = \"unix:/tmp/patless-identity.sock\"\n");
    let (code, _, stderr) = run_patless(&["config"], &unix, &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("identity_endpoint.imds: IMDS clients connect over TCP"),
        "{stderr}"
    );
    let (code, _, stderr) = run_patless(&["config"], &format!("{base}imds = \"yes\"\n"), &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("imds"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// The real SDKs, told only AZURE_POD_IDENTITY_AUTHORITY_HOST.
// ---------------------------------------------------------------------------------------------

/// Runs `program args` with `AZURE_POD_IDENTITY_AUTHORITY_HOST` at `p`'s identity listener and
/// no other managed-identity variable; its stdout as JSON.
async fn run_sdk(p: &Patless, program: &str, args: &[&str], extra_env: &[(&str, String)]) -> Value {
    let mut env = vec![("AZURE_POD_IDENTITY_AUTHORITY_HOST", p.identity_url(""))];
    env.extend(extra_env.iter().cloned());
    support::clients::run_json(program, args, &env).await
}

/// Every token the SDK printed verifies for Azure DevOps as the fake Entra's app, patless
/// handed out `handed_out` of them on the IMDS path, and the SDK's refusal carries patless's words.
async fn assert_sdk_result(p: &Patless, entra: &FakeEntra, got: &Value, handed_out: f64) {
    for key in ["mi", "by_client_id", "default"] {
        let token = got[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} in {got}"));
        verify(token, ADO_AUDIENCE);
        assert!(entra.issued_tokens().iter().any(|t| t == token), "{key}");
    }
    let expires = got["expires_on"].as_f64().expect("expires_on");
    let now = support::now_secs() as f64;
    assert!(
        expires > now + 600.0,
        "the SDK read expires_in/expires_on: {expires}"
    );
    let refused = got["refused"].as_str().expect("refused");
    assert!(
        refused.contains("Identity not found") && refused.contains(OTHER_ID),
        "the SDK shows patless's reason: {refused}"
    );
    let m = p.metrics().await;
    assert_eq!(imds_metric(&m, "success"), handed_out, "{m}");
    assert_eq!(imds_metric(&m, "invalid_request"), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            r#"patless_identity_requests_total{protocol="app_service",result="success"}"#
        ),
        0.0,
        "nothing went to the App Service path: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_azure_identity_gets_a_token_through_the_imds_path() {
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
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
scope = "{ADO_SCOPE}"
a = ManagedIdentityCredential().get_token(scope)
b = ManagedIdentityCredential(client_id="{CLIENT_ID}").get_token(scope)
c = DefaultAzureCredential(exclude_cli_credential=True, exclude_developer_cli_credential=True,
    exclude_powershell_credential=True).get_token(scope)
try:
    ManagedIdentityCredential(client_id="{OTHER_ID}").get_token(scope)
    refused = "no error"
except Exception as e:
    refused = str(e)
print(json.dumps({{"mi": a.token, "expires_on": a.expires_on, "by_client_id": b.token,
    "default": c.token, "refused": refused}}))
"#
    );
    let got = run_sdk(&p, "python3", &["-c", &script], &[]).await;
    assert_sdk_result(&p, &entra, &got, 3.0).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_azure_identity_gets_a_token_through_the_imds_path() {
    if !support::clients::require_node_module(
        "@azure/identity",
        "npm install --global @azure/identity@4.13.1",
    ) {
        return;
    }
    let (entra, _upstream, p) = start("").await;
    let script = format!(
        r#"
const {{ DefaultAzureCredential, ManagedIdentityCredential }} = require("@azure/identity");
(async () => {{
  const scope = "{ADO_SCOPE}";
  const a = await new ManagedIdentityCredential().getToken(scope);
  const b = await new ManagedIdentityCredential({{ clientId: "{CLIENT_ID}" }}).getToken(scope);
  const c = await new DefaultAzureCredential().getToken(scope);
  let refused = "no error";
  try {{
    await new ManagedIdentityCredential({{ clientId: "{OTHER_ID}" }}).getToken(scope);
  }} catch (e) {{
    refused = String(e && e.message);
  }}
  console.log(JSON.stringify({{ mi: a.token, expires_on: a.expiresOnTimestamp / 1000,
    by_client_id: b.token, default: c.token, refused }}));
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
    // MSAL Node keeps one token cache for every ManagedIdentityApplication in the process, so
    // DefaultAzureCredential's system-assigned credential is served the first one's token.
    assert_eq!(got["default"], got["mi"]);
    assert_sdk_result(&p, &entra, &got, 2.0).await;
    p.stop().await;
}
