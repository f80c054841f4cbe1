//! One cache entry: the token of one (profile, scope, claims), read without a lock, and the
//! single-flight wait for its acquisition when there is none ([`TokenEntry::get`]) or an upstream
//! refused it ([`TokenEntry::reacquire`]). The acquisitions themselves are the refresher's
//! (`refresher.rs`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::{CacheKey, CacheSettings, CachedToken, ProfileFailures};
use crate::credentials::{Credential, CredentialError, ErrorClass};
use crate::metrics::Metrics;

/// No token can be had now: the request gets `503 token_unavailable` with `Retry-After`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TokenUnavailable {
    /// What happened and what to do.
    pub message: String,
    /// Seconds the client should wait.
    pub retry_after: Duration,
    /// The class of the last failure, if one.
    pub class: Option<ErrorClass>,
}

/// A token acquired by [`TokenEntry::reacquire`] that is refused before any upstream accepted it
/// is not replaced again within this: an identity the API refuses (no permission, not a member
/// of the organization) must not turn every request into a token request. A replacement that
/// was accepted and is refused later (a revocation, a claims challenge) is replaced at once.
pub const FORCED_REACQUIRE_INTERVAL: Duration = Duration::from_secs(30);

/// Why [`TokenEntry::reacquire`] gives no fresh token: the original answer is passed on.
#[derive(Debug, Clone)]
pub enum NoReplay {
    /// The rejected token was itself a forced replacement, younger than
    /// [`FORCED_REACQUIRE_INTERVAL`].
    RecentlyReplaced,
    /// The acquisition failed (the token stays invalidated: it is known to be refused).
    Unavailable(TokenUnavailable),
}

/// What the refresher publishes to the requests waiting on it.
#[derive(Clone, Default)]
pub(super) struct Status {
    pub(super) acquiring: bool,
    pub(super) last_error: Option<Arc<CredentialError>>,
    pub(super) next_attempt: Option<Instant>,
    pub(super) ever_valid: bool,
}

/// One (profile, scope, claims) entry with its refresher.
pub struct TokenEntry {
    pub(super) key: CacheKey,
    pub(super) credential: Arc<dyn Credential>,
    /// The failures of the entry's profile, shared with its other entries (what to log).
    pub(super) failures: Arc<ProfileFailures>,
    pub(super) settings: CacheSettings,
    pub(super) metrics: Metrics,
    pub(super) current: ArcSwapOption<CachedToken>,
    pub(super) status: watch::Sender<Status>,
    started: AtomicBool,
    pub(super) wake: Notify,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// Where the refresher runs: the runtime the cache was made on, not a proxy worker thread
    /// whose request happened to need the entry first.
    runtime: Option<tokio::runtime::Handle>,
    /// A forced acquisition asked for by [`TokenEntry::reacquire`]: `Some(claims)`.
    pub(super) forced: Mutex<Option<Option<String>>>,
    /// Counts forced acquisitions asked for; the refresher notes the count it served.
    pub(super) wanted: AtomicU64,
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("key", &self.key)
            .finish()
    }
}

/// What `/readyz` and `check` need to know about an entry.
#[derive(Debug, Clone)]
pub struct EntryStatus {
    /// Profile.
    pub profile: String,
    /// Scope.
    pub scope: String,
    /// Has held a valid token at least once.
    pub ever_valid: bool,
    /// Holds a usable token now.
    pub valid_now: bool,
    /// The last acquisition's error, if it failed.
    pub last_error: Option<(ErrorClass, String)>,
}

impl TokenEntry {
    /// An entry with no token and no refresher yet; [`TokenEntry::start`] starts it on `runtime`
    /// (or the current one).
    pub(super) fn new(
        key: CacheKey,
        credential: Arc<dyn Credential>,
        failures: Arc<ProfileFailures>,
        settings: CacheSettings,
        metrics: Metrics,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Self {
        TokenEntry {
            key,
            credential,
            failures,
            settings,
            metrics,
            current: ArcSwapOption::empty(),
            status: watch::channel(Status::default()).0,
            started: AtomicBool::new(false),
            wake: Notify::new(),
            task: Mutex::new(None),
            runtime,
            forced: Mutex::new(None),
            wanted: AtomicU64::new(0),
        }
    }

    /// The entry's key.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Starts the background refresher (once); idempotent.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        let refresh = async move { me.refresh_loop().await };
        let handle = match &self.runtime {
            Some(rt) => rt.spawn(refresh),
            None => tokio::spawn(refresh),
        };
        if let Ok(mut slot) = self.task.lock() {
            *slot = Some(handle.abort_handle());
        }
    }

