//! `client_secret`: the client credentials grant with a secret (see docs/credentials.md,
//! client_secret).

use url::Url;

use super::{AccessToken, BoxFuture, Credential, CredentialError, EntraClient, ErrorClass};
use crate::config::SecretSource;
use crate::env::Env;

/// A service principal with a client secret.
pub struct ClientSecretCredential {
    entra: EntraClient,
    token_url: String,
    tenant_id: String,
    client_id: String,
    secret: SecretSource,
    env: Env,
}

impl std::fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecretCredential")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("secret", &self.secret)
            .finish()
    }
}

impl ClientSecretCredential {
    /// A credential for `client_id` in `tenant_id`; the secret is resolved at each acquisition.
    pub fn new(
        entra: EntraClient,
        authority: Url,
        tenant_id: String,
        client_id: String,
        secret: SecretSource,
        env: Env,
    ) -> Self {
        ClientSecretCredential {
            token_url: EntraClient::token_url(&authority, &tenant_id),
            entra,
            tenant_id,
            client_id,
            secret,
            env,
        }
    }
}

impl Credential for ClientSecretCredential {
    fn acquire<'a>(
        &'a self,
        scope: &'a str,
        claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        Box::pin(async move {
            let secret = self.secret.resolve(self.env.as_ref()).map_err(|why| {
                CredentialError::new(
                    ErrorClass::NotConfigured,
                    format!("client secret for app {}: {why}", self.client_id),
                )
            })?;
            let mut form = vec![
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", secret.expose()),
                ("scope", scope),
            ];
            if let Some(c) = claims {
                form.push(("claims", c));
            }
            self.entra.request_token(&self.token_url, &form).await
        })
    }
}
