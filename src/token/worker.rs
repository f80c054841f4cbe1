//! A worker thread's own copy of a token's headers.
//!
//! A [`CachedToken`] is shared by every worker thread. Cloning its `Authorization` value per
//! request (a `HeaderValue` is a reference-counted `Bytes`) or the `Arc` that holds it writes a
//! reference count that the other core writes too, and the cache line moves between the cores on
//! every request (measured with bench/: the counters patless shared between workers cost about 8%
//! of CPU per request at 64 connections). So each worker keeps, per route, a [`TokenSlot`]: a copy
//! of the current token's headers in memory of its own, made once per token, and requests clone
//! that. The shared token stays the one that counts: acceptance is noted on it, and a refusal
//! replaces it ([`TokenEntry::reacquire`]).

use std::fmt;
use std::sync::{Arc, Mutex};

use http::HeaderValue;

use super::{CachedToken, TokenEntry};

/// One worker's copy of a token's headers, with the shared token it copies.
pub struct WorkerToken {
    /// The cache's token.
    pub shared: Arc<CachedToken>,
    /// `Bearer <token>`, sensitive; a copy in this worker's memory.
    pub header: HeaderValue,
    /// `Basic …` (routes with `auth = "basic"`), sensitive; a copy in this worker's memory.
    pub basic_header: HeaderValue,
}

impl WorkerToken {
    /// A copy of `shared`'s headers that shares no memory with it.
    pub fn copy_of(shared: Arc<CachedToken>) -> Self {
        WorkerToken {
            header: own_copy(&shared.header),
            basic_header: own_copy(&shared.basic_header),
            shared,
        }
    }
}

impl fmt::Debug for WorkerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerToken")
            .field("shared", &self.shared)
            .finish()
    }
}

/// A header value in a new allocation (cloning one shares its bytes and their count), sensitive.
fn own_copy(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).expect("it was a header value");
    copy.set_sensitive(true);
    copy
}

/// A worker's copy of one entry's current token, made when the token changes.
#[derive(Debug, Default)]
pub struct TokenSlot {
    copy: Mutex<Option<Arc<WorkerToken>>>,
}

impl TokenSlot {
    /// `entry`'s token if it may still be sent (see [`TokenEntry::usable`]), as this worker's copy.
    pub fn usable(&self, entry: &TokenEntry) -> Option<Arc<WorkerToken>> {
        let current = entry.current.load();
        match current.as_ref() {
            Some(t) if t.is_usable() => Some(self.copy_of(t)),
            _ => None,
        }
    }

    /// This worker's copy of `token`: the one it holds, or a new one that replaces it.
    pub fn copy_of(&self, token: &Arc<CachedToken>) -> Arc<WorkerToken> {
        let mut copy = match self.copy.lock() {
            Ok(copy) => copy,
            Err(poisoned) => poisoned.into_inner(),
        };
        match copy.as_ref() {
            Some(held) if Arc::ptr_eq(&held.shared, token) => Arc::clone(held),
            _ => {
                let fresh = Arc::new(WorkerToken::copy_of(Arc::clone(token)));
                *copy = Some(Arc::clone(&fresh));
                fresh
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use std::time::Duration;
    use tokio::time::Instant;

    fn token(raw: &str) -> Arc<CachedToken> {
        let t = CachedToken::new(
            Secret::new(raw.to_string()),
            Duration::from_secs(3600),
            Instant::now(),
            false,
        );
        Arc::new(t.expect("a valid header"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_copies_each_token_once_into_memory_of_its_own() {
        let slot = TokenSlot::default();
        let first = token("eyJ.first.sig");
        let a = slot.copy_of(&first);
        let b = slot.copy_of(&first);
        assert!(Arc::ptr_eq(&a, &b), "the same token is copied once");
        assert_eq!(a.header, first.header);
        assert_eq!(a.basic_header, first.basic_header);
        assert!(a.header.is_sensitive() && a.basic_header.is_sensitive());
        // The copy's bytes are not the shared token's.
        assert_ne!(
            a.header.as_bytes().as_ptr(),
            first.header.as_bytes().as_ptr()
        );
        assert_ne!(
            a.basic_header.as_bytes().as_ptr(),
            first.basic_header.as_bytes().as_ptr()
        );

        let second = token("eyJ.second.sig");
        let c = slot.copy_of(&second);
        assert!(
            Arc::ptr_eq(&c.shared, &second),
            "a new token replaces the copy"
        );
        assert_eq!(c.header, "Bearer eyJ.second.sig");
        let debug = format!("{c:?}");
        assert!(!debug.contains("eyJ.second"), "{debug}");
    }
}
