//! `interactive_browser`: `patless login` listens on a loopback port, opens the authorize URL with
//! the `BROWSER` convention (else `xdg-open`, else prints it), takes one redirect, checks its
//! `state`, redeems the code with the PKCE verifier and stores the refresh token. The "browser"
//! here is a shell script running `curl -L`, which follows the fake Entra's 302 to the listener
//! and keeps the page it got — or the test itself, reading the printed URL. (Without curl those
//! tests fail, unless `PATLESS_SKIP_CLIENTS` names it: `support::clients`.)

use std::collections::HashMap;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use patless::config::Config;
use patless::env::{Env, MapEnv};
use patless::login::{login_with, LoginError, LoginOptions};
use patless::store::TokenStore;
use tempfile::TempDir;

use crate::support;
use crate::support::entra::{
    pkce_challenge, AuthorizeStep, FakeEntra, ADO_SCOPE, PUBLIC_CLIENT_ID, TENANT, USER_UPN,
};
use crate::support::patless::load_config;
use crate::support::SharedBuf;

struct Setup {
    entra: FakeEntra,
    dir: TempDir,
    state: PathBuf,
    config: Config,
}

async fn setup(redirect_port: Option<u16>) -> Setup {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let port = redirect_port
        .map(|p| format!("redirect_port = {p}\n"))
        .unwrap_or_default();
    let text = format!(
        r#"
[server]
host_routes = false
state_dir = "{state}"

[entra]
authority_host = "{authority}"

[profiles.web]
kind = "interactive_browser"
tenant_id = "{TENANT}"
client_id = "{PUBLIC_CLIENT_ID}"
{port}
[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com/contoso"
profile = "web"
scope = "{ADO_SCOPE}"
"#,
        state = state.display(),
        authority = entra.authority()
    );
    let config = load_config(&text);
    Setup {
        entra,
        dir,
        state,
        config,
    }
}

/// A browser: `curl -L` the URL (its first argument), keeping the final page in `page` (renamed
/// into place once complete; read it with [`page_of`]). `None` when curl is missing and
/// `PATLESS_SKIP_CLIENTS` names it (the test returns).
fn browser_script(dir: &Path, name: &str, page: &Path) -> Option<PathBuf> {
    if !support::clients::require_tool("curl", "apt-get install curl") {
        return None;
    }
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\ncurl -s -L --max-time 20 -o '{p}.part' \"$1\"\nmv '{p}.part' '{p}'\n",
            p = page.display()
        ),
    )
    .expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Some(path)
}

