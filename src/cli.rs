//! The command line (docs/commands.md): `serve` (the default), `config`, `token`, `check`,
//! `login`, `logout`, and `git-credential`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};

use crate::app::{App, Listeners};
use crate::config::{self, LoadedConfig};
use crate::env::{Env, ProcessEnv};
use crate::permissions::{self, Api, Grants};
use crate::token::CachedToken;

/// Exit code for a bad configuration (EX_CONFIG-like, sysexits EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// patless: call Entra-protected APIs (Azure DevOps, Defender, Graph, ARM) without holding a secret.
#[derive(Debug, Parser)]
#[command(name = "patless", version, about, long_about = None)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Config file (else $PATLESS_CONFIG, ./patless.toml, $XDG_CONFIG_HOME/patless/patless.toml,
    /// /etc/patless/patless.toml, else the embedded default).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and the admin listener until SIGTERM/SIGINT.
    Serve,
    /// Print the effective configuration (file + environment + defaults), secrets redacted.
    Config,
    /// Print a token the way `az account get-access-token --output json` does.
    Token {
        /// Profile (default: `server.default_profile`).
        #[arg(long)]
        profile: Option<String>,
        /// Scope, e.g. `499b84ac-1321-427f-aa17-267ca6975798/.default`.
        #[arg(long, conflicts_with = "resource")]
        scope: Option<String>,
        /// Resource, e.g. `https://management.azure.com` (becomes `<resource>/.default`).
        #[arg(long)]
        resource: Option<String>,
        /// `json` (az-compatible) or `raw` (the token alone).
        #[arg(long, value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// Sign a person in (device code or browser) and store the profile's refresh token.
    Login {
        /// A profile of a kind a person signs in for (listed from the kind table).
        #[arg(long, help = format!("A {} profile", config::kinds::sign_in_names("or")))]
        profile: String,
    },
    /// Forget a profile's stored tokens.
    Logout {
        /// The profile.
        #[arg(long)]
        profile: String,
    },
    /// Validate the config, acquire a token per profile, show what it holds, probe each route.
    Check {
        /// Only this profile.
        #[arg(long)]
        profile: Option<String>,
        /// Skip the probe requests.
        #[arg(long)]
        no_probe: bool,
    },
    /// git credential helper: answers `get` with a token for the route that names the host.
    GitCredential {
        /// What git asks: `get`, `store` or `erase` (the last two do nothing).
        #[arg(value_enum)]
        action: crate::git_credential::Action,
    },
}

/// `patless token --output`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    /// az-compatible JSON.
    Json,
    /// The token alone.
    Raw,
}

