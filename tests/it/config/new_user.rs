//! What a first config runs into, each case starting from the config a new user writes (one
//! `client_secret` profile named `ado-bot`, one route), run as the real binary from its working
//! directory (docs/configuration.md): `PATLESS_PROFILES__ADO_BOT__…` reaches `ado-bot`, values
//! are typed by their key (a number is a number, a secret `0123` stays `0123`), a variable that
//! names no key is a warning naming the nearest one, `patless.yaml` (`.yml`, `.json`) is found
//! like `patless.toml` and two of them are an error, and parse errors carry a hint.

use patless::config::{load_from_str, ConfigError, ConfigSource, Format, ProfileKind};
use patless::env::MapEnv;

use crate::support::sandbox::{Run, Sandbox};

const EXIT_CONFIG: i32 = 64;

const NEW_USER_TOML: &str = r#"
[profiles.ado-bot]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = { env = "ADO_BOT_SECRET" }

[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com/contoso"
profile = "ado-bot"
"#;

const NEW_USER_YAML: &str = r#"
profiles:
  ado-bot:
    kind: client_secret
    tenant_id: 72f988bf-86f1-41af-91ab-2d7cd011db47
    client_id: 11111111-1111-1111-1111-111111111111
    client_secret: { env: ADO_BOT_SECRET }
routes:
  - prefix: /ado
    upstream: https://dev.azure.com/contoso
    profile: ado-bot
"#;

const NEW_USER_JSON: &str = r#"{
  "profiles": {
    "ado-bot": {
      "kind": "client_secret",
      "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
      "client_id": "11111111-1111-1111-1111-111111111111",
      "client_secret": { "env": "ADO_BOT_SECRET" }
    }
  },
  "routes": [
    { "prefix": "/ado", "upstream": "https://dev.azure.com/contoso", "profile": "ado-bot" }
  ]
}"#;

/// `patless config` in a sandbox whose working directory holds `files`.
fn config_in(files: &[(&str, &str)], env: &[(&str, &str)]) -> Run {
    let sb = Sandbox::new();
    for (name, text) in files {
        sb.write(&format!("work/{name}"), text);
    }
    sb.run(&["config"], env)
}

/// The printed config; panics unless `patless config` succeeded.
fn printed(run: &Run) -> toml::Value {
    assert_eq!(run.code, Some(0), "{run:?}");
    toml::from_str(&run.stdout).unwrap_or_else(|e| panic!("stdout is not TOML ({e}): {run:?}"))
}

/// The error lines of a run that refused its config.
fn refused(run: &Run) -> &str {
    assert_eq!(run.code, Some(EXIT_CONFIG), "{run:?}");
    &run.stderr
}

// ---------------------------------------------------------------------------------------------
// the environment

#[test]
fn an_env_override_reaches_the_profile_named_with_a_dash() {
    let run = config_in(
        &[("patless.toml", NEW_USER_TOML)],
        &[
            (
                "PATLESS_PROFILES__ADO_BOT__CLIENT_ID",
                "22222222-2222-2222-2222-222222222222",
            ),
            (
                "PATLESS_PROFILES__ADO_BOT__CLIENT_SECRET",
                "env-held-secret-77",
            ),
        ],
    );
    let printed = printed(&run);
    let profiles = printed["profiles"].as_table().expect("profiles");
    let bot = &profiles["ado-bot"];
    assert_eq!(
        bot["client_id"].as_str(),
        Some("22222222-2222-2222-2222-222222222222")
    );
    assert_eq!(bot["client_secret"].as_str(), Some("<redacted>"));
    assert_eq!(
        bot["tenant_id"].as_str(),
        Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
    );
    assert!(!profiles.contains_key("ado_bot"), "{run:?}");
    assert!(!run.all().contains("env-held-secret-77"), "{run:?}");
    // The secret is the environment's, not written in the file: no warning about the file.
    assert!(!run.stderr.contains("written inline"), "{run:?}");
}