    /// Stops the refresher now, if it runs; `true` when this call stopped it. The cached token
    /// stays readable, but nothing renews it.
    pub(super) fn stop(&self) -> bool {
        match self.task.lock().ok().and_then(|mut t| t.take()) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Aborts the refresher, if it runs, leaving its handle in place (the owning cache is being
    /// dropped).
    pub(super) fn abort(&self) {
        if let Ok(task) = self.task.lock() {
            if let Some(t) = task.as_ref() {
                t.abort();
            }
        }
    }

    /// The cached token if it may still be sent, read without a lock (the request path's fast
    /// path); `None` means [`TokenEntry::get`] must wait for an acquisition.
    pub fn usable(&self) -> Option<Arc<CachedToken>> {
        let guard = self.current.load();
        match guard.as_ref() {
            Some(t) if t.is_usable() => Some(Arc::clone(t)),
            _ => None,
        }
    }

    /// A usable token: the cached one (lock-free), or the result of the acquisition in flight.
    pub async fn get(self: &Arc<Self>) -> Result<Arc<CachedToken>, TokenUnavailable> {
        if let Some(t) = self.usable() {
            return Ok(t);
        }
        self.start();
        let mut rx = self.status.subscribe();
        let deadline = Instant::now() + self.settings.wait_timeout;
        loop {
            if let Some(t) = self.usable() {
                return Ok(t);
            }
            let status = rx.borrow_and_update().clone();
            if !status.acquiring {
                if let Some(err) = &status.last_error {
                    let retry = status
                        .next_attempt
                        .map(|n| n.saturating_duration_since(Instant::now()))
                        .unwrap_or(Duration::from_secs(1));
                    return Err(self.unavailable(err, retry));
                }
                // No token, no error, nothing in flight (expired while the refresher slept, say):
                // wake it. `notify_waiters` stores no permit, so a request that arrives before the
                // refresher's first attempt cannot cause a second acquisition afterwards.
                self.wake.notify_waiters();
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(self.refresher_stopped()),
                Err(_) => return Err(self.still_acquiring()),
            }
        }
    }

    /// An upstream refused `rejected` (a `401`, or a claims challenge when `claims` is given):
    /// drop it, have the refresher acquire a replacement — bypassing the cached token, with the
    /// challenge's claims if any — and wait for it, single-flight like any acquisition. When
    /// another request already replaced `rejected` (and no claims are asked for), the newer token
    /// is the answer.
    pub async fn reacquire(
        self: &Arc<Self>,
        rejected: &Arc<CachedToken>,
        claims: Option<String>,
    ) -> Result<Arc<CachedToken>, NoReplay> {
        let current = self.current.load_full();
        let still_current = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, rejected));
        if !still_current {
            // Another request already replaced it, or its replacement is under way.
            return self.get().await.map_err(NoReplay::Unavailable);
        }
        if rejected.forced
            && !rejected.was_accepted()
            && rejected.acquired_at.elapsed() < FORCED_REACQUIRE_INTERVAL
        {
            tracing::debug!(
                profile = %self.key.profile,
                scope = %self.key.scope,
                "the upstream refused a token acquired after a refusal moments ago: passing its \
                 answer on rather than asking Entra again"
            );
            return Err(NoReplay::RecentlyReplaced);
        }
        if !self.ask_for_replacement(&current, claims) {
            return self.get().await.map_err(NoReplay::Unavailable);
        }
        self.start();
        // A stored permit: the refresher acquires at its next wait even if it is busy right now.
        self.wake.notify_one();
        self.get().await.map_err(NoReplay::Unavailable)
    }

    /// Drops `current` (the rejected token) and records a forced acquisition with `claims`;
    /// `false`, with nothing changed, when another token replaced it meanwhile (that one stays).
    fn ask_for_replacement(
        &self,
        current: &Option<Arc<CachedToken>>,
        claims: Option<String>,
    ) -> bool {
        // Under the lock the refresher takes the request with, so it sees both or neither.
        let mut forced = self.forced.lock().unwrap_or_else(|e| e.into_inner());
        let prev = self.current.compare_and_swap(current, None);
        let swapped = match (&*prev, current) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if swapped {
            *forced = Some(claims);
            self.wanted.fetch_add(1, Ordering::AcqRel);
        }
        swapped
    }

    fn unavailable(&self, err: &CredentialError, retry: Duration) -> TokenUnavailable {
        TokenUnavailable {
            message: format!(
                "no valid token for profile `{}` (scope {}): {}",
                self.key.profile, self.key.scope, err.message
            ),
            retry_after: retry.max(Duration::from_secs(1)),
            class: Some(err.class),
        }
    }

    fn refresher_stopped(&self) -> TokenUnavailable {
        TokenUnavailable {
            message: format!(
                "the token refresher for profile `{}` stopped",
                self.key.profile
            ),
            retry_after: Duration::from_secs(1),
            class: None,
        }
    }

    fn still_acquiring(&self) -> TokenUnavailable {
        TokenUnavailable {
            message: format!(
                "no token for profile `{}` yet: the acquisition is still running after {}s",
                self.key.profile,
                self.settings.wait_timeout.as_secs()
            ),
            retry_after: Duration::from_secs(1),
            class: Some(ErrorClass::Timeout),
        }
    }

    /// The entry's state, for readiness and diagnostics.
    pub fn status(&self) -> EntryStatus {
        let s = self.status.borrow().clone();
        EntryStatus {
            profile: self.key.profile.clone(),
            scope: self.key.scope.clone(),
            ever_valid: s.ever_valid,
            valid_now: self.usable().is_some(),
            last_error: s.last_error.map(|e| (e.class, e.message.clone())),
        }
    }
}
