//! The command line (docs/commands.md), run as the real binary in a scrubbed environment: exit codes for
//! bad configs, `config`, `token`, `check`, `--help`, and `serve` (the default) until SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::support;
use crate::support::entra::{
    FakeEntra, ADO_AUDIENCE, ADO_SCOPE, CLIENT_ID, CLIENT_SECRET, DEFENDER_AUDIENCE,
    DEFENDER_SCOPE, TENANT,
};
use crate::support::now_secs;
use crate::support::patless::{poll_status, PatlessProcess};
use crate::support::sandbox::{Run, Sandbox};
use crate::support::upstream::FakeUpstream;

const EXIT_CONFIG: i32 = 64;
const WRONG_SECRET: &str = "wrong-secret-VALUE-do-not-print";

/// The test helper's config with one extra `[[routes]]`, written to the sandbox.
fn write_config(sandbox: &Sandbox, entra: &FakeEntra, routes: &[(&str, &str, &str)]) -> PathBuf {
    let text = support::patless::config(entra, routes, "", "");
    assert!(text.contains(CLIENT_SECRET), "helper config changed shape");
    sandbox.write("patless.toml", &text)
}

/// Same, but with a client secret Entra rejects.
fn write_wrong_secret_config(
    sandbox: &Sandbox,
    entra: &FakeEntra,
    routes: &[(&str, &str, &str)],
) -> PathBuf {
    let text = support::patless::config(entra, routes, "", "").replace(CLIENT_SECRET, WRONG_SECRET);
    assert!(text.contains(WRONG_SECRET), "helper config changed shape");
    sandbox.write("patless.toml", &text)
}