#[test]
fn env_values_are_typed_by_their_key() {
    let run = config_in(
        &[("patless.toml", NEW_USER_TOML)],
        &[
            ("PATLESS_SERVER__MAX_CONNECTIONS", "10"),
            ("PATLESS_SERVER__WATCH_CONFIG", "true"),
            (
                "PATLESS_SERVER__ALLOWED_HOSTS",
                "patless.internal, patless.internal:7070",
            ),
            ("PATLESS_SERVER__SHUTDOWN_GRACE", "45s"),
        ],
    );
    let server = printed(&run)["server"].clone();
    assert_eq!(server["max_connections"].as_integer(), Some(10));
    assert_eq!(server["watch_config"].as_bool(), Some(true));
    assert_eq!(
        server["allowed_hosts"],
        toml::Value::from(vec!["patless.internal", "patless.internal:7070"])
    );
    assert_eq!(server["shutdown_grace"].as_str(), Some("45s"));

    // Text that is not a number is refused, naming the variable.
    let run = config_in(
        &[("patless.toml", NEW_USER_TOML)],
        &[("PATLESS_SERVER__MAX_CONNECTIONS", "ten")],
    );
    assert!(
        refused(&run).contains(
            "server.max_connections: invalid type: found string \"ten\", expected usize \
             (from PATLESS_SERVER__MAX_CONNECTIONS)"
        ),
        "{run:?}"
    );
}

#[test]
fn a_secret_or_id_that_looks_like_a_number_stays_text() {
    let env = MapEnv::new([
        ("PATLESS_PROFILES__ADO_BOT__CLIENT_SECRET", "0123"),
        ("PATLESS_PROFILES__ADO_BOT__CLIENT_ID", "0042"),
    ]);
    let loaded = load_from_str(NEW_USER_TOML, Format::Toml, ConfigSource::Embedded, &env)
        .unwrap_or_else(|e| panic!("{e}"));
    match &loaded.config.profiles["ado-bot"].kind {
        ProfileKind::ClientSecret {
            client_id,
            client_secret,
            ..
        } => {
            assert_eq!(client_id, "0042");
            let secret = client_secret.resolve(&MapEnv::default()).expect("literal");
            assert_eq!(secret.expose(), "0123");
        }
        other => panic!("ado-bot should be client_secret: {other:?}"),
    }
    // The binary prints the id as text too.
    let run = config_in(
        &[("patless.toml", NEW_USER_TOML)],
        &[("PATLESS_PROFILES__ADO_BOT__CLIENT_ID", "0042")],
    );
    let printed = printed(&run);
    assert_eq!(
        printed["profiles"]["ado-bot"]["client_id"],
        toml::Value::from("0042")
    );
}

#[test]
fn a_variable_that_names_no_key_warns_naming_the_nearest() {
    let run = config_in(
        &[("patless.toml", NEW_USER_TOML)],
        &[("PATLESS_SERVER_LISTEN", "127.0.0.1:9999")],
    );
    let server = printed(&run)["server"].clone();
    assert!(
        run.stderr.contains(
            "WARN PATLESS_SERVER_LISTEN is not a patless setting; did you mean \
             PATLESS_SERVER__LISTEN (server.listen)?"
        ),
        "{run:?}"
    );
    assert_eq!(server["listen"].as_str(), Some("127.0.0.1:7070"));

    // PATLESS_LOG and PATLESS_CONFIG are patless's own, not keys: no warning.
    let run = config_in(
        &[("patless.toml", NEW_USER_TOML)],
        &[("PATLESS_LOG", "info"), ("PATLESS_CONFIG", "patless.toml")],
    );
    printed(&run);
    assert!(!run.stderr.contains("WARN"), "{run:?}");
}

