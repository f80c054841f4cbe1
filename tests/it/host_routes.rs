//! Host routes end to end (`server.host_routes`, docs/routes.md "Host routes"):
//! `http://127.0.0.1:PORT/{known-host}/…` → `https://{known-host}/…` with the default profile's
//! token for that host's API.
//!
//! The real names (`dev.azure.com`, `api.security.microsoft.com`, `graph.microsoft.com`) are
//! reached through the fake `CONNECT` egress proxy of `support/egress.rs`: it tunnels
//! `{host}:443` to a local TLS front holding a test-CA leaf for that name (patless trusts the CA
//! through `[entra] ca_file`), which relays to a fake upstream accepting only that API's
//! audience. So a 200 proves the request left patless for the real name, over TLS verified for
//! it, with a token Entra issued for the right API. Entra itself is on loopback (direct).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::support;
use crate::support::egress::{pki, write_ca, FakeConnectProxy, TlsFront};
use crate::support::entra::{
    FakeEntra, ADO_AUDIENCE, ADO_SCOPE, CLIENT_ID, CLIENT_SECRET, DEFENDER_AUDIENCE, TENANT,
};
use crate::support::patless::{bot_config, metric, route_toml, Patless};
use crate::support::upstream::FakeUpstream;

/// Microsoft Graph's audience (scope `…/.default`).
const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";

/// One fake API behind its real name.
struct Api {
    up: FakeUpstream,
    tls: TlsFront,
}

impl Api {
    async fn start(audience: &str) -> Api {
        let up = FakeUpstream::start(audience).await;
        let tls = TlsFront::start(up.addr(), pki().trusted.clone()).await;
        Api { up, tls }
    }
}

struct Hosts {
    entra: FakeEntra,
    ado: Api,
    defender: Api,
    graph: Api,
    proxy: FakeConnectProxy,
    dir: tempfile::TempDir,
}

impl Hosts {
    async fn start() -> Hosts {
        support::capture::init();
        support::install_crypto_provider();
        let entra = FakeEntra::start().await;
        let ado = Api::start(ADO_AUDIENCE).await;
        let defender = Api::start(DEFENDER_AUDIENCE).await;
        let graph = Api::start(GRAPH_AUDIENCE).await;
        let proxy = FakeConnectProxy::start(HashMap::from([
            ("dev.azure.com:443".to_string(), ado.tls.addr),
            (
                "api.security.microsoft.com:443".to_string(),
                defender.tls.addr,
            ),
            ("graph.microsoft.com:443".to_string(), graph.tls.addr),
        ]))
        .await;
        let dir = tempfile::TempDir::new().expect("tempdir");
        write_ca(dir.path());
        Hosts {
            entra,
            ado,
            defender,
            graph,
            proxy,
            dir,
        }
    }

    /// Profile `bot` as the default profile, no explicit route, host routes on, the egress proxy
    /// set and the test CA trusted.
    fn config(&self) -> String {
        let server = format!(
            "default_profile = \"bot\"\negress_proxy = \"{}\"\nresponse_header_timeout = \"5s\"\nshutdown_grace = \"5s\"",
            self.proxy.url()
        );
        let entra = format!(
            "ca_file = \"{}\"\nrequest_timeout = \"5s\"",
            self.dir.path().join("ca.pem").display()
        );
        let toml = bot_config(&self.entra.authority(), &[], &server, &entra);
        assert!(
            toml.contains("host_routes = false"),
            "unexpected test config shape:\n{toml}"
        );
        // Host routes are on by default; the harness turns them off, this file turns them back on.
        toml.replacen("host_routes = false", "host_routes = true", 1)
    }

    /// A new user's config: the one profile `ado-bot` (the fake Entra's app) and one route of
    /// its own, no `default_profile`; `more` after the profile.
    fn new_user_config(&self, more: &str) -> String {
        let toml = self.config();
        assert!(toml.contains("default_profile = \"bot\"\n"), "{toml}");
        toml.replacen("default_profile = \"bot\"\n", "", 1)
            .replacen("[profiles.bot]", "[profiles.ado-bot]", 1)
            + more
            + &route_toml(
                "/ado",
                "https://dev.azure.com/contoso",
                "ado-bot",
                ADO_SCOPE,
            )
    }
}

/// What patless answered.
struct Answered {
    status: u16,
    location: Option<String>,
    body: Value,
}

async fn get(p: &Patless, path: &str) -> Answered {
    let resp = support::http_client()
        .get(p.url(path))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answered {
        status,
        location,
        body,
    }
}