fn assert_no_secret(run: &Run) {
    for s in [CLIENT_SECRET, WRONG_SECRET] {
        assert!(!run.stdout.contains(s), "stdout leaks the secret: {run:?}");
        assert!(!run.stderr.contains(s), "stderr leaks the secret: {run:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// bad configs

const GOOD_PROFILE: &str = r#"
[server]
host_routes = false

[profiles.bot]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "literal-cli-secret-42"
"#;

#[test]
fn bad_config_exits_64_naming_the_key() {
    let sb = Sandbox::new();
    let cases = [
        (
            "undefined-profile.toml",
            format!(
                "{GOOD_PROFILE}\n[[routes]]\nprefix = \"/ado\"\nupstream = \"https://dev.azure.com\"\nprofile = \"ghost\"\n"
            ),
            vec!["routes[0].profile", "ghost"],
        ),
        (
            "unknown-kind.toml",
            format!("{GOOD_PROFILE}\n[profiles.x]\nkind = \"telepathy\"\n"),
            vec!["profiles.x.kind", "telepathy"],
        ),
        (
            "bad-url.toml",
            format!(
                "{GOOD_PROFILE}\n[[routes]]\nprefix = \"/x\"\nupstream = \"https//nope\"\nprofile = \"bot\"\nscope = \"api://x/.default\"\n"
            ),
            vec!["routes[0].upstream", "https//nope"],
        ),
        (
            "bad-type.toml",
            "[server]\nhost_routes = \"yes\"\n".to_string(),
            vec!["server.host_routes"],
        ),
    ];
    for (name, text, expected) in &cases {
        let path = sb.write(name, text);
        let path = path.to_str().unwrap();
        // Every command loads the config first; `serve` (no sub-command) must not start.
        for args in [
            vec!["--config", path],
            vec!["config", "--config", path],
            vec!["check", "--config", path],
            vec!["token", "--profile", "bot", "--config", path],
        ] {
            let run = sb.run(&args, &[]);
            assert_eq!(run.code, Some(EXIT_CONFIG), "{args:?}: {run:?}");
            for needle in expected {
                assert!(
                    run.stderr.contains(needle),
                    "{args:?}: stderr lacks `{needle}`: {run:?}"
                );
            }
            assert!(run.stderr.contains(name), "stderr names no file: {run:?}");
            assert!(!run.all().contains("literal-cli-secret-42"), "{run:?}");
        }
    }
}

#[test]
fn nonexistent_config_exits_64() {
    let sb = Sandbox::new();
    let missing = sb.path().join("does-not-exist.toml");
    let missing = missing.to_str().unwrap();
    // A valid file in XDG must not be used instead.
    sb.write("xdg/patless/patless.toml", GOOD_PROFILE);

    for args in [
        vec!["--config", missing],
        vec!["config", "--config", missing],
        vec!["check", "--no-probe", "--config", missing],
    ] {
        let run = sb.run(&args, &[]);
        assert_eq!(run.code, Some(EXIT_CONFIG), "{args:?}: {run:?}");
        assert!(run.stderr.contains(missing), "{run:?}");
    }
    let run = sb.run(&["config"], &[("PATLESS_CONFIG", missing)]);
    assert_eq!(run.code, Some(EXIT_CONFIG), "{run:?}");
    assert!(run.stderr.contains(missing), "{run:?}");
}

// ---------------------------------------------------------------------------------------------
// patless config

#[test]
fn config_prints_the_effective_config_with_secrets_redacted() {
    let sb = Sandbox::new();
    let text = format!(
        r#"{GOOD_PROFILE}
[profiles.envbot]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "22222222-2222-2222-2222-222222222222"
client_secret = {{ env = "ENVBOT_SECRET" }}

[profiles.third]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "33333333-3333-3333-3333-333333333333"
client_secret = "replaced-by-env"

[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com/contoso"
profile = "bot"

[[routes]]
prefix = "/defender"
upstream = "https://api.security.microsoft.com"
profile = "envbot"
"#
    );
    let path = sb.write("conf/patless.toml", &text);
    let run = sb.run(
        &["config", "--config", path.to_str().unwrap()],
        &[
            ("ENVBOT_SECRET", "env-held-secret-value"),
            ("PATLESS_SERVER__LISTEN", "127.0.0.1:7199"),
            ("PATLESS_PROFILES__THIRD__CLIENT_SECRET", "424242424242"),
        ],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    for leaked in [
        "literal-cli-secret-42",
        "env-held-secret-value",
        "replaced-by-env",
        "424242424242",
    ] {
        assert!(!run.all().contains(leaked), "`{leaked}` leaked: {run:?}");
    }
    assert!(
        run.stdout
            .lines()
            .next()
            .is_some_and(|l| l.contains(path.to_str().unwrap())),
        "first line should name the source: {}",
        run.stdout
    );

    let printed: toml::Value = toml::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not TOML ({e}):\n{}", run.stdout));
    let routes = printed["routes"].as_array().expect("routes array");
    let prefixes: Vec<&str> = routes
        .iter()
        .map(|r| r["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, vec!["/ado", "/defender"]);
    assert_eq!(
        routes[0]["upstream"].as_str(),
        Some("https://dev.azure.com/contoso")
    );
    assert_eq!(routes[1]["profile"].as_str(), Some("envbot"));
    let profiles = &printed["profiles"];
    assert_eq!(
        profiles["bot"]["client_secret"].as_str(),
        Some("<redacted>")
    );
    assert_eq!(
        profiles["third"]["client_secret"].as_str(),
        Some("<redacted>")
    );
    assert_eq!(
        profiles["envbot"]["client_secret"]["env"].as_str(),
        Some("ENVBOT_SECRET")
    );
    assert_eq!(
        profiles["bot"]["client_id"].as_str(),
        Some("11111111-1111-1111-1111-111111111111")
    );
    // The environment override is part of the effective config.
    assert_eq!(printed["server"]["listen"].as_str(), Some("127.0.0.1:7199"));
}

#[test]
fn config_follows_the_lookup_order() {
    let sb = Sandbox::new();
    // Nothing anywhere: the embedded default.
    let run = sb.run(&["config"], &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .lines()
            .next()
            .unwrap_or_default()
            .contains("embedded default"),
        "{run:?}"
    );
    let printed: toml::Value = toml::from_str(&run.stdout).expect("TOML");
    let prefixes: Vec<&str> = printed["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, vec!["/ado", "/defender", "/mde"]);

    // $XDG_CONFIG_HOME/patless/patless.toml.
    let xdg = sb.write(
        "xdg/patless/patless.toml",
        format!("{GOOD_PROFILE}\n[[routes]]\nprefix = \"/from-xdg\"\nupstream = \"https://dev.azure.com\"\nprofile = \"bot\"\n"),
    );
    let run = sb.run(&["config"], &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains(xdg.to_str().unwrap()), "{run:?}");
    assert!(run.stdout.contains("/from-xdg"), "{run:?}");

    // ./patless.toml beats XDG.
    sb.write(
        "work/patless.toml",
        format!("{GOOD_PROFILE}\n[[routes]]\nprefix = \"/from-cwd\"\nupstream = \"https://dev.azure.com\"\nprofile = \"bot\"\n"),
    );
    let run = sb.run(&["config"], &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("/from-cwd"), "{run:?}");
    assert!(!run.stdout.contains("/from-xdg"), "{run:?}");

    // $PATLESS_CONFIG beats ./patless.toml.
    let env_file = sb.write(
        "elsewhere.yaml",
        "server:\n  host_routes: false\nprofiles:\n  bot:\n    kind: auto\nroutes:\n  - prefix: /from-env\n    upstream: https://dev.azure.com\n    profile: bot\n",
    );
    let run = sb.run(
        &["config"],
        &[("PATLESS_CONFIG", env_file.to_str().unwrap())],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("/from-env"), "{run:?}");
    assert!(!run.stdout.contains("/from-cwd"), "{run:?}");

    // --config beats $PATLESS_CONFIG.
    let explicit = sb.write(
        "explicit.json",
        r#"{"server":{"host_routes":false},"profiles":{"bot":{"kind":"auto"}},"routes":[{"prefix":"/from-flag","upstream":"https://dev.azure.com","profile":"bot"}]}"#,
    );
    let run = sb.run(
        &["config", "--config", explicit.to_str().unwrap()],
        &[("PATLESS_CONFIG", env_file.to_str().unwrap())],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("/from-flag"), "{run:?}");
    assert!(!run.stdout.contains("/from-env"), "{run:?}");
}

// ---------------------------------------------------------------------------------------------
// patless token

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_prints_az_compatible_json() {
    let entra = FakeEntra::start().await;
    let sb = Sandbox::new();
    let config = write_config(&sb, &entra, &[("/ado", "http://127.0.0.1:9", ADO_SCOPE)]);
    let before = now_secs();
    let run = sb
        .run_with_config(&["token", "--profile", "bot"], &config)
        .await;
    let after = now_secs();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_no_secret(&run);

    let json: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {run:?}"));
    let token = json["accessToken"].as_str().expect("accessToken");
    let issued = entra.issued_tokens();
    assert_eq!(issued.len(), 1, "one acquisition");
    assert_eq!(token, issued[0]);
    assert_eq!(json["tokenType"], "Bearer");
    assert_eq!(json["tenant"], TENANT);

    let expires_on = json["expires_on"]
        .as_u64()
        .unwrap_or_else(|| panic!("expires_on is not an integer: {}", json["expires_on"]));
    assert!(
        expires_on >= before + 3599 - 5 && expires_on <= after + 3599 + 5,
        "expires_on {expires_on} not near now+3599 ({before}..{after})"
    );

    // `expiresOn`: local time (the child runs with TZ=UTC), `YYYY-MM-DD HH:MM:SS.ffffff`.
    let expires_local = json["expiresOn"].as_str().expect("expiresOn");
    let shape_ok = expires_local.len() == 26
        && expires_local.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == ' ',
            13 | 16 => c == ':',
            19 => c == '.',
            _ => c.is_ascii_digit(),
        });
    assert!(shape_ok, "expiresOn has the wrong shape: {expires_local}");
    let expected = chrono::DateTime::from_timestamp(expires_on as i64, 0)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string();
    assert_eq!(expires_local, expected);

    // The scope came from the route that uses the profile.
    let requests = entra.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].form.get("scope").map(String::as_str),
        Some(ADO_SCOPE)
    );
    assert_eq!(
        requests[0].form.get("client_id").map(String::as_str),
        Some(CLIENT_ID)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_raw_prints_only_the_token() {
    let entra = FakeEntra::start().await;
    let sb = Sandbox::new();
    let config = write_config(&sb, &entra, &[("/ado", "http://127.0.0.1:9", ADO_SCOPE)]);
    let run = sb
        .run_with_config(&["token", "--profile", "bot", "--output", "raw"], &config)
        .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_no_secret(&run);
    let issued = entra.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(run.stdout, format!("{}\n", issued[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_resource_and_scope_flags_choose_the_scope() {
    let entra = FakeEntra::start().await;
    let sb = Sandbox::new();
    let config = write_config(&sb, &entra, &[("/ado", "http://127.0.0.1:9", ADO_SCOPE)]);
    let config = config.to_str().unwrap();

    for (flag, value, scope) in [
        (
            "--resource",
            "https://api.security.microsoft.com",
            DEFENDER_SCOPE,
        ),
        (
            "--resource",
            "https://api.security.microsoft.com/",
            DEFENDER_SCOPE,
        ),
        (
            "--scope",
            "https://graph.microsoft.com/.default",
            "https://graph.microsoft.com/.default",
        ),
    ] {
        let before = entra.requests().len();
        let run = sb
            .run_async(
                &[
                    "token",
                    "--profile",
                    "bot",
                    flag,
                    value,
                    "--output",
                    "raw",
                    "--config",
                    config,
                ],
                &[],
            )
            .await;
        assert_eq!(run.code, Some(0), "{flag} {value}: {run:?}");
        let requests = entra.requests();
        assert_eq!(requests.len(), before + 1, "{flag} {value}");
        assert_eq!(
            requests[before].form.get("scope").map(String::as_str),
            Some(scope),
            "{flag} {value}"
        );
        let token = run.stdout.trim();
        assert_eq!(Some(&token.to_string()), entra.issued_tokens().last());
        // The token is for that audience.
        let claims = patless::jwt::claims(token).expect("JWT claims");
        assert_eq!(
            claims["aud"].as_str(),
            scope.strip_suffix("/.default"),
            "{flag} {value}"
        );
    }
    assert_eq!(DEFENDER_SCOPE, format!("{DEFENDER_AUDIENCE}/.default"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_a_wrong_secret_fails_with_the_entra_error_and_hint() {
    let entra = FakeEntra::start().await;
    let sb = Sandbox::new();
    let config =
        write_wrong_secret_config(&sb, &entra, &[("/ado", "http://127.0.0.1:9", ADO_SCOPE)]);
    let run = sb
        .run_with_config(&["token", "--profile", "bot"], &config)
        .await;
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.code.is_some(), "killed by a signal: {run:?}");
    assert!(run.stderr.contains("AADSTS7000215"), "{run:?}");
    assert!(run.stderr.contains("hint"), "{run:?}");
    assert!(run.stderr.contains("not its ID"), "{run:?}");
    assert!(run.stdout.trim().is_empty(), "{run:?}");
    assert_no_secret(&run);
    assert!(entra.token_requests() >= 1);
    assert!(entra.issued_tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_for_an_unknown_profile_exits_64() {
    let entra = FakeEntra::start().await;
    let sb = Sandbox::new();
    let config = write_config(&sb, &entra, &[("/ado", "http://127.0.0.1:9", ADO_SCOPE)]);
    let run = sb
        .run_with_config(&["token", "--profile", "ghost"], &config)
        .await;
    assert_eq!(run.code, Some(EXIT_CONFIG), "{run:?}");
    assert!(run.stderr.contains("ghost"), "{run:?}");
    assert_eq!(entra.token_requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// patless check

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_shows_the_token_and_probes_each_route() {
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;
    let sb = Sandbox::new();
    let url = upstream.url();
    let config = write_config(&sb, &entra, &[("/api", &url, ADO_SCOPE)]);
    let run = sb.run_with_config(&["check"], &config).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_no_secret(&run);
    assert!(
        run.stdout.contains(&format!(
            "profile bot: client secret of app {CLIENT_ID} in tenant {TENANT}"
        )),
        "check says where each profile's tokens come from: {}",
        run.stdout
    );
    for needle in [ADO_AUDIENCE, TENANT, CLIENT_ID, "Machine.Read.All", "200"] {
        assert!(
            run.stdout.contains(needle),
            "stdout lacks `{needle}`: {run:?}"
        );
    }
    let token_line = run
        .stdout
        .lines()
        .find(|l| l.contains("profile bot") && l.contains("scope"))
        .unwrap_or_else(|| panic!("no token line for profile bot: {run:?}"));
    assert!(token_line.contains(ADO_SCOPE), "{token_line}");
    let probe_line = run
        .stdout
        .lines()
        .find(|l| l.contains("route /api"))
        .unwrap_or_else(|| panic!("no probe line for /api: {run:?}"));
    assert!(probe_line.contains("200"), "{probe_line}");
    assert!(!probe_line.contains("FAILED"), "{probe_line}");
    // The probe really reached the upstream, with a token it accepted.
    assert_eq!(upstream.accepted(), 1, "{:?}", upstream.requests());
    assert_eq!(upstream.rejected(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_when_the_upstream_rejects_the_token() {
    let entra = FakeEntra::start().await;
    // The upstream wants a Defender token; the route asks for an Azure DevOps one.
    let upstream = FakeUpstream::start(DEFENDER_AUDIENCE).await;
    let sb = Sandbox::new();
    let url = upstream.url();
    let config = write_config(&sb, &entra, &[("/api", &url, ADO_SCOPE)]);
    let run = sb.run_with_config(&["check"], &config).await;
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.code.is_some(), "killed by a signal: {run:?}");
    let probe_line = run
        .stdout
        .lines()
        .find(|l| l.contains("route /api"))
        .unwrap_or_else(|| panic!("no probe line for /api: {run:?}"));
    assert!(probe_line.contains("401"), "{probe_line}");
    assert!(probe_line.contains("FAILED"), "{probe_line}");
    assert_eq!(upstream.rejected(), 1);
    assert_no_secret(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_no_probe_skips_the_probes() {
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(DEFENDER_AUDIENCE).await;
    let sb = Sandbox::new();
    let url = upstream.url();
    let config = write_config(&sb, &entra, &[("/api", &url, ADO_SCOPE)]);
    let run = sb.run_with_config(&["check", "--no-probe"], &config).await;
    // The token is fine and the (rejecting) upstream is never asked.
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains(ADO_AUDIENCE), "{run:?}");
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    assert!(!run.stdout.contains("GET "), "{run:?}");
    assert_eq!(entra.issued_tokens().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_a_wrong_secret_explains_the_entra_error() {
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;
    let sb = Sandbox::new();
    let url = upstream.url();
    let config = write_wrong_secret_config(&sb, &entra, &[("/api", &url, ADO_SCOPE)]);
    let run = sb.run_with_config(&["check"], &config).await;
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.code.is_some(), "killed by a signal: {run:?}");
    let all = run.all();
    assert!(all.contains("FAILED"), "{run:?}");
    assert!(all.contains("AADSTS7000215"), "{run:?}");
    assert!(all.contains("not its ID"), "{run:?}");
    assert_no_secret(&run);
    // Without a token there is nothing to probe with.
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
}

const MDE_AUDIENCE: &str = "https://api.securitycenter.microsoft.com";
const MDE_SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";

/// The line of `check`'s permission report for `path`.
fn permission_row<'a>(run: &'a Run, path: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.trim_start().starts_with(path))
        .unwrap_or_else(|| panic!("no permission row for {path}: {run:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_defender_permission_a_403_lacks() {
    let entra = FakeEntra::start().await;
    // The app was granted a Defender for Endpoint permission, not the Defender XDR one.
    entra.set_roles(&["Machine.Read.All"]);
    let upstream = FakeUpstream::start(DEFENDER_AUDIENCE).await;
    upstream.require_role("/api/incidents", "Incident.Read.All");
    let sb = Sandbox::new();
    let url = upstream.url();
    let config = write_config(&sb, &entra, &[("/defender", &url, DEFENDER_SCOPE)]);
    let run = sb.run_with_config(&["check"], &config).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_no_secret(&run);
    // Before any probe: what the usual endpoints need, against what the token holds.
    let incidents = permission_row(&run, "api/incidents");
    assert!(incidents.contains("Incident.Read.All"), "{incidents}");
    assert!(incidents.contains("MISSING"), "{incidents}");
    let hunting = permission_row(&run, "api/advancedhunting");
    assert!(hunting.contains("AdvancedHunting.Read.All"), "{hunting}");
    assert!(hunting.contains("MISSING"), "{hunting}");
    // The probe asks for incidents, gets the 403, and says what is missing and where to grant it.
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].path_and_query, "/api/incidents?$top=1");
    let lines: Vec<&str> = run.stdout.lines().collect();
    let probe = lines
        .iter()
        .position(|l| l.contains("route /defender") && l.contains("GET"))
        .unwrap_or_else(|| panic!("no probe line: {run:?}"));
    assert!(lines[probe].contains("403"), "{}", lines[probe]);
    let hint = lines.get(probe + 1).copied().unwrap_or_default();
    assert!(
        hint.contains("lacks Incident.Read.All or Incident.ReadWrite.All"),
        "{hint}"
    );
    assert!(hint.contains("roles Machine.Read.All"), "{hint}");
    assert!(hint.contains("Microsoft Threat Protection"), "{hint}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_when_the_token_holds_the_defender_roles() {
    let entra = FakeEntra::start().await;
    entra.set_roles(&["Incident.Read.All", "AdvancedHunting.Read.All"]);
    let xdr = FakeUpstream::start(DEFENDER_AUDIENCE).await;
    xdr.require_role("/api/incidents", "Incident.Read.All");
    let mde = FakeUpstream::start(MDE_AUDIENCE).await;
    mde.require_role("/api/machines", "Machine.Read.All");
    let sb = Sandbox::new();
    let (xdr_url, mde_url) = (xdr.url(), mde.url());
    let config = write_config(
        &sb,
        &entra,
        &[
            ("/defender", &xdr_url, DEFENDER_SCOPE),
            ("/mde", &mde_url, MDE_SCOPE),
        ],
    );
    let run = sb.run_with_config(&["check"], &config).await;
    assert_no_secret(&run);
    assert!(
        permission_row(&run, "api/incidents").contains("ok, has Incident.Read.All"),
        "{run:?}"
    );
    assert!(
        permission_row(&run, "api/advancedhunting").contains("ok, has AdvancedHunting.Read.All"),
        "{run:?}"
    );
    assert!(
        permission_row(&run, "api/machines ").contains("MISSING"),
        "{run:?}"
    );
    assert_eq!(xdr.accepted(), 1, "{:?}", xdr.requests());
    // Defender for Endpoint refuses: the route fails, and the hint names Machine.Read.All.
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(mde.requests()[0].path_and_query, "/api/machines?$top=1");
    let all = run.all();
    assert!(
        all.contains("lacks Machine.Read.All or Machine.ReadWrite.All"),
        "{run:?}"
    );
    assert!(all.contains("WindowsDefenderATP"), "{run:?}");
    let xdr_probe = run
        .stdout
        .lines()
        .find(|l| l.contains("route /defender") && l.contains("GET"))
        .unwrap_or_else(|| panic!("no probe line: {run:?}"));
    assert!(
        xdr_probe.contains("200") && xdr_probe.contains("OK"),
        "{xdr_probe}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_explains_azure_devops_permissions_come_from_membership() {
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;
    upstream.require_role("/contoso/_apis/connectionData", "never-granted");
    let sb = Sandbox::new();
    let url = format!("{}/contoso", upstream.url());
    let config = write_config(&sb, &entra, &[("/ado", &url, ADO_SCOPE)]);
    let run = sb.run_with_config(&["check"], &config).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout.contains("Azure DevOps: the token grants"),
        "{run:?}"
    );
    assert!(
        permission_row(&run, "_git").contains("Code: Read"),
        "{run:?}"
    );
    let all = run.all();
    assert!(all.contains("403"), "{run:?}");
    assert!(all.contains("Organization settings → Users"), "{run:?}");
    assert_no_secret(&run);
}

// ---------------------------------------------------------------------------------------------
// --help and serve

#[test]
fn help_lists_the_subcommands() {
    let sb = Sandbox::new();
    let run = sb.run(&["--help"], &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let commands: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for c in ["serve", "config", "token", "check", "git-credential"] {
        assert!(
            commands.contains(&c),
            "`{c}` not in {commands:?}:\n{}",
            run.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subcommand_serves_until_sigterm() {
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;
    let sb = Sandbox::new();
    let url = upstream.url();
    let text = support::patless::config(&entra, &[("/api", &url, ADO_SCOPE)], "", "");
    let config = sb.write("patless.toml", &text);
    let mut child =
        PatlessProcess::spawn_args(sb.path(), &["--config", config.to_str().unwrap()]).await;

    let within = Duration::from_secs(5);
    assert!(
        poll_status(&child.admin_url("/healthz"), 200, within).await,
        "/healthz never answered 200; log:\n{}",
        child.log()
    );
    assert!(
        poll_status(&child.admin_url("/readyz"), 200, within).await,
        "/readyz never turned 200; log:\n{}",
        child.log()
    );
    // It really proxies.
    let resp = support::http_client()
        .get(child.url("/api/echo"))
        .send()
        .await
        .expect("request through the proxy");
    assert_eq!(resp.status(), 200, "log:\n{}", child.log());
    assert_eq!(upstream.accepted(), 1);

    child.signal("TERM");
    assert_eq!(
        child.wait(within).await,
        Some(Some(0)),
        "patless did not exit 0 within 5s of SIGTERM; log:\n{}",
        child.log()
    );
    assert!(!child.log().contains(CLIENT_SECRET));
}
