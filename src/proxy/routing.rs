//! Routing (docs/routes.md): explicit routes by longest prefix on whole segments, then host routes
//! `/{known-host}/…` served with the default profile. Every route's token entry is looked up once,
//! here, so the request path never touches the cache's map.

use std::collections::HashMap;
use std::sync::Arc;

use url::Url;

use crate::config::Config;
use crate::hosts;
use crate::token::{TokenCache, TokenEntry};

/// A resolved destination.
#[derive(Debug, Clone)]
pub struct RouteTarget {
    /// Metric label and error `route` field: the prefix, or `/{host}` for host routes.
    pub label: Arc<str>,
    /// What the client sees as the route's base (`/ado`, `/dev.azure.com`).
    pub prefix: Arc<str>,
    /// Profile name.
    pub profile: Arc<str>,
    /// `https` or `http` (loopback only).
    pub scheme: http::uri::Scheme,
    /// Upstream `host[:port]`.
    pub authority: http::uri::Authority,
    /// Upstream base path (no trailing `/`, may be empty).
    pub base_path: Arc<str>,
    /// Azure DevOps host: send `X-TFS-FedAuthRedirect: Suppress`.
    pub azure_devops: bool,
    /// How the token is presented (`Bearer`, or `Basic` for package feeds).
    pub auth: hosts::Auth,
    /// Absolute URLs into the upstream in textual answers are pointed at the proxy (`urls.rs`).
    pub rewrite_urls: bool,
    /// The token entry.
    pub entry: Arc<TokenEntry>,
    /// `Host` toward the upstream, built once.
    pub host_header: http::HeaderValue,
    /// This route's metric handles, looked up on first use (explicit routes only: a host
    /// route's target is built per request).
    pub metrics: Option<Arc<RouteMetrics>>,
    /// For a host route whose profile is the default one by no `server.default_profile`: which
    /// profile that is, why, and how to pick another; its token errors end with it.
    pub profile_note: Option<Arc<str>>,
}

impl RouteTarget {
    /// `message` (an error about this route's token), with the route's profile note if any.
    pub fn explain(&self, message: String) -> String {
        match &self.profile_note {
            Some(note) => format!("{message}; {note}"),
            None => message,
        }
    }
}

/// A route's handles into `patless_requests_total` and `patless_request_duration_seconds`, so a
/// request does not hash its labels into the metric families.
#[derive(Default)]
pub struct RouteMetrics {
    /// `{route, status="200"}`.
    pub ok: std::sync::OnceLock<prometheus::IntCounter>,
    /// `{route}`.
    pub duration: std::sync::OnceLock<prometheus::Histogram>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMetrics")
    }
}

/// `Host` for an authority (always a valid header value: `Authority` admits a subset).
fn host_header(authority: &http::uri::Authority) -> http::HeaderValue {
    http::HeaderValue::from_str(authority.as_str()).expect("an authority is a valid header value")
}

/// The routing table.
#[derive(Debug)]
pub struct Router {
    /// Longest prefix first.
    routes: Vec<Arc<RouteTarget>>,
    host_routes: bool,
    default_profile: Arc<str>,
    /// Why the default profile, when no `server.default_profile` chose it (host routes' errors).
    default_note: Option<Arc<str>>,
    /// Host-route entries of the default profile, by scope (the table is small and fixed).
    host_entries: HashMap<&'static str, Arc<TokenEntry>>,
    /// The host routes' entry that readiness watches: see [`Router::host_readiness`].
    host_ready: Option<Arc<TokenEntry>>,
}

/// A routing decision: the target and the path (with query) to send upstream.
#[derive(Debug, Clone)]
pub struct Routed {
    /// Where: the table's own target for an explicit route, one built for a host route.
    pub target: Arc<RouteTarget>,
    /// Upstream path and query.
    pub path_and_query: String,
    /// The route's token, once the token stop has it (`token.rs`).
    pub token: Option<Arc<crate::token::CachedToken>>,
}

/// Why a config cannot be routed (an upstream URL that `http::Uri` refuses).
#[derive(Debug, thiserror::Error)]
#[error("route {prefix}: upstream {upstream} cannot be used: {reason}")]
pub struct RouterError {
    prefix: String,
    upstream: String,
    reason: String,
}

fn parts(url: &Url) -> Result<(http::uri::Scheme, http::uri::Authority), String> {
    let scheme: http::uri::Scheme = url.scheme().parse().map_err(|e| format!("{e}"))?;
    let host = url.host_str().ok_or("no host")?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let authority = authority.parse().map_err(|e| format!("{e}"))?;
    Ok((scheme, authority))
}

