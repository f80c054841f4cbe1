//! What every source shares once its request is built: sending it, reading a token answer, and
//! turning a refusal or a broken connection into an error that says what to do.
//!
//! A token answer is JSON with `access_token` and, as strings or numbers, `expires_in` (seconds)
//! or only `expires_on` (Unix seconds; App Service sends only that), and optionally `token_type`
//! (must be Bearer) and `refresh_in`. An error answer is JSON with `error` / `error_description`
//! (an endpoint may pass Entra's refusal on, AADSTS code included) or `message` / `Message`, or
//! a short text. Errors never quote a token, and cut out the source's own secret should an
//! endpoint echo it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::{id_key, id_value, ManagedIdentityCredential, Source};
use crate::credentials::entra::{hint_for, retry_after, NumOrString};
use crate::credentials::{AccessToken, CredentialError, ErrorClass};
use crate::error_chain::innermost;
use crate::secret::Secret;

/// A failed attempt: the error, and whether the status asks for another try.
pub(super) struct Failure {
    pub(super) error: CredentialError,
    pub(super) status: Option<u16>,
    pub(super) retry: bool,
}

impl From<CredentialError> for Failure {
    fn from(error: CredentialError) -> Self {
        Failure {
            error,
            status: None,
            retry: false,
        }
    }
}

