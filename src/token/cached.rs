//! A token as the cache holds it: the header ready to attach, and the moments that bound its use.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use tokio::time::Instant;

use super::schedule;
use crate::secret::Secret;

/// A token ready to attach.
pub struct CachedToken {
    /// `Bearer <token>`, marked sensitive.
    pub header: HeaderValue,
    /// `Basic base64("patless:" + token)`, marked sensitive: the token as a package client's
    /// password (routes with `auth = "basic"`).
    pub basic_header: HeaderValue,
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
    /// [`TokenEntry::reacquire`](super::TokenEntry::reacquire)).
    pub forced: bool,
    /// An upstream has accepted it at least once.
    accepted: AtomicBool,
}

impl CachedToken {
    /// A token received at `now` that lives `lifetime`; `None` when the token has characters not
    /// allowed in an HTTP header.
    pub(super) fn new(
        token: Secret,
        lifetime: Duration,
        now: Instant,
        forced: bool,
    ) -> Option<Self> {
        let expires_unix = SystemTime::now()
            .checked_add(lifetime)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut header = HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
        header.set_sensitive(true);
        let mut basic_header = HeaderValue::from_str(&basic(token.expose())).ok()?;
        basic_header.set_sensitive(true);
        Some(CachedToken {
            header,
            basic_header,
            token,
            expires_at: now + lifetime,
            usable_until: now + lifetime - schedule::skew_margin(lifetime),
            expires_unix,
            acquired_at: now,
            forced,
            accepted: AtomicBool::new(false),
        })
    }

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

/// `Basic base64("patless:" + token)`. The user name is ignored by Azure DevOps; `patless` says
/// who sent it.
fn basic(token: &str) -> String {
    use base64::Engine as _;
    let mut credentials = String::with_capacity(8 + token.len());
    credentials.push_str("patless:");
    credentials.push_str(token);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_carries_the_token_as_the_password_and_both_headers_are_sensitive() {
        let t = CachedToken::new(
            Secret::new("eyJ.a.b".to_string()),
            Duration::from_secs(3600),
            Instant::now(),
            false,
        )
        .expect("token");
        assert_eq!(t.header, "Bearer eyJ.a.b");
        // base64("patless:eyJ.a.b")
        assert_eq!(t.basic_header, "Basic cGF0bGVzczpleUouYS5i");
        assert!(t.header.is_sensitive() && t.basic_header.is_sensitive());
        assert!(!format!("{t:?}").contains("eyJ"));
    }
}
