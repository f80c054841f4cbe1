//! `workload_identity`: the projected service-account token is the client assertion, read again
//! at each acquisition; settings default from the AKS webhook's environment; a token that no
//! federated credential matches is explained with its issuer, subject and audience.

use std::path::{Path, PathBuf};

use patless::credentials::{Credential, ErrorClass, WorkloadIdentityCredential};
use patless::env::MapEnv;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support;
use crate::support::entra::{sign_token, FakeEntra, ADO_AUDIENCE, CLIENT_ID, TENANT};
use crate::support::patless::{profile_config, Patless, ADO};
use crate::support::upstream::FakeUpstream;

const ISSUER: &str = "https://oidc.prod-aks.azure.com/88888888-8888-8888-8888-888888888888/";
const SUBJECT: &str = "system:serviceaccount:build:patless";

/// A projected service-account token as the kubelet writes it (`n` makes each one different).
fn service_account_token(n: u64) -> String {
    let now = support::now_secs();
    sign_token(&json!({
        "aud": ["api://AzureADTokenExchange"],
        "iss": ISSUER,
        "sub": SUBJECT,
        "iat": now - n,
        "nbf": now - n,
        "exp": now + 3600,
        "kubernetes.io": {
            "namespace": "build",
            "serviceaccount": {"name": "patless", "uid": format!("uid-{n}")},
        },
    }))
}

/// Writes the token file the way the kubelet does (with a trailing newline here, to be trimmed).
fn write_token(dir: &TempDir, token: &str) -> PathBuf {
    let path = dir.path().join("azure-identity-token");
    std::fs::write(&path, format!("{token}\n")).expect("write token file");
    path
}

fn credential(entra: &FakeEntra, file: &Path) -> WorkloadIdentityCredential {
    WorkloadIdentityCredential::new(
        entra.client(),
        entra.authority_url(),
        TENANT.into(),
        CLIENT_ID.into(),
        file.to_path_buf(),
    )
}

/// A config with the route `/ado` on the profile `wi`, whose body is `profile`.
fn wi_config(authority: Option<&str>, up: &FakeUpstream, profile: &str) -> String {
    let body = format!("kind = \"workload_identity\"\n{profile}");
    profile_config(authority, &up.url(), "wi", &body, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projected_token_is_the_client_assertion() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let token = service_account_token(0);
    entra.accept_federated_assertion(&token);
    let file = write_token(&dir, &token);
    let profile = format!(
        "tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\ntoken_file = \"{}\"",
        file.display()
    );
    let p = Patless::start(&wi_config(Some(&entra.authority()), &up, &profile)).await;
    let r = p.get("/ado/org/_apis/projects").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(up.accepted(), 1);
    let requests = entra.requests();
    assert_eq!(requests.len(), 1);
    let form = &requests[0].form;
    assert_eq!(
        form["client_assertion"], token,
        "the file's contents, trimmed, as is"
    );
    assert_eq!(
        form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(requests[0].path, format!("/{TENANT}/oauth2/v2.0/token"));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_default_from_the_webhook_environment() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let token = service_account_token(0);
    entra.accept_federated_assertion(&token);
    let file = write_token(&dir, &token);
    let env = MapEnv::new([
        ("AZURE_CLIENT_ID", CLIENT_ID.to_string()),
        ("AZURE_TENANT_ID", TENANT.to_string()),
        ("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()),
        ("AZURE_AUTHORITY_HOST", format!("{}/", entra.authority())),
    ]);
    let p = Patless::start_with_env(&wi_config(None, &up, ""), env).await;
    let r = p.get("/ado/x").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(entra.client_assertions(), vec![token]);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_environment_is_a_503_naming_the_variables() {
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start_with_env(
        &wi_config(Some("http://127.0.0.1:9"), &up, ""),
        MapEnv::new([("AZURE_CLIENT_ID", CLIENT_ID)]),
    )
    .await;
    let r = p.get("/ado/x").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.expect("json");
    let msg = body["message"].as_str().expect("message");
    assert!(msg.contains("AZURE_TENANT_ID"), "{msg}");
    assert!(msg.contains("AZURE_FEDERATED_TOKEN_FILE"), "{msg}");
    assert!(
        !msg.contains("AZURE_CLIENT_ID"),
        "the client id was found: {msg}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_sent_at_the_next_acquisition() {
    let entra = FakeEntra::start().await;
    let dir = TempDir::new().expect("tempdir");
    let first = service_account_token(1);
    let second = service_account_token(2);
    assert_ne!(first, second);
    entra.accept_federated_assertion(&first);
    entra.accept_federated_assertion(&second);
    let file = write_token(&dir, &first);
    let cred = credential(&entra, &file);

    cred.acquire(ADO, None).await.expect("first token");
    write_token(&dir, &second); // the kubelet's rotation
    cred.acquire(ADO, None).await.expect("second token");

    assert_eq!(entra.client_assertions(), vec![first, second]);
    assert_eq!(entra.issued_tokens().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmatched_token_is_aadsts70021_with_its_issuer_subject_and_audience() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let token = service_account_token(0); // not registered
    let file = write_token(&dir, &token);

    let err = credential(&entra, &file)
        .acquire(ADO, None)
        .await
        .expect_err("no federated credential matches");
    assert_eq!(err.class, ErrorClass::InvalidClient);
    assert_eq!(err.codes, vec![70021]);
    support::assert_contains_all(
        &err.message,
        &[
            "AADSTS70021",
            "check issuer, subject and audience",
            ISSUER,
            SUBJECT,
            "api://AzureADTokenExchange",
            &file.display().to_string(),
            CLIENT_ID,
        ],
    );
    assert!(!err.message.contains(&token), "never the token");

    // Through the proxy: a 503 saying the same.
    let profile = format!(
        "tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\ntoken_file = \"{}\"",
        file.display()
    );
    let p = Patless::start(&wi_config(Some(&entra.authority()), &up, &profile)).await;
    let r = p.get("/ado/x").await;
    assert_eq!(r.status(), 503);
    let text = r.text().await.expect("body");
    assert!(
        text.contains("AADSTS70021") && text.contains(SUBJECT),
        "{text}"
    );
    let signature = token.rsplit('.').next().expect("signature");
    assert!(!text.contains(signature), "never the token: {text}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_empty_token_file_is_not_configured_and_named() {
    let entra = FakeEntra::start().await;
    let dir = TempDir::new().expect("tempdir");

    let missing = dir.path().join("no-such-token");
    let err = credential(&entra, &missing)
        .acquire(ADO, None)
        .await
        .expect_err("no file");
    assert_eq!(err.class, ErrorClass::NotConfigured);
    assert!(
        err.message.contains(&missing.display().to_string()),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("azure.workload.identity/use"),
        "{}",
        err.message
    );

    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, " \n").expect("write");
    let err = credential(&entra, &empty)
        .acquire(ADO, None)
        .await
        .expect_err("empty file");
    assert_eq!(err.class, ErrorClass::NotConfigured);
    assert!(
        err.message.contains(&empty.display().to_string()),
        "{}",
        err.message
    );
    assert!(err.message.contains("is empty"), "{}", err.message);
    assert_eq!(entra.token_requests(), 0);
}
