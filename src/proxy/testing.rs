//! Unit-test helpers for the layers: a routing table over stand-in credentials.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Router;
use crate::config::{load_from_str, ConfigSource, Format};
use crate::credentials::{AccessToken, BoxFuture, Credential, CredentialError, ErrorClass};
use crate::env::MapEnv;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::token::{CacheSettings, TokenCache};

/// One route, `/ado` → `https://dev.azure.com/contoso`, profile `bot`.
const CONFIG: &str = r#"
[server]
host_routes = false

[profiles.bot]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "not-used"

[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com/contoso"
profile = "bot"
"#;

/// A credential that counts its acquisitions and answers at once (or fails).
#[derive(Debug, Default)]
pub struct Counted {
    n: AtomicUsize,
    fail: bool,
}

impl Counted {
    /// Acquisitions so far.
    pub fn acquisitions(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }
}

impl Credential for Counted {
    fn acquire<'a>(
        &'a self,
        _scope: &'a str,
        _claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        let n = self.n.fetch_add(1, Ordering::SeqCst);
        let fail = self.fail;
        Box::pin(async move {
            if fail {
                return Err(CredentialError::new(
                    ErrorClass::InvalidClient,
                    "the stand-in credential refuses",
                ));
            }
            Ok(AccessToken {
                token: Secret::new(format!("eyJ0eXAiOiJKV1Qi.token-{n}.sig")),
                expires_in: Duration::from_secs(3599),
                refresh_in: None,
            })
        })
    }
}

async fn build(credential: Arc<Counted>) -> (Router, Arc<TokenCache>) {
    build_from(CONFIG, credential).await
}

/// The table of `config` (whose one profile is `bot`) over a credential that always answers.
pub async fn router_from(config: &str) -> (Router, Arc<TokenCache>) {
    build_from(config, Arc::new(Counted::default())).await
}

async fn build_from(config: &str, credential: Arc<Counted>) -> (Router, Arc<TokenCache>) {
    crate::tls::install_crypto_provider();
    let loaded = load_from_str(
        config,
        Format::Toml,
        ConfigSource::Embedded,
        &MapEnv::default(),
    )
    .unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let mut credentials: HashMap<String, Arc<dyn Credential>> = HashMap::new();
    credentials.insert("bot".into(), credential);
    let cache = Arc::new(TokenCache::new(
        credentials,
        CacheSettings {
            acquire_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(5),
        },
        Metrics::new(prometheus::Registry::new()),
    ));
    let router = Router::new(&loaded.config, &cache).expect("router");
    (router, cache)
}

/// The table over a credential that always answers.
pub async fn router() -> (Router, Arc<TokenCache>) {
    build(Arc::new(Counted::default())).await
}

/// The table over a credential that always fails.
pub async fn router_failing() -> (Router, Arc<TokenCache>) {
    build(Arc::new(Counted {
        fail: true,
        ..Counted::default()
    }))
    .await
}

/// The table, its counting credential and its cache (whose drop stops the refreshers).
pub async fn router_counted() -> (Router, Arc<Counted>, Arc<TokenCache>) {
    let counted = Arc::new(Counted::default());
    let (router, cache) = build(Arc::clone(&counted)).await;
    (router, counted, cache)
}
