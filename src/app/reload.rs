//! Configuration reload: on SIGHUP (or a [`ReloadHandle`]), and when `server.watch_config` is on,
//! when the config file changes (its size, modification time and content, polled every second; a
//! change is acted on once two polls agree, so a file still being written is not read).
//!
//! A reload reads the config the way start-up does (`config::load`, same `--config`, same
//! environment), validates all of it, builds a new [`App`] beside the running one and swaps it in
//! atomically: requests in flight finish on the app they started with, the next ones see the new
//! one. Unchanged profiles keep their credentials and token entries (no new token request);
//! changed and removed profiles' refreshers stop. A config that does not load or build leaves the
//! running one in place, with the same all-errors-at-once message start-up prints, logged.
//!
//! Listeners are not rebound: a change of `server.listen`, `server.admin_listen`,
//! `server.unix_socket_mode` or a connection limit (`max_header_bytes`, `header_read_timeout`,
//! `idle_timeout`, `max_connections`) or of `identity_endpoint.listen` (including adding or
//! removing `[identity_endpoint]`) is refused — logged, with the running value kept — and the
//! rest of the new config applies. A restart applies those. The identity endpoint's header,
//! profile, resources and `imds` do follow a reload; a removed `[identity_endpoint]` hands out no
//! more tokens at once.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};

use super::App;
use crate::config::{self, Config, ConfigSource};

/// How often `watch_config` looks at the file, unless [`Reloader::watch_interval`] says otherwise.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What a successful reload did.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// Where the new config came from.
    pub source: ConfigSource,
    /// What happened to the profiles (kept, rebuilt, removed).
    pub profiles: super::ProfileChanges,
    /// Keys whose change needs a restart (`server.listen`, …): refused, the running value kept.
    pub refused: Vec<String>,
}

/// Why a reload left the running config in place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    /// The new config does not load, validate or build; the message is the one start-up prints.
    #[error("{0}")]
    Invalid(String),
    /// patless is not running, or is shutting down.
    #[error("patless is not running or is shutting down")]
    NotRunning,
}

type Reply = oneshot::Sender<Result<ReloadReport, ReloadError>>;

/// Asks a running patless to reload (SIGHUP in `serve`; tests hold one). Cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<Option<Reply>>,
    current: Arc<OnceLock<Arc<ArcSwap<App>>>>,
}

impl std::fmt::Debug for ReloadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadHandle")
    }
}

/// The receiving side of [`ReloadHandle`]s, for [`Reloader::requests`].
pub struct ReloadRequests {
    rx: mpsc::Receiver<Option<Reply>>,
    current: Arc<OnceLock<Arc<ArcSwap<App>>>>,
}

impl std::fmt::Debug for ReloadRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadRequests")
    }
}

/// A handle and the requests it sends.
pub fn channel() -> (ReloadHandle, ReloadRequests) {
    let (tx, rx) = mpsc::channel(8);
    let current = Arc::new(OnceLock::new());
    (
        ReloadHandle {
            tx,
            current: Arc::clone(&current),
        },
        ReloadRequests { rx, current },
    )
}

impl ReloadHandle {
    /// Reloads and waits for the outcome.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send(Some(reply))
            .await
            .map_err(|_| ReloadError::NotRunning)?;
        outcome.await.map_err(|_| ReloadError::NotRunning)?
    }

    /// Asks for a reload without waiting (what SIGHUP does). When several are already queued,
    /// this one is merged into them.
    pub fn request(&self) {
        let _ = self.tx.try_send(None);
    }

    /// The app serving requests now (`None` before `run_with` started).
    pub fn current(&self) -> Option<Arc<App>> {
        self.current.get().map(|c| c.load_full())
    }
}

/// What `run_with` needs to reload.
#[derive(Debug)]
pub struct Reloader {
    /// `--config`, if given; else the config lookup (docs/configuration.md) runs again, as at
    /// start-up.
    pub explicit: Option<PathBuf>,
    /// Where the running config came from.
    pub source: ConfigSource,
    /// Reload requests.
    pub requests: ReloadRequests,
    /// How often `watch_config` polls the file.
    pub watch_interval: Duration,
}

impl Reloader {
    /// Reloads on `requests`, and on file changes when `watch_config` is on, from the same
    /// `--config` (`explicit`) as start-up; `source` is where the running config came from.
    pub fn new(explicit: Option<PathBuf>, source: ConfigSource, requests: ReloadRequests) -> Self {
        Reloader {
            explicit,
            source,
            requests,
            watch_interval: WATCH_INTERVAL,
        }
    }
}

