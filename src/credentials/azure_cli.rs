//! `azure_cli`: the token of whoever is signed in to the Azure CLI (see docs/credentials.md,
//! azure_cli).
//!
//! Each acquisition runs `az account get-access-token --output json --resource R [--tenant T]
//! [--subscription S]`, where R is the scope without `/.default` (see [`super::cli_process`] for
//! how the process is found and run: no shell, the injected environment only, 10 s). The answer's
//! `expires_on` (Unix seconds, az ≥ 2.54) is preferred to `expiresOn` (naive local time).
//!
//! Not installed and not logged in are [`ErrorClass::NotConfigured`], so `auto` moves on to the
//! next source; an AADSTS error in az's stderr is passed on with a hint. az cannot send a claims
//! challenge: one is ignored (logged at debug), and the token az has is returned.

use std::time::Duration;

use chrono::{Local, LocalResult, NaiveDateTime, TimeZone as _};
use serde::Deserialize;

use super::cli_process::{self, Cli, Finished};
use super::entra::NumOrString;
use super::{AccessToken, BoxFuture, Credential, CredentialError, ErrorClass};
use crate::env::Env;
use crate::secret::Secret;

/// The Azure CLI's signed-in account.
pub struct AzureCliCredential {
    tenant_id: Option<String>,
    subscription: Option<String>,
    env: Env,
    timeout: Duration,
    /// `az login [--tenant T]`.
    login: String,
}

impl std::fmt::Debug for AzureCliCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureCliCredential")
            .field("tenant_id", &self.tenant_id)
            .field("subscription", &self.subscription)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Deserialize)]
struct AzToken {
    #[serde(rename = "accessToken")]
    access_token: Option<String>,
    expires_on: Option<NumOrString>,
    #[serde(rename = "expiresOn")]
    expires_on_local: Option<String>,
    #[serde(rename = "tokenType")]
    token_type: Option<String>,
}

impl AzureCliCredential {
    /// Tokens from `az`, in `tenant_id` and `subscription` when given (else az's defaults), with
    /// `az` looked up on the `PATH` of `env`.
    pub fn new(tenant_id: Option<String>, subscription: Option<String>, env: Env) -> Self {
        let login = match &tenant_id {
            Some(t) => format!("az login --tenant {t}"),
            None => "az login".to_string(),
        };
        AzureCliCredential {
            tenant_id,
            subscription,
            env,
            timeout: cli_process::DEFAULT_TIMEOUT,
            login,
        }
    }

    /// Replaces the 10 s limit on one `az` run (tests).
    #[doc(hidden)]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn cli(&self) -> Cli<'_> {
        Cli {
            program: "az",
            product: "Azure CLI",
            install: "https://aka.ms/installazurecli",
            login: &self.login,
        }
    }

    async fn get(&self, scope: &str) -> Result<AccessToken, CredentialError> {
        let cli = self.cli();
        // az wants the resource; a trailing `/` before `/.default` is part of it.
        let resource = scope.strip_suffix("/.default").unwrap_or(scope);
        cli_process::check_arg(&cli, "scope", resource)?;
        let mut args = vec![
            "account",
            "get-access-token",
            "--output",
            "json",
            "--resource",
            resource,
        ];
        if let Some(t) = &self.tenant_id {
            cli_process::check_arg(&cli, "tenant_id", t)?;
            args.extend(["--tenant", t]);
        }
        if let Some(s) = &self.subscription {
            cli_process::check_arg(&cli, "subscription", s)?;
            args.extend(["--subscription", s]);
        }
        let out = cli.fetch(&args, self.env.as_ref(), self.timeout).await?;
        if out.code != Some(0) {
            return Err(self.failure(&out, scope));
        }
        parse(&cli, &out.stdout)
    }

    fn failure(&self, out: &Finished, scope: &str) -> CredentialError {
        let cli = self.cli();
        if let Some(e) = cli.common_failure(out, scope) {
            return e;
        }
        let lower = out.stderr.to_ascii_lowercase();
        if lower.contains("az login") {
            return cli.not_logged_in(&out.stderr);
        }
        if let Some(s) = &self.subscription {
            if lower.contains("subscription") && lower.contains("not found") {
                return CredentialError::new(
                    ErrorClass::NotConfigured,
                    format!(
                        "the Azure CLI does not know subscription `{s}`: check the profile's \
                         `subscription` (`az account list` shows the ones it knows)"
                    ),
                );
            }
        }
        cli.failed(out)
    }
}

