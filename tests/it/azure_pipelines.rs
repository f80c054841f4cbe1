//! `azure_pipelines`: a fresh OIDC token from the pipeline for every exchange, presented to Entra
//! as the client assertion; settings default from the agent's environment; a refused system
//! access token (401, or the 203/302 sign-in pages) is explained; neither the system token nor an
//! OIDC token ever shows in errors or logs.

use std::sync::Arc;

use patless::config::SecretSource;
use patless::credentials::{AzurePipelinesCredential, Credential, CredentialError, ErrorClass};
use patless::env::MapEnv;
use serde_json::Value;

use crate::support;
use crate::support::entra::{FakeEntra, ADO_AUDIENCE, CLIENT_ID, TENANT};
use crate::support::patless::{profile_config, Patless, ADO};
use crate::support::pipelines::{
    FakePipelines, Mode, ISSUER, SERVICE_CONNECTION_ID, SUBJECT, SYSTEM_TOKEN,
};
use crate::support::upstream::FakeUpstream;

/// The variables an `AzureCLI@2` step (with the system token mapped) gives its script.
fn agent_env(pipelines: &FakePipelines) -> Vec<(&'static str, String)> {
    vec![
        ("AZURESUBSCRIPTION_CLIENT_ID", CLIENT_ID.to_string()),
        ("AZURESUBSCRIPTION_TENANT_ID", TENANT.to_string()),
        (
            "AZURESUBSCRIPTION_SERVICE_CONNECTION_ID",
            SERVICE_CONNECTION_ID.to_string(),
        ),
        ("SYSTEM_OIDCREQUESTURI", pipelines.oidc_request_uri()),
        ("SYSTEM_ACCESSTOKEN", SYSTEM_TOKEN.to_string()),
    ]
}

/// A config whose route `/ado` uses the profile `ci` (`kind = "azure_pipelines"` and nothing else).
fn ci_config(entra: &FakeEntra, up: &FakeUpstream) -> String {
    let kind = "kind = \"azure_pipelines\"";
    profile_config(Some(&entra.authority()), &up.url(), "ci", kind, "")
}

fn credential(
    entra: &FakeEntra,
    oidc_request_uri: &str,
    system_token: SecretSource,
) -> AzurePipelinesCredential {
    AzurePipelinesCredential::new(
        entra.client(),
        entra.authority_url(),
        TENANT.into(),
        CLIENT_ID.into(),
        SERVICE_CONNECTION_ID.into(),
        oidc_request_uri.into(),
        system_token,
        Arc::new(MapEnv::new([("SYSTEM_ACCESSTOKEN", SYSTEM_TOKEN)])),
    )
}

fn system_token() -> SecretSource {
    SecretSource::Env("SYSTEM_ACCESSTOKEN".into())
}

