//! The refresh-token store (docs/credentials.md) and the credential that serves tokens from it:
//! files 0600 in a 0700 directory, written atomically; files or directories others can reach are
//! refused with the `chmod` that fixes them; the rotated refresh token survives a restart; a login
//! written by another process is never overwritten by an older one; logout forgets; no token in
//! `Debug` or in errors.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use patless::credentials::{Credential, EntraClient, ErrorClass, RefreshTokenCredential};
use patless::env::{Env, MapEnv};
use patless::login::{logout, LoginError};
use patless::secret::Secret;
use patless::store::{SaveOutcome, StoreError, StoredLogin, TokenStore};
use serde_json::Value;
use tempfile::TempDir;

use crate::support;
use crate::support::entra::{
    FakeEntra, Fault, RefreshTokenStatus, ADO_AUDIENCE, ADO_SCOPE, CLIENT_ID, DEFENDER_AUDIENCE,
    DEFENDER_SCOPE, PUBLIC_CLIENT_ID, TENANT,
};
use crate::support::patless::load_config;

const RT: &str = "1.AXoA-very-secret-refresh-token-value";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

fn a_login(rt: &str) -> StoredLogin {
    StoredLogin::new(
        Secret::new(rt),
        PUBLIC_CLIENT_ID,
        TENANT,
        "https://login.microsoftonline.com",
        Some("alice@contoso.example".into()),
    )
}

fn store_in(dir: &TempDir) -> (TokenStore, PathBuf) {
    let state = dir.path().join("nested/state");
    (TokenStore::new(state.clone()), state)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn saves_0600_files_in_a_0700_directory_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, state) = store_in(&dir);
    assert!(store.load("team").expect("absent is fine").is_none());
    let path = store.save("team", &a_login("rt-1")).expect("save");
    assert_eq!(path, state.join("team.json"));
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&path), 0o600);
    // Replaced, not appended; no temporary file left behind.
    store.save("team", &a_login("rt-2")).expect("save again");
    store
        .save("other", &a_login("rt-3"))
        .expect("another profile");
    assert_eq!(files_in(&state), ["other.json", "team.json"]);
    assert_eq!(mode(&path), 0o600);
    let loaded = store.load("team").expect("load").expect("present");
    assert_eq!(loaded.refresh_token.expose(), "rt-2");
    assert_eq!(loaded.client_id, PUBLIC_CLIENT_ID);
    assert_eq!(loaded.tenant_id, TENANT);
    assert_eq!(loaded.account.as_deref(), Some("alice@contoso.example"));
    assert!(loaded.saved_at.ends_with('Z'), "{}", loaded.saved_at);
}

#[test]
fn a_file_others_can_read_or_write_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, state) = store_in(&dir);
    let path = store.save("team", &a_login(RT)).expect("save");
    for m in [0o640, 0o604, 0o620, 0o602] {
        chmod(&path, m);
        let err = store.load("team").expect_err("refused");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Permissions { .. }), "{msg}");
        assert!(
            msg.contains(&format!("chmod 600 {}", path.display())),
            "{msg}"
        );
        assert!(!msg.contains(RT), "{msg}");
    }
    chmod(&path, 0o600);
    assert!(store.load("team").expect("fixed").is_some());
    // 0400 is fine too: stricter than asked.
    chmod(&path, 0o400);
    assert!(store.load("team").expect("read-only is fine").is_some());
    chmod(&path, 0o600);
    let _ = state;
}

#[test]
fn a_directory_others_can_reach_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, state) = store_in(&dir);
    store.save("team", &a_login(RT)).expect("save");
    chmod(&state, 0o750);
    let msg = store.load("team").expect_err("refused").to_string();
    assert!(
        msg.contains(&format!("chmod 700 {}", state.display())),
        "{msg}"
    );
    // Nor is anything written into it.
    let msg = store
        .save("team", &a_login("rt-new"))
        .expect_err("refused")
        .to_string();
    assert!(msg.contains("chmod 700"), "{msg}");
    chmod(&state, 0o700);
    assert_eq!(
        store
            .load("team")
            .expect("fixed")
            .expect("present")
            .refresh_token
            .expose(),
        RT
    );

    // An existing world-readable directory is not adopted either.
    let loose = dir.path().join("loose");
    std::fs::create_dir(&loose).expect("mkdir");
    chmod(&loose, 0o755);
    let msg = TokenStore::new(loose)
        .save("team", &a_login(RT))
        .expect_err("refused")
        .to_string();
    assert!(msg.contains("chmod 700"), "{msg}");
}

