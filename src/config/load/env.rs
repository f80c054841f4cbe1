//! `PATLESS_SECTION__KEY` variables → config keys (docs/configuration.md#environment-overrides).
//!
//! A name is split at `__` and lower-cased. A profile's name in it matches the profile the file
//! defines whose name reads the same with `-` as `_` (`ADO_BOT` is `ado-bot`). A value is read as
//! its key's type says: a whole number, `true`/`false`, a comma-separated list, else the text as
//! it is (a secret `0123` stays the text `0123`; nothing is guessed from how a value looks). A
//! variable that names no key is not applied: it becomes a warning naming the nearest key.

use std::collections::{BTreeMap, BTreeSet};

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use crate::config::{suggest, KeyError};
use crate::env::Environment;

/// How a variable's text becomes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    /// As written: strings, secrets, paths, durations (`"30s"`, `"7"`).
    Text,
    /// `true` or `false`, in any case.
    Bool,
    /// A whole number.
    Number,
    /// Comma-separated; blank items dropped.
    List,
}

use Type::{Bool, List, Number, Text};

/// Every key a variable can set, with its type; `*` is a profile's name. `[[routes]]`, a list of
/// tables without names, is the file's alone. A test holds this to the serde types in `raw.rs`.
const KEYS: &[(&str, Type)] = &[
    ("server.listen", Text),
    ("server.admin_listen", Text),
    ("server.host_routes", Bool),
    ("server.allowed_hosts", List),
    ("server.allowed_origins", List),
    ("server.inbound_token", Text),
    ("server.unix_socket_mode", Text),
    ("server.max_header_bytes", Number),
    ("server.header_read_timeout", Text),
    ("server.idle_timeout", Text),
    ("server.max_connections", Number),
    ("server.workers", Number),
    ("server.max_uri_bytes", Number),
    ("server.allow_unauthenticated_clients", Bool),
    ("server.admin_token", Text),
    ("server.allow_unauthenticated_admin", Bool),
    ("server.default_profile", Text),
    ("server.state_dir", Text),
    ("server.shutdown_grace", Text),
    ("server.shutdown_delay", Text),
    ("server.watch_config", Bool),
    ("server.connect_timeout", Text),
    ("server.response_header_timeout", Text),
    ("server.token_wait_timeout", Text),
    ("server.upstream_http2", Bool),
    ("server.upstream_max_idle", Number),
    ("server.egress_proxy", Text),
    ("server.no_proxy", List),
    ("entra.authority_host", Text),
    ("entra.tenant_id", Text),
    ("entra.ca_file", Text),
    ("entra.request_timeout", Text),
    ("profiles.*.kind", Text),
    ("profiles.*.tenant_id", Text),
    ("profiles.*.client_id", Text),
    ("profiles.*.client_secret", Text),
    ("profiles.*.authority_host", Text),
    ("profiles.*.certificate", Text),
    ("profiles.*.certificate_key", Text),
    ("profiles.*.certificate_password", Text),
    ("profiles.*.send_certificate_chain", Bool),
    ("profiles.*.object_id", Text),
    ("profiles.*.resource_id", Text),
    ("profiles.*.endpoint", Text),
    ("profiles.*.token_file", Text),
    ("profiles.*.subscription", Text),
    ("profiles.*.redirect_port", Number),
    ("profiles.*.redirect_uri", Text),
    ("profiles.*.service_connection_id", Text),
    ("profiles.*.system_access_token", Text),
    ("profiles.*.client_capabilities", List),
    ("identity_endpoint.listen", Text),
    ("identity_endpoint.header", Text),
    ("identity_endpoint.profile", Text),
    ("identity_endpoint.resources", List),
    ("identity_endpoint.imds", Bool),
    ("logging.format", Text),
];

/// `PATLESS_…` variables patless reads for itself: never keys, never warned about.
const NOT_KEYS: &[&str] = &["PATLESS_CONFIG", "PATLESS_LOG"];

/// The name of the environment's values in figment (how an error tells them from the file's).
pub(super) const METADATA_NAME: &str = "PATLESS_… environment variables";

