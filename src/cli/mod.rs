//! The command line (docs/commands.md): `serve` (the default), `config`, `token`, `check`,
//! `login`, `logout`, and `git-credential`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

mod check;
mod help;
mod out;
mod serve;
mod token;

use check::check;
use serve::serve;
pub use token::describe_token;
use token::{git_credential_get, token};

use crate::config::{self, LoadedConfig};
use crate::env::{Env, ProcessEnv};
use out::{errln, out, outln};

/// Exit code for a bad configuration (EX_CONFIG-like, sysexits EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// patless: call Entra-protected APIs (Azure DevOps, Defender, Graph, ARM) without holding a secret.
#[derive(Debug, Parser)]
#[command(name = "patless", version, about, long_about = None, after_help = help::PATLESS)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Config file (else $PATLESS_CONFIG, ./patless.toml, $XDG_CONFIG_HOME/patless/patless.toml,
    /// /etc/patless/patless.toml, else the embedded default).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log more on stderr: `-v` info, `-vv` debug, `-vvv` trace (else $PATLESS_LOG, $RUST_LOG,
    /// else the command's own level: info for `serve`, none for `token` and `git-credential`).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and the admin listener until SIGTERM/SIGINT.
    #[command(after_help = help::SERVE)]
    Serve,
    /// Print the effective configuration (file + environment + defaults), secrets redacted.
    #[command(after_help = help::CONFIG)]
    Config,
    /// Print a token the way `az account get-access-token --output json` does.
    #[command(after_help = help::TOKEN)]
    Token {
        /// Profile (default: `server.default_profile`, else the only profile defined, else `auto`).
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
    #[command(after_help = help::LOGIN)]
    Login {
        /// A profile of a kind a person signs in for (listed from the kind table).
        #[arg(long, help = format!("A {} profile", config::kinds::sign_in_names("or")))]
        profile: String,
        /// Print the sign-in URL instead of opening a browser (for machines without one).
        #[arg(long)]
        no_browser: bool,
    },
    /// Forget a profile's stored tokens.
    #[command(after_help = help::LOGOUT)]
    Logout {
        /// The profile.
        #[arg(long)]
        profile: String,
    },
    /// Validate the config, acquire a token per profile, show what it holds, probe each route.
    #[command(after_help = help::CHECK)]
    Check {
        /// Only this profile.
        #[arg(long)]
        profile: Option<String>,
        /// Test this scope instead of the profiles' routes' (else a profile no route uses is
        /// tested with Azure DevOps' scope).
        #[arg(long, conflicts_with = "resource")]
        scope: Option<String>,
        /// Test `<resource>/.default`.
        #[arg(long)]
        resource: Option<String>,
        /// Skip the probe requests.
        #[arg(long)]
        no_probe: bool,
    },
    /// git credential helper: answers `get` with a token for the route that names the host.
    #[command(after_help = help::GIT_CREDENTIAL)]
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
            errln!("patless: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env: Env = Arc::new(ProcessEnv);
    let loaded = match config::load_quietly(cli.config.as_deref(), env.as_ref()) {
        Ok(l) => l,
        Err(e) => {
            errln!("patless: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(
        log_filter(cli.verbose, cli.command.as_ref()),
        loaded.config.logging.format,
        env.as_ref(),
    );
    loaded.warn();
    let command = cli.command.unwrap_or(Command::Serve);
    let code = runtime.block_on(run(command, loaded, env, cli.config, git_request));
    // Without waiting for what is left on the runtime: a `serve` stopped at once by a second
    // signal leaves connections behind, and a one-shot command's background refreshers.
    runtime.shutdown_background();
    code
}

/// git's credential request on stdin: `None` for `store` and `erase`, which need nothing done.
fn read_git_request(
    action: crate::git_credential::Action,
) -> Result<Option<crate::git_credential::CredentialRequest>, ExitCode> {
    match crate::git_credential::read_request(std::io::stdin().lock()) {
        Ok(_) if action != crate::git_credential::Action::Get => Ok(None),
        Ok(req) => Ok(Some(req)),
        Err(e) => {
            errln!("patless: cannot read git's credential request: {e}");
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
        Command::Check {
            profile,
            scope,
            resource,
            no_probe,
        } => {
            let scope = scope.or(resource.map(resource_to_scope));
            check(loaded, env, profile, scope, no_probe).await
        }
        Command::GitCredential { .. } => {
            git_credential_get(loaded, env, git_request.unwrap_or_default()).await
        }
        Command::Login {
            profile,
            no_browser,
        } => {
            let mut out = std::io::stdout();
            let options = crate::login::LoginOptions {
                open_browser: !no_browser,
                ..Default::default()
            };
            match crate::login::login_with(&loaded.config, &profile, env, &mut out, &options).await
            {
                Ok(summary) => {
                    outln!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    errln!("patless: {e}");
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
            outln!("forgot the stored tokens of profile `{profile}`");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            outln!("profile `{profile}` had no stored tokens");
            ExitCode::SUCCESS
        }
        Err(e) => {
            errln!("patless: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What is logged on stderr: the level `-v` asks for (`-v` info, `-vv` debug, `-vvv` trace),
/// else `PATLESS_LOG`, else `RUST_LOG`, else the command's own.
///
/// `token` and `git-credential` log nothing of their own: they answer one question, and their
/// error, if any, is the one line they write on stderr (git shows a helper's stderr to the user,
/// and the warnings of the acquisitions behind the answer would bury it). The other commands log
/// from `info`.
fn log_filter(verbose: u8, command: Option<&Command>) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    let asked = match verbose {
        0 => None,
        1 => Some("info"),
        2 => Some("debug"),
        _ => Some("trace"),
    };
    let own = match command {
        Some(Command::Token { .. } | Command::GitCredential { .. }) => "off",
        _ => "info",
    };
    match asked {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_env("PATLESS_LOG")
            .or_else(|_| EnvFilter::try_from_default_env())
            .unwrap_or_else(|_| EnvFilter::new(own)),
    }
}

/// Logs to stderr through `filter`, as text (colour only on a terminal and never with
/// `NO_COLOR`) or as one JSON object per line.
fn init_tracing(
    filter: tracing_subscriber::EnvFilter,
    format: config::LogFormat,
    env: &dyn crate::env::Environment,
) {
    use std::io::IsTerminal as _;
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
    outln!("# source: {}", loaded.source);
    outln!(
        "# default profile: {}",
        loaded.config.server.default_profile_reason()
    );
    match toml::to_string_pretty(&loaded.config.effective(&loaded.raw)) {
        Ok(text) => {
            out!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            errln!("patless: cannot print the configuration: {e}");
            ExitCode::FAILURE
        }
    }
}
