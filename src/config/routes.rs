//! `[[routes]]`: a path prefix, the upstream it forwards to, the profile whose token it injects,
//! the scope of that token (inferred for known Microsoft APIs), how the token is presented
//! (`auth`) and whether the upstream's absolute URLs in answers are pointed at the route
//! (`rewrite_urls`); those two default to the known host's (docs/routes.md).

use std::collections::BTreeMap;

use url::Url;

use super::check::{base_url, Errors};
use super::raw::{RawProfile, RawRoute};
use super::Profile;
use crate::hosts::{self, Auth};

/// An explicit route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Normalised prefix: starts with `/`, no trailing `/` (`/` alone for the root).
    pub prefix: String,
    /// Upstream base URL (no trailing `/` in the path, no query).
    pub upstream: Url,
    /// Profile name.
    pub profile: String,
    /// Entra scope.
    pub scope: String,
    /// How the token is presented.
    pub auth: Auth,
    /// Whether absolute URLs into the upstream in textual answers are pointed at the route.
    pub rewrite_urls: bool,
}

/// Validates the routes, in file order: each names a defined profile, has a scope (written or
/// inferred), and a prefix no other route has.
pub(super) fn validate(
    errs: &mut Errors,
    raw: &[RawRoute],
    profiles: &BTreeMap<String, Profile>,
    raw_profiles: &BTreeMap<String, RawProfile>,
) -> Vec<Route> {
    let mut routes = Vec::new();
    // Every well-formed prefix with its route index, valid route or not, for the duplicate check.
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("routes[{i}]");
        let prefix = match r.prefix.as_deref() {
            None => missing(errs, &key, "prefix", "a path such as \"/ado\""),
            Some(p) => prefix(errs, &format!("{key}.prefix"), p),
        };
        let upstream = match r.upstream.as_deref() {
            None => missing(
                errs,
                &key,
                "upstream",
                "a URL such as \"https://dev.azure.com\"",
            ),
            Some(u) => base_url(errs, &format!("{key}.upstream"), u, "an upstream"),
        };
        let profile = profile(errs, &key, r.profile.as_deref(), profiles, raw_profiles);
        let scope = match (&r.scope, &upstream) {
            (Some(s), _) => scope(errs, &format!("{key}.scope"), s),
            (None, Some(u)) => inferred_scope(errs, &key, u),
            (None, None) => None,
        };
        if let Some(p) = &prefix {
            if let Some((_, prev)) = seen.iter().find(|(q, _)| q == p) {
                errs.add(
                    format!("{key}.prefix"),
                    format!("`{p}` is already used by routes[{prev}]"),
                );
            }
            seen.push((p.clone(), i));
        }
        let auth = auth(errs, &key, r.auth.as_deref(), upstream.as_ref());
        if let (Some(prefix), Some(upstream), Some(profile), Some(scope), Some(auth)) =
            (prefix, upstream, profile, scope, auth)
        {
            let known = hosts::lookup(upstream.host_str().unwrap_or_default());
            routes.push(Route {
                rewrite_urls: r
                    .rewrite_urls
                    .unwrap_or_else(|| known.is_some_and(|k| k.rewrite_urls)),
                prefix,
                upstream,
                profile,
                scope,
                auth,
            });
        }
    }
    routes
}

/// `routes[i].auth`: as written, or the known host's (`bearer` for any other host).
fn auth(
    errs: &mut Errors,
    route: &str,
    text: Option<&str>,
    upstream: Option<&Url>,
) -> Option<Auth> {
    match text {
        Some(t) => {
            let parsed = Auth::parse(t);
            if parsed.is_none() {
                errs.add(
                    format!("{route}.auth"),
                    format!("`{t}`: expected \"bearer\" or \"basic\""),
                );
            }
            parsed
        }
        None => Some(
            upstream
                .and_then(|u| hosts::lookup(u.host_str().unwrap_or_default()))
                .map_or(Auth::Bearer, |k| k.auth),
        ),
    }
}

fn missing<T>(errs: &mut Errors, route: &str, key: &str, expected: &str) -> Option<T> {
    errs.add(
        format!("{route}.{key}"),
        format!("missing; expected {expected}"),
    );
    None
}

