//! When to refresh, until when a token may be used, and how long to back off (docs/credentials.md,
//! "Token lifecycle").

use std::time::Duration;

/// Remaining lifetime at which a token is refreshed: `min(L/2, max(5 min, L/6))`, unless Entra
/// sent `refresh_in`. Returns the delay from receipt to refresh.
pub fn refresh_after(lifetime: Duration, refresh_in: Option<Duration>) -> Duration {
    if let Some(r) = refresh_in.filter(|r| *r < lifetime) {
        return r;
    }
    let remaining = (lifetime / 2).min(Duration::from_secs(300).max(lifetime / 6));
    lifetime.saturating_sub(remaining)
}

/// The clock-skew margin: a token is used until `expiry - min(60 s, L/10)`, never after.
pub fn skew_margin(lifetime: Duration) -> Duration {
    Duration::from_secs(60).min(lifetime / 10)
}

/// Exponential backoff with jitter for the `attempt`-th consecutive failure (1-based): base 1 s,
/// doubling, capped at `cap`, the wait drawn uniformly from [d/2, d]; never shorter than the
/// server's `Retry-After`.
pub fn backoff(
    attempt: u32,
    cap: Duration,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let cap = cap.as_secs_f64().max(1.0);
    let exp = 2f64.powi(attempt.saturating_sub(1).min(16) as i32).min(cap);
    let jitter = jitter.clamp(0.0, 1.0);
    let d = Duration::from_secs_f64(exp * (0.5 + 0.5 * jitter));
    match retry_after {
        Some(r) => d.max(r.min(Duration::from_secs(3600))),
        None => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        // a 75-min token at 62.5 min, a 24-h token at 20 h, a 20-s test token at 10 s
        assert_eq!(
            refresh_after(Duration::from_secs(75 * 60), None),
            Duration::from_secs_f64(62.5 * 60.0)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(86400), None),
            Duration::from_secs(20 * 3600)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(20), None),
            Duration::from_secs(10)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(86400), Some(Duration::from_secs(3600))),
            Duration::from_secs(3600)
        );
        assert_eq!(
            skew_margin(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(skew_margin(Duration::from_secs(20)), Duration::from_secs(2));
    }

    #[test]
    fn backoff_grows_is_bounded_and_honours_retry_after() {
        let minute = Duration::from_secs(60);
        assert!(backoff(1, minute, None, 1.0) <= Duration::from_secs(1));
        assert!(backoff(1, minute, None, 0.0) >= Duration::from_millis(500));
        assert_eq!(backoff(3, minute, None, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(30, minute, None, 1.0), minute);
        assert_eq!(
            backoff(30, Duration::from_secs(300), None, 1.0),
            Duration::from_secs(300)
        );
        assert_eq!(
            backoff(1, minute, Some(Duration::from_secs(7)), 0.0),
            Duration::from_secs(7)
        );
    }
}
