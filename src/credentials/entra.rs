//! Talking to the Entra token endpoint, `{authority}/{tenant}/oauth2/v2.0/token` (see
//! docs/credentials.md): the form POST with `Accept: application/json`, the success body (numbers
//! may be strings), the error body (`error`, `error_codes`; the description is for people and is
//! never branched on) and a hint per AADSTS code.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{AccessToken, CredentialError, ErrorClass};
use crate::error_chain::innermost_source;
use crate::secret::Secret;

/// The HTTP client for Entra (rustls, the project's trust roots, a request timeout).
#[derive(Clone, Debug)]
pub struct EntraClient {
    http: reqwest::Client,
    /// The egress proxy the client goes through, so a failure can name it.
    egress: Option<crate::egress::EgressProxy>,
}

/// Hints for the AADSTS codes users meet most: what the code means and what to change.
pub fn hint_for(code: u32) -> Option<&'static str> {
    Some(match code {
        7000215 => "invalid client secret: check that the secret's value (not its ID) is configured",
        7000222 => "the client secret has expired: create a new one in the app registration",
        700016 | 700011 => {
            "application not found in the tenant: check client_id and tenant_id, and that the app is consented in that tenant"
        }
        90002 => "tenant not found: check tenant_id",
        70011 => "invalid scope: check the route's scope (it must end in /.default)",
        500011 => "the resource's service principal is not in the tenant: the API must be enabled or consented there",
        65001 | 90094 => "consent required: an administrator must grant consent to the application",
        70021 | 700211 | 700212 | 700213 => {
            "no federated credential matches the presented token: check issuer, subject and audience"
        }
        700027 => "client assertion signature failed: is the certificate registered on the app?",
        700024 => "client assertion outside its valid time range: check the machine's clock",
        50076 | 53003 => "MFA or Conditional Access blocked the request: it needs an interactive sign-in",
        70008 | 700082 | 50173 => "the refresh token expired or was revoked: run `patless login` again",
        7000218 => {
            "the app is a confidential client and the request carried no secret: give an interactive_browser profile the app's client_secret (or certificate), or turn on \"Allow public client flows\" in the app registration (Authentication → Advanced settings)"
        }
        700025 => {
            "the app is a public client, which must not send a secret: remove client_secret and certificate from the profile (or register the app as a web app)"
        }
        _ => return None,
    })
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<NumOrString>,
    refresh_in: Option<NumOrString>,
    // User flows only: Entra sends `refresh_token` when the scope has `offline_access`, and
    // `id_token` when it has `openid`.
    refresh_token: Option<String>,
    id_token: Option<String>,
    scope: Option<String>,
}

/// A token answer with what the user flows need besides the access token.
pub struct FullToken {
    /// The access token.
    pub access: AccessToken,
    /// The new refresh token, when `offline_access` was asked for.
    pub refresh_token: Option<Secret>,
    /// The id token (a JWT about the user), when `openid` was asked for.
    pub id_token: Option<Secret>,
    /// The scopes granted, as Entra lists them.
    pub scope: Option<String>,
}

impl std::fmt::Debug for FullToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FullToken")
            .field("access", &self.access)
            .field("refresh_token", &self.refresh_token)
            .field("id_token", &self.id_token)
            .field("scope", &self.scope)
            .finish()
    }
}

/// A refused token request with Entra's `error` value (`authorization_pending`, `slow_down`,
/// `invalid_grant`, …), which the user flows branch on.
#[derive(Debug, Clone)]
pub struct FullTokenError {
    /// Entra's `error`, when the answer was an Entra error body.
    pub error: Option<String>,
    /// The classified, explained error.
    pub credential: CredentialError,
}

impl From<CredentialError> for FullTokenError {
    fn from(credential: CredentialError) -> Self {
        FullTokenError {
            error: None,
            credential,
        }
    }
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u32>,
}

/// A number that Entra and the managed-identity endpoints may send as a JSON string.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum NumOrString {
    Num(f64),
    Str(String),
}

impl NumOrString {
    /// The value, if finite and not negative.
    pub(crate) fn value(&self) -> Option<f64> {
        let v = match self {
            NumOrString::Num(n) => *n,
            NumOrString::Str(s) => s.trim().parse::<f64>().ok()?,
        };
        (v.is_finite() && v >= 0.0).then_some(v)
    }

