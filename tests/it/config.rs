//! The configuration (docs/configuration.md): lookup order, formats, `PATLESS_…` overrides, secret
//! references, validation that names every bad key at once, scope inference and redaction.
//! `config/new_user.rs`: what a first config runs into (a profile named with a dash reached from
//! the environment, typed values, files of any format in the working directory, hints).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use patless::config::{
    find_config_file, load, load_from_str, ConfigError, ConfigSource, Format, KeyError, ListenAddr,
    LoadedConfig, ProfileKind, RawConfig, SecretSource, SecretValue,
};
use patless::env::MapEnv;
use tempfile::TempDir;

use crate::support::write_file;

mod new_user;

// ---------------------------------------------------------------------------------------------
// helpers

fn env(pairs: &[(&str, &str)]) -> MapEnv {
    MapEnv::new(pairs.iter().copied())
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn load_toml(text: &str, env: &MapEnv) -> Result<LoadedConfig, ConfigError> {
    load_from_str(
        text,
        Format::Toml,
        ConfigSource::File(PathBuf::from("test.toml")),
        env,
    )
}

fn ok_toml(text: &str, env: &MapEnv) -> LoadedConfig {
    load_toml(text, env).unwrap_or_else(|e| panic!("config should be valid, got: {e}"))
}

/// The `KeyError`s of a `ConfigError::Invalid`; panics on any other outcome.
fn invalid(result: Result<LoadedConfig, ConfigError>) -> Vec<KeyError> {
    match result {
        Err(ConfigError::Invalid { errors, .. }) => errors,
        Err(other) => panic!("expected ConfigError::Invalid, got {other:?}"),
        Ok(loaded) => panic!("expected ConfigError::Invalid, got a valid config: {loaded:?}"),
    }
}

fn keys(errors: &[KeyError]) -> Vec<&str> {
    errors.iter().map(|e| e.key.as_str()).collect()
}

fn error_for<'a>(errors: &'a [KeyError], key: &str) -> &'a KeyError {
    errors
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no error for key `{key}`; errors: {errors:?}"))
}

fn listen_port(loaded: &LoadedConfig) -> u16 {
    match &loaded.config.server.listen {
        ListenAddr::Tcp(a) => a.port(),
        other => panic!("expected a TCP listener, got {other:?}"),
    }
}

fn secret_of(loaded: &LoadedConfig, profile: &str) -> SecretSource {
    match &loaded.config.profiles[profile].kind {
        ProfileKind::ClientSecret { client_secret, .. } => client_secret.clone(),
        other => panic!("profile {profile} is not client_secret: {other:?}"),
    }
}

/// A valid config whose only distinguishing mark is its listen port.
fn marker_config(port: u16) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
host_routes = false

[profiles.bot]
kind = "auto"

[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com"
profile = "bot"
"#
    )
}

const CLIENT_SECRET_PROFILE: &str = r#"
[profiles.bot]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "literal-bot-secret"
"#;

// ---------------------------------------------------------------------------------------------
// lookup order

#[test]
fn explicit_path_wins_over_patless_config_and_xdg() {
    let dir = TempDir::new().unwrap();
    let explicit = write_file(dir.path(), "explicit.toml", marker_config(1001));
    let from_env = write_file(dir.path(), "from-env.toml", marker_config(1002));
    let xdg = dir.path().join("xdg");
    write_file(&xdg, "patless/patless.toml", marker_config(1003));
    let e = env(&[
        ("PATLESS_CONFIG", path_str(&from_env)),
        ("XDG_CONFIG_HOME", path_str(&xdg)),
    ]);

    assert_eq!(
        find_config_file(Some(&explicit), &e).unwrap(),
        Some(explicit.clone())
    );
    let loaded = load(Some(&explicit), &e).unwrap();
    assert_eq!(loaded.source, ConfigSource::File(explicit));
    assert_eq!(listen_port(&loaded), 1001);
}

#[test]
fn patless_config_wins_over_xdg() {
    let dir = TempDir::new().unwrap();
    let from_env = write_file(dir.path(), "from-env.toml", marker_config(1002));
    let xdg = dir.path().join("xdg");
    write_file(&xdg, "patless/patless.toml", marker_config(1003));
    let e = env(&[
        ("PATLESS_CONFIG", path_str(&from_env)),
        ("XDG_CONFIG_HOME", path_str(&xdg)),
    ]);

    assert_eq!(find_config_file(None, &e).unwrap(), Some(from_env.clone()));
    let loaded = load(None, &e).unwrap();
    assert_eq!(loaded.source, ConfigSource::File(from_env));
    assert_eq!(listen_port(&loaded), 1002);
}

#[test]
fn xdg_config_home_is_used_when_nothing_else_is_named() {
    assert!(
        !Path::new("patless.toml").exists(),
        "precondition: no ./patless.toml in the test's working directory"
    );
    let dir = TempDir::new().unwrap();
    let xdg = dir.path().join("xdg");
    let file = write_file(&xdg, "patless/patless.toml", marker_config(1003));
    // An empty PATLESS_CONFIG counts as unset.
    let e = env(&[("XDG_CONFIG_HOME", path_str(&xdg)), ("PATLESS_CONFIG", "")]);

    assert_eq!(find_config_file(None, &e).unwrap(), Some(file.clone()));
    let loaded = load(None, &e).unwrap();
    assert_eq!(loaded.source, ConfigSource::File(file));
    assert_eq!(listen_port(&loaded), 1003);
}