/// Reads az's JSON answer.
fn parse(cli: &Cli<'_>, stdout: &[u8]) -> Result<AccessToken, CredentialError> {
    let stdout = stdout.strip_prefix(b"\xef\xbb\xbf").unwrap_or(stdout);
    let answer: AzToken =
        serde_json::from_slice(stdout).map_err(|_| cli.not_a_token("not the JSON of a token"))?;
    let token = answer
        .access_token
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| cli.not_a_token("no accessToken"))?;
    if let Some(tt) = &answer.token_type {
        if !tt.eq_ignore_ascii_case("bearer") {
            return Err(cli.not_a_token(&format!(
                "tokenType `{}`, expected Bearer",
                tt.escape_debug()
            )));
        }
    }
    let expires_at = answer
        .expires_on
        .as_ref()
        .and_then(NumOrString::value)
        .map(|v| v as i64)
        .or_else(|| answer.expires_on_local.as_deref().and_then(local_epoch))
        .ok_or_else(|| cli.not_a_token("no valid expires_on or expiresOn"))?;
    Ok(AccessToken {
        token: Secret::new(token),
        expires_in: cli_process::lifetime_until(cli, expires_at)?,
        refresh_in: None,
    })
}

/// `2030-01-02 03:04:05.000000` in the machine's time zone, as Unix seconds.
fn local_epoch(text: &str) -> Option<i64> {
    let naive = NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S%.f").ok()?;
    match Local.from_local_datetime(&naive) {
        LocalResult::Single(t) => Some(t.timestamp()),
        // The hour repeated when clocks go back: the earlier reading expires sooner, so is safe.
        LocalResult::Ambiguous(early, _) => Some(early.timestamp()),
        // The hour skipped when clocks go forward: cannot be a real reading; an hour later is.
        LocalResult::None => Local
            .from_local_datetime(&(naive + chrono::Duration::hours(1)))
            .earliest()
            .map(|t| t.timestamp()),
    }
}

impl Credential for AzureCliCredential {
    fn acquire<'a>(
        &'a self,
        scope: &'a str,
        claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        if claims.is_some() {
            tracing::debug!(
                scope,
                "the Azure CLI cannot pass a claims challenge: ignored, asking az for its token"
            );
        }
        Box::pin(self.get(scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Cli<'static> {
        Cli {
            program: "az",
            product: "Azure CLI",
            install: "https://aka.ms/installazurecli",
            login: "az login",
        }
    }

    #[test]
    fn local_time_with_and_without_fraction() {
        let now = Local::now();
        let text = now.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
        assert_eq!(local_epoch(&text), Some(now.timestamp()));
        let text = now.format("%Y-%m-%d %H:%M:%S").to_string();
        assert_eq!(local_epoch(&text), Some(now.timestamp()));
        assert_eq!(local_epoch("2030-01-02T03:04:05Z"), None);
    }

    #[test]
    fn expires_on_is_preferred_and_may_be_a_string() {
        let soon = chrono::Utc::now().timestamp() + 600;
        let body = format!(
            r#"{{"accessToken":"t","expires_on":"{soon}","expiresOn":"1999-01-01 00:00:00.000000","tokenType":"Bearer"}}"#
        );
        let t = parse(&cli(), body.as_bytes()).expect("parses");
        assert!(
            t.expires_in <= Duration::from_secs(600) && t.expires_in > Duration::from_secs(590)
        );
        assert_eq!(t.token.expose(), "t");
    }

    #[test]
    fn bad_answers_say_so_without_the_token() {
        for body in [
            &b"Hello"[..],
            br#"{"accessToken":"eyJsecret"}"#,
            br#"{"expires_on":1}"#,
            br#"{"accessToken":"eyJsecret","expires_on":4102444800,"tokenType":"pop"}"#,
        ] {
            let e = parse(&cli(), body).expect_err("refused");
            assert_eq!(e.class, ErrorClass::BadResponse);
            assert!(
                e.message
                    .starts_with("az printed something that is not a token"),
                "{}",
                e.message
            );
            assert!(!e.message.contains("eyJ"), "{}", e.message);
        }
        let e = parse(&cli(), br#"{"accessToken":"x","expires_on":1000}"#).expect_err("expired");
        assert_eq!(e.class, ErrorClass::BadResponse);
        assert!(e.message.contains("expired"), "{}", e.message);
    }
}
