//! Configuration reload (SIGHUP, `server.watch_config`): the new config is loaded and validated
//! like at start-up and swapped in atomically; unchanged profiles keep their credentials and
//! tokens, changed and removed ones stop refreshing; a bad config keeps the running one and says
//! why; listener changes are refused while the rest applies; requests in flight finish on the old
//! config. Reloads are triggered through a handle here, except in the one test that sends a real
//! SIGHUP to the binary.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use patless::app::reload::ReloadError;
use patless::env::MapEnv;
use serde_json::Value;
use tempfile::TempDir;

use crate::support;
use crate::support::entra::{
    FakeEntra, ADO_AUDIENCE, CLIENT_ID, CLIENT_SECRET, DEFENDER_AUDIENCE, TENANT,
};
use crate::support::patless::{
    config, free_port, metric, poll_status, route_toml, server_toml, Gate, Patless, PatlessProcess,
    ADO, DEFENDER,
};
use crate::support::upstream::{FakeUpstream, Identity};

const SUCCESS: &str = "patless_config_reloads_total{result=\"success\"}";
const FAILURE: &str = "patless_config_reloads_total{result=\"failure\"}";

/// A `client_secret` profile of the fake Entra's app, at `entra`.
fn profile(name: &str, entra: &FakeEntra) -> String {
    app_profile(name, entra, CLIENT_ID)
}

/// A `client_secret` profile of the app `client_id` (registered at `entra` unless it is the
/// fake's own app), so that its tokens say which profile they are.
fn app_profile(name: &str, entra: &FakeEntra, client_id: &str) -> String {
    if client_id != CLIENT_ID {
        entra.register_app(TENANT, client_id);
    }
    format!(
        "\n[profiles.{name}]\nkind = \"client_secret\"\nauthority_host = \"{}\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{client_id}\"\nclient_secret = \"{CLIENT_SECRET}\"\n",
        entra.authority()
    )
}

/// The apps of the profiles `b` and `c` (`a` is the fake Entra's own).
const CLIENT_B: &str = "bbbbbbbb-1111-4111-8111-bbbbbbbbbbbb";
const CLIENT_C: &str = "cccccccc-1111-4111-8111-cccccccccccc";

/// Replaces the file at once (write beside it, rename over it), as editors and Kubernetes do.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

