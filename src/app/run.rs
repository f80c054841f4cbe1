//! The listeners, and the life of a running patless: serve until asked to stop, reload on
//! request, drain, stop the background tasks.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::{admin, identity, reload, App, StartError};
use crate::config::{self, Config};
use crate::proxy;
use crate::server::{self, Listener};

/// The bound listeners.
#[derive(Debug)]
pub struct Listeners {
    /// The proxy listener.
    pub proxy: Listener,
    /// The admin listener, if on.
    pub admin: Option<Listener>,
    /// The identity endpoint's listener, if `[identity_endpoint]` is set.
    pub identity: Option<Listener>,
}

impl Listeners {
    /// Binds what the config names.
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        let mode = config.server.unix_socket_mode;
        let bind = |addr: &config::ListenAddr, key: [&'static str; 2]| {
            let addr = addr.clone();
            async move {
                Listener::bind(&addr, mode)
                    .await
                    .map_err(|source| bind_error(config, addr.to_string(), key, source))
            }
        };
        let proxy = bind(
            &config.server.listen,
            ["server.listen", "PATLESS_SERVER__LISTEN"],
        )
        .await?;
        let admin = match &config.server.admin_listen {
            Some(a) => {
                let key = ["server.admin_listen", "PATLESS_SERVER__ADMIN_LISTEN"];
                Some(bind(a, key).await?)
            }
            None => None,
        };
        let identity = match &config.identity_endpoint {
            Some(ie) => {
                let key = [
                    "identity_endpoint.listen",
                    "PATLESS_IDENTITY_ENDPOINT__LISTEN",
                ];
                Some(bind(&ie.listen, key).await?)
            }
            None => None,
        };
        Ok(Listeners {
            proxy,
            admin,
            identity,
        })
    }
}

/// A listener that cannot bind (`[key, environment variable]` set its address). An address in
/// use is most often an earlier patless still draining its connections after Ctrl-C: the error
/// says so, how long that lasts, and which key moves this one elsewhere.
fn bind_error(
    config: &Config,
    addr: String,
    [key, var]: [&'static str; 2],
    source: std::io::Error,
) -> StartError {
    let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
        let (delay, grace) = (config.server.shutdown_delay, config.server.shutdown_grace);
        format!(
            ". Another patless may still be running there, or still draining after it was \
             stopped: that lasts up to {} (server.shutdown_delay {} + server.shutdown_grace {}), \
             and a second Ctrl-C ends it at once. Or another program holds the address: set \
             {key} (or {var}) to another one",
            duration_text(delay + grace),
            duration_text(delay),
            duration_text(grace),
        )
    } else {
        String::new()
    };
    StartError::Bind {
        addr,
        key,
        hint,
        source,
    }
}

/// A duration as the config writes it: `5s`, `300ms`.
fn duration_text(d: Duration) -> String {
    match d.as_millis() {
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Runs the proxy and admin listeners until `shutdown` resolves, then drains in-flight requests
/// for up to `server.shutdown_grace` (after `server.shutdown_delay`, during which `/readyz`
/// answers 503). Token refreshers start at once for every explicit route, so the first request
/// finds a token and `/readyz` turns green on its own. No reloads: see [`run_with`].
pub async fn run(listeners: Listeners, app: App, shutdown: impl Future<Output = ()> + Send) {
    run_with(
        listeners,
        app,
        RunOptions {
            shutdown,
            stop_now_hint: None,
            reload: None,
            worker_threads: false,
        },
    )
    .await
}

/// What [`run_with`] needs besides the listeners and the app.
pub struct RunOptions<S> {
    /// Resolves when patless should stop (SIGTERM/SIGINT in `serve`): `/readyz` turns 503 at once
    /// while the proxy still serves; after `server.shutdown_delay` the listeners close, requests in
    /// flight get up to `server.shutdown_grace`, and the background tasks stop.
    pub shutdown: S,
    /// How to stop at once, without the delay and the drain, said in the shutdown's log line
    /// (`serve`: "press Ctrl-C again to stop now"). The caller does the stopping: `serve` ends
    /// the process on a second SIGTERM/SIGINT.
    pub stop_now_hint: Option<&'static str>,
    /// Reloads (SIGHUP, `server.watch_config`); `None` runs the config given until the end.
    pub reload: Option<reload::Reloader>,
    /// Serve the proxy listener on `server.workers` threads of its own (what `serve` does);
    /// `false` serves it on the calling runtime (tests on paused time).
    pub worker_threads: bool,
}

impl<S> std::fmt::Debug for RunOptions<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("stop_now_hint", &self.stop_now_hint)
            .field("reload", &self.reload)
            .field("worker_threads", &self.worker_threads)
            .finish()
    }
}

