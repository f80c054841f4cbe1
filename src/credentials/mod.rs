//! Credentials: one file per kind behind one small trait. A credential only knows how to get a
//! token from its source; caching, refresh and single-flight live in `token`, around any of them.

mod auto;
mod azure_cli;
mod azure_developer_cli;
mod azure_pipelines;
pub mod capabilities;
mod cli_process;
mod client_certificate;
mod client_secret;
pub mod entra;
mod managed_identity;
mod refresh_token;
mod workload_identity;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use auto::AutoCredential;
pub use azure_cli::AzureCliCredential;
pub use azure_developer_cli::AzureDeveloperCliCredential;
pub use azure_pipelines::AzurePipelinesCredential;
pub use client_certificate::ClientCertificateCredential;
pub use client_secret::ClientSecretCredential;
pub use entra::EntraClient;
pub use managed_identity::{ArcAgent, ManagedIdentityCredential};
pub use refresh_token::RefreshTokenCredential;
pub use workload_identity::WorkloadIdentityCredential;

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

/// The state directory (SPEC §5): `[server] state_dir`, else `$XDG_STATE_HOME/patless`, else
/// `$HOME/.local/state/patless`, else `./.patless-state`.
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

/// Says where a profile's tokens come from (what `auto` chose, once it chose). Never a secret.
pub type SourceFn = Arc<dyn Fn() -> String + Send + Sync>;

/// A profile's credential, with a description of where its tokens come from (logs and `check`).
pub struct Built {
    /// The credential.
    pub credential: Arc<dyn Credential>,
    /// Where its tokens come from, or (for `auto`) why nothing was found.
    pub source: SourceFn,
}

fn fixed(text: String) -> SourceFn {
    Arc::new(move || text.clone())
}

/// A profile whose settings are incomplete once the environment is consulted (say
/// `workload_identity` outside a pod with the webhook): every acquisition explains what is missing.
#[derive(Debug)]
pub struct Unconfigured {
    message: String,
}

impl Credential for Unconfigured {
    fn acquire<'a>(
        &'a self,
        _scope: &'a str,
        _claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        let err = CredentialError::new(ErrorClass::NotConfigured, self.message.clone());
        Box::pin(async move { Err(err) })
    }
}

fn unconfigured(profile: &str, kind: &str, missing: &[(&str, &str)]) -> Built {
    let list = missing
        .iter()
        .map(|(key, env)| format!("{key} (config) or {env} (environment)"))
        .collect::<Vec<_>>()
        .join(", ");
    let message = format!("profile `{profile}` (kind {kind}) is missing {list}");
    Built {
        source: fixed(message.clone()),
        credential: Arc::new(Unconfigured { message }),
    }
}

/// The first of the configured value and the environment variable.
fn or_env(value: &Option<String>, env: &dyn crate::env::Environment, name: &str) -> Option<String> {
    value
        .clone()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| crate::env::non_empty(env, name))
}

/// Builds the credential of a profile (with its client capabilities, if it declares any).
pub fn build(profile: &Profile, ctx: &CredentialContext) -> Built {
    let built = build_kind(profile, ctx);
    if profile.client_capabilities.is_empty() {
        return built;
    }
    let caps = profile.client_capabilities.join(", ");
    let source = built.source;
    Built {
        credential: Arc::new(capabilities::WithCapabilities::new(
            built.credential,
            profile.client_capabilities.clone(),
        )),
        source: Arc::new(move || format!("{}; client capabilities: {caps}", source())),
    }
}

