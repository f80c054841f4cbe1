//! The device code flow (RFC 8628, at Entra's `/devicecode` and `/token` endpoints): ask Entra
//! for a code, show its message, poll the token endpoint every `interval` seconds until the person
//! has entered the code, declined, or the code expired. On `tokio::time`, so tests run it on
//! paused time.

use std::io;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::{entra_error, LoginError, Target};
use crate::credentials::entra::{content_type, parse_error, NumOrString};
use crate::error_chain::innermost;

/// How often to poll when Entra names no interval, and the least we accept.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// `slow_down` adds this to the interval.
const SLOW_DOWN: Duration = Duration::from_secs(5);
/// When Entra names no lifetime for the code.
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(900);

#[derive(Deserialize)]
struct DeviceCodeBody {
    device_code: Option<String>,
    user_code: Option<String>,
    verification_uri: Option<String>,
    expires_in: Option<NumOrString>,
    interval: Option<NumOrString>,
    message: Option<String>,
}

/// A device code Entra handed out, read from its answer.
struct DeviceCode {
    device_code: String,
    /// What to tell the person (Entra's message, else one made of the URL and the user code).
    message: String,
    interval: Duration,
    expires_in: Duration,
}

/// Asks for a device code, prints Entra's instructions to `out`, polls, stores the result.
pub(super) async fn run(
    target: &Target<'_>,
    out: &mut (dyn io::Write + Send),
) -> Result<String, LoginError> {
    let code = request_code(target).await?;
    writeln!(out, "{}", code.message).map_err(LoginError::Output)?;
    out.flush().map_err(LoginError::Output)?;
    poll(target, &code).await
}

/// POSTs to `/devicecode` and reads the answer.
async fn request_code(target: &Target<'_>) -> Result<DeviceCode, LoginError> {
    let url = target.endpoint("devicecode");
    let response = target
        .entra
        .http()
        .post(&url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&[
            ("client_id", target.client_id.as_str()),
            ("scope", target.scopes.as_str()),
        ])
        .send()
        .await
        .map_err(|e| {
            LoginError::Entra(format!("cannot reach Entra at {url}: {}", innermost(&e)))
        })?;
    let status = response.status();
    let content_type = content_type(response.headers());
    let body = response.bytes().await.map_err(|e| {
        LoginError::Entra(format!(
            "cannot read Entra's answer at {url}: {}",
            innermost(&e)
        ))
    })?;
    if !status.is_success() {
        return Err(entra_error(
            parse_error(status.as_u16(), &content_type, &body),
            false,
        ));
    }
    let parsed: DeviceCodeBody = serde_json::from_slice(&body).map_err(|_| {
        LoginError::Entra(format!(
            "Entra's device code answer ({url}) is not the expected JSON"
        ))
    })?;
    read_code(parsed)
}

/// The device code, the message and the timing in Entra's answer, with the defaults.
fn read_code(parsed: DeviceCodeBody) -> Result<DeviceCode, LoginError> {
    let device_code = parsed
        .device_code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| LoginError::Entra("Entra's device code answer has no device_code".into()))?;
    let message = parsed.message.filter(|m| !m.trim().is_empty()).unwrap_or_else(|| {
        format!(
            "To sign in, use a web browser to open the page {} and enter the code {} to authenticate.",
            parsed.verification_uri.as_deref().unwrap_or("https://microsoft.com/devicelogin"),
            parsed.user_code.as_deref().unwrap_or("(none given)")
        )
    });
    let seconds = |n: &Option<NumOrString>| {
        n.as_ref()
            .and_then(NumOrString::seconds)
            .map(Duration::from_secs)
    };
    Ok(DeviceCode {
        device_code,
        message,
        interval: seconds(&parsed.interval)
            .unwrap_or(DEFAULT_INTERVAL)
            .max(Duration::from_secs(1)),
        expires_in: seconds(&parsed.expires_in).unwrap_or(DEFAULT_EXPIRES_IN),
    })
}

/// Polls the token endpoint every interval until the person answers or the code expires.
async fn poll(target: &Target<'_>, code: &DeviceCode) -> Result<String, LoginError> {
    let mut interval = code.interval;
    let deadline = Instant::now() + code.expires_in;
    let token_url = target.endpoint("token");
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("client_id", target.client_id.as_str()),
        ("device_code", code.device_code.as_str()),
    ];
    loop {
        let next = Instant::now() + interval;
        if next > deadline {
            tokio::time::sleep_until(deadline).await;
            return Err(LoginError::CodeExpired(target.profile.to_string()));
        }
        tokio::time::sleep_until(next).await;
        match target.entra.request_token_full(&token_url, &form).await {
            Ok(token) => return target.finish(token),
            Err(e) => match e.error.as_deref() {
                Some("authorization_pending") => {}
                Some("slow_down") => interval += SLOW_DOWN,
                Some("authorization_declined") => return Err(LoginError::Declined),
                Some("expired_token") => {
                    return Err(LoginError::CodeExpired(target.profile.to_string()))
                }
                Some("bad_verification_code") => {
                    return Err(LoginError::BadVerificationCode(target.profile.to_string()))
                }
                // A blip (network, 5xx, 429) is not the person's answer: keep polling, no
                // faster than Entra asks.
                _ if e.credential.class.is_transient() => {
                    if let Some(wait) = e.credential.retry_after {
                        tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
                    }
                }
                _ => return Err(entra_error(e.credential, false)),
            },
        }
    }
}