/// [`run`], with reloads and a hint on how to stop at once. The app the request path reads sits
/// in an `ArcSwap`: each request takes the current one and keeps it to its end, so a reload
/// never changes a request in flight.
pub async fn run_with<S>(listeners: Listeners, app: App, options: RunOptions<S>)
where
    S: Future<Output = ()> + Send,
{
    let RunOptions {
        shutdown,
        stop_now_hint,
        reload,
        worker_threads,
    } = options;
    for entry in app.proxy.router().eager_entries() {
        entry.start();
    }
    let limits = app.config.server.limits;
    let workers = worker_threads.then_some(app.config.server.workers);
    // `Some(grace)`: stop accepting and drain for up to `grace`.
    let (close_tx, close_rx) = tokio::sync::watch::channel(None::<Duration>);
    // Shutdown has begun: no more reloads.
    let (begun_tx, begun_rx) = tokio::sync::watch::channel(false);
    let running = Running {
        current: Arc::new(ArcSwap::from_pointee(app)),
        shutting_down: Arc::new(AtomicBool::new(false)),
        close_rx,
        limits,
    };
    let reload_task = async {
        if let Some(r) = reload {
            reload::serve(Arc::clone(&running.current), r, begun_rx.clone()).await;
        }
    };
    let stop = async {
        shutdown.await;
        running.shutting_down.store(true, Ordering::Release);
        let _ = begun_tx.send(true);
        let grace = running.delay_then_grace(stop_now_hint).await;
        let _ = close_tx.send(Some(grace));
    };
    tokio::join!(
        running.serve_proxy(listeners.proxy, workers),
        running.serve_admin(listeners.admin),
        running.serve_identity(listeners.identity),
        reload_task,
        running.sweep_idle_upstreams(),
        stop
    );
    // The background tasks: the config watcher ended with the reload task; the refreshers now.
    let stopped = running.current.load().cache.stop();
    tracing::info!(refreshers = stopped.len(), "stopped");
}

/// What the listeners of a running patless share.
struct Running {
    /// The app requests read; a reload swaps it.
    current: Arc<ArcSwap<App>>,
    /// Set when shutdown begins: `/readyz` answers 503.
    shutting_down: Arc<AtomicBool>,
    /// `Some(grace)` once the listeners are to close.
    close_rx: tokio::sync::watch::Receiver<Option<Duration>>,
    limits: config::Limits,
}

