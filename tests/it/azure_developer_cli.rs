//! `azure_developer_cli` (docs/credentials.md): a fake `azd` on the injected `PATH`; the token it
//! prints reaches an upstream that verifies it, with the exact argv azd was given; RFC 3339 expiry;
//! and the failures a person meets (not installed, not logged in in both of azd's wordings, an
//! expired sign-in, garbage, a hang), each a 503 that says what to do, counted under the right
//! class.

use std::sync::Arc;
use std::time::{Duration, Instant};

use patless::credentials::{AzureDeveloperCliCredential, Credential, ErrorClass};
use patless::env::MapEnv;
use tempfile::TempDir;

use crate::support;
use crate::support::entra::{ADO_AUDIENCE, ADO_SCOPE, DEFENDER_AUDIENCE, DEFENDER_SCOPE, TENANT};
use crate::support::fake_cli::{
    assert_refresh_result, expect_503, proxy_config, request_succeeds, start_proxy, FakeCli, Mode,
};
use crate::support::patless::Patless;
use crate::support::upstream::FakeUpstream;

fn argv(rest: &[&str]) -> Vec<String> {
    ["auth", "token", "--output", "json", "--no-prompt"]
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
}

fn credential(fake: &FakeCli) -> AzureDeveloperCliCredential {
    AzureDeveloperCliCredential::new(None, Arc::new(fake.env()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_azd_prints_reaches_the_upstream() {
    let fake = FakeCli::azd(Mode::Success);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(fake.identity());
    let p = start_proxy(&fake, &up, "").await;
    request_succeeds(&p, &up, &fake).await;
    // The scope as is (azd wants scopes, not resources).
    assert_eq!(fake.calls(), vec![argv(&["--scope", ADO_SCOPE])]);
    assert_refresh_result(&p, "success").await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_is_passed_as_tenant_id() {
    let fake = FakeCli::azd(Mode::Success);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(fake.identity());
    let p = start_proxy(&fake, &up, &format!("tenant_id = \"{TENANT}\"")).await;
    request_succeeds(&p, &up, &fake).await;
    assert_eq!(
        fake.calls(),
        vec![argv(&["--scope", ADO_SCOPE, "--tenant-id", TENANT])]
    );
    p.stop().await;
}

#[tokio::test]
async fn rfc3339_expiry_and_every_acquisition_asks_azd_again() {
    let fake = FakeCli::azd(Mode::Success);
    let cred = credential(&fake);
    let a = cred.acquire(ADO_SCOPE, None).await.expect("first");
    assert!(
        a.expires_in > Duration::from_secs(3590) && a.expires_in <= Duration::from_secs(3600),
        "{:?}",
        a.expires_in
    );
    let b = cred
        .acquire(
            ADO_SCOPE,
            Some(r#"{"access_token":{"nbf":{"essential":true}}}"#),
        )
        .await
        .expect("second, claims ignored");
    assert_eq!(b.token.expose(), fake.token_for(ADO_AUDIENCE));
    let d = cred.acquire(DEFENDER_SCOPE, None).await.expect("defender");
    assert_eq!(d.token.expose(), fake.token_for(DEFENDER_AUDIENCE));
    assert_eq!(
        fake.calls(),
        vec![
            argv(&["--scope", ADO_SCOPE]),
            argv(&["--scope", ADO_SCOPE]),
            argv(&["--scope", DEFENDER_SCOPE]),
        ]
    );
}

#[tokio::test]
async fn rfc3339_with_an_offset_and_fraction_is_read() {
    let fake = FakeCli::azd(Mode::Stdout(
        r#"{"token":"opaque","expiresOn":"2099-12-31T23:00:00.1234567+01:00"}"#.into(),
    ));
    let t = credential(&fake)
        .acquire(ADO_SCOPE, None)
        .await
        .expect("token");
    let want = 4_102_437_600u64; // 2099-12-31T22:00:00Z
    let now = support::now_secs();
    let got = now + t.expires_in.as_secs();
    assert!(got.abs_diff(want) <= 2, "read as {got}, expected {want}");
}

#[tokio::test]
async fn azd_runs_with_the_injected_environment_only() {
    let fake = FakeCli::azd(Mode::Success);
    let mut vars = fake.env().0;
    vars.insert("AZD_TEST_MARK".into(), "injected".into());
    AzureDeveloperCliCredential::new(None, Arc::new(MapEnv(vars)))
        .acquire(ADO_SCOPE, None)
        .await
        .expect("token");
    let env = fake.last_env();
    assert!(
        env.contains(&"AZD_TEST_MARK=injected".to_string()),
        "{env:?}"
    );
    assert!(
        !env.iter().any(|l| l.starts_with("CARGO_PKG_NAME=")),
        "the test process's environment leaked: {env:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_azd_on_path_is_not_configured_and_says_run_azd_auth_login() {
    let empty = TempDir::new().expect("tempdir");
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start_with_env(
        &proxy_config("azure_developer_cli", &up.url(), ""),
        MapEnv::new([
            ("PATH", empty.path().display().to_string()),
            ("HOME", empty.path().display().to_string()),
        ]),
    )
    .await;
    let msg = expect_503(&p).await;
    assert!(
        msg.contains("Azure Developer CLI is not installed (no `azd` on PATH)"),
        "{msg}"
    );
    assert!(msg.contains("run `azd auth login`"), "{msg}");
    assert_refresh_result(&p, "not_configured").await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_logged_in_is_not_configured_and_says_run_azd_auth_login() {
    let fake = FakeCli::azd(Mode::NotLoggedIn);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(fake.identity());
    let p = start_proxy(&fake, &up, "").await;
    let msg = expect_503(&p).await;
    assert!(msg.contains("not logged in: run `azd auth login`"), "{msg}");
    assert_refresh_result(&p, "not_configured").await;
    assert!(up.requests().is_empty());
    p.stop().await;
}

#[tokio::test]
async fn fetching_token_failures_are_not_logged_in_too() {
    let fake = FakeCli::azd(Mode::Fail {
        stderr: "ERROR: fetching token: no credentials are cached for this account".into(),
        code: 1,
    });
    let e = AzureDeveloperCliCredential::new(Some(TENANT.into()), Arc::new(fake.env()))
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("not logged in");
    assert_eq!(e.class, ErrorClass::NotConfigured);
    assert!(
        e.message
            .contains(&format!("run `azd auth login --tenant-id {TENANT}`")),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("fetching token: no credentials"),
        "{}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_sign_in_is_interaction_required_with_a_hint() {
    let fake = FakeCli::azd(Mode::Aadsts700082);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(fake.identity());
    let p = start_proxy(&fake, &up, "").await;
    let msg = expect_503(&p).await;
    assert!(msg.contains("AADSTS700082"), "{msg}");
    assert!(msg.contains("run `azd auth login` again"), "{msg}");
    assert!(!msg.contains("Trace ID"), "{msg}");
    assert_refresh_result(&p, "interaction_required").await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_stdout_is_a_bad_response_without_the_output() {
    let token = support::entra::mint_token(ADO_AUDIENCE, 3600);
    // A token with a date that is not RFC 3339.
    let fake = FakeCli::azd(Mode::Stdout(format!(
        r#"{{"token":"{token}","expiresOn":"2030-01-02 03:04:05.000000"}}"#
    )));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(fake.identity());
    let p = start_proxy(&fake, &up, "").await;
    let msg = expect_503(&p).await;
    assert!(
        msg.contains("azd printed something that is not a token"),
        "{msg}"
    );
    assert!(!msg.contains(&token) && !msg.contains("eyJ"), "{msg}");
    assert_refresh_result(&p, "bad_response").await;
    p.stop().await;
}

#[tokio::test]
async fn a_hung_azd_times_out_and_is_killed() {
    let fake = FakeCli::azd(Mode::Hang);
    let cred = credential(&fake).with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let e = cred.acquire(ADO_SCOPE, None).await.expect_err("timeout");
    assert_eq!(e.class, ErrorClass::Timeout);
    assert!(
        e.message.contains("azd did not answer within 300 ms"),
        "{}",
        e.message
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    if std::path::Path::new("/proc/self").exists() {
        let pid = fake.hung_pid().expect("the fake wrote its pid");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "azd (pid {pid}) is still running"
        );
    }
}
