//! `device_code`: `patless login` asks Entra for a code, prints its message and polls at the
//! interval Entra names (slower on `slow_down`) until the person signs in, declines or the code
//! expires; the refresh token lands in the store (0600 in 0700). `serve` then serves every route
//! of the profile from that one refresh token, keeps the rotated one on disk, picks up a new
//! login made by another process, and answers `503` with "run `patless login`" once the session
//! is revoked. Login tests run on paused time; `serve` tests on real time with short lifetimes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use patless::config::Config;
use patless::env::{Env, MapEnv};
use patless::login::{login, LoginError};
use patless::store::TokenStore;
use serde_json::Value;
use tokio::time::Instant;

use crate::support;
use crate::support::entra::{
    DeviceStep, FakeEntra, ADO_AUDIENCE, ADO_SCOPE, CLIENT_ID, DEFENDER_AUDIENCE, DEFENDER_SCOPE,
    PUBLIC_CLIENT_ID, TENANT, USER_UPN, VERIFICATION_URI,
};
use crate::support::patless::{load_config, route_toml, server_toml, Patless};
use crate::support::upstream::{FakeUpstream, Identity};

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A config with a `device_code` profile `team` (the fake's public client), its store in
/// `state_dir`, and routes `(prefix, upstream, scope)` for it.
fn toml(
    entra: &FakeEntra,
    state_dir: &Path,
    client_id: &str,
    routes: &[(&str, &str, &str)],
) -> String {
    let server = format!(
        "shutdown_grace = \"1s\"\nstate_dir = \"{}\"",
        state_dir.display()
    );
    let mut s = format!(
        r#"{server}
[entra]
authority_host = "{authority}"

[profiles.team]
kind = "device_code"
tenant_id = "{TENANT}"
client_id = "{client_id}"

[profiles.bot]
kind = "client_secret"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret = "not-used"
"#,
        server = server_toml(&server),
        authority = entra.authority()
    );
    for (prefix, upstream, scope) in routes {
        s.push_str(&route_toml(prefix, upstream, "team", scope));
    }
    s
}

fn env() -> Env {
    Arc::new(MapEnv::default())
}

struct Setup {
    entra: FakeEntra,
    _dir: tempfile::TempDir,
    state: PathBuf,
    config: Config,
}

async fn setup(client_id: &str) -> Setup {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let config = load_config(&toml(
        &entra,
        &state,
        client_id,
        &[("/ado", "https://dev.azure.com/contoso", ADO_SCOPE)],
    ));
    Setup {
        entra,
        _dir: dir,
        state,
        config,
    }
}

async fn run_login(s: &Setup) -> (Result<String, LoginError>, String) {
    let mut out = Vec::new();
    let result = login(&s.config, "team", env(), &mut out).await;
    (result, String::from_utf8(out).expect("utf-8 output"))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// Gaps between the device code request and each poll, then between polls.
fn poll_gaps(entra: &FakeEntra) -> Vec<Duration> {
    let mut times = vec![entra.device_code_requests()[0].at];
    times.extend(entra.grant_requests(DEVICE_GRANT).iter().map(|r| r.at));
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

fn assert_about(actual: Duration, secs: u64) {
    let want = Duration::from_secs(secs);
    assert!(
        actual >= want && actual < want + Duration::from_millis(500),
        "{actual:?} is not about {want:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn pending_then_success_prints_the_message_and_stores_the_refresh_token() {
    let s = setup(PUBLIC_CLIENT_ID).await;
    s.entra.push_device_code_step(DeviceStep::Pending);
    s.entra.push_device_code_step(DeviceStep::Pending);

    let (result, out) = run_login(&s).await;
    let summary = result.expect("login succeeds");

    // Entra's message, with its code, went to the person.
    assert!(out.contains(VERIFICATION_URI), "{out}");
    assert!(out.contains("enter the code"), "{out}");

    // One resource plus what a refresh token and an id token need; a public client: no secret.
    let dc = s.entra.device_code_requests();
    assert_eq!(dc.len(), 1);
    assert_eq!(dc[0].form["client_id"], PUBLIC_CLIENT_ID);
    assert_eq!(
        dc[0].form["scope"],
        format!("{ADO_SCOPE} offline_access openid profile")
    );
    let polls = s.entra.grant_requests(DEVICE_GRANT);
    assert_eq!(polls.len(), 3, "two pending answers, then tokens");
    for p in &polls {
        assert_eq!(p.form["client_id"], PUBLIC_CLIENT_ID);
        assert!(p.form["device_code"].starts_with("DAQABfake."));
        assert!(!p.form.contains_key("client_secret"));
    }
    // Every `interval` (5 s) from the code request on.
    for gap in poll_gaps(&s.entra) {
        assert_about(gap, 5);
    }

    // The newest refresh token is stored, 0600 in a 0700 directory, with the account.
    let stored = TokenStore::new(s.state.clone())
        .load("team")
        .expect("store readable")
        .expect("a login is stored");
    assert_eq!(
        Some(stored.refresh_token.expose().to_string()),
        s.entra.latest_refresh_token()
    );
    assert_eq!(stored.account.as_deref(), Some(USER_UPN));
    assert_eq!(stored.client_id, PUBLIC_CLIENT_ID);
    assert_eq!(stored.tenant_id, TENANT);
    let file = s.state.join("team.json");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&s.state), 0o700);

    assert!(summary.contains(USER_UPN), "{summary}");
    assert!(summary.contains(&file.display().to_string()), "{summary}");
    // No token in what the person sees.
    assert!(!out.contains(stored.refresh_token.expose()));
    assert!(!summary.contains(stored.refresh_token.expose()));
}

#[tokio::test(start_paused = true)]
async fn slow_down_adds_five_seconds_to_the_interval() {
    let s = setup(PUBLIC_CLIENT_ID).await;
    s.entra.push_device_code_step(DeviceStep::Pending);
    s.entra.push_device_code_step(DeviceStep::SlowDown);
    s.entra.push_device_code_step(DeviceStep::Pending);

    let (result, _) = run_login(&s).await;
    result.expect("login succeeds");

    let gaps = poll_gaps(&s.entra);
    assert_eq!(gaps.len(), 4, "{gaps:?}");
    assert_about(gaps[0], 5);
    assert_about(gaps[1], 5);
    // After slow_down: 5 + 5 s, and it stays so.
    assert_about(gaps[2], 10);
    assert_about(gaps[3], 10);
}

#[tokio::test(start_paused = true)]
async fn the_interval_entra_names_is_used() {
    let s = setup(PUBLIC_CLIENT_ID).await;
    s.entra.set_device_code_timing(2, 900);
    s.entra.push_device_code_step(DeviceStep::Pending);
    let (result, _) = run_login(&s).await;
    result.expect("login succeeds");
    for gap in poll_gaps(&s.entra) {
        assert_about(gap, 2);
    }
}

async fn assert_fails_and_stores_nothing(step: DeviceStep, expect: &str) {
    let s = setup(PUBLIC_CLIENT_ID).await;
    s.entra.push_device_code_step(DeviceStep::Pending);
    s.entra.push_device_code_step(step);
    let (result, _) = run_login(&s).await;
    let err = result.expect_err("login fails").to_string();
    assert!(err.contains(expect), "{err}");
    assert!(!s.state.join("team.json").exists());
    assert_eq!(
        s.entra.grant_requests(DEVICE_GRANT).len(),
        2,
        "stops at once"
    );
}

#[tokio::test(start_paused = true)]
async fn declined_stops_with_a_clear_message() {
    assert_fails_and_stores_nothing(DeviceStep::Declined, "sign-in was declined").await;
}

#[tokio::test(start_paused = true)]
async fn expired_code_says_to_log_in_again() {
    assert_fails_and_stores_nothing(
        DeviceStep::Expired,
        "the code expired: run `patless login --profile team` again",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn bad_verification_code_stops() {
    assert_fails_and_stores_nothing(DeviceStep::BadCode, "bad_verification_code").await;
}

#[tokio::test(start_paused = true)]
async fn polling_stops_when_the_code_expires() {
    let s = setup(PUBLIC_CLIENT_ID).await;
    s.entra.set_device_code_timing(5, 30);
    s.entra.set_device_code_fallback(DeviceStep::Pending);
    let started = Instant::now();
    let (result, _) = run_login(&s).await;
    let err = result.expect_err("never approved");
    assert!(matches!(err, LoginError::CodeExpired(_)), "{err}");
    assert_about(started.elapsed(), 30);
    assert!(s.entra.grant_requests(DEVICE_GRANT).len() <= 6);
    assert!(!s.state.join("team.json").exists());
}

#[tokio::test(start_paused = true)]
async fn a_confidential_app_gets_the_public_client_hint() {
    let s = setup(CLIENT_ID).await;
    let (result, _) = run_login(&s).await;
    let err = result.expect_err("not a public client").to_string();
    assert!(err.contains("AADSTS7000218"), "{err}");
    assert!(err.contains("Allow public client flows"), "{err}");
    assert!(!s.state.join("team.json").exists());
}

#[tokio::test(start_paused = true)]
async fn only_interactive_profiles_log_in() {
    let s = setup(PUBLIC_CLIENT_ID).await;
    let mut out = Vec::new();
    let err = login(&s.config, "bot", env(), &mut out)
        .await
        .expect_err("client_secret has no login");
    assert!(
        matches!(
            err,
            LoginError::NotInteractive {
                kind: "client_secret",
                ..
            }
        ),
        "{err}"
    );
    let err = login(&s.config, "nobody", env(), &mut out)
        .await
        .expect_err("unknown profile");
    assert!(err.to_string().contains("no profile `nobody`"), "{err}");
    assert!(s.entra.device_code_requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_store_others_can_read_is_refused_before_anyone_signs_in() {
    let s = setup(PUBLIC_CLIENT_ID).await;
    std::fs::create_dir(&s.state).expect("mkdir");
    std::fs::set_permissions(&s.state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (result, out) = run_login(&s).await;
    let err = result.expect_err("store refused").to_string();
    assert!(err.contains("chmod 700"), "{err}");
    assert!(out.is_empty());
    assert!(s.entra.device_code_requests().is_empty());
}

// ---- serve, on real time -------------------------------------------------------------------

fn decode_payload(jwt: &str) -> Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url"),
    )
    .expect("JSON claims")
}

/// Polls `check` every 50 ms until it holds, for up to `secs`.
async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stored_rt(state: &Path) -> Option<String> {
    TokenStore::new(state.to_path_buf())
        .load("team")
        .ok()
        .flatten()
        .map(|l| l.refresh_token.expose().to_string())
}

#[tokio::test]
async fn serve_uses_one_refresh_token_for_every_route_and_follows_logins_and_revocation() {
    let entra = FakeEntra::start().await;
    entra.set_device_code_timing(1, 900);
    // Short-lived access tokens: refreshed every 2 s, unusable 3.6 s after issue.
    entra.set_lifetime(4);
    let ado = FakeUpstream::start(ADO_AUDIENCE).await;
    let defender = FakeUpstream::start(DEFENDER_AUDIENCE).await;
    // The person who logged in, through the public client, not an app.
    ado.expect(Identity::user(PUBLIC_CLIENT_ID));
    defender.expect(Identity::user(PUBLIC_CLIENT_ID));
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let text = toml(
        &entra,
        &state,
        PUBLIC_CLIENT_ID,
        &[
            ("/ado", &ado.url(), ADO_SCOPE),
            ("/defender", &defender.url(), DEFENDER_SCOPE),
        ],
    );
    let config = load_config(&text);
    let mut out = Vec::new();
    login(&config, "team", env(), &mut out)
        .await
        .expect("first login");
    let first_rt = stored_rt(&state).expect("stored");
    let first_family = entra.refresh_token_family(&first_rt).expect("issued");

    let patless = Patless::start_with_env(&text, MapEnv::default()).await;
    let client = support::http_client();
    let get = |path: &'static str| {
        let client = client.clone();
        let url = patless.url(path);
        async move { client.get(url).send().await.expect("proxy answers") }
    };

    // Both APIs, two audiences, from the one login.
    assert_eq!(get("/ado/_apis/projects").await.status(), 200);
    assert_eq!(get("/defender/api/incidents").await.status(), 200);
    assert_eq!(ado.rejected(), 0);
    assert_eq!(defender.rejected(), 0);
    let ado_token = ado.requests()[0].headers["authorization"]
        .to_str()
        .expect("ascii")
        .trim_start_matches("Bearer ")
        .to_string();
    let claims = decode_payload(&ado_token);
    assert_eq!(claims["upn"], USER_UPN);
    assert_eq!(claims["scp"], "user_impersonation");

    let grants = entra.grant_requests("refresh_token");
    assert!(grants.len() >= 2, "one redemption per audience at least");
    assert_eq!(
        grants[0].form["refresh_token"], first_rt,
        "starts from the login's"
    );
    let scopes: Vec<&str> = grants.iter().map(|g| g.form["scope"].as_str()).collect();
    assert!(
        scopes.contains(&format!("{ADO_SCOPE} offline_access").as_str()),
        "{scopes:?}"
    );
    assert!(
        scopes.contains(&format!("{DEFENDER_SCOPE} offline_access").as_str()),
        "{scopes:?}"
    );
    for g in &grants {
        assert_eq!(g.form["client_id"], PUBLIC_CLIENT_ID);
        assert!(!g.form.contains_key("client_secret"));
        assert_eq!(
            entra.refresh_token_family(&g.form["refresh_token"]),
            Some(first_family),
            "every redemption belongs to the one login"
        );
    }
    // Each redemption used the newest token: never one already rotated away.
    let used: Vec<&String> = grants.iter().map(|g| &g.form["refresh_token"]).collect();
    let unique: std::collections::HashSet<&String> = used.iter().copied().collect();
    assert_eq!(unique.len(), used.len(), "no refresh token redeemed twice");
    // The rotated token is what's on disk.
    eventually(5, "the newest refresh token on disk", || {
        stored_rt(&state) == entra.latest_refresh_token()
    })
    .await;
    assert_ne!(stored_rt(&state), Some(first_rt.clone()));

    // Another process logs in while serve runs: the next acquisition uses that login.
    let mut out = Vec::new();
    login(&config, "team", env(), &mut out)
        .await
        .expect("second login");
    let second_family = entra
        .refresh_token_family(&stored_rt(&state).expect("stored"))
        .expect("issued");
    assert_ne!(second_family, first_family);
    let since = entra.grant_requests("refresh_token").len();
    eventually(6, "a redemption of the new login's refresh token", || {
        entra.grant_requests("refresh_token")[since..]
            .iter()
            .any(|g| entra.refresh_token_family(&g.form["refresh_token"]) == Some(second_family))
    })
    .await;
    eventually(5, "the new login's newest refresh token on disk", || {
        let rt = stored_rt(&state);
        rt == entra.latest_refresh_token()
            && rt.and_then(|r| entra.refresh_token_family(&r)) == Some(second_family)
    })
    .await;
    assert_eq!(get("/ado/_apis/projects").await.status(), 200);

    // The sessions are revoked: once the cached access tokens run out, 503 with what to do.
    entra.revoke_refresh_tokens();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let r = get("/ado/_apis/projects").await;
        if r.status() == 503 {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never 503 after revocation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answer.headers().contains_key("retry-after"));
    let body: Value = answer.json().await.expect("JSON error");
    assert_eq!(body["error"], "token_unavailable");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("run `patless login --profile team`"),
        "{message}"
    );
    assert!(message.contains("AADSTS70008"), "{message}");
    assert!(
        !message.contains("1.AXoAfake-rt"),
        "no refresh token in errors: {message}"
    );
    let metrics = patless.metrics().await;
    assert!(
        metrics.contains(
            r#"patless_token_refreshes_total{profile="team",result="interaction_required"}"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("1.AXoAfake-rt"));

    // Logging in again heals the running proxy, without a restart.
    let mut out = Vec::new();
    login(&config, "team", env(), &mut out)
        .await
        .expect("third login");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if get("/ado/_apis/projects").await.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never healed after login"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    patless.stop().await;
}

#[tokio::test]
async fn serve_without_a_login_says_to_log_in() {
    let entra = FakeEntra::start().await;
    let ado = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let text = toml(
        &entra,
        &state,
        PUBLIC_CLIENT_ID,
        &[("/ado", &ado.url(), ADO_SCOPE)],
    );
    let patless = Patless::start_with_env(&text, MapEnv::default()).await;
    let r = patless.get("/ado/_apis/projects").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.expect("JSON");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("no stored login for profile team: run `patless login --profile team`"),
        "{message}"
    );
    // serve never starts an interactive flow.
    assert!(entra.device_code_requests().is_empty());
    assert!(entra.authorize_requests().is_empty());
    assert_eq!(entra.token_requests(), 0);
    assert!(patless.metrics().await.contains(
        r#"patless_token_refreshes_total{profile="team",result="interaction_required"}"#
    ));
    patless.stop().await;
}
