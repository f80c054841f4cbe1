//! The process environment, injected: code reads variables through [`Environment`], so tests pass
//! a map instead of calling `std::env::set_var`.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A source of environment variables.
pub trait Environment: Send + Sync + 'static {
    /// The value of `name`, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable, for prefix scans (`PATLESS_…`).
    fn vars(&self) -> Vec<(String, String)>;
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

/// A fixed set of variables (tests, or a frozen snapshot).
#[derive(Debug, Default, Clone)]
pub struct MapEnv(pub BTreeMap<String, String>);

impl MapEnv {
    /// An environment holding exactly these pairs.
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        MapEnv(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl Environment for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn vars(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Shared handle to an environment.
pub type Env = Arc<dyn Environment>;

/// A non-empty variable.
pub fn non_empty(env: &dyn Environment, name: &str) -> Option<String> {
    env.var(name).filter(|v| !v.trim().is_empty())
}
