//! Finding and reading the configuration: `--config`, `$PATLESS_CONFIG`,
//! `./patless.toml`, `$XDG_CONFIG_HOME/patless/patless.toml`, `/etc/patless/patless.toml`, else
//! the embedded default; then `PATLESS_SECTION__KEY` environment overrides.

use std::path::{Path, PathBuf};

use figment::providers::{Format as _, Json, Serialized, Toml, Yaml};
use figment::value::Value;
use figment::Figment;

use super::{validate, Config, ConfigError, RawConfig, EMBEDDED_DEFAULT};
use crate::env::Environment;

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file.
    File(PathBuf),
    /// No file was found: the embedded default.
    Embedded,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Embedded => f.write_str("embedded default"),
        }
    }
}

/// The file formats, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.toml`
    Toml,
    /// `.yaml` / `.yml`
    Yaml,
    /// `.json`
    Json,
}

impl Format {
    fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// A loaded config: the validated model, the raw form (for `patless config`), and its source.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// Validated.
    pub config: Config,
    /// As read (file + environment), before validation.
    pub raw: RawConfig,
    /// Where it came from.
    pub source: ConfigSource,
}

/// The config file to use: the first of `explicit` (`--config`, which must exist),
/// `$PATLESS_CONFIG` (likewise), `./patless.toml`, `$XDG_CONFIG_HOME/patless/patless.toml` (else
/// `$HOME/.config/…`) and `/etc/patless/patless.toml`; `None` means the embedded default.
pub fn find_config_file(
    explicit: Option<&Path>,
    env: &dyn Environment,
) -> Result<Option<PathBuf>, ConfigError> {
    let must_exist = explicit
        .map(Path::to_path_buf)
        .or_else(|| crate::env::non_empty(env, "PATLESS_CONFIG").map(PathBuf::from));
    if let Some(path) = must_exist {
        if !path.is_file() {
            return Err(ConfigError::File {
                path,
                reason: "no such file (named by --config or $PATLESS_CONFIG)".into(),
            });
        }
        return Ok(Some(path));
    }
    let mut candidates = vec![PathBuf::from("patless.toml")];
    let xdg = crate::env::non_empty(env, "XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| crate::env::non_empty(env, "HOME").map(|h| Path::new(&h).join(".config")));
    if let Some(xdg) = xdg {
        candidates.push(xdg.join("patless").join("patless.toml"));
    }
    candidates.push(PathBuf::from("/etc/patless/patless.toml"));
    Ok(candidates.into_iter().find(|p| p.is_file()))
}

/// Finds, reads and validates the configuration, and warns of literal secrets in its file.
pub fn load(explicit: Option<&Path>, env: &dyn Environment) -> Result<LoadedConfig, ConfigError> {
    let loaded = load_quietly(explicit, env)?;
    loaded.warn_literal_secrets();
    Ok(loaded)
}

/// [`load`], without the warnings: for the command line, which sets up logging from the config
/// it reads and then calls [`LoadedConfig::warn_literal_secrets`].
pub fn load_quietly(
    explicit: Option<&Path>,
    env: &dyn Environment,
) -> Result<LoadedConfig, ConfigError> {
    match find_config_file(explicit, env)? {
        Some(path) => {
            let format = Format::of(&path).ok_or_else(|| ConfigError::File {
                path: path.clone(),
                reason: "unknown extension: expected .toml, .yaml, .yml or .json".into(),
            })?;
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            load_from_str(&text, format, ConfigSource::File(path.clone()), env)
        }
        None => load_from_str(EMBEDDED_DEFAULT, Format::Toml, ConfigSource::Embedded, env),
    }
}

impl LoadedConfig {
    /// Logs a warning for each literal secret in the config file (none for the embedded default).
    pub fn warn_literal_secrets(&self) {
        if let ConfigSource::File(path) = &self.source {
            for warning in literal_secret_warnings(&self.raw, path) {
                tracing::warn!("{warning}");
            }
        }
    }
}

/// Reads and validates a configuration given as text (used by `load` and by tests).
pub fn load_from_str(
    text: &str,
    format: Format,
    source: ConfigSource,
    env: &dyn Environment,
) -> Result<LoadedConfig, ConfigError> {
    let source_name = source.to_string();
    let mut figment = match format {
        Format::Toml => Figment::from(Toml::string(text)),
        Format::Yaml => Figment::from(Yaml::string(text)),
        Format::Json => Figment::from(Json::string(text)),
    };
    for (key, value) in env_overrides(env) {
        figment = figment.merge(Serialized::default(&key, value));
    }
    let raw: RawConfig = figment.extract().map_err(|e| ConfigError::Parse {
        source_name: source_name.clone(),
        errors: e
            .into_iter()
            .map(|e| describe_figment_error(e, &source_name))
            .collect(),
    })?;
    let config = validate::validate(&raw, env).map_err(|errors| ConfigError::Invalid {
        source_name,
        errors,
    })?;
    Ok(LoadedConfig {
        config,
        raw,
        source,
    })
}

/// `PATLESS_SERVER__LISTEN=…` → (`server.listen`, value). Only names with `__` are keys: every
/// top-level key is a table, and `PATLESS_CONFIG` or a secret like `PATLESS_INBOUND_TOKEN` is not.
fn env_overrides(env: &dyn Environment) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = env
        .vars()
        .into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix("PATLESS_")?;
            if !rest.contains("__") {
                return None;
            }
            let key = rest
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(".");
            let value = env_value(&key, &value);
            Some((key, value))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The boolean keys become booleans; every other value stays a string (a secret or an id that
/// happens to read `true` or be all digits must not change type).
fn env_value(key: &str, text: &str) -> Value {
    const BOOLEAN_KEYS: &[&str] = &[
        "host_routes",
        "allow_unauthenticated_clients",
        "allow_unauthenticated_admin",
        "watch_config",
        "imds",
    ];
    let last = key.rsplit('.').next().unwrap_or(key);
    match (BOOLEAN_KEYS.contains(&last), text.trim()) {
        (true, "true") => Value::from(true),
        (true, "false") => Value::from(false),
        _ => Value::from(text.to_string()),
    }
}

fn describe_figment_error(e: figment::Error, source_name: &str) -> String {
    let key = e.path.join(".");
    // Values from the file carry no useful source name (the text was read by us); values from the
    // environment are the `PATLESS_…` overrides.
    let origin = match e.metadata.as_ref().map(|m| m.name.to_string()) {
        // `Serialized` names its metadata after the value's type.
        Some(name) if name == std::any::type_name::<Value>() => {
            " (from a PATLESS_… environment variable)".to_string()
        }
        _ => format!(" (in {source_name})"),
    };
    if key.is_empty() {
        format!("{}{origin}", e.kind)
    } else {
        format!("{key}: {}{origin}", e.kind)
    }
}

/// Warnings for literal secrets in a config file that group or others can read (the file then
/// leaks them): one per key, naming it and the fix. Never the secret.
pub fn literal_secret_warnings(raw: &RawConfig, path: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Vec::new();
    }
    let literal = |v: &Option<crate::config::SecretValue>| {
        matches!(v, Some(crate::config::SecretValue::Literal(_)))
    };
    let mut keys = Vec::new();
    if literal(&raw.server.inbound_token) {
        keys.push("server.inbound_token".to_string());
    }
    if literal(&raw.server.admin_token) {
        keys.push("server.admin_token".to_string());
    }
    if literal(
        &raw.identity_endpoint
            .as_ref()
            .and_then(|ie| ie.header.clone()),
    ) {
        keys.push("identity_endpoint.header".to_string());
    }
    // A proxy URL is a secret only when it carries user:password.
    if let Some(crate::config::SecretValue::Literal(url)) = &raw.server.egress_proxy {
        if url.contains('@') {
            keys.push("server.egress_proxy".to_string());
        }
    }
    for (name, p) in &raw.profiles {
        for (key, value) in [
            ("client_secret", &p.client_secret),
            ("certificate_password", &p.certificate_password),
            ("system_access_token", &p.system_access_token),
        ] {
            if literal(value) {
                keys.push(format!("profiles.{name}.{key}"));
            }
        }
    }
    keys.into_iter()
        .map(|key| {
            format!(
                "{key} is written inline in {} (mode {mode:04o}), which others can read: run \
                 `chmod 600 {}`, or use {{ env = \"…\" }} or {{ file = \"…\" }}",
                path.display(),
                path.display()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MapEnv;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn inline_secrets_in_a_readable_file_are_named() {
        let dir = std::env::temp_dir().join(format!("patless-warn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("patless.toml");
        let text = "[server]\negress_proxy = \"http://u:proxy-pass@proxy.corp.example:3128\"\n[profiles.bot]\nkind = \"client_secret\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"hunter2-inline\"\n\n[profiles.env]\nkind = \"client_secret\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = { env = \"X\" }\n";
        std::fs::write(&path, text).expect("write");
        let loaded = load(Some(&path), &MapEnv::default()).expect("loads");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let w = literal_secret_warnings(&loaded.raw, &path);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("server.egress_proxy") && w[1].contains("profiles.bot.client_secret"),
            "{w:?}"
        );
        assert!(w.iter().all(|w| w.contains("chmod 600")), "{w:?}");
        assert!(
            w.iter()
                .all(|w| !w.contains("hunter2") && !w.contains("proxy-pass")),
            "the warning never shows the secret"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(literal_secret_warnings(&loaded.raw, &path).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
