//! patless: a reverse proxy that injects Microsoft Entra credentials.
//!
//! [`run`] is the one entry point; `main` and the integration tests both call it with listeners
//! they bound themselves and an [`App`] built from a validated config. [`run_with`] adds config
//! reloads (SIGHUP, `server.watch_config`) and a way to hurry the shutdown.

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod cli;
pub mod config;
pub mod credentials;
pub mod egress;
pub mod env;
pub mod git_credential;
pub mod hosts;
pub mod layer;
pub mod login;
pub mod metrics;
pub mod permissions;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod store;
pub mod tls;
pub mod token;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use config::Config;
use credentials::{ArcAgent, CredentialContext, EntraClient};
use env::Env;
use metrics::Metrics;
use proxy::{Proxy, ProxySettings, Router};
use server::Listener;
use token::{CacheKey, CacheSettings, TokenCache};

/// Why patless could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Trust roots or HTTP client.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The routing table.
    #[error(transparent)]
    Router(#[from] proxy::routing::RouterError),
    /// `server.inbound_token` cannot be read.
    #[error("server.inbound_token: {0}")]
    InboundToken(String),
    /// `server.admin_token` cannot be read.
    #[error("server.admin_token: {0}")]
    AdminToken(String),
    /// `identity_endpoint.header` cannot be read or used.
    #[error(transparent)]
    IdentityHeader(#[from] server::identity::IdentityHeaderError),
    /// Binding a listener.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Everything a running patless holds: config, metrics, token cache and proxy. A reload builds a
/// new one (see [`App::reload`]) and swaps it in; requests in flight keep the one they started on.
pub struct App {
    /// The validated config.
    pub config: Config,
    /// Metrics.
    pub metrics: Metrics,
    /// The token cache.
    pub cache: Arc<TokenCache>,
    /// The proxy.
    pub proxy: Proxy,
    /// Per profile: where its tokens come from (what `auto` chose), for `check`.
    pub credential_sources: std::collections::BTreeMap<String, credentials::SourceFn>,
    /// The identity endpoint for SDKs (`[identity_endpoint]`), if configured.
    pub identity: Option<server::identity::IdentityEndpoint>,
    /// The admin listener's policy (`server::admin`).
    pub admin: server::admin::AdminPolicy,
    /// The environment it was built from (a reload reads the config with the same one).
    env: Env,
    /// Where the Azure Arc agent is looked for (a reload builds credentials with the same).
    arc: ArcAgent,
}

/// What [`App::reload`] did with the profiles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileChanges {
    /// Unchanged profiles: the same credential objects and token entries carry on, so no new
    /// token request is made for them.
    pub kept: Vec<String>,
    /// New or changed profiles: a fresh credential and fresh entries.
    pub rebuilt: Vec<String>,
    /// Profiles the new config no longer has.
    pub removed: Vec<String>,
    /// The token entries taken over from the old cache.
    pub adopted: Vec<CacheKey>,
}

impl App {
    /// Builds the credentials, the cache, the routing table and the upstream client.
    /// The environment and the metrics registry are injected.
    pub fn new(
        config: Config,
        env: Env,
        registry: prometheus::Registry,
    ) -> Result<App, StartError> {
        App::with_arc_agent(config, env, registry, ArcAgent::default())
    }

    /// [`App::new`], with the Azure Arc agent looked for at `arc` instead of its real paths (tests
    /// point it at a temporary directory).
    pub fn with_arc_agent(
        config: Config,
        env: Env,
        registry: prometheus::Registry,
        arc: ArcAgent,
    ) -> Result<App, StartError> {
        let metrics = Metrics::new(registry);
        App::build(config, env, arc, metrics, None).map(|(app, _)| app)
    }

    /// The app for a reloaded `config`, built beside this one with the same environment and the
    /// same [`Metrics`] (nothing is registered twice). A profile whose settings — and the settings
    /// its credential is built from: `entra.ca_file`, `entra.request_timeout`, the egress proxy,
    /// `server.state_dir`, `server.token_wait_timeout` — are unchanged keeps its credential, and
    /// the token entries the new routes still use are taken over (the same objects, refreshers
    /// running). Nothing of `self` changes: when the new app is swapped in, the caller hands the
    /// entries over with `self.cache.release(&changes.adopted)` and stops the rest with
    /// `self.cache.stop()`.
    pub fn reload(&self, config: Config) -> Result<(App, ProfileChanges), StartError> {
        App::build(
            config,
            self.env.clone(),
            self.arc.clone(),
            self.metrics.clone(),
            Some(self),
        )
    }

    /// The environment it was built from.
    pub fn env(&self) -> &Env {
        &self.env
    }

    fn build(
        config: Config,
        env: Env,
        arc: ArcAgent,
        metrics: Metrics,
        old: Option<&App>,
    ) -> Result<(App, ProfileChanges), StartError> {
        tls::install_crypto_provider();
        let ca = config.entra.ca_file.as_deref();
        let egress = config.server.egress_proxy.as_ref();
        egress::log_choice(egress);
        let entra = EntraClient::new(tls::entra_http_client(
            ca,
            config.entra.request_timeout,
            egress,
        )?)
        .with_egress(egress);
        let store = store::TokenStore::new(credentials::state_dir(
            config.server.state_dir.as_deref(),
            env.as_ref(),
        ));
        let ctx = CredentialContext {
            entra,
            env,
            store,
            arc,
        };
        let reusable = old.filter(|o| same_credential_context(&o.config, &config));
        let mut changes = ProfileChanges::default();
        let mut credentials = HashMap::new();
        let mut credential_sources = std::collections::BTreeMap::new();
        for p in config.profiles.values() {
            let kept = reusable.and_then(|o| {
                let same = o.config.profiles.get(&p.name) == Some(p);
                let credential = o.cache.credential(&p.name).filter(|_| same)?;
                let source = o.credential_sources.get(&p.name)?;
                Some((Arc::clone(credential), Arc::clone(source)))
            });
            let (credential, source) = match kept {
                Some(k) => {
                    changes.kept.push(p.name.clone());
                    k
                }
                None => {
                    if old.is_some() {
                        changes.rebuilt.push(p.name.clone());
                    }
                    let built = credentials::build(p, &ctx);
                    (built.credential, built.source)
                }
            };
            credentials.insert(p.name.clone(), credential);
            credential_sources.insert(p.name.clone(), source);
        }
        if let Some(o) = old {
            changes.removed = o
                .config
                .profiles
                .keys()
                .filter(|n| !config.profiles.contains_key(*n))
                .cloned()
                .collect();
        }
        let cache = Arc::new(TokenCache::new(
            credentials,
            CacheSettings {
                // One acquisition may retry inside itself (IMDS allows ~70 s for a 410 while a VM
                // starts); each HTTP request is still bounded by `entra.request_timeout`.
                acquire_timeout: config
                    .entra
                    .request_timeout
                    .max(std::time::Duration::from_secs(90)),
                wait_timeout: config.server.token_wait_timeout,
            },
            metrics.clone(),
        ));
        if let Some(o) = reusable {
            // Only entries the new config still routes to (or hands out at the identity
            // endpoint); the others stop with the old cache.
            let host_scopes = hosts::all_scopes();
            let identity_scopes = config
                .identity_endpoint
                .as_ref()
                .map(|ie| (ie.profile.clone(), ie.scopes()));
            changes.adopted = cache.adopt(&o.cache, |key| {
                changes.kept.contains(&key.profile)
                    && (config
                        .routes
                        .iter()
                        .any(|r| r.profile == key.profile && r.scope == key.scope)
                        || (config.server.host_routes
                            && key.profile == config.server.default_profile
                            && host_scopes.contains(&key.scope.as_str()))
                        || identity_scopes.as_ref().is_some_and(|(profile, scopes)| {
                            key.claims.is_none()
                                && *profile == key.profile
                                && scopes.contains(&key.scope)
                        }))
            });
        }
        let built = App::assemble(&config, &cache, &ctx, &metrics).and_then(|proxy| {
            let identity = match &config.identity_endpoint {
                None => None,
                Some(ie) => Some(server::identity::IdentityEndpoint::new(
                    ie.clone(),
                    config.profiles.get(&ie.profile),
                    config.server.allowed_hosts.clone(),
                    config.server.allowed_origins.clone(),
                    ctx.env.as_ref(),
                )?),
            };
            Ok((proxy, identity))
        });
        let admin = server::admin::AdminPolicy::new(&config.server, ctx.env.as_ref())
            .map_err(StartError::AdminToken);
        let built = built.and_then(|pi| admin.map(|admin| (pi, admin)));
        let ((proxy, identity), admin) = match built {
            Ok(p) => p,
            Err(e) => {
                // The old cache still owns the adopted entries: dropping this one must not stop
                // them.
                cache.release(&changes.adopted);
                return Err(e);
            }
        };
        Ok((
            App {
                config,
                metrics,
                cache,
                proxy,
                credential_sources,
                identity,
                admin,
                env: ctx.env,
                arc: ctx.arc,
            },
            changes,
        ))
    }

    /// The routing table, the upstream client and the inbound policy over `cache`.
    fn assemble(
        config: &Config,
        cache: &TokenCache,
        ctx: &CredentialContext,
        metrics: &Metrics,
    ) -> Result<Proxy, StartError> {
        let ca = config.entra.ca_file.as_deref();
        let egress = config.server.egress_proxy.as_ref();
        let router = Router::new(config, cache)?;
        let settings = ProxySettings {
            connect_timeout: config.server.connect_timeout,
            response_header_timeout: config.server.response_header_timeout,
            max_uri_bytes: config.server.limits.max_uri_bytes,
        };
        let tls = tls::client_config(ca)?;
        let clients = (0..config.server.workers.max(1))
            .map(|_| proxy::upstream_client(tls.clone(), &settings, egress))
            .collect();
        let inbound_token = match &config.server.inbound_token {
            None => None,
            Some(source) => Some(
                source
                    .resolve(ctx.env.as_ref())
                    .map_err(StartError::InboundToken)?,
            ),
        };
        let inbound = proxy::InboundPolicy {
            token: inbound_token,
            allowed_hosts: config.server.allowed_hosts.clone(),
            allowed_origins: config.server.allowed_origins.clone(),
        };
        Ok(Proxy::new(
            router,
            inbound,
            clients,
            settings,
            metrics.clone(),
        ))
    }
}

/// Whether credentials built for `old` can serve `new`: everything a credential is built from
/// besides its own profile is the same.
fn same_credential_context(old: &Config, new: &Config) -> bool {
    old.entra.ca_file == new.entra.ca_file
        && old.entra.request_timeout == new.entra.request_timeout
        && old.server.egress_proxy == new.server.egress_proxy
        && old.server.state_dir == new.server.state_dir
        && old.server.token_wait_timeout == new.server.token_wait_timeout
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .field("cache", &self.cache)
            .field("proxy", &self.proxy)
            .field("identity", &self.identity)
            .finish()
    }
}

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
    pub reload: Option<server::reload::Reloader>,
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
    let proxy_app = Arc::clone(&current);
    let proxy_handler = move |req| {
        let app = proxy_app.load_full();
        async move { app.proxy.handle(req).await }
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
                    proxy_handler,
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
                    server::admin::handle(
                        admin_app.load_full(),
                        draining.load(Ordering::Acquire),
                        req,
                    )
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
                server::identity::TOKEN_PATH
            );
            let identity_app = Arc::clone(&current);
            server::serve(
                l,
                move |req| server::identity::handle(identity_app.load_full(), req),
                closed(close_rx.clone()),
                limits,
                "identity",
            )
            .await;
        }
    };
    let reload_task = async {
        if let Some(r) = reload {
            server::reload::serve(Arc::clone(&current), r, begun_rx.clone()).await;
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
