//! App Service's managed-identity protocol on the identity endpoint: `GET /msi/token` with
//! `api-version=2019-08-01` and the secret `X-IDENTITY-HEADER`, answered with `expires_on` (epoch
//! seconds, a string) and no `expires_in`; refusals carry App Service's `statusCode` field.

use http::{HeaderMap, StatusCode};

use super::{loggable, IdentityEndpoint, Refusal};
use crate::token::CachedToken;

/// The path SDKs are pointed at (`IDENTITY_ENDPOINT=http://127.0.0.1:7072/msi/token`).
pub const TOKEN_PATH: &str = "/msi/token";
/// The one protocol version served (App Service's, which the SDKs send).
pub const API_VERSION: &str = "2019-08-01";
/// The header that carries the secret.
pub use crate::header_names::IDENTITY_HEADER as HEADER_NAME;

/// Whether `path` is this protocol's (a trailing `/` allowed).
pub(super) fn serves(path: &str) -> bool {
    path.strip_suffix('/').unwrap_or(path) == TOKEN_PATH
}

/// The header secret, present and equal to `identity_endpoint.header`.
pub(super) fn admit(ep: &IdentityEndpoint, headers: &HeaderMap) -> Result<(), Refusal> {
    let presented = headers.get(&HEADER_NAME).ok_or(Refusal::HeaderMissing)?;
    if ep.header_matches(presented.as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::HeaderWrong)
    }
}

/// App Service's `api-version`, the only one served.
pub(super) fn check_api_version(asked: Option<&str>) -> Result<(), Refusal> {
    match asked {
        Some(API_VERSION) => Ok(()),
        Some(other) => Err(Refusal::InvalidRequest(format!(
            "api-version {} is not supported; this endpoint speaks App Service's \
             api-version={API_VERSION}",
            loggable(other)
        ))),
        None => Err(Refusal::InvalidRequest(format!(
            "the api-version query parameter is missing; expected api-version={API_VERSION}"
        ))),
    }
}

/// App Service's answer: `access_token`, `expires_on`, `resource` (as asked), `token_type` and,
/// when known, `client_id`.
pub(super) fn token_body(
    token: &CachedToken,
    asked: &str,
    client_id: Option<String>,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "access_token": token.secret().expose(),
        "expires_on": token.expires_unix.to_string(),
        "resource": asked,
        "token_type": "Bearer",
    });
    if let Some(c) = client_id {
        body["client_id"] = serde_json::Value::String(c);
    }
    body
}

/// App Service's own error field, which MSAL Python shows.
pub(super) fn error_fields(body: &mut serde_json::Value, status: StatusCode) {
    body["statusCode"] = status.as_u16().into();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_its_version_and_path() {
        assert!(check_api_version(Some(API_VERSION)).is_ok());
        assert!(check_api_version(Some("2018-02-01")).is_err());
        assert!(check_api_version(None).is_err());
        assert!(serves("/msi/token") && serves("/msi/token/"));
        assert!(!serves("/msi/token//") && !serves("/msi"));
    }
}
