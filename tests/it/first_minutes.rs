//! A new user's first ten minutes: the config they write from the README — one profile,
//! `ado-bot`, and one route — and the commands they try first. With one profile defined that
//! profile is the default one, for `token`, `check`, the host routes and `/readyz`
//! (docs/configuration.md, `server.default_profile`); with several and no `default_profile`,
//! every error about the implicit `auto` says so and how to pick another; `check --profile`
//! tests the profile it names, used by a route or not (docs/commands.md).
//! The host routes' side, which needs the real names, is in `host_routes.rs`.

use std::time::Duration;

use patless::env::MapEnv;
use serde_json::Value;

use crate::support;
use crate::support::entra::{
    FakeEntra, Fault, ADO_SCOPE, CLIENT_ID, CLIENT_SECRET, DEFENDER_SCOPE, TENANT,
};
use crate::support::patless::Patless;
use crate::support::sandbox::{Run, Sandbox};

const WRONG: &str = "wrong-secret-VALUE-do-not-print";

/// What a new user writes: Entra (here the fake), the profile `ado-bot` with its secret in
/// `$ADO_BOT_SECRET`, and one route of `route_profile`; nothing in `[server]` but the test's
/// listeners, so host routes are on, as by default.
fn new_user_config(entra: &FakeEntra, route_profile: &str, more: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[entra]
authority_host = "{authority}"

[profiles.ado-bot]
kind = "client_secret"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret = {{ env = "ADO_BOT_SECRET" }}
{more}
[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com/contoso"
profile = "{route_profile}"
"#,
        authority = entra.authority()
    )
}

/// A second profile, the same app behind another name.
fn second_profile(name: &str) -> String {
    format!(
        "\n[profiles.{name}]\nkind = \"client_secret\"\ntenant_id = \"{TENANT}\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"ADO_BOT_SECRET\" }}\n"
    )
}

/// `patless ARGS --config FILE` with `$ADO_BOT_SECRET` set to `secret` and `more_env`.
async fn run(
    sb: &Sandbox,
    toml: &str,
    args: &[&str],
    secret: &str,
    more_env: &[(&str, &str)],
) -> Run {
    let config = sb.write("patless.toml", toml);
    let config = config.to_str().expect("UTF-8 path").to_string();
    let args: Vec<&str> = args.iter().copied().chain(["--config", &config]).collect();
    let env: Vec<(&str, &str)> = [("ADO_BOT_SECRET", secret)]
        .into_iter()
        .chain(more_env.iter().copied())
        .collect();
    let run = sb.run_async(&args, &env).await;
    assert!(run.code.is_some(), "killed by a signal: {run:?}");
    for s in [CLIENT_SECRET, WRONG] {
        assert!(!run.all().contains(s), "the output leaks a secret: {run:?}");
    }
    run
}

