//! The web app's login through the library (`login_with_input`, the pasted lines injected), and
//! the fake Entra's model of web apps and public clients, which the other tests rely on.

use std::sync::Arc;
use std::time::Duration;

use patless::env::{Env, MapEnv};
use patless::login::{login_with_input, LoginError, LoginOptions, PasteInput};

use super::{authorize, printed_url, query, secret_keys, web_toml, SECRET_ENV};
use crate::support;
use crate::support::entra::{
    pkce_challenge, FakeEntra, ADO_SCOPE, CLIENT_ID, CLIENT_SECRET, PUBLIC_CLIENT_ID,
    WEB_REDIRECT_URI,
};
use crate::support::patless::load_config;
use crate::support::SharedBuf;

/// A web app whose redirect URI is a loopback `http://` address keeps the listener flow, on the
/// URI's path, with the secret in the code exchange.
#[tokio::test]
async fn a_web_app_on_a_loopback_redirect_uri_is_listened_for() {
    let entra = FakeEntra::start().await;
    entra.register_web_redirect_uri("http://localhost/callback");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let keys = format!(
        "client_secret = \"{CLIENT_SECRET}\"\nredirect_uri = \"http://localhost/callback\""
    );
    let config = load_config(&web_toml(&entra, &state, CLIENT_ID, &keys));
    let out = SharedBuf::default();
    let mut writer = out.clone();
    let (_keep, mut input) = PasteInput::channel();
    let options = LoginOptions {
        browser_timeout: Duration::from_secs(20),
        open_browser: false,
    };
    let env: Env = Arc::new(MapEnv::default());
    let login = login_with_input(&config, "web", env, &mut input, &mut writer, &options);
    let person = async {
        let url = loop {
            if let Some(u) = printed_url(&out.text()) {
                break u;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let redirected = authorize(&url).await;
        support::http_client()
            .get(&redirected)
            .send()
            .await
            .expect("the listener answers")
            .text()
            .await
            .expect("page")
    };
    let (result, page) = tokio::join!(login, person);
    result.expect("login succeeds");
    assert!(page.contains("Signed in"), "{page}");
    let f = &entra.grant_requests("authorization_code")[0].form;
    assert_eq!(f["client_secret"], CLIENT_SECRET);
    let redirect: url::Url = f["redirect_uri"].parse().expect("URL");
    assert_eq!(redirect.path(), "/callback");
    assert!(redirect.port().is_some(), "{redirect}");
}

/// Nothing pasted in time is a timeout; the input is the injected one, not the test's stdin.
#[tokio::test]
async fn nothing_pasted_in_time_is_a_timeout() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = load_config(&web_toml(
        &entra,
        &dir.path().join("state"),
        CLIENT_ID,
        &format!("client_secret = \"{CLIENT_SECRET}\"\nredirect_uri = \"{WEB_REDIRECT_URI}\""),
    ));
    let (_keep, mut input) = PasteInput::channel();
    let options = LoginOptions {
        browser_timeout: Duration::from_secs(1),
        open_browser: false,
    };
    let mut out = SharedBuf::default();
    let env: Env = Arc::new(MapEnv::default());
    let err = login_with_input(&config, "web", env, &mut input, &mut out, &options)
        .await
        .expect_err("nothing pasted");
    assert!(matches!(err, LoginError::Timeout { secs: 1, .. }), "{err}");
    assert!(out.text().contains("paste it here"), "{}", out.text());
}

/// A web app's secret that cannot be read is reported before anyone signs in.
#[tokio::test]
async fn an_unreadable_secret_is_reported_before_the_sign_in() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = load_config(&web_toml(
        &entra,
        &dir.path().join("state"),
        CLIENT_ID,
        &secret_keys(),
    ));
    let (_keep, mut input) = PasteInput::channel();
    let mut out = SharedBuf::default();
    let env: Env = Arc::new(MapEnv::default());
    let options = LoginOptions {
        browser_timeout: Duration::from_secs(2),
        open_browser: false,
    };
    let err = login_with_input(&config, "web", env, &mut input, &mut out, &options)
        .await
        .expect_err("no secret");
    assert!(matches!(err, LoginError::ClientCredential(_)), "{err}");
    assert!(err.to_string().contains(SECRET_ENV), "{err}");
    assert!(printed_url(&out.text()).is_none(), "no sign-in started");
    assert!(entra.authorize_requests().is_empty());
}

