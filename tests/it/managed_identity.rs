//! `managed_identity` (docs/credentials.md): each source end to end through the proxy to an
//! upstream that verifies the token, the exact requests each fake saw, detection from the
//! environment, IMDS's retries on paused time, and the errors a user meets (identity not assigned,
//! not on Azure, a refused identity header, Arc key files that must not be read).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use patless::config::ManagedIdentityId;
use patless::credentials::{ArcAgent, Credential, ErrorClass, ManagedIdentityCredential};
use patless::env::MapEnv;
use url::Url;

use crate::support;
use crate::support::entra::{ADO_AUDIENCE, ADO_SCOPE};
use crate::support::msi::{system_assigned, user_assigned, FakeMsi, Scripted};
use crate::support::patless::{profile_config, Patless};
use crate::support::upstream::FakeUpstream;

const UA_CLIENT_ID: &str = "44444444-4444-4444-4444-444444444444";
const UA_OBJECT_ID: &str = "55555555-5555-5555-5555-555555555555";
const UA_RESOURCE_ID: &str = "/subscriptions/6b1c2d3e-0000-4000-8000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/patless-id";

/// A config with one `managed_identity` profile `mi` (plus `profile_extra` keys) and one route
/// `/ado` → `upstream` with the Azure DevOps scope.
fn mi_config(upstream: &FakeUpstream, profile_extra: &str) -> String {
    let body = format!("kind = \"managed_identity\"\n{profile_extra}");
    profile_config(
        None,
        &upstream.url(),
        "mi",
        &body,
        "shutdown_grace = \"5s\"",
    )
}

/// Sends one request through the proxy and checks the upstream accepted the token the fake
/// issued.
async fn proxied_request_succeeds(p: &Patless, upstream: &FakeUpstream, fake: &FakeMsi) {
    let resp = p.get("/ado/org/_apis/projects").await;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "proxy answered {status}: {body}");
    let rec = upstream.requests().pop().expect("upstream saw the request");
    assert!(rec.token_valid, "upstream refused: {:?}", rec.token_error);
    let auth = rec.headers["authorization"].to_str().expect("ascii");
    assert!(
        fake.issued().iter().any(|t| auth == format!("Bearer {t}")),
        "the upstream got a token the fake did not issue"
    );
}

