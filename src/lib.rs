//! patless: a reverse proxy that injects Microsoft Entra credentials.
//!
//! [`run`] is the one entry point; `main` and the integration tests both call it with listeners
//! they bound themselves and an [`App`] built from a validated config.

pub mod cli;
pub mod config;
pub mod credentials;
pub mod egress;
pub mod env;
pub mod hosts;
pub mod login;
pub mod metrics;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod store;
pub mod tls;
pub mod token;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use config::Config;
use credentials::{CredentialContext, EntraClient};
use env::Env;
use metrics::Metrics;
use proxy::{Proxy, ProxySettings, Router};
use server::Listener;
use token::{CacheSettings, TokenCache};

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

/// Everything a running patless holds: config, metrics, token cache and proxy.
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
}

impl App {
    /// Builds the credentials, the cache, the routing table and the upstream client.
    /// The environment and the metrics registry are injected.
    pub fn new(
        config: Config,
        env: Env,
        registry: prometheus::Registry,
    ) -> Result<App, StartError> {
        tls::install_crypto_provider();
        let metrics = Metrics::new(registry);
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
        let ctx = CredentialContext { entra, env, store };
        let mut credentials = HashMap::new();
        let mut credential_sources = std::collections::BTreeMap::new();
        for p in config.profiles.values() {
            let built = credentials::build(p, &ctx);
            credentials.insert(p.name.clone(), built.credential);
            credential_sources.insert(p.name.clone(), built.source);
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
        let router = Router::new(&config, &cache)?;
        let settings = ProxySettings {
            connect_timeout: config.server.connect_timeout,
            response_header_timeout: config.server.response_header_timeout,
            max_uri_bytes: config.server.limits.max_uri_bytes,
        };
        let client = proxy::upstream_client(tls::client_config(ca)?, &settings, egress);
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
        let proxy = Proxy::new(router, inbound, client, settings, metrics.clone());
        Ok(App {
            config,
            metrics,
            cache,
            proxy,
            credential_sources,
        })
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .field("cache", &self.cache)
            .field("proxy", &self.proxy)
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
        Ok(Listeners { proxy, admin })
    }
}

/// Runs the proxy and admin listeners until `shutdown` resolves, then drains in-flight requests
/// for up to `server.shutdown_grace`. Token refreshers start at once for every explicit route, so
/// the first request finds a token and `/readyz` turns green on its own.
pub async fn run(listeners: Listeners, app: App, shutdown: impl Future<Output = ()> + Send) {
    let app = Arc::new(app);
    for target in app.proxy.router().routes() {
        target.entry.start();
    }
    let grace = app.config.server.shutdown_grace;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tracing::info!(listen = %listeners.proxy.describe(), "proxy listening");
    let proxy_app = Arc::clone(&app);
    let proxy_task = server::serve(
        listeners.proxy,
        move |req| {
            let app = Arc::clone(&proxy_app);
            async move { app.proxy.handle(req).await }
        },
        stopped(stop_rx.clone()),
        grace,
        app.config.server.limits,
        "proxy",
    );
    let admin_task = async {
        if let Some(l) = listeners.admin {
            tracing::info!(listen = %l.describe(), "admin listening (/healthz /readyz /metrics)");
            let admin_app = Arc::clone(&app);
            server::serve(
                l,
                move |req| server::admin::handle(Arc::clone(&admin_app), req),
                stopped(stop_rx.clone()),
                grace,
                app.config.server.limits,
                "admin",
            )
            .await;
        }
    };
    let signal = async {
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    };
    tokio::join!(proxy_task, admin_task, signal);
}
