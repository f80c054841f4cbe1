//! The cache: one [`TokenEntry`] per (profile, scope, claims), created on first use over the
//! profile's credential, handed over to the next cache on a reload, stopped on shutdown. The
//! entries of one profile share its [`ProfileFailures`], so that its failures are logged once for
//! the profile, not once per scope.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{ProfileFailures, TokenEntry};
use crate::credentials::Credential;
use crate::metrics::Metrics;

/// Identifies a cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Profile name.
    pub profile: String,
    /// Scope.
    pub scope: String,
    /// Claims challenge JSON, if any.
    pub claims: Option<String>,
}

/// Timing settings of the cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Bound on one acquisition.
    pub acquire_timeout: Duration,
    /// How long a request waits for an acquisition in flight.
    pub wait_timeout: Duration,
}

/// All entries, by key; credentials by profile.
pub struct TokenCache {
    credentials: HashMap<String, Arc<dyn Credential>>,
    entries: Mutex<HashMap<CacheKey, Arc<TokenEntry>>>,
    /// Each profile's failures, shared by its entries (and handed over with them on a reload).
    failures: Mutex<HashMap<String, Arc<ProfileFailures>>>,
    settings: CacheSettings,
    metrics: Metrics,
    runtime: Option<tokio::runtime::Handle>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("profiles", &self.credentials.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TokenCache {
    /// A cache over these credentials.
    pub fn new(
        credentials: HashMap<String, Arc<dyn Credential>>,
        settings: CacheSettings,
        metrics: Metrics,
    ) -> Self {
        TokenCache {
            credentials,
            entries: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            settings,
            metrics,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// The credential of a profile.
    pub fn credential(&self, profile: &str) -> Option<&Arc<dyn Credential>> {
        self.credentials.get(profile)
    }

    /// The entry for (profile, scope, claims), created on first use. `None` for an unknown profile.
    /// Not for the hot path: routes look their entries up once, at start.
    pub fn entry(
        &self,
        profile: &str,
        scope: &str,
        claims: Option<&str>,
    ) -> Option<Arc<TokenEntry>> {
        let credential = self.credentials.get(profile)?;
        let key = CacheKey {
            profile: profile.to_string(),
            scope: scope.to_string(),
            claims: claims.map(str::to_string),
        };
        let mut entries = self.entries.lock().ok()?;
        let entry = entries.entry(key.clone()).or_insert_with(|| {
            Arc::new(TokenEntry::new(
                key,
                Arc::clone(credential),
                self.failures_of(profile),
                self.settings,
                self.metrics.clone(),
                self.runtime.clone(),
            ))
        });
        Some(Arc::clone(entry))
    }

    /// The failures of `profile`, shared by all its entries.
    fn failures_of(&self, profile: &str) -> Arc<ProfileFailures> {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let shared = failures
            .entry(profile.to_string())
            .or_insert_with(|| Arc::new(ProfileFailures::new(profile)));
        Arc::clone(shared)
    }

    /// Every entry created so far.
    pub fn entries(&self) -> Vec<Arc<TokenEntry>> {
        self.entries
            .lock()
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes over the entries of `old` that `keep` picks — the same objects, so their tokens and
    /// running refreshers carry on (a config reload that left their profiles unchanged; those
    /// profiles' credentials in this cache must be `old`'s too). Returns the keys taken over;
    /// until [`TokenCache::release`], both caches hold them.
    pub fn adopt(&self, old: &TokenCache, keep: impl Fn(&CacheKey) -> bool) -> Vec<CacheKey> {
        let mut adopted = Vec::new();
        let theirs = old.entries();
        if let Ok(mut ours) = self.entries.lock() {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            for e in theirs.into_iter().filter(|e| keep(e.key())) {
                adopted.push(e.key().clone());
                // The profile's new entries join the adopted ones' failures: one story per
                // profile across the reload.
                failures.insert(e.key().profile.clone(), Arc::clone(&e.failures));
                ours.insert(e.key().clone(), e);
            }
        }
        adopted
    }

    /// Forgets the entries of `keys` without stopping them, because another cache adopted
    /// them: dropping or stopping this cache then leaves their refreshers running.
    pub fn release(&self, keys: &[CacheKey]) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|k, _| !keys.contains(k));
        }
    }

    /// Stops the refresher of every entry this cache holds, now (shutdown, or a replaced
    /// configuration's entries); returns their keys. A stopped entry's cached token stays
    /// readable, but nothing renews it.
    pub fn stop(&self) -> Vec<CacheKey> {
        let mut stopped = Vec::new();
        for e in self.entries() {
            if e.stop() {
                stopped.push(e.key().clone());
            }
        }
        stopped
    }
}

impl Drop for TokenCache {
    fn drop(&mut self) {
        if let Ok(entries) = self.entries.lock() {
            for e in entries.values() {
                e.abort();
            }
        }
    }
}
