//! IMDS's token path on the identity endpoint (`identity_endpoint.imds = true`), for SDKs and
//! tools that know only the Instance Metadata Service: the Azure Identity SDKs started with
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:7072`, Terraform's
//! `msi_endpoint = "http://127.0.0.1:7072/metadata/identity/oauth2/token"`.
//!
//! It answers as IMDS does. `GET /metadata/identity/oauth2/token?api-version=V&resource=R` must
//! carry `Metadata: true` (else `400 {"error": "invalid_request", "error_description": "Required
//! metadata header not specified…"}`, which is also what the SDKs' availability probes, sent
//! without the header, expect to see) and no `X-Forwarded-For` or `Forwarded` (a proxy relayed
//! it). `V` is any IMDS version from `2018-02-01` on. The answer is IMDS's, every number a string:
//! `access_token`, `client_id`, `expires_in`, `expires_on`, `ext_expires_in`, `not_before`,
//! `resource`, `token_type`. IMDS clients send no secret: who may connect to the listener gets
//! the tokens (docs/security.md).

use http::{header, HeaderMap};

use super::{loggable, Refusal};
use crate::header_names::{METADATA, X_FORWARDED_FOR};
use crate::token::CachedToken;

/// IMDS's token path (the `AZURE_POD_IDENTITY_AUTHORITY_HOST` SDKs append it to that base).
pub const TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
/// The first IMDS version with the identity token path; the SDKs send it.
const FIRST_API_VERSION: &str = "2018-02-01";

/// Whether `path` is this protocol's (a trailing `/` allowed: MSAL Node adds one).
pub(super) fn serves(path: &str) -> bool {
    path.strip_suffix('/').unwrap_or(path) == TOKEN_PATH
}

/// `Metadata: true` (exactly, as IMDS wants it), and no sign of a relaying proxy.
pub(super) fn admit(headers: &HeaderMap) -> Result<(), Refusal> {
    for (name, shown) in [
        (&X_FORWARDED_FOR, "X-Forwarded-For"),
        (&header::FORWARDED, "Forwarded"),
    ] {
        if headers.contains_key(name) {
            return Err(Refusal::Relayed(shown));
        }
    }
    match headers.get(&METADATA) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Refusal::MetadataMissing),
    }
}

/// IMDS's `api-version`: required, a date (`YYYY-MM-DD`) from `2018-02-01` on.
pub(super) fn check_api_version(asked: Option<&str>) -> Result<(), Refusal> {
    let Some(v) = asked else {
        return Err(Refusal::InvalidRequest(format!(
            "the api-version query parameter is missing; IMDS clients send \
             api-version={FIRST_API_VERSION}"
        )));
    };
    let date_shaped = v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if date_shaped && v >= FIRST_API_VERSION {
        Ok(())
    } else {
        Err(Refusal::InvalidRequest(format!(
            "api-version {} is not an IMDS version for tokens; expected {FIRST_API_VERSION} or later",
            loggable(v)
        )))
    }
}

/// IMDS's answer, every number a string. patless does not know the token's extended lifetime, so
/// `ext_expires_in` is its lifetime; `not_before` is the token's `nbf`, else when it was issued.
pub(super) fn token_body(
    token: &CachedToken,
    asked: &str,
    client_id: Option<String>,
) -> serde_json::Value {
    let expires_in = token
        .expires_at
        .saturating_duration_since(tokio::time::Instant::now())
        .as_secs();
    let lifetime = token
        .expires_at
        .saturating_duration_since(token.acquired_at)
        .as_secs();
    let not_before = crate::jwt::claims(token.secret().expose())
        .and_then(|c| c.get("nbf").and_then(serde_json::Value::as_u64))
        .unwrap_or_else(|| token.expires_unix.saturating_sub(lifetime));
    let mut body = serde_json::json!({
        "access_token": token.secret().expose(),
        "expires_in": expires_in.to_string(),
        "expires_on": token.expires_unix.to_string(),
        "ext_expires_in": expires_in.to_string(),
        "not_before": not_before.to_string(),
        "resource": asked,
        "token_type": "Bearer",
    });
    if let Some(c) = client_id {
        body["client_id"] = serde_json::Value::String(c);
    }
    body
}

/// IMDS's `error_description`, also patless's `message`: the SDKs show one or the other (MSAL
/// Python the first, MSAL Node the second) or look into it (an identity IMDS does not have reads
/// `Identity not found`).
pub(super) fn error_fields(body: &mut serde_json::Value, refusal: &Refusal) {
    let description = match refusal {
        Refusal::WrongIdentity(why) => format!("Identity not found: {why}"),
        other => other.to_string(),
    };
    body["message"] = description.clone().into();
    body["error_description"] = description.into();
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn api_versions_from_2018_02_01() {
        for ok in ["2018-02-01", "2019-08-01", "2025-04-07"] {
            assert!(check_api_version(Some(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "2017-09-01",
            "2018-2-01",
            "2018-02-01x",
            "latest",
            "",
            "2018_02_01",
        ] {
            assert!(check_api_version(Some(bad)).is_err(), "{bad}");
        }
        assert!(check_api_version(None).is_err());
    }

    #[test]
    fn metadata_true_and_no_proxy() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            admit(&h)
        };
        assert!(with(&[("metadata", "true")]).is_ok());
        for bad in ["True", "1", "", "true "] {
            let mut h = HeaderMap::new();
            h.insert("metadata", HeaderValue::from_str(bad).expect("value"));
            assert!(
                matches!(admit(&h), Err(Refusal::MetadataMissing)),
                "{bad:?}"
            );
        }
        assert!(matches!(with(&[]), Err(Refusal::MetadataMissing)));
        assert!(matches!(
            with(&[("metadata", "true"), ("x-forwarded-for", "10.0.0.1")]),
            Err(Refusal::Relayed("X-Forwarded-For"))
        ));
        assert!(matches!(
            with(&[("metadata", "true"), ("forwarded", "for=10.0.0.1")]),
            Err(Refusal::Relayed("Forwarded"))
        ));
        assert!(Refusal::MetadataMissing
            .to_string()
            .starts_with("Required metadata header not specified"));
    }
}
