//! The command line (docs/commands.md): `serve` (the default), `config`, `token`, `check`,
//! `login`, `logout`, and `git-credential`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

mod check;
mod serve;
mod token;

use check::check;
use serve::serve;
pub use token::describe_token;
use token::{git_credential_get, token};

use crate::config::{self, LoadedConfig};
use crate::env::{Env, ProcessEnv};

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
    // git's request comes first, before the config: `store` and `erase` need none.
    let git_request = match &cli.command {
        Some(Command::GitCredential { action }) => match read_git_request(*action) {
            Ok(Some(req)) => Some(req),
            Ok(None) => return ExitCode::SUCCESS,
            Err(code) => return code,
        },
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
    let loaded = match config::load_quietly(cli.config.as_deref(), env.as_ref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("patless: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(
        if git_credential { "warn" } else { "info" },
        loaded.config.logging.format,
        env.as_ref(),
    );
    loaded.warn();
    let command = cli.command.unwrap_or(Command::Serve);
    runtime.block_on(run(command, loaded, env, cli.config, git_request))
}

/// git's credential request on stdin: `None` for `store` and `erase`, which need nothing done.
fn read_git_request(
    action: crate::git_credential::Action,
) -> Result<Option<crate::git_credential::CredentialRequest>, ExitCode> {
    match crate::git_credential::read_request(std::io::stdin().lock()) {
        Ok(_) if action != crate::git_credential::Action::Get => Ok(None),
        Ok(req) => Ok(Some(req)),
        Err(e) => {
            eprintln!("patless: cannot read git's credential request: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Runs `command` on the loaded config.
async fn run(
    command: Command,
    loaded: LoadedConfig,
    env: Env,
    config_path: Option<PathBuf>,
    git_request: Option<crate::git_credential::CredentialRequest>,
) -> ExitCode {
    match command {
        Command::Serve => serve(loaded, env, config_path).await,
        Command::Config => print_config(&loaded),
        Command::Token {
            profile,
            scope,
            resource,
            output,
        } => {
            let scope = scope.or(resource.map(resource_to_scope));
            token(loaded, env, profile, scope, output).await
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
        Command::Logout { profile } => logout(&loaded, &profile, env),
    }
}

fn logout(loaded: &LoadedConfig, profile: &str, env: Env) -> ExitCode {
    match crate::login::logout(&loaded.config, profile, env) {
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

/// Logs to stderr at `PATLESS_LOG` (else `RUST_LOG`, else `default_level`), as text (colour only
/// on a terminal and never with `NO_COLOR`) or as one JSON object per line.
fn init_tracing(default_level: &str, format: config::LogFormat, env: &dyn crate::env::Environment) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PATLESS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        config::LogFormat::Text => {
            // https://no-color.org: set and not empty.
            let no_color = env.var("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .try_init()
        }
    };
}

fn resource_to_scope(resource: String) -> String {
    format!("{}/.default", resource.trim_end_matches('/'))
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
