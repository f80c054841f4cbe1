//! A Rust program calling an Entra-protected API with its own HTTP client, patless' token layer
//! around it instead of the proxy in front of it.
//!
//! ```sh
//! cargo run --example tower_client -- [--config FILE] [--profile NAME] [--scope SCOPE] URL
//! ```
//!
//! It sends `GET URL` through hyper-util's client (rustls with webpki and native roots, HTTPS
//! only: the token is never sent in clear text) wrapped in
//! [`TokenLayer`](patless::layer::TokenLayer), then prints the status line and the body to stdout.
//!
//! Where the token comes from:
//! - with `--config FILE`, or without it when `./patless.toml` exists: profile `--profile`
//!   (default `auto`) of that config file;
//! - otherwise the `auto` chain in the process environment, as `patless serve` would run it: a
//!   service principal from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` (or a
//!   certificate, workload or managed identity, then the Azure CLI) — `--profile` needs a config
//!   file.
//!
//! The scope is `--scope`, else the one patless knows for the URL's host (Azure DevOps, Graph,
//! ARM, Defender, …), else, with a config file, the scope of the routes that use the profile.
//!
//! Exit status: 0 for a 2xx answer, 2 for any other answer, 1 when no answer came back (no token,
//! no connection, bad arguments). Messages go to stderr and never hold the token.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};

use patless::config::{Profile, ProfileKind};
use patless::layer::{TokenLayer, TokenSource};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// GET a URL with an Entra access token from patless' token layer.
#[derive(Parser, Debug)]
struct Args {
    /// A patless config file [default: ./patless.toml if it exists, else the environment].
    #[arg(long)]
    config: Option<PathBuf>,
    /// The config file's profile to use [default: auto].
    #[arg(long)]
    profile: Option<String>,
    /// The scope to ask for [default: the URL host's known scope, else the profile's routes'].
    #[arg(long)]
    scope: Option<String>,
    /// The https:// URL to GET.
    url: http::Uri,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(status) if status.is_success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(2),
        Err(e) => {
            let mut message = format!("tower_client: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<http::StatusCode, Error> {
    if args.url.scheme() != Some(&http::uri::Scheme::HTTPS) {
        return Err(format!(
            "{}: only https:// URLs (the token is never sent in clear text)",
            args.url
        )
        .into());
    }
    let host = args.url.host().unwrap_or_default().to_ascii_lowercase();
    let scope = args
        .scope
        .clone()
        .or_else(|| patless::hosts::lookup(&host).map(|h| h.scope.to_string()));
    let source = token_source(&args, scope.as_deref())?;

    patless::tls::install_crypto_provider();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(patless::tls::client_config(None)?)
        .https_only()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https);
    let service = ServiceBuilder::new()
        .layer(TokenLayer::new(source))
        .service(client);

    let request = http::Request::get(args.url)
        .header(http::header::USER_AGENT, "patless-tower-client-example")
        .body(Empty::new())?;
    let response = service.oneshot(request).await?;
    let status = response.status();
    println!("{status}");
    let body = response.into_body().collect().await?.to_bytes();
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&body)?;
    if !body.ends_with(b"\n") {
        stdout.write_all(b"\n")?;
    }
    Ok(status)
}

/// The config file's profile, or the environment's `auto` chain.
fn token_source(args: &Args, scope: Option<&str>) -> Result<TokenSource, Error> {
    let default = Path::new("patless.toml");
    let config = match &args.config {
        Some(path) => Some(path.as_path()),
        None => default.is_file().then_some(default),
    };
    let profile = args.profile.as_deref().unwrap_or("auto");
    if let Some(path) = config {
        return Ok(TokenSource::from_config_file(path, profile, scope)?);
    }
    if args.profile.is_some() {
        return Err("--profile needs a config file: pass --config FILE".into());
    }
    let Some(scope) = scope else {
        return Err(format!(
            "no scope is known for host `{}`: pass --scope (such as https://graph.microsoft.com/.default)",
            args.url.host().unwrap_or_default()
        )
        .into());
    };
    let authority = std::env::var("AZURE_AUTHORITY_HOST")
        .ok()
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| patless::hosts::PUBLIC_AUTHORITY.to_string());
    let profile = Profile {
        name: "auto".to_string(),
        authority_host: url::Url::parse(&authority)
            .map_err(|e| format!("AZURE_AUTHORITY_HOST `{authority}`: {e}"))?,
        kind: ProfileKind::Auto {
            tenant_id: None,
            client_id: None,
        },
        client_capabilities: Vec::new(),
    };
    Ok(TokenSource::from_profile(&profile, scope)?)
}
