//! `azure_pipelines`: an Azure Pipelines OIDC service connection (see docs/credentials.md,
//! azure_pipelines).
//!
//! For every exchange, a fresh OIDC token is requested from the pipeline (`POST
//! {SYSTEM_OIDCREQUESTURI}?api-version=7.1&serviceConnectionId={id}`, authenticated with the job's
//! system access token) and presented to Entra as the client assertion. The OIDC token lives a few
//! minutes, so it is never kept. `X-TFS-FedAuthRedirect: Suppress` asks for a clean 401 when the
//! system token is bad; the 203 or 302 sign-in page it would get otherwise are recognised too.
//! Neither the system token nor the OIDC token is ever logged or put in a message.

use serde::Deserialize;
use url::Url;

use super::entra::{content_type, retry_after};
use super::workload_identity::explain_mismatch;
use super::{AccessToken, BoxFuture, Credential, CredentialError, EntraClient, ErrorClass};
use crate::config::SecretSource;
use crate::env::Env;
use crate::error_chain::innermost;
use crate::header_names::TFS_FEDAUTH_REDIRECT;
use crate::secret::Secret;

/// The API version of the pipeline's OIDC endpoint (`SYSTEM_OIDCREQUESTURI`); it answers
/// `{"oidcToken": "<jwt>"}`.
const API_VERSION: &str = "7.1";

/// What to tell someone whose system access token was refused.
const BAD_SYSTEM_TOKEN: &str = "the system access token is not valid (is SYSTEM_ACCESSTOKEN mapped into the step's env? `env: SYSTEM_ACCESSTOKEN: $(System.AccessToken)`)";

/// Azure Pipelines OIDC service connection.
pub struct AzurePipelinesCredential {
    entra: EntraClient,
    token_url: String,
    tenant_id: String,
    client_id: String,
    service_connection_id: String,
    oidc_request_uri: String,
    system_access_token: SecretSource,
    env: Env,
}

impl std::fmt::Debug for AzurePipelinesCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzurePipelinesCredential")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("service_connection_id", &self.service_connection_id)
            .field("oidc_request_uri", &self.oidc_request_uri)
            .field("system_access_token", &self.system_access_token)
            .finish()
    }
}

#[derive(Deserialize)]
struct OidcAnswer {
    #[serde(rename = "oidcToken")]
    oidc_token: Option<String>,
}

/// Azure DevOps' error body (`{"message": …, "typeKey": …}`).
#[derive(Deserialize, Default)]
struct DevOpsError {
    message: Option<String>,
}

