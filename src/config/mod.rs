//! Configuration: found, read and validated into the model the rest of the program uses.
//!
//! The file is looked up in order — `--config`, `$PATLESS_CONFIG`, `patless.{toml,yaml,yml,json}`
//! in the working directory, in `$XDG_CONFIG_HOME/patless/` and in `/etc/patless/`, else the
//! embedded default (`config/default.toml`) — and read as TOML, YAML or JSON, then
//! `PATLESS_SECTION__KEY` environment variables override its keys (`load.rs`). Validation goes
//! section by section (`server.rs`, `entra.rs`, `profiles.rs`, `routes.rs`,
//! `identity_endpoint.rs`, `logging.rs`), collecting every problem at once, each naming its key;
//! nothing binds before the config is whole. Defaults live in `defaults.rs`, the credential kinds in `kinds.rs`;
//! docs/configuration.md describes every key.

mod check;
pub mod defaults;
mod effective;
mod entra;
mod identity_endpoint;
pub mod kinds;
mod load;
mod logging;
mod profiles;
pub mod raw;
mod routes;
mod server;
mod suggest;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use entra::EntraConfig;
pub(crate) use identity_endpoint::identity_header_problem;
pub use identity_endpoint::{normalise_resource, IdentityEndpointConfig};
pub use kinds::{KindSpec, KINDS};
pub use load::{
    find_config_file, literal_secret_warnings, load, load_from_str, load_quietly, ConfigSource,
    Format, LoadedConfig, FILE_NAMES,
};
pub use logging::{LogFormat, LoggingConfig};
pub use profiles::{CertificateFiles, ClientCredential, ManagedIdentityId, Profile, ProfileKind};
pub use raw::{RawConfig, RawIdentityEndpoint, SecretValue};
pub use routes::Route;
pub use server::{DefaultProfileChoice, Limits, ListenAddr, ServerConfig};

use crate::env::Environment;
use crate::secret::Secret;

/// The embedded default config: what patless serves when no config file is found.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[entra]`
    pub entra: EntraConfig,
    /// Profiles by name (including an implicit `auto` when host routes need it).
    pub profiles: BTreeMap<String, Profile>,
    /// Explicit routes, in file order.
    pub routes: Vec<Route>,
    /// `[identity_endpoint]`, if set.
    pub identity_endpoint: Option<IdentityEndpointConfig>,
    /// `[logging]`
    pub logging: LoggingConfig,
}

impl Config {
    /// The profiles that some route (or host routes) uses, in name order.
    pub fn profiles_in_use(&self) -> Vec<&Profile> {
        let mut names: Vec<&str> = self.routes.iter().map(|r| r.profile.as_str()).collect();
        if self.server.host_routes {
            names.push(&self.server.default_profile);
        }
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| self.profiles.get(n))
            .collect()
    }
}

/// One problem with the configuration: which key, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// Dotted key path (`routes[1].profile`).
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be used. Every variant means: nothing starts (exit 64).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` or `$PATLESS_CONFIG` does not exist or can't be read.
    #[error("config file {path}: {reason}")]
    File {
        /// Path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Two config files in the directory where the first is found (`patless.toml` and
    /// `patless.yaml`): which one is meant cannot be told.
    #[error("{}: keep one, or name the one to use with --config FILE", both(paths))]
    Ambiguous {
        /// The files, in lookup order.
        paths: Vec<PathBuf>,
    },
    /// The file or the environment could not be read into the config's shape.
    #[error("invalid configuration ({source_name}):\n{}", bullet(errors))]
    Parse {
        /// File or "embedded default".
        source_name: String,
        /// Every error.
        errors: Vec<String>,
    },
    /// The values are wrong.
    #[error("invalid configuration ({source_name}):\n{}", bullet(errors))]
    Invalid {
        /// File or "embedded default".
        source_name: String,
        /// Every error, each naming its key.
        errors: Vec<KeyError>,
    },
}

/// One line per item, a hint or snippet on the lines after it indented under it.
fn bullet<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|e| format!("  - {}", e.to_string().replace('\n', "\n    ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `config files a and b are both present` (`a, b and c are all present`).
fn both(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    match names.split_last() {
        Some((last, rest)) if rest.len() > 1 => {
            format!(
                "config files {} and {last} are all present",
                rest.join(", ")
            )
        }
        Some((last, rest)) => format!("config files {} and {last} are both present", rest.join("")),
        None => "no config file".into(),
    }
}

/// Parses `"30s"`, `"250ms"`, `"5m"`, `"1h"` or plain seconds.
///
/// ```
/// use std::time::Duration;
/// use patless::config::parse_duration;
/// assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
/// assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
/// assert_eq!(parse_duration("12"), Some(Duration::from_secs(12)));
/// assert_eq!(parse_duration("soon"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "sec" | "secs" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// A secret reference, resolved at each acquisition (so rotated files are picked up).
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A literal value from the config.
    Literal(Secret),
    /// An environment variable.
    Env(String),
    /// A file, re-read each time, trailing newline trimmed.
    File(PathBuf),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Literal(_) => f.write_str("literal(<redacted>)"),
            SecretSource::Env(name) => write!(f, "env({name})"),
            SecretSource::File(path) => write!(f, "file({})", path.display()),
        }
    }
}

impl SecretSource {
    /// Reads the secret now. The error says where it looked, never what it found.
    pub fn resolve(&self, env: &dyn Environment) -> Result<Secret, String> {
        match self {
            SecretSource::Literal(s) => Ok(s.clone()),
            SecretSource::Env(name) => match env.var(name) {
                Some(v) if !v.is_empty() => Ok(Secret::new(v)),
                _ => Err(format!("environment variable {name} is not set or empty")),
            },
            SecretSource::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => {
                    let v = text.trim_end_matches(['\n', '\r']);
                    if v.is_empty() {
                        Err(format!("secret file {} is empty", path.display()))
                    } else {
                        Ok(Secret::new(v))
                    }
                }
                Err(e) => Err(format!("cannot read secret file {}: {e}", path.display())),
            },
        }
    }
}