/// The scopes the fake Entra was asked for, in order.
fn scopes_asked(entra: &FakeEntra) -> Vec<String> {
    entra
        .requests()
        .iter()
        .filter_map(|r| r.form.get("scope").cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_profile_token_and_config_use_it_without_being_told() {
    let entra = FakeEntra::start().await;
    let sb = Sandbox::new();
    let toml = new_user_config(&entra, "ado-bot", "");

    let raw = run(
        &sb,
        &toml,
        &["token", "--scope", ADO_SCOPE, "--output", "raw"],
        CLIENT_SECRET,
        &[],
    )
    .await;
    assert_eq!(raw.code, Some(0), "{raw:?}");
    assert_eq!(raw.stdout, format!("{}\n", entra.issued_tokens()[0]));
    assert_eq!(entra.last_form("client_id").as_deref(), Some(CLIENT_ID));

    // No flag at all: the profile's route gives the scope.
    let json = run(&sb, &toml, &["token"], CLIENT_SECRET, &[]).await;
    assert_eq!(json.code, Some(0), "{json:?}");
    let json: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(json["tenant"], TENANT);
    assert_eq!(scopes_asked(&entra), [ADO_SCOPE, ADO_SCOPE]);

    // `patless config` says which profile is the default, and why.
    let config = run(&sb, &toml, &["config"], CLIENT_SECRET, &[]).await;
    assert_eq!(config.code, Some(0), "{config:?}");
    support::assert_contains_all(
        &config.stdout,
        &[
            "# default profile: `ado-bot`, the only profile defined under [profiles]",
            "default_profile = \"ado-bot\"",
        ],
    );
    assert!(!config.stdout.contains("[profiles.auto]"), "{config:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_profiles_and_no_default_the_error_names_the_implicit_auto_and_the_fix() {
    let entra = FakeEntra::start().await;
    let sb = Sandbox::new();
    let toml = new_user_config(&entra, "ado-bot", &second_profile("ado-reader"));
    // `auto` finds an environment service principal whose secret Entra refuses.
    let env = [
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_SECRET", WRONG),
    ];
    let r = run(
        &sb,
        &toml,
        &["token", "--scope", ADO_SCOPE, "--output", "raw"],
        CLIENT_SECRET,
        &env,
    )
    .await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    let hint = "patless: the default profile is `auto` (the implicit profile of kind auto): 2 \
                profiles are defined under [profiles] and server.default_profile names none of \
                them; name another with --profile NAME, or set server.default_profile";
    assert_eq!(r.stderr.matches(hint).count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("AADSTS7000215"), "{}", r.stderr);

    // Following the hint works.
    let r = run(
        &sb,
        &toml,
        &["token", "--profile", "ado-reader", "--scope", ADO_SCOPE],
        CLIENT_SECRET,
        &env,
    )
    .await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let r = run(
        &sb,
        &toml.replacen(
            "admin_listen = \"127.0.0.1:0\"",
            "admin_listen = \"127.0.0.1:0\"\ndefault_profile = \"ado-bot\"",
            1,
        ),
        &["config"],
        CLIENT_SECRET,
        &env,
    )
    .await;
    assert!(
        r.stdout
            .contains("# default profile: `ado-bot`, set by server.default_profile"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_profile_tests_a_profile_no_route_uses_and_fails_on_a_wrong_secret() {
    let entra = FakeEntra::start().await;
    let sb = Sandbox::new();
    // The one route is another profile's: nothing else would ever ask for ado-bot's token.
    let toml = new_user_config(&entra, "ado-reader", &second_profile("ado-reader"));
    let args = ["check", "--profile", "ado-bot"];

    let r = run(&sb, &toml, &args, WRONG, &[]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("profile ado-bot (client_secret), scope"))
        .unwrap_or_else(|| panic!("no token line for ado-bot: {r:?}"));
    assert!(
        line.contains(&format!("scope {ADO_SCOPE}: FAILED")),
        "{line}"
    );
    assert!(line.contains("AADSTS7000215"), "Entra's reason: {line}");
    assert_eq!(scopes_asked(&entra), [ADO_SCOPE], "only ado-bot was tested");

    // With the right secret it passes, and says which scope it tested and why.
    let r = run(&sb, &toml, &args, CLIENT_SECRET, &[]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    support::assert_contains_all(
        &r.stdout,
        &[
            "profile ado-bot: no route uses it; testing Azure DevOps' scope",
            &format!("profile ado-bot (client_secret), scope {ADO_SCOPE}: OK"),
        ],
    );
    assert!(
        !r.stdout.contains("route /ado"),
        "no probe of another profile's route: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_profile_with_scope_tests_that_scope() {
    let entra = FakeEntra::start().await;
    let sb = Sandbox::new();
    let toml = new_user_config(&entra, "ado-bot", "");
    let r = run(
        &sb,
        &toml,
        &["check", "--profile", "ado-bot", "--scope", DEFENDER_SCOPE],
        CLIENT_SECRET,
        &[],
    )
    .await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "profile ado-bot (client_secret), scope {DEFENDER_SCOPE}: OK — audience https://api.security.microsoft.com"
        )),
        "{r:?}"
    );
    assert_eq!(
        scopes_asked(&entra),
        [DEFENDER_SCOPE],
        "only the scope asked for"
    );
    // The route's scope was not tested, so its upstream is not probed.
    assert!(!r.stdout.contains("route /ado"), "{r:?}");
}

/// `/readyz`'s status and body.
async fn readyz(p: &Patless) -> (u16, Value) {
    let r = support::get(&support::http_client(), p.admin_url("/readyz")).await;
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON"))
}

/// Polls `/readyz` until its status and body satisfy `want`, for up to 15 s; its last body.
async fn readyz_until(p: &Patless, what: &str, want: impl Fn(u16, &Value) -> bool) -> Value {
    for _ in 0..150 {
        let (status, body) = readyz(p).await;
        if want(status, &body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never showed {what}: {:?}", readyz(p).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_profile_that_serves_the_host_routes() {
    let entra = FakeEntra::start().await;
    let env = || MapEnv::new([("ADO_BOT_SECRET", CLIENT_SECRET)]);
    // As written: the route's token is the profile's. Then the same user without the route,
    // calling only `/dev.azure.com/…`: the host routes' token is the profile's.
    let with_route = new_user_config(&entra, "ado-bot", "");
    let host_routes_only = with_route[..with_route.find("[[routes]]").expect("route")].to_string();
    for (toml, route) in [(with_route, "/ado"), (host_routes_only, "host routes")] {
        entra.set_fault(Some(Fault::InvalidClient));
        let p = Patless::start_with_env(&toml, env()).await;
        let body = readyz_until(&p, "Entra's refusal", |status, body| {
            status == 503 && body["routes"][0]["last_error"]["class"] == "invalid_client"
        })
        .await;
        assert_eq!(body["ready"], false, "{body}");
        assert_eq!(body["routes"].as_array().map(Vec::len), Some(1), "{body}");
        let entry = &body["routes"][0];
        assert_eq!(entry["route"], route, "{body}");
        assert_eq!(entry["profile"], "ado-bot", "{body}");
        assert_eq!(entry["scope"], ADO_SCOPE, "{body}");
        assert_eq!(entry["has_held_valid_token"], false, "{body}");
        // The refresher keeps trying: once Entra answers, patless is ready on its own.
        entra.set_fault(None);
        let body = readyz_until(&p, "ready", |status, _| status == 200).await;
        assert_eq!(body["ready"], true, "{body}");
        assert_eq!(body["routes"][0]["has_held_valid_token"], true, "{body}");
        p.stop().await;
    }
}
