//! `patless check`: acquires a token per route (or for one profile), shows what each holds and
//! what the API needs, then probes each route's upstream with it.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::out::{errln, outln};
use super::token::{describe_token, grants_of};
use super::EXIT_CONFIG;
use crate::app::App;
use crate::config::{Config, LoadedConfig, Route};
use crate::env::Env;
use crate::permissions::{self, Api};
use crate::token::CachedToken;

/// Per (profile, scope): the token acquired, or `None` when the acquisition failed.
type Tokens = HashMap<(String, String), Option<Arc<CachedToken>>>;

pub(super) async fn check(
    loaded: LoadedConfig,
    env: Env,
    only: Option<String>,
    no_probe: bool,
) -> ExitCode {
    outln!("config: {} — valid", loaded.source);
    let config = loaded.config.clone();
    if let Some(p) = &only {
        if !config.profiles.contains_key(p) {
            errln!("patless: no profile `{p}`");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let app = match App::new(loaded.config, env, prometheus::Registry::new()) {
        Ok(a) => a,
        Err(e) => {
            errln!("patless: {e}");
            return ExitCode::FAILURE;
        }
    };
    let wanted = |route: &&Route| only.as_ref().is_none_or(|p| p == &route.profile);
    let routes: Vec<&Route> = config.routes.iter().filter(wanted).collect();
    let (tokens, mut failed) = acquire(&app, &config, &routes).await;
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
        for route in &routes {
            failed |= !probe(&http, route, &tokens).await;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One token per (profile, scope) of `routes`, each reported with what it holds and what the
/// API needs; whether any failed.
async fn acquire(app: &App, config: &Config, routes: &[&Route]) -> (Tokens, bool) {
    let mut failed = false;
    let mut tokens = Tokens::new();
    for route in routes {
        let key = (route.profile.clone(), route.scope.clone());
        if tokens.contains_key(&key) {
            continue;
        }
        let Some(entry) = app.cache.entry(&route.profile, &route.scope, None) else {
            continue;
        };
        let kind = config
            .profiles
            .get(&route.profile)
            .map(|p| p.kind.name())
            .unwrap_or("?");
        match entry.get().await {
            Ok(t) => {
                outln!(
                    "profile {} ({kind}), scope {}: OK — {}",
                    route.profile,
                    route.scope,
                    describe_token(&t)
                );
                if let Some(api) = Api::of_route(&route.scope, &route.upstream) {
                    for line in permissions::report(api, &grants_of(&t)) {
                        outln!("{line}");
                    }
                }
                tokens.insert(key, Some(t));
            }
            Err(e) => {
                failed = true;
                outln!(
                    "profile {} ({kind}), scope {}: FAILED — {}",
                    route.profile,
                    route.scope,
                    e.message
                );
                tokens.insert(key, None);
            }
        }
    }
    (tokens, failed)
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
