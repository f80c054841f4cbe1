//! Secret hygiene (docs/security.md, "Secrets": no metric label, log line or error message ever
//! holds a token, a secret or a refresh token). With TRACE logging captured for the whole binary,
//! every credential kind runs its happy path and a failure path, and no token, secret, refresh
//! token, client assertion or inbound token may appear in the logs, in the error bodies clients
//! get, in `/metrics` or `/readyz`, in the `Debug` of configs, credentials, tokens and errors, or
//! in what `patless config` prints. Each test also proves that the secret really was used (the fake
//! saw it), so no check is vacuous.
//!
//! The capture is shared by the tests of this binary, which run in parallel: see
//! [`support::capture`] for why checking at the end of each test covers every line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patless::config::Config;
use patless::env::{Env, MapEnv};
use patless::login::{login, login_with, LoginError, LoginOptions};
use patless::store::TokenStore;
use patless::App;
use serde_json::json;
use tempfile::TempDir;

use crate::support;
use crate::support::capture::Hygiene;
use crate::support::certs::{pfx, pki, verifier_for};
use crate::support::entra::{
    mint_token, sign_token, AuthorizeStep, DeviceStep, FakeEntra, Fault, ADO_AUDIENCE, CLIENT_ID,
    CLIENT_SECRET, DEFENDER_AUDIENCE, PUBLIC_CLIENT_ID, TENANT,
};
use crate::support::fake_cli::{FakeCli, Mode as CliMode};
use crate::support::msi::{self, FakeMsi};
use crate::support::now_secs;
use crate::support::patless::{load, load_config, profile_config, Patless, ADO};
use crate::support::pipelines::{FakePipelines, SERVICE_CONNECTION_ID, SYSTEM_TOKEN};
use crate::support::sandbox::Sandbox;
use crate::support::upstream::{FakeUpstream, Identity};
use crate::support::write_file;
use crate::support::SharedBuf;

const PAT: &str = "ghp-like-stale-PAT-0123456789abcdef";
const ENV_SECRET: &str = "env-provided-secret-XYZ-987";
const PFX_PASSWORD: &str = "pfx-Password-not-to-be-shown-77";
const WRONG_PFX_PASSWORD: &str = "wrong-PFX-password-never-shown-31";
const WRONG_SYSTEM_TOKEN: &str = "stale-SYSTEM-access-token-9d8c7b6a";
const IDENTITY_HEADER: &str = "app-service-identity-header-4f1d9e";
const WRONG_IDENTITY_HEADER: &str = "stale-identity-header-VALUE-8c1f";
const WRONG_AUTO_SECRET: &str = "wrong-env-principal-secret-5e6f";
const INBOUND: &str = "inbound-shared-secret-0123456789";
const WRONG_INBOUND: &str = "guessed-inbound-token-abcdef0123";
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

fn client() -> reqwest::Client {
    support::http_client()
}

