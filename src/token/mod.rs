//! The token cache (docs/credentials.md, "Token lifecycle"): one entry per (profile, scope,
//! claims), wrapped around any credential. Each entry has one background refresher, the only code
//! that talks to Entra for it: concurrent misses wait for its one acquisition (single-flight),
//! tokens are renewed before they expire, failures back off with jitter, and a cached token is
//! served through an outage until the clock-skew margin — never after. The request path reads the
//! current token from an `ArcSwap`, without a lock.

pub mod schedule;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::credentials::{Credential, CredentialError, ErrorClass};
use crate::metrics::Metrics;
use crate::secret::Secret;

/// A token ready to attach.
pub struct CachedToken {
    /// `Bearer <token>`, marked sensitive.
    pub header: HeaderValue,
    token: Secret,
    /// When Entra says it expires.
    pub expires_at: Instant,
    /// Last moment it may be sent (expiry minus the skew margin).
    pub usable_until: Instant,
    /// Expiry as Unix seconds (for metrics and `patless token`).
    pub expires_unix: u64,
    /// When it was received.
    pub acquired_at: Instant,
    /// It was acquired because an upstream rejected its predecessor (see
    /// [`TokenEntry::reacquire`]).
    pub forced: bool,
    /// An upstream has accepted it at least once.
    accepted: AtomicBool,
}

impl CachedToken {
    /// The raw token, for the one caller that prints it (`patless token`) or decodes it (`check`).
    pub fn secret(&self) -> &Secret {
        &self.token
    }

    /// Whether it may still be sent.
    pub fn is_usable(&self) -> bool {
        Instant::now() < self.usable_until
    }

    /// Notes that an upstream accepted it (written once per token, so the hot path only reads).
    pub fn mark_accepted(&self) {
        if !self.accepted.load(Ordering::Relaxed) {
            self.accepted.store(true, Ordering::Relaxed);
        }
    }

    /// Whether an upstream has accepted it.
    pub fn was_accepted(&self) -> bool {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &self.token)
            .field("expires_unix", &self.expires_unix)
            .finish()
    }
}

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

/// Timing settings of the cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Bound on one acquisition.
    pub acquire_timeout: Duration,
    /// How long a request waits for an acquisition in flight.
    pub wait_timeout: Duration,
}

#[derive(Clone, Default)]
struct Status {
    acquiring: bool,
    last_error: Option<Arc<CredentialError>>,
    next_attempt: Option<Instant>,
    ever_valid: bool,
}

/// One (profile, scope, claims) entry with its refresher.
pub struct TokenEntry {
    key: CacheKey,
    credential: Arc<dyn Credential>,
    settings: CacheSettings,
    metrics: Metrics,
    current: ArcSwapOption<CachedToken>,
    status: watch::Sender<Status>,
    started: AtomicBool,
    wake: Notify,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// Where the refresher runs: the runtime the cache was made on, not a proxy worker thread
    /// whose request happened to need the entry first.
    runtime: Option<tokio::runtime::Handle>,
    /// A forced acquisition asked for by [`TokenEntry::reacquire`]: `Some(claims)`.
    forced: Mutex<Option<Option<String>>>,
    /// Counts forced acquisitions asked for; the refresher notes the count it served.
    wanted: std::sync::atomic::AtomicU64,
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
                Ok(Err(_)) => {
                    return Err(TokenUnavailable {
                        message: format!(
                            "the token refresher for profile `{}` stopped",
                            self.key.profile
                        ),
                        retry_after: Duration::from_secs(1),
                        class: None,
                    })
                }
                Err(_) => {
                    return Err(TokenUnavailable {
                        message: format!(
                        "no token for profile `{}` yet: the acquisition is still running after {}s",
                        self.key.profile,
                        self.settings.wait_timeout.as_secs()
                    ),
                        retry_after: Duration::from_secs(1),
                        class: Some(ErrorClass::Timeout),
                    })
                }
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
        {
            // Under the lock the refresher takes the request with, so it sees both or neither.
            let mut forced = self.forced.lock().unwrap_or_else(|e| e.into_inner());
            // Only the rejected token is dropped; one that replaced it meanwhile stays.
            let prev = self.current.compare_and_swap(&current, None);
            let swapped = match (&*prev, &current) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            if !swapped {
                drop(forced);
                return self.get().await.map_err(NoReplay::Unavailable);
            }
            *forced = Some(claims);
            self.wanted.fetch_add(1, Ordering::AcqRel);
        }
        self.start();
        // A stored permit: the refresher acquires at its next wait even if it is busy right now.
        self.wake.notify_one();
        self.get().await.map_err(NoReplay::Unavailable)
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

