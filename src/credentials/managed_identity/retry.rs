//! One acquisition's retries: the answers `Source::retryable` names are asked again after an
//! exponential backoff on `tokio::time`, within a budget. IMDS answers 410 for up to 70 s while a
//! starting VM's identity is not ready, so once it said 410 the budget is 70 s; otherwise 20 s.
//! `Retry-After` is a floor; one that does not fit in the budget ends the acquisition with the
//! wait attached, for the cache's backoff.

use std::time::Duration;

use tokio::time::Instant;

use super::{AccessToken, CredentialError, ManagedIdentityCredential};

/// Retry budget of one acquisition once IMDS answered 410.
const GONE_BUDGET: Duration = Duration::from_secs(70);
/// Retry budget of one acquisition for the other retryable answers.
const RETRY_BUDGET: Duration = Duration::from_secs(20);
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(16);
/// A last backoff shorter than this is not worth another request.
const MIN_DELAY: Duration = Duration::from_millis(500);

impl ManagedIdentityCredential {
    /// Attempts until a token, an answer not worth another try, or the end of the budget.
    pub(super) async fn with_retries(
        &self,
        resource: &str,
    ) -> Result<AccessToken, CredentialError> {
        let started = Instant::now();
        let mut retries: u32 = 0;
        let mut gone = false;
        loop {
            let failure = match self.attempt(resource).await {
                Ok(token) => return Ok(token),
                Err(f) => f,
            };
            if !failure.retry {
                return Err(failure.error);
            }
            gone |= failure.status == Some(410);
            let budget = if gone { GONE_BUDGET } else { RETRY_BUDGET };
            let elapsed = started.elapsed();
            match next_delay(retries, failure.error.retry_after, elapsed, budget) {
                Some(delay) => {
                    tracing::debug!(
                        source = %self.source.label(),
                        status = failure.status,
                        attempt = retries + 1,
                        retry_in_ms = delay.as_millis() as u64,
                        "managed identity endpoint asked to retry"
                    );
                    tokio::time::sleep(delay).await;
                    retries += 1;
                }
                None => {
                    let mut error = failure.error;
                    if retries > 0 {
                        error.message.push_str(&format!(
                            " (gave up after {} attempts in {}s)",
                            retries + 1,
                            elapsed.as_secs()
                        ));
                    }
                    return Err(error);
                }
            }
        }
    }
}

/// The next wait within one acquisition, or `None` to give up: exponential from 1 s (capped at
/// 16 s), at least `Retry-After`, and never past the budget (a `Retry-After` that does not fit
/// gives up, leaving the wait to the cache).
fn next_delay(
    retries: u32,
    retry_after: Option<Duration>,
    elapsed: Duration,
    budget: Duration,
) -> Option<Duration> {
    let remaining = budget.saturating_sub(elapsed);
    let backoff = FIRST_DELAY
        .saturating_mul(1u32 << retries.min(8))
        .min(MAX_DELAY);
    match retry_after {
        Some(wait) if wait > remaining => None,
        Some(wait) => Some(wait.max(backoff).min(remaining)),
        None if remaining < MIN_DELAY => None,
        None => Some(backoff.min(remaining)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_honour_retry_after_and_stay_in_budget() {
        let s = Duration::from_secs;
        assert_eq!(next_delay(0, None, s(0), GONE_BUDGET), Some(s(1)));
        assert_eq!(next_delay(1, None, s(1), GONE_BUDGET), Some(s(2)));
        assert_eq!(next_delay(6, None, s(40), GONE_BUDGET), Some(s(16)));
        // The last wait is cut to land on the budget; then it is over.
        assert_eq!(next_delay(7, None, s(63), GONE_BUDGET), Some(s(7)));
        assert_eq!(next_delay(8, None, s(70), GONE_BUDGET), None);
        // Retry-After is a floor; one longer than what is left gives up.
        assert_eq!(next_delay(0, Some(s(3)), s(0), RETRY_BUDGET), Some(s(3)));
        assert_eq!(next_delay(3, Some(s(1)), s(0), RETRY_BUDGET), Some(s(8)));
        assert_eq!(next_delay(0, Some(s(30)), s(0), RETRY_BUDGET), None);
    }
}
