//! The token cache (docs/credentials.md, "Token lifecycle"): one entry per (profile, scope,
//! claims), wrapped around any credential. Each entry has one background refresher, the only code
//! that talks to Entra for it: concurrent misses wait for its one acquisition (single-flight),
//! tokens are renewed before they expire, failures back off with jitter, and a cached token is
//! served through an outage until the clock-skew margin — never after. The request path reads the
//! current token from an `ArcSwap`, without a lock.
//!
//! - `cache.rs`: [`TokenCache`], the entries by key, handed over on a reload, stopped on shutdown;
//! - `entry.rs`: [`TokenEntry`], one token read without a lock and the single-flight wait for it;
//! - `refresher.rs`: an entry's background refresher, the only code that asks the credential;
//! - `cached.rs`: [`CachedToken`], the header ready to attach and the moments that bound its use;
//! - `worker.rs`: [`TokenSlot`], a worker thread's own copy of a token's headers, so requests on
//!   two cores do not write the same reference counts;
//! - `schedule.rs`: when to refresh, until when a token may be used, how long to back off;
//! - `failures.rs`: [`ProfileFailures`], what the log says when a profile's acquisitions keep
//!   failing (once at WARN, then a summary a minute at most, one line at recovery).

mod cache;
mod cached;
mod entry;
pub mod failures;
mod refresher;
pub mod schedule;
mod worker;

pub use cache::{CacheKey, CacheSettings, TokenCache};
pub use cached::CachedToken;
pub use entry::{EntryStatus, NoReplay, TokenEntry, TokenUnavailable, FORCED_REACQUIRE_INTERVAL};
pub use failures::ProfileFailures;
pub use worker::{TokenSlot, WorkerToken};
