//! `auto`: the first credential source that is configured (see docs/credentials.md, auto), in
//! this order:
//! 1. the environment service principal — `AZURE_CLIENT_ID` + `AZURE_TENANT_ID` with
//!    `AZURE_CLIENT_SECRET`, or with `AZURE_CLIENT_CERTIFICATE_PATH` (+ `…_PASSWORD`,
//!    `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`);
//! 2. workload identity — `AZURE_FEDERATED_TOKEN_FILE` (+ client and tenant ids);
//! 3. managed identity — App Service, Arc or Cloud Shell when their variables say so; otherwise
//!    IMDS, after a short probe at first use so that patless does not hang off Azure;
//! 4. Azure CLI (`az account get-access-token`), then Azure Developer CLI (`azd auth token`), each
//!    tried at first use: one that is not installed or not signed in is skipped.
//!
//! What was chosen is logged and shown by `patless check`; when nothing is available, one error
//! lists each source and why it was skipped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;
use url::Url;

use super::{
    AccessToken, AzureCliCredential, AzureDeveloperCliCredential, BoxFuture,
    ClientCertificateCredential, ClientSecretCredential, Credential, CredentialContext,
    CredentialError, ErrorClass, ManagedIdentityCredential, WorkloadIdentityCredential,
};
use crate::config::{ManagedIdentityId, SecretSource};
use crate::env::{non_empty, Environment};

/// How long the IMDS probe may take before managed identity is skipped.
const IMDS_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const IMDS_DEFAULT: &str = "http://169.254.169.254";

type Chosen = (String, Arc<dyn Credential>);

/// The `auto` chain for one profile.
pub struct AutoCredential {
    profile: String,
    /// Decided from the environment alone, at build time.
    decided: Option<Chosen>,
    /// Otherwise: IMDS, if a probe finds it.
    imds: Option<ImdsCandidate>,
    /// Why each earlier source was skipped.
    skipped: Vec<String>,
    /// Azure CLI, then azd: tried in order when nothing earlier is available.
    developer_tools: Vec<(&'static str, Arc<dyn Credential>)>,
    /// The source the probe chose (a failed probe is not remembered: the next acquisition, after
    /// the cache's backoff, looks again — so `az login` later is picked up without a restart).
    probed: AsyncMutex<Option<Chosen>>,
    /// A token the probe already obtained from a developer tool, handed to its caller.
    first: Mutex<Option<(String, AccessToken)>>,
    /// For `describe` before the probe ran.
    state: Mutex<String>,
}

struct ImdsCandidate {
    http: reqwest::Client,
    base: Url,
    credential: Arc<ManagedIdentityCredential>,
}

impl std::fmt::Debug for AutoCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoCredential")
            .field("profile", &self.profile)
            .field("source", &self.describe())
            .finish()
    }
}