/// An environment with the real `PATH` (for `sh` and `curl`) and these extra variables.
fn env_with(pairs: &[(&str, String)]) -> Env {
    let mut vars: Vec<(String, String)> = vec![(
        "PATH".into(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
    )];
    vars.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Arc::new(MapEnv::new(vars))
}

/// The page the browser script saved: `login` returns once the page is sent, the browser may
/// still be writing it.
async fn page_of(page: &Path) -> String {
    for _ in 0..200 {
        if let Ok(html) = std::fs::read_to_string(page) {
            return html;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the browser saved no page at {}", page.display())
}

fn options(secs: u64) -> LoginOptions {
    LoginOptions {
        browser_timeout: Duration::from_secs(secs),
        ..LoginOptions::default()
    }
}

/// The authorize URL printed in `out`.
fn printed_url(out: &str) -> Option<url::Url> {
    out.lines()
        .map(str::trim)
        .find(|l| l.contains("/oauth2/v2.0/authorize?"))
        .map(|l| l.parse().expect("a URL"))
}

fn query(u: &url::Url) -> HashMap<String, String> {
    u.query_pairs().into_owned().collect()
}

fn redirect_port(u: &url::Url) -> u16 {
    let redirect: url::Url = query(u)["redirect_uri"].parse().expect("redirect_uri");
    assert_eq!(redirect.host_str(), Some("localhost"));
    redirect.port().expect("a port")
}

fn nothing_stored(s: &Setup) {
    assert!(TokenStore::new(s.state.clone())
        .load("web")
        .expect("store readable")
        .is_none());
}

async fn login_with_browser(s: &Setup, env: Env) -> (Result<String, LoginError>, String) {
    let mut out = SharedBuf::default();
    let result = login_with(&s.config, "web", env, &mut out, &options(20)).await;
    (result, out.text())
}

#[tokio::test]
async fn the_browser_signs_in_and_the_refresh_token_is_stored() {
    let s = setup(None).await;
    let page = s.dir.path().join("page.html");
    let Some(script) = browser_script(s.dir.path(), "browser.sh", &page) else {
        return;
    };
    let (result, out) =
        login_with_browser(&s, env_with(&[("BROWSER", script.display().to_string())])).await;
    let summary = result.expect("login succeeds");
    assert!(summary.contains(USER_UPN), "{summary}");

    // The URL is printed even when a browser opens it.
    let url = printed_url(&out).expect("URL printed");
    assert!(out.contains("Opened the sign-in page with"), "{out}");
    assert!(url.as_str().starts_with(&s.entra.authorize_url()));

    // What the authorize page got.
    let requests = s.entra.authorize_requests();
    assert_eq!(requests.len(), 1);
    let q = &requests[0].query;
    assert_eq!(q["client_id"], PUBLIC_CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["response_mode"], "query");
    assert_eq!(q["prompt"], "select_account");
    assert_eq!(
        q["scope"],
        format!("{ADO_SCOPE} offline_access openid profile")
    );
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["state"].len() >= 22, "random state");
    let port = redirect_port(&url);
    assert_eq!(q["redirect_uri"], format!("http://localhost:{port}"));

    // The code was redeemed with the verifier of that challenge, at the same redirect URI, and
    // no secret.
    let grants = s.entra.grant_requests("authorization_code");
    assert_eq!(grants.len(), 1);
    let f = &grants[0].form;
    assert_eq!(pkce_challenge(&f["code_verifier"]), q["code_challenge"]);
    assert!((43..=128).contains(&f["code_verifier"].len()));
    assert_eq!(f["redirect_uri"], q["redirect_uri"]);
    assert_eq!(f["client_id"], PUBLIC_CLIENT_ID);
    assert!(!f.contains_key("client_secret"));

    // The browser got the success page.
    let html = page_of(&page).await;
    assert!(html.contains("Signed in"), "{html}");
    assert!(html.contains(USER_UPN), "{html}");

    // Stored, 0600.
    let stored = TokenStore::new(s.state.clone())
        .load("web")
        .expect("readable")
        .expect("stored");
    assert_eq!(
        Some(stored.refresh_token.expose().to_string()),
        s.entra.latest_refresh_token()
    );
    assert_eq!(stored.account.as_deref(), Some(USER_UPN));
    let mode = std::fs::metadata(s.state.join("web.json"))
        .expect("file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The listener answered once and is gone.
    let err = TcpStream::connect(("127.0.0.1", port)).expect_err("listener closed");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn browser_is_a_colon_separated_list_with_percent_s() {
    let s = setup(None).await;
    let page = s.dir.path().join("page.html");
    let Some(script) = browser_script(s.dir.path(), "browser.sh", &page) else {
        return;
    };
    // The first command does not exist; the second takes the URL where `%s` is.
    let browser = format!("/nonexistent/firefox:/bin/sh {} %s", script.display());
    let (result, out) = login_with_browser(&s, env_with(&[("BROWSER", browser.clone())])).await;
    result.expect("login succeeds");
    let used = browser.split(':').nth(1).expect("second");
    assert!(out.contains(&format!("with `{used}`")), "{out}");
    assert!(page_of(&page).await.contains("Signed in"));
}

#[tokio::test]
async fn xdg_open_on_path_is_used_without_browser() {
    let s = setup(None).await;
    let bin = s.dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let page = s.dir.path().join("page.html");
    if browser_script(&bin, "xdg-open", &page).is_none() {
        return;
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env: Env = Arc::new(MapEnv::new([("PATH", path)]));
    let (result, out) = login_with_browser(&s, env).await;
    result.expect("login succeeds");
    assert!(out.contains("with `xdg-open`"), "{out}");
    assert!(page_of(&page).await.contains("Signed in"));
}

#[tokio::test]
async fn without_a_browser_the_url_is_printed_for_the_person_to_open() {
    let s = setup(None).await;
    let empty = s.dir.path().join("empty-bin");
    std::fs::create_dir(&empty).expect("mkdir");
    let env: Env = Arc::new(MapEnv::new([("PATH", empty.display().to_string())]));
    let out = SharedBuf::default();
    let mut writer = out.clone();
    let opts = options(20);
    let login = login_with(&s.config, "web", env, &mut writer, &opts);
    let person = async {
        let url = loop {
            if let Some(u) = printed_url(&out.text()) {
                break u;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        support::install_crypto_provider();
        let browser = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        // A stray request first (a favicon): answered 404, and the wait goes on.
        let port = redirect_port(&url);
        let stray = browser
            .get(format!("http://127.0.0.1:{port}/favicon.ico"))
            .send()
            .await
            .expect("listener answers");
        assert_eq!(stray.status(), 404);
        // Then the sign-in: Entra redirects to the listener.
        let page = browser.get(url).send().await.expect("sign-in");
        (page.status(), page.text().await.expect("page"))
    };
    let (result, (status, html)) = tokio::join!(login, person);
    result.expect("login succeeds");
    assert_eq!(status, 200);
    assert!(html.contains("Signed in"), "{html}");
    let text = out.text();
    assert!(text.contains("No browser to open it with"), "{text}");
    assert!(text.contains("open the URL above yourself"), "{text}");
}

#[tokio::test]
async fn a_redirect_with_another_state_is_refused() {
    let s = setup(None).await;
    s.entra.push_authorize_step(AuthorizeStep::WrongState);
    let page = s.dir.path().join("page.html");
    let Some(script) = browser_script(s.dir.path(), "browser.sh", &page) else {
        return;
    };
    let (result, _) =
        login_with_browser(&s, env_with(&[("BROWSER", script.display().to_string())])).await;
    let err = result.expect_err("state mismatch");
    assert!(matches!(err, LoginError::StateMismatch(_)), "{err}");
    assert!(err.to_string().contains("state does not match"), "{err}");
    let html = page_of(&page).await;
    assert!(html.contains("Sign-in failed"), "{html}");
    // The code was not redeemed; nothing stored.
    assert!(s.entra.grant_requests("authorization_code").is_empty());
    nothing_stored(&s);
}

#[tokio::test]
async fn a_declined_consent_is_reported() {
    let s = setup(None).await;
    s.entra.push_authorize_step(AuthorizeStep::Deny);
    let page = s.dir.path().join("page.html");
    let Some(script) = browser_script(s.dir.path(), "browser.sh", &page) else {
        return;
    };
    let (result, _) =
        login_with_browser(&s, env_with(&[("BROWSER", script.display().to_string())])).await;
    let err = result.expect_err("denied").to_string();
    assert!(err.contains("access_denied"), "{err}");
    assert!(err.contains("AADSTS65004"), "{err}");
    assert!(page_of(&page).await.contains("access_denied"));
    nothing_stored(&s);
}

#[tokio::test]
async fn a_code_bound_to_another_challenge_is_refused_by_entra() {
    let s = setup(None).await;
    s.entra.push_authorize_step(AuthorizeStep::SwapChallenge);
    let page = s.dir.path().join("page.html");
    let Some(script) = browser_script(s.dir.path(), "browser.sh", &page) else {
        return;
    };
    let (result, _) =
        login_with_browser(&s, env_with(&[("BROWSER", script.display().to_string())])).await;
    let err = result.expect_err("PKCE mismatch").to_string();
    assert!(err.contains("AADSTS50148"), "{err}");
    assert!(err.contains("code_verifier"), "{err}");
    // The browser is told the truth, not "signed in".
    let html = page_of(&page).await;
    assert!(html.contains("Sign-in failed"), "{html}");
    assert!(!html.contains("Signed in"), "{html}");
    nothing_stored(&s);
}

#[tokio::test]
async fn no_answer_in_time_is_a_timeout() {
    let s = setup(None).await;
    let empty = s.dir.path().join("empty-bin");
    std::fs::create_dir(&empty).expect("mkdir");
    let env: Env = Arc::new(MapEnv::new([("PATH", empty.display().to_string())]));
    let mut out = SharedBuf::default();
    let err = login_with(&s.config, "web", env, &mut out, &options(1))
        .await
        .expect_err("nobody signed in");
    assert!(matches!(err, LoginError::Timeout { secs: 1, .. }), "{err}");
    assert!(err
        .to_string()
        .contains("run `patless login --profile web` again"));
    // The listener is closed after a timeout too.
    let port = redirect_port(&printed_url(&out.text()).expect("URL printed"));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    nothing_stored(&s);
}

#[tokio::test]
async fn the_configured_redirect_port_is_used() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let s = setup(Some(free)).await;
    let page = s.dir.path().join("page.html");
    let Some(script) = browser_script(s.dir.path(), "browser.sh", &page) else {
        return;
    };
    let (result, out) =
        login_with_browser(&s, env_with(&[("BROWSER", script.display().to_string())])).await;
    result.expect("login succeeds");
    assert_eq!(redirect_port(&printed_url(&out).expect("URL")), free);
}

/// The fake enforces PKCE and the redirect URI, so the tests above prove what patless sent.
#[tokio::test]
async fn the_fake_entra_checks_the_verifier_and_the_redirect_uri() {
    let entra = FakeEntra::start().await;
    let http = support::http_client();
    let verifier = "v".repeat(43) + "-right-verifier";
    let redirect = "http://localhost:1234";
    let mut authorize: url::Url = entra.authorize_url().parse().expect("url");
    authorize
        .query_pairs_mut()
        .append_pair("client_id", PUBLIC_CLIENT_ID)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect)
        .append_pair("response_mode", "query")
        .append_pair("scope", &format!("{ADO_SCOPE} offline_access"))
        .append_pair("state", "s1")
        .append_pair("code_challenge", &pkce_challenge(&verifier))
        .append_pair("code_challenge_method", "S256");
    let r = http.get(authorize.clone()).send().await.expect("authorize");
    assert_eq!(r.status(), 302);
    let location: url::Url = r.headers()["location"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("url");
    let q = query(&location);
    assert_eq!(q["state"], "s1");
    let code = q["code"].clone();

    let redeem = |verifier: Option<&str>, redirect: &str| {
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("client_id", PUBLIC_CLIENT_ID.to_string()),
            ("code", code.clone()),
            ("redirect_uri", redirect.to_string()),
        ];
        if let Some(v) = verifier {
            form.push(("code_verifier", v.to_string()));
        }
        let http = http.clone();
        let url = entra.token_url();
        async move {
            let r = http.post(url).form(&form).send().await.expect("token");
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.expect("json");
            (status, body)
        }
    };
    let (status, body) = redeem(None, redirect).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(501491))
    );
    let other = "w".repeat(50);
    let (status, body) = redeem(Some(&other), redirect).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(50148))
    );
    let (status, body) = redeem(Some(&verifier), "http://localhost:9999").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body) = redeem(Some(&verifier), redirect).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refresh_token"].is_string());
    let (status, body) = redeem(Some(&verifier), redirect).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(54005))
    );

    // Plain PKCE and foreign redirect URIs are refused at the authorize page.
    let mut plain = authorize.clone();
    let pairs: Vec<(String, String)> = plain
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == "code_challenge_method" {
                (k, "plain".to_string())
            } else {
                (k, v)
            }
        })
        .collect();
    plain.query_pairs_mut().clear().extend_pairs(pairs);
    let r = http.get(plain).send().await.expect("authorize");
    let location = r.headers()["location"].to_str().expect("ascii").to_string();
    assert!(location.contains("error=invalid_request"), "{location}");
    let mut evil = authorize.clone();
    let pairs: Vec<(String, String)> = evil
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == "redirect_uri" {
                (k, "https://evil.example/".to_string())
            } else {
                (k, v)
            }
        })
        .collect();
    evil.query_pairs_mut().clear().extend_pairs(pairs);
    let r = http.get(evil).send().await.expect("authorize");
    assert_eq!(r.status(), 400, "shown, never redirected");
}