/// Sends `req`; returns the status and the body.
async fn send(req: reqwest::RequestBuilder) -> (u16, String) {
    let r = req.send().await.expect("the proxy answers");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

/// `GET /ado/org/_apis/projects` through `p`, which must answer `want`; a 503 must be
/// `token_unavailable` with `Retry-After`. Returns the body (for an error: patless's output).
async fn request(p: &Patless, want: u16) -> String {
    let r = client()
        .get(p.url("/ado/org/_apis/projects"))
        .send()
        .await
        .expect("the proxy answers");
    let status = r.status().as_u16();
    let retry_after = r.headers().contains_key("retry-after");
    let body = r.text().await.expect("body");
    assert_eq!(status, want, "{body}");
    if want == 503 {
        assert!(retry_after, "503 without Retry-After");
        assert!(body.contains("token_unavailable"), "{body}");
    }
    body
}

/// `/metrics`, `/readyz` and `/healthz` of `p` as outputs.
async fn admin_outputs(h: &mut Hygiene, p: &Patless, when: &str) {
    h.output(&format!("/metrics ({when})"), p.metrics().await);
    for path in ["/readyz", "/healthz"] {
        let (_, body) = send(client().get(p.admin_url(path))).await;
        h.output(&format!("{path} ({when})"), body);
    }
}

/// The `Debug` of the loaded config, its redacted raw form, and exactly what `patless config`
/// prints (`src/cli.rs` `print_config`: the effective config as pretty TOML) as outputs.
fn config_outputs(h: &mut Hygiene, what: &str, toml_text: &str, env: &MapEnv) {
    let loaded = load(toml_text, env);
    h.output(
        &format!("Debug of the loaded config ({what})"),
        format!("{loaded:?}"),
    );
    h.output(
        &format!("redacted raw config ({what})"),
        toml::to_string(&loaded.raw.redacted()).expect("toml"),
    );
    let printed = toml::to_string_pretty(&loaded.config.effective(&loaded.raw)).expect("toml");
    assert!(printed.contains("[profiles."), "{printed}");
    h.output(&format!("`patless config` ({what})"), printed);
}

/// Builds an `App` for `toml_text` and acquires once with `profile`'s credential, directly and
/// through the cache; the `Debug` of the credential, the cache, the token or the error, and the
/// credential's source description are outputs. Returns whether the acquisition worked.
async fn app_outputs(
    h: &mut Hygiene,
    what: &str,
    toml_text: &str,
    env: &MapEnv,
    profile: &str,
) -> bool {
    let loaded = load(toml_text, env);
    let app = App::new(
        loaded.config,
        Arc::new(env.clone()),
        prometheus::Registry::new(),
    )
    .expect("app builds");
    let cred = app.cache.credential(profile).expect("the profile").clone();
    h.output(
        &format!("Debug of the credential ({what})"),
        format!("{cred:?}"),
    );
    let ok = match cred.acquire(ADO, None).await {
        Ok(t) => {
            h.output(
                &format!("Debug of the AccessToken ({what})"),
                format!("{t:?}"),
            );
            true
        }
        Err(e) => {
            h.output(&format!("credential error ({what})"), e.to_string());
            h.output(
                &format!("Debug of the credential error ({what})"),
                format!("{e:?}"),
            );
            false
        }
    };
    let entry = app.cache.entry(profile, ADO, None).expect("entry");
    match entry.get().await {
        Ok(t) => h.output(
            &format!("Debug of the CachedToken ({what})"),
            format!("{t:?}"),
        ),
        Err(e) => {
            h.output(&format!("TokenUnavailable ({what})"), e.to_string());
            h.output(
                &format!("Debug of TokenUnavailable ({what})"),
                format!("{e:?}"),
            );
        }
    }
    h.output(
        &format!("Debug of the token cache ({what})"),
        format!("{:?} {entry:?}", app.cache),
    );
    h.output(
        &format!("credential source ({what})"),
        (app.credential_sources[profile])(),
    );
    ok
}

/// A config with the one profile `profile` (`body`, its `kind` first) behind `/ado` → `up`.
fn proxy_toml(
    entra: Option<&FakeEntra>,
    up: &FakeUpstream,
    profile: &str,
    body: &str,
    server_extra: &str,
) -> String {
    let authority = entra.map(FakeEntra::authority);
    let server = format!("shutdown_grace = \"1s\"\n{server_extra}");
    profile_config(authority.as_deref(), &up.url(), profile, body, &server)
}

/// The bearer token of the upstream's last request.
fn upstream_token(up: &FakeUpstream) -> String {
    let rec = up.requests().pop().expect("the upstream saw a request");
    assert!(rec.token_valid, "upstream refused: {:?}", rec.token_error);
    rec.headers["authorization"]
        .to_str()
        .expect("ascii")
        .trim_start_matches("Bearer ")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// client_secret.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_accepted_and_refused() {
    let mut h = Hygiene::new("client_secret");
    h.forbid("literal client secret", CLIENT_SECRET);
    h.forbid("client secret from the environment", ENV_SECRET);
    h.forbid("stale PAT the client sends", PAT);
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let literal = proxy_toml(
        Some(&entra),
        &up,
        "bot",
        &format!(
            "kind = \"client_secret\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret = \"{CLIENT_SECRET}\""
        ),
        "",
    );
    let env = MapEnv::new([("BOT_SECRET", ENV_SECRET)]);

    // Happy path, with a PAT the client still sends.
    let p = Patless::start(&literal).await;
    let (status, _echo) = send(
        client()
            .get(p.url("/ado/org/_apis/projects"))
            .basic_auth("", Some(PAT)),
    )
    .await;
    // (The body is the fake upstream's echo of what it received, token included: not patless
    // output.)
    assert_eq!(status, 200);
    admin_outputs(&mut h, &p, "after a success").await;
    p.stop().await;
    assert_eq!(up.accepted(), 1, "the upstream verified the token");
    assert_eq!(
        entra.last_form("client_secret").as_deref(),
        Some(CLIENT_SECRET)
    );
    assert!(app_outputs(&mut h, "literal secret", &literal, &env, "bot").await);

    // Entra refuses the secret; the secret comes from the environment this time.
    entra.set_fault(Some(Fault::InvalidClient));
    let env_toml = literal.replace(
        &format!("client_secret = \"{CLIENT_SECRET}\""),
        "client_secret = { env = \"BOT_SECRET\" }",
    );
    let p = Patless::start_with_env(&env_toml, env.clone()).await;
    let (status, body) = send(client().get(p.url("/ado/x")).bearer_auth(PAT)).await;
    assert_eq!(status, 503, "{body}");
    h.output("503 body (secret refused)", body);
    admin_outputs(&mut h, &p, "after a refusal").await;
    p.stop().await;
    assert_eq!(
        entra.last_form("client_secret").as_deref(),
        Some(ENV_SECRET)
    );
    assert!(!app_outputs(&mut h, "secret refused", &env_toml, &env, "bot").await);

    config_outputs(&mut h, "literal secret", &literal, &env);
    config_outputs(&mut h, "secret from the environment", &env_toml, &env);
    assert!(h.forbid_all("access token", entra.issued_tokens()) >= 2);
    h.expect_logged(&["token acquired", "profile=bot"]);
    h.expect_logged(&["token acquisition failed", "profile=bot", "AADSTS7000215"]);
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// client_certificate.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_accepted_refused_and_unreadable() {
    let mut h = Hygiene::new("client_certificate");
    let pki = pki();
    h.forbid_pem_key("PEM private key", &pki.leaf.key_pem);
    h.forbid_pem_key("private key inside the PFX", &pki.other.key_pem);
    h.forbid("PFX password", PFX_PASSWORD);
    h.forbid("wrong PFX password", WRONG_PFX_PASSWORD);
    let entra = FakeEntra::start().await;
    // Only the leaf is registered: the `other` certificate's assertions are refused.
    entra.set_assertion_verifier(verifier_for(&pki.leaf.der, CLIENT_ID));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let pem = write_file(dir.path(), "client.pem", pki.bundle_pem());
    let unregistered = write_file(
        dir.path(),
        "unregistered.pfx",
        pfx(&pki.other, &[&pki.other], PFX_PASSWORD),
    );
    let body = |file: &Path, extra: &str| {
        format!(
            "kind = \"client_certificate\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\n\
             certificate = \"{}\"\n{extra}",
            file.display()
        )
    };
    let no_env = MapEnv::default();

    // Happy path: a PEM bundle.
    let happy = proxy_toml(Some(&entra), &up, "cert", &body(&pem, ""), "");
    let p = Patless::start(&happy).await;
    request(&p, 200).await;
    admin_outputs(&mut h, &p, "after a success").await;
    p.stop().await;
    assert_eq!(up.accepted(), 1);
    assert_eq!(
        entra.client_assertions().len(),
        1,
        "a signed assertion was sent"
    );
    assert!(app_outputs(&mut h, "PEM", &happy, &no_env, "cert").await);

    // Entra refuses an unregistered certificate (a PFX whose password is in the environment).
    let refused = proxy_toml(
        Some(&entra),
        &up,
        "cert",
        &body(
            &unregistered,
            "certificate_password = { env = \"CERT_PASSWORD\" }",
        ),
        "",
    );
    let env = MapEnv::new([("CERT_PASSWORD", PFX_PASSWORD)]);
    let sent = entra.client_assertions().len();
    let p = Patless::start_with_env(&refused, env.clone()).await;
    let b = request(&p, 503).await;
    assert!(b.contains("AADSTS700027"), "{b}");
    h.output("503 body (certificate refused)", b);
    admin_outputs(&mut h, &p, "after a refusal").await;
    p.stop().await;
    assert!(
        entra.client_assertions().len() > sent,
        "the refused assertion was sent"
    );
    assert!(!app_outputs(&mut h, "unregistered", &refused, &env, "cert").await);

    // The PFX cannot be opened with the (literal) password given.
    let unreadable = proxy_toml(
        Some(&entra),
        &up,
        "cert",
        &body(
            &unregistered,
            &format!("certificate_password = \"{WRONG_PFX_PASSWORD}\""),
        ),
        "",
    );
    let sent = entra.token_requests();
    let p = Patless::start(&unreadable).await;
    let b = request(&p, 503).await;
    h.output("503 body (wrong PFX password)", b);
    admin_outputs(&mut h, &p, "after a wrong password").await;
    p.stop().await;
    assert_eq!(entra.token_requests(), sent, "nothing was sent to Entra");
    assert!(!app_outputs(&mut h, "wrong password", &unreadable, &no_env, "cert").await);

    config_outputs(&mut h, "PEM", &happy, &no_env);
    config_outputs(&mut h, "PFX, password from the environment", &refused, &env);
    config_outputs(&mut h, "PFX, literal password", &unreadable, &no_env);
    assert!(h.forbid_all("signed client assertion", entra.client_assertions()) >= 2);
    assert!(h.forbid_all("access token", entra.issued_tokens()) >= 1);
    h.expect_logged(&["token acquired", "profile=cert"]);
    h.expect_logged(&["token acquisition failed", "profile=cert", "AADSTS700027"]);
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// workload_identity.
// ---------------------------------------------------------------------------------------------

/// A projected service-account token as the kubelet writes it.
fn service_account_token(subject: &str) -> String {
    let now = now_secs();
    sign_token(&json!({
        "aud": ["api://AzureADTokenExchange"],
        "iss": "https://oidc.prod-aks.azure.com/88888888-8888-8888-8888-888888888888/",
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "kubernetes.io": {"namespace": "build", "serviceaccount": {"name": "patless"}},
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_accepted_and_refused() {
    let mut h = Hygiene::new("workload_identity");
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let good = service_account_token("system:serviceaccount:build:patless");
    let bad = service_account_token("system:serviceaccount:build:someone-else");
    h.forbid("federated token (assertion)", &good);
    h.forbid("unmatched federated token (assertion)", &bad);
    entra.accept_federated_assertion(&good);
    let good_file = write_file(dir.path(), "good-token", format!("{good}\n"));
    let bad_file = write_file(dir.path(), "bad-token", format!("{bad}\n"));
    let body = |file: &Path| {
        format!(
            "kind = \"workload_identity\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\n\
             token_file = \"{}\"",
            file.display()
        )
    };
    let no_env = MapEnv::default();

    let happy = proxy_toml(Some(&entra), &up, "wi", &body(&good_file), "");
    let p = Patless::start(&happy).await;
    request(&p, 200).await;
    admin_outputs(&mut h, &p, "after a success").await;
    p.stop().await;
    assert_eq!(up.accepted(), 1);
    assert_eq!(
        entra.last_form("client_assertion").as_deref(),
        Some(good.as_str())
    );
    assert!(app_outputs(&mut h, "accepted", &happy, &no_env, "wi").await);

    let refused = proxy_toml(Some(&entra), &up, "wi", &body(&bad_file), "");
    let p = Patless::start(&refused).await;
    let b = request(&p, 503).await;
    assert!(b.contains("AADSTS70021"), "{b}");
    h.output("503 body (no federated credential matches)", b);
    admin_outputs(&mut h, &p, "after a refusal").await;
    p.stop().await;
    assert_eq!(
        entra.last_form("client_assertion").as_deref(),
        Some(bad.as_str())
    );
    assert!(!app_outputs(&mut h, "refused", &refused, &no_env, "wi").await);

    config_outputs(&mut h, "accepted", &happy, &no_env);
    assert!(h.forbid_all("access token", entra.issued_tokens()) >= 1);
    h.expect_logged(&["token acquired", "profile=wi"]);
    h.expect_logged(&["token acquisition failed", "profile=wi", "AADSTS70021"]);
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// azure_pipelines.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_pipelines_accepted_and_refused() {
    let mut h = Hygiene::new("azure_pipelines");
    h.forbid("SYSTEM_ACCESSTOKEN", SYSTEM_TOKEN);
    h.forbid("stale SYSTEM_ACCESSTOKEN", WRONG_SYSTEM_TOKEN);
    let entra = Arc::new(FakeEntra::start().await);
    let pipelines = FakePipelines::start(entra.clone()).await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let agent = |system_token: Option<&str>| {
        let mut vars = vec![
            ("AZURESUBSCRIPTION_CLIENT_ID", CLIENT_ID.to_string()),
            ("AZURESUBSCRIPTION_TENANT_ID", TENANT.to_string()),
            (
                "AZURESUBSCRIPTION_SERVICE_CONNECTION_ID",
                SERVICE_CONNECTION_ID.to_string(),
            ),
            ("SYSTEM_OIDCREQUESTURI", pipelines.oidc_request_uri()),
        ];
        if let Some(t) = system_token {
            vars.push(("SYSTEM_ACCESSTOKEN", t.to_string()));
        }
        MapEnv::new(vars)
    };
    let authorization = || {
        pipelines
            .requests()
            .last()
            .and_then(|r| r.headers.get("authorization").cloned())
            .map(|v| v.to_str().expect("ascii").to_string())
    };

    // Happy path: everything from the agent's environment.
    let from_env = proxy_toml(Some(&entra), &up, "ci", "kind = \"azure_pipelines\"", "");
    let env = agent(Some(SYSTEM_TOKEN));
    let p = Patless::start_with_env(&from_env, env.clone()).await;
    request(&p, 200).await;
    admin_outputs(&mut h, &p, "after a success").await;
    p.stop().await;
    assert_eq!(up.accepted(), 1);
    assert_eq!(authorization(), Some(format!("Bearer {SYSTEM_TOKEN}")));
    assert_eq!(
        entra.client_assertions(),
        pipelines.issued(),
        "the oidcToken was the assertion"
    );
    assert!(app_outputs(&mut h, "accepted", &from_env, &env, "ci").await);

    // The job's access token is refused by Azure DevOps.
    let stale = agent(Some(WRONG_SYSTEM_TOKEN));
    let p = Patless::start_with_env(&from_env, stale.clone()).await;
    h.output("503 body (system token refused)", request(&p, 503).await);
    admin_outputs(&mut h, &p, "after a refused system token").await;
    p.stop().await;
    assert_eq!(
        authorization(),
        Some(format!("Bearer {WRONG_SYSTEM_TOKEN}"))
    );
    assert!(!app_outputs(&mut h, "system token refused", &from_env, &stale, "ci").await);

    // An oidcToken is issued (the system token is a literal in the file this time), and Entra
    // refuses the exchange.
    entra.set_fault(Some(Fault::InvalidClient));
    let literal = proxy_toml(
        Some(&entra),
        &up,
        "ci",
        &format!("kind = \"azure_pipelines\"\nsystem_access_token = \"{SYSTEM_TOKEN}\""),
        "",
    );
    let no_token = agent(None);
    let issued = pipelines.issued().len();
    let p = Patless::start_with_env(&literal, no_token.clone()).await;
    h.output("503 body (exchange refused)", request(&p, 503).await);
    admin_outputs(&mut h, &p, "after a refused exchange").await;
    p.stop().await;
    assert!(pipelines.issued().len() > issued, "an oidcToken was issued");
    assert_eq!(entra.client_assertions().last(), pipelines.issued().last());
    assert!(!app_outputs(&mut h, "exchange refused", &literal, &no_token, "ci").await);

    config_outputs(&mut h, "system token from the environment", &from_env, &env);
    config_outputs(&mut h, "literal system token", &literal, &no_token);
    assert!(h.forbid_all("oidcToken (assertion)", pipelines.issued()) >= 2);
    assert!(h.forbid_all("access token", entra.issued_tokens()) >= 1);
    h.expect_logged(&["token acquired", "profile=ci"]);
    h.expect_logged(&["token acquisition failed", "profile=ci"]);
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// managed_identity: IMDS and App Service.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_imds_accepted_and_refused() {
    let mut h = Hygiene::new("managed_identity (IMDS)");
    let imds = FakeMsi::imds().await;
    let off = FakeMsi::imds().await;
    off.set_system_assigned(false);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(msi::system_assigned());
    let no_env = MapEnv::default();
    let body =
        |fake: &FakeMsi| format!("kind = \"managed_identity\"\nendpoint = \"{}\"", fake.url());

    let happy = proxy_toml(None, &up, "imds", &body(&imds), "");
    let p = Patless::start(&happy).await;
    request(&p, 200).await;
    admin_outputs(&mut h, &p, "after a success").await;
    p.stop().await;
    assert_eq!(up.accepted(), 1);
    assert!(imds.issued().contains(&upstream_token(&up)));
    assert!(app_outputs(&mut h, "accepted", &happy, &no_env, "imds").await);

    let refused = proxy_toml(None, &up, "imds", &body(&off), "");
    let p = Patless::start(&refused).await;
    let b = request(&p, 503).await;
    assert!(b.contains("no system-assigned identity"), "{b}");
    h.output("503 body (no identity)", b);
    admin_outputs(&mut h, &p, "after a refusal").await;
    p.stop().await;
    assert!(!off.requests().is_empty());
    assert!(!app_outputs(&mut h, "refused", &refused, &no_env, "imds").await);

    config_outputs(&mut h, "IMDS", &happy, &no_env);
    assert!(h.forbid_all("IMDS access token", imds.issued()) >= 2);
    h.expect_logged(&["token acquired", "profile=imds"]);
    h.expect_logged(&["token acquisition failed", "profile=imds"]);
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_app_service_accepted_and_refused() {
    let mut h = Hygiene::new("managed_identity (App Service)");
    h.forbid("IDENTITY_HEADER", IDENTITY_HEADER);
    h.forbid("stale IDENTITY_HEADER", WRONG_IDENTITY_HEADER);
    let app = FakeMsi::app_service(IDENTITY_HEADER).await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(msi::system_assigned());
    let toml_text = proxy_toml(None, &up, "appsvc", "kind = \"managed_identity\"", "");
    let env = |header: &str| {
        MapEnv::new([
            ("IDENTITY_ENDPOINT", app.endpoint()),
            ("IDENTITY_HEADER", header.to_string()),
        ])
    };
    let sent_header = || {
        app.requests()
            .last()
            .and_then(|r| r.header("x-identity-header").map(str::to_string))
    };

    let good = env(IDENTITY_HEADER);
    let p = Patless::start_with_env(&toml_text, good.clone()).await;
    request(&p, 200).await;
    admin_outputs(&mut h, &p, "after a success").await;
    p.stop().await;
    assert_eq!(up.accepted(), 1);
    assert!(app.issued().contains(&upstream_token(&up)));
    assert_eq!(sent_header().as_deref(), Some(IDENTITY_HEADER));
    assert!(app_outputs(&mut h, "accepted", &toml_text, &good, "appsvc").await);

    // A stale header: the fake's 401 echoes it back, patless must cut it out.
    let stale = env(WRONG_IDENTITY_HEADER);
    let p = Patless::start_with_env(&toml_text, stale.clone()).await;
    let b = request(&p, 503).await;
    assert!(b.contains("X-IDENTITY-HEADER"), "{b}");
    h.output("503 body (header refused)", b);
    admin_outputs(&mut h, &p, "after a refusal").await;
    p.stop().await;
    assert_eq!(sent_header().as_deref(), Some(WRONG_IDENTITY_HEADER));
    assert!(!app_outputs(&mut h, "refused", &toml_text, &stale, "appsvc").await);

    config_outputs(&mut h, "App Service", &toml_text, &good);
    assert!(h.forbid_all("App Service access token", app.issued()) >= 2);
    h.expect_logged(&["token acquired", "profile=appsvc"]);
    h.expect_logged(&["token acquisition failed", "profile=appsvc"]);
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// azure_cli and azure_developer_cli.
// ---------------------------------------------------------------------------------------------

/// Happy path with `Mode::Success`, then a token printed in a form patless refuses, then the
/// CLI's own failure.
async fn cli_kind(
    kind: &str,
    profile: &str,
    fake: FakeCli,
    refused_answer: String,
    failure: CliMode,
    h: &mut Hygiene,
) {
    h.forbid("token the CLI prints", fake.token_for(ADO_AUDIENCE));
    h.forbid("token the CLI prints", fake.token_for(DEFENDER_AUDIENCE));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(fake.identity());
    let env = fake.env();
    let toml_text = proxy_toml(None, &up, profile, &format!("kind = \"{kind}\""), "");

    let p = Patless::start_with_env(&toml_text, env.clone()).await;
    request(&p, 200).await;
    admin_outputs(h, &p, "after a success").await;
    p.stop().await;
    assert_eq!(up.accepted(), 1);
    assert_eq!(upstream_token(&up), fake.token_for(ADO_AUDIENCE));
    assert!(app_outputs(h, "accepted", &toml_text, &env, profile).await);

    for (what, mode) in [
        ("a token patless refuses", CliMode::Stdout(refused_answer)),
        ("the CLI fails", failure),
    ] {
        fake.set_mode(mode);
        let calls = fake.calls().len();
        let p = Patless::start_with_env(&toml_text, env.clone()).await;
        h.output(&format!("503 body ({what})"), request(&p, 503).await);
        admin_outputs(h, &p, what).await;
        p.stop().await;
        assert!(fake.calls().len() > calls, "the CLI ran");
        assert!(!app_outputs(h, what, &toml_text, &env, profile).await);
    }
    config_outputs(h, kind, &toml_text, &env);
    h.expect_logged(&["token acquired", &format!("profile={profile}")]);
    h.expect_logged(&["token acquisition failed", &format!("profile={profile}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_cli_accepted_and_refused() {
    let mut h = Hygiene::new("azure_cli");
    let printed = mint_token(ADO_AUDIENCE, 3600);
    h.forbid("token in an answer patless refuses", &printed);
    let refused = json!({
        "accessToken": printed,
        "expires_on": now_secs() + 3600,
        "tokenType": "pop",
    })
    .to_string();
    cli_kind(
        "azure_cli",
        "az",
        FakeCli::az(CliMode::Success),
        refused,
        CliMode::Aadsts700082,
        &mut h,
    )
    .await;
    h.expect_logged(&["DEBUG", "asking the Azure CLI for a token"]);
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_developer_cli_accepted_and_refused() {
    let mut h = Hygiene::new("azure_developer_cli");
    let printed = mint_token(ADO_AUDIENCE, 3600);
    h.forbid("token in an answer patless refuses", &printed);
    let refused = json!({"token": printed, "expiresOn": "not a time"}).to_string();
    cli_kind(
        "azure_developer_cli",
        "azd",
        FakeCli::azd(CliMode::Success),
        refused,
        CliMode::NotLoggedIn,
        &mut h,
    )
    .await;
    h.expect_logged(&["DEBUG", "asking the Azure Developer CLI for a token"]);
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// device_code and interactive_browser: the login, then serve from the stored refresh token.
// ---------------------------------------------------------------------------------------------

/// Serves `/ado` from the stored login (happy path), then once `end_sessions` ran, the 503 that
/// says to log in again (failure path) with `aadsts` in it.
async fn serve_from_store(
    h: &mut Hygiene,
    entra: &FakeEntra,
    up: &FakeUpstream,
    toml_text: &str,
    profile: &str,
    end_sessions: impl FnOnce(),
    aadsts: &str,
) {
    let stored = |entra: &FakeEntra| {
        let grants = entra.grant_requests("refresh_token");
        grants
            .last()
            .map(|g| g.form["refresh_token"].clone())
            .expect("a refresh token was redeemed")
    };
    let no_env = MapEnv::default();
    let p = Patless::start(toml_text).await;
    request(&p, 200).await;
    admin_outputs(h, &p, "serving from the stored login").await;
    p.stop().await;
    assert_eq!(up.accepted(), 1);
    let redeemed = stored(entra);
    assert!(
        entra.issued_refresh_tokens().contains(&redeemed),
        "serve redeemed an issued refresh token"
    );
    assert!(app_outputs(h, "stored login", toml_text, &no_env, profile).await);

    end_sessions();
    let p = Patless::start(toml_text).await;
    let b = request(&p, 503).await;
    assert!(b.contains(aadsts), "{b}");
    assert!(
        b.contains(&format!("patless login --profile {profile}")),
        "{b}"
    );
    h.output("503 body (session ended)", b);
    admin_outputs(h, &p, "after the session ended").await;
    p.stop().await;
    assert!(
        entra.issued_refresh_tokens().contains(&stored(entra)),
        "the refused refresh token was sent"
    );
    assert!(!app_outputs(h, "session ended", toml_text, &no_env, profile).await);
    config_outputs(h, profile, toml_text, &no_env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_login_serve_and_revocation() {
    let mut h = Hygiene::new("device_code");
    let entra = FakeEntra::start().await;
    entra.set_device_code_timing(1, 900);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(Identity::user(PUBLIC_CLIENT_ID));
    let dir = TempDir::new().expect("tempdir");
    let state = dir.path().join("state");
    let toml_text = proxy_toml(
        Some(&entra),
        &up,
        "team",
        &format!(
            "kind = \"device_code\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{PUBLIC_CLIENT_ID}\""
        ),
        &format!("state_dir = \"{}\"", state.display()),
    );
    let config = load_config(&toml_text);
    let env: Env = Arc::new(MapEnv::default());

    // A declined sign-in, then a good one.
    entra.push_device_code_step(DeviceStep::Declined);
    let mut out = Vec::new();
    let err = login(&config, "team", env.clone(), &mut out)
        .await
        .expect_err("declined");
    h.output("login error (declined)", err.to_string());
    h.output("Debug of the login error (declined)", format!("{err:?}"));
    h.output(
        "login output (declined)",
        String::from_utf8(out).expect("utf-8"),
    );
    let mut out = Vec::new();
    let summary = login(&config, "team", env.clone(), &mut out)
        .await
        .expect("login");
    let out = String::from_utf8(out).expect("utf-8");
    assert!(out.contains("enter the code"), "{out}");
    h.output("login output", out);
    h.output("login summary", summary);
    let login_rt = TokenStore::new(state.clone())
        .load("team")
        .expect("store readable")
        .expect("stored")
        .refresh_token
        .expose()
        .to_string();
    assert_eq!(Some(&login_rt), entra.issued_refresh_tokens().last());
    assert_eq!(
        h.forbid_all(
            "device code",
            entra
                .grant_requests(DEVICE_GRANT)
                .iter()
                .map(|g| g.form["device_code"].clone())
        ),
        2
    );

    serve_from_store(
        &mut h,
        &entra,
        &up,
        &toml_text,
        "team",
        || entra.revoke_refresh_tokens(),
        "AADSTS70008",
    )
    .await;
    assert_eq!(
        entra.grant_requests("refresh_token")[0].form["refresh_token"],
        login_rt,
        "serve started from the login's refresh token"
    );
    assert!(h.forbid_all("refresh token", entra.issued_refresh_tokens()) >= 2);
    assert!(h.forbid_all("access token", entra.issued_tokens()) >= 2);
    h.expect_logged(&["token acquired", "profile=team"]);
    h.expect_logged(&["token acquisition failed", "profile=team", "AADSTS70008"]);
    h.finish();
}

/// The authorize URL printed in `out`.
fn printed_url(out: &str) -> Option<String> {
    out.lines()
        .map(str::trim)
        .find(|l| l.contains("/oauth2/v2.0/authorize?"))
        .map(str::to_string)
}

/// `patless login` for the browser profile `web`, with the test as the person: it reads the
/// printed URL, lets the fake Entra redirect, and follows the redirect to the loopback listener.
/// Returns the result, what login printed, the authorization code and the page the browser got.
async fn browser_login(
    config: &Config,
    dir: &Path,
) -> (Result<String, LoginError>, String, String, String) {
    let empty = dir.join("empty-bin");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let env: Env = Arc::new(MapEnv::new([("PATH", empty.display().to_string())]));
    let out = SharedBuf::default();
    let mut writer = out.clone();
    let opts = LoginOptions {
        browser_timeout: Duration::from_secs(10),
        ..LoginOptions::default()
    };
    let flow = login_with(config, "web", env, &mut writer, &opts);
    let person = async {
        let started = Instant::now();
        let url = loop {
            if let Some(u) = printed_url(&out.text()) {
                break u;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no URL printed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let browser = client();
        let r = browser.get(&url).send().await.expect("authorize page");
        assert_eq!(r.status(), 302);
        let location = r.headers()["location"].to_str().expect("ascii").to_string();
        let code = url::Url::parse(&location)
            .expect("redirect URL")
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .expect("a code");
        let page = browser
            .get(&location)
            .send()
            .await
            .expect("the loopback listener answers")
            .text()
            .await
            .unwrap_or_default();
        (code, page)
    };
    let (result, (code, page)) = tokio::join!(flow, person);
    (result, out.text(), code, page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_browser_login_serve_and_expiry() {
    let mut h = Hygiene::new("interactive_browser");
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(Identity::user(PUBLIC_CLIENT_ID));
    let dir = TempDir::new().expect("tempdir");
    let state = dir.path().join("state");
    let toml_text = proxy_toml(
        Some(&entra),
        &up,
        "web",
        &format!(
            "kind = \"interactive_browser\"\ntenant_id = \"{TENANT}\"\n\
             client_id = \"{PUBLIC_CLIENT_ID}\""
        ),
        &format!("state_dir = \"{}\"", state.display()),
    );
    let config = load_config(&toml_text);

    // A code bound to another PKCE challenge (Entra refuses it), then a good sign-in.
    entra.push_authorize_step(AuthorizeStep::SwapChallenge);
    let (result, out, refused_code, page) = browser_login(&config, dir.path()).await;
    let err = result.expect_err("PKCE mismatch");
    assert!(err.to_string().contains("AADSTS50148"), "{err}");
    h.forbid("refused authorization code", &refused_code);
    h.output("login error (code refused)", err.to_string());
    h.output(
        "Debug of the login error (code refused)",
        format!("{err:?}"),
    );
    h.output("login output (code refused)", out);
    h.output("browser page (code refused)", page);
    let (result, out, code, page) = browser_login(&config, dir.path()).await;
    h.forbid("authorization code", &code);
    h.output("login summary", result.expect("login"));
    h.output("login output", out);
    assert!(page.contains("Signed in"), "{page}");
    h.output("browser page", page);
    let redeemed = entra.grant_requests("authorization_code");
    assert_eq!(redeemed.len(), 2);
    assert_eq!(
        redeemed[0].form["code"], refused_code,
        "the codes were sent"
    );
    assert_eq!(redeemed[1].form["code"], code);
    h.forbid_all(
        "PKCE code verifier",
        redeemed.iter().map(|g| g.form["code_verifier"].clone()),
    );
    let login_rt = TokenStore::new(state.clone())
        .load("web")
        .expect("store readable")
        .expect("stored")
        .refresh_token
        .expose()
        .to_string();

    serve_from_store(
        &mut h,
        &entra,
        &up,
        &toml_text,
        "web",
        || entra.expire_refresh_tokens(),
        "AADSTS700082",
    )
    .await;
    assert_eq!(
        entra.grant_requests("refresh_token")[0].form["refresh_token"],
        login_rt,
        "serve started from the login's refresh token"
    );
    assert!(h.forbid_all("refresh token", entra.issued_refresh_tokens()) >= 2);
    assert!(h.forbid_all("access token", entra.issued_tokens()) >= 2);
    h.expect_logged(&["token acquired", "profile=web"]);
    h.expect_logged(&["token acquisition failed", "profile=web", "AADSTS700082"]);
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// auto: the environment's service principal.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_environment_service_principal_accepted_and_refused() {
    let mut h = Hygiene::new("auto");
    h.forbid("AZURE_CLIENT_SECRET", CLIENT_SECRET);
    h.forbid("wrong AZURE_CLIENT_SECRET", WRONG_AUTO_SECRET);
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let toml_text = proxy_toml(Some(&entra), &up, "auto", "kind = \"auto\"", "");
    let env = |secret: &str| {
        MapEnv::new([
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_SECRET", secret),
        ])
    };

    let good = env(CLIENT_SECRET);
    let p = Patless::start_with_env(&toml_text, good.clone()).await;
    request(&p, 200).await;
    admin_outputs(&mut h, &p, "after a success").await;
    p.stop().await;
    assert_eq!(up.accepted(), 1);
    assert_eq!(
        entra.last_form("client_secret").as_deref(),
        Some(CLIENT_SECRET)
    );
    assert!(app_outputs(&mut h, "accepted", &toml_text, &good, "auto").await);

    let bad = env(WRONG_AUTO_SECRET);
    let p = Patless::start_with_env(&toml_text, bad.clone()).await;
    let b = request(&p, 503).await;
    assert!(b.contains("AADSTS7000215"), "{b}");
    h.output("503 body (secret refused)", b);
    admin_outputs(&mut h, &p, "after a refusal").await;
    p.stop().await;
    assert_eq!(
        entra.last_form("client_secret").as_deref(),
        Some(WRONG_AUTO_SECRET)
    );
    assert!(!app_outputs(&mut h, "refused", &toml_text, &bad, "auto").await);

    config_outputs(&mut h, "auto", &toml_text, &good);
    assert!(h.forbid_all("access token", entra.issued_tokens()) >= 2);
    h.expect_logged(&["auto profile: credential found", "profile=\"auto\""]);
    h.expect_logged(&["token acquired", "profile=auto"]);
    h.expect_logged(&["token acquisition failed", "profile=auto", "AADSTS7000215"]);
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// The inbound token.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_token_wrong_and_right() {
    let mut h = Hygiene::new("inbound token");
    h.forbid("inbound token", INBOUND);
    h.forbid("a wrong inbound token", WRONG_INBOUND);
    h.forbid("client secret", CLIENT_SECRET);
    h.forbid("stale PAT the client sends", PAT);
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let body = format!(
        "kind = \"client_secret\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret = \"{CLIENT_SECRET}\""
    );
    let from_env = proxy_toml(
        Some(&entra),
        &up,
        "gate",
        &body,
        "inbound_token = { env = \"PATLESS_TEST_INBOUND\" }",
    );
    let literal = proxy_toml(
        Some(&entra),
        &up,
        "gate",
        &body,
        &format!("inbound_token = \"{INBOUND}\""),
    );
    let env = MapEnv::new([("PATLESS_TEST_INBOUND", INBOUND)]);
    // The key set through a PATLESS_… override (a literal from the environment).
    let override_env = MapEnv::new([("PATLESS_SERVER__INBOUND_TOKEN", INBOUND)]);
    let plain = proxy_toml(Some(&entra), &up, "gate", &body, "");

    for (what, toml_text, env) in [
        ("from { env }", &from_env, &env),
        ("literal", &literal, &MapEnv::default()),
        ("from PATLESS_SERVER__INBOUND_TOKEN", &plain, &override_env),
    ] {
        let p = Patless::start_with_env(toml_text, env.clone()).await;
        let url = p.url("/ado/org/_apis/projects");
        let refusals = [
            ("no token", client().get(&url)),
            (
                "a wrong X-Patless-Token",
                client().get(&url).header("x-patless-token", WRONG_INBOUND),
            ),
            (
                "a wrong Proxy-Authorization",
                client()
                    .get(&url)
                    .header("proxy-authorization", format!("Bearer {WRONG_INBOUND}")),
            ),
            (
                "the token as Authorization",
                client().get(&url).bearer_auth(INBOUND),
            ),
        ];
        for (how, req) in refusals {
            let (status, b) = send(req).await;
            assert_eq!(status, 401, "{how}: {b}");
            assert!(b.contains("inbound_auth_required"), "{b}");
            h.output(&format!("401 body ({what}, {how})"), b);
        }
        let (status, _echo) = send(
            client()
                .get(&url)
                .header("proxy-authorization", format!("Bearer {INBOUND}"))
                .basic_auth("", Some(PAT)),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _echo) = send(client().get(&url).header("x-patless-token", INBOUND)).await;
        assert_eq!(status, 200);
        admin_outputs(&mut h, &p, what).await;
        p.stop().await;
        config_outputs(&mut h, what, toml_text, env);
    }
    // Only the right token got through, and it was not forwarded.
    assert_eq!(up.accepted(), 6);
    assert_eq!(up.rejected(), 0);
    for rec in up.requests() {
        for v in rec.headers.values() {
            let v = String::from_utf8_lossy(v.as_bytes());
            assert!(!v.contains(INBOUND) && !v.contains(PAT), "forwarded: {v}");
        }
    }
    assert!(h.forbid_all("access token", entra.issued_tokens()) >= 3);
    h.expect_logged(&["refused", "inbound_auth_required"]);
    h.expect_logged(&["token acquired", "profile=gate"]);
    h.finish();
}

/// The proxy serves requests on worker threads of its own, as `serve` does; what it logs there
/// reaches the capture every check above reads (the subscriber is global, not the test thread's),
/// so the checks cover the request path as production runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_proxy_logs_on_its_worker_threads_is_checked_too() {
    const ROUTE: &str = "/hygiene-on-workers";
    let mut h = Hygiene::new("proxy on worker threads");
    h.forbid("inbound token", INBOUND);
    h.forbid("a wrong inbound token", WRONG_INBOUND);
    h.forbid("client secret", CLIENT_SECRET);
    h.forbid("stale PAT the client sends", PAT);
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let toml_text = support::patless::config(
        &entra,
        &[(ROUTE, &up.url(), ADO)],
        &format!("inbound_token = \"{INBOUND}\""),
        "",
    );
    let p = Patless::start(&toml_text).await;
    let url = p.url(&format!("{ROUTE}/org/_apis/projects"));
    let (status, b) = send(client().get(&url).header("x-patless-token", WRONG_INBOUND)).await;
    assert_eq!(status, 401, "{b}");
    h.output("401 body", b);
    let (status, _echo) = send(
        client()
            .get(&url)
            .header("x-patless-token", INBOUND)
            .basic_auth("", Some(PAT)),
    )
    .await;
    assert_eq!(status, 200);
    admin_outputs(&mut h, &p, "workers").await;
    p.stop().await;
    assert_eq!(up.accepted(), 1);
    assert!(h.forbid_all("access token", entra.issued_tokens()) >= 1);
    // The answer was logged on a worker thread (`patless-proxy-N`), not on the test's.
    h.expect_logged(&["patless-proxy-", "answered", ROUTE]);
    h.expect_logged(&["patless-proxy-", "refused", "inbound_auth_required"]);
    h.finish();
}

// ---------------------------------------------------------------------------------------------
// `patless config`, the real binary, with every kind's secret keys set.
// ---------------------------------------------------------------------------------------------

/// A secret for every secret-bearing key and variable of the `patless config` tests.
const EVERY_KIND_SECRETS: [(&str, &str); 15] = [
    ("literal client_secret", "literal-client-secret-VALUE-1a2b"),
    (
        "web app's literal client_secret",
        "web-app-client-secret-VALUE-6d7e",
    ),
    (
        "web app's literal certificate_password",
        "web-app-cert-password-VALUE-8f9a",
    ),
    (
        "client_secret from PATLESS_…",
        "override-client-secret-VALUE-3c4d",
    ),
    ("client_secret from { env }", "env-client-secret-VALUE-5e6f"),
    (
        "client_secret from { file }",
        "file-client-secret-VALUE-7a8b",
    ),
    (
        "literal certificate_password",
        "literal-cert-password-VALUE-9c0d",
    ),
    (
        "literal system_access_token",
        "literal-system-token-VALUE-1e2f",
    ),
    ("literal inbound_token", "literal-inbound-token-VALUE-3a4b"),
    (
        "inbound_token from PATLESS_…",
        "override-inbound-token-VALUE-5c6d",
    ),
    ("AZURE_CLIENT_SECRET", "ambient-azure-secret-VALUE-7e8f"),
    (
        "AZURE_CLIENT_CERTIFICATE_PASSWORD",
        "ambient-cert-pass-VALUE-9a0b",
    ),
    ("IDENTITY_HEADER", "ambient-identity-header-VALUE-1c2d"),
    ("SYSTEM_ACCESSTOKEN", "ambient-system-token-VALUE-3e4f"),
    ("egress proxy password", "egress-proxy-password-VALUE-5a6b"),
];

fn every_kind_secret(what: &str) -> &'static str {
    EVERY_KIND_SECRETS
        .iter()
        .find(|(w, _)| *w == what)
        .map(|(_, v)| *v)
        .expect("a known secret")
}

/// A config with a profile of every kind and every secret key set (literal, `{ env }`,
/// `{ file }`), written in `dir` (the file secret beside it). Returns (text, secret file).
fn every_kind_config(dir: &Path) -> (String, PathBuf) {
    let s = every_kind_secret;
    let secret_file = write_file(
        dir,
        "client-secret",
        format!("{}\n", s("client_secret from { file }")),
    );
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
host_routes = false
inbound_token = "{inbound}"
state_dir = "{state}"
egress_proxy = "http://patless:{proxy_password}@127.0.0.1:9"

[entra]
authority_host = "http://127.0.0.1:9"
tenant_id = "{TENANT}"

[profiles.bot]
kind = "client_secret"
client_id = "{CLIENT_ID}"
client_secret = "{literal}"

[profiles.bot2]
kind = "client_secret"
client_id = "{CLIENT_ID}"
client_secret = {{ env = "BOT_SECRET" }}

[profiles.bot3]
kind = "client_secret"
client_id = "{CLIENT_ID}"
client_secret = {{ file = "{file}" }}

[profiles.cert]
kind = "client_certificate"
client_id = "{CLIENT_ID}"
certificate = "/nonexistent/client.pfx"
certificate_password = "{cert_password}"

[profiles.ci]
kind = "azure_pipelines"
client_id = "{CLIENT_ID}"
service_connection_id = "{SERVICE_CONNECTION_ID}"
system_access_token = "{system_token}"

[profiles.wi]
kind = "workload_identity"
client_id = "{CLIENT_ID}"
token_file = "/var/run/secrets/azure/tokens/azure-identity-token"

[profiles.mi]
kind = "managed_identity"

[profiles.az]
kind = "azure_cli"

[profiles.azd]
kind = "azure_developer_cli"

[profiles.team]
kind = "device_code"
client_id = "{PUBLIC_CLIENT_ID}"

[profiles.web]
kind = "interactive_browser"
client_id = "{PUBLIC_CLIENT_ID}"

[profiles.webapp]
kind = "interactive_browser"
client_id = "{CLIENT_ID}"
client_secret = "{web_secret}"
redirect_uri = "https://localhost/myapp"

[profiles.webcert]
kind = "interactive_browser"
client_id = "{CLIENT_ID}"
certificate = "/nonexistent/web.pfx"
certificate_password = "{web_cert_password}"
redirect_uri = "https://localhost/myapp"

[profiles.auto]
kind = "auto"

[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com"
profile = "bot"
"#,
        inbound = s("literal inbound_token"),
        state = dir.join("state").display(),
        literal = s("literal client_secret"),
        file = secret_file.display(),
        cert_password = s("literal certificate_password"),
        web_secret = s("web app's literal client_secret"),
        web_cert_password = s("web app's literal certificate_password"),
        system_token = s("literal system_access_token"),
        proxy_password = s("egress proxy password"),
    );
    (text, secret_file)
}

/// The environment of the `patless config` tests: `PATLESS_…` overrides of secret keys, the
/// variable a `{ env }` secret names, and the ambient secrets the kinds read.
fn every_kind_env() -> Vec<(&'static str, &'static str)> {
    let s = every_kind_secret;
    vec![
        ("BOT_SECRET", s("client_secret from { env }")),
        (
            "PATLESS_PROFILES__BOT__CLIENT_SECRET",
            s("client_secret from PATLESS_…"),
        ),
        (
            "PATLESS_SERVER__INBOUND_TOKEN",
            s("inbound_token from PATLESS_…"),
        ),
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_SECRET", s("AZURE_CLIENT_SECRET")),
        (
            "AZURE_CLIENT_CERTIFICATE_PASSWORD",
            s("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
        ),
        ("IDENTITY_ENDPOINT", "http://127.0.0.1:9/msi/token"),
        ("IDENTITY_HEADER", s("IDENTITY_HEADER")),
        ("SYSTEM_ACCESSTOKEN", s("SYSTEM_ACCESSTOKEN")),
    ]
}

/// The real binary's `patless config`, in a scrubbed environment with TRACE logging.
#[test]
fn patless_config_redacts_every_kind_of_secret() {
    let mut h = Hygiene::new("patless config");
    for (what, value) in EVERY_KIND_SECRETS {
        h.forbid(what, value);
    }
    let sb = Sandbox::new();
    let (toml_text, secret_file) = every_kind_config(sb.path());
    let path = sb.write("patless.toml", &toml_text);
    // Readable by others: patless warns about the inline secrets (by key, never by value).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut env = every_kind_env();
    env.push(("PATLESS_LOG", "trace"));
    let mut cmd = sb.command(
        &["config", "--config", path.to_str().expect("UTF-8 path")],
        &env,
    );
    // No PATH: `patless config` runs no program.
    cmd.env_remove("PATH");
    let started = Instant::now();
    let out = cmd.output().expect("run patless config");
    assert!(started.elapsed() < Duration::from_secs(5));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // It printed the config, with the secrets' places shown.
    for profile in [
        "bot", "bot2", "bot3", "cert", "ci", "wi", "mi", "az", "azd", "team", "web", "webapp",
        "webcert", "auto",
    ] {
        assert!(
            stdout.contains(&format!("[profiles.{profile}]")),
            "{profile}: {stdout}"
        );
    }
    assert!(stdout.contains("<redacted>"), "{stdout}");
    assert!(stdout.contains("BOT_SECRET"), "{stdout}");
    assert!(
        stdout.contains(&secret_file.display().to_string()),
        "{stdout}"
    );
    assert!(stdout.contains("egress_proxy"), "{stdout}");
    assert!(stderr.contains("written inline"), "{stderr}");
    h.output("`patless config` stdout", stdout);
    h.output("`patless config` stderr (PATLESS_LOG=trace)", stderr);

    // The same in process: `print_config`'s function, and the `Debug` of the loaded config.
    let env = MapEnv::new(every_kind_env());
    let loaded = load(&toml_text, &env);
    h.output("Debug of the loaded config", format!("{loaded:?}"));
    h.output(
        "effective config (`patless config`)",
        toml::to_string_pretty(&loaded.config.effective(&loaded.raw)).expect("toml"),
    );
    h.finish();
}

/// `RawConfig::redacted`, documented as "every literal secret replaced by `<redacted>` (for
/// `patless config`)", on the same config.
#[test]
fn raw_config_redacted_hides_every_literal_secret() {
    let mut h = Hygiene::new("RawConfig::redacted");
    for (what, value) in EVERY_KIND_SECRETS {
        h.forbid(what, value);
    }
    let dir = TempDir::new().expect("tempdir");
    let (toml_text, _) = every_kind_config(dir.path());
    let env = MapEnv::new(every_kind_env());
    let loaded = load(&toml_text, &env);
    let redacted = toml::to_string(&loaded.raw.redacted()).expect("toml");
    assert!(redacted.contains("<redacted>"), "{redacted}");
    h.output("redacted raw config", redacted);
    h.finish();
}