fn env_flag(env: &dyn Environment, name: &str) -> bool {
    non_empty(env, name)
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

impl AutoCredential {
    /// Looks at the environment and picks the first source that is configured; IMDS is probed
    /// later, at the first acquisition.
    pub fn detect(
        profile: &str,
        authority: Url,
        tenant_id: Option<String>,
        client_id: Option<String>,
        ctx: &CredentialContext,
    ) -> Self {
        let env = ctx.env.as_ref();
        let ids = Ids {
            client: client_id.or_else(|| non_empty(env, "AZURE_CLIENT_ID")),
            tenant: tenant_id.or_else(|| non_empty(env, "AZURE_TENANT_ID")),
        };
        let mut skipped = Vec::new();
        let mut imds = None;
        let decided = env_service_principal(&ids, &authority, ctx)
            .or_else(|why| {
                skipped.push(why);
                workload_identity(&ids, &authority, ctx)
            })
            .or_else(|why| {
                skipped.push(why);
                managed_identity(&ids, ctx).map_err(|candidate| imds = Some(candidate))
            })
            .ok();
        let state = initial_state(profile, decided.as_ref(), imds.as_ref(), &skipped);
        AutoCredential {
            profile: profile.to_string(),
            decided,
            imds,
            skipped,
            developer_tools: developer_tools(&ids, ctx),
            probed: AsyncMutex::new(None),
            first: Mutex::new(None),
            state: Mutex::new(state),
        }
    }

    /// What the chain chose, or why it found nothing (for `check` and logs).
    pub fn describe(&self) -> String {
        if let Some((what, _)) = &self.decided {
            return what.clone();
        }
        if let Ok(probed) = self.probed.try_lock() {
            if let Some((what, _)) = probed.as_ref() {
                return what.clone();
            }
        }
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    async fn probe(&self, scope: &str, claims: Option<&str>) -> Result<Chosen, String> {
        let mut skipped = self.skipped.clone();
        if let Some(c) = &self.imds {
            match probe_imds(c).await {
                Ok(()) => {
                    let what = c.credential.describe();
                    tracing::info!(profile = %self.profile, source = %what, "auto profile: credential found");
                    return Ok((what, c.credential.clone() as Arc<dyn Credential>));
                }
                Err(why) => skipped.push(format!("managed identity — IMDS at {} {why}", c.base)),
            }
        }
        for (name, tool) in &self.developer_tools {
            match tool.acquire(scope, claims).await {
                Ok(token) => {
                    let what = format!("{name} (signed-in user)");
                    tracing::info!(profile = %self.profile, source = %what, "auto profile: credential found");
                    if let Ok(mut first) = self.first.lock() {
                        *first = Some((scope.to_string(), token));
                    }
                    return Ok((what, Arc::clone(tool)));
                }
                // Not installed, not signed in: the next source.
                Err(e) if e.class == ErrorClass::NotConfigured => {
                    skipped.push(format!("{name} — {}", e.message));
                }
                // Installed and signed in, but refused: this is the source, and its error stands.
                Err(e) => {
                    let what = format!("{name} (signed-in user; last attempt failed: {})", e.class);
                    return Ok((what, Arc::clone(tool)));
                }
            }
        }
        Err(self.nothing_found(&skipped))
    }

    /// The error when no source is available, naming each and why it was skipped; kept for
    /// `describe`. Not logged above DEBUG here: the cache's refresher logs the error, once per
    /// profile at WARN and then summed up (src/token/failures.rs), where a WARN per search would
    /// repeat this long text at every backoff attempt of every scope.
    fn nothing_found(&self, skipped: &[String]) -> String {
        let why = format!(
            "no credential found for profile `{}` (kind auto). Tried: {}. Fix: export AZURE_CLIENT_ID, \
             AZURE_TENANT_ID and AZURE_CLIENT_SECRET (or AZURE_CLIENT_CERTIFICATE_PATH), run in a pod \
             with workload identity or on Azure with a managed identity, or configure a profile with an \
             explicit kind (see config/example.toml)",
            self.profile,
            skipped.join("; ")
        );
        tracing::debug!(profile = %self.profile, "auto profile: no credential source available");
        if let Ok(mut state) = self.state.lock() {
            *state = why.clone();
        }
        why
    }
}

/// Whether IMDS answers at `c.base`: it answers a request without `resource` with 400 and a JSON
/// `error`. Anything else (a proxy's page, a captive portal) is not IMDS; `Err` says what it did.
async fn probe_imds(c: &ImdsCandidate) -> Result<(), String> {
    let url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01",
        c.base.as_str().trim_end_matches('/')
    );
    let outcome = c
        .http
        .get(&url)
        .header("Metadata", "true")
        .timeout(IMDS_PROBE_TIMEOUT)
        .send()
        .await;
    match outcome {
        Ok(resp) if resp.status() == reqwest::StatusCode::BAD_REQUEST => {
            match resp.json::<serde_json::Value>().await {
                Ok(body) if body.get("error").is_some() => Ok(()),
                _ => Err("answered 400 without an IMDS error body".to_string()),
            }
        }
        Ok(resp) => Err(format!(
            "answered HTTP {}, which IMDS does not",
            resp.status().as_u16()
        )),
        Err(e) if e.is_timeout() => Err(format!(
            "did not answer within {}s (not on an Azure VM?)",
            IMDS_PROBE_TIMEOUT.as_secs()
        )),
        Err(_) => Err("did not answer (not on an Azure VM?)".to_string()),
    }
}

/// The app and tenant ids: the profile's, else `AZURE_CLIENT_ID` and `AZURE_TENANT_ID`.
struct Ids {
    client: Option<String>,
    tenant: Option<String>,
}

/// Source 1, the environment service principal, or why it was skipped.
fn env_service_principal(
    ids: &Ids,
    authority: &Url,
    ctx: &CredentialContext,
) -> Result<Chosen, String> {
    let env = ctx.env.as_ref();
    let secret = non_empty(env, "AZURE_CLIENT_SECRET");
    let cert = non_empty(env, "AZURE_CLIENT_CERTIFICATE_PATH");
    match (&ids.client, &ids.tenant, &secret, &cert) {
        (Some(c), Some(t), Some(_), _) => Ok((
            format!("environment service principal: app {c} in tenant {t}, secret from AZURE_CLIENT_SECRET"),
            Arc::new(ClientSecretCredential::new(
                ctx.entra.clone(),
                authority.clone(),
                t.clone(),
                c.clone(),
                SecretSource::Env("AZURE_CLIENT_SECRET".into()),
                ctx.env.clone(),
            )),
        )),
        (Some(c), Some(t), None, Some(path)) => {
            let chain = env_flag(env, "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN");
            Ok((
                format!("environment service principal: app {c} in tenant {t}, certificate {path}"),
                Arc::new(ClientCertificateCredential::new(
                    ctx.entra.clone(),
                    authority.clone(),
                    t.clone(),
                    c.clone(),
                    path.into(),
                    non_empty(env, "AZURE_CLIENT_CERTIFICATE_PASSWORD")
                        .map(|_| SecretSource::Env("AZURE_CLIENT_CERTIFICATE_PASSWORD".into())),
                    chain,
                    ctx.env.clone(),
                )),
            ))
        }
        (c, t, s, p) => {
            let mut missing = Vec::new();
            if c.is_none() {
                missing.push("AZURE_CLIENT_ID");
            }
            if t.is_none() {
                missing.push("AZURE_TENANT_ID");
            }
            if s.is_none() && p.is_none() {
                missing.push("AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH");
            }
            Err(format!(
                "environment service principal — {} not set",
                missing.join(", ")
            ))
        }
    }
}

/// Source 2, workload identity, or why it was skipped.
fn workload_identity(
    ids: &Ids,
    authority: &Url,
    ctx: &CredentialContext,
) -> Result<Chosen, String> {
    match (non_empty(ctx.env.as_ref(), "AZURE_FEDERATED_TOKEN_FILE"), &ids.client, &ids.tenant) {
        (Some(file), Some(c), Some(t)) => Ok((
            format!("workload identity: app {c} in tenant {t}, federated token from {file}"),
            Arc::new(WorkloadIdentityCredential::new(
                ctx.entra.clone(),
                authority.clone(),
                t.clone(),
                c.clone(),
                file.into(),
            )),
        )),
        (None, _, _) => Err("workload identity — AZURE_FEDERATED_TOKEN_FILE not set".into()),
        (Some(_), _, _) => Err(
            "workload identity — AZURE_FEDERATED_TOKEN_FILE is set but AZURE_CLIENT_ID or AZURE_TENANT_ID is not".into(),
        ),
    }
}

/// Source 3, managed identity (a user-assigned one by `AZURE_CLIENT_ID`, as the Azure SDKs do):
/// chosen when the environment names a hosting platform, else IMDS for the probe to look for.
fn managed_identity(ids: &Ids, ctx: &CredentialContext) -> Result<Chosen, ImdsCandidate> {
    let env = ctx.env.as_ref();
    let id = ids.client.clone().map(ManagedIdentityId::ClientId);
    let http = ctx.entra.http().clone();
    let mi = Arc::new(ManagedIdentityCredential::new(
        http.clone(),
        id,
        None,
        ctx.env.clone(),
        &ctx.arc,
    ));
    let hosted = non_empty(env, "IDENTITY_ENDPOINT").is_some()
        || non_empty(env, "MSI_ENDPOINT").is_some()
        || ctx.arc.installed();
    if hosted {
        return Ok((mi.describe(), mi));
    }
    let base = non_empty(env, "AZURE_POD_IDENTITY_AUTHORITY_HOST")
        .and_then(|b| Url::parse(&b).ok())
        .unwrap_or_else(|| Url::parse(IMDS_DEFAULT).expect("constant URL"));
    Err(ImdsCandidate {
        http,
        base,
        credential: mi,
    })
}

/// What `describe` says before any probe: the source decided, or the IMDS probe to come.
fn initial_state(
    profile: &str,
    decided: Option<&Chosen>,
    imds: Option<&ImdsCandidate>,
    skipped: &[String],
) -> String {
    match (decided, imds) {
        (Some((what, _)), _) => {
            tracing::info!(profile, source = %what, "auto profile: credential found");
            what.clone()
        }
        (None, Some(c)) => format!(
            "managed identity via IMDS at {}, if a probe at first use finds it ({})",
            c.base,
            skipped.join("; ")
        ),
        (None, None) => String::new(),
    }
}

/// Source 4, Azure CLI then Azure Developer CLI, tried in order at first use.
fn developer_tools(ids: &Ids, ctx: &CredentialContext) -> Vec<(&'static str, Arc<dyn Credential>)> {
    vec![
        (
            "Azure CLI",
            Arc::new(AzureCliCredential::new(
                ids.tenant.clone(),
                None,
                ctx.env.clone(),
            )),
        ),
        (
            "Azure Developer CLI",
            Arc::new(AzureDeveloperCliCredential::new(
                ids.tenant.clone(),
                ctx.env.clone(),
            )),
        ),
    ]
}

impl Credential for AutoCredential {
    fn acquire<'a>(
        &'a self,
        scope: &'a str,
        claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        if let Some((_, cred)) = &self.decided {
            return cred.acquire(scope, claims);
        }
        Box::pin(async move {
            let chosen = {
                // One probe at a time; the lock is async, held only by probing acquisitions.
                let mut probed = self.probed.lock().await;
                match probed.as_ref() {
                    Some((_, cred)) => Arc::clone(cred),
                    None => match self.probe(scope, claims).await {
                        Ok((what, cred)) => {
                            *probed = Some((what, Arc::clone(&cred)));
                            cred
                        }
                        Err(why) => {
                            return Err(CredentialError::new(ErrorClass::NotConfigured, why))
                        }
                    },
                }
            };
            let ready = self
                .first
                .lock()
                .ok()
                .and_then(|mut f| f.take_if(|(s, _)| s == scope))
                .map(|(_, token)| token);
            match ready {
                Some(token) => Ok(token),
                None => chosen.acquire(scope, claims).await,
            }
        })
    }
}