    async fn refresh_loop(self: Arc<Self>) {
        let profile = self.key.profile.clone();
        let mut failures: u32 = 0;
        loop {
            self.status.send_modify(|s| s.acquiring = true);
            let started = Instant::now();
            let (served, forced) = {
                let mut f = self.forced.lock().unwrap_or_else(|e| e.into_inner());
                (self.wanted.load(Ordering::Acquire), f.take())
            };
            let claims = match &forced {
                Some(Some(challenge)) => Some(challenge.as_str()),
                _ => self.key.claims.as_deref(),
            };
            let result = match tokio::time::timeout(
                self.settings.acquire_timeout,
                self.credential.acquire(&self.key.scope, claims),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(CredentialError::new(
                    ErrorClass::Timeout,
                    format!(
                        "the token acquisition took longer than {}s",
                        self.settings.acquire_timeout.as_secs()
                    ),
                )),
            };
            let took = started.elapsed();
            self.metrics
                .token_refresh_duration
                .with_label_values(&[profile.as_str()])
                .observe(took.as_secs_f64());
            let sleep_until = match result {
                Ok(token) => {
                    failures = 0;
                    self.metrics
                        .token_refreshes
                        .with_label_values(&[profile.as_str(), "success"])
                        .inc();
                    let now = Instant::now();
                    let lifetime = token.expires_in;
                    let refresh_at = now
                        + schedule::refresh_after(lifetime, token.refresh_in)
                            .max(Duration::from_millis(500));
                    let expires_unix = SystemTime::now()
                        .checked_add(lifetime)
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_secs())
                        .unwrap_or_default();
                    match HeaderValue::from_str(&format!("Bearer {}", token.token.expose())) {
                        Ok(mut header) => {
                            header.set_sensitive(true);
                            self.current.store(Some(Arc::new(CachedToken {
                                header,
                                token: token.token,
                                expires_at: now + lifetime,
                                usable_until: now + lifetime - schedule::skew_margin(lifetime),
                                expires_unix,
                                acquired_at: now,
                                forced: forced.is_some(),
                                accepted: AtomicBool::new(false),
                            })));
                            self.metrics
                                .token_expiry
                                .with_label_values(&[profile.as_str(), self.key.scope.as_str()])
                                .set(expires_unix as f64);
                            tracing::info!(
                                profile = %profile,
                                scope = %self.key.scope,
                                lifetime_s = lifetime.as_secs(),
                                refresh_in_s = (refresh_at - now).as_secs(),
                                after_refusal = forced.is_some(),
                                with_claims = matches!(forced, Some(Some(_))),
                                "token acquired"
                            );
                            self.status.send_modify(|s| {
                                s.acquiring = false;
                                s.last_error = None;
                                s.next_attempt = None;
                                s.ever_valid = true;
                            });
                            Some(refresh_at)
                        }
                        Err(_) => {
                            self.fail(
                                &mut failures,
                                CredentialError::new(
                                    ErrorClass::BadResponse,
                                    "the access token has characters not allowed in an HTTP header",
                                ),
                            );
                            None
                        }
                    }
                }
                Err(err) => {
                    self.fail(&mut failures, err);
                    None
                }
            };
            match sleep_until {
                // Healthy: sleep until refresh time, or until a request finds the token unusable or
                // an upstream refused it (a wake that finds neither is ignored).
                Some(at) => loop {
                    if self.wanted.load(Ordering::Acquire) != served || self.usable().is_none() {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => break,
                        _ = self.wake.notified() => {}
                    }
                },
                // Backing off: hold off Entra, whatever the requests do (no storm).
                None => {
                    let at = self
                        .status
                        .borrow()
                        .next_attempt
                        .unwrap_or_else(Instant::now);
                    tokio::time::sleep_until(at).await;
                }
            }
        }
    }

    fn fail(&self, failures: &mut u32, err: CredentialError) {
        *failures = failures.saturating_add(1);
        self.metrics
            .token_refreshes
            .with_label_values(&[self.key.profile.as_str(), err.class.as_str()])
            .inc();
        let delay = schedule::backoff(
            *failures,
            err.class.backoff_cap(),
            err.retry_after,
            rand::random::<f64>(),
        );
        let still_usable = self.usable().is_some();
        // The first failure, and any change of cause, at WARN; the same failure again at DEBUG.
        let repeated = self
            .status
            .borrow()
            .last_error
            .as_ref()
            .is_some_and(|prev| prev.class == err.class && prev.message == err.message);
        if repeated {
            tracing::debug!(
                profile = %self.key.profile,
                scope = %self.key.scope,
                class = %err.class,
                attempt = *failures,
                retry_in_ms = delay.as_millis() as u64,
                "token acquisition failed again"
            );
        } else {
            tracing::warn!(
                profile = %self.key.profile,
                scope = %self.key.scope,
                class = %err.class,
                attempt = *failures,
                retry_in_ms = delay.as_millis() as u64,
                still_serving_cached_token = still_usable,
                "token acquisition failed: {}",
                err.message
            );
        }
        let next = Instant::now() + delay;
        self.status.send_modify(|s| {
            s.acquiring = false;
            s.last_error = Some(Arc::new(err));
            s.next_attempt = Some(next);
        });
    }
}

/// All entries, by key; credentials by profile.
pub struct TokenCache {
    credentials: HashMap<String, Arc<dyn Credential>>,
    entries: Mutex<HashMap<CacheKey, Arc<TokenEntry>>>,
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
            Arc::new(TokenEntry {
                key,
                credential: Arc::clone(credential),
                settings: self.settings,
                metrics: self.metrics.clone(),
                current: ArcSwapOption::empty(),
                status: watch::channel(Status::default()).0,
                started: AtomicBool::new(false),
                wake: Notify::new(),
                task: Mutex::new(None),
                runtime: self.runtime.clone(),
                forced: Mutex::new(None),
                wanted: std::sync::atomic::AtomicU64::new(0),
            })
        });
        Some(Arc::clone(entry))
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
            for e in theirs.into_iter().filter(|e| keep(&e.key)) {
                adopted.push(e.key.clone());
                ours.insert(e.key.clone(), e);
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
            if let Some(task) = e.task.lock().ok().and_then(|mut t| t.take()) {
                task.abort();
                stopped.push(e.key.clone());
            }
        }
        stopped
    }
}

impl Drop for TokenCache {
    fn drop(&mut self) {
        if let Ok(entries) = self.entries.lock() {
            for e in entries.values() {
                if let Ok(task) = e.task.lock() {
                    if let Some(t) = task.as_ref() {
                        t.abort();
                    }
                }
            }
        }
    }
}
