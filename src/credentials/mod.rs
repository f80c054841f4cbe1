//! Credentials: one file per kind behind one small trait. A credential only knows how to get a
//! token from its source; caching, refresh and single-flight live in `token`, around any of them.
//! Which kinds exist, and which constructor (in `factory.rs`) builds each, is the kind table in
//! `config/kinds.rs`; docs/credentials.md describes them for users.

mod auto;
mod azure_cli;
mod azure_developer_cli;
mod azure_pipelines;
pub mod capabilities;
mod cli_process;
mod client_auth;
mod client_certificate;
mod client_secret;
pub mod entra;
pub(crate) mod factory;
mod managed_identity;
mod refresh_token;
mod workload_identity;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use auto::AutoCredential;
pub use azure_cli::AzureCliCredential;
pub use azure_developer_cli::AzureDeveloperCliCredential;
pub use azure_pipelines::AzurePipelinesCredential;
pub use client_auth::{ClientAuth, ClientAuthFields};
pub use client_certificate::ClientCertificateCredential;
pub use client_secret::ClientSecretCredential;
pub use entra::EntraClient;
pub use factory::{build, Built, SourceFn, Unconfigured};
pub use managed_identity::{ArcAgent, ManagedIdentityCredential};
pub use refresh_token::RefreshTokenCredential;
pub use workload_identity::WorkloadIdentityCredential;

use crate::env::Env;
use crate::secret::Secret;

/// A boxed future, so credentials can live behind `dyn Credential`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An access token as a credential returns it.
#[derive(Clone)]
pub struct AccessToken {
    /// The bearer token.
    pub token: Secret,
    /// Lifetime from the moment it was received.
    pub expires_in: Duration,
    /// When Entra asks for a refresh (`refresh_in`), from the moment it was received.
    pub refresh_in: Option<Duration>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &self.token)
            .field("expires_in", &self.expires_in)
            .field("refresh_in", &self.refresh_in)
            .finish()
    }
}

/// The source of tokens for one profile.
pub trait Credential: Send + Sync + fmt::Debug {
    /// Acquires a token for `scope` (with a claims challenge, if any).
    fn acquire<'a>(
        &'a self,
        scope: &'a str,
        claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>>;
}

/// The error classes: the `result` label of `patless_token_refreshes_total` (docs/metrics.md)
/// and what decides how soon a failed acquisition is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The app's credentials were refused (bad secret, unknown app or tenant).
    InvalidClient,
    /// The grant was refused (scope, consent, expired refresh token).
    InvalidGrant,
    /// A person must sign in again (MFA, Conditional Access, revoked session).
    InteractionRequired,
    /// 429.
    Throttled,
    /// No answer in time.
    Timeout,
    /// Could not connect or the connection broke.
    Network,
    /// 5xx (an Entra error body, or a bare status).
    ServerError,
    /// An answer that is not what the protocol promises: malformed JSON, or an HTML page (from
    /// a proxy or portal in between, whatever its status).
    BadResponse,
    /// No credential source is configured or found.
    NotConfigured,
}

impl ErrorClass {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::InvalidClient => "invalid_client",
            ErrorClass::InvalidGrant => "invalid_grant",
            ErrorClass::InteractionRequired => "interaction_required",
            ErrorClass::Throttled => "throttled",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Network => "network",
            ErrorClass::ServerError => "server_error",
            ErrorClass::BadResponse => "bad_response",
            ErrorClass::NotConfigured => "not_configured",
        }
    }

    /// The longest wait between two attempts after failures of this class: a minute for passing
    /// faults; 30 s when a person must sign in (so a `patless login` in another terminal is picked
    /// up quickly, and that check is local until a login exists); 5 min for configuration errors.
    pub fn backoff_cap(self) -> std::time::Duration {
        use std::time::Duration;
        match self {
            ErrorClass::InteractionRequired => Duration::from_secs(30),
            c if c.is_transient() => Duration::from_secs(60),
            _ => Duration::from_secs(300),
        }
    }

    /// Whether retrying soon may help (as opposed to a configuration problem).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorClass::Throttled
                | ErrorClass::Timeout
                | ErrorClass::Network
                | ErrorClass::ServerError
                | ErrorClass::BadResponse
        )
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token could not be had. The message is for people: what happened and what to do. It
/// never holds a token or a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CredentialError {
    /// The class (metric label).
    pub class: ErrorClass,
    /// What happened and what to do.
    pub message: String,
    /// Entra's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
    /// Entra's `error_codes` (AADSTS numbers).
    pub codes: Vec<u32>,
}

impl CredentialError {
    /// An error of `class` with `message`.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        CredentialError {
            class,
            message: message.into(),
            retry_after: None,
            codes: Vec::new(),
        }
    }
}

/// What building a credential needs besides the profile.
#[derive(Clone)]
pub struct CredentialContext {
    /// The Entra HTTP client.
    pub entra: EntraClient,
    /// The environment (for `{ env = … }` secrets and `auto` detection).
    pub env: Env,
    /// Where `device_code`/`interactive_browser` refresh tokens live.
    pub store: crate::store::TokenStore,
    /// Where the Azure Arc agent is installed (`managed_identity` and `auto` detection): the
    /// agent's real paths ([`ArcAgent::default`]) except in tests.
    pub arc: ArcAgent,
}

/// The state directory, where `patless login` stores refresh tokens: `[server] state_dir`, else
/// `$XDG_STATE_HOME/patless`, else `$HOME/.local/state/patless`, else `./.patless-state`.
pub fn state_dir(
    configured: Option<&std::path::Path>,
    env: &dyn crate::env::Environment,
) -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(dir) = configured {
        return dir.to_path_buf();
    }
    if let Some(xdg) = crate::env::non_empty(env, "XDG_STATE_HOME") {
        return PathBuf::from(xdg).join("patless");
    }
    if let Some(home) = crate::env::non_empty(env, "HOME") {
        return PathBuf::from(home).join(".local/state/patless");
    }
    PathBuf::from(".patless-state")
}
