//! The token cache on paused tokio time (docs/credentials.md, "Token lifecycle"): single-flight,
//! refresh before expiry at the scheduled point, `refresh_in`, backoff with `Retry-After`, and
//! serving a cached token through an outage until the skew margin — never after. A scripted
//! credential stands in for Entra, so the clock is the only thing that moves.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use patless::credentials::{AccessToken, BoxFuture, Credential, CredentialError, ErrorClass};
use patless::metrics::Metrics;
use patless::secret::Secret;
use patless::token::{CacheSettings, TokenCache};
use tokio::time::{advance, Instant};

/// What the scripted credential does on each call.
#[derive(Clone)]
enum Step {
    Token {
        lifetime: u64,
        refresh_in: Option<u64>,
    },
    Fail(ErrorClass, Option<u64>),
}

#[derive(Debug)]
struct Scripted {
    calls: AtomicUsize,
    at: Mutex<Vec<Instant>>,
    script: Mutex<VecDeque<Step>>,
    fallback: Mutex<Step>,
    latency: Duration,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Step")
    }
}

impl Scripted {
    fn new(fallback: Step, latency: Duration) -> Arc<Self> {
        Arc::new(Scripted {
            calls: AtomicUsize::new(0),
            at: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            fallback: Mutex::new(fallback),
            latency,
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn set_fallback(&self, s: Step) {
        *self.fallback.lock().expect("lock") = s;
    }
}

impl Credential for Scripted {
    fn acquire<'a>(
        &'a self,
        _scope: &'a str,
        _claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            self.at.lock().expect("lock").push(Instant::now());
            tokio::time::sleep(self.latency).await;
            let step = self
                .script
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or_else(|| self.fallback.lock().expect("lock").clone());
            match step {
                Step::Token {
                    lifetime,
                    refresh_in,
                } => Ok(AccessToken {
                    token: Secret::new(format!("token-{n}")),
                    expires_in: Duration::from_secs(lifetime),
                    refresh_in: refresh_in.map(Duration::from_secs),
                }),
                Step::Fail(class, retry_after) => {
                    let mut e = CredentialError::new(class, "scripted failure");
                    e.retry_after = retry_after.map(Duration::from_secs);
                    Err(e)
                }
            }
        })
    }
}

fn new_cache(cred: Arc<Scripted>) -> TokenCache {
    let mut creds: HashMap<String, Arc<dyn Credential>> = HashMap::new();
    creds.insert("p".into(), cred);
    TokenCache::new(
        creds,
        CacheSettings {
            acquire_timeout: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(30),
        },
        Metrics::new(prometheus::Registry::new()),
    )
}

