//! `auto`: the first credential source that is configured. This build checks the environment
//! service principal (`AZURE_CLIENT_ID` + `AZURE_TENANT_ID` + `AZURE_CLIENT_SECRET`); what it found,
//! or why nothing matched, is logged at start-up and said in every `token_unavailable` answer.

use std::sync::Arc;

use url::Url;

use super::{
    AccessToken, BoxFuture, ClientSecretCredential, Credential, CredentialContext, CredentialError,
    ErrorClass,
};
use crate::config::SecretSource;
use crate::env::non_empty;

/// The `auto` chain, resolved once from the environment.
#[derive(Debug)]
pub struct AutoCredential {
    chosen: Result<(String, Arc<dyn Credential>), String>,
}

impl AutoCredential {
    /// Looks at the environment and picks the first source that is configured.
    pub fn detect(
        profile: &str,
        authority: Url,
        tenant_id: Option<String>,
        client_id: Option<String>,
        ctx: &CredentialContext,
    ) -> Self {
        let env = ctx.env.as_ref();
        let client_id = client_id.or_else(|| non_empty(env, "AZURE_CLIENT_ID"));
        let tenant_id = tenant_id.or_else(|| non_empty(env, "AZURE_TENANT_ID"));
        let has_secret = non_empty(env, "AZURE_CLIENT_SECRET").is_some();
        let chosen = match (client_id, tenant_id, has_secret) {
            (Some(c), Some(t), true) => {
                let cred: Arc<dyn Credential> = Arc::new(ClientSecretCredential::new(
                    ctx.entra.clone(),
                    authority,
                    t.clone(),
                    c.clone(),
                    SecretSource::Env("AZURE_CLIENT_SECRET".into()),
                    ctx.env.clone(),
                ));
                let what = format!(
                    "environment service principal (client {c}, tenant {t}, secret from AZURE_CLIENT_SECRET)"
                );
                tracing::info!(profile, source = %what, "auto profile: credential found");
                Ok((what, cred))
            }
            (c, t, s) => {
                let mut missing = Vec::new();
                if c.is_none() {
                    missing.push("AZURE_CLIENT_ID");
                }
                if t.is_none() {
                    missing.push("AZURE_TENANT_ID");
                }
                if !s {
                    missing.push("AZURE_CLIENT_SECRET");
                }
                let why = format!(
                    "no credential found for profile `{profile}` (kind auto). Tried: environment service \
                     principal — {} not set. Fix: export AZURE_CLIENT_ID, AZURE_TENANT_ID and \
                     AZURE_CLIENT_SECRET, or configure a profile with kind = \"client_secret\" \
                     (see config/example.toml)",
                    missing.join(", ")
                );
                tracing::warn!(profile, "auto profile: {why}");
                Err(why)
            }
        };
        AutoCredential { chosen }
    }

    /// What the chain chose, or why it found nothing (for `check` and logs).
    pub fn describe(&self) -> &str {
        match &self.chosen {
            Ok((what, _)) => what,
            Err(why) => why,
        }
    }
}

impl Credential for AutoCredential {
    fn acquire<'a>(
        &'a self,
        scope: &'a str,
        claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        match &self.chosen {
            Ok((_, cred)) => cred.acquire(scope, claims),
            Err(why) => {
                let err = CredentialError::new(ErrorClass::NotConfigured, why.clone());
                Box::pin(async move { Err(err) })
            }
        }
    }
}
