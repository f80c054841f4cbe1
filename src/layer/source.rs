//! [`TokenSource`]: one credential and scope, and the cache entry that keeps its token fresh.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigError, Profile};
use crate::credentials::{self, Credential, CredentialContext, EntraClient};
use crate::env::{Env, ProcessEnv};
use crate::metrics::Metrics;
use crate::tls::{self, TlsError};
use crate::token::{CacheSettings, CachedToken, EntryStatus, TokenCache, TokenEntry};

use super::TokenUnavailable;

/// The profile name of a source made by [`TokenSource::from_credential`] (in its errors).
const CUSTOM_PROFILE: &str = "custom";

/// How long a request waits for an acquisition in flight: `server.token_wait_timeout`'s default.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// `entra.request_timeout`'s default.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The bound on one acquisition, as the proxy sets it: `entra.request_timeout`, at least 90 s (one
/// acquisition may retry inside itself, as IMDS does while a VM starts).
fn acquire_timeout(request_timeout: Duration) -> Duration {
    request_timeout.max(Duration::from_secs(90))
}

/// Tokens for one scope from one credential, kept fresh by a background refresher: the proxy's
/// cache entry (single-flight acquisition, refresh before expiry, backoff with jitter, a cached
/// token served through an outage until the clock-skew margin and never after).
///
/// Cloning is cheap (one `Arc`) and every clone shares the token and the refresher. The refresher
/// stops when the last clone is dropped.
///
/// **Runtime:** make it inside a tokio runtime, and use it on that runtime; the refresher is
/// spawned there at once, so the first request usually finds a token. Made outside one, it starts
/// on the runtime of the first request that needs a token instead (and would stop with it).
/// Polling its futures outside tokio panics, as any tokio timer does.
#[derive(Clone)]
pub struct TokenSource {
    shared: Arc<Shared>,
}

struct Shared {
    entry: Arc<TokenEntry>,
    /// Owns the entry's refresher: dropped with the last clone, it aborts it.
    _cache: TokenCache,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: never the token, nor the credential (which may hold a secret).
        let key = self.shared.entry.key();
        f.debug_struct("TokenSource")
            .field("profile", &key.profile)
            .field("scope", &key.scope)
            .field("token_cached", &self.usable().is_some())
            .finish()
    }
}

/// Why a [`TokenSource`] could not be made. Messages never hold a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The config file cannot be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The trust roots (`entra.ca_file`) or the HTTP client for Entra.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The config file has no such profile.
    #[error("{path}: profile `{profile}` is not defined; defined: {}", known.join(", "))]
    UnknownProfile {
        /// The config file.
        path: PathBuf,
        /// The profile asked for.
        profile: String,
        /// The profiles it defines.
        known: Vec<String>,
    },
    /// No scope was given and no route of the config file uses the profile.
    #[error(
        "{path}: no route uses profile `{profile}`, so its scope is not known: pass a scope (such as \
         `https://graph.microsoft.com/.default`)"
    )]
    NoScope {
        /// The config file.
        path: PathBuf,
        /// The profile.
        profile: String,
    },
    /// No scope was given and the profile's routes use several.
    #[error(
        "{path}: the routes of profile `{profile}` use several scopes ({}): pass the one to use",
        scopes.join(", ")
    )]
    AmbiguousScope {
        /// The config file.
        path: PathBuf,
        /// The profile.
        profile: String,
        /// The scopes its routes use.
        scopes: Vec<String>,
    },
}

/// What building a credential needs besides its profile (the config's values, or the defaults).
struct Setup<'a> {
    ca_file: Option<&'a Path>,
    request_timeout: Duration,
    egress: Option<&'a crate::egress::EgressProxy>,
    state_dir: Option<&'a Path>,
    wait_timeout: Duration,
}

impl TokenSource {
    /// Tokens for `scope` from any credential (one of patless' kinds, or your own
    /// [`Credential`]), with the proxy's default timings: a request waits up to 30 s for an
    /// acquisition, an acquisition is bounded by 90 s. Errors name the profile `custom`.
    ///
    /// Starts the refresher at once: see the type's notes on the runtime.
    pub fn from_credential(credential: Arc<dyn Credential>, scope: &str) -> TokenSource {
        TokenSource::new(
            CUSTOM_PROFILE,
            credential,
            scope,
            CacheSettings {
                acquire_timeout: acquire_timeout(REQUEST_TIMEOUT),
                wait_timeout: WAIT_TIMEOUT,
            },
        )
    }

    /// Tokens for `scope` from a credential profile made in code, as `patless serve` would build
    /// it with the default `[entra]` and `[server]` settings: the process environment (for `auto`,
    /// `{ env = … }` secrets and the like), webpki and native trust roots, no egress proxy, the
    /// default state directory (`device_code` and `interactive_browser` logins), and the
    /// timings of [`TokenSource::from_credential`].
    ///
    /// Reads the system's trust roots; starts the refresher at once (see the type's notes on the
    /// runtime).
    pub fn from_profile(profile: &Profile, scope: &str) -> Result<TokenSource, SourceError> {
        TokenSource::build(
            profile,
            scope,
            Arc::new(ProcessEnv),
            &Setup {
                ca_file: None,
                request_timeout: REQUEST_TIMEOUT,
                egress: None,
                state_dir: None,
                wait_timeout: WAIT_TIMEOUT,
            },
        )
    }

