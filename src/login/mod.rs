//! `patless login` and `patless logout`: a person signs in once, interactively, and the refresh
//! token Entra issues is stored in the state directory ([`crate::credentials::state_dir`], one
//! file per profile) for `serve`, `token` and `check` to use through
//! [`crate::credentials::RefreshTokenCredential`]. Which kinds sign a person in is the kind table's
//! `signs_in` (`config/kinds.rs`); this module holds their flows:
//!
//! - `device_code` (`device_code.rs`): Entra shows a code, the person enters it on any device.
//! - `interactive_browser`: authorization code with PKCE (`authorize.rs`), redirected to a
//!   loopback listener on this machine (`browser.rs`), or, for a redirect URI patless cannot
//!   listen on (a web app's `https://localhost/myapp`), to an address the person pastes back
//!   (`paste.rs`). A web (confidential) app adds its client secret or certificate assertion to the
//!   code exchange, as every refresh does after it.
//!
//! Login asks for one resource — the scope of the first route that uses the profile — plus
//! `offline_access openid profile`: the refresh token it gets serves every API the app is
//! consented for. `serve` never starts an interactive flow.

mod authorize;
mod browser;
mod device_code;
mod paste;

use std::io;
use std::time::Duration;

pub use paste::PasteInput;

use authorize::Redirect;

use crate::config::{Config, Profile, ProfileKind};
use crate::credentials::entra::FullToken;
use crate::credentials::{state_dir, ClientAuth, ClientAuthFields, CredentialError, EntraClient};
use crate::env::Env;
use crate::store::{account_from_id_token, StoreError, StoredLogin, TokenStore};

/// The scopes a login adds to the resource's: a refresh token, and an id token naming the person.
const LOGIN_SCOPES: &str = "offline_access openid profile";

/// What a login may wait for, and whether it opens a browser.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// How long the browser flow waits for the redirect, or for the pasted address (default
    /// 5 min).
    pub browser_timeout: Duration,
    /// Whether to open the authorize URL in a browser (`false`: `--no-browser`, the URL is only
    /// printed).
    pub open_browser: bool,
}

impl Default for LoginOptions {
    fn default() -> Self {
        LoginOptions {
            browser_timeout: Duration::from_secs(300),
            open_browser: true,
        }
    }
}

/// Why a login or logout failed. Never holds a token or a code.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The profile is not in the config.
    #[error("no profile `{0}` in the configuration")]
    UnknownProfile(String),
    /// The profile does not sign a person in.
    #[error(
        "profile `{profile}` is of kind {kind}: `patless login` is for {} profiles",
        crate::config::kinds::sign_in_names("and")
    )]
    NotInteractive {
        /// Profile.
        profile: String,
        /// Its kind.
        kind: &'static str,
    },
    /// The token store.
    #[error("token store: {0}")]
    Store(#[from] StoreError),
    /// The HTTP client could not be built (trust roots).
    #[error("{0}")]
    Setup(String),
    /// Entra refused a request, or could not be reached.
    #[error("{0}")]
    Entra(String),
    /// The person declined on the sign-in page (device code).
    #[error("sign-in was declined: nothing was stored")]
    Declined,
    /// The device code expired before the person entered it.
    #[error("the code expired: run `patless login --profile {0}` again")]
    CodeExpired(String),
    /// Entra did not recognise the device code.
    #[error("Entra did not recognise the device code (bad_verification_code): run `patless login --profile {0}` again")]
    BadVerificationCode(String),
    /// No redirect reached the loopback listener in time.
    #[error("no sign-in answer within {secs}s: run `patless login --profile {profile}` again")]
    Timeout {
        /// Profile.
        profile: String,
        /// How long it waited.
        secs: u64,
    },
    /// The redirect's `state` is not this login's.
    #[error("the sign-in answer's state does not match this login (a stale or forged redirect): nothing was stored; run `patless login --profile {0}` again")]
    StateMismatch(String),
    /// Entra redirected with `error=…`.
    #[error("sign-in failed: {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Denied {
        /// Entra's `error`.
        error: String,
        /// Entra's `error_description`.
        description: Option<String>,
    },
    /// The redirect had neither a code nor an error.
    #[error("the sign-in redirect carried no authorization code")]
    NoCode,
    /// The pasted address is another address than the redirect URI.
    #[error("the pasted address is not the redirect URI {redirect_uri}: copy the address the browser shows after you sign in (it starts with {redirect_uri}?code=); nothing was stored; run `patless login --profile {profile}` again")]
    NotTheRedirect {
        /// Profile.
        profile: String,
        /// The redirect URI.
        redirect_uri: String,
    },
    /// The pasted text is neither an address nor a code.
    #[error("the pasted text is neither the address the browser was sent to ({redirect_uri}?code=…) nor an authorization code: nothing was stored; run `patless login --profile {profile}` again")]
    Unreadable {
        /// Profile.
        profile: String,
        /// The redirect URI.
        redirect_uri: String,
    },
    /// Stdin ended before anything was pasted.
    #[error("the input ended before the redirected address was pasted: nothing was stored; run `patless login --profile {0}` in a terminal")]
    InputClosed(String),
    /// Stdin could not be read.
    #[error("cannot read the pasted address: {0}")]
    Input(#[source] io::Error),
    /// The web app's secret or certificate cannot be read.
    #[error("{0}: nothing was sent to Entra")]
    ClientCredential(String),
    /// The loopback listener could not be bound.
    #[error(
        "cannot listen for the sign-in redirect on {addr}: {source} (is redirect_port in use?)"
    )]
    Listen {
        /// The address.
        addr: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Entra answered without a refresh token.
    #[error("Entra issued no refresh token (was offline_access refused?): nothing was stored")]
    NoRefreshToken,
    /// Writing the instructions failed.
    #[error("cannot write the sign-in instructions: {0}")]
    Output(#[source] io::Error),
}

/// Hints for errors a login meets that the token path does not; `confidential`: a web app's
/// login (with a secret or certificate).
fn login_hint(codes: &[u32], confidential: bool) -> Option<&'static str> {
    codes.iter().find_map(|c| match c {
        50011 | 500113 if confidential => Some(
            "register the profile's redirect_uri, exactly as written, on the app's Web platform (Authentication → Web → Redirect URIs)",
        ),
        50011 | 500113 => Some(
            "add the platform \"Mobile and desktop applications\" with redirect URI http://localhost to the app registration",
        ),
        _ => None,
    })
}