/// `routes[i].profile`: a profile that is defined (written down, or the implicit `auto`).
fn profile(
    errs: &mut Errors,
    route: &str,
    name: Option<&str>,
    profiles: &BTreeMap<String, Profile>,
    raw_profiles: &BTreeMap<String, RawProfile>,
) -> Option<String> {
    match name {
        None => missing(errs, route, "profile", "the name of a [profiles] entry"),
        Some(p) if !profiles.contains_key(p) && !raw_profiles.contains_key(p) => {
            errs.add(
                format!("{route}.profile"),
                format!(
                    "profile `{p}` is not defined; defined: [{}]",
                    raw_profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
            None
        }
        Some(p) => Some(p.to_string()),
    }
}

/// The scope of a route that names none: its upstream must be a known Microsoft API.
fn inferred_scope(errs: &mut Errors, route: &str, upstream: &Url) -> Option<String> {
    let host = upstream.host_str().unwrap_or_default();
    match hosts::lookup(host) {
        Some(k) => Some(k.scope.to_string()),
        None => {
            errs.add(
                format!("{route}.scope"),
                format!(
                    "cannot infer a scope for host `{host}`: it is not a known Microsoft API; \
                     set scope = \"<resource>/.default\""
                ),
            );
            None
        }
    }
}

/// A path prefix: plain segments, normalised without a trailing `/`.
fn prefix(errs: &mut Errors, key: &str, text: &str) -> Option<String> {
    if !text.starts_with('/') {
        errs.add(
            key,
            format!("`{text}`: expected a path starting with `/`, such as \"/ado\""),
        );
        return None;
    }
    let trimmed = text.trim_end_matches('/');
    let bad = trimmed.split('/').skip(1).any(|seg| {
        seg.is_empty() || seg == "." || seg == ".." || seg.contains(['%', '?', '#', '\\'])
    });
    if bad {
        errs.add(
            key,
            format!("`{text}`: expected plain path segments (no empty, dot, encoded or `?#\\` segments)"),
        );
        return None;
    }
    Some(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    })
}

/// One scope, such as `https://graph.microsoft.com/.default`.
fn scope(errs: &mut Errors, key: &str, text: &str) -> Option<String> {
    let ok = !text.is_empty() && !text.chars().any(char::is_whitespace);
    if !ok {
        errs.add(
            key,
            format!(
                "`{text}`: expected one scope such as \"https://graph.microsoft.com/.default\""
            ),
        );
        return None;
    }
    Some(text.to_string())
}

impl Route {
    /// The route as `patless config` prints it (the scope always written, inferred or not).
    pub(super) fn to_raw(&self) -> RawRoute {
        RawRoute {
            prefix: Some(self.prefix.clone()),
            upstream: Some(self.upstream.as_str().trim_end_matches('/').to_string()),
            profile: Some(self.profile.clone()),
            scope: Some(self.scope.clone()),
            auth: Some(self.auth.as_str().to_string()),
            rewrite_urls: Some(self.rewrite_urls),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{load_from_str, ConfigSource, Format};
    use crate::env::MapEnv;
    use crate::hosts::Auth;

    fn routes(extra: &str) -> Result<Vec<super::Route>, String> {
        let toml = format!(
            r#"
[profiles.bot]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "x"
{extra}"#
        );
        load_from_str(
            &toml,
            Format::Toml,
            ConfigSource::Embedded,
            &MapEnv::default(),
        )
        .map(|l| l.config.routes)
        .map_err(|e| e.to_string())
    }

    fn route(prefix: &str, upstream: &str, more: &str) -> String {
        format!("\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nprofile = \"bot\"\nscope = \"s/.default\"\n{more}")
    }

    #[test]
    fn auth_and_rewrite_default_to_the_known_host_s_and_can_be_set() {
        let toml = [
            route("/feed", "https://pkgs.dev.azure.com/org/_packaging/f", ""),
            route(
                "/vs",
                "https://contoso.pkgs.visualstudio.com/_packaging/f",
                "",
            ),
            route("/ado", "https://dev.azure.com/org", ""),
            route("/graph", "https://graph.microsoft.com", ""),
            route("/arm", "https://management.azure.com", ""),
            route("/local", "http://127.0.0.1:9", ""),
            route(
                "/set",
                "https://pkgs.dev.azure.com/org",
                "auth = \"bearer\"\nrewrite_urls = false",
            ),
            route(
                "/set2",
                "http://127.0.0.1:9",
                "auth = \"basic\"\nrewrite_urls = true",
            ),
        ]
        .concat();
        let got: Vec<(String, Auth, bool)> = routes(&toml)
            .expect("valid")
            .into_iter()
            .map(|r| (r.prefix, r.auth, r.rewrite_urls))
            .collect();
        let want = [
            ("/feed", Auth::Basic, true),
            ("/vs", Auth::Basic, true),
            ("/ado", Auth::Bearer, false),
            ("/graph", Auth::Bearer, true),
            ("/arm", Auth::Bearer, true),
            ("/local", Auth::Bearer, false),
            ("/set", Auth::Bearer, false),
            ("/set2", Auth::Basic, true),
        ]
        .map(|(p, a, r)| (p.to_string(), a, r));
        assert_eq!(got, want);
    }

    #[test]
    fn a_misspelt_auth_says_what_is_expected() {
        let err = routes(&route("/x", "http://127.0.0.1:9", "auth = \"Bearer\"")).unwrap_err();
        assert!(
            err.contains("routes[0].auth") && err.contains(r#"expected "bearer" or "basic""#),
            "{err}"
        );
    }
}