    /// Whole seconds.
    pub(crate) fn seconds(&self) -> Option<u64> {
        self.value().map(|v| v as u64)
    }
}

impl EntraClient {
    /// Wraps a client built by [`crate::tls::entra_http_client`].
    pub fn new(http: reqwest::Client) -> Self {
        EntraClient { http, egress: None }
    }

    /// Notes the egress proxy `http` was built with, so errors say when it was in the way.
    pub fn with_egress(mut self, egress: Option<&crate::egress::EgressProxy>) -> Self {
        self.egress = egress.cloned();
        self
    }

    /// The underlying HTTP client (other token protocols reuse it).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`
    pub fn token_url(authority: &Url, tenant: &str) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            authority.as_str().trim_end_matches('/'),
            tenant
        )
    }

    /// The client credentials grant with a client assertion (certificate, workload identity,
    /// Azure Pipelines): `client_assertion_type=…jwt-bearer` and `client_assertion=<jwt>`.
    pub async fn exchange_assertion(
        &self,
        token_url: &str,
        client_id: &str,
        scope: &str,
        assertion: &str,
        claims: Option<&str>,
    ) -> Result<AccessToken, CredentialError> {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", scope),
        ];
        if let Some(c) = claims {
            form.push(("claims", c));
        }
        self.request_token(token_url, &form).await
    }

    /// POSTs a token request and parses the answer.
    pub async fn request_token(
        &self,
        token_url: &str,
        form: &[(&str, &str)],
    ) -> Result<AccessToken, CredentialError> {
        self.request_token_full(token_url, form)
            .await
            .map(|t| t.access)
            .map_err(|e| e.credential)
    }

    /// POSTs a token request (to the token or any other Entra endpoint) and parses the answer,
    /// keeping the refresh token, the id token and Entra's `error` value.
    pub async fn request_token_full(
        &self,
        token_url: &str,
        form: &[(&str, &str)],
    ) -> Result<FullToken, FullTokenError> {
        let response = self
            .http
            .post(token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| transport_error(&e, token_url, self.egress.as_ref()))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let content_type = content_type(response.headers());
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(&e, token_url, self.egress.as_ref()))?;
        if status.is_success() {
            if looks_like_html(&content_type, &body) {
                return Err(CredentialError::new(
                    ErrorClass::BadResponse,
                    format!(
                        "Entra answered HTTP {} with an HTML page instead of a token: {NOT_ENTRA}",
                        status.as_u16()
                    ),
                )
                .into());
            }
            return parse_full(&body).map_err(FullTokenError::from);
        }
        let mut err = parse_error(status.as_u16(), &content_type, &body);
        err.retry_after = retry_after;
        Err(FullTokenError {
            error: error_name(&content_type, &body),
            credential: err,
        })
    }
}

/// An answer's `Retry-After`, when it gives whole seconds.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// An answer's `Content-Type`, lower-cased; empty when it has none.
pub(crate) fn content_type(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Entra's `error` value of an error body, if it is one.
pub fn error_name(content_type: &str, body: &[u8]) -> Option<String> {
    if !(content_type.contains("json") || body.first() == Some(&b'{')) {
        return None;
    }
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.error)
        .filter(|e| !e.is_empty())
}

fn transport_error(
    e: &reqwest::Error,
    url: &str,
    egress: Option<&crate::egress::EgressProxy>,
) -> CredentialError {
    let what = if e.is_timeout() {
        ErrorClass::Timeout
    } else {
        ErrorClass::Network
    };
    // Connecting (refused, DNS, TLS, a SYN nobody answers) and a connection that broke after the
    // request went out (reset, closed mid-answer, a stalled body) call for different checks.
    let connecting = e.is_connect();
    // reqwest's Display names the URL (no secrets: the form is in the body); walk the sources for
    // the cause (refused, reset, DNS, TLS).
    let cause = innermost_source(e).unwrap_or_default();
    let via = egress.filter(|p| url.parse::<http::Uri>().is_ok_and(|u| p.intercepts(&u)));
    let message = match (what, via) {
        (ErrorClass::Timeout, None) if connecting => format!(
            "timed out connecting to Entra at {url}: is a firewall dropping the traffic, or is an egress proxy needed (server.egress_proxy)?"
        ),
        (ErrorClass::Timeout, None) => format!("Entra did not answer in time ({url})"),
        (ErrorClass::Timeout, Some(p)) => format!(
            "Entra did not answer in time ({url}, through the egress proxy {})",
            p.authority()
        ),
        (_, None) if connecting => format!("cannot reach Entra at {url}: {cause}"),
        (_, None) => format!(
            "the connection to Entra at {url} broke before a complete answer: {cause}"
        ),
        (_, Some(p)) => format!(
            "cannot reach Entra at {url} through the egress proxy {}: {}",
            p.authority(),
            crate::egress::explain_tunnel_cause(&cause)
        ),
    };
    CredentialError::new(what, message)
}