/// What the file looks like: path, modification time, size and a hash of the content. `None`
/// when there is no file (the embedded default) or it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Option<(PathBuf, Option<SystemTime>, u64, u64)>);

fn fingerprint(
    explicit: Option<&std::path::Path>,
    env: &dyn crate::env::Environment,
) -> Fingerprint {
    let Ok(Some(path)) = config::find_config_file(explicit, env) else {
        return Fingerprint(None);
    };
    let Ok(meta) = std::fs::metadata(&path) else {
        return Fingerprint(None);
    };
    let Ok(bytes) = std::fs::read(&path) else {
        return Fingerprint(None);
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Fingerprint(Some((path, meta.modified().ok(), meta.len(), h.finish())))
}

/// Serves reload requests and watches the file until `stop` turns true.
pub(crate) async fn serve(
    current: Arc<ArcSwap<App>>,
    reloader: Reloader,
    mut stop: watch::Receiver<bool>,
) {
    let Reloader {
        explicit,
        mut source,
        requests,
        watch_interval,
    } = reloader;
    let ReloadRequests {
        mut rx,
        current: published,
    } = requests;
    let _ = published.set(Arc::clone(&current));
    let env = current.load().env().clone();
    let look = {
        let explicit = explicit.clone();
        let env = env.clone();
        move || {
            let (explicit, env) = (explicit.clone(), env.clone());
            async move {
                tokio::task::spawn_blocking(move || fingerprint(explicit.as_deref(), env.as_ref()))
                    .await
                    .unwrap_or(Fingerprint(None))
            }
        }
    };
    let mut seen = look().await;
    // A change is acted on once two polls in a row agree: a file being written is not read half
    // done.
    let mut settling: Option<Fingerprint> = None;
    let mut tick = tokio::time::interval(watch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    let mut said_nothing_to_watch = false;
    loop {
        let reply = tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            request = rx.recv(), if open => match request {
                Some(reply) => {
                    tracing::info!("reloading the configuration (asked for)");
                    reply
                }
                None => {
                    open = false;
                    continue;
                }
            },
            _ = tick.tick() => {
                if !current.load().config.server.watch_config {
                    continue;
                }
                let now = look().await;
                if now.0.is_none() && seen.0.is_none() && !said_nothing_to_watch {
                    said_nothing_to_watch = true;
                    tracing::warn!(
                        "server.watch_config is on, but no config file is in use (embedded \
                         default): nothing to watch"
                    );
                }
                if now == seen {
                    settling = None;
                    continue;
                }
                if settling.as_ref() != Some(&now) {
                    settling = Some(now);
                    continue;
                }
                settling = None;
                tracing::info!("the configuration file changed: reloading");
                None
            }
        };
        let outcome = reload(&current, &explicit, &env, &mut source, &mut seen).await;
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }
}

/// One reload: load, validate, build, swap — or keep the running config and say why.
async fn reload(
    current: &ArcSwap<App>,
    explicit: &Option<PathBuf>,
    env: &crate::env::Env,
    source: &mut ConfigSource,
    seen: &mut Fingerprint,
) -> Result<ReloadReport, ReloadError> {
    let (explicit, env) = (explicit.clone(), env.clone());
    let read = tokio::task::spawn_blocking(move || {
        // The file as it was just before reading: a change after this is seen at the next poll.
        let print = fingerprint(explicit.as_deref(), env.as_ref());
        (print, config::load(explicit.as_deref(), env.as_ref()))
    })
    .await;
    let old = current.load_full();
    let failed = |message: String| {
        old.metrics
            .config_reloads
            .with_label_values(&["failure"])
            .inc();
        tracing::error!("configuration reload failed; the running configuration stays:\n{message}");
        Err(ReloadError::Invalid(message))
    };
    let loaded = match read {
        Err(e) => return failed(format!("cannot read the configuration: {e}")),
        Ok((print, loaded)) => {
            // Remembered even when the file is bad: the watcher waits for the next change
            // rather than failing every second.
            *seen = print;
            match loaded {
                Ok(l) => l,
                Err(e) => return failed(e.to_string()),
            }
        }
    };
    let (config, refused) = keep_listeners(&old.config, loaded.config);
    let (app, profiles) = match old.reload(config) {
        Ok(built) => built,
        Err(e) => return failed(e.to_string()),
    };
    for entry in app.proxy.router().eager_entries() {
        entry.start();
    }
    current.store(Arc::new(app));
    // Adopted entries now belong to the new cache; every other entry of the old one stops (a
    // request still in flight on the old config keeps the token it holds).
    old.cache.release(&profiles.adopted);
    for key in old.cache.stop() {
        if key.claims.is_none() {
            let _ = old
                .metrics
                .token_expiry
                .remove_label_values(&[key.profile.as_str(), key.scope.as_str()]);
        }
    }
    old.metrics
        .config_reloads
        .with_label_values(&["success"])
        .inc();
    tracing::info!(
        source = %loaded.source,
        kept = ?profiles.kept,
        rebuilt = ?profiles.rebuilt,
        removed = ?profiles.removed,
        "configuration reloaded (kept profiles reuse their tokens)"
    );
    *source = loaded.source.clone();
    Ok(ReloadReport {
        source: loaded.source,
        profiles,
        refused,
    })
}

/// The new config with the running listener settings put back, and the keys that differed.
fn keep_listeners(old: &Config, mut new: Config) -> (Config, Vec<String>) {
    let mut refused = Refused::default();
    keep_server_listeners(&old.server, &mut new.server, &mut refused);
    keep_identity_listener(old, &mut new, &mut refused);
    (new, refused.0)
}

/// The keys a reload could not apply.
#[derive(Default)]
struct Refused(Vec<String>);

impl Refused {
    /// Notes `key` (and says so) when it changed from `was` to `now`.
    fn check(&mut self, key: &str, was: String, now: String) {
        if was != now {
            tracing::warn!(
                "configuration reload: {key} changed from {was} to {now}, but listeners are not \
                 rebound on reload; it stays {was} until patless restarts. The rest of the new \
                 configuration applies."
            );
            self.0.push(key.to_string());
        }
    }
}

/// `[server]`'s listeners, socket mode, workers and connection limits stay as they run.
fn keep_server_listeners(o: &config::ServerConfig, n: &mut config::ServerConfig, r: &mut Refused) {
    let show = |a: &Option<config::ListenAddr>| {
        a.as_ref()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "\"\" (off)".into())
    };
    r.check("server.listen", o.listen.to_string(), n.listen.to_string());
    r.check(
        "server.admin_listen",
        show(&o.admin_listen),
        show(&n.admin_listen),
    );
    r.check(
        "server.unix_socket_mode",
        format!("{:04o}", o.unix_socket_mode),
        format!("{:04o}", n.unix_socket_mode),
    );
    r.check(
        "server.workers",
        o.workers.to_string(),
        n.workers.to_string(),
    );
    let (ol, nl) = (o.limits, n.limits);
    let limit = |key: &str, was: &dyn std::fmt::Debug, now: &dyn std::fmt::Debug| {
        (key.to_string(), format!("{was:?}"), format!("{now:?}"))
    };
    for (key, was, now) in [
        limit(
            "server.max_header_bytes",
            &ol.max_header_bytes,
            &nl.max_header_bytes,
        ),
        limit(
            "server.header_read_timeout",
            &ol.header_read_timeout,
            &nl.header_read_timeout,
        ),
        limit("server.idle_timeout", &ol.idle_timeout, &nl.idle_timeout),
        limit(
            "server.max_connections",
            &ol.max_connections,
            &nl.max_connections,
        ),
    ] {
        r.check(&key, was, now);
    }
    n.listen = o.listen.clone();
    n.admin_listen = o.admin_listen.clone();
    n.unix_socket_mode = o.unix_socket_mode;
    // The worker threads and their upstream pools were made for the running count.
    n.workers = o.workers;
    n.limits = crate::config::Limits {
        // Checked per request, by the proxy: this one applies.
        max_uri_bytes: nl.max_uri_bytes,
        ..ol
    };
}

/// The identity endpoint's listener, bound at start or not at all. Its header, profile,
/// resources and `imds` follow the reload; a table added is served once patless restarts, and a table
/// removed stops handing out tokens at once while its listener stays bound until a restart.
fn keep_identity_listener(old: &Config, new: &mut Config, r: &mut Refused) {
    let off = || "\"\" (off)".to_string();
    match (&old.identity_endpoint, &mut new.identity_endpoint) {
        (Some(was), Some(now)) if was.listen != now.listen => {
            r.check(
                "identity_endpoint.listen",
                was.listen.to_string(),
                now.listen.to_string(),
            );
            now.listen = was.listen.clone();
        }
        (None, added @ Some(_)) => {
            let listen = added
                .as_ref()
                .map(|a| a.listen.to_string())
                .unwrap_or_default();
            r.check("identity_endpoint.listen", off(), listen);
            *added = None;
        }
        (Some(was), None) => {
            r.check("identity_endpoint.listen", was.listen.to_string(), off());
            tracing::warn!(
                "configuration reload: [identity_endpoint] was removed: the identity endpoint \
                 hands out no more tokens (it answers 404) until patless restarts and closes it"
            );
        }
        _ => {}
    }
}