    /// Tokens for profile `profile` of a patless config file (TOML, YAML or JSON, with the
    /// `PATLESS_SECTION__KEY` overrides of the process environment, validated as `patless serve`
    /// validates it). Its `[entra]` settings (`ca_file`, `request_timeout`), `server.egress_proxy`,
    /// `server.state_dir` and `server.token_wait_timeout` apply.
    ///
    /// Without `scope`, the scope of the routes that use the profile, when they all use the same
    /// one; an error otherwise (no such route, or several scopes).
    ///
    /// Reads the system's trust roots; starts the refresher at once (see the type's notes on the
    /// runtime).
    pub fn from_config_file(
        path: &Path,
        profile: &str,
        scope: Option<&str>,
    ) -> Result<TokenSource, SourceError> {
        let env: Env = Arc::new(ProcessEnv);
        let loaded = crate::config::load(Some(path), env.as_ref())?;
        let config = &loaded.config;
        let Some(p) = config.profiles.get(profile) else {
            return Err(SourceError::UnknownProfile {
                path: path.to_path_buf(),
                profile: profile.to_string(),
                known: config.profiles.keys().cloned().collect(),
            });
        };
        let scope = match scope {
            Some(s) => s.to_string(),
            None => route_scope(config, path, profile)?,
        };
        TokenSource::build(
            p,
            &scope,
            env,
            &Setup {
                ca_file: config.entra.ca_file.as_deref(),
                request_timeout: config.entra.request_timeout,
                egress: config.server.egress_proxy.as_ref(),
                state_dir: config.server.state_dir.as_deref(),
                wait_timeout: config.server.token_wait_timeout,
            },
        )
    }

    /// A usable token: the cached one, or the result of the acquisition in flight (waited for).
    /// For callers that want the token itself rather than a header on a request; its `Debug`
    /// never shows the token, [`CachedToken::secret`] does.
    pub async fn token(&self) -> Result<Arc<CachedToken>, TokenUnavailable> {
        self.shared.entry.get().await
    }

    /// The profile name (`custom` for [`TokenSource::from_credential`]).
    pub fn profile(&self) -> &str {
        &self.shared.entry.key().profile
    }

    /// The scope tokens are acquired for.
    pub fn scope(&self) -> &str {
        &self.shared.entry.key().scope
    }

    /// Whether a usable token is held and how the last acquisition went (for readiness checks).
    pub fn status(&self) -> EntryStatus {
        self.shared.entry.status()
    }

    /// The cached token, if it may still be sent (lock-free; never waits).
    pub(super) fn usable(&self) -> Option<Arc<CachedToken>> {
        self.shared.entry.usable()
    }

    fn build(
        profile: &Profile,
        scope: &str,
        env: Env,
        setup: &Setup<'_>,
    ) -> Result<TokenSource, SourceError> {
        tls::install_crypto_provider();
        let entra = EntraClient::new(tls::entra_http_client(
            setup.ca_file,
            setup.request_timeout,
            setup.egress,
        )?)
        .with_egress(setup.egress);
        let store =
            crate::store::TokenStore::new(credentials::state_dir(setup.state_dir, env.as_ref()));
        let ctx = CredentialContext {
            entra,
            env,
            store,
            arc: credentials::ArcAgent::default(),
        };
        let built = credentials::build(profile, &ctx);
        Ok(TokenSource::new(
            &profile.name,
            built.credential,
            scope,
            CacheSettings {
                acquire_timeout: acquire_timeout(setup.request_timeout),
                wait_timeout: setup.wait_timeout,
            },
        ))
    }

    fn new(
        profile: &str,
        credential: Arc<dyn Credential>,
        scope: &str,
        settings: CacheSettings,
    ) -> TokenSource {
        let mut credentials = HashMap::new();
        credentials.insert(profile.to_string(), credential);
        // A registry of its own: nothing else reads these metrics, and nothing clashes.
        let metrics = Metrics::new(prometheus::Registry::new());
        let cache = TokenCache::new(credentials, settings, metrics);
        let entry = match cache.entry(profile, scope, None) {
            Some(e) => e,
            // `entry` is `None` only for a profile the cache lacks or a poisoned lock; this fresh
            // cache holds exactly this profile, and no thread has touched its lock.
            None => unreachable!("a fresh token cache lacks its only profile"),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            entry.start();
        }
        TokenSource {
            shared: Arc::new(Shared {
                entry,
                _cache: cache,
            }),
        }
    }
}

/// The scope of the routes of `config` that use `profile`, when there is exactly one.
fn route_scope(
    config: &crate::config::Config,
    path: &Path,
    profile: &str,
) -> Result<String, SourceError> {
    let scopes: BTreeSet<&str> = config
        .routes
        .iter()
        .filter(|r| r.profile == profile)
        .map(|r| r.scope.as_str())
        .collect();
    let mut iter = scopes.iter();
    match (iter.next(), iter.next()) {
        (Some(only), None) => Ok((*only).to_string()),
        (None, _) => Err(SourceError::NoScope {
            path: path.to_path_buf(),
            profile: profile.to_string(),
        }),
        (Some(_), Some(_)) => Err(SourceError::AmbiguousScope {
            path: path.to_path_buf(),
            profile: profile.to_string(),
            scopes: scopes.iter().map(|s| (*s).to_string()).collect(),
        }),
    }
}