#[cfg(test)]
fn parse_success(body: &[u8]) -> Result<AccessToken, CredentialError> {
    parse_full(body).map(|t| t.access)
}

fn parse_full(body: &[u8]) -> Result<FullToken, CredentialError> {
    let parsed: TokenBody = serde_json::from_slice(body).map_err(|e| {
        CredentialError::new(
            ErrorClass::BadResponse,
            format!("Entra answered 200 with a body that is not a token response ({e})"),
        )
    })?;
    let token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            CredentialError::new(
                ErrorClass::BadResponse,
                "Entra's answer has no access_token",
            )
        })?;
    if let Some(tt) = &parsed.token_type {
        if !tt.eq_ignore_ascii_case("bearer") {
            return Err(CredentialError::new(
                ErrorClass::BadResponse,
                format!("Entra returned token_type `{tt}`, expected Bearer"),
            ));
        }
    }
    let expires_in = parsed
        .expires_in
        .as_ref()
        .and_then(NumOrString::seconds)
        .ok_or_else(|| {
            CredentialError::new(
                ErrorClass::BadResponse,
                "Entra's answer has no valid expires_in",
            )
        })?;
    Ok(FullToken {
        access: AccessToken {
            token: Secret::new(token),
            expires_in: Duration::from_secs(expires_in),
            refresh_in: parsed
                .refresh_in
                .as_ref()
                .and_then(NumOrString::seconds)
                .map(Duration::from_secs),
        },
        refresh_token: parsed
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(Secret::new),
        id_token: parsed.id_token.filter(|t| !t.is_empty()).map(Secret::new),
        scope: parsed.scope,
    })
}

/// What an HTML answer on the token endpoint means: Entra answers JSON, always.
const NOT_ENTRA: &str = "something between patless and Entra (a proxy, a firewall, a captive portal) answered instead; check the network path and entra.authority_host";

/// An HTML page (by type, or by its first byte when the type is missing or wrong).
fn looks_like_html(content_type: &str, body: &[u8]) -> bool {
    content_type.contains("html") || body.trim_ascii_start().first() == Some(&b'<')
}

/// Turns an Entra error answer into a classified, explained error. Entra's own errors are JSON;
/// an HTML page, whatever its status, comes from something in between and is `bad_response`
/// (a 429 stays `throttled`, so its `Retry-After` reads as what it is).
pub fn parse_error(status: u16, content_type: &str, body: &[u8]) -> CredentialError {
    let parsed: Option<ErrorBody> = if content_type.contains("json") || body.first() == Some(&b'{')
    {
        serde_json::from_slice(body).ok()
    } else {
        None
    };
    let Some(parsed) = parsed.filter(|p| p.error.is_some()) else {
        return not_an_entra_error(status, content_type, body);
    };
    let error = parsed.error.unwrap_or_default();
    let codes = parsed.error_codes;
    let class = classify(status, &error, &codes);
    let mut message = format!("Entra refused the token request (HTTP {status}, {error}");
    if let Some(code) = codes.first() {
        message.push_str(&format!(", AADSTS{code}"));
    }
    message.push(')');
    if let Some(d) = parsed.error_description.as_deref().and_then(first_sentence) {
        message.push_str(": ");
        message.push_str(&d);
    }
    if let Some(h) = codes.iter().find_map(|c| hint_for(*c)) {
        message.push_str(" — hint: ");
        message.push_str(h);
    }
    CredentialError {
        class,
        message,
        retry_after: None,
        codes,
    }
}

