//! Credentials: one file per kind behind one small trait. A credential only knows how to get a
//! token from its source; caching, refresh and single-flight live in `token`, around any of them.

mod auto;
mod client_secret;
pub mod entra;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use auto::AutoCredential;
pub use client_secret::ClientSecretCredential;
pub use entra::EntraClient;

use crate::config::{Profile, ProfileKind};
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

/// The error classes of `patless_token_refreshes_total{result}` (SPEC §7).
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
    /// 5xx.
    ServerError,
    /// An answer that is not what the protocol promises.
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
}

/// A profile's credential, with a line saying where its tokens come from (for logs and `check`).
pub struct Built {
    /// The credential.
    pub credential: Arc<dyn Credential>,
    /// Where its tokens come from, or (for `auto`) why nothing was found. Never a secret.
    pub source: String,
}

/// Builds the credential of a profile.
pub fn build(profile: &Profile, ctx: &CredentialContext) -> Built {
    match &profile.kind {
        ProfileKind::ClientSecret {
            tenant_id,
            client_id,
            client_secret,
        } => Built {
            source: format!(
                "client secret of app {client_id} in tenant {tenant_id} ({client_secret:?})"
            ),
            credential: Arc::new(ClientSecretCredential::new(
                ctx.entra.clone(),
                profile.authority_host.clone(),
                tenant_id.clone(),
                client_id.clone(),
                client_secret.clone(),
                ctx.env.clone(),
            )),
        },
        ProfileKind::Auto {
            tenant_id,
            client_id,
        } => {
            let auto = AutoCredential::detect(
                &profile.name,
                profile.authority_host.clone(),
                tenant_id.clone(),
                client_id.clone(),
                ctx,
            );
            Built {
                source: auto.describe().to_string(),
                credential: Arc::new(auto),
            }
        }
    }
}