fn build_kind(profile: &Profile, ctx: &CredentialContext) -> Built {
    let env = ctx.env.as_ref();
    match &profile.kind {
        ProfileKind::ClientSecret {
            tenant_id,
            client_id,
            client_secret,
        } => Built {
            source: fixed(format!(
                "client secret of app {client_id} in tenant {tenant_id} ({client_secret:?})"
            )),
            credential: Arc::new(ClientSecretCredential::new(
                ctx.entra.clone(),
                profile.authority_host.clone(),
                tenant_id.clone(),
                client_id.clone(),
                client_secret.clone(),
                ctx.env.clone(),
            )),
        },
        ProfileKind::ClientCertificate {
            tenant_id,
            client_id,
            certificate,
            certificate_key,
            certificate_password,
            send_certificate_chain,
        } => Built {
            source: fixed(format!(
                "certificate {} of app {client_id} in tenant {tenant_id}{}",
                certificate.display(),
                if *send_certificate_chain {
                    ", chain sent (x5c)"
                } else {
                    ""
                }
            )),
            credential: Arc::new(
                ClientCertificateCredential::new(
                    ctx.entra.clone(),
                    profile.authority_host.clone(),
                    tenant_id.clone(),
                    client_id.clone(),
                    certificate.clone(),
                    certificate_password.clone(),
                    *send_certificate_chain,
                    ctx.env.clone(),
                )
                .with_key_file(certificate_key.clone()),
            ),
        },
        ProfileKind::ManagedIdentity { id, endpoint } => {
            let mi = ManagedIdentityCredential::new(
                ctx.entra.http().clone(),
                id.clone(),
                endpoint.clone(),
                ctx.env.clone(),
                &ctx.arc,
            );
            Built {
                source: fixed(mi.describe()),
                credential: Arc::new(mi),
            }
        }
        ProfileKind::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
        } => {
            let t = or_env(tenant_id, env, "AZURE_TENANT_ID");
            let c = or_env(client_id, env, "AZURE_CLIENT_ID");
            let f = token_file.clone().or_else(|| {
                crate::env::non_empty(env, "AZURE_FEDERATED_TOKEN_FILE").map(Into::into)
            });
            match (t, c, f) {
                (Some(t), Some(c), Some(f)) => Built {
                    source: fixed(format!(
                        "workload identity: app {c} in tenant {t}, federated token from {}",
                        f.display()
                    )),
                    credential: Arc::new(WorkloadIdentityCredential::new(
                        ctx.entra.clone(),
                        profile.authority_host.clone(),
                        t,
                        c,
                        f,
                    )),
                },
                (t, c, f) => {
                    let mut missing = Vec::new();
                    if t.is_none() {
                        missing.push(("tenant_id", "AZURE_TENANT_ID"));
                    }
                    if c.is_none() {
                        missing.push(("client_id", "AZURE_CLIENT_ID"));
                    }
                    if f.is_none() {
                        missing.push(("token_file", "AZURE_FEDERATED_TOKEN_FILE"));
                    }
                    unconfigured(&profile.name, "workload_identity", &missing)
                }
            }
        }
        ProfileKind::AzurePipelines {
            tenant_id,
            client_id,
            service_connection_id,
            system_access_token,
        } => {
            let t = or_env(tenant_id, env, "AZURESUBSCRIPTION_TENANT_ID");
            let c = or_env(client_id, env, "AZURESUBSCRIPTION_CLIENT_ID");
            let sc = or_env(
                service_connection_id,
                env,
                "AZURESUBSCRIPTION_SERVICE_CONNECTION_ID",
            );
            let uri = crate::env::non_empty(env, "SYSTEM_OIDCREQUESTURI");
            match (t, c, sc, uri) {
                (Some(t), Some(c), Some(sc), Some(uri)) => Built {
                    source: fixed(format!(
                        "Azure Pipelines service connection {sc}: app {c} in tenant {t}"
                    )),
                    credential: Arc::new(AzurePipelinesCredential::new(
                        ctx.entra.clone(),
                        profile.authority_host.clone(),
                        t,
                        c,
                        sc,
                        uri,
                        system_access_token.clone(),
                        ctx.env.clone(),
                    )),
                },
                (t, c, sc, uri) => {
                    let mut missing = Vec::new();
                    if t.is_none() {
                        missing.push(("tenant_id", "AZURESUBSCRIPTION_TENANT_ID"));
                    }
                    if c.is_none() {
                        missing.push(("client_id", "AZURESUBSCRIPTION_CLIENT_ID"));
                    }
                    if sc.is_none() {
                        missing.push((
                            "service_connection_id",
                            "AZURESUBSCRIPTION_SERVICE_CONNECTION_ID",
                        ));
                    }
                    if uri.is_none() {
                        missing.push((
                            "the pipeline agent's",
                            "SYSTEM_OIDCREQUESTURI (is this an Azure Pipelines job?)",
                        ));
                    }
                    unconfigured(&profile.name, "azure_pipelines", &missing)
                }
            }
        }
        ProfileKind::AzureCli {
            tenant_id,
            subscription,
        } => Built {
            source: fixed(format!(
                "Azure CLI (`az account get-access-token`{}{})",
                tenant_id.as_ref().map(|t| format!(", tenant {t}")).unwrap_or_default(),
                subscription.as_ref().map(|s| format!(", subscription {s}")).unwrap_or_default()
            )),
            credential: Arc::new(AzureCliCredential::new(
                tenant_id.clone(),
                subscription.clone(),
                ctx.env.clone(),
            )),
        },
        ProfileKind::AzureDeveloperCli { tenant_id } => Built {
            source: fixed(format!(
                "Azure Developer CLI (`azd auth token`{})",
                tenant_id.as_ref().map(|t| format!(", tenant {t}")).unwrap_or_default()
            )),
            credential: Arc::new(AzureDeveloperCliCredential::new(tenant_id.clone(), ctx.env.clone())),
        },
        ProfileKind::DeviceCode {
            tenant_id,
            client_id,
        }
        | ProfileKind::InteractiveBrowser {
            tenant_id,
            client_id,
            ..
        } => Built {
            source: fixed(format!(
                "{} login of app {client_id} in tenant {tenant_id}: the refresh token stored under {} by `patless login --profile {}`",
                profile.kind.name(),
                ctx.store.dir().display(),
                profile.name
            )),
            credential: Arc::new(RefreshTokenCredential::new(
                ctx.entra.clone(),
                profile.authority_host.clone(),
                tenant_id.clone(),
                client_id.clone(),
                profile.name.clone(),
                ctx.store.clone(),
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
            let auto = Arc::new(auto);
            let describe = Arc::clone(&auto);
            Built {
                source: Arc::new(move || describe.describe()),
                credential: auto,
            }
        }
    }
}
