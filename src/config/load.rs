//! Finding and reading the configuration: the file (`files.rs`: `--config`, `$PATLESS_CONFIG`,
//! `patless.{toml,yaml,yml,json}` in the working directory, `$XDG_CONFIG_HOME/patless/`,
//! `/etc/patless/`, else the embedded default), then the `PATLESS_SECTION__KEY` environment
//! overrides (`env.rs`); parse errors say where they came from, with a hint where the mistake is
//! a common one (`hints.rs`).

mod env;
mod files;
mod hints;

use std::path::{Path, PathBuf};

use figment::providers::{Format as _, Json, Toml, Yaml};
use figment::value::Dict;
use figment::Figment;

use super::{validate, Config, ConfigError, RawConfig, EMBEDDED_DEFAULT};
use crate::env::Environment;
pub use files::{find_config_file, FILE_NAMES};

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

    fn figment(self, text: &str) -> Figment {
        match self {
            Format::Toml => Figment::from(Toml::string(text)),
            Format::Yaml => Figment::from(Yaml::string(text)),
            Format::Json => Figment::from(Json::string(text)),
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
    /// What start-up should warn of besides literal secrets: `PATLESS_…` variables that name no
    /// key.
    pub warnings: Vec<String>,
    /// The keys that `PATLESS_…` variables set (dotted: `profiles.ado-bot.client_secret`): their
    /// values are not the file's.
    pub from_env: Vec<String>,
}

/// Finds, reads and validates the configuration, and logs its warnings ([`LoadedConfig::warn`]).
pub fn load(explicit: Option<&Path>, env: &dyn Environment) -> Result<LoadedConfig, ConfigError> {
    let loaded = load_quietly(explicit, env)?;
    loaded.warn();
    Ok(loaded)
}

/// [`load`], without the warnings: for the command line, which sets up logging from the config
/// it reads and then calls [`LoadedConfig::warn`].
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
    /// Logs every warning: `PATLESS_…` variables that name no key, then literal secrets in a
    /// file others can read ([`LoadedConfig::warn_literal_secrets`]).
    pub fn warn(&self) {
        for warning in &self.warnings {
            tracing::warn!("{warning}");
        }
        self.warn_literal_secrets();
    }

    /// Logs a warning for each literal secret in the config file (none for the embedded default,
    /// nor for a secret a `PATLESS_…` variable set).
    pub fn warn_literal_secrets(&self) {
        if let ConfigSource::File(path) = &self.source {
            for warning in inline_secret_warnings(&self.raw, path, &self.from_env) {
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
    // The file alone first: the variables are read against the profiles it defines.
    let file: Option<Dict> = format.figment(text).extract().ok();
    let defined = file
        .as_ref()
        .and_then(|f| f.get("profiles"))
        .and_then(|p| p.as_dict())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let referenced = file.as_ref().map(env::referenced).unwrap_or_default();
    let overrides = env::Overrides::read(env, defined, &referenced);
    let extracted = format
        .figment(text)
        .merge(overrides.provider())
        .extract::<RawConfig>();
    let mut errors = overrides.errors.clone();
    let raw = match extracted {
        Ok(raw) if errors.is_empty() => raw,
        result => {
            if let Err(e) = result {
                let cx = hints::Context {
                    format,
                    source_name: &source_name,
                    text,
                    file: file.as_ref(),
                    overrides: &overrides,
                };
                errors.extend(hints::describe_all(e, &cx));
            }
            return Err(ConfigError::Parse {
                source_name,
                errors,
            });
        }
    };
    let config = validate::validate(&raw, env).map_err(|errors| ConfigError::Invalid {
        errors: errors.into_iter().map(|e| overrides.annotate(e)).collect(),
        source_name,
    })?;
    Ok(LoadedConfig {
        config,
        raw,
        source,
        from_env: overrides.keys(),
        warnings: overrides.warnings,
    })
}

/// Warnings for literal secrets in a config file that group or others can read (the file then
/// leaks them): one per key, naming it and the fix. Never the secret.
pub fn literal_secret_warnings(raw: &RawConfig, path: &Path) -> Vec<String> {
    inline_secret_warnings(raw, path, &[])
}

/// [`literal_secret_warnings`], but for the keys in `from_env`, whose values are not in the file.
fn inline_secret_warnings(raw: &RawConfig, path: &Path, from_env: &[String]) -> Vec<String> {
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
        .filter(|key| !from_env.contains(key))
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
