//! An entry's background refresher, the only code that talks to Entra for it. Each round takes
//! the forced acquisition asked for (if any), acquires within the timeout, installs the token or
//! records the failure, then sleeps: until refresh time when healthy, until the backoff ends
//! when not (docs/credentials.md, "Token lifecycle"). Every attempt is counted in the metrics and
//! logged at DEBUG; what reaches WARN is decided per profile by `failures.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::failures::{human, when, Verdict};
use super::{schedule, CachedToken, TokenEntry};
use crate::credentials::{AccessToken, CredentialError, ErrorClass};

/// The forced acquisition a round serves: `Some(claims)` when [`TokenEntry::reacquire`] asked.
type Forced = Option<Option<String>>;

impl TokenEntry {
    /// Acquires, installs and sleeps, round after round, until the entry's task is aborted.
    pub(super) async fn refresh_loop(self: Arc<Self>) {
        let mut failures: u32 = 0;
        loop {
            self.status.send_modify(|s| s.acquiring = true);
            let (served, forced) = self.take_forced();
            let installed = match self.acquire(&forced).await {
                Ok(token) => {
                    let failed_before = std::mem::take(&mut failures);
                    self.install(token, &forced)
                        .inspect(|_| self.note_recovery(failed_before))
                }
                Err(err) => Err(err),
            };
            match installed {
                Ok(refresh_at) => self.sleep_healthy(refresh_at, served).await,
                Err(err) => {
                    self.fail(&mut failures, err);
                    self.sleep_backing_off().await;
                }
            }
        }
    }

    /// The forced acquisition asked for, if any, and the count of requests this round serves.
    fn take_forced(&self) -> (u64, Forced) {
        let mut f = self.forced.lock().unwrap_or_else(|e| e.into_inner());
        (self.wanted.load(Ordering::Acquire), f.take())
    }

    /// One acquisition from the credential, bounded by the acquire timeout, with the challenge's
    /// claims when forced with some, else the entry's; its duration is observed either way.
    async fn acquire(&self, forced: &Forced) -> Result<AccessToken, CredentialError> {
        let started = Instant::now();
        let claims = match forced {
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
        self.metrics
            .token_refresh_duration
            .with_label_values(&[self.key.profile.as_str()])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Makes `token` the entry's current token and tells the waiting requests; returns when to
    /// refresh it. Fails only when the token cannot be an HTTP header.
    fn install(&self, token: AccessToken, forced: &Forced) -> Result<Instant, CredentialError> {
        let profile = self.key.profile.as_str();
        self.metrics
            .token_refreshes
            .with_label_values(&[profile, "success"])
            .inc();
        let now = Instant::now();
        let lifetime = token.expires_in;
        let refresh_at = now
            + schedule::refresh_after(lifetime, token.refresh_in).max(Duration::from_millis(500));
        let Some(cached) = CachedToken::new(token.token, lifetime, now, forced.is_some()) else {
            return Err(CredentialError::new(
                ErrorClass::BadResponse,
                "the access token has characters not allowed in an HTTP header",
            ));
        };
        let expires_unix = cached.expires_unix;
        self.current.store(Some(Arc::new(cached)));
        self.metrics
            .token_expiry
            .with_label_values(&[profile, self.key.scope.as_str()])
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
        Ok(refresh_at)
    }

    /// Healthy: sleeps until refresh time, or until a request finds the token unusable or an
    /// upstream refused it (a wake that finds neither is ignored).
    async fn sleep_healthy(&self, at: Instant, served: u64) {
        loop {
            if self.wanted.load(Ordering::Acquire) != served || self.usable().is_none() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(at) => break,
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Backing off: holds off Entra until the next attempt, whatever the requests do (no storm).
    async fn sleep_backing_off(&self) {
        let at = self
            .status
            .borrow()
            .next_attempt
            .unwrap_or_else(Instant::now);
        tokio::time::sleep_until(at).await;
    }

    /// Records a failed acquisition: counts it (every attempt), logs it as the profile's
    /// [`ProfileFailures`](super::ProfileFailures) decides (docs/troubleshooting.md), and
    /// publishes the error and the next attempt, backed off with jitter.
    fn fail(&self, failures: &mut u32, err: CredentialError) {
        *failures = failures.saturating_add(1);
        let profile = self.key.profile.as_str();
        self.metrics
            .token_refreshes
            .with_label_values(&[profile, err.class.as_str()])
            .inc();
        let delay = schedule::backoff(
            *failures,
            err.class.backoff_cap(),
            err.retry_after,
            rand::random::<f64>(),
        );
        let now = Instant::now();
        let verdict = self.failures.failed(&self.key.scope, err.class, now);
        // Every attempt, in full, at DEBUG; at WARN only what is news or a minute's summary.
        if verdict != Verdict::New {
            tracing::debug!(
                profile = %profile,
                scope = %self.key.scope,
                class = %err.class,
                attempt = *failures,
                retry_in_ms = delay.as_millis() as u64,
                "token acquisition failed again: {}",
                err.message
            );
        }
        match verdict {
            Verdict::New => tracing::warn!(
                profile = %profile,
                scope = %self.key.scope,
                class = %err.class,
                attempt = *failures,
                retry_in_ms = delay.as_millis() as u64,
                still_serving_cached_token = self.usable().is_some(),
                "token acquisition failed: {}",
                err.message
            ),
            Verdict::Summary(s) => tracing::warn!(
                profile = %profile,
                class = %err.class,
                attempts = s.attempts,
                scopes = s.scopes,
                since = %when(s.since),
                next_retry_in_s = delay.as_secs(),
                "still failing: {} attempts since {}, next in {}",
                s.attempts,
                when(s.since),
                human(delay)
            ),
            Verdict::Repeated => {}
        }
        let next = now + delay;
        self.status.send_modify(|s| {
            s.acquiring = false;
            s.last_error = Some(Arc::new(err));
            s.next_attempt = Some(next);
        });
    }

    /// A token installed after `failed_before` failed attempts of this entry: the profile's
    /// recovery is one INFO line, said by the first of its failing scopes to get a token (the
    /// others, recovering with it, say nothing more).
    fn note_recovery(&self, failed_before: u32) {
        if failed_before == 0 {
            return;
        }
        if let Some(r) = self.failures.recovered(Instant::now()) {
            tracing::info!(
                profile = %self.key.profile,
                scope = %self.key.scope,
                failed_attempts = r.failed_attempts,
                since = %when(r.since),
                failed_for_s = r.failed_for.as_secs(),
                "token acquisition recovered after {} failed attempts",
                r.failed_attempts
            );
        }
    }
}