impl Running {
    /// Resolves with the grace period once the listeners are to close.
    fn closed(&self) -> impl Future<Output = Duration> + Send + 'static {
        let mut rx = self.close_rx.clone();
        async move {
            let grace = rx.wait_for(Option::is_some).await.map(|g| *g);
            grace.ok().flatten().unwrap_or_default()
        }
    }

    /// The proxy listener, on `workers` threads of its own or on the calling runtime.
    async fn serve_proxy(&self, listener: Listener, workers: Option<usize>) {
        tracing::info!(listen = %listener.describe(), "proxy listening");
        raise_open_files_limit(self.limits.max_connections);
        // The handler of worker `w`: its requests run on that worker's stack and upstream pool.
        let handler = |w: usize| {
            let current = Arc::clone(&self.current);
            move |req| {
                let app = current.load_full();
                async move { app.proxy.handle(w, req).await }
            }
        };
        let (closed, limits) = (self.closed(), self.limits);
        match workers {
            Some(n) => {
                tracing::info!(workers = n, "proxy served by {n} worker threads");
                server::serve_on_workers(listener, handler, closed, limits, "proxy", n).await
            }
            None => server::serve(listener, handler(0), closed, limits, "proxy").await,
        }
    }

    /// The admin listener (`/healthz`, `/readyz`, `/metrics`), if on.
    async fn serve_admin(&self, listener: Option<Listener>) {
        let Some(l) = listener else { return };
        tracing::info!(listen = %l.describe(), "admin listening (/healthz /readyz /metrics)");
        let current = Arc::clone(&self.current);
        let draining = Arc::clone(&self.shutting_down);
        let handler =
            move |req| admin::handle(current.load_full(), draining.load(Ordering::Acquire), req);
        server::serve(l, handler, self.closed(), self.limits, "admin").await;
    }

    /// The identity endpoint's listener, if `[identity_endpoint]` is set.
    async fn serve_identity(&self, listener: Option<Listener>) {
        let Some(l) = listener else { return };
        let imds = self
            .current
            .load()
            .identity
            .as_ref()
            .is_some_and(|e| e.config.imds);
        tracing::info!(
            listen = %l.describe(),
            "identity endpoint listening (GET {}{} for SDKs)",
            identity::TOKEN_PATH,
            if imds {
                format!(" and {}", identity::IMDS_TOKEN_PATH)
            } else {
                String::new()
            }
        );
        let current = Arc::clone(&self.current);
        let handler = move |req| identity::handle(current.load_full(), req);
        server::serve(l, handler, self.closed(), self.limits, "identity").await;
    }

    /// Upstream connections a burst opened are closed once idle, not kept until the next request
    /// meets them (or forever, if none comes).
    async fn sweep_idle_upstreams(&self) {
        let every = proxy::UPSTREAM_IDLE_TIMEOUT / 4;
        let sweep = async {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let closed = self.current.load().proxy.close_idle();
                if closed > 0 {
                    tracing::debug!(closed, "closed idle upstream connections");
                }
            }
        };
        tokio::select! {
            () = sweep => {}
            _ = self.closed() => {}
        }
    }

    /// After the stop signal: says what happens now, waits `server.shutdown_delay`, and returns
    /// the grace the requests in flight get.
    async fn delay_then_grace(&self, stop_now_hint: Option<&str>) -> Duration {
        let (delay, grace) = {
            let app = self.current.load();
            (
                app.config.server.shutdown_delay,
                app.config.server.shutdown_grace,
            )
        };
        let delay_text = if delay.is_zero() {
            String::new()
        } else {
            format!(
                "/readyz answers 503 for {} (server.shutdown_delay) while the proxy still \
                 serves, then ",
                duration_text(delay)
            )
        };
        let hint = stop_now_hint.map(|h| format!("; {h}")).unwrap_or_default();
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            grace_ms = grace.as_millis() as u64,
            "shutting down: {delay_text}the listeners close and requests in flight get up to {} \
             (server.shutdown_grace){hint}",
            duration_text(grace)
        );
        tokio::time::sleep(delay).await;
        grace
    }
}

/// Open files a process needs besides its client connections: upstream connections, the
/// listeners, config and state files.
const OTHER_FILES: u64 = 256;

/// Raises the soft open-files limit (`ulimit -n`: 1,024 in many shells and systemd units) as far
/// as `server.max_connections` needs, within the hard limit, as Go programs and nginx's
/// `worker_rlimit_nofile` do; warns when the hard limit is too low. Past the limit, accepting
/// fails and clients wait in the backlog instead of getting the connection limit's JSON 503.
fn raise_open_files_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let needed = max_connections as u64 + OTHER_FILES;
    let limit = getrlimit(Resource::Nofile);
    let Some(soft) = limit.current else {
        return; // unlimited
    };
    if soft >= needed {
        return;
    }
    let raised = limit.maximum.map_or(needed, |hard| hard.min(needed));
    let now = match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(raised),
            maximum: limit.maximum,
        },
    ) {
        Ok(()) => raised,
        Err(_) => soft,
    };
    if now < needed {
        tracing::warn!(
            max_connections,
            open_files_limit = now,
            "server.max_connections is {max_connections}, but this process may open only {now} \
             files (client and upstream connections, files): raise the limit to at least \
             {needed} (`ulimit -Hn`, systemd `LimitNOFILE={needed}`) or lower \
             server.max_connections"
        );
    } else {
        tracing::debug!(from = soft, to = now, "open-files limit raised");
    }
}