impl AzurePipelinesCredential {
    /// A credential for app `client_id` in `tenant_id` behind the service connection
    /// `service_connection_id`; `oidc_request_uri` is the agent's `SYSTEM_OIDCREQUESTURI`, and the
    /// system access token is resolved at each acquisition.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        entra: EntraClient,
        authority: Url,
        tenant_id: String,
        client_id: String,
        service_connection_id: String,
        oidc_request_uri: String,
        system_access_token: SecretSource,
        env: Env,
    ) -> Self {
        AzurePipelinesCredential {
            token_url: EntraClient::token_url(&authority, &tenant_id),
            entra,
            tenant_id,
            client_id,
            service_connection_id,
            oidc_request_uri,
            system_access_token,
            env,
        }
    }

    /// `{SYSTEM_OIDCREQUESTURI}?api-version=7.1&serviceConnectionId={id}`, keeping any query the
    /// URI already has.
    fn oidc_url(&self) -> Result<Url, CredentialError> {
        let mut url = Url::parse(self.oidc_request_uri.trim()).map_err(|e| {
            CredentialError::new(
                ErrorClass::NotConfigured,
                format!("SYSTEM_OIDCREQUESTURI is not a URL ({e})"),
            )
        })?;
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| {
                !k.eq_ignore_ascii_case("api-version")
                    && !k.eq_ignore_ascii_case("serviceConnectionId")
            })
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair("api-version", API_VERSION)
            .append_pair("serviceConnectionId", &self.service_connection_id);
        Ok(url)
    }

    /// Asks the pipeline for a new OIDC token.
    async fn oidc_token(&self, system_token: &Secret) -> Result<Secret, CredentialError> {
        let url = self.oidc_url()?;
        // Named without its query: no secret there, but the IDs add nothing to the story.
        let mut endpoint = url.clone();
        endpoint.set_query(None);
        let response = self
            .entra
            .http()
            .post(url)
            .bearer_auth(system_token.expose())
            .header(&TFS_FEDAUTH_REDIRECT, "Suppress")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body("{}")
            .send()
            .await
            .map_err(|e| {
                let class = if e.is_timeout() {
                    ErrorClass::Timeout
                } else {
                    ErrorClass::Network
                };
                CredentialError::new(
                    class,
                    format!(
                        "cannot get an OIDC token from Azure Pipelines at {endpoint}: {}",
                        innermost(&e)
                    ),
                )
            })?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let html = content_type(response.headers()).contains("html");
        let body = response.bytes().await.map_err(|e| {
            CredentialError::new(
                ErrorClass::Network,
                format!(
                    "the OIDC answer from Azure Pipelines at {endpoint} broke off: {}",
                    innermost(&e)
                ),
            )
        })?;
        self.read_answer(status, html, &body)
            .map_err(|(class, what)| {
                let mut e = CredentialError::new(
                    class,
                    format!("cannot get an OIDC token from Azure Pipelines at {endpoint}: {what}"),
                );
                e.retry_after = retry_after;
                e
            })
    }

    /// The OIDC token in the pipeline's answer, or the class of the failure and what it was.
    fn read_answer(
        &self,
        status: u16,
        html: bool,
        body: &[u8],
    ) -> Result<Secret, (ErrorClass, String)> {
        if matches!(status, 401 | 403 | 203) || (300..400).contains(&status) || html {
            let what = if (300..400).contains(&status) {
                " (a redirect to sign in)"
            } else if html {
                " with a sign-in page"
            } else {
                ""
            };
            return Err((
                ErrorClass::InvalidClient,
                format!("{BAD_SYSTEM_TOKEN}; it answered HTTP {status}{what}"),
            ));
        }
        if !(200..300).contains(&status) {
            return Err(self.refusal(status, body));
        }
        match serde_json::from_slice::<OidcAnswer>(body) {
            Ok(OidcAnswer {
                oidc_token: Some(t),
            }) if !t.trim().is_empty() => Ok(Secret::new(t.trim())),
            _ => Err((
                ErrorClass::BadResponse,
                format!("HTTP {status} without an `oidcToken` in a JSON body"),
            )),
        }
    }

    /// What a non-success status other than a sign-in refusal means, with Azure DevOps' message.
    fn refusal(&self, status: u16, body: &[u8]) -> (ErrorClass, String) {
        let said = serde_json::from_slice::<DevOpsError>(body)
            .unwrap_or_default()
            .message
            .map(|m| format!(": {}", m.chars().take(300).collect::<String>()))
            .unwrap_or_default();
        match status {
            429 => (ErrorClass::Throttled, format!("throttled (HTTP 429){said}")),
            500..=599 => (ErrorClass::ServerError, format!("HTTP {status}{said}")),
            400 | 404 => (
                ErrorClass::NotConfigured,
                format!(
                    "HTTP {status}{said} (check the service connection id {} and that this \
                     pipeline may use it)",
                    self.service_connection_id
                ),
            ),
            _ => (ErrorClass::BadResponse, format!("HTTP {status}{said}")),
        }
    }
}

impl Credential for AzurePipelinesCredential {
    fn acquire<'a>(
        &'a self,
        scope: &'a str,
        claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        Box::pin(async move {
            let system_token = self
                .system_access_token
                .resolve(self.env.as_ref())
                .map_err(|why| {
                    CredentialError::new(
                        ErrorClass::NotConfigured,
                        format!(
                            "Azure Pipelines system access token: {why} (map it into the step: \
                             `env: SYSTEM_ACCESSTOKEN: $(System.AccessToken)`)"
                        ),
                    )
                })?;
            tracing::debug!(
                service_connection = %self.service_connection_id,
                "requesting an OIDC token from Azure Pipelines"
            );
            let oidc = self.oidc_token(&system_token).await?;
            self.entra
                .exchange_assertion(
                    &self.token_url,
                    &self.client_id,
                    scope,
                    oidc.expose(),
                    claims,
                )
                .await
                .map_err(|e| {
                    explain_mismatch(
                        e,
                        oidc.expose(),
                        &format!(
                            "the OIDC token of service connection {}",
                            self.service_connection_id
                        ),
                        &self.client_id,
                    )
                })
        })
    }
}