impl Router {
    /// Builds the table and looks up every route's token entry.
    pub fn new(config: &Config, cache: &TokenCache) -> Result<Router, RouterError> {
        let mut routes = Vec::new();
        for r in &config.routes {
            let err = |reason: String| RouterError {
                prefix: r.prefix.clone(),
                upstream: r.upstream.to_string(),
                reason,
            };
            let (scheme, authority) = parts(&r.upstream).map_err(err)?;
            let entry = cache
                .entry(&r.profile, &r.scope, None)
                .ok_or_else(|| err(format!("profile `{}` has no credential", r.profile)))?;
            let host = r.upstream.host_str().unwrap_or_default();
            routes.push(Arc::new(RouteTarget {
                label: r.prefix.as_str().into(),
                prefix: if r.prefix == "/" {
                    "".into()
                } else {
                    r.prefix.as_str().into()
                },
                profile: r.profile.as_str().into(),
                scheme,
                base_path: r.upstream.path().trim_end_matches('/').into(),
                // A route with Azure DevOps' audience talks to Azure DevOps, whatever its host name (an
                // on-premises gateway, a loopback stand-in).
                azure_devops: hosts::is_azure_devops(host) || r.scope == hosts::AZURE_DEVOPS_SCOPE,
                auth: r.auth,
                rewrite_urls: r.rewrite_urls,
                entry,
                host_header: host_header(&authority),
                metrics: Some(Arc::default()),
                profile_note: None,
                authority,
            }));
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let default_profile: Arc<str> = config.server.default_profile.as_str().into();
        let mut host_entries = HashMap::new();
        if config.server.host_routes {
            for scope in hosts::all_scopes() {
                if let Some(e) = cache.entry(&default_profile, scope, None) {
                    host_entries.insert(scope, e);
                }
            }
        }
        // A profile that holds a token for one API can be trusted for the others; one whose
        // routes hold none is watched through Azure DevOps', the scope `check` tests it with.
        let host_ready = (config.server.host_routes
            && !config
                .routes
                .iter()
                .any(|r| r.profile.as_str() == &*default_profile))
        .then(|| cache.entry(&default_profile, hosts::AZURE_DEVOPS_SCOPE, None))
        .flatten();
        Ok(Router {
            routes,
            host_routes: config.server.host_routes,
            default_profile,
            default_note: config.server.default_profile_hint(false).map(Into::into),
            host_entries,
            host_ready,
        })
    }

    /// Whether a table built from `config` looks up the token entry of (`profile`, `scope`): an
    /// explicit route's, or the default profile's for a host route. A reload keeps exactly these
    /// entries of the profiles it keeps (`app::App::reload`).
    pub fn uses(config: &Config, profile: &str, scope: &str) -> bool {
        config
            .routes
            .iter()
            .any(|r| r.profile == profile && r.scope == scope)
            || (config.server.host_routes
                && profile == config.server.default_profile
                && hosts::all_scopes().contains(&scope))
    }

    /// Every explicit route's target (for readiness and `check`).
    pub fn routes(&self) -> &[Arc<RouteTarget>] {
        &self.routes
    }

    /// With host routes on, their (default) profile serves traffic, so readiness waits for it
    /// too: when no explicit route uses that profile (whose entries readiness watches already),
    /// this is its entry for Azure DevOps' scope, started with the routes' (docs/configuration.md,
    /// `server.default_profile`).
    pub fn host_readiness(&self) -> Option<&Arc<TokenEntry>> {
        self.host_ready.as_ref()
    }

    /// The entries to start with the table: every explicit route's, and
    /// [`Router::host_readiness`].
    pub fn eager_entries(&self) -> impl Iterator<Item = &Arc<TokenEntry>> {
        self.routes
            .iter()
            .map(|t| &t.entry)
            .chain(self.host_ready.as_ref())
    }

    /// A copy for one worker thread: the same routes, tokens and metric handles, in targets of
    /// its own, so the reference counts a request touches are never shared with another core.
    pub fn for_worker(&self) -> Router {
        Router {
            routes: self
                .routes
                .iter()
                .map(|t| Arc::new(RouteTarget::clone(t)))
                .collect(),
            host_routes: self.host_routes,
            default_profile: Arc::clone(&self.default_profile),
            default_note: self.default_note.clone(),
            host_entries: self.host_entries.clone(),
            host_ready: self.host_ready.clone(),
        }
    }

    /// Routes a validated path (`path`) with its optional query.
    pub fn route(&self, path: &str, query: Option<&str>) -> Option<Routed> {
        for t in &self.routes {
            let p: &str = &t.prefix;
            let rest = match path.strip_prefix(p) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                _ => continue,
            };
            return Some(Routed {
                token: None,
                path_and_query: join(&t.base_path, rest, query),
                target: Arc::clone(t),
            });
        }
        if !self.host_routes {
            return None;
        }
        let after = path.strip_prefix('/')?;
        let (host, rest) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        let host = host.to_ascii_lowercase();
        let known = hosts::lookup(&host)?;
        let entry = self.host_entries.get(known.scope)?.clone();
        let authority: http::uri::Authority = host.parse().ok()?;
        let prefix: Arc<str> = format!("/{host}").into();
        Some(Routed {
            token: None,
            path_and_query: join("", rest, query),
            target: Arc::new(RouteTarget {
                label: known.label().into(),
                prefix,
                profile: self.default_profile.clone(),
                scheme: http::uri::Scheme::HTTPS,
                host_header: host_header(&authority),
                authority,
                base_path: "".into(),
                azure_devops: known.azure_devops,
                auth: known.auth,
                rewrite_urls: known.rewrite_urls,
                entry,
                metrics: None,
                profile_note: self.default_note.clone(),
            }),
        })
    }