impl ManagedIdentityCredential {
    pub(super) async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failure> {
        request
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.transport_error(&e).into())
    }

    fn transport_error(&self, e: &reqwest::Error) -> CredentialError {
        let class = if e.is_timeout() {
            ErrorClass::Timeout
        } else {
            ErrorClass::Network
        };
        // reqwest's Display is only "error sending request for url (…)": the cause (refused,
        // reset, timed out) is at the end of the source chain.
        let cause = innermost(e);
        let what = match class {
            ErrorClass::Timeout => "did not answer in time".to_string(),
            _ => format!("is unreachable ({cause})"),
        };
        let hint = match &self.source {
            Source::Imds { origin, .. } if *origin == "default" => {
                "patless does not seem to run on an Azure VM or scale set (IMDS only answers \
                 there). Off Azure, use another profile kind (client_secret, workload_identity, \
                 auto, …); behind AKS pod identity, set AZURE_POD_IDENTITY_AUTHORITY_HOST"
            }
            Source::Imds { .. } => {
                "check the address (the profile's endpoint or AZURE_POD_IDENTITY_AUTHORITY_HOST) \
                 and that the identity service runs there"
            }
            Source::Arc { .. } => {
                "is the Azure Arc agent (himds) running? Check with `azcmagent show`"
            }
            _ => {
                "the platform set this endpoint in the environment; is patless running inside the \
                 service whose environment this is (not a copy of it)?"
            }
        };
        CredentialError::new(class, format!("{} {what}: {hint}", self.source.label()))
    }

    /// Reads an answer: a token, or a classified refusal.
    pub(super) async fn answer(&self, response: reqwest::Response) -> Result<AccessToken, Failure> {
        if !response.status().is_success() {
            return Err(self.refusal(response).await);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| Failure::from(self.transport_error(&e)))?;
        parse_token(&body, SystemTime::now()).map_err(|why| {
            CredentialError::new(
                ErrorClass::BadResponse,
                format!("{} answered 200 but {why}", self.source.label()),
            )
            .into()
        })
    }

    /// Classifies a non-success answer, with the hint the user needs.
    pub(super) async fn refusal(&self, response: reqwest::Response) -> Failure {
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        let detail = error_detail(&body, self.source.secret());
        let label = self.source.label();
        let said = detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let aadsts = detail.as_deref().and_then(aadsts_code);
        let (class, message) = self.classify(status, &label, &said, aadsts);
        let mut error = CredentialError::new(class, message);
        error.retry_after = retry_after;
        Failure {
            error,
            status: Some(status),
            retry: self.source.retryable(status),
        }
    }

    /// What a refusal means: Entra's refusal passed on (a 400 with an AADSTS code), else what the
    /// status means from this source, else what it means from any.
    fn classify(
        &self,
        status: u16,
        label: &str,
        said: &str,
        aadsts: Option<u32>,
    ) -> (ErrorClass, String) {
        if let (400, Some(code)) = (status, aadsts) {
            let hint = hint_for(code)
                .map(|h| format!(" — hint: {h}"))
                .unwrap_or_default();
            return (
                ErrorClass::InvalidGrant,
                format!("{label} passed on Entra's refusal (HTTP 400){said}{hint}"),
            );
        }
        self.source_status(status, label, said)
            .unwrap_or_else(|| self.common_status(status, label, said))
    }

    /// The statuses that mean something particular from this source.
    fn source_status(&self, status: u16, label: &str, said: &str) -> Option<(ErrorClass, String)> {
        Some(match (status, &self.source) {
            (400, Source::Imds { .. } | Source::AppService { .. } | Source::AzureMl { .. }) => {
                self.not_assigned(label, said)
            }
            (401 | 403, Source::AppService { .. }) => (
                ErrorClass::InvalidClient,
                format!(
                    "{label} refused X-IDENTITY-HEADER (HTTP {status}){said}: IDENTITY_HEADER \
                     does not belong to this app (the platform rotates it when the app restarts); \
                     run patless with the app's current environment"
                ),
            ),
            (401 | 403, Source::AzureMl { .. }) => (
                ErrorClass::InvalidClient,
                format!(
                    "{label} refused MSI_SECRET (HTTP {status}){said}: run patless with the \
                     compute's current environment"
                ),
            ),
            (404, Source::Imds { .. }) => (
                ErrorClass::ServerError,
                format!(
                    "{label} answered 404{said}: IMDS is being updated (retry shortly), or the \
                     address does not point at IMDS"
                ),
            ),
            _ => return None,
        })
    }

    /// The statuses that mean the same from every source, and the rest.
    fn common_status(&self, status: u16, label: &str, said: &str) -> (ErrorClass, String) {
        match (status, &self.source) {
            (410, _) => (
                ErrorClass::ServerError,
                format!(
                    "{label} answered 410{said}: the identity is not ready yet (normal for up \
                     to 70 s after the VM starts); patless keeps retrying"
                ),
            ),
            (429, _) => (
                ErrorClass::Throttled,
                format!("{label} is throttling token requests (429){said}; patless backs off"),
            ),
            (500..=599, _) => (
                ErrorClass::ServerError,
                format!("{label} failed (HTTP {status}){said}; patless retries"),
            ),
            (_, Source::Imds { .. }) => (
                ErrorClass::BadResponse,
                format!(
                    "{label} answered HTTP {status}{said}, not a token: is patless running on an \
                     Azure VM or scale set? Off Azure, something else (a network filter or proxy) \
                     answers at this address; IMDS itself refuses requests relayed by a proxy"
                ),
            ),
            _ => (
                ErrorClass::BadResponse,
                format!("{label} answered HTTP {status}{said}, not a token"),
            ),
        }
    }

    /// The 400 of an identity the platform does not know here.
    fn not_assigned(&self, label: &str, said: &str) -> (ErrorClass, String) {
        let host = self.source.host();
        match &self.id {
            Some(id) => (
                ErrorClass::InvalidClient,
                format!(
                    "{label} answered 400{said}: the user-assigned identity with {} {} is not \
                     assigned to this {host}. Assign it (portal: the {host}'s Identity → User \
                     assigned → Add), or fix {} in the profile",
                    id_key(id),
                    id_value(id),
                    id_key(id)
                ),
            ),
            None => (
                ErrorClass::NotConfigured,
                format!(
                    "{label} answered 400{said}: this {host} has no system-assigned identity. \
                     Turn it on (portal: the {host}'s Identity → System assigned → On), or set \
                     client_id, object_id or resource_id to a user-assigned identity assigned \
                     to it"
                ),
            ),
        }
    }
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<NumOrString>,
    expires_on: Option<NumOrString>,
    refresh_in: Option<NumOrString>,
}

/// Parses a success answer; `now` turns an `expires_on` (Unix seconds) into a lifetime when no
/// `expires_in` came. The error says what is wrong, never what the body holds.
fn parse_token(body: &[u8], now: SystemTime) -> Result<AccessToken, String> {
    let parsed: TokenBody = serde_json::from_slice(body)
        .map_err(|e| format!("its body is not a token response ({})", json_problem(&e)))?;
    let token = parsed
        .access_token
        .filter(|t| !t.trim().is_empty())
        .ok_or("its answer has no access_token")?;
    if let Some(tt) = &parsed.token_type {
        if !tt.eq_ignore_ascii_case("bearer") {
            return Err(format!("it returned token_type `{tt}`, expected Bearer"));
        }
    }
    let expires_in = match parsed.expires_in.as_ref().and_then(NumOrString::value) {
        Some(secs) => Duration::from_secs(secs as u64),
        None => lifetime_from_expires_on(parsed.expires_on.as_ref(), now)?,
    };
    Ok(AccessToken {
        token: Secret::new(token),
        expires_in,
        refresh_in: parsed
            .refresh_in
            .as_ref()
            .and_then(NumOrString::value)
            .map(|s| Duration::from_secs(s as u64)),
    })
}