/// The `PATLESS_…` variables, read against the profiles the file defines.
#[derive(Debug, Default)]
pub(super) struct Overrides {
    /// The values, as one table to merge over the file's.
    values: Dict,
    /// Each key set (dotted: `profiles.ado-bot.client_id`) → the variable that set it.
    origins: BTreeMap<String, String>,
    /// Profiles no file defines, made by variables alone → one of those variables.
    made: BTreeMap<String, String>,
    /// The profiles the file defines.
    defined: Vec<String>,
    /// Variables that name no key, each saying so (and the nearest key).
    pub(super) warnings: Vec<String>,
    /// Variables whose key cannot be told (a name that matches two profiles).
    pub(super) errors: Vec<String>,
}

impl Overrides {
    /// Reads every `PATLESS_…` variable of `env`. `defined` are the file's profiles; `referenced`
    /// the variables the file names in `{ env = "…" }` (secrets, not keys).
    pub(super) fn read(
        env: &dyn Environment,
        defined: Vec<String>,
        referenced: &BTreeSet<String>,
    ) -> Overrides {
        let mut vars: Vec<(String, String)> = env
            .vars()
            .into_iter()
            .filter(|(name, _)| name.starts_with("PATLESS_"))
            .collect();
        vars.sort();
        let mut out = Overrides {
            defined,
            ..Overrides::default()
        };
        for (name, text) in vars {
            if NOT_KEYS.contains(&name.as_str()) || referenced.contains(&name) {
                continue;
            }
            let rest = &name["PATLESS_".len()..];
            if !rest.contains("__") {
                // Not a key, unless it is one with `_` for `__` (or one letter off).
                if let Some(w) = out.not_a_setting(&name, &[], 1) {
                    out.warnings.push(w);
                }
                continue;
            }
            let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            match out.resolve(&segments) {
                Ok(Some((path, ty))) => out.set(path, ty, &text, &name),
                Ok(None) => {
                    let limit = suggest::letters(rest).len() / 3;
                    let warning = out.not_a_setting(&name, &segments, limit.max(1));
                    out.warnings
                        .push(warning.unwrap_or_else(|| ignored(&name, &segments)));
                }
                Err(why) => out.errors.push(format!("{name}: {why}")),
            }
        }
        out
    }

    /// The key that `segments` name, and its type; `None` when they name none.
    fn resolve(&self, segments: &[String]) -> Result<Option<(Vec<String>, Type)>, String> {
        match segments {
            [section, name, key] if section == "profiles" => {
                let Some(ty) = type_of(&format!("profiles.*.{key}")) else {
                    return Ok(None);
                };
                let name = self.profile(name)?;
                Ok(Some((vec![section.clone(), name, key.clone()], ty)))
            }
            [section, key] => Ok(type_of(&format!("{section}.{key}"))
                .map(|ty| (vec![section.clone(), key.clone()], ty))),
            _ => Ok(None),
        }
    }

    /// The defined profile `segment` names (`-` read as `_`, case ignored), else a new one of
    /// that name; two that match are an error.
    fn profile(&self, segment: &str) -> Result<String, String> {
        let matches: Vec<&String> = self
            .defined
            .iter()
            .filter(|p| p.replace('-', "_").eq_ignore_ascii_case(segment))
            .collect();
        match matches.as_slice() {
            [] => Ok(segment.to_string()),
            [one] => Ok(one.to_string()),
            many => Err(format!(
                "matches the profiles {} alike (in a variable's name `_` stands for `_` and `-`); \
                 rename one of them, or set it in the file",
                many.iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            )),
        }
    }

    fn set(&mut self, path: Vec<String>, ty: Type, text: &str, var: &str) {
        if path[0] == "profiles" && !self.defined.contains(&path[1]) {
            self.made
                .entry(path[1].clone())
                .or_insert_with(|| var.to_string());
        }
        insert(&mut self.values, &path, typed(ty, text));
        self.origins.insert(path.join("."), var.to_string());
    }

    /// "`var` is not a patless setting; did you mean …?" when a key's variable is within
    /// `limit` letters of `var`; `segments` may name a profile the file does not define.
    fn not_a_setting(&self, var: &str, segments: &[String], limit: usize) -> Option<String> {
        let mut profiles = self.defined.clone();
        profiles.extend(self.made.keys().cloned());
        if let [_, name, _] = segments {
            profiles.push(name.clone());
        }
        let candidates = candidates(&profiles);
        let names = candidates.iter().map(|(var, _)| var.as_str());
        let near = suggest::nearest_within(&var["PATLESS_".len()..], names, limit)?;
        let (near, key) = candidates.iter().find(|(v, _)| v == near)?;
        Some(format!(
            "{var} is not a patless setting; did you mean PATLESS_{near} ({key})?"
        ))
    }