fn env(pairs: &[(&str, &str)]) -> MapEnv {
    MapEnv::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

fn credential(
    id: Option<ManagedIdentityId>,
    endpoint: Option<&str>,
    vars: &[(&str, &str)],
) -> ManagedIdentityCredential {
    ManagedIdentityCredential::new(
        support::http_client(),
        id,
        endpoint.map(|e| Url::parse(e).expect("endpoint URL")),
        Arc::new(env(vars)),
        &ArcAgent::default(),
    )
}

/// The Azure Arc agent with its key files in `tokens` (its binary where it really is).
fn arc_agent(tokens: &Path) -> ArcAgent {
    ArcAgent {
        key_dir: tokens.to_path_buf(),
        ..ArcAgent::default()
    }
}

/// A client for paused-time tests: no timeout and no idle pool, so no timer but the credential's
/// own backoff is pending while a request is in flight (auto-advance cannot skip over I/O).
fn paused_client() -> reqwest::Client {
    support::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

fn imds_credential(fake: &FakeMsi, id: Option<ManagedIdentityId>) -> ManagedIdentityCredential {
    ManagedIdentityCredential::new(
        paused_client(),
        id,
        Some(Url::parse(&fake.url()).expect("url")),
        Arc::new(MapEnv::default()),
        &ArcAgent::default(),
    )
}

fn gaps(fake: &FakeMsi) -> Vec<Duration> {
    let at: Vec<_> = fake.requests().iter().map(|r| r.at).collect();
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

fn assert_about(got: Duration, want: Duration) {
    let diff = got.abs_diff(want);
    assert!(
        diff <= Duration::from_millis(100),
        "waited {got:?}, expected {want:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Each source, end to end through the proxy.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_system_assigned_end_to_end() {
    let imds = FakeMsi::imds().await;
    let ado = FakeUpstream::start(ADO_AUDIENCE).await;
    ado.expect(system_assigned());
    let p = Patless::start(&mi_config(&ado, &format!("endpoint = \"{}\"", imds.url()))).await;
    proxied_request_succeeds(&p, &ado, &imds).await;

    let reqs = imds.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(r.method, "GET");
    assert_eq!(r.path, "/metadata/identity/oauth2/token");
    assert_eq!(r.header("metadata"), Some("true"));
    assert_eq!(r.query["api-version"], "2018-02-01");
    // The resource, not the scope.
    assert_eq!(r.query["resource"], ADO_AUDIENCE);
    for p in ["client_id", "object_id", "msi_res_id"] {
        assert!(!r.query.contains_key(p), "system-assigned sent {p}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_user_assigned_by_client_object_and_resource_id() {
    for (key, param, value) in [
        ("client_id", "client_id", UA_CLIENT_ID),
        ("object_id", "object_id", UA_OBJECT_ID),
        ("resource_id", "msi_res_id", UA_RESOURCE_ID),
    ] {
        let imds = FakeMsi::imds().await;
        imds.set_system_assigned(false);
        imds.assign(param, value);
        let ado = FakeUpstream::start(ADO_AUDIENCE).await;
        ado.expect(user_assigned(param, value));
        let extra = format!("endpoint = \"{}\"\n{key} = \"{value}\"", imds.url());
        let p = Patless::start(&mi_config(&ado, &extra)).await;
        proxied_request_succeeds(&p, &ado, &imds).await;
        let r = &imds.requests()[0];
        assert_eq!(r.query.get(param).map(String::as_str), Some(value), "{key}");
        assert_eq!(r.query["resource"], ADO_AUDIENCE);
        assert_eq!(r.header("metadata"), Some("true"));
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_service_end_to_end_with_each_id_parameter() {
    const HEADER: &str = "app-service-identity-header-4f1d";
    for (key, param, value) in [
        ("", "", ""),
        ("client_id", "client_id", UA_CLIENT_ID),
        ("object_id", "principal_id", UA_OBJECT_ID),
        ("resource_id", "mi_res_id", UA_RESOURCE_ID),
    ] {
        let app = FakeMsi::app_service(HEADER).await;
        let ado = FakeUpstream::start(ADO_AUDIENCE).await;
        let extra = if key.is_empty() {
            ado.expect(system_assigned());
            String::new()
        } else {
            ado.expect(user_assigned(param, value));
            app.set_system_assigned(false);
            app.assign(param, value);
            format!("{key} = \"{value}\"")
        };
        let vars = env(&[
            ("IDENTITY_ENDPOINT", &app.endpoint()),
            ("IDENTITY_HEADER", HEADER),
        ]);
        let p = Patless::start_with_env(&mi_config(&ado, &extra), vars).await;
        proxied_request_succeeds(&p, &ado, &app).await;
        let r = &app.requests()[0];
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/msi/token");
        assert_eq!(r.header("x-identity-header"), Some(HEADER));
        assert_eq!(r.query["api-version"], "2019-08-01");
        assert_eq!(r.query["resource"], ADO_AUDIENCE);
        if !key.is_empty() {
            assert_eq!(r.query.get(param).map(String::as_str), Some(value), "{key}");
        }
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_arc_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).expect("mkdir");
    let key_file = tokens.join("5f0c2e7a.key");
    std::fs::write(&key_file, "arc-key-material-0123456789\n").expect("write key");
    let arc = FakeMsi::arc(
        &key_file.display().to_string(),
        "arc-key-material-0123456789",
    )
    .await;
    let ado = FakeUpstream::start(ADO_AUDIENCE).await;
    ado.expect(system_assigned());
    let vars = env(&[
        ("IDENTITY_ENDPOINT", &arc.endpoint()),
        ("IMDS_ENDPOINT", &arc.url()),
    ]);
    let p = Patless::start_with_arc_agent(&mi_config(&ado, ""), vars, arc_agent(&tokens)).await;
    proxied_request_succeeds(&p, &ado, &arc).await;

    let reqs = arc.requests();
    assert_eq!(
        reqs.len(),
        2,
        "challenge, then the request with the key: {reqs:?}"
    );
    for r in &reqs {
        assert_eq!(r.method, "GET");
        assert_eq!(r.header("metadata"), Some("true"));
        assert_eq!(r.query["api-version"], "2019-11-01");
        assert_eq!(r.query["resource"], ADO_AUDIENCE);
    }
    assert_eq!(reqs[0].header("authorization"), None);
    assert_eq!(
        reqs[1].header("authorization"),
        Some("Basic arc-key-material-0123456789")
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_shell_end_to_end() {
    let shell = FakeMsi::cloud_shell().await;
    let ado = FakeUpstream::start(ADO_AUDIENCE).await;
    ado.expect(system_assigned());
    let vars = env(&[("MSI_ENDPOINT", &shell.endpoint())]);
    let p = Patless::start_with_env(&mi_config(&ado, ""), vars).await;
    proxied_request_succeeds(&p, &ado, &shell).await;
    let r = &shell.requests()[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("metadata"), Some("true"));
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")));
    assert_eq!(r.form["resource"], ADO_AUDIENCE);
    assert!(r.query.is_empty(), "{:?}", r.query);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_ml_end_to_end() {
    const SECRET: &str = "azure-ml-msi-secret-77";
    let ml = FakeMsi::azure_ml(SECRET).await;
    ml.assign("clientid", UA_CLIENT_ID);
    let ado = FakeUpstream::start(ADO_AUDIENCE).await;
    ado.expect(user_assigned("clientid", UA_CLIENT_ID));
    let vars = env(&[
        ("MSI_ENDPOINT", &ml.endpoint()),
        ("MSI_SECRET", SECRET),
        ("DEFAULT_IDENTITY_CLIENT_ID", UA_CLIENT_ID),
    ]);
    let p = Patless::start_with_env(&mi_config(&ado, ""), vars).await;
    proxied_request_succeeds(&p, &ado, &ml).await;
    let r = &ml.requests()[0];
    assert_eq!(r.method, "GET");
    assert_eq!(r.header("secret"), Some(SECRET));
    assert_eq!(r.header("metadata"), Some("true"));
    assert_eq!(r.query["api-version"], "2017-09-01");
    assert_eq!(r.query["resource"], ADO_AUDIENCE);
    assert_eq!(r.query["clientid"], UA_CLIENT_ID);
    p.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Detection.
// ---------------------------------------------------------------------------------------------

#[test]
fn detection_follows_entra_md_order() {
    support::install_crypto_provider();
    let imds = Some("http://127.0.0.1:1");
    let d =
        |vars: &[(&str, &str)], endpoint: Option<&str>| credential(None, endpoint, vars).describe();
    let sf = d(
        &[
            (
                "IDENTITY_ENDPOINT",
                "https://127.0.0.1:2377/metadata/identity/oauth2/token",
            ),
            ("IDENTITY_HEADER", "sf-header-secret"),
            ("IDENTITY_SERVER_THUMBPRINT", "ABCDEF"),
            ("MSI_ENDPOINT", "http://127.0.0.1:3/x"),
        ],
        None,
    );
    assert!(
        sf.contains("Service Fabric") && sf.contains("not support"),
        "{sf}"
    );
    assert!(!sf.contains("sf-header-secret"), "{sf}");

    let app = d(
        &[
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:41741/msi/token"),
            ("IDENTITY_HEADER", "app-header-secret"),
            ("MSI_ENDPOINT", "http://127.0.0.1:3/x"),
            ("IMDS_ENDPOINT", "http://127.0.0.1:4"),
        ],
        imds,
    );
    assert!(app.contains("App Service"), "{app}");
    assert!(app.contains("http://127.0.0.1:41741/msi/token"), "{app}");
    assert!(
        app.contains("endpoint") && app.contains("not used"),
        "{app}"
    );
    assert!(!app.contains("app-header-secret"), "{app}");

    let ml = d(
        &[
            ("MSI_ENDPOINT", "http://127.0.0.1:3/x"),
            ("MSI_SECRET", "s"),
        ],
        None,
    );
    assert!(ml.contains("Azure Machine Learning"), "{ml}");
    let shell = d(&[("MSI_ENDPOINT", "http://127.0.0.1:3/x")], None);
    assert!(shell.contains("Cloud Shell"), "{shell}");

    let arc = d(
        &[
            (
                "IDENTITY_ENDPOINT",
                "http://127.0.0.1:40342/metadata/identity/oauth2/token",
            ),
            ("IMDS_ENDPOINT", "http://127.0.0.1:40342"),
        ],
        None,
    );
    assert!(
        arc.contains("Azure Arc") && arc.contains("system-assigned"),
        "{arc}"
    );

    // IDENTITY_ENDPOINT alone is nobody's: IMDS.
    let alone = d(&[("IDENTITY_ENDPOINT", "http://127.0.0.1:5/x")], None);
    assert!(alone.contains("IMDS at http://169.254.169.254"), "{alone}");

    let pod = d(
        &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://10.0.0.7:2579")],
        None,
    );
    assert!(pod.contains("IMDS at http://10.0.0.7:2579"), "{pod}");
    assert!(pod.contains("AZURE_POD_IDENTITY_AUTHORITY_HOST"), "{pod}");
    let configured = d(
        &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://10.0.0.7:2579")],
        imds,
    );
    assert!(
        configured.contains("IMDS at http://127.0.0.1:1"),
        "{configured}"
    );

    let ua = credential(
        Some(ManagedIdentityId::ClientId(UA_CLIENT_ID.into())),
        None,
        &[],
    )
    .describe();
    assert_eq!(
        ua,
        format!("managed identity via IMDS at http://169.254.169.254 (user-assigned, client_id {UA_CLIENT_ID})")
    );
}

#[tokio::test]
async fn unsupported_sources_explain_themselves_without_a_request() {
    let fake = FakeMsi::imds().await;
    /// (identity, environment, what the refusal says)
    type Case = (
        Option<ManagedIdentityId>,
        Vec<(&'static str, String)>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            None,
            vec![
                ("IDENTITY_ENDPOINT", fake.endpoint()),
                ("IDENTITY_HEADER", "sf-secret-header".into()),
                ("IDENTITY_SERVER_THUMBPRINT", "ABCDEF".into()),
            ],
            "Service Fabric",
        ),
        (
            Some(ManagedIdentityId::ClientId(UA_CLIENT_ID.into())),
            vec![
                ("IDENTITY_ENDPOINT", fake.endpoint()),
                ("IMDS_ENDPOINT", fake.url()),
            ],
            "system-assigned",
        ),
        (
            Some(ManagedIdentityId::ObjectId(UA_OBJECT_ID.into())),
            vec![("MSI_ENDPOINT", fake.endpoint())],
            "Cloud Shell",
        ),
        (
            Some(ManagedIdentityId::ResourceId(UA_RESOURCE_ID.into())),
            vec![
                ("MSI_ENDPOINT", fake.endpoint()),
                ("MSI_SECRET", "ml-secret".into()),
            ],
            "client_id only",
        ),
    ];
    for (id, vars, says) in cases {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let cred = credential(id, None, &vars);
        assert!(cred.describe().contains(says), "{}", cred.describe());
        let err = cred.acquire(ADO_SCOPE, None).await.expect_err("refused");
        assert_eq!(err.class, ErrorClass::NotConfigured, "{}", err.message);
        assert!(err.message.contains(says), "{}", err.message);
        assert!(!err.message.contains("secret-header"), "{}", err.message);
    }
    assert!(fake.requests().is_empty(), "nothing was sent");
}

// ---------------------------------------------------------------------------------------------
// IMDS retries, on paused time.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn imds_410_twice_then_success_with_exponential_backoff() {
    let imds = FakeMsi::imds().await;
    imds.push_status(410);
    imds.push_status(410);
    let cred = imds_credential(&imds, None);
    let started = tokio::time::Instant::now();
    let token = cred
        .acquire(ADO_SCOPE, None)
        .await
        .expect("token after two 410s");
    assert_eq!(token.expires_in, Duration::from_secs(3600));
    assert_eq!(imds.requests().len(), 3);
    let g = gaps(&imds);
    assert_about(g[0], Duration::from_secs(1));
    assert_about(g[1], Duration::from_secs(2));
    assert_about(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn imds_410_gives_up_after_about_70_seconds() {
    let imds = FakeMsi::imds().await;
    imds.set_sticky_status(Some(410));
    let cred = imds_credential(&imds, None);
    let started = tokio::time::Instant::now();
    let err = cred
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("never ready");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(65) && took <= Duration::from_secs(75),
        "gave up after {took:?}"
    );
    assert_eq!(err.class, ErrorClass::ServerError);
    assert!(
        err.message.contains("410") && err.message.contains("not ready"),
        "{}",
        err.message
    );
    // 1, 2, 4, 8, 16, 16, 16 s and a last wait cut to the budget.
    let g = gaps(&imds);
    assert_eq!(g.len(), 8, "{g:?}");
    assert!(g.iter().all(|d| *d <= Duration::from_secs(16)), "{g:?}");
}

#[tokio::test(start_paused = true)]
async fn imds_404_and_5xx_are_retried() {
    let imds = FakeMsi::imds().await;
    imds.push_status(404);
    imds.push_status(503);
    imds.push_status(500);
    let cred = imds_credential(&imds, None);
    cred.acquire(ADO_SCOPE, None).await.expect("token");
    let g = gaps(&imds);
    assert_eq!(g.len(), 3);
    assert_about(g[0], Duration::from_secs(1));
    assert_about(g[1], Duration::from_secs(2));
    assert_about(g[2], Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn imds_429_retry_after_is_honoured() {
    let imds = FakeMsi::imds().await;
    imds.push_retry_after(429, 5);
    let cred = imds_credential(&imds, None);
    cred.acquire(ADO_SCOPE, None).await.expect("token");
    let g = gaps(&imds);
    assert_eq!(g.len(), 1);
    assert_about(g[0], Duration::from_secs(5));

    // A Retry-After beyond the acquisition's budget: no waiting here; the cache gets the wait.
    imds.push_retry_after(429, 600);
    let started = tokio::time::Instant::now();
    let err = cred.acquire(ADO_SCOPE, None).await.expect_err("throttled");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(err.class, ErrorClass::Throttled);
    assert_eq!(err.retry_after, Some(Duration::from_secs(600)));
    assert_eq!(imds.requests().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// IMDS errors.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn imds_400_says_the_identity_is_not_assigned() {
    let imds = FakeMsi::imds().await;
    imds.assign("client_id", UA_CLIENT_ID);
    let cred = credential(
        Some(ManagedIdentityId::ClientId(
            "99999999-9999-9999-9999-999999999999".into(),
        )),
        Some(&imds.url()),
        &[],
    );
    let err = cred
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("not assigned");
    assert_eq!(err.class, ErrorClass::InvalidClient);
    assert!(err.message.contains("not assigned"), "{}", err.message);
    assert!(
        err.message
            .contains("client_id 99999999-9999-9999-9999-999999999999"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("Identity not found"),
        "{}",
        err.message
    );
    assert_eq!(imds.requests().len(), 1, "a 400 is not retried");

    imds.set_system_assigned(false);
    let cred = credential(None, Some(&imds.url()), &[]);
    let err = cred.acquire(ADO_SCOPE, None).await.expect_err("none");
    assert_eq!(err.class, ErrorClass::NotConfigured);
    assert!(
        err.message.contains("no system-assigned identity"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn imds_passes_on_entra_refusals_with_a_hint() {
    let imds = FakeMsi::imds().await;
    imds.push(Scripted {
        status: 400,
        retry_after: None,
        body: Some(
            r#"{"error":"invalid_resource","error_description":"AADSTS500011: The resource principal named https://nope was not found in the tenant. Trace ID: 1 Correlation ID: 2"}"#
                .into(),
        ),
    });
    let cred = credential(None, Some(&imds.url()), &[]);
    let err = cred.acquire(ADO_SCOPE, None).await.expect_err("refused");
    assert_eq!(err.class, ErrorClass::InvalidGrant);
    assert!(err.message.contains("AADSTS500011"), "{}", err.message);
    assert!(err.message.contains("hint"), "{}", err.message);
    assert!(!err.message.contains("Trace ID"), "{}", err.message);
}

#[tokio::test]
async fn imds_impostor_answers_ask_whether_this_is_azure() {
    // Off Azure, a network filter or proxy may answer at 169.254.169.254 itself.
    let imds = FakeMsi::imds().await;
    imds.push(Scripted {
        status: 403,
        retry_after: None,
        body: Some("resolve_deny: denied destination".into()),
    });
    let cred = credential(None, Some(&imds.url()), &[]);
    let err = cred.acquire(ADO_SCOPE, None).await.expect_err("not IMDS");
    assert_eq!(err.class, ErrorClass::BadResponse);
    assert!(err.message.contains("403 (resolve_deny"), "{}", err.message);
    assert!(err.message.contains("Azure VM"), "{}", err.message);
    assert_eq!(imds.requests().len(), 1, "a 403 is not retried");
}

#[tokio::test]
async fn imds_unreachable_is_a_quick_network_error() {
    let port = {
        let l = support::bind_loopback().await;
        l.local_addr().expect("addr").port()
    };
    let cred = credential(None, Some(&format!("http://127.0.0.1:{port}")), &[]);
    let started = std::time::Instant::now();
    let err = cred
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("nothing listens");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.class, ErrorClass::Network);
    assert!(err.message.contains("unreachable"), "{}", err.message);
    assert!(
        err.message.contains(&format!("127.0.0.1:{port}")),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn string_and_number_typed_answers_are_parsed() {
    // IMDS: every value a string.
    let imds = FakeMsi::imds().await;
    imds.set_lifetime(86_399);
    let cred = credential(None, Some(&imds.url()), &[]);
    let t = cred.acquire(ADO_SCOPE, None).await.expect("strings");
    assert_eq!(t.expires_in, Duration::from_secs(86_399));
    // Numbers as numbers work too.
    imds.set_numbers_as_strings(false);
    let t = cred.acquire(ADO_SCOPE, None).await.expect("numbers");
    assert_eq!(t.expires_in, Duration::from_secs(86_399));

    // App Service: only expires_on (a Unix time as a string).
    let app = FakeMsi::app_service("h").await;
    let cred = credential(
        None,
        None,
        &[
            ("IDENTITY_ENDPOINT", &app.endpoint()),
            ("IDENTITY_HEADER", "h"),
        ],
    );
    let t = cred.acquire(ADO_SCOPE, None).await.expect("expires_on");
    assert!(
        t.expires_in <= Duration::from_secs(3600) && t.expires_in >= Duration::from_secs(3590),
        "{:?}",
        t.expires_in
    );
}

#[tokio::test]
async fn claims_are_not_sent() {
    let imds = FakeMsi::imds().await;
    let cred = credential(None, Some(&imds.url()), &[]);
    cred.acquire(
        ADO_SCOPE,
        Some(r#"{"access_token":{"nbf":{"essential":true}}}"#),
    )
    .await
    .expect("token without the claims");
    let r = &imds.requests()[0];
    assert!(!r.path_and_query.contains("claims"), "{}", r.path_and_query);
}

// ---------------------------------------------------------------------------------------------
// App Service's secret header.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_identity_header_is_refused_and_never_shown() {
    const WRONG: &str = "stale-identity-header-VALUE-8c1f";
    let app = FakeMsi::app_service("current-identity-header").await;
    let vars = [
        ("IDENTITY_ENDPOINT", app.endpoint()),
        ("IDENTITY_HEADER", WRONG.into()),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let cred = credential(None, None, &vars);
    let err = cred.acquire(ADO_SCOPE, None).await.expect_err("refused");
    assert_eq!(err.class, ErrorClass::InvalidClient);
    assert!(err.message.contains("X-IDENTITY-HEADER"), "{}", err.message);
    assert!(err.message.contains("401"), "{}", err.message);
    // The fake echoed the header back; it is cut out.
    assert!(err.message.contains("***"), "{}", err.message);
    assert!(!err.message.contains(WRONG), "{}", err.message);
    assert!(!format!("{err:?}").contains(WRONG));
    assert!(!format!("{cred:?}").contains(WRONG));
    assert!(!cred.describe().contains(WRONG));
    // The fake did receive it, so the test proves something.
    assert_eq!(app.requests()[0].header("x-identity-header"), Some(WRONG));

    // Through the proxy: the 503 and the metrics say nothing of it either.
    let ado = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start_with_env(&mi_config(&ado, ""), env(&vars)).await;
    let resp = p.get("/ado/x").await;
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.expect("body");
    assert!(body.contains("X-IDENTITY-HEADER"), "{body}");
    assert!(!body.contains(WRONG), "{body}");
    assert!(!p.metrics().await.contains(WRONG));
    assert_eq!(ado.requests().len(), 0);
    p.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Azure Arc key files.
// ---------------------------------------------------------------------------------------------

struct ArcDirs {
    _root: tempfile::TempDir,
    root: PathBuf,
    tokens: PathBuf,
}

fn arc_dirs() -> ArcDirs {
    let root = tempfile::tempdir().expect("tempdir");
    let path = root.path().to_path_buf();
    let tokens = path.join("tokens");
    std::fs::create_dir(&tokens).expect("mkdir");
    ArcDirs {
        root: path,
        tokens,
        _root: root,
    }
}

fn arc_credential(fake: &FakeMsi, tokens: &Path) -> ManagedIdentityCredential {
    ManagedIdentityCredential::new(
        support::http_client(),
        None,
        None,
        Arc::new(env(&[
            ("IDENTITY_ENDPOINT", &fake.endpoint()),
            ("IMDS_ENDPOINT", &fake.url()),
        ])),
        &arc_agent(tokens),
    )
}

#[tokio::test]
async fn arc_key_files_outside_the_rules_are_not_read() {
    let dirs = arc_dirs();
    let key = "k".repeat(32);
    std::fs::write(dirs.root.join("outside.key"), &key).expect("write");
    std::fs::write(dirs.tokens.join("wrong.txt"), &key).expect("write");
    std::fs::write(dirs.tokens.join("big.key"), "k".repeat(4097)).expect("write");
    std::fs::write(dirs.tokens.join("fine.key"), &key).expect("write");
    let tokens = dirs.tokens.display().to_string();
    let root = dirs.root.display().to_string();

    let mut cases = vec![
        (
            format!("{root}/outside.key"),
            "not inside the key directory",
        ),
        (format!("{tokens}/../outside.key"), "once `..` is resolved"),
        (format!("{tokens}/wrong.txt"), "does not end in .key"),
        (
            format!("{tokens}/big.key"),
            "4097 bytes, over the 4096-byte limit",
        ),
        ("tokens/fine.key".to_string(), "not an absolute path"),
        ("/etc/passwd".to_string(), "not inside the key directory"),
    ];
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dirs.root.join("outside.key"), dirs.tokens.join("link.key"))
            .expect("symlink");
        cases.push((format!("{tokens}/link.key"), "links to a file outside"));
    }
    for (realm, says) in cases {
        let arc = FakeMsi::arc(&realm, &key).await;
        let cred = arc_credential(&arc, &dirs.tokens);
        let err = cred.acquire(ADO_SCOPE, None).await.expect_err("refused");
        assert_eq!(
            err.class,
            ErrorClass::BadResponse,
            "{realm}: {}",
            err.message
        );
        assert!(err.message.contains(says), "{realm}: {}", err.message);
        assert!(
            err.message.contains("refused the key file"),
            "{}",
            err.message
        );
        let reqs = arc.requests();
        assert_eq!(reqs.len(), 1, "{realm}: only the challenge was asked for");
        assert_eq!(reqs[0].header("authorization"), None);
    }

    // The same directory with a good file works (so the refusals above were about the paths).
    let arc = FakeMsi::arc(&format!("{tokens}/fine.key"), &key).await;
    let cred = arc_credential(&arc, &dirs.tokens);
    cred.acquire(ADO_SCOPE, None).await.expect("token");
    // `..` that stays inside the directory is fine once resolved.
    let arc = FakeMsi::arc(&format!("{tokens}/sub/../fine.key"), &key).await;
    let cred = arc_credential(&arc, &dirs.tokens);
    cred.acquire(ADO_SCOPE, None).await.expect("token");
}

#[tokio::test]
async fn arc_production_key_directory_is_the_agents() {
    // With the agent's real paths (the default), only /var/opt/azcmagent/tokens/ is trusted.
    let dirs = arc_dirs();
    std::fs::write(dirs.tokens.join("a.key"), "k").expect("write");
    let arc = FakeMsi::arc(&format!("{}/a.key", dirs.tokens.display()), "k").await;
    let cred = credential(
        None,
        None,
        &[
            ("IDENTITY_ENDPOINT", &arc.endpoint()),
            ("IMDS_ENDPOINT", &arc.url()),
        ],
    );
    let err = cred.acquire(ADO_SCOPE, None).await.expect_err("refused");
    assert!(
        err.message.contains("/var/opt/azcmagent/tokens"),
        "{}",
        err.message
    );
    assert_eq!(arc.requests().len(), 1);
}

#[tokio::test]
async fn arc_wrong_key_is_an_invalid_client_error() {
    let dirs = arc_dirs();
    std::fs::write(dirs.tokens.join("a.key"), "stale-arc-key").expect("write");
    let arc = FakeMsi::arc(&format!("{}/a.key", dirs.tokens.display()), "fresh").await;
    let cred = arc_credential(&arc, &dirs.tokens);
    let err = cred.acquire(ADO_SCOPE, None).await.expect_err("refused");
    assert_eq!(err.class, ErrorClass::InvalidClient);
    assert!(err.message.contains("refused the key"), "{}", err.message);
    assert!(!err.message.contains("stale-arc-key"), "{}", err.message);
    assert_eq!(arc.requests().len(), 2);
}

#[test]
fn arc_is_detected_by_its_installed_agent_alone() {
    support::install_crypto_provider();
    let dirs = arc_dirs();
    let agent = ArcAgent {
        binary: dirs.root.join("himds"),
        key_dir: dirs.tokens.clone(),
    };
    let describe = |agent: &ArcAgent| {
        ManagedIdentityCredential::new(
            support::http_client(),
            None,
            None,
            Arc::new(MapEnv::default()),
            agent,
        )
        .describe()
    };
    let before = describe(&agent);
    assert!(
        before.contains("IMDS at http://169.254.169.254"),
        "{before}"
    );
    std::fs::write(&agent.binary, "").expect("install a stand-in himds");
    assert_eq!(
        describe(&agent),
        "managed identity via Azure Arc at http://localhost:40342/metadata/identity/oauth2/token \
         (system-assigned)"
    );
}
