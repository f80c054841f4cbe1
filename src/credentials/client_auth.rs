//! How a web (confidential) app proves itself in a person's token requests: the
//! `interactive_browser` code exchange at `patless login` and every refresh after it (see
//! docs/credentials.md, "A web app"). The same secret or certificate-signed assertion the
//! `client_secret` and `client_certificate` kinds send, read afresh for each request, so a rotated
//! secret file or a renewed certificate is used at once. A public client has none and sends none.

use std::fmt;
use std::sync::Arc;

use url::Url;

use super::client_certificate::name_refused_certificate;
use super::{ClientCertificateCredential, CredentialError, EntraClient, ErrorClass};
use crate::config::{ClientCredential, SecretSource};
use crate::env::Env;
use crate::secret::Secret;

/// `client_assertion_type` of a JWT client assertion.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A web app's client secret or certificate, for the user flows' token requests.
#[derive(Clone)]
pub struct ClientAuth {
    how: How,
    client_id: String,
}

#[derive(Clone)]
enum How {
    Secret { source: SecretSource, env: Env },
    Certificate(Arc<ClientCertificateCredential>),
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The fields that authenticate one token request; [`ClientAuthFields::add_to`] puts them in
/// its form.
pub struct ClientAuthFields {
    value: Secret,
    /// The certificate that signed the assertion (none for a secret), for an error naming it.
    leaf: Option<String>,
}

impl fmt::Debug for ClientAuthFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuthFields")
            .field("value", &self.value)
            .field("leaf", &self.leaf)
            .finish()
    }
}

impl ClientAuthFields {
    /// Adds `client_secret`, or `client_assertion_type` and `client_assertion`, to `form`.
    pub fn add_to<'a>(&'a self, form: &mut Vec<(&'a str, &'a str)>) {
        match &self.leaf {
            None => form.push(("client_secret", self.value.expose())),
            Some(_) => {
                form.push(("client_assertion_type", JWT_BEARER));
                form.push(("client_assertion", self.value.expose()));
            }
        }
    }

    /// Adds to Entra's refusal what patless knows about the credential it sent (the
    /// certificate's subject and thumbprint, when its signature was refused).
    pub fn explain(&self, e: &mut CredentialError) {
        if let Some(leaf) = &self.leaf {
            name_refused_certificate(e, leaf);
        }
    }
}

impl ClientAuth {
    /// The credential of app `client_id` in `tenant_id` at `authority` (a certificate's
    /// assertion names that token URL as its audience).
    pub fn new(
        credential: &ClientCredential,
        entra: &EntraClient,
        authority: &Url,
        tenant_id: &str,
        client_id: &str,
        env: Env,
    ) -> ClientAuth {
        let how = match credential {
            ClientCredential::Secret(source) => How::Secret {
                source: source.clone(),
                env,
            },
            ClientCredential::Certificate(c) => How::Certificate(Arc::new(
                ClientCertificateCredential::new(
                    entra.clone(),
                    authority.clone(),
                    tenant_id.to_string(),
                    client_id.to_string(),
                    c.certificate.clone(),
                    c.password.clone(),
                    c.send_chain,
                    env,
                )
                .with_key_file(c.key.clone()),
            )),
        };
        ClientAuth {
            how,
            client_id: client_id.to_string(),
        }
    }

    /// What it is, for logs and `patless check`: never the secret.
    pub fn describe(&self) -> String {
        match &self.how {
            How::Secret { source, .. } => format!("client secret ({source:?})"),
            How::Certificate(c) => format!("client certificate ({})", c.certificate_path()),
        }
    }

    /// The fields of one token request, read now: the secret, or a freshly signed assertion.
    pub async fn fields(&self) -> Result<ClientAuthFields, CredentialError> {
        match &self.how {
            How::Secret { source, env } => {
                let value = source.resolve(env.as_ref()).map_err(|why| {
                    CredentialError::new(
                        ErrorClass::NotConfigured,
                        format!("client secret for app {}: {why}", self.client_id),
                    )
                })?;
                Ok(ClientAuthFields { value, leaf: None })
            }
            How::Certificate(c) => {
                let (value, leaf) = c.sign_assertion().await?;
                Ok(ClientAuthFields {
                    value,
                    leaf: Some(leaf),
                })
            }
        }
    }
}
