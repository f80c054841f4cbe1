//! What the log says about one profile's failed acquisitions (docs/troubleshooting.md). A profile
//! that cannot get a token fails at every backoff attempt of every scope it serves; a WARN per
//! attempt would repeat one long sentence until the disk is full. So, per (profile, error class):
//! the first failure is a WARN with the whole explanation, the same class again is DEBUG only,
//! summed up by a `still failing` WARN at most once per [`SUMMARY_INTERVAL`]; the first success
//! after failures is one INFO line for the profile.
//!
//! One [`ProfileFailures`] per profile, handed by the cache to the refresher of each of the
//! profile's scopes, so that two routes of one broken profile do not say everything twice. It
//! decides what to say; the refresher (`refresher.rs`) says it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::time::Instant;

use crate::credentials::ErrorClass;

/// The shortest interval between two WARN lines about the same (profile, class).
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// How a failed attempt is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The first failure of its class since the profile last had a token (or ever): a WARN with
    /// the error's whole message.
    New,
    /// The same class again, summed up less than [`SUMMARY_INTERVAL`] ago: DEBUG only.
    Repeated,
    /// The same class again, last said [`SUMMARY_INTERVAL`] or more ago: a `still failing` WARN.
    Summary(Summary),
}

/// The `still failing` line of one (profile, class).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Failed attempts of this class since its first, that one and this one included, over all
    /// the profile's scopes.
    pub attempts: u64,
    /// How many of the profile's scopes failed with it.
    pub scopes: usize,
    /// When its first failure happened (wall clock, for people).
    pub since: DateTime<Utc>,
    /// How long ago that was.
    pub failing_for: Duration,
}

/// The one line saying a failing profile got a token again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Failed attempts since the first failure, over every class and scope.
    pub failed_attempts: u64,
    /// When the first failure happened (wall clock).
    pub since: DateTime<Utc>,
    /// How long the profile failed.
    pub failed_for: Duration,
}

/// The failures of one profile since it last had a token, by class.
pub struct ProfileFailures {
    profile: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Failed attempts of every class since the first failure.
    attempts: u64,
    /// The first failure: when, by `tokio::time` (so paused-clock tests see it) and wall clock.
    first: Option<(Instant, DateTime<Utc>)>,
    classes: HashMap<ErrorClass, Run>,
}

/// The failures of one class.
struct Run {
    attempts: u64,
    since: Instant,
    since_wall: DateTime<Utc>,
    /// When it was last said at WARN (first failure or summary).
    said_at: Instant,
    scopes: HashSet<String>,
}

impl fmt::Debug for ProfileFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfileFailures")
            .field("profile", &self.profile)
            .finish()
    }
}

impl ProfileFailures {
    /// No failure yet.
    pub fn new(profile: &str) -> Self {
        ProfileFailures {
            profile: profile.to_string(),
            state: Mutex::new(State::default()),
        }
    }

    /// The profile's name.
    pub fn profile(&self) -> &str {
        &self.profile
    }

    /// Records a failed attempt of `scope` with `class` at `now`; says how to log it. A class
    /// seen before since the last recovery is not new, even after another class came between:
    /// a flapping cause (timeout, network, timeout…) is summed up, not repeated.
    pub fn failed(&self, scope: &str, class: ErrorClass, now: Instant) -> Verdict {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let wall = Utc::now();
        state.attempts += 1;
        state.first.get_or_insert((now, wall));
        let Some(run) = state.classes.get_mut(&class) else {
            state.classes.insert(
                class,
                Run {
                    attempts: 1,
                    since: now,
                    since_wall: wall,
                    said_at: now,
                    scopes: HashSet::from([scope.to_string()]),
                },
            );
            return Verdict::New;
        };
        run.attempts += 1;
        if !run.scopes.contains(scope) {
            run.scopes.insert(scope.to_string());
        }
        if now.saturating_duration_since(run.said_at) < SUMMARY_INTERVAL {
            return Verdict::Repeated;
        }
        run.said_at = now;
        Verdict::Summary(Summary {
            attempts: run.attempts,
            scopes: run.scopes.len(),
            since: run.since_wall,
            failing_for: now.saturating_duration_since(run.since),
        })
    }