fn entra_error(e: CredentialError, confidential: bool) -> LoginError {
    let mut message = e.message;
    if let Some(h) = login_hint(&e.codes, confidential) {
        message.push_str(" — hint: ");
        message.push_str(h);
    }
    LoginError::Entra(message)
}

/// Everything one login needs.
struct Target<'a> {
    profile: &'a str,
    authority: String,
    tenant_id: String,
    client_id: String,
    /// `<resource scope> offline_access openid profile`.
    scopes: String,
    entra: EntraClient,
    store: TokenStore,
    /// A web app's secret or certificate; `None` for a public client.
    client_auth: Option<ClientAuth>,
}

impl Target<'_> {
    /// The web app's fields for one token request, read now; `None` for a public client.
    async fn client_auth_fields(&self) -> Result<Option<ClientAuthFields>, LoginError> {
        match &self.client_auth {
            None => Ok(None),
            Some(a) => a
                .fields()
                .await
                .map(Some)
                .map_err(|e| LoginError::ClientCredential(e.message)),
        }
    }

    /// `{authority}/{tenant}/oauth2/v2.0/{which}`.
    fn endpoint(&self, which: &str) -> String {
        format!("{}/{}/oauth2/v2.0/{which}", self.authority, self.tenant_id)
    }

    /// Stores the refresh token of a successful sign-in; returns the summary.
    fn finish(&self, token: FullToken) -> Result<String, LoginError> {
        let rt = token.refresh_token.ok_or(LoginError::NoRefreshToken)?;
        let account = token.id_token.as_ref().and_then(account_from_id_token);
        let login = StoredLogin::new(
            rt,
            &self.client_id,
            &self.tenant_id,
            &self.authority,
            account.clone(),
        );
        let path = self.store.save(self.profile, &login)?;
        Ok(format!(
            "signed in as {}; the refresh token is stored in {}",
            account.as_deref().unwrap_or("an unnamed account"),
            path.display()
        ))
    }
}

fn profile<'a>(config: &'a Config, name: &str) -> Result<&'a Profile, LoginError> {
    config
        .profiles
        .get(name)
        .ok_or_else(|| LoginError::UnknownProfile(name.to_string()))
}

fn store_for(config: &Config, env: &Env) -> TokenStore {
    TokenStore::new(state_dir(config.server.state_dir.as_deref(), env.as_ref()))
}