/// An error answer without an Entra error body: an HTML page (something in between answered) or
/// a body that says nothing.
fn not_an_entra_error(status: u16, content_type: &str, body: &[u8]) -> CredentialError {
    let html = looks_like_html(content_type, body);
    let class = match status {
        429 => ErrorClass::Throttled,
        _ if html => ErrorClass::BadResponse,
        500..=599 => ErrorClass::ServerError,
        _ => ErrorClass::BadResponse,
    };
    let message = if html {
        format!("Entra answered HTTP {status} with an HTML page, not an Entra answer: {NOT_ENTRA}")
    } else {
        format!("Entra answered HTTP {status} with a body that is not an Entra error")
    };
    CredentialError::new(class, message)
}

/// The class of an Entra error body: by status, then AADSTS code and `error` value.
fn classify(status: u16, error: &str, codes: &[u32]) -> ErrorClass {
    match (status, error) {
        (429, _) => ErrorClass::Throttled,
        (500..=599, _) => ErrorClass::ServerError,
        _ if codes
            .iter()
            .any(|c| matches!(c, 50076 | 53003 | 70008 | 700082 | 50173)) =>
        {
            ErrorClass::InteractionRequired
        }
        (_, "invalid_client" | "unauthorized_client") => ErrorClass::InvalidClient,
        (_, "interaction_required" | "consent_required" | "login_required") => {
            ErrorClass::InteractionRequired
        }
        (_, "temporarily_unavailable") => ErrorClass::ServerError,
        _ if codes
            .iter()
            .any(|c| matches!(c, 700016 | 700011 | 90002 | 7000215 | 7000222)) =>
        {
            ErrorClass::InvalidClient
        }
        _ => ErrorClass::InvalidGrant,
    }
}

/// The description's first sentence ("AADSTS7000215: Invalid client secret provided. …") is
/// useful; its trace and correlation ids are noise here.
fn first_sentence(description: &str) -> Option<String> {
    let d = description
        .split(['\r', '\n'])
        .next()
        .unwrap_or_default()
        .split(" Trace ID:")
        .next()
        .unwrap_or_default()
        .trim();
    (!d.is_empty()).then(|| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_with_string_numbers() {
        let t = parse_success(br#"{"token_type":"Bearer","expires_in":"3599","refresh_in":"1800","access_token":"abc"}"#)
            .expect("parses");
        assert_eq!(t.expires_in, Duration::from_secs(3599));
        assert_eq!(t.refresh_in, Some(Duration::from_secs(1800)));
        assert_eq!(t.token.expose(), "abc");
    }

    #[test]
    fn invalid_client_gets_hint() {
        let e = parse_error(
            401,
            "application/json",
            br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Trace ID: x","error_codes":[7000215]}"#,
        );
        assert_eq!(e.class, ErrorClass::InvalidClient);
        assert!(e.message.contains("AADSTS7000215"), "{}", e.message);
        assert!(e.message.contains("not its ID"), "{}", e.message);
        assert!(!e.message.contains("Trace ID"), "{}", e.message);
    }

    #[test]
    fn html_and_throttle() {
        // An HTML page is not Entra speaking, whatever its status.
        for (status, ct, body) in [
            (502, "text/html", &b"<html>"[..]),
            (503, "text/html; charset=utf-8", b"<!DOCTYPE html><html>"),
            (400, "", b"  <html><body>blocked</body></html>"),
        ] {
            let e = parse_error(status, ct, body);
            assert_eq!(e.class, ErrorClass::BadResponse, "{status} {ct}");
            assert!(e.message.contains("HTML page"), "{}", e.message);
            assert!(
                e.message.contains(&format!("HTTP {status}")),
                "{}",
                e.message
            );
        }
        // A 5xx that is not a page (a bare 503 from a load balancer, an empty 500) is the server's.
        assert_eq!(parse_error(503, "", b"").class, ErrorClass::ServerError);
        assert_eq!(
            parse_error(500, "text/plain", b"oops").class,
            ErrorClass::ServerError
        );
        assert_eq!(parse_error(429, "", b"").class, ErrorClass::Throttled);
        assert_eq!(
            parse_error(429, "text/html", b"<html>slow down</html>").class,
            ErrorClass::Throttled
        );
        assert_eq!(
            parse_error(
                400,
                "application/json",
                br#"{"error":"invalid_grant","error_codes":[50076]}"#
            )
            .class,
            ErrorClass::InteractionRequired
        );
        assert!(parse_success(b"{\"access_token\": ").is_err());
    }
}