/// The fake Entra tells a web app from a public client, so the tests above prove what patless
/// sent: the web app's code and refresh grants need its secret (AADSTS7000218 without, 7000215
/// with a wrong one), the public client may send none (AADSTS700025), and the web app's code
/// comes only for a redirect URI registered on its Web platform.
#[tokio::test]
async fn the_fake_entra_tells_web_apps_from_public_clients() {
    let entra = FakeEntra::start().await;
    let http = support::http_client();
    let verifier = "v".repeat(50);
    let mut authorize_url: url::Url = entra.authorize_url().parse().expect("url");
    authorize_url
        .query_pairs_mut()
        .append_pair("client_id", CLIENT_ID)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", WEB_REDIRECT_URI)
        .append_pair("response_mode", "query")
        .append_pair("scope", &format!("{ADO_SCOPE} offline_access"))
        .append_pair("state", "s1")
        .append_pair("code_challenge", &pkce_challenge(&verifier))
        .append_pair("code_challenge_method", "S256");
    let code = query(&authorize(&authorize_url).await.parse().expect("URL"))["code"].clone();
    let post = |form: Vec<(&'static str, String)>| {
        let (http, url) = (http.clone(), entra.token_url());
        async move {
            let r = http.post(url).form(&form).send().await.expect("token");
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.expect("json");
            (
                status,
                body["error"].clone(),
                body["error_codes"][0].as_u64(),
                body,
            )
        }
    };
    let code_form = |secret: Option<&str>| {
        let mut f = vec![
            ("grant_type", "authorization_code".to_string()),
            ("client_id", CLIENT_ID.to_string()),
            ("code", code.clone()),
            ("redirect_uri", WEB_REDIRECT_URI.to_string()),
            ("code_verifier", verifier.clone()),
        ];
        if let Some(s) = secret {
            f.push(("client_secret", s.to_string()));
        }
        f
    };
    let (status, error, aadsts, _) = post(code_form(None)).await;
    assert_eq!(
        (status, error.as_str(), aadsts),
        (401, Some("invalid_client"), Some(7000218))
    );
    let (status, _, aadsts, _) = post(code_form(Some("wrong-secret-value"))).await;
    assert_eq!((status, aadsts), (401, Some(7000215)));
    let (status, _, _, body) = post(code_form(Some(CLIENT_SECRET))).await;
    assert_eq!(status, 200, "{body}");
    let rt = body["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_string();

    let refresh_form = |client_id: &str, secret: Option<&str>| {
        let mut f = vec![
            ("grant_type", "refresh_token".to_string()),
            ("client_id", client_id.to_string()),
            ("refresh_token", rt.clone()),
            ("scope", format!("{ADO_SCOPE} offline_access")),
        ];
        if let Some(s) = secret {
            f.push(("client_secret", s.to_string()));
        }
        f
    };
    let (status, error, aadsts, _) = post(refresh_form(CLIENT_ID, None)).await;
    assert_eq!(
        (status, error.as_str(), aadsts),
        (401, Some("invalid_client"), Some(7000218))
    );
    let (status, error, aadsts, _) =
        post(refresh_form(PUBLIC_CLIENT_ID, Some(CLIENT_SECRET))).await;
    assert_eq!(
        (status, error.as_str(), aadsts),
        (401, Some("invalid_client"), Some(700025))
    );
    let (status, _, _, body) = post(refresh_form(CLIENT_ID, Some(CLIENT_SECRET))).await;
    assert_eq!(status, 200, "{body}");

    // Another redirect URI than the Web platform's is shown an error, never redirected to.
    let pairs: Vec<(String, String)> = authorize_url
        .query_pairs()
        .into_owned()
        .map(|(k, v)| match k.as_str() {
            "redirect_uri" => (k, "https://localhost/other".to_string()),
            _ => (k, v),
        })
        .collect();
    authorize_url.query_pairs_mut().clear().extend_pairs(pairs);
    let r = http.get(authorize_url).send().await.expect("authorize");
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("page").contains("AADSTS50011"));
}