fn assert_no_secret(text: &str, pipelines: &FakePipelines) {
    assert!(
        !text.contains(SYSTEM_TOKEN),
        "the system token leaked: {text}"
    );
    for t in pipelines.issued() {
        let signature = t.rsplit('.').next().expect("signature");
        assert!(!text.contains(signature), "an OIDC token leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_connection_works_through_the_proxy_with_the_agent_environment() {
    let entra = Arc::new(FakeEntra::start().await);
    let pipelines = FakePipelines::start(entra.clone()).await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p =
        Patless::start_with_env(&ci_config(&entra, &up), MapEnv::new(agent_env(&pipelines))).await;
    let r = p.get("/ado/org/_apis/projects").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(up.accepted(), 1);

    let oidc = pipelines.requests();
    assert_eq!(oidc.len(), 1);
    let req = &oidc[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, support::pipelines::OIDC_PATH);
    assert_eq!(
        req.query,
        vec![
            ("api-version".to_string(), "7.1".to_string()),
            (
                "serviceConnectionId".to_string(),
                SERVICE_CONNECTION_ID.to_string()
            ),
        ]
    );
    assert_eq!(
        req.headers["authorization"],
        format!("Bearer {SYSTEM_TOKEN}").as_str()
    );
    assert_eq!(req.headers["x-tfs-fedauthredirect"], "Suppress");
    assert_eq!(req.headers["content-type"], "application/json");
    assert_eq!(req.body, "{}");

    let requests = entra.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].form["client_assertion"], pipelines.issued()[0]);
    assert_eq!(
        requests[0].form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert_eq!(requests[0].form["client_id"], CLIENT_ID);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exchange_uses_a_new_oidc_token() {
    let entra = Arc::new(FakeEntra::start().await);
    let pipelines = FakePipelines::start(entra.clone()).await;
    let cred = credential(&entra, &pipelines.oidc_request_uri(), system_token());
    cred.acquire(ADO, None).await.expect("first token");
    cred.acquire(support::patless::DEFENDER, None)
        .await
        .expect("second token");
    assert_eq!(
        pipelines.requests().len(),
        2,
        "one OIDC request per exchange"
    );
    let issued = pipelines.issued();
    assert_ne!(issued[0], issued[1]);
    assert_eq!(entra.client_assertions(), issued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_already_in_the_request_uri_is_kept() {
    let entra = Arc::new(FakeEntra::start().await);
    let pipelines = FakePipelines::start(entra.clone()).await;
    let uri = format!("{}?planVersion=2", pipelines.oidc_request_uri());
    credential(&entra, &uri, system_token())
        .acquire(ADO, None)
        .await
        .expect("token");
    let query = &pipelines.requests()[0].query;
    assert_eq!(
        query,
        &vec![
            ("planVersion".to_string(), "2".to_string()),
            ("api-version".to_string(), "7.1".to_string()),
            (
                "serviceConnectionId".to_string(),
                SERVICE_CONNECTION_ID.to_string()
            ),
        ]
    );
}

async fn refused(cred: &AzurePipelinesCredential) -> CredentialError {
    cred.acquire(ADO, None).await.expect_err("refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_system_token_is_explained_whatever_the_answer() {
    let entra = Arc::new(FakeEntra::start().await);
    let pipelines = FakePipelines::start(entra.clone()).await;
    let good = credential(&entra, &pipelines.oidc_request_uri(), system_token());
    for (mode, status) in [
        (Mode::Unauthorized401, "401"),
        (Mode::SignInPage203, "203"),
        (Mode::Redirect302, "302"),
        (Mode::Html200, "200"),
    ] {
        pipelines.set_mode(mode);
        let err = refused(&good).await;
        assert_eq!(
            err.class,
            ErrorClass::InvalidClient,
            "{mode:?}: {}",
            err.message
        );
        assert!(
            err.message.contains("the system access token is not valid (is SYSTEM_ACCESSTOKEN mapped into the step's env?"),
            "{mode:?}: {}",
            err.message
        );
        assert!(err.message.contains(status), "{mode:?}: {}", err.message);
        assert_no_secret(&err.message, &pipelines);
    }

    // A wrong token, for real: the fake answers 401 because the Suppress header was sent.
    pipelines.set_mode(Mode::Normal);
    let wrong = "WRONG-system-token-also-secret";
    let cred = credential(
        &entra,
        &pipelines.oidc_request_uri(),
        SecretSource::Literal(patless::secret::Secret::new(wrong)),
    );
    let err = refused(&cred).await;
    assert_eq!(err.class, ErrorClass::InvalidClient);
    assert!(
        err.message.contains("system access token is not valid"),
        "{}",
        err.message
    );
    assert!(!err.message.contains(wrong));
    assert_eq!(entra.token_requests(), 0, "nothing reached Entra");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_are_classified_as_transient() {
    let entra = Arc::new(FakeEntra::start().await);
    let pipelines = FakePipelines::start(entra.clone()).await;
    pipelines.set_mode(Mode::ServerError500);
    let err = refused(&credential(
        &entra,
        &pipelines.oidc_request_uri(),
        system_token(),
    ))
    .await;
    assert_eq!(err.class, ErrorClass::ServerError, "{}", err.message);
    assert!(
        err.message.contains("VS402908"),
        "Azure DevOps' own message: {}",
        err.message
    );

    // Nothing listens there.
    let closed = support::bind_loopback().await;
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let err = refused(&credential(
        &entra,
        &format!("http://{addr}/oidctoken"),
        system_token(),
    ))
    .await;
    assert_eq!(err.class, ErrorClass::Network, "{}", err.message);
    assert!(err.class.is_transient());
    assert_eq!(entra.token_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_no_federated_credential_matches_is_explained() {
    // The pipeline's tokens are accepted by another tenant's Entra, not the one patless asks.
    let elsewhere = Arc::new(FakeEntra::start().await);
    let pipelines = FakePipelines::start(elsewhere).await;
    let entra = FakeEntra::start().await;
    let err = refused(&credential(
        &entra,
        &pipelines.oidc_request_uri(),
        system_token(),
    ))
    .await;
    assert_eq!(err.codes, vec![70021]);
    support::assert_contains_all(
        &err.message,
        &[
            "AADSTS70021",
            "check issuer, subject and audience",
            ISSUER,
            SUBJECT,
            SERVICE_CONNECTION_ID,
        ],
    );
    assert_no_secret(&err.message, &pipelines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_agent_variables_are_a_503_naming_them() {
    let entra = Arc::new(FakeEntra::start().await);
    let pipelines = FakePipelines::start(entra.clone()).await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let env: Vec<_> = agent_env(&pipelines)
        .into_iter()
        .filter(|(k, _)| {
            *k != "SYSTEM_OIDCREQUESTURI" && *k != "AZURESUBSCRIPTION_SERVICE_CONNECTION_ID"
        })
        .collect();
    let p = Patless::start_with_env(&ci_config(&entra, &up), MapEnv::new(env)).await;
    let r = p.get("/ado/x").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.expect("json");
    let msg = body["message"].as_str().expect("message");
    assert!(msg.contains("SYSTEM_OIDCREQUESTURI"), "{msg}");
    assert!(
        msg.contains("AZURESUBSCRIPTION_SERVICE_CONNECTION_ID"),
        "{msg}"
    );
    p.stop().await;

    // Everything but the system token, which the step did not map.
    let env: Vec<_> = agent_env(&pipelines)
        .into_iter()
        .filter(|(k, _)| *k != "SYSTEM_ACCESSTOKEN")
        .collect();
    let p = Patless::start_with_env(&ci_config(&entra, &up), MapEnv::new(env)).await;
    let r = p.get("/ado/x").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.expect("json");
    let msg = body["message"].as_str().expect("message");
    assert!(msg.contains("SYSTEM_ACCESSTOKEN"), "{msg}");
    assert!(msg.contains("$(System.AccessToken)"), "{msg}");
    assert!(pipelines.requests().is_empty());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_system_token_nor_an_oidc_token_is_logged_or_shown() {
    support::capture::init();

    let entra = Arc::new(FakeEntra::start().await);
    let pipelines = FakePipelines::start(entra.clone()).await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p =
        Patless::start_with_env(&ci_config(&entra, &up), MapEnv::new(agent_env(&pipelines))).await;
    let client = support::http_client();
    let mut outputs = Vec::new();
    let r = support::get(&client, p.url("/ado/x")).await;
    assert_eq!(r.status(), 200);
    outputs.push(p.metrics().await);
    p.stop().await;

    pipelines.set_mode(Mode::Redirect302);
    let p =
        Patless::start_with_env(&ci_config(&entra, &up), MapEnv::new(agent_env(&pipelines))).await;
    let r = support::get(&client, p.url("/ado/x")).await;
    assert_eq!(r.status(), 503);
    outputs.push(r.text().await.expect("body"));
    outputs.push(
        support::get(&client, p.admin_url("/readyz"))
            .await
            .text()
            .await
            .expect("text"),
    );
    p.stop().await;
    outputs.push(format!(
        "{:?}",
        credential(&entra, &pipelines.oidc_request_uri(), system_token())
    ));

    let logs = support::capture::logs();
    assert!(
        logs.contains("requesting an OIDC token"),
        "TRACE capture is not working:\n{logs}"
    );
    assert!(
        logs.contains("system access token is not valid"),
        "the failure is logged:\n{logs}"
    );
    assert!(!pipelines.issued().is_empty());
    assert_no_secret(&logs, &pipelines);
    for o in &outputs {
        assert_no_secret(o, &pipelines);
    }
}