#[test]
fn a_symlinked_token_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, state) = store_in(&dir);
    store.save("real", &a_login(RT)).expect("save");
    std::os::unix::fs::symlink(state.join("real.json"), state.join("team.json")).expect("symlink");
    let msg = store.load("team").expect_err("refused").to_string();
    assert!(msg.contains("not a regular file"), "{msg}");
}

#[test]
fn profile_names_cannot_escape_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = store_in(&dir);
    for bad in ["../evil", "a/b", "..", ".hidden", ""] {
        assert!(
            matches!(
                store.save(bad, &a_login(RT)),
                Err(StoreError::InvalidProfile(_))
            ),
            "{bad:?}"
        );
        assert!(store.load(bad).is_err(), "{bad:?}");
        assert!(store.delete(bad).is_err(), "{bad:?}");
    }
    assert!(!dir.path().join("nested/evil.json").exists());
}

#[test]
fn nothing_from_the_store_shows_in_debug_or_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, state) = store_in(&dir);
    let login = a_login(RT);
    assert!(!format!("{login:?}").contains(RT));
    store.save("team", &login).expect("save");
    assert!(!format!("{store:?}").contains(RT));
    let loaded = store.load("team").expect("load").expect("present");
    assert!(!format!("{loaded:?}").contains(RT));

    // A damaged file whose values the JSON parser would quote.
    let path = state.join("team.json");
    std::fs::write(
        &path,
        format!(r#"{{"version":"{RT}","profile":"team","refresh_token":{{"x":"{RT}"}}}}"#),
    )
    .expect("write");
    chmod(&path, 0o600);
    let err = store.load("team").expect_err("corrupt");
    assert!(matches!(err, StoreError::Corrupt { .. }));
    assert!(!err.to_string().contains(RT), "{err}");
    assert!(!format!("{err:?}").contains(RT), "{err:?}");
    std::fs::write(&path, "{\"refresh_tok").expect("write");
    let err = store.load("team").expect_err("truncated").to_string();
    assert!(err.contains("truncated"), "{err}");

    let cred = RefreshTokenCredential::new(
        entra_client(),
        "https://login.microsoftonline.com".parse().expect("url"),
        TENANT.into(),
        PUBLIC_CLIENT_ID.into(),
        "team".into(),
        store,
    );
    assert!(!format!("{cred:?}").contains(RT));
}

#[test]
fn save_if_unchanged_never_replaces_a_newer_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = store_in(&dir);
    store
        .save("team", &a_login("from-another-login"))
        .expect("save");
    let outcome = store
        .save_if_unchanged("team", &Secret::new("what-I-read"), &a_login("my-rotation"))
        .expect("no error");
    assert_eq!(outcome, SaveOutcome::Superseded);
    let on_disk = store.load("team").expect("load").expect("present");
    assert_eq!(on_disk.refresh_token.expose(), "from-another-login");
    let outcome = store
        .save_if_unchanged(
            "team",
            &Secret::new("from-another-login"),
            &a_login("rotated"),
        )
        .expect("no error");
    assert_eq!(outcome, SaveOutcome::Saved);
    // After a logout, a rotation does not bring the login back.
    assert!(store.delete("team").expect("delete"));
    let outcome = store
        .save_if_unchanged("team", &Secret::new("rotated"), &a_login("rotated-again"))
        .expect("no error");
    assert_eq!(outcome, SaveOutcome::Superseded);
    assert!(store.load("team").expect("load").is_none());
}

// ---- the credential -------------------------------------------------------------------------

fn entra_client() -> EntraClient {
    support::install_crypto_provider();
    EntraClient::new(
        patless::tls::entra_http_client(None, Duration::from_secs(10), None).expect("http client"),
    )
}

fn credential(entra: &FakeEntra, store: TokenStore, client_id: &str) -> RefreshTokenCredential {
    RefreshTokenCredential::new(
        entra_client(),
        entra.authority().parse().expect("url"),
        TENANT.into(),
        client_id.into(),
        "team".into(),
        store,
    )
}

/// Stores a fresh session of the fake's user as the login of `team`; returns its refresh token.
fn seed(entra: &FakeEntra, store: &TokenStore) -> String {
    let rt = entra.sign_in_user();
    store
        .save(
            "team",
            &StoredLogin::new(
                Secret::new(rt.clone()),
                PUBLIC_CLIENT_ID,
                TENANT,
                entra.authority(),
                Some("alice@contoso.example".into()),
            ),
        )
        .expect("seed");
    rt
}

fn audience(token: &Secret) -> Value {
    use base64::Engine as _;
    let payload = token.expose().split('.').nth(1).expect("JWT");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("b64"),
    )
    .expect("json");
    claims["aud"].clone()
}