#[test]
fn home_dot_config_is_the_xdg_default() {
    assert!(!Path::new("patless.toml").exists(), "precondition");
    let dir = TempDir::new().unwrap();
    let file = write_file(
        dir.path(),
        ".config/patless/patless.toml",
        marker_config(1004),
    );
    let e = env(&[("HOME", path_str(dir.path()))]);
    assert_eq!(find_config_file(None, &e).unwrap(), Some(file));
    assert_eq!(listen_port(&load(None, &e).unwrap()), 1004);
}

#[test]
fn embedded_default_when_no_file_is_found() {
    assert!(!Path::new("patless.toml").exists(), "precondition");
    assert!(
        !Path::new("/etc/patless/patless.toml").exists(),
        "precondition"
    );
    let dir = TempDir::new().unwrap();
    let e = env(&[
        ("XDG_CONFIG_HOME", path_str(dir.path())),
        ("HOME", path_str(dir.path())),
    ]);

    assert_eq!(find_config_file(None, &e).unwrap(), None);
    let loaded = load(None, &e).unwrap();
    assert_eq!(loaded.source, ConfigSource::Embedded);
    let c = &loaded.config;
    assert!(c.server.host_routes);
    assert_eq!(c.server.default_profile, "auto");
    assert_eq!(
        c.server.listen,
        ListenAddr::Tcp("127.0.0.1:7070".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(
        c.server.admin_listen,
        Some(ListenAddr::Tcp("127.0.0.1:7071".parse().unwrap()))
    );
    assert_eq!(c.profiles.keys().collect::<Vec<_>>(), vec!["auto"]);
    assert!(matches!(c.profiles["auto"].kind, ProfileKind::Auto { .. }));

    let routes: Vec<(&str, &str, &str, &str)> = c
        .routes
        .iter()
        .map(|r| {
            (
                r.prefix.as_str(),
                r.upstream.host_str().unwrap(),
                r.profile.as_str(),
                r.scope.as_str(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        vec![
            (
                "/ado",
                "dev.azure.com",
                "auto",
                "499b84ac-1321-427f-aa17-267ca6975798/.default"
            ),
            (
                "/defender",
                "api.security.microsoft.com",
                "auto",
                "https://api.security.microsoft.com/.default"
            ),
            (
                "/mde",
                "api.securitycenter.microsoft.com",
                "auto",
                "https://api.securitycenter.microsoft.com/.default"
            ),
        ]
    );
    for r in &c.routes {
        assert_eq!(r.upstream.scheme(), "https");
    }
}

#[test]
fn missing_explicit_file_is_a_file_error() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nope.toml");
    // A config in XDG must not be used as a silent fallback.
    let xdg = dir.path().join("xdg");
    write_file(&xdg, "patless/patless.toml", marker_config(1003));
    let e = env(&[("XDG_CONFIG_HOME", path_str(&xdg))]);

    match load(Some(&missing), &e) {
        Err(ConfigError::File { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected ConfigError::File, got {other:?}"),
    }
    match find_config_file(Some(&missing), &e) {
        Err(ConfigError::File { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected ConfigError::File, got {other:?}"),
    }
    let err = load(Some(&missing), &e).unwrap_err().to_string();
    assert!(err.contains(path_str(&missing)), "{err}");
}

#[test]
fn missing_patless_config_file_is_a_file_error() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("gone.toml");
    let xdg = dir.path().join("xdg");
    write_file(&xdg, "patless/patless.toml", marker_config(1003));
    let e = env(&[
        ("PATLESS_CONFIG", path_str(&missing)),
        ("XDG_CONFIG_HOME", path_str(&xdg)),
    ]);
    match load(None, &e) {
        Err(ConfigError::File { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected ConfigError::File, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// formats

const SAME_TOML: &str = r#"
[server]
listen = "127.0.0.1:7300"
admin_listen = ""
host_routes = false
shutdown_grace = "10s"

[entra]
tenant_id = "contoso.onmicrosoft.com"

[profiles.bot]
kind = "client_secret"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = { env = "BOT_SECRET" }

[profiles.fallback]
kind = "auto"

[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com/contoso"
profile = "bot"

[[routes]]
prefix = "/graph"
upstream = "https://graph.microsoft.com"
profile = "fallback"
scope = "https://graph.microsoft.com/User.Read"
"#;

const SAME_YAML: &str = r#"
server:
  listen: "127.0.0.1:7300"
  admin_listen: ""
  host_routes: false
  shutdown_grace: 10s
entra:
  tenant_id: contoso.onmicrosoft.com
profiles:
  bot:
    kind: client_secret
    client_id: "11111111-1111-1111-1111-111111111111"
    client_secret:
      env: BOT_SECRET
  fallback:
    kind: auto
routes:
  - prefix: /ado
    upstream: https://dev.azure.com/contoso
    profile: bot
  - prefix: /graph
    upstream: https://graph.microsoft.com
    profile: fallback
    scope: https://graph.microsoft.com/User.Read
"#;

const SAME_JSON: &str = r#"{
  "server": {
    "listen": "127.0.0.1:7300",
    "admin_listen": "",
    "host_routes": false,
    "shutdown_grace": 10
  },
  "entra": { "tenant_id": "contoso.onmicrosoft.com" },
  "profiles": {
    "bot": {
      "kind": "client_secret",
      "client_id": "11111111-1111-1111-1111-111111111111",
      "client_secret": { "env": "BOT_SECRET" }
    },
    "fallback": { "kind": "auto" }
  },
  "routes": [
    { "prefix": "/ado", "upstream": "https://dev.azure.com/contoso", "profile": "bot" },
    {
      "prefix": "/graph",
      "upstream": "https://graph.microsoft.com",
      "profile": "fallback",
      "scope": "https://graph.microsoft.com/User.Read"
    }
  ]
}"#;

#[test]
fn toml_yaml_yml_and_json_load_to_the_same_model() {
    let dir = TempDir::new().unwrap();
    let e = MapEnv::default();
    let files = [
        write_file(dir.path(), "c.toml", SAME_TOML),
        write_file(dir.path(), "c.yaml", SAME_YAML),
        write_file(dir.path(), "c.yml", SAME_YAML),
        write_file(dir.path(), "c.json", SAME_JSON),
    ];
    let loaded: Vec<LoadedConfig> = files
        .iter()
        .map(|f| load(Some(f), &e).unwrap_or_else(|err| panic!("{}: {err}", f.display())))
        .collect();

    // The model itself, checked field by field on the TOML one.
    let c = &loaded[0].config;
    assert_eq!(
        c.server.listen,
        ListenAddr::Tcp("127.0.0.1:7300".parse().unwrap())
    );
    assert_eq!(c.server.admin_listen, None);
    assert!(!c.server.host_routes);
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(10));
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].prefix, "/ado");
    assert_eq!(
        c.routes[0].upstream.as_str(),
        "https://dev.azure.com/contoso"
    );
    assert_eq!(c.routes[0].profile, "bot");
    assert_eq!(
        c.routes[0].scope,
        "499b84ac-1321-427f-aa17-267ca6975798/.default"
    );
    assert_eq!(c.routes[1].scope, "https://graph.microsoft.com/User.Read");
    assert_eq!(c.profiles.len(), 2);
    match &c.profiles["bot"].kind {
        ProfileKind::ClientSecret {
            tenant_id,
            client_id,
            client_secret,
        } => {
            assert_eq!(tenant_id, "contoso.onmicrosoft.com");
            assert_eq!(client_id, "11111111-1111-1111-1111-111111111111");
            assert_eq!(client_secret, &SecretSource::Env("BOT_SECRET".into()));
        }
        other => panic!("bot should be client_secret: {other:?}"),
    }
    assert!(matches!(
        c.profiles["fallback"].kind,
        ProfileKind::Auto { .. }
    ));

    // And every other format yields exactly that model.
    let reference = format!("{:?}", loaded[0].config);
    for (file, l) in files.iter().zip(&loaded).skip(1) {
        assert_eq!(
            format!("{:?}", l.config),
            reference,
            "{} differs from the TOML",
            file.display()
        );
        assert_eq!(l.source, ConfigSource::File(file.clone()));
    }

    // load_from_str with an explicit format agrees too.
    for (text, format) in [
        (SAME_TOML, Format::Toml),
        (SAME_YAML, Format::Yaml),
        (SAME_JSON, Format::Json),
    ] {
        let l = load_from_str(text, format, ConfigSource::Embedded, &e).unwrap();
        assert_eq!(format!("{:?}", l.config), reference, "{format:?}");
    }
}

#[test]
fn unknown_extension_is_an_error() {
    let dir = TempDir::new().unwrap();
    for name in ["patless.ini", "patless.conf", "patless"] {
        let path = write_file(dir.path(), name, SAME_TOML);
        match load(Some(&path), &MapEnv::default()) {
            Err(ConfigError::File { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(reason.contains(".toml"), "{reason}");
            }
            other => panic!("{name}: expected ConfigError::File, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PATLESS_… environment overrides

#[test]
fn env_overrides_nest_with_double_underscore() {
    let base = format!(
        r#"
[server]
listen = "127.0.0.1:7070"
host_routes = true
shutdown_grace = "30s"
{CLIENT_SECRET_PROFILE}
[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com"
profile = "bot"
"#
    );
    // Sanity: without overrides the file's values hold.
    let plain = ok_toml(&base, &MapEnv::default());
    assert_eq!(listen_port(&plain), 7070);
    assert!(plain.config.server.host_routes);

    let e = env(&[
        ("PATLESS_SERVER__LISTEN", "127.0.0.1:7272"),
        ("PATLESS_SERVER__HOST_ROUTES", "false"),
        ("PATLESS_SERVER__SHUTDOWN_GRACE", "7"),
        (
            "PATLESS_PROFILES__BOT__CLIENT_ID",
            "33333333-3333-3333-3333-333333333333",
        ),
        ("PATLESS_PROFILES__BOT__CLIENT_SECRET", "0123456789"),
        ("PATLESS_PROFILES__EXTRA__KIND", "auto"),
    ]);
    let loaded = ok_toml(&base, &e);
    let c = &loaded.config;
    assert_eq!(
        c.server.listen,
        ListenAddr::Tcp("127.0.0.1:7272".parse().unwrap())
    );
    assert!(!c.server.host_routes);
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(7));
    match &c.profiles["bot"].kind {
        ProfileKind::ClientSecret {
            client_id,
            client_secret,
            tenant_id,
        } => {
            assert_eq!(client_id, "33333333-3333-3333-3333-333333333333");
            // Untouched keys of the same table survive the override.
            assert_eq!(tenant_id, "72f988bf-86f1-41af-91ab-2d7cd011db47");
            // All digits, but still a string secret.
            let s = client_secret.resolve(&MapEnv::default()).unwrap();
            assert_eq!(s.expose(), "0123456789");
        }
        other => panic!("bot should be client_secret: {other:?}"),
    }
    assert_eq!(
        loaded.raw.profiles["bot"].client_secret,
        Some(SecretValue::Literal("0123456789".into()))
    );
    // A whole profile can come from the environment.
    assert!(matches!(c.profiles["extra"].kind, ProfileKind::Auto { .. }));

    // An empty override turns the admin listener off.
    let off = ok_toml(&base, &env(&[("PATLESS_SERVER__ADMIN_LISTEN", "")]));
    assert_eq!(off.config.server.admin_listen, None);
    assert!(plain.config.server.admin_listen.is_some());
}

#[test]
fn env_names_without_double_underscore_are_not_keys() {
    let text = marker_config(1010);
    // RawConfig denies unknown fields, so had any of these become a key (`config`,
    // `inbound_token`, `log`), the load would fail.
    let e = env(&[
        ("PATLESS_CONFIG", "/definitely/not/here.toml"),
        ("PATLESS_INBOUND_TOKEN", "inbound-token-value-77"),
        ("PATLESS_LOG", "debug"),
    ]);
    let loaded = ok_toml(&text, &e);
    assert_eq!(listen_port(&loaded), 1010);
    let printed = toml::to_string(&loaded.raw.redacted()).unwrap();
    assert!(!printed.contains("inbound-token-value-77"), "{printed}");
    assert!(!printed.contains("not/here"), "{printed}");
}

#[test]
fn bad_env_override_is_reported_under_its_key() {
    let e = env(&[("PATLESS_SERVER__LISTEN", "not-an-address")]);
    let errors = invalid(load_toml(&marker_config(1011), &e));
    assert_eq!(keys(&errors), vec!["server.listen"]);
    assert!(
        error_for(&errors, "server.listen")
            .message
            .contains("not-an-address"),
        "{errors:?}"
    );

    assert!(
        error_for(&errors, "server.listen")
            .message
            .ends_with("(from PATLESS_SERVER__LISTEN)"),
        "{errors:?}"
    );

    // A variable that names no key is not applied: a warning names it and the nearest key.
    let e = env(&[("PATLESS_SERVER__LISTNE", "127.0.0.1:1")]);
    let loaded = ok_toml(&marker_config(1011), &e);
    assert_eq!(listen_port(&loaded), 1011);
    assert_eq!(
        loaded.warnings,
        [
            "PATLESS_SERVER__LISTNE is not a patless setting; did you mean PATLESS_SERVER__LISTEN \
             (server.listen)?"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// secret values

#[test]
fn secret_literal_env_and_file_resolve() {
    let dir = TempDir::new().unwrap();
    let file = write_file(dir.path(), "secret", "file-secret-one\n");
    let text = format!(
        r#"
[server]
host_routes = false

[entra]
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"

[profiles.lit]
kind = "client_secret"
client_id = "a"
client_secret = "literal-secret-value"

[profiles.fromenv]
kind = "client_secret"
client_id = "b"
client_secret = {{ env = "BOT_SECRET" }}

[profiles.fromfile]
kind = "client_secret"
client_id = "c"
client_secret = {{ file = "{}" }}
"#,
        path_str(&file)
    );
    let e = env(&[("BOT_SECRET", "env-secret-value")]);
    let loaded = ok_toml(&text, &e);

    let lit = secret_of(&loaded, "lit");
    assert_eq!(lit.resolve(&e).unwrap().expose(), "literal-secret-value");

    let from_env = secret_of(&loaded, "fromenv");
    assert_eq!(from_env, SecretSource::Env("BOT_SECRET".into()));
    assert_eq!(from_env.resolve(&e).unwrap().expose(), "env-secret-value");
    // Read at resolve time, not at load time.
    let e2 = env(&[("BOT_SECRET", "rotated-env-secret")]);
    assert_eq!(
        from_env.resolve(&e2).unwrap().expose(),
        "rotated-env-secret"
    );

    let from_file = secret_of(&loaded, "fromfile");
    assert_eq!(from_file, SecretSource::File(file.clone()));
    assert_eq!(from_file.resolve(&e).unwrap().expose(), "file-secret-one");
    // A rotated file is picked up at the next resolve; CRLF is trimmed too.
    fs::write(&file, "file-secret-two\r\n").unwrap();
    assert_eq!(from_file.resolve(&e).unwrap().expose(), "file-secret-two");
    fs::write(&file, "no-newline").unwrap();
    assert_eq!(from_file.resolve(&e).unwrap().expose(), "no-newline");
}

#[test]
fn unresolvable_secrets_name_the_source_but_not_any_value() {
    let dir = TempDir::new().unwrap();
    let secret_values = ["env-secret-value", "file-secret-value", "other-secret"];
    let present = write_file(dir.path(), "present", "file-secret-value\n");
    let e = env(&[
        ("OTHER_SECRET", "other-secret"),
        ("BOT_SECRET_X", "env-secret-value"),
        ("EMPTY_SECRET", ""),
    ]);
    assert_eq!(
        SecretSource::File(present).resolve(&e).unwrap().expose(),
        "file-secret-value"
    );

    let missing_env = SecretSource::Env("BOT_SECRET".into())
        .resolve(&e)
        .unwrap_err();
    assert!(missing_env.contains("BOT_SECRET"), "{missing_env}");

    let empty_env = SecretSource::Env("EMPTY_SECRET".into())
        .resolve(&e)
        .unwrap_err();
    assert!(empty_env.contains("EMPTY_SECRET"), "{empty_env}");

    let missing_path = dir.path().join("no-such-secret-file");
    let missing_file = SecretSource::File(missing_path.clone())
        .resolve(&e)
        .unwrap_err();
    assert!(
        missing_file.contains(path_str(&missing_path)),
        "{missing_file}"
    );

    let empty_path = write_file(dir.path(), "empty", "\n");
    let empty_file = SecretSource::File(empty_path.clone())
        .resolve(&e)
        .unwrap_err();
    assert!(empty_file.contains(path_str(&empty_path)), "{empty_file}");

    for msg in [&missing_env, &empty_env, &missing_file, &empty_file] {
        for v in secret_values {
            assert!(!msg.contains(v), "error `{msg}` leaks `{v}`");
        }
    }
}

/// `{ env = "A", file = "B" }` is neither `{ env }` nor `{ file }`: silently using one of them
/// would read a secret from somewhere the operator did not mean.
#[test]
fn a_secret_table_with_both_env_and_file_is_rejected() {
    for value in [
        r#"{ env = "BOT_SECRET", file = "/run/secrets/bot" }"#,
        r#"{ env = "BOT_SECRET", fiel = "/run/secrets/bot" }"#,
    ] {
        let text = format!(
            r#"
[server]
host_routes = false

[profiles.bot]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = {value}
"#
        );
        match load_toml(&text, &env(&[("BOT_SECRET", "x")])) {
            Err(ConfigError::Parse { errors, .. }) => assert!(
                errors
                    .iter()
                    .any(|m| m.contains("profiles.bot.client_secret")),
                "{value}: {errors:?}"
            ),
            Err(ConfigError::Invalid { errors, .. }) => assert!(
                keys(&errors).contains(&"profiles.bot.client_secret"),
                "{value}: {errors:?}"
            ),
            Err(other) => panic!("{value}: unexpected error {other:?}"),
            Ok(loaded) => panic!("{value}: accepted as {:?}", secret_of(&loaded, "bot")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// validation

#[test]
fn validation_reports_every_error_at_once() {
    let text = format!(
        r#"
[server]
host_routes = false
{CLIENT_SECRET_PROFILE}
[profiles.x]
kind = "bogus"

[[routes]]
prefix = "/a"
upstream = "https://dev.azure.com"
profile = "nope"

[[routes]]
prefix = "/b"
upstream = "https://example.com"
profile = "bot"

[[routes]]
prefix = "/c"
upstream = "not a url"
profile = "bot"

[[routes]]
prefix = "/d"
upstream = "http://example.com"
profile = "bot"
scope = "api://x/.default"

[[routes]]
prefix = "/e"
upstream = "http://127.0.0.1:1234"
profile = "bot"
scope = "api://x/.default"
"#
    );
    let result = load_toml(&text, &MapEnv::default());
    let display = result.as_ref().map(|_| ()).unwrap_err().to_string();
    let errors = invalid(result);

    let mut got = keys(&errors);
    got.sort_unstable();
    assert_eq!(
        got,
        vec![
            "profiles.x.kind",
            "routes[0].profile",
            "routes[1].scope",
            "routes[2].upstream",
            "routes[3].upstream",
        ],
        "{errors:?}"
    );
    assert!(error_for(&errors, "routes[0].profile")
        .message
        .contains("nope"));
    assert!(error_for(&errors, "routes[1].scope")
        .message
        .contains("example.com"));
    assert!(error_for(&errors, "profiles.x.kind")
        .message
        .contains("bogus"));
    assert!(error_for(&errors, "routes[2].upstream")
        .message
        .contains("not a url"));
    assert!(error_for(&errors, "routes[3].upstream")
        .message
        .contains("http://"));

    // The Display lists every one, with the source.
    assert!(display.contains("test.toml"), "{display}");
    for k in &got {
        assert!(display.contains(k), "{display} lacks {k}");
    }
}

#[test]
fn http_upstreams_only_toward_loopback() {
    for upstream in [
        "http://127.0.0.1:1234",
        "http://localhost:8080",
        "http://[::1]:9",
        "http://127.0.0.5",
    ] {
        let text = format!(
            r#"
[server]
host_routes = false
{CLIENT_SECRET_PROFILE}
[[routes]]
prefix = "/local"
upstream = "{upstream}"
profile = "bot"
scope = "api://local/.default"
"#
        );
        let loaded = ok_toml(&text, &MapEnv::default());
        assert_eq!(loaded.config.routes[0].upstream.scheme(), "http");
    }
    for upstream in [
        "http://10.0.0.1",
        "http://dev.azure.com",
        "http://localhost.evil.com",
        "ftp://127.0.0.1",
    ] {
        let text = format!(
            r#"
[server]
host_routes = false
{CLIENT_SECRET_PROFILE}
[[routes]]
prefix = "/x"
upstream = "{upstream}"
profile = "bot"
scope = "api://x/.default"
"#
        );
        let errors = invalid(load_toml(&text, &MapEnv::default()));
        assert_eq!(keys(&errors), vec!["routes[0].upstream"], "{upstream}");
    }
    // The same rule holds for authority hosts, in [entra] and per profile.
    let text = r#"
[server]
host_routes = false

[entra]
authority_host = "http://login.example.com"

[profiles.p]
kind = "auto"
authority_host = "http://evil.example.net"
"#;
    let errors = invalid(load_toml(text, &MapEnv::default()));
    let mut got = keys(&errors);
    got.sort_unstable();
    assert_eq!(
        got,
        vec!["entra.authority_host", "profiles.p.authority_host"]
    );
    let ok = ok_toml(
        "[server]\nhost_routes = false\n[entra]\nauthority_host = \"http://127.0.0.1:8400\"\n",
        &MapEnv::default(),
    );
    assert_eq!(
        ok.config.entra.authority_host.as_str(),
        "http://127.0.0.1:8400/"
    );
}

#[test]
fn bad_durations_are_reported_and_good_ones_parsed() {
    let text = r#"
[server]
host_routes = false
shutdown_grace = "10 fortnights"
connect_timeout = -1
response_header_timeout = "250ms"
token_wait_timeout = "5m"

[entra]
request_timeout = "abc"
"#;
    let errors = invalid(load_toml(text, &MapEnv::default()));
    let mut got = keys(&errors);
    got.sort_unstable();
    assert_eq!(
        got,
        vec![
            "entra.request_timeout",
            "server.connect_timeout",
            "server.shutdown_grace"
        ]
    );

    let good = ok_toml(
        r#"
[server]
host_routes = false
shutdown_grace = 1.5
connect_timeout = "250ms"
response_header_timeout = "2m"
token_wait_timeout = "1h"

[entra]
request_timeout = 12
"#,
        &MapEnv::default(),
    );
    let s = &good.config.server;
    assert_eq!(s.shutdown_grace, Duration::from_millis(1500));
    assert_eq!(s.connect_timeout, Duration::from_millis(250));
    assert_eq!(s.response_header_timeout, Duration::from_secs(120));
    assert_eq!(s.token_wait_timeout, Duration::from_secs(3600));
    assert_eq!(good.config.entra.request_timeout, Duration::from_secs(12));
}

#[test]
fn duplicate_prefixes_are_reported() {
    let text = format!(
        r#"
[server]
host_routes = false
{CLIENT_SECRET_PROFILE}
[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com"
profile = "bot"

[[routes]]
prefix = "/ado/"
upstream = "https://contoso.visualstudio.com"
profile = "bot"
"#
    );
    let errors = invalid(load_toml(&text, &MapEnv::default()));
    assert_eq!(keys(&errors), vec!["routes[1].prefix"]);
    assert!(
        error_for(&errors, "routes[1].prefix")
            .message
            .contains("routes[0]"),
        "{errors:?}"
    );
}

/// "Every problem is collected": a duplicate prefix must be reported even when the route that
/// first used the prefix has a problem of its own.
#[test]
fn duplicate_prefix_is_reported_even_when_the_first_route_is_invalid() {
    let text = format!(
        r#"
[server]
host_routes = false
{CLIENT_SECRET_PROFILE}
[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com"
profile = "undefined-profile"

[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com"
profile = "bot"
"#
    );
    let errors = invalid(load_toml(&text, &MapEnv::default()));
    let got = keys(&errors);
    assert!(got.contains(&"routes[0].profile"), "{errors:?}");
    assert!(
        got.contains(&"routes[1].prefix"),
        "duplicate prefix not reported: {errors:?}"
    );
}

#[test]
fn bad_listen_addresses_are_reported() {
    let text = r#"
[server]
listen = "127.0.0.1"
admin_listen = "unix:relative.sock"
host_routes = false
"#;
    let errors = invalid(load_toml(text, &MapEnv::default()));
    let mut got = keys(&errors);
    got.sort_unstable();
    assert_eq!(got, vec!["server.admin_listen", "server.listen"]);
    assert!(error_for(&errors, "server.listen")
        .message
        .contains("127.0.0.1"));

    let good = ok_toml(
        r#"
[server]
listen = "unix:/tmp/patless-test.sock"
admin_listen = "[::1]:7071"
host_routes = false
"#,
        &MapEnv::default(),
    );
    assert_eq!(
        good.config.server.listen,
        ListenAddr::Unix(PathBuf::from("/tmp/patless-test.sock"))
    );
    assert_eq!(
        good.config.server.admin_listen,
        Some(ListenAddr::Tcp("[::1]:7071".parse().unwrap()))
    );
}

#[test]
fn undefined_default_profile_and_missing_keys_are_reported() {
    let text = r#"
[server]
default_profile = "ghost"

[profiles.half]
kind = "client_secret"

[[routes]]
prefix = "ado"
profile = "half"
"#;
    let errors = invalid(load_toml(text, &MapEnv::default()));
    let got = keys(&errors);
    for k in [
        "server.default_profile",
        "profiles.half.tenant_id",
        "profiles.half.client_id",
        "profiles.half.client_secret",
        "routes[0].prefix",
        "routes[0].upstream",
    ] {
        assert!(got.contains(&k), "missing error for {k}: {errors:?}");
    }
}

#[test]
fn toml_syntax_error_is_a_parse_error_with_its_line() {
    let dir = TempDir::new().unwrap();
    let text = "[server]\nhost_routes = false\nlisten = \"127.0.0.1:7070\n";
    let path = write_file(dir.path(), "broken.toml", text);
    let err = load(Some(&path), &MapEnv::default()).unwrap_err();
    let display = err.to_string();
    match &err {
        ConfigError::Parse { errors, .. } => {
            assert!(
                errors.iter().any(|m| m.contains("line 3")),
                "no line number in {errors:?}"
            );
        }
        other => panic!("expected ConfigError::Parse, got {other:?}"),
    }
    assert!(display.contains(path_str(&path)), "{display}");
}

#[test]
fn yaml_and_json_syntax_errors_give_their_line() {
    let yaml = "server:\n  host_routes: false\n  listen: [unclosed\n";
    let json = "{\n  \"server\": {\n    \"host_routes\": false,\n  }\n}";
    for (text, format) in [(yaml, Format::Yaml), (json, Format::Json)] {
        match load_from_str(text, format, ConfigSource::Embedded, &MapEnv::default()) {
            Err(ConfigError::Parse { errors, .. }) => {
                assert!(
                    errors.iter().any(|m| m.contains("line")),
                    "{format:?}: no line in {errors:?}"
                );
            }
            other => panic!("{format:?}: expected ConfigError::Parse, got {other:?}"),
        }
    }
}

#[test]
fn wrong_types_and_unknown_keys_are_parse_errors_naming_the_key() {
    match load_toml("[server]\nhost_routes = \"yes\"\n", &MapEnv::default()) {
        Err(ConfigError::Parse { errors, .. }) => assert!(
            errors.iter().any(|m| m.contains("server.host_routes")),
            "{errors:?}"
        ),
        other => panic!("expected ConfigError::Parse, got {other:?}"),
    }
    match load_toml("[sever]\nlisten = \"127.0.0.1:1\"\n", &MapEnv::default()) {
        Err(ConfigError::Parse { errors, .. }) => {
            assert!(errors.iter().any(|m| m.contains("sever")), "{errors:?}")
        }
        other => panic!("expected ConfigError::Parse, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// scope inference

#[test]
fn scopes_are_inferred_for_known_hosts() {
    let cases = [
        (
            "https://dev.azure.com/contoso",
            "499b84ac-1321-427f-aa17-267ca6975798/.default",
        ),
        (
            "https://vssps.dev.azure.com",
            "499b84ac-1321-427f-aa17-267ca6975798/.default",
        ),
        (
            "https://contoso.visualstudio.com",
            "499b84ac-1321-427f-aa17-267ca6975798/.default",
        ),
        (
            "https://api.security.microsoft.com",
            "https://api.security.microsoft.com/.default",
        ),
        (
            "https://api.securitycenter.microsoft.com",
            "https://api.securitycenter.microsoft.com/.default",
        ),
        (
            "https://api-eu.securitycenter.microsoft.com",
            "https://api.securitycenter.microsoft.com/.default",
        ),
        (
            "https://graph.microsoft.com/v1.0",
            "https://graph.microsoft.com/.default",
        ),
        (
            "https://management.azure.com",
            "https://management.azure.com/.default",
        ),
        (
            "https://graph.microsoft.us",
            "https://graph.microsoft.us/.default",
        ),
    ];
    let mut text = format!("[server]\nhost_routes = false\n{CLIENT_SECRET_PROFILE}");
    for (i, (upstream, _)) in cases.iter().enumerate() {
        text.push_str(&format!(
            "\n[[routes]]\nprefix = \"/r{i}\"\nupstream = \"{upstream}\"\nprofile = \"bot\"\n"
        ));
    }
    // An explicit scope wins over inference.
    text.push_str(
        "\n[[routes]]\nprefix = \"/explicit\"\nupstream = \"https://graph.microsoft.com\"\n\
         profile = \"bot\"\nscope = \"https://graph.microsoft.com/Mail.Read\"\n",
    );
    let loaded = ok_toml(&text, &MapEnv::default());
    let routes = &loaded.config.routes;
    assert_eq!(routes.len(), cases.len() + 1);
    for (route, (upstream, scope)) in routes.iter().zip(cases.iter()) {
        assert_eq!(&route.scope, scope, "scope for {upstream}");
    }
    assert_eq!(
        routes[cases.len()].scope,
        "https://graph.microsoft.com/Mail.Read"
    );

    // Look-alike hosts are not known.
    for upstream in [
        "https://dev.azure.com.evil.com",
        "https://a.b.dev.azure.com",
        "https://graph.microsoft.com.example",
    ] {
        let text = format!(
            "[server]\nhost_routes = false\n{CLIENT_SECRET_PROFILE}\n[[routes]]\nprefix = \"/x\"\n\
             upstream = \"{upstream}\"\nprofile = \"bot\"\n"
        );
        let errors = invalid(load_toml(&text, &MapEnv::default()));
        assert_eq!(keys(&errors), vec!["routes[0].scope"], "{upstream}");
    }
}

// ---------------------------------------------------------------------------------------------
// redaction

#[test]
fn debug_and_redacted_raw_never_show_a_literal_secret() {
    let dir = TempDir::new().unwrap();
    let secret_file = write_file(dir.path(), "s", "file-secret-content\n");
    let text = format!(
        r#"
[server]
host_routes = false

[entra]
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"

[profiles.lit]
kind = "client_secret"
client_id = "a"
client_secret = "SUPER-literal-secret-123"

[profiles.fromenv]
kind = "client_secret"
client_id = "b"
client_secret = {{ env = "BOT_SECRET" }}

[profiles.fromfile]
kind = "client_secret"
client_id = "c"
client_secret = {{ file = "{}" }}

[profiles.overridden]
kind = "client_secret"
client_id = "d"
client_secret = "to-be-overridden"

[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com"
profile = "lit"
"#,
        path_str(&secret_file)
    );
    let e = env(&[
        ("BOT_SECRET", "env-secret-content"),
        (
            "PATLESS_PROFILES__OVERRIDDEN__CLIENT_SECRET",
            "98765432109876",
        ),
    ]);
    let loaded = ok_toml(&text, &e);
    let secrets = [
        "SUPER-literal-secret-123",
        "env-secret-content",
        "file-secret-content",
        "to-be-overridden",
        "98765432109876",
    ];

    let debug = format!("{loaded:?}");
    let pretty = format!("{loaded:#?}");
    let redacted: RawConfig = loaded.raw.redacted();
    let printed = toml::to_string(&redacted).unwrap();
    let printed_pretty = toml::to_string_pretty(&redacted).unwrap();
    for out in [&debug, &pretty, &printed, &printed_pretty] {
        for s in secrets {
            assert!(!out.contains(s), "`{s}` leaked into:\n{out}");
        }
    }
    // The references themselves are kept, literals replaced.
    assert!(printed.contains("<redacted>"), "{printed}");
    assert!(printed.contains("BOT_SECRET"), "{printed}");
    assert!(printed.contains(path_str(&secret_file)), "{printed}");
    assert_eq!(
        redacted.profiles["lit"].client_secret,
        Some(SecretValue::Literal("<redacted>".into()))
    );
    assert_eq!(
        redacted.profiles["overridden"].client_secret,
        Some(SecretValue::Literal("<redacted>".into()))
    );
    assert_eq!(
        redacted.profiles["fromenv"].client_secret,
        Some(SecretValue::Env(patless::config::raw::EnvRef {
            env: "BOT_SECRET".into()
        }))
    );
    // The redacted copy is a copy: the loaded literal is intact.
    assert_eq!(
        secret_of(&loaded, "lit").resolve(&e).unwrap().expose(),
        "SUPER-literal-secret-123"
    );
    assert_eq!(
        secret_of(&loaded, "overridden")
            .resolve(&e)
            .unwrap()
            .expose(),
        "98765432109876"
    );
}

#[test]
fn config_errors_never_show_a_literal_secret() {
    let text = r#"
[server]
host_routes = false

[profiles.a]
kind = "auto"
client_secret = "auto-literal-secret-1"

[profiles.b]
kind = "bogus"
client_secret = "bogus-literal-secret-2"
"#;
    let err = load_toml(text, &MapEnv::default()).unwrap_err();
    let errors = match &err {
        ConfigError::Invalid { errors, .. } => errors.clone(),
        other => panic!("expected ConfigError::Invalid, got {other:?}"),
    };
    let got = keys(&errors);
    assert!(got.contains(&"profiles.a.client_secret"), "{errors:?}");
    assert!(got.contains(&"profiles.b.kind"), "{errors:?}");
    for out in [err.to_string(), format!("{err:?}")] {
        assert!(!out.contains("auto-literal-secret-1"), "{out}");
        assert!(!out.contains("bogus-literal-secret-2"), "{out}");
    }
}
