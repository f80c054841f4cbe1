//! `patless token` and `patless git-credential get`: one token, printed or handed to git.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::out::{errln, out, outln};
use super::{Output, EXIT_CONFIG};
use crate::app::App;
use crate::config::{DefaultProfileChoice, LoadedConfig};
use crate::env::Env;
use crate::permissions::Grants;
use crate::token::CachedToken;

fn scope_for_profile(loaded: &LoadedConfig, profile: &str) -> Option<String> {
    loaded
        .config
        .routes
        .iter()
        .find(|r| r.profile == profile)
        .map(|r| r.scope.clone())
}

pub(super) async fn token(
    loaded: LoadedConfig,
    env: Env,
    profile: Option<String>,
    scope: Option<String>,
    output: Output,
) -> ExitCode {
    // Why the default profile, for an error about it (not when `--profile` named it).
    let hint = match profile {
        Some(_) => None,
        None => loaded.config.server.default_profile_hint(true),
    };
    let say_why = || {
        if let Some(h) = &hint {
            errln!("patless: {h}");
        }
    };
    let profile = profile.unwrap_or_else(|| loaded.config.server.default_profile.clone());
    if !loaded.config.profiles.contains_key(&profile) {
        errln!(
            "patless: no profile `{profile}`; defined: {}",
            loaded
                .config
                .profiles
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        say_why();
        return ExitCode::from(EXIT_CONFIG);
    }
    let Some(scope) = scope.or_else(|| scope_for_profile(&loaded, &profile)) else {
        errln!("patless: no route uses profile `{profile}`; name the token's audience with --scope or --resource");
        say_why();
        return ExitCode::from(2);
    };
    let subscription = match loaded.config.profiles.get(&profile).map(|p| &p.kind) {
        Some(crate::config::ProfileKind::AzureCli { subscription, .. }) => subscription.clone(),
        _ => None,
    };
    let token = match acquire(loaded.config, env, &profile, &scope).await {
        Ok(t) => t,
        Err(message) => {
            errln!("patless: {message}");
            say_why();
            return ExitCode::FAILURE;
        }
    };
    print_token(&token, output, subscription);
    ExitCode::SUCCESS
}

/// The token on stdout, as `--output` asks.
fn print_token(token: &CachedToken, output: Output, subscription: Option<String>) {
    match output {
        Output::Raw => outln!("{}", token.secret().expose()),
        Output::Json => {
            let claims = crate::jwt::claims(token.secret().expose()).unwrap_or_default();
            let tenant = claims
                .get("tid")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            let local = chrono::DateTime::from_timestamp(token.expires_unix as i64, 0)
                .map(|t| {
                    t.with_timezone(&chrono::Local)
                        .format("%Y-%m-%d %H:%M:%S%.6f")
                        .to_string()
                })
                .unwrap_or_default();
            let mut out = serde_json::json!({
                "accessToken": token.secret().expose(),
                "expiresOn": local,
                "expires_on": token.expires_unix,
                "tenant": tenant,
                "tokenType": "Bearer",
            });
            if let Some(s) = subscription {
                out["subscription"] = serde_json::Value::String(s);
            }
            outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
    }
}

/// One token for (profile, scope) without `serve`: the profile's credential chain, the token
/// cache and the token store, as the proxy would use them. What `token` and `git-credential get`
/// share. The error is a message for stderr (it names no secret).
async fn acquire(
    config: crate::config::Config,
    env: Env,
    profile: &str,
    scope: &str,
) -> Result<Arc<CachedToken>, String> {
    let app = App::new(config, env, prometheus::Registry::new()).map_err(|e| e.to_string())?;
    let entry = app
        .cache
        .entry(profile, scope, None)
        .ok_or_else(|| format!("profile `{profile}` has no credential"))?;
    entry.get().await.map_err(|e| e.to_string())
}

/// `git-credential get`: the token of the route (or default profile) that answers `req`, in
/// git's format; nothing, and success, when patless has nothing for it.
pub(super) async fn git_credential_get(
    loaded: LoadedConfig,
    env: Env,
    req: crate::git_credential::CredentialRequest,
) -> ExitCode {
    let Some(target) = crate::git_credential::select(&loaded.config, &req) else {
        return ExitCode::SUCCESS;
    };
    let server = &loaded.config.server;
    let whose = match &target.route {
        Some(prefix) => format!("route `{prefix}`, profile `{}`", target.profile),
        None if server.default_profile_choice == DefaultProfileChoice::Configured => {
            format!("server.default_profile `{}`", target.profile)
        }
        None => format!(
            "the default profile {} (set server.default_profile to pick another)",
            server.default_profile_reason()
        ),
    };
    if !loaded.config.profiles.contains_key(&target.profile) {
        errln!("patless git-credential: no token for {whose}: the profile is not defined");
        return ExitCode::FAILURE;
    }
    match acquire(loaded.config, env, &target.profile, &target.scope).await {
        Ok(token) => {
            // A git that has gone (a closed pipe) ends the process quietly, as for every command.
            out!("{}", crate::git_credential::answer(&token));
            ExitCode::SUCCESS
        }
        Err(message) => {
            errln!("patless git-credential: no token for {whose}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The roles and scopes a token holds (empty for an opaque token).
pub(super) fn grants_of(token: &CachedToken) -> Grants {
    crate::jwt::claims(token.secret().expose())
        .map(|c| Grants::from_claims(&c))
        .unwrap_or_default()
}

/// One line describing what a token holds: audience, tenant, app/user, roles or scopes, expiry.
pub fn describe_token(token: &CachedToken) -> String {
    let Some(c) = crate::jwt::claims(token.secret().expose()) else {
        return "an opaque token (not a JWT)".into();
    };
    let s = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
    let who = match c
        .get("upn")
        .or_else(|| c.get("unique_name"))
        .and_then(|v| v.as_str())
    {
        Some(user) => format!("user {user}"),
        None => format!(
            "app {}",
            c.get("appid")
                .or_else(|| c.get("azp"))
                .and_then(|v| v.as_str())
                .unwrap_or("-")
        ),
    };
    let grants = match (
        c.get("roles").and_then(|v| v.as_array()),
        c.get("scp").and_then(|v| v.as_str()),
    ) {
        (Some(roles), _) => format!(
            "roles [{}]",
            roles
                .iter()
                .filter_map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (None, Some(scp)) => format!("scopes [{scp}]"),
        (None, None) => "no roles or scopes".into(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let left = token.expires_unix.saturating_sub(now);
    format!(
        "audience {}, tenant {}, {who}, {grants}, expires in {}m{}s",
        s("aud"),
        s("tid"),
        left / 60,
        left % 60
    )
}