    /// The proxy path (`/ado/org/`, `/vssps.dev.azure.com/org/`) that reaches the absolute upstream
    /// URL `url`, if a route serves it: `preferred` (the route the client used) first, then the
    /// explicit routes, longest prefix first, then a host route for a known host. Scheme and host
    /// must match exactly (host case-insensitively); the upstream's base path must be a prefix on
    /// whole segments (case-insensitively, as Azure DevOps' organization names are). Used to keep
    /// the absolute URLs of answers behind the proxy (`urls/`).
    pub fn proxy_path_for(&self, preferred: &RouteTarget, url: &str) -> Option<String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (&http::uri::Scheme::HTTPS, rest)
        } else {
            (&http::uri::Scheme::HTTP, url.strip_prefix("http://")?)
        };
        // What follows the authority is kept exactly as written (path, query, fragment), whatever
        // it holds: only the head decides where the URL points.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority: http::uri::Authority = rest[..end].parse().ok()?;
        let after = &rest[end..];
        let onto = |t: &RouteTarget| -> Option<String> {
            if t.scheme != *scheme
                || !t
                    .authority
                    .as_str()
                    .eq_ignore_ascii_case(authority.as_str())
            {
                return None;
            }
            let base = t.base_path.as_bytes();
            let head = after.as_bytes().get(..base.len())?;
            if !head.eq_ignore_ascii_case(base) {
                return None;
            }
            let rest = after.get(base.len()..)?;
            if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
                return None;
            }
            Some(non_empty_path(format!("{}{}", t.prefix, rest)))
        };
        if let Some(p) = std::iter::once(preferred)
            .chain(self.routes.iter().map(|t| &**t))
            .find_map(onto)
        {
            return Some(p);
        }
        if !self.host_routes || *scheme != http::uri::Scheme::HTTPS || authority.port().is_some() {
            return None;
        }
        let host = authority.host().to_ascii_lowercase();
        let known = hosts::lookup(&host)?;
        self.host_entries.get(known.scope)?;
        Some(non_empty_path(format!("/{host}{after}")))
    }
}

/// `""` → `"/"`; a path that starts with `?` gets its `/`.
fn non_empty_path(p: String) -> String {
    if p.starts_with('/') {
        p
    } else {
        format!("/{p}")
    }
}

