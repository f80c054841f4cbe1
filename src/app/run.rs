//! The listeners, and the life of a running patless: serve until asked to stop, reload on
//! request, drain, stop the background tasks.

use std::future::Future;
use std::pin::Pin;
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
        let bind = |addr: &config::ListenAddr| {
            let addr = addr.clone();
            async move {
                Listener::bind(&addr, mode)
                    .await
                    .map_err(|source| StartError::Bind {
                        addr: addr.to_string(),
                        source,
                    })
            }
        };
        let proxy = bind(&config.server.listen).await?;
        let admin = match &config.server.admin_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let identity = match &config.identity_endpoint {
            Some(ie) => Some(bind(&ie.listen).await?),
            None => None,
        };
        Ok(Listeners {
            proxy,
            admin,
            identity,
        })
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
            hurry: None,
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
    /// Resolves to cut the shutdown delay short (a second SIGTERM/SIGINT in `serve`).
    pub hurry: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Reloads (SIGHUP, `server.watch_config`); `None` runs the config given until the end.
    pub reload: Option<reload::Reloader>,
    /// Serve the proxy listener on `server.workers` threads of its own (what `serve` does);
    /// `false` serves it on the calling runtime (tests on paused time).
    pub worker_threads: bool,
}

impl<S> std::fmt::Debug for RunOptions<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("hurry", &self.hurry.is_some())
            .field("reload", &self.reload)
            .field("worker_threads", &self.worker_threads)
            .finish()
    }
}

/// [`run`], with reloads and a way to hurry the shutdown. The app the request path reads sits in
/// an `ArcSwap`: each request takes the current one and keeps it to its end, so a reload never
/// changes a request in flight.
pub async fn run_with<S>(listeners: Listeners, app: App, options: RunOptions<S>)
where
    S: Future<Output = ()> + Send,
{
    let RunOptions {
        shutdown,
        hurry,
        reload,
        worker_threads,
    } = options;
    for target in app.proxy.router().routes() {
        target.entry.start();
    }
    let limits = app.config.server.limits;
    let workers = worker_threads.then_some(app.config.server.workers);
    let current = Arc::new(ArcSwap::from_pointee(app));
    let shutting_down = Arc::new(AtomicBool::new(false));
    // `Some(grace)`: stop accepting and drain for up to `grace`.
    let (close_tx, close_rx) = tokio::sync::watch::channel(None::<Duration>);
    // Shutdown has begun: no more reloads.
    let (begun_tx, begun_rx) = tokio::sync::watch::channel(false);
    let closed = |mut rx: tokio::sync::watch::Receiver<Option<Duration>>| async move {
        let grace = rx.wait_for(Option::is_some).await.map(|g| *g);
        grace.ok().flatten().unwrap_or_default()
    };
    tracing::info!(listen = %listeners.proxy.describe(), "proxy listening");
    // The handler of worker `w`: its requests run on that worker's stack and upstream pool.
    let proxy_handler = |w: usize| {
        let proxy_app = Arc::clone(&current);
        move |req| {
            let app = proxy_app.load_full();
            async move { app.proxy.handle(w, req).await }
        }
    };
    let proxy_task = async {
        match workers {
            Some(n) => {
                tracing::info!(workers = n, "proxy served by {n} worker threads");
                server::serve_on_workers(
                    listeners.proxy,
                    proxy_handler,
                    closed(close_rx.clone()),
                    limits,
                    "proxy",
                    n,
                )
                .await
            }
            None => {
                server::serve(
                    listeners.proxy,
                    proxy_handler(0),
                    closed(close_rx.clone()),
                    limits,
                    "proxy",
                )
                .await
            }
        }
    };
    let admin_task = async {
        if let Some(l) = listeners.admin {
            tracing::info!(listen = %l.describe(), "admin listening (/healthz /readyz /metrics)");
            let admin_app = Arc::clone(&current);
            let draining = Arc::clone(&shutting_down);
            server::serve(
                l,
                move |req| {
                    admin::handle(admin_app.load_full(), draining.load(Ordering::Acquire), req)
                },
                closed(close_rx.clone()),
                limits,
                "admin",
            )
            .await;
        }
    };
    let identity_task = async {
        if let Some(l) = listeners.identity {
            tracing::info!(
                listen = %l.describe(),
                "identity endpoint listening (GET {} for SDKs)",
                identity::TOKEN_PATH
            );
            let identity_app = Arc::clone(&current);
            server::serve(
                l,
                move |req| identity::handle(identity_app.load_full(), req),
                closed(close_rx.clone()),
                limits,
                "identity",
            )
            .await;
        }
    };
    let reload_task = async {
        if let Some(r) = reload {
            reload::serve(Arc::clone(&current), r, begun_rx.clone()).await;
        }
    };
    // Upstream connections a burst opened are closed once idle, not kept until the next request
    // meets them (or forever, if none comes).
    let sweep_task = async {
        let every = proxy::UPSTREAM_IDLE_TIMEOUT / 4;
        let sweep = async {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let closed = current.load().proxy.close_idle();
                if closed > 0 {
                    tracing::debug!(closed, "closed idle upstream connections");
                }
            }
        };
        tokio::select! {
            () = sweep => {}
            _ = closed(close_rx.clone()) => {}
        }
    };
    let signal = async {
        shutdown.await;
        shutting_down.store(true, Ordering::Release);
        let _ = begun_tx.send(true);
        let (delay, grace) = {
            let app = current.load();
            (
                app.config.server.shutdown_delay,
                app.config.server.shutdown_grace,
            )
        };
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            grace_ms = grace.as_millis() as u64,
            "shutting down: /readyz answers 503 now; the listeners close after the delay, then \
             requests in flight get the grace period (signal again to skip the delay)"
        );
        if !delay.is_zero() {
            match hurry {
                Some(hurry) => {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = hurry => tracing::info!("shutdown delay cut short"),
                    }
                }
                None => tokio::time::sleep(delay).await,
            }
        }
        let _ = close_tx.send(Some(grace));
    };
    tokio::join!(
        proxy_task,
        admin_task,
        identity_task,
        reload_task,
        sweep_task,
        signal
    );
    // The background tasks: the config watcher ended with the reload task; the refreshers now.
    let stopped = current.load().cache.stop();
    tracing::info!(refreshers = stopped.len(), "stopped");
}
