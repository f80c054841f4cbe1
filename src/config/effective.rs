//! `patless config`: the configuration in effect — file, environment and defaults, with inferred
//! scopes and the implicit `auto` profile — in the file's own shape, every literal secret
//! redacted. Each section prints itself (`ServerConfig::to_raw`, …); this file puts them together.

use std::time::Duration;

use super::raw::{self, RawConfig, SecretValue};
use super::{Config, SecretSource};

impl Config {
    /// The effective configuration in the file's shape, every literal secret redacted. `raw` is
    /// the configuration as read, for what the model does not keep (the opt-outs of `[server]`).
    pub fn effective(&self, raw: &RawConfig) -> RawConfig {
        RawConfig {
            server: self.server.to_raw(&raw.server),
            entra: self.entra.to_raw(),
            profiles: self
                .profiles
                .values()
                .map(|p| (p.name.clone(), p.to_raw()))
                .collect(),
            routes: self.routes.iter().map(|r| r.to_raw()).collect(),
            identity_endpoint: self.identity_endpoint.as_ref().map(|ie| ie.to_raw()),
            logging: self.logging.to_raw(),
        }
    }
}

/// A secret reference as written, a literal value redacted.
pub(super) fn redacted_ref(s: &SecretSource) -> SecretValue {
    match s {
        SecretSource::Literal(_) => SecretValue::Literal("<redacted>".into()),
        SecretSource::Env(env) => SecretValue::Env(raw::EnvRef { env: env.clone() }),
        SecretSource::File(file) => SecretValue::File(raw::FileRef { file: file.clone() }),
    }
}

/// A duration as `patless config` writes it: whole seconds, else milliseconds.
pub(super) fn duration_text(d: Duration) -> raw::RawDuration {
    let ms = d.as_millis();
    raw::RawDuration::Text(if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    })
}