fn on_disk(store: &TokenStore) -> String {
    store
        .load("team")
        .expect("load")
        .expect("present")
        .refresh_token
        .expose()
        .to_string()
}

#[tokio::test]
async fn the_rotated_refresh_token_survives_a_restart() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, state) = store_in(&dir);
    let rt1 = seed(&entra, &store);

    let first = credential(&entra, store, PUBLIC_CLIENT_ID);
    let t = first.acquire(ADO_SCOPE, None).await.expect("token");
    assert_eq!(audience(&t.token), ADO_AUDIENCE);
    drop(first);
    assert_eq!(
        entra.refresh_token_status(&rt1),
        Some(RefreshTokenStatus::Redeemed)
    );
    let rt2 = entra.latest_refresh_token().expect("rotated");

    // A new process: a new store and credential over the same directory.
    let store = TokenStore::new(state);
    assert_eq!(on_disk(&store), rt2);
    let second = credential(&entra, store.clone(), PUBLIC_CLIENT_ID);
    let t = second.acquire(DEFENDER_SCOPE, None).await.expect("token");
    assert_eq!(audience(&t.token), DEFENDER_AUDIENCE);
    let grants = entra.grant_requests("refresh_token");
    assert_eq!(grants.len(), 2);
    assert_eq!(grants[0].form["refresh_token"], rt1);
    assert_eq!(grants[1].form["refresh_token"], rt2);
    assert_eq!(
        grants[1].form["scope"],
        format!("{DEFENDER_SCOPE} offline_access")
    );
    assert_eq!(on_disk(&store), entra.latest_refresh_token().expect("rt3"));
    // The account from the login is kept through rotations (no id token on refresh).
    assert_eq!(
        store
            .load("team")
            .expect("load")
            .expect("present")
            .account
            .as_deref(),
        Some("alice@contoso.example")
    );
}

#[tokio::test]
async fn concurrent_scopes_take_turns_with_the_rotating_token() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = store_in(&dir);
    seed(&entra, &store);
    let cred = credential(&entra, store.clone(), PUBLIC_CLIENT_ID);
    let (a, b) = tokio::join!(
        cred.acquire(ADO_SCOPE, None),
        cred.acquire(DEFENDER_SCOPE, None)
    );
    a.expect("ADO token");
    b.expect("Defender token");
    assert_eq!(
        entra.grant_requests("refresh_token").len(),
        2,
        "no failed redemption"
    );
    assert_eq!(
        on_disk(&store),
        entra.latest_refresh_token().expect("newest")
    );
}

#[tokio::test]
async fn claims_are_passed_on() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = store_in(&dir);
    seed(&entra, &store);
    let cred = credential(&entra, store, PUBLIC_CLIENT_ID);
    let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
    cred.acquire(ADO_SCOPE, Some(claims)).await.expect("token");
    assert_eq!(
        entra.grant_requests("refresh_token")[0].form["claims"],
        claims
    );
}

#[tokio::test]
async fn no_stored_login_means_interaction_required() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = store_in(&dir);
    let err = credential(&entra, store, PUBLIC_CLIENT_ID)
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("nothing stored");
    assert_eq!(err.class, ErrorClass::InteractionRequired);
    assert_eq!(
        err.message,
        "no stored login for profile team: run `patless login --profile team`"
    );
    assert_eq!(entra.token_requests(), 0);
}

#[tokio::test]
async fn revoked_and_expired_sessions_need_a_new_login() {
    for (end, code) in [("revoke", 70008), ("expire", 700082)] {
        let entra = FakeEntra::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = store_in(&dir);
        let rt = seed(&entra, &store);
        match end {
            "revoke" => entra.revoke_refresh_tokens(),
            _ => entra.expire_refresh_tokens(),
        }
        let err = credential(&entra, store.clone(), PUBLIC_CLIENT_ID)
            .acquire(ADO_SCOPE, None)
            .await
            .expect_err("refused");
        assert_eq!(err.class, ErrorClass::InteractionRequired, "{end}");
        assert!(err.codes.contains(&code), "{end}: {:?}", err.codes);
        assert!(
            err.message.contains(&format!("AADSTS{code}")),
            "{}",
            err.message
        );
        assert!(
            err.message.ends_with("run `patless login --profile team`"),
            "{}",
            err.message
        );
        assert!(!err.message.contains(&rt), "{}", err.message);
        // The login stays (the person may want to see who it was); only `login` replaces it.
        assert_eq!(on_disk(&store), rt);
    }
}