async fn get(url: String) -> (u16, Value) {
    let resp = support::http_client()
        .get(url)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The `Authorization` the upstream saw on its last request.
fn last_auth(up: &FakeUpstream) -> String {
    let reqs = up.requests();
    let rec = reqs.last().expect("a request arrived");
    assert!(rec.token_valid, "{:?}", rec.token_error);
    rec.headers["authorization"]
        .to_str()
        .expect("ascii")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_profiles_keep_their_tokens_changed_and_removed_ones_stop() {
    // kept: profile `a` at entra_a. changed: `b` moves from entra_b to entra_c. removed: `c`.
    let (entra_a, entra_b, entra_c) = (
        FakeEntra::start().await,
        FakeEntra::start().await,
        FakeEntra::start().await,
    );
    // Short tokens at entra_b: were the refreshers of `b` and `c` left running, they would ask
    // again 2 s after their first token.
    entra_b.set_lifetime(4);
    // Each profile its own app, each upstream the one profile routed to it: a route served
    // another profile's token would be refused.
    let ado = FakeUpstream::start(ADO_AUDIENCE).await;
    let defender = FakeUpstream::start(DEFENDER_AUDIENCE).await;
    defender.expect(Identity::app(CLIENT_B, TENANT));
    let ado_c = FakeUpstream::start(ADO_AUDIENCE).await;
    ado_c.expect(Identity::app(CLIENT_C, TENANT));
    let defender_a = FakeUpstream::start(DEFENDER_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("patless.toml");
    let before = format!(
        "{}{}{}{}{}{}{}",
        server_toml("shutdown_delay = \"0s\""),
        profile("a", &entra_a),
        app_profile("b", &entra_b, CLIENT_B),
        app_profile("c", &entra_b, CLIENT_C),
        route_toml("/one", &ado.url(), "a", ADO),
        route_toml("/two", &defender.url(), "b", DEFENDER),
        route_toml("/gone", &ado_c.url(), "c", ADO),
    );
    write(&path, &before);
    let started = Instant::now();
    let p = Patless::start_file(&path, MapEnv::default(), Duration::from_secs(1)).await;
    p.wait_ready().await;
    assert_eq!((entra_a.token_requests(), entra_b.token_requests()), (1, 2));
    let (status, _) = get(p.url("/one/x")).await;
    assert_eq!(status, 200);
    let token_one = last_auth(&ado);

    let old = p.reloader().current().expect("running");
    let entry_of = |app: &patless::App, prefix: &str| {
        app.proxy
            .router()
            .routes()
            .iter()
            .find(|r| &*r.label == prefix)
            .map(|r| Arc::clone(&r.entry))
    };
    let old_entry = entry_of(&old, "/one").expect("route /one");
    let old_credential = Arc::clone(old.cache.credential("a").expect("a"));
    // Held to the end, as a long request in flight would: the old app outlives the reload, and
    // its retired refreshers must stop anyway.

    let after = format!(
        "{}{}{}{}{}{}",
        server_toml("shutdown_delay = \"0s\""),
        profile("a", &entra_a),
        app_profile("b", &entra_c, CLIENT_B),
        route_toml("/one", &ado.url(), "a", ADO),
        route_toml("/two", &defender.url(), "b", DEFENDER),
        // New: a new entry of the kept profile, which must start refreshing.
        route_toml("/three", &defender_a.url(), "a", DEFENDER),
    );
    write(&path, &after);
    let report = p.reloader().reload().await.expect("reload");
    assert_eq!(report.profiles.kept, ["a"]);
    assert_eq!(report.profiles.rebuilt, ["b"]);
    assert_eq!(report.profiles.removed, ["c"]);
    assert!(report.refused.is_empty(), "{:?}", report.refused);

    // The same objects carry on.
    let new = p.reloader().current().expect("running");
    let new_entry = entry_of(&new, "/one").expect("route /one");
    assert!(
        Arc::ptr_eq(&old_entry, &new_entry),
        "a kept entry is reused"
    );
    assert!(Arc::ptr_eq(
        &old_credential,
        new.cache.credential("a").expect("a")
    ));
    assert!(entry_of(&new, "/gone").is_none());
    drop(new);

    // New entries refresh on their own: /readyz turns green again without a request.
    p.wait_ready().await;
    let (status, _) = get(p.url("/one/y")).await;
    assert_eq!(status, 200);
    assert_eq!(
        last_auth(&ado),
        token_one,
        "the kept profile's token is reused"
    );
    let (status, _) = get(p.url("/two/y")).await;
    assert_eq!(status, 200);
    let token_two = last_auth(&defender);
    assert!(
        entra_c
            .issued_tokens()
            .iter()
            .any(|t| token_two == format!("Bearer {t}")),
        "the changed profile's token comes from its new authority"
    );
    let (status, _) = get(p.url("/three/y")).await;
    assert_eq!(status, 200);
    last_auth(&defender_a);
    let (status, body) = get(p.url("/gone/y")).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("no_route")));

    // Past the moment entra_b's 4-s tokens would have been refreshed.
    let wait = Duration::from_millis(3000).saturating_sub(started.elapsed());
    tokio::time::sleep(wait).await;
    assert_eq!(
        entra_a.token_requests(),
        2,
        "entra_a: the start-up token of /one, then one for the new route /three; no more"
    );
    assert_eq!(
        entra_b.token_requests(),
        2,
        "the changed and removed profiles' refreshers stopped"
    );
    assert_eq!(entra_c.token_requests(), 1);
    let m = p.metrics().await;
    assert_eq!(metric(&m, SUCCESS), 1.0, "{m}");
    assert_eq!(metric(&m, FAILURE), 0.0, "{m}");
    assert!(
        !m.contains("profile=\"c\",scope"),
        "the removed profile's expiry gauge is gone:\n{m}"
    );
    drop(old);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_keeps_the_running_one_and_says_why() {
    support::capture::init();
    let entra = FakeEntra::start().await;
    // Tokens of 2 s: the kept entries must go on refreshing after the failed reloads (a reload
    // that failed after taking them over must not have stopped them).
    entra.set_lifetime(2);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("patless.toml");
    let good = config(
        &entra,
        &[("/one", &up.url(), ADO)],
        "token_wait_timeout = \"1s\"",
        "",
    );
    write(&path, &good);
    let p = Patless::start_file(&path, MapEnv::default(), Duration::from_secs(1)).await;
    p.wait_ready().await;

    // Two errors at once, each naming its key.
    let invalid = format!(
        "{good}{}",
        "\n[[routes]]\nprefix = \"/two\"\nupstream = \"https://dev.azure.com\"\nprofile = \"nobody\"\n"
    )
    .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"soon\"");
    write(&path, &invalid);
    let err = p.reloader().reload().await.expect_err("invalid");
    let ReloadError::Invalid(message) = &err else {
        panic!("{err:?}")
    };
    // The message start-up prints for the same file.
    let at_start = patless::config::load(Some(&path), &MapEnv::default())
        .expect_err("invalid at start-up too")
        .to_string();
    assert_eq!(message, &at_start);
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("server.shutdown_grace"), "{message}");
    assert!(message.contains("routes[1].profile"), "{message}");
    assert!(
        support::capture::logs().contains(&at_start),
        "the reason is logged"
    );

    // Not even TOML.
    write(&path, "[server\nlisten = ");
    let err = p.reloader().reload().await.expect_err("unparsable");
    assert!(err.to_string().contains("invalid configuration"), "{err}");

    // Valid, but cannot be built (the inbound token's variable is not set): the adopted entries
    // go back to the running app, unharmed.
    write(
        &path,
        &good.replace(
            "token_wait_timeout = \"1s\"",
            "token_wait_timeout = \"1s\"\ninbound_token = { env = \"PATLESS_TEST_NO_SUCH_VAR\" }",
        ),
    );
    let err = p.reloader().reload().await.expect_err("cannot build");
    assert!(
        err.to_string().contains("PATLESS_TEST_NO_SUCH_VAR"),
        "{err}"
    );

    // Still the old config, still refreshing: past two token lifetimes, requests get fresh tokens.
    let requests_before = entra.token_requests();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = get(p.url("/one/x")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        entra.token_requests() >= requests_before + 2,
        "the kept entry went on refreshing: {} → {}",
        requests_before,
        entra.token_requests()
    );
    let (status, _) = get(p.url("/two/x")).await;
    assert_eq!(status, 404);
    let m = p.metrics().await;
    assert_eq!(metric(&m, FAILURE), 3.0, "{m}");
    assert_eq!(metric(&m, SUCCESS), 0.0, "{m}");

    // Fixed: applies.
    write(
        &path,
        &format!("{good}{}", route_toml("/two", &up.url(), "bot", ADO)),
    );
    p.reloader().reload().await.expect("reload");
    let (status, _) = get(p.url("/two/x")).await;
    assert_eq!(status, 200);
    let m = p.metrics().await;
    assert_eq!(metric(&m, SUCCESS), 1.0, "{m}");
    assert_eq!(metric(&m, FAILURE), 3.0, "{m}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_reloads_when_the_file_changes() {
    support::capture::init();
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("patless.toml");
    let base = config(
        &entra,
        &[("/one", &up.url(), ADO)],
        "watch_config = true",
        "",
    );
    write(&path, &base);
    let p = Patless::start_file(&path, MapEnv::default(), Duration::from_millis(100)).await;
    p.wait_ready().await;
    assert!(poll_status(&p.url("/two/x"), 404, Duration::from_secs(1)).await);

    write(
        &path,
        &format!("{base}{}", route_toml("/two", &up.url(), "bot", ADO)),
    );
    assert!(
        poll_status(&p.url("/two/x"), 200, Duration::from_secs(5)).await,
        "the change was picked up"
    );

    // A broken file is refused once, not every poll.
    write(&path, "[server\n");
    let started = Instant::now();
    while metric(&p.metrics().await, FAILURE) < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no reload; log:\n{}",
            support::capture::logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = p.metrics().await;
    assert_eq!(metric(&m, FAILURE), 1.0, "{m}");
    assert_eq!(metric(&m, SUCCESS), 1.0, "{m}");
    let (status, _) = get(p.url("/two/x")).await;
    assert_eq!(status, 200, "the running config stays");

    // Turning watching off is a change like any other; after it, edits wait for SIGHUP.
    let off = base.replace("watch_config = true", "watch_config = false");
    write(
        &path,
        &format!("{off}{}", route_toml("/three", &up.url(), "bot", ADO)),
    );
    assert!(poll_status(&p.url("/three/x"), 200, Duration::from_secs(5)).await);
    write(
        &path,
        &format!("{off}{}", route_toml("/four", &up.url(), "bot", ADO)),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _) = get(p.url("/four/x")).await;
    assert_eq!(status, 404, "not watching any more");
    p.reloader().reload().await.expect("reload");
    let (status, _) = get(p.url("/four/x")).await;
    assert_eq!(status, 200);
    // One token for the whole test: the profile never changed.
    assert_eq!(entra.token_requests(), 1);
    p.stop().await;
}

/// The same profile name, the same authority and audience, but another app in another tenant:
/// the profile is rebuilt and the route's next token is the new app's (a kept token of the old
/// app would be refused by the upstream, which now expects only the new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_switched_to_another_app_and_tenant_serves_the_new_apps_token() {
    const OTHER_TENANT: &str = "dddddddd-1111-4111-8111-dddddddddddd";
    let entra = FakeEntra::start().await;
    let new_app = entra.register_app(OTHER_TENANT, CLIENT_B);
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("patless.toml");
    let base = config(&entra, &[("/one", &up.url(), ADO)], "", "");
    write(&path, &base);
    let p = Patless::start_file(&path, MapEnv::default(), Duration::from_secs(60)).await;
    let (status, _) = get(p.url("/one/before")).await;
    assert_eq!(status, 200);

    up.expect(new_app);
    let switched = base
        .replace(
            &format!("tenant_id = \"{TENANT}\""),
            &format!("tenant_id = \"{OTHER_TENANT}\""),
        )
        .replace(
            &format!("client_id = \"{CLIENT_ID}\""),
            &format!("client_id = \"{CLIENT_B}\""),
        );
    assert_ne!(switched, base);
    write(&path, &switched);
    let report = p.reloader().reload().await.expect("reload");
    assert_eq!(report.profiles.rebuilt, ["bot"]);
    let (status, body) = get(p.url("/one/after")).await;
    assert_eq!(status, 200, "{body}");
    let last = up.requests().pop().expect("a request arrived");
    let claims = last.claims.expect("a valid token");
    assert_eq!(
        (claims["appid"].as_str(), claims["tid"].as_str()),
        (Some(CLIENT_B), Some(OTHER_TENANT))
    );
    assert_eq!(up.rejected(), 0, "{:?}", up.counts().invalid_reasons);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_changes_are_refused_and_the_rest_applies() {
    support::capture::init();
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("patless.toml");
    let base = config(&entra, &[("/one", &up.url(), ADO)], "", "");
    write(&path, &base);
    let p = Patless::start_file(&path, MapEnv::default(), Duration::from_secs(1)).await;
    p.wait_ready().await;

    let elsewhere = free_port();
    let moved = base
        .replace(
            "\nlisten = \"127.0.0.1:0\"\n",
            &format!("\nlisten = \"127.0.0.1:{elsewhere}\"\n"),
        )
        .replace(
            "\nadmin_listen = \"127.0.0.1:0\"\n",
            "\nadmin_listen = \"\"\n",
        )
        .replace(
            "shutdown_grace = \"5s\"",
            "shutdown_grace = \"5s\"\nmax_connections = 7",
        );
    write(
        &path,
        &format!("{moved}{}", route_toml("/two", &up.url(), "bot", ADO)),
    );
    let report = p.reloader().reload().await.expect("reload");
    assert_eq!(
        report.refused,
        [
            "server.listen",
            "server.admin_listen",
            "server.max_connections"
        ]
    );
    let logs = support::capture::logs();
    assert!(
        logs.contains(&format!(
            "server.listen changed from 127.0.0.1:0 to 127.0.0.1:{elsewhere}, but listeners are not rebound"
        )),
        "{logs}"
    );
    // The rest applied, on the listeners that were there.
    let (status, _) = get(p.url("/two/x")).await;
    assert_eq!(status, 200);
    assert!(poll_status(&p.admin_url("/healthz"), 200, Duration::from_secs(1)).await);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", elsewhere)).is_err(),
        "nothing was bound at the new address"
    );
    let running = p.reloader().current().expect("running");
    assert_eq!(running.config.server.listen.to_string(), "127.0.0.1:0");
    assert!(running.config.server.admin_listen.is_some());
    assert_eq!(running.config.server.limits.max_connections, 1024);
    drop(running);
    assert_eq!(metric(&p.metrics().await, SUCCESS), 1.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_on_the_old_config() {
    let entra = FakeEntra::start().await;
    let old_up = Gate::start("old").await;
    let new_up = Gate::start("new").await;
    new_up.open(100);
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("patless.toml");
    write(
        &path,
        &config(&entra, &[("/slow", &old_up.url(), ADO)], "", ""),
    );
    let p = Patless::start_file(&path, MapEnv::default(), Duration::from_secs(1)).await;
    p.wait_ready().await;

    let in_flight = tokio::spawn(get(p.url("/slow/x")));
    old_up.wait_arrived(1).await;
    write(
        &path,
        &config(&entra, &[("/slow", &new_up.url(), ADO)], "", ""),
    );
    p.reloader().reload().await.expect("reload");
    // New requests see the new config at once…
    let (status, body) = get(p.url("/slow/y")).await;
    assert_eq!((status, body["from"].as_str()), (200, Some("new")));
    // …while the one in flight finishes where it started.
    old_up.open(1);
    let (status, body) = in_flight.await.expect("join");
    assert_eq!((status, body["from"].as_str()), (200, Some("old")));
    assert_eq!(old_up.arrived(), 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_binary() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("patless.toml");
    let base = config(&entra, &[("/one", &up.url(), ADO)], "", "");
    write(&path, &base);
    let mut child = PatlessProcess::spawn(dir.path(), &path).await;
    child.wait_ready().await;
    let (status, _) = get(child.url("/two/x")).await;
    assert_eq!(status, 404);

    write(
        &path,
        &format!("{base}{}", route_toml("/two", &up.url(), "bot", ADO)),
    );
    child.signal("HUP");
    assert!(
        poll_status(&child.url("/two/x"), 200, Duration::from_secs(5)).await,
        "SIGHUP did not reload; log:\n{}",
        child.log()
    );
    assert!(child.running(), "SIGHUP must not end patless");
    let m = support::http_client()
        .get(child.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert_eq!(metric(&m, SUCCESS), 1.0, "{m}");
    assert_eq!(
        entra.token_requests(),
        1,
        "the unchanged profile kept its token"
    );
    let log = child.log();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(!log.contains(CLIENT_SECRET));

    child.signal("TERM");
    assert_eq!(
        child.wait(Duration::from_secs(5)).await,
        Some(Some(0)),
        "log:\n{}",
        child.log()
    );
}
