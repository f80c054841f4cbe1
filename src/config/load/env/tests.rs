//! The variables read against a file's profiles: names, types, warnings.

use super::*;
use crate::config::raw::{RawConfig, RawIdentityEndpoint, RawProfile};
use crate::env::MapEnv;

fn read(vars: &[(&str, &str)], defined: &[&str]) -> Overrides {
    let defined = defined.iter().map(|d| d.to_string()).collect();
    Overrides::read(
        &MapEnv::new(vars.iter().copied()),
        defined,
        &BTreeSet::new(),
    )
}

/// The value set at `path`, as JSON.
fn at(o: &Overrides, path: &str) -> Option<serde_json::Value> {
    let mut value = &Value::from(o.values.clone());
    for segment in path.split('.') {
        value = value.as_dict()?.get(segment)?;
    }
    Some(serde_json::to_value(value).expect("JSON"))
}

#[test]
fn the_key_table_is_the_raw_configs_keys() {
    // Every key of the serde types (an empty config serialises them all, `null` or `[]`).
    let mut raw = RawConfig::default();
    raw.profiles.insert("*".into(), RawProfile::default());
    raw.identity_endpoint = Some(RawIdentityEndpoint::default());
    let json = serde_json::to_value(&raw).expect("JSON");
    let mut keys = Vec::new();
    for (section, table) in json.as_object().expect("object") {
        match (section.as_str(), table) {
            ("routes", _) => {}
            ("profiles", p) => keys.extend(
                p["*"]
                    .as_object()
                    .expect("profile")
                    .keys()
                    .map(|k| format!("profiles.*.{k}")),
            ),
            (_, t) => keys.extend(
                t.as_object()
                    .expect(section)
                    .keys()
                    .map(|k| format!("{section}.{k}")),
            ),
        }
    }
    let mut table: Vec<String> = KEYS.iter().map(|(k, _)| k.to_string()).collect();
    keys.sort();
    table.sort();
    assert_eq!(
        keys, table,
        "KEYS must list every key of raw.rs (routes aside)"
    );
    // And each takes a value of its type.
    for (key, ty) in KEYS {
        let sample = match ty {
            Text => serde_json::json!("x"),
            Bool => serde_json::json!(true),
            Number => serde_json::json!(1),
            List => serde_json::json!(["x"]),
        };
        let mut doc = sample;
        for segment in key.split('.').rev() {
            doc = serde_json::json!({ segment: doc });
        }
        let parsed = serde_json::from_value::<RawConfig>(doc.clone());
        assert!(parsed.is_ok(), "{key} as {ty:?}: {doc} → {parsed:?}");
    }
}

#[test]
fn a_profile_name_with_dashes_is_reached_with_underscores() {
    let o = read(
        &[("PATLESS_PROFILES__ADO_BOT__CLIENT_ID", "c")],
        &["ado-bot"],
    );
    assert_eq!(at(&o, "profiles.ado-bot.client_id"), Some("c".into()));
    assert_eq!(
        o.origin("profiles.ado-bot.client_id"),
        Some("PATLESS_PROFILES__ADO_BOT__CLIENT_ID")
    );
    assert!(
        o.made.is_empty() && o.errors.is_empty() && o.warnings.is_empty(),
        "{o:?}"
    );

    // Case does not matter either; a name with `_` is reached as it is.
    let o = read(
        &[("PATLESS_PROFILES__ADO_BOT__KIND", "auto")],
        &["Ado-Bot", "x"],
    );
    assert_eq!(at(&o, "profiles.Ado-Bot.kind"), Some("auto".into()));
    let o = read(&[("PATLESS_PROFILES__ADO_BOT__KIND", "auto")], &["ado_bot"]);
    assert_eq!(at(&o, "profiles.ado_bot.kind"), Some("auto".into()));
}

#[test]
fn a_name_two_profiles_match_is_an_error_and_one_none_match_is_a_new_profile() {
    let o = read(
        &[("PATLESS_PROFILES__ADO_BOT__CLIENT_ID", "c")],
        &["ado-bot", "ado_bot"],
    );
    assert_eq!(o.errors.len(), 1, "{o:?}");
    let e = &o.errors[0];
    assert!(
        e.starts_with("PATLESS_PROFILES__ADO_BOT__CLIENT_ID: matches the profiles")
            && e.contains("`ado-bot`")
            && e.contains("`ado_bot`"),
        "{e}"
    );
    assert_eq!(at(&o, "profiles"), None, "nothing is set");

    let o = read(&[("PATLESS_PROFILES__NEW_BOT__KIND", "auto")], &["ado-bot"]);
    assert_eq!(at(&o, "profiles.new_bot.kind"), Some("auto".into()));
    assert_eq!(
        o.made.get("new_bot").map(String::as_str),
        Some("PATLESS_PROFILES__NEW_BOT__KIND")
    );
}

