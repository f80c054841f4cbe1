//! The `auto` chain (docs/credentials.md): for each environment it picks the right source, says
//! what it picked, and when nothing is there, says why each source was skipped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use patless::env::MapEnv;
use patless::App;

use crate::support;
use crate::support::entra::{FakeEntra, ADO_AUDIENCE, ADO_SCOPE, CLIENT_ID, CLIENT_SECRET, TENANT};
use crate::support::patless::load;
use crate::support::{AbortOnDrop, ClosedPort};

/// A stand-in managed-identity endpoint (IMDS or App Service): records each request's path+query
/// and headers, answers with a token for `resource` and string-typed numbers, like Azure does.
struct FakeMsi {
    url: String,
    seen: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
    _server: AbortOnDrop,
}

async fn fake_msi() -> FakeMsi {
    let listener = support::bind_loopback().await;
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen: Arc<Mutex<Vec<(String, http::HeaderMap)>>> = Arc::default();
    let log = seen.clone();
    let server = support::serve(
        listener,
        move |req: http::Request<hyper::body::Incoming>| {
            let log = log.clone();
            async move {
                let pq = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                log.lock()
                    .expect("lock")
                    .push((pq.clone(), req.headers().clone()));
                let resource =
                    url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
                        .find(|(k, _)| k == "resource")
                        .map(|(_, v)| v.into_owned());
                let Some(resource) = resource else {
                    // IMDS answers a probe without a resource with 400.
                    let mut r =
                        http::Response::new(support::full(r#"{"error":"invalid_request"}"#));
                    *r.status_mut() = http::StatusCode::BAD_REQUEST;
                    return r;
                };
                let expires_on = support::now_secs() + 3600;
                let body = serde_json::json!({
                    "access_token": support::entra::mint_token(&resource, 3600),
                    "expires_in": "3599",
                    "expires_on": expires_on.to_string(),
                    "not_before": (expires_on - 3600).to_string(),
                    "resource": resource,
                    "token_type": "Bearer",
                });
                let mut r = http::Response::new(support::full(body.to_string()));
                r.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
        },
    );
    FakeMsi {
        url,
        seen,
        _server: server,
    }
}

fn app(entra: &FakeEntra, env: MapEnv) -> App {
    let toml = format!(
        "[server]\nhost_routes = false\n[entra]\nauthority_host = \"{}\"\n[profiles.auto]\nkind = \"auto\"\n\
         [[routes]]\nprefix = \"/ado\"\nupstream = \"https://dev.azure.com\"\nprofile = \"auto\"\n",
        entra.authority()
    );
    let loaded = load(&toml, &env);
    App::new(loaded.config, Arc::new(env), prometheus::Registry::new()).expect("app")
}

/// Acquires the ADO token through the cache; returns (token, what `auto` says it chose).
async fn acquire(app: &App) -> (Result<String, String>, String) {
    let entry = app.cache.entry("auto", ADO_SCOPE, None).expect("entry");
    let token = entry
        .get()
        .await
        .map(|t| t.secret().expose().to_string())
        .map_err(|e| e.message);
    (token, (app.credential_sources["auto"])())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_secret_comes_first() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "federated-token").expect("write");
    let env = MapEnv::new([
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
        ("AZURE_FEDERATED_TOKEN_FILE", file.to_str().expect("utf8")),
    ]);
    let (token, source) = acquire(&app(&entra, env)).await;
    assert!(token.is_ok(), "{token:?}");
    assert!(
        source.starts_with("environment service principal"),
        "{source}"
    );
    let form = &entra.requests()[0].form;
    assert_eq!(form["client_secret"], CLIENT_SECRET);
    assert!(!form.contains_key("client_assertion"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_when_a_federated_token_file_is_present() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, "projected-sa-token-1\n").expect("write");
    entra.accept_federated_assertion("projected-sa-token-1");
    let imds = ClosedPort::new();
    let env = MapEnv::new([
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_FEDERATED_TOKEN_FILE", file.to_str().expect("utf8")),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds.url()),
    ]);
    let (token, source) = acquire(&app(&entra, env)).await;
    assert!(token.is_ok(), "{token:?}");
    assert!(source.starts_with("workload identity"), "{source}");
    assert_eq!(
        entra.requests()[0].form["client_assertion"],
        "projected-sa-token-1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_via_imds_when_the_probe_finds_it() {
    let entra = FakeEntra::start().await;
    let imds = fake_msi().await;
    let env = MapEnv::new([("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url.as_str())]);
    let app = app(&entra, env);
    let before = (app.credential_sources["auto"])();
    assert!(before.contains("probe at first use"), "{before}");
    let (token, source) = acquire(&app).await;
    let token = token.expect("token from IMDS");
    assert!(source.to_ascii_lowercase().contains("imds"), "{source}");
    assert_eq!(
        entra.token_requests(),
        0,
        "managed identity never calls Entra directly"
    );
    let claims = patless::jwt::claims(&token).expect("jwt");
    assert_eq!(claims["aud"], ADO_AUDIENCE);
    let seen = imds.seen.lock().expect("lock").clone();
    assert!(seen.len() >= 2, "a probe, then the token request: {seen:?}");
    let (last_pq, last_headers) = seen.last().expect("request");
    assert!(
        last_pq.starts_with("/metadata/identity/oauth2/token?"),
        "{last_pq}"
    );
    assert!(last_pq.contains("api-version=2018-02-01"), "{last_pq}");
    assert!(
        last_pq.contains(&format!("resource={ADO_AUDIENCE}")),
        "a resource, not a scope: {last_pq}"
    );
    assert_eq!(last_headers["metadata"], "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_service_identity_endpoint_is_used_without_probing() {
    let entra = FakeEntra::start().await;
    let msi = fake_msi().await;
    let endpoint = format!("{}/msi/token", msi.url);
    let env = MapEnv::new([
        ("IDENTITY_ENDPOINT", endpoint.as_str()),
        ("IDENTITY_HEADER", "app-service-header-secret"),
    ]);
    let app = app(&entra, env);
    let (token, source) = acquire(&app).await;
    assert!(token.is_ok(), "{token:?}");
    assert!(!source.contains("probe"), "{source}");
    let seen = msi.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "no probe for App Service: {seen:?}");
    assert!(seen[0].0.starts_with("/msi/token?"), "{:?}", seen[0].0);
    assert!(
        seen[0].0.contains("api-version=2019-08-01"),
        "{:?}",
        seen[0].0
    );
    assert_eq!(seen[0].1["x-identity-header"], "app-service-header-secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_available_lists_every_source_quickly() {
    let entra = FakeEntra::start().await;
    let imds = ClosedPort::new();
    let env = MapEnv::new([("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url())]);
    let app = app(&entra, env);
    let started = std::time::Instant::now();
    let (token, source) = acquire(&app).await;
    let msg = token.expect_err("no source");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the probe must not hang"
    );
    for skipped in [
        "environment service principal",
        "workload identity — AZURE_FEDERATED_TOKEN_FILE not set",
        "managed identity — IMDS at",
        "Azure CLI",
    ] {
        assert!(msg.contains(skipped), "missing `{skipped}` in {msg}");
    }
    assert!(source.contains("no credential found"), "{source}");
    assert_eq!(entra.token_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_certificate_when_there_is_no_secret() {
    let pki = support::certs::pki();
    let entra = FakeEntra::start().await;
    entra.set_assertion_verifier(support::certs::verifier_for(&pki.leaf.der, CLIENT_ID));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("sp.pem");
    std::fs::write(&file, pki.bundle_pem()).expect("write");
    let env = MapEnv::new([
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_TENANT_ID", TENANT),
        (
            "AZURE_CLIENT_CERTIFICATE_PATH",
            file.to_str().expect("utf8"),
        ),
        ("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", "true"),
    ]);
    let (token, source) = acquire(&app(&entra, env)).await;
    assert!(token.is_ok(), "{token:?}");
    assert!(source.contains("certificate"), "{source}");
    let form = &entra.requests()[0].form;
    assert!(!form.contains_key("client_secret"));
    let header = support::certs::jwt_header(&form["client_assertion"]);
    assert_eq!(header["alg"], "PS256");
    assert_eq!(
        header["x5c"].as_array().map(Vec::len),
        Some(2),
        "chain sent, leaf and CA: {header}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_azure_cli_after_everything_else_and_azd_when_az_is_signed_out() {
    use support::fake_cli::{FakeCli, Mode};
    let entra = FakeEntra::start().await;
    let imds = ClosedPort::new();
    let imds_url = imds.url();
    let az = FakeCli::az(Mode::Success);
    let azd = FakeCli::azd(Mode::Success);
    let path = format!("{}:{}", az.dir(), azd.dir());
    let env = || {
        MapEnv::new([
            ("PATH", path.as_str()),
            ("HOME", az.dir().as_str()),
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds_url.as_str()),
        ])
    };

    // Signed in with `az login`: auto uses it, after skipping the earlier sources.
    let (token, source) = acquire(&app(&entra, env())).await;
    assert_eq!(token.expect("token from az"), az.token_for(ADO_AUDIENCE));
    assert!(source.starts_with("Azure CLI"), "{source}");
    assert_eq!(
        az.calls().len(),
        1,
        "the probe's token is handed over, not fetched twice"
    );
    assert!(azd.calls().is_empty());

    // Signed out of az, signed in to azd: the next source.
    az.set_mode(Mode::NotLoggedIn);
    let (token, source) = acquire(&app(&entra, env())).await;
    assert_eq!(token.expect("token from azd"), azd.token_for(ADO_AUDIENCE));
    assert!(source.starts_with("Azure Developer CLI"), "{source}");

    // Signed out of both: every source is named, az's advice included.
    azd.set_mode(Mode::NotLoggedIn);
    let (token, _) = acquire(&app(&entra, env())).await;
    let msg = token.expect_err("nothing signed in");
    assert!(
        msg.contains("Azure CLI — ") && msg.contains("az login"),
        "{msg}"
    );
    assert!(
        msg.contains("Azure Developer CLI — ") && msg.contains("azd auth login"),
        "{msg}"
    );
    assert_eq!(entra.token_requests(), 0);
}