fn join(base: &str, rest: &str, query: Option<&str>) -> String {
    let mut s =
        String::with_capacity(base.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    s.push_str(base);
    s.push_str(rest);
    if s.is_empty() {
        s.push('/');
    }
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_from_str, ConfigSource, Format};
    use crate::env::MapEnv;
    use crate::metrics::Metrics;
    use crate::token::CacheSettings;
    use std::time::Duration;

    fn router(toml: &str) -> Router {
        let env = MapEnv::default();
        let loaded =
            load_from_str(toml, Format::Toml, ConfigSource::Embedded, &env).expect("config");
        let creds = loaded
            .config
            .profiles
            .values()
            .map(|p| {
                let ctx = crate::credentials::CredentialContext {
                    entra: crate::credentials::EntraClient::new(reqwest::Client::new()),
                    env: std::sync::Arc::new(MapEnv::default()),
                    store: crate::store::TokenStore::new(
                        std::env::temp_dir().join("patless-routing-test"),
                    ),
                    arc: crate::credentials::ArcAgent::default(),
                };
                (
                    p.name.clone(),
                    crate::credentials::build(p, &ctx).credential,
                )
            })
            .collect();
        let cache = TokenCache::new(
            creds,
            CacheSettings {
                acquire_timeout: Duration::from_secs(1),
                wait_timeout: Duration::from_secs(1),
            },
            Metrics::new(prometheus::Registry::new()),
        );
        Router::new(&loaded.config, &cache).expect("router")
    }

    #[test]
    fn host_routes_serve_known_hosts_only() {
        crate::tls::install_crypto_provider();
        let r = router(crate::config::EMBEDDED_DEFAULT);
        let t = r
            .route("/dev.azure.com/org/_apis/projects", Some("api-version=7.1"))
            .expect("known host");
        assert_eq!(t.target.authority.as_str(), "dev.azure.com");
        assert_eq!(t.target.scheme, http::uri::Scheme::HTTPS);
        assert_eq!(t.path_and_query, "/org/_apis/projects?api-version=7.1");
        assert!(t.target.azure_devops);
        assert_eq!(&*t.target.profile, "auto");
        assert_eq!(t.target.entry.key().scope, hosts::AZURE_DEVOPS_SCOPE);

        let t = r
            .route("/Contoso.VisualStudio.com/_git/repo", None)
            .expect("visualstudio.com");
        assert_eq!(t.target.authority.as_str(), "contoso.visualstudio.com");
        assert_eq!(
            &*t.target.label, "/*.visualstudio.com",
            "labels stay bounded"
        );

        let t = r
            .route("/api-eu.securitycenter.microsoft.com/api/machines", None)
            .expect("MDE");
        assert_eq!(
            t.target.entry.key().scope,
            "https://api.securitycenter.microsoft.com/.default"
        );
        assert!(!t.target.azure_devops);

        for unknown in [
            "/evil.com/x",
            "/127.0.0.1:8080/x",
            "/dev.azure.com.evil.com/x",
            "/localhost/x",
        ] {
            assert!(
                r.route(unknown, None).is_none(),
                "{unknown} must not be proxied"
            );
        }
        // Explicit routes win over host routes.
        let t = r.route("/ado/org", None).expect("explicit");
        assert_eq!(&*t.target.label, "/ado");
        assert_eq!(t.path_and_query, "/org");
    }

    #[test]
    fn proxy_paths_for_upstream_urls() {
        crate::tls::install_crypto_provider();
        let r = router(&format!(
            "{}\n[[routes]]\nprefix = \"/contoso\"\nupstream = \"https://dev.azure.com/contoso\"\nprofile = \"auto\"\n",
            crate::config::EMBEDDED_DEFAULT
        ));
        let ado = r
            .route("/ado/org/_apis/ResourceAreas", None)
            .expect("route")
            .target;
        let at = |url: &str| r.proxy_path_for(&ado, url);
        // The route the client used wins over another that serves the same upstream.
        assert_eq!(
            at("https://dev.azure.com/contoso/").as_deref(),
            Some("/ado/contoso/")
        );
        assert_eq!(at("https://DEV.azure.com/org").as_deref(), Some("/ado/org"));
        assert_eq!(at("https://dev.azure.com").as_deref(), Some("/ado"));
        let contoso = r.route("/contoso/_apis", None).expect("route").target;
        assert_eq!(
            r.proxy_path_for(&contoso, "https://dev.azure.com/Contoso/")
                .as_deref(),
            Some("/contoso/"),
            "base path on whole segments, case-insensitively"
        );
        assert_eq!(
            r.proxy_path_for(&contoso, "https://dev.azure.com/contosox/")
                .as_deref(),
            Some("/ado/contosox/"),
            "not the /contoso route: another explicit route serves it"
        );
        // Known hosts through host routes; anything else is left alone.
        assert_eq!(
            at("https://vsrm.dev.azure.com/org/").as_deref(),
            Some("/vsrm.dev.azure.com/org/")
        );
        assert_eq!(
            at("https://Contoso.VisualStudio.com/").as_deref(),
            Some("/contoso.visualstudio.com/")
        );
        for foreign in [
            "http://dev.azure.com/org/",
            "https://dev.azure.com:8443/org/",
            "https://evil.example/org/",
            "https://vsrm.dev.azure.com.evil.example/org/",
            "/org/",
            "not a url",
        ] {
            assert_eq!(at(foreign), None, "{foreign}");
        }
        let off = router(&format!(
            "[server]\nhost_routes = false\n{}",
            crate::config::EMBEDDED_DEFAULT
        ));
        let ado = off.route("/ado/org", None).expect("route").target;
        assert_eq!(
            off.proxy_path_for(&ado, "https://vsrm.dev.azure.com/org/"),
            None
        );
    }

    #[test]
    fn host_routes_off_means_explicit_only() {
        crate::tls::install_crypto_provider();
        let r = router(&format!(
            "[server]\nhost_routes = false\n{}",
            crate::config::EMBEDDED_DEFAULT
        ));
        assert!(r.route("/dev.azure.com/org", None).is_none());
        assert!(r.route("/mde/api", None).is_some());
    }
}
