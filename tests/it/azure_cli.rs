//! `azure_cli` (docs/credentials.md): a fake `az` on the injected `PATH`; the token it prints
//! reaches an upstream that verifies it, with the exact argv az was given; and the failures a
//! person meets (not installed, not logged in, an expired sign-in, garbage, a hang) come back as a
//! 503 that says what to do, counted under the right class. `auto` relies on "not installed" and
//! "not logged in" being `not_configured`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use patless::credentials::{AzureCliCredential, Credential, ErrorClass};
use patless::env::MapEnv;
use tempfile::TempDir;

use crate::support;
use crate::support::entra::{ADO_AUDIENCE, ADO_SCOPE, DEFENDER_AUDIENCE, DEFENDER_SCOPE, TENANT};
use crate::support::fake_cli::{
    assert_refresh_result, expect_503, proxy_config, request_succeeds, start_proxy, FakeCli, Mode,
};
use crate::support::patless::Patless;
use crate::support::upstream::FakeUpstream;

const SUBSCRIPTION: &str = "6b1c2d3e-0000-4000-8000-000000000000";

fn argv(rest: &[&str]) -> Vec<String> {
    ["account", "get-access-token", "--output", "json"]
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
}

fn credential(fake: &FakeCli) -> AzureCliCredential {
    AzureCliCredential::new(None, None, Arc::new(fake.env()))
}