    /// A scope that had failed got a token at `now`: the recovery to log, once for the profile
    /// (`None` when another scope already reported it), and a clean slate — a failure after this
    /// is new again.
    pub fn recovered(&self, now: Instant) -> Option<Recovery> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let previous = std::mem::take(&mut *state);
        let (since, since_wall) = previous.first?;
        Some(Recovery {
            failed_attempts: previous.attempts,
            since: since_wall,
            failed_for: now.saturating_duration_since(since),
        })
    }
}

/// A moment for a log line: RFC 3339, UTC, to the second.
pub fn when(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A duration for people: `800ms`, `42s`, `4m 5s`, `1h 2m`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        _ => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "scope-a/.default";
    const B: &str = "scope-b/.default";

    fn summary(v: Verdict) -> Summary {
        match v {
            Verdict::Summary(s) => s,
            other => panic!("expected a summary, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_warns_repeats_are_quiet_a_minute_later_a_summary() {
        let f = ProfileFailures::new("bot");
        let t0 = Instant::now();
        let nc = ErrorClass::NotConfigured;
        assert_eq!(f.failed(A, nc, t0), Verdict::New);
        // The same class from another scope of the profile, and again, within the minute.
        assert_eq!(
            f.failed(B, nc, t0 + Duration::from_secs(1)),
            Verdict::Repeated
        );
        assert_eq!(
            f.failed(A, nc, t0 + Duration::from_secs(3)),
            Verdict::Repeated
        );
        assert_eq!(
            f.failed(B, nc, t0 + Duration::from_millis(59_999)),
            Verdict::Repeated
        );
        let s = summary(f.failed(A, nc, t0 + Duration::from_secs(60)));
        assert_eq!(s.attempts, 5, "every attempt counted, the quiet ones too");
        assert_eq!(s.scopes, 2);
        assert_eq!(s.failing_for, Duration::from_secs(60));
        // The next summary a minute after that one, not after the first failure.
        assert_eq!(
            f.failed(B, nc, t0 + Duration::from_secs(100)),
            Verdict::Repeated
        );
        let s = summary(f.failed(B, nc, t0 + Duration::from_secs(121)));
        assert_eq!(s.attempts, 7);
        assert_eq!(s.failing_for, Duration::from_secs(121));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_class_warns_and_a_recovery_is_said_once() {
        let f = ProfileFailures::new("bot");
        let t0 = Instant::now();
        assert_eq!(f.failed(A, ErrorClass::Network, t0), Verdict::New);
        assert_eq!(
            f.failed(A, ErrorClass::Network, t0 + Duration::from_secs(1)),
            Verdict::Repeated
        );
        assert_eq!(
            f.failed(A, ErrorClass::InvalidClient, t0 + Duration::from_secs(2)),
            Verdict::New,
            "a change of class is news"
        );
        // Back to the first class: known, summed up, not news again.
        assert_eq!(
            f.failed(B, ErrorClass::Network, t0 + Duration::from_secs(4)),
            Verdict::Repeated
        );
        let r = f
            .recovered(t0 + Duration::from_secs(10))
            .expect("a recovery");
        assert_eq!(r.failed_attempts, 4);
        assert_eq!(r.failed_for, Duration::from_secs(10));
        // The profile's other scope recovers with it: nothing more to say.
        assert_eq!(f.recovered(t0 + Duration::from_secs(11)), None);
        // A failure after the recovery is news again.
        assert_eq!(
            f.failed(A, ErrorClass::Network, t0 + Duration::from_secs(12)),
            Verdict::New
        );
    }

    #[test]
    fn durations_and_moments_for_people() {
        assert_eq!(human(Duration::from_millis(800)), "800ms");
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(245)), "4m 5s");
        assert_eq!(human(Duration::from_secs(3720)), "1h 2m");
        let t = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        assert_eq!(when(t), "2027-01-15T08:00:00Z");
    }
}