    /// The provider that merges the values over the file's.
    pub(super) fn provider(&self) -> EnvProvider {
        EnvProvider(self.values.clone())
    }

    /// The keys the variables set, dotted.
    pub(super) fn keys(&self) -> Vec<String> {
        self.origins.keys().cloned().collect()
    }

    /// The variable that set the dotted `key`, or one under it.
    pub(super) fn origin(&self, key: &str) -> Option<&str> {
        self.origins.get(key).map(String::as_str).or_else(|| {
            let prefix = format!("{key}.");
            self.origins
                .iter()
                .find(|(k, _)| k.starts_with(&prefix))
                .map(|(_, v)| v.as_str())
        })
    }

    /// `error`, saying which variable set its key, or made its profile.
    pub(super) fn annotate(&self, mut error: KeyError) -> KeyError {
        if let Some(var) = self.origins.get(&error.key) {
            error.message.push_str(&format!(" (from {var})"));
            return error;
        }
        let made = self.made.iter().find(|(name, _)| {
            error.key == format!("profiles.{name}")
                || error.key.starts_with(&format!("profiles.{name}."))
        });
        if let Some((name, var)) = made {
            let defined = match self.defined.as_slice() {
                [] => "it defines none".to_string(),
                names => format!("it defines: {}", names.join(", ")),
            };
            error.message.push_str(&format!(
                " ({var} names the profile `{name}`, which the config does not define; {defined})"
            ));
        }
        error
    }
}

/// The figment provider of the environment's values.
pub(super) struct EnvProvider(Dict);

impl Provider for EnvProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named(METADATA_NAME)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

fn type_of(key: &str) -> Option<Type> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, ty)| *ty)
}

/// `text` as a value of type `ty`; text that is not one stays text, so that the error names
/// the key and what it expected.
fn typed(ty: Type, text: &str) -> Value {
    let t = text.trim();
    let as_text = || Value::from(text.to_string());
    match ty {
        Text => as_text(),
        Bool if t.eq_ignore_ascii_case("true") => Value::from(true),
        Bool if t.eq_ignore_ascii_case("false") => Value::from(false),
        Bool => as_text(),
        Number => match (t.parse::<u64>(), t.parse::<i64>()) {
            (Ok(n), _) => Value::from(n),
            (_, Ok(n)) => Value::from(n),
            _ => as_text(),
        },
        List => Value::from(
            t.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(Value::from)
                .collect::<Vec<Value>>(),
        ),
    }
}

fn insert(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// Every key as the rest of its variable's name (`SERVER__LISTEN`) and dotted (`server.listen`);
/// a profile's keys once for each of `profiles`.
fn candidates(profiles: &[String]) -> Vec<(String, String)> {
    let var = |segments: &[&str]| {
        segments
            .iter()
            .map(|s| s.replace('-', "_").to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join("__")
    };
    let mut out = Vec::new();
    for (key, _) in KEYS {
        match key.strip_prefix("profiles.*.") {
            Some(k) => out.extend(
                profiles
                    .iter()
                    .map(|p| (var(&["profiles", p, k]), format!("profiles.{p}.{k}"))),
            ),
            None => out.push((var(&key.split('.').collect::<Vec<_>>()), key.to_string())),
        }
    }
    out
}

/// The warning for a variable that names no key and none nearly.
fn ignored(var: &str, segments: &[String]) -> String {
    if segments.first().is_some_and(|s| s == "routes") {
        format!(
            "{var} is not a patless setting: routes are written in the config file, as \
             [[routes]]; it is ignored"
        )
    } else {
        format!("{var} is not a patless setting; it is ignored")
    }
}

/// The variables a config names in `{ env = "…" }`: secrets to read, not keys.
pub(super) fn referenced(file: &Dict) -> BTreeSet<String> {
    fn walk(value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::Dict(_, d) => {
                if let (1, Some(Value::String(_, name))) = (d.len(), d.get("env")) {
                    out.insert(name.clone());
                }
                d.values().for_each(|v| walk(v, out));
            }
            Value::Array(_, items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    file.values().for_each(|v| walk(v, &mut out));
    out
}

#[cfg(test)]
mod tests;