#[tokio::test]
async fn a_login_for_another_app_is_not_used() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = store_in(&dir);
    seed(&entra, &store);
    let err = credential(&entra, store, CLIENT_ID)
        .acquire(ADO_SCOPE, None)
        .await
        .expect_err("bound to another client");
    assert_eq!(err.class, ErrorClass::InteractionRequired);
    assert!(err.message.contains(PUBLIC_CLIENT_ID), "{}", err.message);
    assert!(
        err.message.contains("run `patless login --profile team`"),
        "{}",
        err.message
    );
    assert_eq!(entra.token_requests(), 0);
}

#[tokio::test]
async fn a_login_written_meanwhile_is_not_overwritten() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = store_in(&dir);
    let old = seed(&entra, &store);
    // The redemption of the old token is slow; meanwhile another process logs in.
    entra.push_fault(Fault::Delay(Duration::from_millis(400)));
    let cred = credential(&entra, store.clone(), PUBLIC_CLIENT_ID);
    let pending = cred.acquire(ADO_SCOPE, None);
    let relogin = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seed(&entra, &store)
    };
    let (token, newer) = tokio::join!(pending, relogin);
    token.expect("the old session still answered");
    assert_eq!(
        entra.refresh_token_status(&old),
        Some(RefreshTokenStatus::Redeemed)
    );
    assert_eq!(on_disk(&store), newer, "the newer login stays");
    // And the next acquisition uses it.
    cred.acquire(ADO_SCOPE, None).await.expect("token");
    let last = entra.grant_requests("refresh_token");
    assert_eq!(last.last().expect("grant").form["refresh_token"], newer);
}

#[tokio::test]
async fn a_rotation_by_another_process_is_followed() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, state) = store_in(&dir);
    let rt1 = seed(&entra, &store);
    // Process A reads rt1 and is slow to redeem it; process B redeems rt1 first.
    entra.push_fault(Fault::Delay(Duration::from_millis(400)));
    let a = credential(&entra, store.clone(), PUBLIC_CLIENT_ID);
    let b = credential(&entra, TokenStore::new(state), PUBLIC_CLIENT_ID);
    let b_run = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.acquire(DEFENDER_SCOPE, None).await
    };
    let (ra, rb) = tokio::join!(a.acquire(ADO_SCOPE, None), b_run);
    rb.expect("B's token");
    // A's rt1 was rotated away under it: it reloaded the store and redeemed B's newer token.
    ra.expect("A's token after following the rotation");
    let used: Vec<String> = entra
        .grant_requests("refresh_token")
        .iter()
        .map(|g| g.form["refresh_token"].clone())
        .collect();
    assert_eq!(used.len(), 3, "{used:?}");
    assert_eq!(used[0], rt1);
    assert_eq!(used[1], rt1);
    assert_ne!(used[2], rt1);
    assert_eq!(
        on_disk(&store),
        entra.latest_refresh_token().expect("newest")
    );
}

// ---- logout -------------------------------------------------------------------------------

#[test]
fn logout_forgets_the_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let text = format!(
        r#"
[server]
state_dir = "{}"
host_routes = false

[profiles.team]
kind = "device_code"
tenant_id = "{TENANT}"
client_id = "{PUBLIC_CLIENT_ID}"

[profiles.bot]
kind = "client_secret"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret = "x"
"#,
        state.display()
    );
    let config = load_config(&text);
    let env: Env = Arc::new(MapEnv::default());
    let store = TokenStore::new(state.clone());
    store.save("team", &a_login(RT)).expect("save");

    assert!(logout(&config, "team", env.clone()).expect("logout"));
    assert!(!state.join("team.json").exists());
    assert!(!logout(&config, "team", env.clone()).expect("second logout"));
    assert!(matches!(
        logout(&config, "bot", env.clone()),
        Err(LoginError::NotInteractive { .. })
    ));
    // A profile removed from the config can still be forgotten.
    store.save("old", &a_login(RT)).expect("save");
    assert!(logout(&config, "old", env.clone()).expect("logout"));
    assert!(logout(&config, "../x", env).is_err());
}

#[test]
fn the_state_dir_defaults_to_xdg_state_home() {
    let env = MapEnv::new([("XDG_STATE_HOME", "/x/state"), ("HOME", "/home/a")]);
    assert_eq!(
        patless::credentials::state_dir(None, &env),
        PathBuf::from("/x/state/patless")
    );
    let env = MapEnv::new([("HOME", "/home/a")]);
    assert_eq!(
        patless::credentials::state_dir(None, &env),
        PathBuf::from("/home/a/.local/state/patless")
    );
}