/// The one request `api` saw for `path_and_query`: asserts its token was valid for the API's
/// audience (the fake checked it) and issued by the fake Entra; returns it.
fn seen(
    hosts: &Hosts,
    api: &Api,
    path_and_query: &str,
) -> crate::support::upstream::RecordedRequest {
    let rec = api
        .up
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == path_and_query)
        .unwrap_or_else(|| {
            panic!(
                "the upstream never saw {path_and_query}: {:?}",
                api.up.requests()
            )
        });
    assert!(
        rec.token_valid,
        "{path_and_query}: the upstream refused the token: {:?}",
        rec.token_error
    );
    let auth = rec.headers["authorization"].to_str().expect("ascii");
    assert!(
        hosts
            .entra
            .issued_tokens()
            .iter()
            .any(|t| auth == format!("Bearer {t}")),
        "{path_and_query}: the bearer token is not one the fake Entra issued"
    );
    rec
}

fn header<'a>(rec: &'a crate::support::upstream::RecordedRequest, name: &str) -> Option<&'a str> {
    rec.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_host_is_forwarded_to_its_real_name_with_its_apis_token() {
    let h = Hosts::start().await;
    let p = Patless::start(&h.config()).await;

    // Azure DevOps: its audience, its Host, the path without the host segment, and the header
    // that makes it answer a refused token with a 401 instead of a sign-in page.
    let r = get(&p, "/dev.azure.com/org/_apis/projects?api-version=7.1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["path"], "/org/_apis/projects?api-version=7.1");
    let rec = seen(&h, &h.ado, "/org/_apis/projects?api-version=7.1");
    assert_eq!(header(&rec, "host"), Some("dev.azure.com"));
    assert_eq!(header(&rec, "x-tfs-fedauthredirect"), Some("Suppress"));
    assert_eq!(h.ado.tls.sni(), ["dev.azure.com"], "TLS to the real name");

    // The host segment is matched case-insensitively and sent lower-case.
    let r = get(&p, "/DEV.Azure.com/org/_apis/connectionData").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rec = seen(&h, &h.ado, "/org/_apis/connectionData");
    assert_eq!(header(&rec, "host"), Some("dev.azure.com"));

    // Defender XDR and Microsoft Graph: each its own audience (each fake accepts only its own),
    // and no Azure DevOps header.
    let r = get(&p, "/api.security.microsoft.com/api/incidents?$top=1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rec = seen(&h, &h.defender, "/api/incidents?$top=1");
    assert_eq!(header(&rec, "host"), Some("api.security.microsoft.com"));
    assert_eq!(header(&rec, "x-tfs-fedauthredirect"), None);

    let r = get(&p, "/graph.microsoft.com/v1.0/users").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rec = seen(&h, &h.graph, "/v1.0/users");
    assert_eq!(header(&rec, "host"), Some("graph.microsoft.com"));
    assert_eq!(header(&rec, "x-tfs-fedauthredirect"), None);

    // No upstream ever saw a token for another audience, and each API's token was asked for
    // once, with that API's scope, by the default profile's app.
    for api in [&h.ado, &h.defender, &h.graph] {
        assert_eq!(api.up.rejected(), 0);
    }
    let mut scopes: Vec<String> = h
        .entra
        .requests()
        .iter()
        .filter_map(|r| r.form.get("scope").cloned())
        .collect();
    scopes.sort();
    assert_eq!(
        scopes,
        [
            "499b84ac-1321-427f-aa17-267ca6975798/.default",
            "https://api.security.microsoft.com/.default",
            "https://graph.microsoft.com/.default",
        ]
    );
    // Every upstream request went through the egress proxy as a CONNECT to the real name.
    let seen_targets = h.proxy.requests();
    assert!(
        seen_targets.iter().all(|r| r.method == "CONNECT"),
        "{seen_targets:?}"
    );
    let mut targets = h.proxy.targets();
    targets.sort();
    targets.dedup();
    assert_eq!(
        targets,
        [
            "api.security.microsoft.com:443",
            "dev.azure.com:443",
            "graph.microsoft.com:443"
        ]
    );

    // Counted under the table's row, never the raw path.
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"patless_requests_total{route="/dev.azure.com",status="200"}"#
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"patless_requests_total{route="/graph.microsoft.com",status="200"}"#
        ),
        1.0,
        "{m}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_is_404_no_route_and_never_reaches_the_egress_proxy() {
    let h = Hosts::start().await;
    let p = Patless::start(&h.config()).await;
    for path in [
        "/evil.example/x",
        // A known name as a prefix or a suffix of another is not that name.
        "/dev.azure.com.evil.example/org/_apis/projects",
        "/xdev.azure.com/org",
        "/a.b.dev.azure.com/org",
        // With a port, or an IP: not in the table either.
        "/dev.azure.com:443/org",
        "/127.0.0.1/x",
    ] {
        let r = get(&p, path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_eq!(r.body["error"], "no_route", "{path}");
        assert_eq!(r.body["route"], Value::Null, "{path}");
    }
    assert!(
        h.proxy.requests().is_empty(),
        "nothing may reach the egress proxy: {:?}",
        h.proxy.requests()
    );
    // No token for an unknown host: the one token request there may be is the default
    // profile's for Azure DevOps, which `/readyz` waits for from the start.
    let asked: Vec<_> = h.entra.requests().into_iter().map(|r| r.form).collect();
    assert!(asked.len() <= 1, "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|f| f.get("scope").map(String::as_str) == Some(ADO_SCOPE)),
        "{asked:?}"
    );
    for api in [&h.ado, &h.defender, &h.graph] {
        assert!(api.up.requests().is_empty());
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_into_the_host_is_rewritten_onto_its_host_route() {
    let h = Hosts::start().await;
    let p = Patless::start(&h.config()).await;
    let redirect = |to: &str| {
        format!(
            "/dev.azure.com/org/redirect-to?to={}",
            url::form_urlencoded::byte_serialize(to.as_bytes()).collect::<String>()
        )
    };
    for (sent, want) in [
        // Absolute, into the host: onto the host route.
        (
            "https://dev.azure.com/org/_apis/next?x=1",
            "/dev.azure.com/org/_apis/next?x=1",
        ),
        ("https://dev.azure.com", "/dev.azure.com/"),
        ("https://DEV.AZURE.COM/org/", "/dev.azure.com/org/"),
        // Relative: the same host, so the same route.
        ("/org/_git/repo", "/dev.azure.com/org/_git/repo"),
        // Another host, or the same name over plain HTTP: passed on as it is.
        (
            "https://spsprodweu5.vssps.visualstudio.com/x",
            "https://spsprodweu5.vssps.visualstudio.com/x",
        ),
        ("http://dev.azure.com/org/x", "http://dev.azure.com/org/x"),
    ] {
        let r = get(&p, &redirect(sent)).await;
        assert_eq!(r.status, 302, "{sent}: {}", r.body);
        assert_eq!(r.location.as_deref(), Some(want), "{sent}");
    }
    assert_eq!(h.ado.up.rejected(), 0);
    // A client that follows the rewritten redirect stays behind patless and on the host route.
    let following = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let resp = following
        .get(p.url(&redirect("https://dev.azure.com/org/_apis/after?y=2")))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.url().port(), Some(p.addr.port()));
    assert_eq!(resp.url().path(), "/dev.azure.com/org/_apis/after");
    seen(&h, &h.ado, "/org/_apis/after?y=2");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_profile_and_no_default_profile_host_routes_use_that_profile() {
    let h = Hosts::start().await;
    let p = Patless::start(&h.new_user_config("")).await;
    let r = get(&p, "/dev.azure.com/contoso/_apis/projects").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The fake upstream accepted the token only because it is the fake Entra's own app's:
    // `ado-bot`'s, not one `auto` found.
    seen(&h, &h.ado, "/contoso/_apis/projects");
    assert_eq!(h.entra.last_form("client_id").as_deref(), Some(CLIENT_ID));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_profiles_and_no_default_profile_a_host_routes_error_says_how_to_pick_one() {
    let h = Hosts::start().await;
    let second = format!(
        "\n[profiles.ado-reader]\nkind = \"client_secret\"\ntenant_id = \"{TENANT}\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n"
    );
    // The implicit `auto` finds an environment service principal whose secret Entra refuses.
    let env = patless::env::MapEnv::new([
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_SECRET", "wrong-secret"),
    ]);
    let p = Patless::start_with_env(&h.new_user_config(&second), env).await;
    let r = get(&p, "/dev.azure.com/contoso/_apis/projects").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"], "token_unavailable", "{}", r.body);
    assert_eq!(r.body["profile"], "auto", "{}", r.body);
    let message = r.body["message"].as_str().expect("message");
    assert!(message.contains("AADSTS7000215"), "{message}");
    assert!(
        message.ends_with(
            "; the default profile is `auto` (the implicit profile of kind auto): 2 profiles are \
             defined under [profiles] and server.default_profile names none of them; set \
             server.default_profile to pick another"
        ),
        "{message}"
    );
    assert!(h.ado.up.requests().is_empty());
    p.stop().await;
}