/// The lifetime left until `expires_on` (Unix seconds), for answers without `expires_in`.
fn lifetime_from_expires_on(
    expires_on: Option<&NumOrString>,
    now: SystemTime,
) -> Result<Duration, String> {
    let on = expires_on
        .and_then(NumOrString::value)
        .ok_or("its answer has neither a valid expires_in nor expires_on")?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let on = on as u64;
    if on <= now {
        return Err(format!(
            "its token expired already (expires_on {on}, now {now}): check the clock"
        ));
    }
    Ok(Duration::from_secs(on - now))
}

/// What is wrong with a body, without quoting it (serde's messages may quote values).
fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "fields of the wrong type",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    #[serde(alias = "Message")]
    message: Option<String>,
}

/// What an error answer says, shortened and with `secret` cut out: JSON `error` /
/// `error_description` / `message`, or a short plain-text body. HTML pages say nothing useful.
fn error_detail(body: &[u8], secret: Option<&Secret>) -> Option<String> {
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => {
            let description = b
                .error_description
                .or(b.message)
                .map(|d| {
                    d.split(" Trace ID:")
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                })
                .filter(|d| !d.is_empty());
            match (b.error, description) {
                (Some(e), Some(d)) => format!("{e}: {d}"),
                (Some(e), None) => e,
                (None, Some(d)) => d,
                (None, None) => return None,
            }
        }
        Err(_) => {
            let text = std::str::from_utf8(body).ok()?.trim();
            if text.is_empty() || text.starts_with('<') || text.len() > 300 {
                return None;
            }
            text.to_string()
        }
    };
    let mut text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if let Some(s) = secret.filter(|s| !s.expose().is_empty()) {
        text = text.replace(s.expose(), "***");
    }
    if text.chars().count() > 300 {
        text = text.chars().take(300).collect::<String>() + "…";
    }
    Some(text)
}

/// The AADSTS number in an error text, if Entra's refusal was passed on.
fn aadsts_code(text: &str) -> Option<u32> {
    let at = text.find("AADSTS")?;
    let digits: String = text[at + 6..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_numbers_as_strings_or_numbers_or_expires_on() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t = parse_token(
            br#"{"access_token":"a","expires_in":"86399","expires_on":"1700086399","token_type":"Bearer","resource":"r"}"#,
            now,
        )
        .expect("strings");
        assert_eq!(t.expires_in, Duration::from_secs(86399));
        let t = parse_token(br#"{"access_token":"a","expires_in":3600}"#, now).expect("number");
        assert_eq!(t.expires_in, Duration::from_secs(3600));
        let t = parse_token(
            br#"{"access_token":"a","expires_on":"1700003600","token_type":"Bearer"}"#,
            now,
        )
        .expect("expires_on only");
        assert_eq!(t.expires_in, Duration::from_secs(3600));
        assert!(parse_token(br#"{"access_token":"a","expires_on":"1600000000"}"#, now).is_err());
        assert!(parse_token(br#"{"access_token":"a"}"#, now).is_err());
        let e = parse_token(
            br#"{"access_token":"tok-SECRET","token_type":"pop","expires_in":"1"}"#,
            now,
        )
        .err()
        .unwrap_or_default();
        assert!(!e.contains("tok-SECRET"), "{e}");
    }

    #[test]
    fn error_detail_redacts_and_shortens() {
        let s = Secret::new("hdr-secret-value");
        let d = error_detail(
            br#"{"statusCode":401,"message":"bad header hdr-secret-value"}"#,
            Some(&s),
        )
        .unwrap_or_default();
        assert_eq!(d, "bad header ***");
        assert_eq!(
            error_detail(
                br#"{"error":"invalid_request","error_description":"Identity not found"}"#,
                None
            )
            .as_deref(),
            Some("invalid_request: Identity not found")
        );
        assert_eq!(error_detail(b"<html>oops</html>", None), None);
        assert_eq!(
            aadsts_code("invalid_resource: AADSTS500011: The resource principal"),
            Some(500011)
        );
    }
}
