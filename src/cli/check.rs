//! `patless check`: acquires a token for every profile (or the one asked for) — for the scopes of
//! its routes, else the one `--scope` names or its usual one — shows what each holds and what
//! the API needs, then probes each route's upstream with it (docs/commands.md).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::out::{errln, outln};
use super::token::{describe_token, grants_of};
use super::EXIT_CONFIG;
use crate::app::App;
use crate::config::{Config, DefaultProfileChoice, LoadedConfig, Route};
use crate::env::Env;
use crate::permissions::{self, Api};
use crate::token::CachedToken;

/// Per (profile, scope): the token acquired, or `None` when the acquisition failed.
type Tokens = HashMap<(String, String), Option<Arc<CachedToken>>>;

/// One token to acquire: a profile, a scope, and why that scope when no route of the profile
/// named it.
struct Test {
    profile: String,
    scope: String,
    why: Option<String>,
}

pub(super) async fn check(
    loaded: LoadedConfig,
    env: Env,
    only: Option<String>,
    scope: Option<String>,
    no_probe: bool,
) -> ExitCode {
    outln!("config: {} — valid", loaded.source);
    let config = loaded.config.clone();
    if let Some(p) = &only {
        if !config.profiles.contains_key(p) {
            let defined: Vec<&str> = config.profiles.keys().map(String::as_str).collect();
            errln!("patless: no profile `{p}`; defined: {}", defined.join(", "));
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    outln!(
        "default profile: {}",
        config.server.default_profile_reason()
    );
    let app = match App::new(loaded.config, env, prometheus::Registry::new()) {
        Ok(a) => a,
        Err(e) => {
            errln!("patless: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tests = plan(&config, only.as_deref(), scope.as_deref());
    let (tokens, mut failed) = acquire(&app, &config, &tests, only.is_some()).await;
    // After the acquisitions, so `auto` says what its probe chose.
    for (name, source) in &app.credential_sources {
        if only.as_ref().is_none_or(|p| p == name) {
            outln!("profile {name}: {}", source());
        }
    }
    if !no_probe {
        let http = match crate::tls::entra_http_client(
            config.entra.ca_file.as_deref(),
            Duration::from_secs(15),
            config.server.egress_proxy.as_ref(),
        ) {
            Ok(c) => c,
            Err(e) => {
                errln!("patless: {e}");
                return ExitCode::FAILURE;
            }
        };
        let tested = |r: &&Route| tokens.contains_key(&(r.profile.clone(), r.scope.clone()));
        for route in config.routes.iter().filter(tested) {
            failed |= !probe(&http, route, &tokens).await;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What to acquire: with `--scope`, that scope for every profile asked for; else each route's
/// (profile, scope), then each profile no route uses, with [`usual_scope`]. Every profile
/// defined (or only the one asked for) is tested, used by a route or not.
fn plan(config: &Config, only: Option<&str>, scope: Option<&str>) -> Vec<Test> {
    let mut tests: Vec<Test> = Vec::new();
    let mut add = |profile: &str, scope: &str, why: Option<String>| {
        let wanted = only.is_none_or(|o| o == profile);
        if wanted
            && !tests
                .iter()
                .any(|t| t.profile == profile && t.scope == scope)
        {
            tests.push(Test {
                profile: profile.to_string(),
                scope: scope.to_string(),
                why,
            });
        }
    };
    if let Some(s) = scope {
        for name in config.profiles.keys() {
            add(name, s, None);
        }
        return tests;
    }
    for r in &config.routes {
        add(&r.profile, &r.scope, None);
    }
    for name in config.profiles.keys() {
        if !config.routes.iter().any(|r| &r.profile == name) {
            let (s, why) = usual_scope(config, name);
            add(name, &s, Some(format!("no route uses it; testing {why}")));
        }
    }
    tests
}

/// The scope a profile that no route uses is tested with, and what it is: the first resource of
/// the identity endpoint when that hands out the profile's tokens, else Azure DevOps', whatever
/// the kind — every identity can ask for it (an app, a managed identity, a person), `patless
/// login` signs people in for it when no route names another, and `/readyz` watches the host
/// routes' profile through it (docs/commands.md).
fn usual_scope(config: &Config, profile: &str) -> (String, String) {
    let identity = config
        .identity_endpoint
        .as_ref()
        .filter(|ie| ie.profile == profile)
        .and_then(|ie| ie.resources.first());
    match identity {
        Some(resource) => (
            format!("{resource}/.default"),
            format!("the identity endpoint's first resource, {resource}"),
        ),
        None => (
            crate::hosts::AZURE_DEVOPS_SCOPE.to_string(),
            format!(
                "Azure DevOps' scope {} (--scope names another)",
                crate::hosts::AZURE_DEVOPS_SCOPE
            ),
        ),
    }
}

/// One token per test, each reported with what it holds and what the API needs; whether any
/// failed. A profile that cannot be tested is reported so, and fails the check when it was
/// asked for by name (`asked`).
async fn acquire(app: &App, config: &Config, tests: &[Test], asked: bool) -> (Tokens, bool) {
    let mut failed = false;
    let mut tokens = Tokens::new();
    for test in tests {
        let (profile, scope) = (&test.profile, &test.scope);
        if let Some(why) = &test.why {
            outln!("profile {profile}: {why}");
        }
        let Some(entry) = app.cache.entry(profile, scope, None) else {
            outln!("profile {profile}, scope {scope}: not tested — it has no credential");
            failed |= asked;
            continue;
        };
        let kind = config
            .profiles
            .get(profile)
            .map(|p| p.kind.name())
            .unwrap_or("?");
        let token = match entry.get().await {
            Ok(t) => {
                outln!(
                    "profile {profile} ({kind}), scope {scope}: OK — {}",
                    describe_token(&t)
                );
                let route = config
                    .routes
                    .iter()
                    .find(|r| &r.profile == profile && &r.scope == scope);
                let api = match route {
                    Some(r) => Api::of_route(scope, &r.upstream),
                    None => Api::of_scope(scope),
                };
                if let Some(api) = api {
                    for line in permissions::report(api, &grants_of(&t)) {
                        outln!("{line}");
                    }
                }
                Some(t)
            }
            Err(e) => {
                failed = true;
                outln!(
                    "profile {profile} ({kind}), scope {scope}: FAILED — {}",
                    e.message
                );
                if let Some(hint) = implicit_default_hint(config, profile) {
                    outln!("  {hint}");
                }
                None
            }
        };
        tokens.insert((profile.clone(), scope.clone()), token);
    }
    (tokens, failed)
}

/// When `profile` is the implicit `auto` that serves as the default profile: which, why, and how
/// to pick another.
fn implicit_default_hint(config: &Config, profile: &str) -> Option<String> {
    let implicit = matches!(
        config.server.default_profile_choice,
        DefaultProfileChoice::NoProfiles | DefaultProfileChoice::SeveralProfiles(_)
    );
    (implicit && profile == config.server.default_profile)
        .then(|| config.server.default_profile_hint(true))
        .flatten()
}

/// Probes `route`'s upstream with its token; `false` when the upstream refused it or could not be
/// reached.
async fn probe(http: &reqwest::Client, route: &Route, tokens: &Tokens) -> bool {
    let Some(Some(token)) = tokens.get(&(route.profile.clone(), route.scope.clone())) else {
        outln!(
            "route {} → {}: not probed (no token)",
            route.prefix,
            route.upstream
        );
        return true;
    };
    let api = Api::of_route(&route.scope, &route.upstream);
    let ado = api == Some(Api::AzureDevOps);
    let url = probe_url(route, api);
    let mut req = http
        .get(&url)
        .header(http::header::AUTHORIZATION, token.header.clone());
    if ado {
        req = req.header(&crate::header_names::TFS_FEDAUTH_REDIRECT, "Suppress");
    }
    let status = match req.send().await {
        Ok(resp) => resp.status(),
        Err(e) => {
            outln!(
                "route {} → GET {url}: FAILED — {}",
                route.prefix,
                crate::error_chain::joined(&e)
            );
            return false;
        }
    };
    let (ok, verdict) = verdict(status.as_u16());
    outln!("route {} → GET {url}: {status} {verdict}", route.prefix);
    if let (403, Some(api)) = (status.as_u16(), api) {
        let path = url::Url::parse(&url)
            .map(|u| u.path().to_string())
            .unwrap_or_default();
        outln!(
            "  {}",
            permissions::forbidden_hint(api, &path, &grants_of(token))
        );
    }
    ok
}

/// What to probe: an endpoint that needs a permission where the API has one (Defender), so a
/// missing role shows as a 403 here rather than in the user's script.
fn probe_url(route: &Route, api: Option<Api>) -> String {
    let base = route.upstream.as_str().trim_end_matches('/');
    let at_root = route.upstream.path().len() <= 1;
    let ado = api == Some(Api::AzureDevOps);
    match api.and_then(Api::probe_path) {
        Some(path) if at_root => format!("{base}{path}"),
        _ if ado && !at_root => format!("{base}/_apis/connectionData"),
        _ => format!("{base}/"),
    }
}

/// Whether a probe's status means the token works, and the words for it.
fn verdict(status: u16) -> (bool, &'static str) {
    match status {
        401 => (
            false,
            "FAILED — the upstream rejected the token (wrong audience, tenant, or the identity is not known to the service)",
        ),
        403 => (
            false,
            "FAILED — authenticated, but the identity lacks permission (roles/scopes, or not added to the organization)",
        ),
        203 => (
            false,
            "FAILED — Azure DevOps answered with a sign-in page (token not accepted)",
        ),
        _ => (true, "OK"),
    }
}
