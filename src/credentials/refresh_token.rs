//! `device_code` and `interactive_browser` after `patless login`: tokens from the person's stored
//! refresh token (see docs/credentials.md, device_code and interactive_browser).
//!
//! Each acquisition reads the login from the store afresh, so a `patless login` run by another
//! process while `serve` runs is used at the next acquisition. It redeems the refresh token for
//! the asked scope (`grant_type=refresh_token`; a public client sends no secret, a web app its
//! secret or certificate assertion, [`ClientAuth`]) and saves the new refresh token Entra returns — unless the store changed meanwhile, so an older login never replaces a
//! newer one. A refresh token is bound to user and client, not to a resource: one serves every
//! API the app is consented for. `serve` never starts an interactive sign-in: when the refresh
//! token is missing, expired or revoked, the error (class `interaction_required`) says to run
//! `patless login --profile P`.

use tokio::sync::Mutex;
use url::Url;

use super::entra::{FullToken, FullTokenError};
use super::{
    AccessToken, BoxFuture, ClientAuth, Credential, CredentialError, EntraClient, ErrorClass,
};
use crate::secret::Secret;
use crate::store::{account_from_id_token, SaveOutcome, StoredLogin, TokenStore};

/// A person's stored refresh token (`device_code`, `interactive_browser`).
pub struct RefreshTokenCredential {
    entra: EntraClient,
    authority: String,
    token_url: String,
    tenant_id: String,
    client_id: String,
    profile: String,
    store: TokenStore,
    /// A web app's secret or certificate, sent with every refresh; `None` for a public client.
    client_auth: Option<ClientAuth>,
    /// Held across one redemption: refresh tokens rotate, so two scopes of the profile must not
    /// redeem the same one at once. Holds the newest login when it could not be saved.
    serial: Mutex<Option<Unsaved>>,
}

/// A rotated login the store refused to take (disk full, say): used instead of the stored one as
/// long as the store still holds the refresh token it replaced.
struct Unsaved {
    replaced: Secret,
    newest: StoredLogin,
}

impl std::fmt::Debug for RefreshTokenCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshTokenCredential")
            .field("profile", &self.profile)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("store", &self.store)
            .field("client_auth", &self.client_auth)
            .finish()
    }
}

/// Whether a refused refresh means the person must sign in again.
pub(crate) fn needs_login(e: &FullTokenError) -> bool {
    e.credential.class == ErrorClass::InteractionRequired
        || matches!(
            e.error.as_deref(),
            Some("invalid_grant" | "interaction_required" | "consent_required" | "login_required")
        )
}

impl RefreshTokenCredential {
    /// Tokens for `profile` from the login stored in `store`, for app `client_id` in `tenant_id`.
    pub fn new(
        entra: EntraClient,
        authority: Url,
        tenant_id: String,
        client_id: String,
        profile: String,
        store: TokenStore,
    ) -> Self {
        RefreshTokenCredential {
            token_url: EntraClient::token_url(&authority, &tenant_id),
            authority: authority.as_str().trim_end_matches('/').to_string(),
            entra,
            tenant_id,
            client_id,
            profile,
            store,
            client_auth: None,
            serial: Mutex::new(None),
        }
    }

    /// A web (confidential) app: `auth` goes with every refresh.
    pub fn with_client_auth(mut self, auth: Option<ClientAuth>) -> Self {
        self.client_auth = auth;
        self
    }

    fn login_hint(&self) -> String {
        format!("run `patless login --profile {}`", self.profile)
    }

    /// The stored login (as on disk) and the one to redeem (the unsaved newer one, if any).
    fn load(
        &self,
        unsaved: &mut Option<Unsaved>,
    ) -> Result<(StoredLogin, StoredLogin), CredentialError> {
        let stored = match self.store.load(&self.profile) {
            Ok(Some(l)) => l,
            Ok(None) => {
                *unsaved = None;
                return Err(CredentialError::new(
                    ErrorClass::InteractionRequired,
                    format!(
                        "no stored login for profile {}: {}",
                        self.profile,
                        self.login_hint()
                    ),
                ));
            }
            Err(e) => {
                return Err(CredentialError::new(
                    ErrorClass::NotConfigured,
                    format!("the token store of profile {}: {e}", self.profile),
                ))
            }
        };
        let use_now = match unsaved {
            Some(u) if u.replaced == stored.refresh_token => u.newest.clone(),
            _ => {
                *unsaved = None;
                stored.clone()
            }
        };
        if use_now.client_id != self.client_id
            || use_now.tenant_id != self.tenant_id
            || use_now.authority.trim_end_matches('/') != self.authority
        {
            return Err(CredentialError::new(
                ErrorClass::InteractionRequired,
                format!(
                    "the stored login of profile {} is for app {} in tenant {} at {}, but the profile now names app {} in tenant {} at {}: {}",
                    self.profile,
                    use_now.client_id,
                    use_now.tenant_id,
                    use_now.authority,
                    self.client_id,
                    self.tenant_id,
                    self.authority,
                    self.login_hint()
                ),
            ));
        }
        Ok((stored, use_now))
    }