#[test]
fn values_are_typed_by_their_key_never_by_their_looks() {
    let o = read(
        &[
            ("PATLESS_SERVER__MAX_CONNECTIONS", "10"),
            ("PATLESS_SERVER__WATCH_CONFIG", "TRUE"),
            ("PATLESS_SERVER__NO_PROXY", "a.example, .b.example,,"),
            ("PATLESS_SERVER__SHUTDOWN_GRACE", "30s"),
            ("PATLESS_SERVER__WORKERS", "many"),
            ("PATLESS_PROFILES__BOT__CLIENT_SECRET", "0123"),
            ("PATLESS_PROFILES__BOT__CLIENT_ID", "true"),
            ("PATLESS_PROFILES__BOT__REDIRECT_PORT", "8400"),
            ("PATLESS_SERVER__UNIX_SOCKET_MODE", "0660"),
        ],
        &["bot"],
    );
    assert_eq!(at(&o, "server.max_connections"), Some(10.into()));
    assert_eq!(at(&o, "server.watch_config"), Some(true.into()));
    assert_eq!(
        at(&o, "server.no_proxy"),
        Some(serde_json::json!(["a.example", ".b.example"]))
    );
    assert_eq!(at(&o, "server.shutdown_grace"), Some("30s".into()));
    assert_eq!(
        at(&o, "server.workers"),
        Some("many".into()),
        "left for the error to name"
    );
    assert_eq!(at(&o, "profiles.bot.client_secret"), Some("0123".into()));
    assert_eq!(at(&o, "profiles.bot.client_id"), Some("true".into()));
    assert_eq!(at(&o, "profiles.bot.redirect_port"), Some(8400.into()));
    assert_eq!(at(&o, "server.unix_socket_mode"), Some("0660".into()));
}

#[test]
fn a_variable_that_names_no_key_is_a_warning_naming_the_nearest() {
    let o = read(
        &[
            ("PATLESS_SERVER_LISTEN", "127.0.0.1:1"),
            ("PATLESS_SERVER__LISTNE", "127.0.0.1:1"),
            ("PATLESS_PROFILES__ADO_BOT__CLIENTID", "c"),
            ("PATLESS_PROFILE__ADO_BOT__KIND", "auto"),
            ("PATLESS_ROUTES__0__PREFIX", "/x"),
            ("PATLESS_WIDGETS__COLOUR", "blue"),
        ],
        &["ado-bot"],
    );
    assert_eq!(
        o.warnings,
        [
            "PATLESS_PROFILES__ADO_BOT__CLIENTID is not a patless setting; did you mean \
             PATLESS_PROFILES__ADO_BOT__CLIENT_ID (profiles.ado-bot.client_id)?",
            "PATLESS_PROFILE__ADO_BOT__KIND is not a patless setting; did you mean \
             PATLESS_PROFILES__ADO_BOT__KIND (profiles.ado-bot.kind)?",
            "PATLESS_ROUTES__0__PREFIX is not a patless setting: routes are written in the \
             config file, as [[routes]]; it is ignored",
            "PATLESS_SERVER_LISTEN is not a patless setting; did you mean \
             PATLESS_SERVER__LISTEN (server.listen)?",
            "PATLESS_SERVER__LISTNE is not a patless setting; did you mean \
             PATLESS_SERVER__LISTEN (server.listen)?",
            "PATLESS_WIDGETS__COLOUR is not a patless setting; it is ignored",
        ]
    );
    assert!(o.values.is_empty(), "none is applied: {o:?}");
}

#[test]
fn variables_that_are_not_keys_are_not_warned_about() {
    let referenced = BTreeSet::from(["PATLESS_SERVER_ADMIN_TOKEN".to_string()]);
    let env = MapEnv::new([
        ("PATLESS_CONFIG", "/x.toml"),
        ("PATLESS_LOG", "debug"),
        ("PATLESS_SKIP_CLIENTS", "all"),
        ("PATLESS_INBOUND_TOKEN", "t"),
        ("PATLESS_IDENTITY_HEADER", "h"),
        // Named by `{ env = "…" }` in the file: a secret, though it looks like a key.
        ("PATLESS_SERVER_ADMIN_TOKEN", "t"),
    ]);
    let o = Overrides::read(&env, Vec::new(), &referenced);
    assert!(o.warnings.is_empty() && o.values.is_empty(), "{o:?}");
    let o = Overrides::read(&env, Vec::new(), &BTreeSet::new());
    assert_eq!(o.warnings.len(), 1, "{o:?}");
}