#[test]
fn a_variable_matching_two_profiles_or_none_says_so() {
    let both = format!("{NEW_USER_TOML}\n[profiles.ado_bot]\nkind = \"auto\"\n");
    let env = MapEnv::new([("PATLESS_PROFILES__ADO_BOT__CLIENT_ID", "c")]);
    match load_from_str(&both, Format::Toml, ConfigSource::Embedded, &env) {
        Err(ConfigError::Parse { errors, .. }) => assert_eq!(
            errors,
            [
                "PATLESS_PROFILES__ADO_BOT__CLIENT_ID: matches the profiles `ado-bot` and \
              `ado_bot` alike (in a variable's name `_` stands for `_` and `-`); rename one of \
              them, or set it in the file"
            ]
        ),
        other => panic!("expected a parse error, got {other:?}"),
    }
    // A misspelt profile becomes a profile of its own, and its error says where it came from.
    let env = MapEnv::new([("PATLESS_PROFILES__ADO_BTO__CLIENT_ID", "c")]);
    let err = load_from_str(NEW_USER_TOML, Format::Toml, ConfigSource::Embedded, &env)
        .expect_err("ado_bto has no kind");
    let text = err.to_string();
    assert!(
        text.contains("profiles.ado_bto.kind: missing")
            && text.contains(
                "(PATLESS_PROFILES__ADO_BTO__CLIENT_ID names the profile `ado_bto`, which the \
                 config does not define; it defines: ado-bot)"
            ),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// config files

#[test]
fn patless_yaml_yml_or_json_alone_in_the_working_directory_is_used() {
    for (name, text) in [
        ("patless.yaml", NEW_USER_YAML),
        ("patless.yml", NEW_USER_YAML),
        ("patless.json", NEW_USER_JSON),
    ] {
        let run = config_in(&[(name, text)], &[]);
        assert!(
            run.stdout.starts_with(&format!("# source: {name}\n")),
            "{name}: {run:?}"
        );
        let printed = printed(&run);
        assert_eq!(
            printed["routes"][0]["profile"].as_str(),
            Some("ado-bot"),
            "{name}: {run:?}"
        );
    }
}

#[test]
fn two_config_files_in_one_directory_are_an_error_naming_both() {
    let run = config_in(
        &[
            ("patless.toml", NEW_USER_TOML),
            ("patless.yaml", NEW_USER_YAML),
        ],
        &[],
    );
    assert_eq!(
        refused(&run).trim_end(),
        "patless: config files patless.toml and patless.yaml are both present: keep one, or \
         name the one to use with --config FILE"
    );
    // Naming one settles it.
    let sb = Sandbox::new();
    sb.write("work/patless.toml", NEW_USER_TOML);
    sb.write("work/patless.yaml", NEW_USER_YAML);
    let run = sb.run(&["config", "--config", "patless.yaml"], &[]);
    assert!(
        run.stdout.starts_with("# source: patless.yaml\n"),
        "{run:?}"
    );
}

#[test]
fn yaml_in_a_toml_file_gets_a_hint() {
    let run = config_in(&[("patless.toml", NEW_USER_YAML)], &[]);
    let stderr = refused(&run);
    assert!(stderr.contains("TOML parse error at line 2"), "{run:?}");
    assert!(
        stderr.contains(
            "\n    hint: this looks like YAML (line 2: `profiles:`), not TOML: name the file \
             patless.yaml, or write it in TOML (`[section]` headers, `key = \"value\"` lines)\n"
        ),
        "{run:?}"
    );
}

#[test]
fn a_single_routes_table_gets_a_hint() {
    let text = NEW_USER_TOML.replace("[[routes]]", "[routes]");
    let run = config_in(&[("patless.toml", &text)], &[]);
    assert!(
        refused(&run).contains(
            "  - routes: invalid type: found map, expected a sequence (in patless.toml)\n    \
             hint: each route is a table of its own: write `[[routes]]`, with double \
             brackets, above each one"
        ),
        "{run:?}"
    );
    // The same mistake in the other formats, and `[profiles]` written bare.
    let cases = [
        (
            NEW_USER_YAML.replace("  - prefix", "    prefix"),
            Format::Yaml,
            "hint: `routes` is a list: begin each route with `- `",
        ),
        (
            NEW_USER_JSON
                .replace("\"routes\": [", "\"routes\":")
                .replace("\" }\n  ]", "\" }"),
            Format::Json,
            "hint: `routes` is an array",
        ),
        (
            NEW_USER_TOML.replace("[profiles.ado-bot]", "[profiles]"),
            Format::Toml,
            "hint: each profile is a table named after it, `[profiles.NAME]`",
        ),
        (
            NEW_USER_TOML.replace("[profiles.ado-bot]", "[[profiles]]"),
            Format::Toml,
            "hint: profiles are named: `[profiles.NAME]`, not `[[profiles]]`",
        ),
    ];
    for (text, format, hint) in cases {
        let err = load_from_str(&text, format, ConfigSource::Embedded, &MapEnv::default())
            .expect_err(hint);
        assert!(err.to_string().contains(hint), "{format:?}: {err}");
    }
}

#[test]
fn a_misspelt_key_gets_did_you_mean() {
    let text = format!("[server]\nlistne = \"127.0.0.1:7070\"\n{NEW_USER_TOML}");
    let run = config_in(&[("patless.toml", &text)], &[]);
    let stderr = refused(&run);
    assert!(
        stderr
            .contains("  - server.listne: unknown key (in patless.toml); did you mean `listen`?\n"),
        "{run:?}"
    );
    assert!(
        !stderr.contains("admin_listen"),
        "no list of every key: {run:?}"
    );
    assert!(!stderr.contains("``"), "no nested backticks: {run:?}");

    // In a profile too.
    let text = NEW_USER_TOML.replace("client_id =", "clientid =");
    let run = config_in(&[("patless.toml", &text)], &[]);
    assert!(
        refused(&run).contains(
            "profiles.ado-bot.clientid: unknown key for any profile kind; did you mean \
             `client_id`?"
        ),
        "{run:?}"
    );
}