/// Lets spawned tasks run at the current instant.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_cause_one_acquisition() {
    let cred = Scripted::new(
        Step::Token {
            lifetime: 3600,
            refresh_in: None,
        },
        Duration::from_millis(500),
    );
    let cache = new_cache(cred.clone());
    let entry = cache.entry("p", "s/.default", None).expect("entry");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let e = entry.clone();
        set.spawn(async move { e.get().await.map(|t| t.secret().expose().to_string()) });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.expect("task").expect("token"), "token-0");
    }
    assert_eq!(cred.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn refreshes_before_expiry_at_the_spec_point() {
    // A 20-s token is refreshed when 10 s remain.
    let cred = Scripted::new(
        Step::Token {
            lifetime: 20,
            refresh_in: None,
        },
        Duration::ZERO,
    );
    let cache = new_cache(cred.clone());
    let entry = cache.entry("p", "s/.default", None).expect("entry");
    let t0 = Instant::now();
    assert_eq!(
        entry.get().await.expect("token").secret().expose(),
        "token-0"
    );
    advance(Duration::from_millis(9_900)).await;
    settle().await;
    assert_eq!(cred.calls(), 1, "no refresh before 10 s");
    advance(Duration::from_millis(100)).await;
    settle().await;
    assert_eq!(cred.calls(), 2, "refreshed at 10 s");
    let at = cred.at.lock().expect("lock")[1].duration_since(t0);
    assert_eq!(at, Duration::from_secs(10));
    // The request path now sees the new token, without waiting.
    assert_eq!(
        entry.get().await.expect("token").secret().expose(),
        "token-1"
    );

    // A 75-min token: at 62.5 min.
    let cred = Scripted::new(
        Step::Token {
            lifetime: 75 * 60,
            refresh_in: None,
        },
        Duration::ZERO,
    );
    let cache2 = new_cache(cred.clone());
    let entry = cache2.entry("p", "s/.default", None).expect("entry");
    let t0 = Instant::now();
    entry.get().await.expect("token");
    advance(Duration::from_millis(3_749_000)).await;
    settle().await;
    assert_eq!(cred.calls(), 1, "not before 62.5 min");
    advance(Duration::from_millis(1_000)).await;
    settle().await;
    assert_eq!(cred.calls(), 2);
    assert_eq!(
        cred.at.lock().expect("lock")[1].duration_since(t0),
        Duration::from_millis(3_750_000)
    );
}

#[tokio::test(start_paused = true)]
async fn refresh_in_is_honoured() {
    let cred = Scripted::new(
        Step::Token {
            lifetime: 86_400,
            refresh_in: Some(3600),
        },
        Duration::ZERO,
    );
    let cache = new_cache(cred.clone());
    let entry = cache.entry("p", "s/.default", None).expect("entry");
    let t0 = Instant::now();
    entry.get().await.expect("token");
    advance(Duration::from_secs(3599)).await;
    settle().await;
    assert_eq!(cred.calls(), 1);
    advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(cred.calls(), 2);
    assert_eq!(
        cred.at.lock().expect("lock")[1].duration_since(t0),
        Duration::from_secs(3600)
    );
}

#[tokio::test(start_paused = true)]
async fn outage_serves_cached_token_until_margin_then_fails_never_after() {
    // 100-s token: refresh due at 50 s; usable until 100 − 10 = 90 s.
    let cred = Scripted::new(
        Step::Token {
            lifetime: 100,
            refresh_in: None,
        },
        Duration::ZERO,
    );
    let cache = new_cache(cred.clone());
    let entry = cache.entry("p", "s/.default", None).expect("entry");
    let t0 = Instant::now();
    entry.get().await.expect("token");
    cred.set_fallback(Step::Fail(ErrorClass::ServerError, None));
    let mut last_ok = Duration::ZERO;
    let mut first_err = None;
    for _ in 0..1200 {
        advance(Duration::from_millis(100)).await;
        settle().await;
        match entry.get().await {
            Ok(t) => {
                assert!(t.is_usable(), "a token past its margin was handed out");
                assert_eq!(t.secret().expose(), "token-0");
                last_ok = t0.elapsed();
            }
            Err(e) => {
                assert_eq!(e.class, Some(ErrorClass::ServerError));
                assert!(e.retry_after >= Duration::from_secs(1));
                first_err = Some(t0.elapsed());
                break;
            }
        }
    }
    let first_err = first_err.expect("the outage must surface once the margin is reached");
    assert!(
        last_ok < Duration::from_secs(90),
        "served at {last_ok:?}, after the margin"
    );
    assert!(
        last_ok >= Duration::from_millis(89_800),
        "stopped serving early, at {last_ok:?}"
    );
    assert!(first_err >= Duration::from_secs(90));
    // From 50 s to 90 s with backoff 1, 2, 4, 8, 16 s (jittered down to half): a handful of tries.
    let tries = cred.calls() - 1;
    assert!(
        (3..=12).contains(&tries),
        "{tries} attempts in 40 s of outage"
    );

    // Recovery: the next attempt succeeds and requests get the new token.
    cred.set_fallback(Step::Token {
        lifetime: 100,
        refresh_in: None,
    });
    advance(Duration::from_secs(61)).await;
    settle().await;
    assert!(entry
        .get()
        .await
        .expect("recovered")
        .secret()
        .expose()
        .starts_with("token-"));
    assert!(entry.status().valid_now);
}

#[tokio::test(start_paused = true)]
async fn retry_after_holds_off_the_next_attempt() {
    let cred = Scripted::new(Step::Fail(ErrorClass::Throttled, Some(30)), Duration::ZERO);
    let cache = new_cache(cred.clone());
    let entry = cache.entry("p", "s/.default", None).expect("entry");
    let err = entry.get().await.expect_err("throttled");
    assert_eq!(err.class, Some(ErrorClass::Throttled));
    assert!(
        err.retry_after >= Duration::from_secs(29),
        "{:?}",
        err.retry_after
    );
    // Hammering requests do not cause acquisitions while backing off.
    for _ in 0..100 {
        let _ = entry.get().await;
        advance(Duration::from_millis(290)).await;
        settle().await;
    }
    assert_eq!(cred.calls(), 1, "no attempt before Retry-After");
    advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(cred.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn distinct_scopes_and_claims_are_distinct_entries() {
    let cred = Scripted::new(
        Step::Token {
            lifetime: 3600,
            refresh_in: None,
        },
        Duration::ZERO,
    );
    let cache = new_cache(cred.clone());
    let a = cache.entry("p", "a/.default", None).expect("entry");
    let b = cache.entry("p", "b/.default", None).expect("entry");
    let c = cache
        .entry("p", "a/.default", Some(r#"{"access_token":{}}"#))
        .expect("entry");
    let a2 = cache.entry("p", "a/.default", None).expect("entry");
    assert!(Arc::ptr_eq(&a, &a2));
    a.get().await.expect("a");
    b.get().await.expect("b");
    c.get().await.expect("c");
    a2.get().await.expect("a again");
    assert_eq!(cred.calls(), 3);
    assert!(cache.entry("nope", "a/.default", None).is_none());
}