// ---------------------------------------------------------------------------------------------
// Tokens through the proxy.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_az_prints_reaches_the_upstream() {
    let fake = FakeCli::az(Mode::Success);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(fake.identity());
    let p = start_proxy(&fake, &up, "").await;
    request_succeeds(&p, &up, &fake).await;
    // The resource, not the scope; nothing else.
    assert_eq!(fake.calls(), vec![argv(&["--resource", ADO_AUDIENCE])]);
    // A second request uses the cached token.
    request_succeeds(&p, &up, &fake).await;
    assert_eq!(fake.calls().len(), 1);
    assert_refresh_result(&p, "success").await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_and_subscription_are_passed_to_az() {
    let fake = FakeCli::az(Mode::Success);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(fake.identity());
    let p = start_proxy(
        &fake,
        &up,
        &format!("tenant_id = \"{TENANT}\"\nsubscription = \"{SUBSCRIPTION}\""),
    )
    .await;
    request_succeeds(&p, &up, &fake).await;
    assert_eq!(
        fake.calls(),
        vec![argv(&[
            "--resource",
            ADO_AUDIENCE,
            "--tenant",
            TENANT,
            "--subscription",
            SUBSCRIPTION
        ])]
    );
    p.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The process: argv, environment, expiry, repeated acquisitions.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn az_runs_with_the_injected_environment_only_and_from_root() {
    let fake = FakeCli::az(Mode::Success);
    let mut vars = fake.env().0;
    vars.insert("PATLESS_TEST_MARK".into(), "injected".into());
    let cred = AzureCliCredential::new(None, None, Arc::new(MapEnv(vars)));
    cred.acquire(ADO_SCOPE, None).await.expect("token");
    let env = fake.last_env();
    assert!(
        env.contains(&"PATLESS_TEST_MARK=injected".to_string()),
        "{env:?}"
    );
    assert!(env.contains(&format!("HOME={}", fake.dir())), "{env:?}");
    assert_eq!(fake.last_cwd(), "/");
    // cargo sets this for the test process; the child must not inherit it.
    assert!(
        !env.iter().any(|l| l.starts_with("CARGO_PKG_NAME=")),
        "the test process's environment leaked: {env:?}"
    );
}

#[tokio::test]
async fn every_acquisition_asks_az_again_and_claims_are_ignored() {
    let fake = FakeCli::az(Mode::Success);
    let cred = credential(&fake);
    let a = cred.acquire(ADO_SCOPE, None).await.expect("first");
    let b = cred
        .acquire(
            ADO_SCOPE,
            Some(r#"{"access_token":{"nbf":{"essential":true}}}"#),
        )
        .await
        .expect("second, with claims");
    assert_eq!(a.token.expose(), fake.token_for(ADO_AUDIENCE));
    assert_eq!(b.token.expose(), fake.token_for(ADO_AUDIENCE));
    let d = cred.acquire(DEFENDER_SCOPE, None).await.expect("defender");
    assert_eq!(d.token.expose(), fake.token_for(DEFENDER_AUDIENCE));
    assert_eq!(
        fake.calls(),
        vec![
            argv(&["--resource", ADO_AUDIENCE]),
            argv(&["--resource", ADO_AUDIENCE]),
            argv(&["--resource", DEFENDER_AUDIENCE]),
        ]
    );
    // `expires_on` is the expiry: 3600 s from when the fake was made.
    assert!(
        a.expires_in > Duration::from_secs(3590) && a.expires_in <= Duration::from_secs(3600),
        "{:?}",
        a.expires_in
    );
}

#[tokio::test]
async fn only_dot_default_is_stripped_and_a_trailing_slash_is_kept() {
    let fake = FakeCli::az(Mode::Stdout(
        r#"{"accessToken":"opaque","expires_on":"4102444800","tokenType":"Bearer"}"#.into(),
    ));
    let cred = credential(&fake);
    for scope in [
        "https://management.core.windows.net//.default",
        "https://management.azure.com/.default",
        "api://my-app",
    ] {
        cred.acquire(scope, None).await.expect("token");
    }
    let resources: Vec<String> = fake.calls().iter().map(|c| c[5].clone()).collect();
    assert_eq!(
        resources,
        [
            "https://management.core.windows.net/",
            "https://management.azure.com",
            "api://my-app"
        ]
    );
}

#[tokio::test]
async fn expires_on_in_local_time_is_read_when_expires_on_epoch_is_missing() {
    let fake = FakeCli::az(Mode::ExpiresOnLocalOnly);
    let t = credential(&fake)
        .acquire(ADO_SCOPE, None)
        .await
        .expect("token");
    assert!(
        t.expires_in > Duration::from_secs(3590) && t.expires_in <= Duration::from_secs(3600),
        "local time misread: {:?}",
        t.expires_in
    );
}

#[tokio::test]
async fn debug_shows_settings_not_the_environment() {
    let fake = FakeCli::az(Mode::Success);
    let mut vars = fake.env().0;
    vars.insert("AZURE_CLIENT_SECRET".into(), "hunter2".into());
    let cred = AzureCliCredential::new(
        Some(TENANT.into()),
        Some(SUBSCRIPTION.into()),
        Arc::new(MapEnv(vars)),
    );
    let dbg = format!("{cred:?}");
    assert!(dbg.contains(TENANT) && dbg.contains(SUBSCRIPTION), "{dbg}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
}

// ---------------------------------------------------------------------------------------------
// Failures through the proxy: 503, what to do, the metric class.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_az_on_path_is_not_configured_and_says_to_install_and_log_in() {
    let empty = TempDir::new().expect("tempdir");
    // A file named az that is not executable does not count.
    let not_exec = TempDir::new().expect("tempdir");
    std::fs::write(not_exec.path().join("az"), "#!/bin/sh\nexit 0\n").expect("write");
    let path = format!(
        "{}:relative/dir::{}",
        empty.path().display(),
        not_exec.path().display()
    );
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let p = Patless::start_with_env(
        &proxy_config("azure_cli", &up.url(), ""),
        MapEnv::new([("PATH", path.as_str()), ("HOME", "/nonexistent")]),
    )
    .await;
    let msg = expect_503(&p).await;
    assert!(
        msg.contains("Azure CLI is not installed (no `az` on PATH)"),
        "{msg}"
    );
    assert!(msg.contains("run `az login`"), "{msg}");
    assert_refresh_result(&p, "not_configured").await;
    assert!(up.requests().is_empty());
    p.stop().await;

    // No PATH at all: the same.
    let e = AzureCliCredential::new(None, None, Arc::new(MapEnv::default()))
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("no PATH");
    assert_eq!(e.class, ErrorClass::NotConfigured);
}

#[tokio::test]
async fn exit_127_is_not_installed() {
    let fake = FakeCli::az(Mode::Fail {
        stderr: "/usr/bin/az: 3: /opt/az/bin/python3: not found".into(),
        code: 127,
    });
    let e = credential(&fake)
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("127");
    assert_eq!(e.class, ErrorClass::NotConfigured);
    assert!(
        e.message.contains("Azure CLI is not installed"),
        "{}",
        e.message
    );
    assert!(e.message.contains("python3: not found"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_logged_in_is_not_configured_and_says_run_az_login() {
    let fake = FakeCli::az(Mode::NotLoggedIn);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(fake.identity());
    let p = start_proxy(&fake, &up, "").await;
    let msg = expect_503(&p).await;
    assert!(msg.contains("not logged in: run `az login`"), "{msg}");
    assert!(
        msg.contains("Please run 'az login' to setup account."),
        "{msg}"
    );
    assert_refresh_result(&p, "not_configured").await;
    assert!(up.requests().is_empty());
    p.stop().await;
}

#[tokio::test]
async fn not_logged_in_with_a_tenant_suggests_that_tenant() {
    let fake = FakeCli::az(Mode::NotLoggedIn);
    let e = AzureCliCredential::new(Some(TENANT.into()), None, Arc::new(fake.env()))
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("not logged in");
    assert_eq!(e.class, ErrorClass::NotConfigured);
    assert!(
        e.message
            .contains(&format!("not logged in: run `az login --tenant {TENANT}`")),
        "{}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_sign_in_passes_the_aadsts_line_on_with_a_hint() {
    let fake = FakeCli::az(Mode::Aadsts700082);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(fake.identity());
    let p = start_proxy(&fake, &up, "").await;
    let msg = expect_503(&p).await;
    assert!(
        msg.contains("AADSTS700082: The refresh token has expired due to inactivity."),
        "{msg}"
    );
    assert!(
        msg.contains("hint: the Azure CLI's sign-in expired or was revoked: run `az login` again"),
        "{msg}"
    );
    // Only the first line: no trace ids.
    assert!(!msg.contains("Trace ID"), "{msg}");
    // It mentions `az login`, but an AADSTS error is not "not logged in".
    assert_refresh_result(&p, "interaction_required").await;
    p.stop().await;
}

#[tokio::test]
async fn other_aadsts_codes_are_invalid_grant_with_entras_hint() {
    let fake = FakeCli::az(Mode::Fail {
        stderr: "ERROR: AADSTS500011: The resource principal named https://x was not found in the tenant named Contoso.".into(),
        code: 1,
    });
    let e = credential(&fake)
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("refused");
    assert_eq!(e.class, ErrorClass::InvalidGrant);
    assert_eq!(e.codes, vec![500011]);
    assert!(e.message.contains("AADSTS500011"), "{}", e.message);
    assert!(
        e.message
            .contains("the resource's service principal is not in the tenant"),
        "{}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_stdout_is_a_bad_response() {
    let fake = FakeCli::az(Mode::Stdout("Welcome to Azure CLI!".into()));
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    up.expect(fake.identity());
    let p = start_proxy(&fake, &up, "").await;
    let msg = expect_503(&p).await;
    assert!(
        msg.contains("az printed something that is not a token"),
        "{msg}"
    );
    assert!(!msg.contains("Welcome"), "stdout quoted: {msg}");
    assert_refresh_result(&p, "bad_response").await;
    p.stop().await;
}

#[tokio::test]
async fn no_token_ever_appears_in_an_error() {
    let token = support::entra::mint_token(ADO_AUDIENCE, 3600);
    // A token without an expiry.
    let fake = FakeCli::az(Mode::Stdout(format!(r#"{{"accessToken":"{token}"}}"#)));
    let e = credential(&fake)
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("no expiry");
    assert_eq!(e.class, ErrorClass::BadResponse);
    assert!(!e.message.contains(&token), "{}", e.message);
    // A CLI that echoes a token on stderr while failing.
    fake.set_mode(Mode::Fail {
        stderr: format!("ERROR: unexpected answer {{\"accessToken\": \"{token}\"}}"),
        code: 2,
    });
    let e = credential(&fake)
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("failed");
    assert_eq!(e.class, ErrorClass::ServerError);
    assert!(
        e.message.contains("az failed (exit 2): unexpected answer"),
        "{}",
        e.message
    );
    assert!(!e.message.contains("eyJ"), "{}", e.message);
    assert!(!e.message.contains("accessToken"), "{}", e.message);
}

#[tokio::test]
async fn an_unknown_subscription_is_not_configured() {
    let fake = FakeCli::az(Mode::Fail {
        stderr:
            "ERROR: Subscription 'nope' not found. Check the spelling and casing and try again."
                .into(),
        code: 1,
    });
    let e = AzureCliCredential::new(None, Some("nope".into()), Arc::new(fake.env()))
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("unknown subscription");
    assert_eq!(e.class, ErrorClass::NotConfigured);
    assert!(e.message.contains("subscription `nope`"), "{}", e.message);
}

#[tokio::test]
async fn option_like_values_are_never_passed() {
    let fake = FakeCli::az(Mode::Success);
    let e = AzureCliCredential::new(None, Some("--debug".into()), Arc::new(fake.env()))
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("refused");
    assert_eq!(e.class, ErrorClass::NotConfigured);
    assert!(fake.calls().is_empty(), "az ran: {:?}", fake.calls());
}

// ---------------------------------------------------------------------------------------------
// A hung az is stopped.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_hung_az_times_out_and_is_killed() {
    let fake = FakeCli::az(Mode::Hang);
    let cred = credential(&fake).with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let e = cred.acquire(ADO_SCOPE, None).await.expect_err("timeout");
    let took = started.elapsed();
    assert_eq!(e.class, ErrorClass::Timeout);
    assert!(
        e.message.contains("az did not answer within 300 ms"),
        "{}",
        e.message
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    if std::path::Path::new("/proc/self").exists() {
        let pid = fake.hung_pid().expect("the fake wrote its pid");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "az (pid {pid}) is still running"
        );
    }
}

#[test]
fn the_default_timeout_is_ten_seconds() {
    let cred = AzureCliCredential::new(None, None, Arc::new(MapEnv::default()));
    assert!(format!("{cred:?}").contains("timeout: 10s"), "{cred:?}");
}