    async fn acquire_serialised(
        &self,
        scope: &str,
        claims: Option<&str>,
    ) -> Result<AccessToken, CredentialError> {
        let mut unsaved = self.serial.lock().await;
        let (mut on_disk, mut login) = self.load(&mut unsaved)?;
        let mut reloaded = false;
        loop {
            match self.redeem(&login, scope, claims).await {
                Ok(full) => {
                    if let Some(rt) = full.refresh_token {
                        let account = full
                            .id_token
                            .as_ref()
                            .and_then(account_from_id_token)
                            .or_else(|| login.account.clone());
                        let newest = StoredLogin::new(
                            rt,
                            &self.client_id,
                            &self.tenant_id,
                            &self.authority,
                            account,
                        );
                        *unsaved = self.save_rotated(&on_disk, newest);
                    }
                    return Ok(full.access);
                }
                Err(e) if needs_login(&e) => {
                    // Another process may have rotated or replaced the login since it was read:
                    // try once more with what the store holds now.
                    if !reloaded {
                        reloaded = true;
                        let (d, l) = self.load(&mut unsaved)?;
                        if l.refresh_token != login.refresh_token {
                            on_disk = d;
                            login = l;
                            continue;
                        }
                    }
                    return Err(self.no_longer_accepted(&login, e));
                }
                Err(e) => return Err(e.credential),
            }
        }
    }

    /// One refresh token grant for `scope` (with a web app's secret or assertion).
    async fn redeem(
        &self,
        login: &StoredLogin,
        scope: &str,
        claims: Option<&str>,
    ) -> Result<FullToken, FullTokenError> {
        let scopes = format!("{scope} offline_access");
        let auth = match &self.client_auth {
            Some(a) => Some(a.fields().await?),
            None => None,
        };
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("client_id", self.client_id.as_str()),
            ("refresh_token", login.refresh_token.expose()),
            ("scope", scopes.as_str()),
        ];
        if let Some(c) = claims {
            form.push(("claims", c));
        }
        if let Some(a) = &auth {
            a.add_to(&mut form);
        }
        let mut result = self.entra.request_token_full(&self.token_url, &form).await;
        if let (Err(e), Some(a)) = (&mut result, &auth) {
            a.explain(&mut e.credential);
        }
        result
    }

    /// Stores the rotated login unless the store changed since `on_disk` was read; returns the
    /// login to keep in memory when the store could not take it.
    fn save_rotated(&self, on_disk: &StoredLogin, newest: StoredLogin) -> Option<Unsaved> {
        match self
            .store
            .save_if_unchanged(&self.profile, &on_disk.refresh_token, &newest)
        {
            Ok(SaveOutcome::Saved) => {
                tracing::debug!(profile = %self.profile, "stored the rotated refresh token");
                None
            }
            Ok(SaveOutcome::Superseded) => {
                tracing::info!(
                    profile = %self.profile,
                    "the stored login changed meanwhile (another `patless login`?): keeping it"
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    profile = %self.profile,
                    "cannot store the rotated refresh token, keeping it in memory: {e}"
                );
                Some(Unsaved {
                    replaced: on_disk.refresh_token.clone(),
                    newest,
                })
            }
        }
    }

    /// Entra refused `login` for good: the person must sign in again.
    fn no_longer_accepted(&self, login: &StoredLogin, e: FullTokenError) -> CredentialError {
        let who = login
            .account
            .as_deref()
            .map(|a| format!(" ({a})"))
            .unwrap_or_default();
        CredentialError {
            class: ErrorClass::InteractionRequired,
            message: format!(
                "the stored login of profile {}{who} is no longer accepted — {} — {}",
                self.profile,
                e.credential.message,
                self.login_hint()
            ),
            retry_after: None,
            codes: e.credential.codes,
        }
    }
}

impl Credential for RefreshTokenCredential {
    fn acquire<'a>(
        &'a self,
        scope: &'a str,
        claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        Box::pin(self.acquire_serialised(scope, claims))
    }
}
