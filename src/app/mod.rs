//! The running patless: what it holds ([`App`]: config, metrics, token cache, proxy, identity
//! endpoint, admin policy), how a reload adopts the token entries the new one still uses, and the
//! listeners it serves ([`run`], [`run_with`]). `main` and the integration tests both call [`run`]
//! with listeners they bound themselves and an [`App`] built from a validated config.
//!
//! - `admin.rs`: `/healthz`, `/readyz`, `/metrics` on the admin listener, and its policy.
//! - `identity/`: the identity endpoint for SDKs (App Service's protocol and, with
//!   `identity_endpoint.imds`, IMDS's token path).
//! - `reload.rs`: SIGHUP and `server.watch_config`.
//! - `run.rs`: the listeners and the shutdown sequence.

pub mod admin;
pub mod identity;
pub mod reload;
mod run;

pub use run::{run, run_with, Listeners, RunOptions};

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::credentials::{self, ArcAgent, CredentialContext, EntraClient};
use crate::env::Env;
use crate::metrics::Metrics;
use crate::proxy::{self, Proxy, ProxySettings, Router};
use crate::token::{CacheKey, CacheSettings, TokenCache};
use crate::{egress, store, tls};

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
    IdentityHeader(#[from] identity::IdentityHeaderError),
    /// Binding a listener.
    #[error("cannot listen on {addr} ({key}): {source}{hint}")]
    Bind {
        /// Address.
        addr: String,
        /// The config key that sets it (`server.listen`, …).
        key: &'static str,
        /// For an address in use: the likely causes and the way out (else empty).
        hint: String,
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
    pub identity: Option<identity::IdentityEndpoint>,
    /// The admin listener's policy (`admin.rs`).
    pub admin: admin::AdminPolicy,
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
        let (credentials, credential_sources) =
            App::credentials(&config, &ctx, reusable, old.is_some(), &mut changes);
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
            changes.adopted = adopt(&cache, &o.cache, &config, &changes.kept);
        }
        let built = App::assemble(&config, &cache, &ctx, &metrics)
            .and_then(|proxy| Ok((proxy, App::endpoints(&config, &ctx)?)));
        let (proxy, (identity, admin)) = match built {
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

    /// Every profile's credential and source: the old app's where the profile is unchanged (and
    /// the context the same), a new one otherwise; `changes` records which.
    fn credentials(
        config: &Config,
        ctx: &CredentialContext,
        reusable: Option<&App>,
        reloading: bool,
        changes: &mut ProfileChanges,
    ) -> (
        HashMap<String, Arc<dyn credentials::Credential>>,
        std::collections::BTreeMap<String, credentials::SourceFn>,
    ) {
        let mut credentials = HashMap::new();
        let mut sources = std::collections::BTreeMap::new();
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
                    if reloading {
                        changes.rebuilt.push(p.name.clone());
                    }
                    let built = credentials::build(p, ctx);
                    (built.credential, built.source)
                }
            };
            credentials.insert(p.name.clone(), credential);
            sources.insert(p.name.clone(), source);
        }
        (credentials, sources)
    }

    /// The identity endpoint (when configured) and the admin listener's policy.
    fn endpoints(
        config: &Config,
        ctx: &CredentialContext,
    ) -> Result<(Option<identity::IdentityEndpoint>, admin::AdminPolicy), StartError> {
        let identity = match &config.identity_endpoint {
            None => None,
            Some(ie) => Some(identity::IdentityEndpoint::new(
                ie.clone(),
                config.profiles.get(&ie.profile),
                config.server.allowed_hosts.clone(),
                config.server.allowed_origins.clone(),
                ctx.env.as_ref(),
            )?),
        };
        let admin = admin::AdminPolicy::new(&config.server, ctx.env.as_ref())
            .map_err(StartError::AdminToken)?;
        Ok((identity, admin))
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
            upstream_http2: config.server.upstream_http2,
            upstream_max_idle: config.server.upstream_max_idle,
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

/// Takes over from `old` the entries of the `kept` profiles that the new config still uses: those
/// its routing table looks up ([`Router::uses`]) and those its identity endpoint hands out. The
/// others stop with the old cache.
fn adopt(cache: &TokenCache, old: &TokenCache, config: &Config, kept: &[String]) -> Vec<CacheKey> {
    let identity = config
        .identity_endpoint
        .as_ref()
        .map(|ie| (ie.profile.clone(), ie.scopes()));
    cache.adopt(old, |key| {
        let handed_out = identity.as_ref().is_some_and(|(profile, scopes)| {
            key.claims.is_none() && *profile == key.profile && scopes.contains(&key.scope)
        });
        kept.contains(&key.profile)
            && (Router::uses(config, &key.profile, &key.scope) || handed_out)
    })
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
