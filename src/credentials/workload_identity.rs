//! `workload_identity`: Kubernetes workload identity (see docs/credentials.md,
//! workload_identity).
//!
//! The projected service-account token in `token_file` (`AZURE_FEDERATED_TOKEN_FILE`, mounted by
//! the AKS webhook) is the client assertion, sent as is. The file is read at every acquisition:
//! the kubelet rotates it. When Entra finds no federated credential matching it (AADSTS70021 and
//! its 70021x variants), the error names the token's issuer, subject and audience, read from the
//! token without verifying it, so the mismatch can be seen; the token itself is never shown.

use std::path::PathBuf;

use url::Url;

use super::{AccessToken, BoxFuture, Credential, CredentialError, EntraClient, ErrorClass};

/// Kubernetes workload identity.
pub struct WorkloadIdentityCredential {
    entra: EntraClient,
    token_url: String,
    tenant_id: String,
    client_id: String,
    token_file: PathBuf,
}

impl std::fmt::Debug for WorkloadIdentityCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentityCredential")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl WorkloadIdentityCredential {
    /// A credential for `client_id` in `tenant_id` presenting the token in `token_file`.
    pub fn new(
        entra: EntraClient,
        authority: Url,
        tenant_id: String,
        client_id: String,
        token_file: PathBuf,
    ) -> Self {
        WorkloadIdentityCredential {
            token_url: EntraClient::token_url(&authority, &tenant_id),
            entra,
            tenant_id,
            client_id,
            token_file,
        }
    }
}

impl Credential for WorkloadIdentityCredential {
    fn acquire<'a>(
        &'a self,
        scope: &'a str,
        claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        Box::pin(async move {
            let file = self.token_file.display();
            let text = tokio::fs::read_to_string(&self.token_file)
                .await
                .map_err(|e| {
                    CredentialError::new(
                        ErrorClass::NotConfigured,
                        format!(
                            "cannot read the federated token file {file} ({e}): in Kubernetes, \
                             the pod needs the label azure.workload.identity/use=true and a \
                             service account annotated with azure.workload.identity/client-id"
                        ),
                    )
                })?;
            let token = text.trim();
            if token.is_empty() {
                return Err(CredentialError::new(
                    ErrorClass::NotConfigured,
                    format!("the federated token file {file} is empty"),
                ));
            }
            self.entra
                .exchange_assertion(&self.token_url, &self.client_id, scope, token, claims)
                .await
                .map_err(|e| {
                    explain_mismatch(e, token, &format!("the token from {file}"), &self.client_id)
                })
        })
    }
}

/// AADSTS codes for "no federated credential matches the presented token" (the generic one, then
/// the issuer, audience and subject ones).
const NO_MATCH_CODES: [u32; 4] = [70021, 700211, 700212, 700213];

/// Adds what the presented federated token says (issuer, subject, audience) to Entra's refusal
/// when no federated credential matched it, so the difference shows. `what` names the token's
/// origin; the token itself never enters the message.
pub(super) fn explain_mismatch(
    mut err: CredentialError,
    token: &str,
    what: &str,
    client_id: &str,
) -> CredentialError {
    if !err.codes.iter().any(|c| NO_MATCH_CODES.contains(c)) {
        return err;
    }
    let note = match unverified_claims(token) {
        Some(c) => format!(
            " ({what} has issuer `{}`, subject `{}` and audience `{}`: a federated credential of \
             app {client_id} must name exactly these)",
            c.iss, c.sub, c.aud
        ),
        None => format!(
            " ({what} is not a JWT whose issuer and subject could be read: is it the right file?)"
        ),
    };
    err.message.push_str(&note);
    err
}

/// The identifying claims of a JWT, read without verifying it.
pub(super) struct FederatedClaims {
    pub(super) iss: String,
    pub(super) sub: String,
    pub(super) aud: String,
}

/// The `iss`, `sub` and `aud` of `jwt`'s payload (no signature check: Entra verifies it); `None`
/// when it is not a JWT with a JSON object payload.
pub(super) fn unverified_claims(jwt: &str) -> Option<FederatedClaims> {
    let claims = crate::jwt::claims(jwt)?;
    let text = |key: &str| -> String {
        match claims.get(key).unwrap_or(&serde_json::Value::Null) {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            serde_json::Value::Null => "(none)".into(),
            other => other.to_string(),
        }
    };
    Some(FederatedClaims {
        iss: text("iss"),
        sub: text("sub"),
        aud: text("aud"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn claims_are_read_without_verification() {
        let c = unverified_claims(&jwt(
            r#"{"iss":"https://oidc.example/1","sub":"system:serviceaccount:ns:sa","aud":["api://AzureADTokenExchange"]}"#,
        ))
        .expect("claims");
        assert_eq!(c.iss, "https://oidc.example/1");
        assert_eq!(c.sub, "system:serviceaccount:ns:sa");
        assert_eq!(c.aud, "api://AzureADTokenExchange");
        assert!(unverified_claims("not a jwt").is_none());
    }

    #[test]
    fn only_no_match_errors_are_explained() {
        let token = jwt(r#"{"iss":"i","sub":"s","aud":"a"}"#);
        let mut e = CredentialError::new(ErrorClass::InvalidClient, "refused");
        e.codes = vec![70021];
        let e = explain_mismatch(e, &token, "the token", "app");
        assert!(
            e.message
                .contains("issuer `i`, subject `s` and audience `a`"),
            "{}",
            e.message
        );
        assert!(!e.message.contains(&token));
        let mut other = CredentialError::new(ErrorClass::InvalidClient, "refused");
        other.codes = vec![7000215];
        assert_eq!(
            explain_mismatch(other, &token, "t", "app").message,
            "refused"
        );
    }
}