/// The resource a login asks for: the first route's that uses the profile (any consented one
/// would do), else Azure DevOps.
fn resource_scope(config: &Config, profile: &str) -> String {
    config
        .routes
        .iter()
        .find(|r| r.profile == profile)
        .map(|r| r.scope.clone())
        .unwrap_or_else(|| crate::hosts::AZURE_DEVOPS_SCOPE.to_string())
}

/// `patless login --profile P`: runs the profile's interactive flow, writing instructions to
/// `out` (and reading a pasted address from stdin when the flow needs one), and stores the
/// refresh token. Returns a one-line summary.
pub async fn login(
    config: &Config,
    profile: &str,
    env: Env,
    out: &mut (dyn io::Write + Send),
) -> Result<String, LoginError> {
    login_with(config, profile, env, out, &LoginOptions::default()).await
}

/// [`login`] with explicit options.
pub async fn login_with(
    config: &Config,
    profile: &str,
    env: Env,
    out: &mut (dyn io::Write + Send),
    options: &LoginOptions,
) -> Result<String, LoginError> {
    let mut stdin = PasteInput::stdin();
    login_with_input(config, profile, env, &mut stdin, out, options).await
}

/// How a profile signs a person in.
enum Flow {
    DeviceCode,
    AuthorizationCode(Redirect),
}

/// [`login_with`], reading a pasted address (for a redirect URI patless cannot listen on) from
/// `input` instead of stdin.
pub async fn login_with_input(
    config: &Config,
    profile_name: &str,
    env: Env,
    input: &mut PasteInput,
    out: &mut (dyn io::Write + Send),
    options: &LoginOptions,
) -> Result<String, LoginError> {
    let p = profile(config, profile_name)?;
    let (tenant_id, client_id, flow, credential) = match &p.kind {
        ProfileKind::DeviceCode {
            tenant_id,
            client_id,
        } => (tenant_id, client_id, Flow::DeviceCode, None),
        ProfileKind::InteractiveBrowser {
            tenant_id,
            client_id,
            redirect_port,
            redirect_uri,
            client_credential,
        } => (
            tenant_id,
            client_id,
            Flow::AuthorizationCode(Redirect::of(redirect_uri.as_deref(), *redirect_port)),
            client_credential.as_ref(),
        ),
        other => return Err(not_interactive(profile_name, other)),
    };
    let store = store_for(config, &env);
    // A store that cannot be written is reported before the person signs in, not after.
    store.path(profile_name)?;
    store.ensure_dir()?;
    crate::tls::install_crypto_provider();
    let http = crate::tls::entra_http_client(
        config.entra.ca_file.as_deref(),
        config.entra.request_timeout,
        config.server.egress_proxy.as_ref(),
    )
    .map_err(|e| LoginError::Setup(e.to_string()))?;
    let entra = EntraClient::new(http).with_egress(config.server.egress_proxy.as_ref());
    let client_auth = credential.map(|c| {
        ClientAuth::new(
            c,
            &entra,
            &p.authority_host,
            tenant_id,
            client_id,
            env.clone(),
        )
    });
    let target = Target {
        profile: profile_name,
        authority: p.authority_host.as_str().trim_end_matches('/').to_string(),
        tenant_id: tenant_id.clone(),
        client_id: client_id.clone(),
        scopes: format!("{} {LOGIN_SCOPES}", resource_scope(config, profile_name)),
        entra,
        store,
        client_auth,
    };
    // So is a web app's secret or certificate that cannot be read.
    target.client_auth_fields().await?;
    match flow {
        Flow::DeviceCode => device_code::run(&target, out).await,
        Flow::AuthorizationCode(Redirect::Listen { ip, port, uri }) => {
            browser::run(&target, (ip, port, &uri), env.as_ref(), out, options).await
        }
        Flow::AuthorizationCode(Redirect::Paste(uri)) => {
            paste::run(&target, &uri, env.as_ref(), out, options, input).await
        }
    }
}

fn not_interactive(profile: &str, kind: &ProfileKind) -> LoginError {
    LoginError::NotInteractive {
        profile: profile.to_string(),
        kind: kind.name(),
    }
}

/// `patless logout --profile P`: forgets the profile's stored login; whether there was one.
/// Works for a profile no longer in the config too (its file may still be there).
pub fn logout(config: &Config, profile: &str, env: Env) -> Result<bool, LoginError> {
    if let Some(p) = config.profiles.get(profile) {
        if !p.kind.spec().signs_in {
            return Err(not_interactive(profile, &p.kind));
        }
    }
    Ok(store_for(config, &env).delete(profile)?)
}
