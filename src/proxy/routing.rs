//! Routing (docs/routes.md): explicit routes by longest prefix on whole segments, then host routes
//! `/{known-host}/…` served with the default profile. Every route's token entry is looked up once,
//! here, so the request path never touches the cache's map.

use std::collections::HashMap;
use std::sync::Arc;

use url::Url;

use crate::config::Config;
use crate::hosts;
use crate::token::{TokenCache, TokenEntry, TokenSlot, WorkerToken};

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
    /// This worker's copy of the entry's token (`token/worker.rs`).
    pub token_slot: Arc<TokenSlot>,
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
    /// A copy for one worker ([`Router::for_worker`]): what a request clones or counts is copied
    /// into new memory; the token entry and the rest are shared.
    fn for_worker(&self) -> RouteTarget {
        let authority = http::uri::Authority::from_maybe_shared(bytes::Bytes::copy_from_slice(
            self.authority.as_str().as_bytes(),
        ))
        .expect("it was an authority");
        RouteTarget {
            label: Arc::from(&*self.label),
            prefix: Arc::from(&*self.prefix),
            profile: Arc::from(&*self.profile),
            base_path: Arc::from(&*self.base_path),
            host_header: host_header(&authority),
            authority,
            token_slot: Arc::default(),
            metrics: self.metrics.as_ref().map(|_| Arc::default()),
            ..self.clone()
        }
    }

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

/// A slot per host-route scope.
fn slots_for(
    entries: &HashMap<&'static str, Arc<TokenEntry>>,
) -> HashMap<&'static str, Arc<TokenSlot>> {
    entries
        .keys()
        .map(|&scope| (scope, Arc::default()))
        .collect()
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
    /// This worker's copies of the host routes' tokens, by scope.
    host_slots: HashMap<&'static str, Arc<TokenSlot>>,
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
    /// The route's token (this worker's copy), once the token stop has it (`token.rs`).
    pub token: Option<Arc<WorkerToken>>,
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
                token_slot: Arc::default(),
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
            host_slots: slots_for(&host_entries),
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

    /// A copy for one worker thread: the same routes and token entries, in targets of its own
    /// with their own token copies, metric handles, upstream `Host` and authority, so that no
    /// reference count or counter a request writes is shared with another core (a shared one
    /// moves its cache line between the cores on every request).
    pub fn for_worker(&self) -> Router {
        Router {
            routes: self
                .routes
                .iter()
                .map(|t| Arc::new(t.for_worker()))
                .collect(),
            host_routes: self.host_routes,
            default_profile: Arc::clone(&self.default_profile),
            default_note: self.default_note.clone(),
            host_slots: slots_for(&self.host_entries),
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
        let token_slot = Arc::clone(self.host_slots.get(known.scope)?);
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
                token_slot,
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
mod tests;
