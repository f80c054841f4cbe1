//! `azure_developer_cli`: the token of whoever is signed in to the Azure Developer CLI (see
//! docs/credentials.md, azure_developer_cli).
//!
//! Each acquisition runs `azd auth token --output json --no-prompt --scope S [--tenant-id T]` (see
//! [`super::cli_process`] for how the process is found and run: no shell, the injected environment
//! only, 10 s) and reads `{"token","expiresOn"}`, `expiresOn` being RFC 3339.
//!
//! Not installed and not logged in (`not logged in, run \`azd auth login\``, or a bare
//! `fetching token: …`) are [`ErrorClass::NotConfigured`], so `auto` moves on to the next source;
//! an AADSTS error is passed on with a hint. A claims challenge is ignored (logged at debug).

use std::time::Duration;

use chrono::DateTime;
use serde::Deserialize;

use super::cli_process::{self, Cli, Finished};
use super::{AccessToken, BoxFuture, Credential, CredentialError};
use crate::env::Env;
use crate::secret::Secret;

/// The Azure Developer CLI's signed-in account.
pub struct AzureDeveloperCliCredential {
    tenant_id: Option<String>,
    env: Env,
    timeout: Duration,
    /// `azd auth login [--tenant-id T]`.
    login: String,
}

impl std::fmt::Debug for AzureDeveloperCliCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureDeveloperCliCredential")
            .field("tenant_id", &self.tenant_id)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Deserialize)]
struct AzdToken {
    token: Option<String>,
    #[serde(rename = "expiresOn")]
    expires_on: Option<String>,
}

impl AzureDeveloperCliCredential {
    /// Tokens from `azd`, in `tenant_id` when given, with `azd` looked up on the `PATH` of `env`.
    pub fn new(tenant_id: Option<String>, env: Env) -> Self {
        let login = match &tenant_id {
            Some(t) => format!("azd auth login --tenant-id {t}"),
            None => "azd auth login".to_string(),
        };
        AzureDeveloperCliCredential {
            tenant_id,
            env,
            timeout: cli_process::DEFAULT_TIMEOUT,
            login,
        }
    }

    /// Replaces the 10 s limit on one `azd` run (tests).
    #[doc(hidden)]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn cli(&self) -> Cli<'_> {
        Cli {
            program: "azd",
            product: "Azure Developer CLI",
            install: "https://aka.ms/azd-install",
            login: &self.login,
        }
    }

    async fn get(&self, scope: &str) -> Result<AccessToken, CredentialError> {
        let cli = self.cli();
        cli_process::check_arg(&cli, "scope", scope)?;
        let mut args = vec![
            "auth",
            "token",
            "--output",
            "json",
            "--no-prompt",
            "--scope",
            scope,
        ];
        if let Some(t) = &self.tenant_id {
            cli_process::check_arg(&cli, "tenant_id", t)?;
            args.extend(["--tenant-id", t]);
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
        if [
            "azd auth login",
            "azd login",
            "not logged in",
            "fetching token",
        ]
        .iter()
        .any(|m| lower.contains(m))
        {
            return cli.not_logged_in(&out.stderr);
        }
        cli.failed(out)
    }
}

/// Reads azd's JSON answer.
fn parse(cli: &Cli<'_>, stdout: &[u8]) -> Result<AccessToken, CredentialError> {
    let stdout = stdout.strip_prefix(b"\xef\xbb\xbf").unwrap_or(stdout);
    let answer: AzdToken =
        serde_json::from_slice(stdout).map_err(|_| cli.not_a_token("not the JSON of a token"))?;
    let token = answer
        .token
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| cli.not_a_token("no token"))?;
    let expires_at = answer
        .expires_on
        .as_deref()
        .and_then(|e| DateTime::parse_from_rfc3339(e.trim()).ok())
        .map(|t| t.timestamp())
        .ok_or_else(|| cli.not_a_token("no valid RFC 3339 expiresOn"))?;
    Ok(AccessToken {
        token: Secret::new(token),
        expires_in: cli_process::lifetime_until(cli, expires_at)?,
        refresh_in: None,
    })
}

impl Credential for AzureDeveloperCliCredential {
    fn acquire<'a>(
        &'a self,
        scope: &'a str,
        claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        if claims.is_some() {
            tracing::debug!(
                scope,
                "the Azure Developer CLI cannot pass a claims challenge here: ignored, asking azd for its token"
            );
        }
        Box::pin(self.get(scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::ErrorClass;

    fn cli() -> Cli<'static> {
        Cli {
            program: "azd",
            product: "Azure Developer CLI",
            install: "https://aka.ms/azd-install",
            login: "azd auth login",
        }
    }

    #[test]
    fn rfc3339_utc_and_offsets() {
        let at = chrono::Utc::now().timestamp() + 1200;
        let utc = DateTime::from_timestamp(at, 0)
            .expect("valid")
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let t = parse(
            &cli(),
            format!(r#"{{"token":"t","expiresOn":"{utc}"}}"#).as_bytes(),
        )
        .expect("parses");
        assert!(
            t.expires_in <= Duration::from_secs(1200) && t.expires_in > Duration::from_secs(1190)
        );
        let e = parse(
            &cli(),
            br#"{"token":"eyJx","expiresOn":"2030-01-02 03:04:05"}"#,
        )
        .expect_err("not RFC 3339");
        assert_eq!(e.class, ErrorClass::BadResponse);
        assert!(!e.message.contains("eyJ"), "{}", e.message);
    }
}
