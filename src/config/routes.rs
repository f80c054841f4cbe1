//! `[[routes]]`: a path prefix, the upstream it forwards to, the profile whose token it injects
//! and the scope of that token (inferred for known Microsoft APIs).

use std::collections::BTreeMap;

use url::Url;

use super::check::{base_url, Errors};
use super::raw::{RawProfile, RawRoute};
use super::Profile;
use crate::hosts;

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
        if let (Some(prefix), Some(upstream), Some(profile), Some(scope)) =
            (prefix, upstream, profile, scope)
        {
            routes.push(Route {
                prefix,
                upstream,
                profile,
                scope,
            });
        }
    }
    routes
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
        }
    }
}