/// Parses the command line and runs it; the return value is the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // git shows a helper's stderr to the user: only warnings and errors there, unless asked.
    let git_credential = matches!(cli.command, Some(Command::GitCredential { .. }));
    init_tracing(if git_credential { "warn" } else { "info" });
    // git's request comes first, before the config: `store` and `erase` need none.
    let git_request = match &cli.command {
        Some(Command::GitCredential { action }) => {
            match crate::git_credential::read_request(std::io::stdin().lock()) {
                Ok(_) if *action != crate::git_credential::Action::Get => return ExitCode::SUCCESS,
                Ok(req) => Some(req),
                Err(e) => {
                    eprintln!("patless: cannot read git's credential request: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("patless: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env: Env = Arc::new(ProcessEnv);
    let loaded = match config::load(cli.config.as_deref(), env.as_ref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("patless: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(loaded, env, cli.config.clone()).await,
            Command::Config => print_config(&loaded),
            Command::Token {
                profile,
                scope,
                resource,
                output,
            } => {
                token(
                    loaded,
                    env,
                    profile,
                    scope.or(resource.map(resource_to_scope)),
                    output,
                )
                .await
            }
            Command::Check { profile, no_probe } => check(loaded, env, profile, no_probe).await,
            Command::GitCredential { .. } => {
                git_credential_get(loaded, env, git_request.unwrap_or_default()).await
            }
            Command::Login { profile } => {
                let mut out = std::io::stdout();
                match crate::login::login(&loaded.config, &profile, env, &mut out).await {
                    Ok(summary) => {
                        println!("{summary}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("patless: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Logout { profile } => {
                match crate::login::logout(&loaded.config, &profile, env) {
                    Ok(true) => {
                        println!("forgot the stored tokens of profile `{profile}`");
                        ExitCode::SUCCESS
                    }
                    Ok(false) => {
                        println!("profile `{profile}` had no stored tokens");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("patless: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}

fn init_tracing(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PATLESS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn resource_to_scope(resource: String) -> String {
    format!("{}/.default", resource.trim_end_matches('/'))
}

async fn serve(loaded: LoadedConfig, env: Env, explicit: Option<PathBuf>) -> ExitCode {
    tracing::info!(config = %loaded.source, "patless {} starting", env!("CARGO_PKG_VERSION"));
    // First, so a SIGHUP from now on reloads rather than ends the process.
    let Some(signals) = Signals::install() else {
        eprintln!("patless: cannot install the signal handlers");
        return ExitCode::FAILURE;
    };
    let source = loaded.source.clone();
    let app = match App::new(loaded.config, env, prometheus::Registry::new()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("patless: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let listeners = match Listeners::bind(&app.config).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("patless: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (handle, requests) = crate::app::reload::channel();
    let Signals { mut stops, mut hup } = signals;
    let mut second = stops.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            // One pending reload is enough: SIGHUPs that arrive meanwhile merge into it.
            handle.request();
        }
    });
    let options = crate::app::RunOptions {
        shutdown: async move {
            let _ = stops.wait_for(|n| *n >= 1).await;
        },
        hurry: Some(Box::pin(async move {
            let _ = second.wait_for(|n| *n >= 2).await;
        })),
        reload: Some(crate::app::reload::Reloader::new(
            explicit, source, requests,
        )),
        worker_threads: true,
    };
    crate::app::run_with(listeners, app, options).await;
    ExitCode::SUCCESS
}

/// The signals `serve` acts on: SIGTERM/SIGINT counted (the first stops patless, a second skips
/// the shutdown delay), SIGHUP caught (reload).
struct Signals {
    stops: tokio::sync::watch::Receiver<u32>,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok()?;
        let mut int = signal(SignalKind::interrupt()).ok()?;
        let hup = signal(SignalKind::hangup()).ok()?;
        let (stop_tx, stops) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM"),
                    _ = int.recv() => tracing::info!("SIGINT"),
                }
                stop_tx.send_modify(|n| *n += 1);
            }
        });
        Some(Signals { stops, hup })
    }
}

fn print_config(loaded: &LoadedConfig) -> ExitCode {
    println!("# source: {}", loaded.source);
    match toml::to_string_pretty(&loaded.config.effective(&loaded.raw)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("patless: cannot print the configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

fn scope_for_profile(loaded: &LoadedConfig, profile: &str) -> Option<String> {
    loaded
        .config
        .routes
        .iter()
        .find(|r| r.profile == profile)
        .map(|r| r.scope.clone())
}

async fn token(
    loaded: LoadedConfig,
    env: Env,
    profile: Option<String>,
    scope: Option<String>,
    output: Output,
) -> ExitCode {
    let profile = profile.unwrap_or_else(|| loaded.config.server.default_profile.clone());
    if !loaded.config.profiles.contains_key(&profile) {
        eprintln!(
            "patless: no profile `{profile}`; defined: {}",
            loaded
                .config
                .profiles
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let Some(scope) = scope.or_else(|| scope_for_profile(&loaded, &profile)) else {
        eprintln!("patless: no route uses profile `{profile}`; name the token's audience with --scope or --resource");
        return ExitCode::from(2);
    };
    let subscription = match loaded.config.profiles.get(&profile).map(|p| &p.kind) {
        Some(crate::config::ProfileKind::AzureCli { subscription, .. }) => subscription.clone(),
        _ => None,
    };
    let token = match acquire(loaded.config, env, &profile, &scope).await {
        Ok(t) => t,
        Err(message) => {
            eprintln!("patless: {message}");
            return ExitCode::FAILURE;
        }
    };
    match output {
        Output::Raw => println!("{}", token.secret().expose()),
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
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
    }
    ExitCode::SUCCESS
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
async fn git_credential_get(
    loaded: LoadedConfig,
    env: Env,
    req: crate::git_credential::CredentialRequest,
) -> ExitCode {
    let Some(target) = crate::git_credential::select(&loaded.config, &req) else {
        return ExitCode::SUCCESS;
    };
    let whose = match &target.route {
        Some(prefix) => format!("route `{prefix}`, profile `{}`", target.profile),
        None => format!("server.default_profile `{}`", target.profile),
    };
    if !loaded.config.profiles.contains_key(&target.profile) {
        eprintln!("patless git-credential: no token for {whose}: the profile is not defined");
        return ExitCode::FAILURE;
    }
    match acquire(loaded.config, env, &target.profile, &target.scope).await {
        Ok(token) => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            match out
                .write_all(crate::git_credential::answer(&token).as_bytes())
                .and_then(|()| out.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("patless git-credential: cannot write the answer: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(message) => {
            eprintln!("patless git-credential: no token for {whose}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The roles and scopes a token holds (empty for an opaque token).
fn grants_of(token: &CachedToken) -> Grants {
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

async fn check(loaded: LoadedConfig, env: Env, only: Option<String>, no_probe: bool) -> ExitCode {
    println!("config: {} — valid", loaded.source);
    let config = loaded.config.clone();
    if let Some(p) = &only {
        if !config.profiles.contains_key(p) {
            eprintln!("patless: no profile `{p}`");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let app = match App::new(loaded.config, env, prometheus::Registry::new()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("patless: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    let mut tokens = std::collections::HashMap::new();
    for route in &config.routes {
        if only.as_ref().is_some_and(|p| p != &route.profile) {
            continue;
        }
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
                println!(
                    "profile {} ({kind}), scope {}: OK — {}",
                    route.profile,
                    route.scope,
                    describe_token(&t)
                );
                if let Some(api) = Api::of_route(&route.scope, &route.upstream) {
                    for line in permissions::report(api, &grants_of(&t)) {
                        println!("{line}");
                    }
                }
                tokens.insert(key, Some(t));
            }
            Err(e) => {
                failed = true;
                println!(
                    "profile {} ({kind}), scope {}: FAILED — {}",
                    route.profile, route.scope, e.message
                );
                tokens.insert(key, None);
            }
        }
    }
    // After the acquisitions, so `auto` says what its probe chose.
    for (name, source) in &app.credential_sources {
        if only.as_ref().is_none_or(|p| p == name) {
            println!("profile {name}: {}", source());
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
                eprintln!("patless: {e}");
                return ExitCode::FAILURE;
            }
        };
        for route in &config.routes {
            if only.as_ref().is_some_and(|p| p != &route.profile) {
                continue;
            }
            let Some(Some(token)) = tokens.get(&(route.profile.clone(), route.scope.clone()))
            else {
                println!(
                    "route {} → {}: not probed (no token)",
                    route.prefix, route.upstream
                );
                continue;
            };
            let api = Api::of_route(&route.scope, &route.upstream);
            let ado = api == Some(Api::AzureDevOps);
            let base = route.upstream.as_str().trim_end_matches('/');
            let at_root = route.upstream.path().len() <= 1;
            // Probe an endpoint that needs a permission where the API has one (Defender), so a
            // missing role shows as a 403 here rather than in the user's script.
            let url = match api.and_then(Api::probe_path) {
                Some(path) if at_root => format!("{base}{path}"),
                _ if ado && !at_root => format!("{base}/_apis/connectionData"),
                _ => format!("{base}/"),
            };
            let mut req = http
                .get(&url)
                .header(http::header::AUTHORIZATION, token.header.clone());
            if ado {
                req = req.header(&crate::header_names::TFS_FEDAUTH_REDIRECT, "Suppress");
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let verdict = match status.as_u16() {
                        401 => {
                            failed = true;
                            "FAILED — the upstream rejected the token (wrong audience, tenant, or the identity is not known to the service)"
                        }
                        403 => {
                            failed = true;
                            "FAILED — authenticated, but the identity lacks permission (roles/scopes, or not added to the organization)"
                        }
                        203 => {
                            failed = true;
                            "FAILED — Azure DevOps answered with a sign-in page (token not accepted)"
                        }
                        _ => "OK",
                    };
                    println!("route {} → GET {url}: {status} {verdict}", route.prefix);
                    if let (403, Some(api)) = (status.as_u16(), api) {
                        let path = url::Url::parse(&url)
                            .map(|u| u.path().to_string())
                            .unwrap_or_default();
                        println!(
                            "  {}",
                            permissions::forbidden_hint(api, &path, &grants_of(token))
                        );
                    }
                }
                Err(e) => {
                    failed = true;
                    println!(
                        "route {} → GET {url}: FAILED — {}",
                        route.prefix,
                        crate::error_chain::joined(&e)
                    );
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
