//! The credential factory: a profile → its credential, with a description of where its tokens
//! come from (for logs and `patless check`). [`build`] finds the constructor in the kind table
//! (`config/kinds.rs`); the constructors below are the ones that table names, one per kind.

use std::sync::Arc;

use super::{
    capabilities, AccessToken, AutoCredential, AzureCliCredential, AzureDeveloperCliCredential,
    AzurePipelinesCredential, BoxFuture, ClientAuth, ClientCertificateCredential,
    ClientSecretCredential, Credential, CredentialContext, CredentialError, ErrorClass,
    ManagedIdentityCredential, RefreshTokenCredential, WorkloadIdentityCredential,
};
use crate::config::{Profile, ProfileKind};
use crate::env::{non_empty, Environment};

/// Says where a profile's tokens come from (what `auto` chose, once it chose). Never a secret.
pub type SourceFn = Arc<dyn Fn() -> String + Send + Sync>;

/// A profile's credential, with a description of where its tokens come from (logs and `check`).
pub struct Built {
    /// The credential.
    pub credential: Arc<dyn Credential>,
    /// Where its tokens come from, or (for `auto`) why nothing was found.
    pub source: SourceFn,
}

/// Builds the credential of a profile (with its client capabilities, if it declares any).
pub fn build(profile: &Profile, ctx: &CredentialContext) -> Built {
    let spec = profile.kind.spec();
    let built = (spec.build)(profile, ctx).unwrap_or_else(|| {
        unconfigured_because(format!(
            "profile `{}`: the constructor of kind {} was handed other settings (a wrong entry in \
             the kind table)",
            profile.name, spec.name
        ))
    });
    if profile.client_capabilities.is_empty() {
        return built;
    }
    let caps = profile.client_capabilities.join(", ");
    let source = built.source;
    Built {
        credential: Arc::new(capabilities::WithCapabilities::new(
            built.credential,
            profile.client_capabilities.clone(),
        )),
        source: Arc::new(move || format!("{}; client capabilities: {caps}", source())),
    }
}

fn fixed(text: String) -> SourceFn {
    Arc::new(move || text.clone())
}

/// A profile whose settings are incomplete once the environment is consulted (say
/// `workload_identity` outside a pod with the webhook): every acquisition explains what is missing.
#[derive(Debug)]
pub struct Unconfigured {
    message: String,
}

impl Credential for Unconfigured {
    fn acquire<'a>(
        &'a self,
        _scope: &'a str,
        _claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        let err = CredentialError::new(ErrorClass::NotConfigured, self.message.clone());
        Box::pin(async move { Err(err) })
    }
}

fn unconfigured_because(message: String) -> Built {
    Built {
        source: fixed(message.clone()),
        credential: Arc::new(Unconfigured { message }),
    }
}

/// The credential of a profile that lacks settings: each `(missing, key, environment variable)`
/// that is missing is named, with where it could come from.
fn unconfigured(profile: &Profile, wanted: &[(bool, &str, &str)]) -> Built {
    let list = wanted
        .iter()
        .filter(|(missing, _, _)| *missing)
        .map(|(_, key, env)| format!("{key} (config) or {env} (environment)"))
        .collect::<Vec<_>>()
        .join(", ");
    unconfigured_because(format!(
        "profile `{}` (kind {}) is missing {list}",
        profile.name,
        profile.kind.name()
    ))
}

/// The first of the configured value and the environment variable.
fn or_env(value: &Option<String>, env: &dyn Environment, name: &str) -> Option<String> {
    value
        .clone()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| non_empty(env, name))
}

pub(crate) fn client_secret(profile: &Profile, ctx: &CredentialContext) -> Option<Built> {
    let ProfileKind::ClientSecret {
        tenant_id,
        client_id,
        client_secret,
    } = &profile.kind
    else {
        return None;
    };
    Some(Built {
        source: fixed(format!(
            "client secret of app {client_id} in tenant {tenant_id} ({client_secret:?})"
        )),
        credential: Arc::new(ClientSecretCredential::new(
            ctx.entra.clone(),
            profile.authority_host.clone(),
            tenant_id.clone(),
            client_id.clone(),
            client_secret.clone(),
            ctx.env.clone(),
        )),
    })
}

pub(crate) fn client_certificate(profile: &Profile, ctx: &CredentialContext) -> Option<Built> {
    let ProfileKind::ClientCertificate {
        tenant_id,
        client_id,
        certificate,
        certificate_key,
        certificate_password,
        send_certificate_chain,
    } = &profile.kind
    else {
        return None;
    };
    let chain = if *send_certificate_chain {
        ", chain sent (x5c)"
    } else {
        ""
    };
    Some(Built {
        source: fixed(format!(
            "certificate {} of app {client_id} in tenant {tenant_id}{chain}",
            certificate.display(),
        )),
        credential: Arc::new(
            ClientCertificateCredential::new(
                ctx.entra.clone(),
                profile.authority_host.clone(),
                tenant_id.clone(),
                client_id.clone(),
                certificate.clone(),
                certificate_password.clone(),
                *send_certificate_chain,
                ctx.env.clone(),
            )
            .with_key_file(certificate_key.clone()),
        ),
    })
}

pub(crate) fn managed_identity(profile: &Profile, ctx: &CredentialContext) -> Option<Built> {
    let ProfileKind::ManagedIdentity { id, endpoint } = &profile.kind else {
        return None;
    };
    let mi = ManagedIdentityCredential::new(
        ctx.entra.http().clone(),
        id.clone(),
        endpoint.clone(),
        ctx.env.clone(),
        &ctx.arc,
    );
    Some(Built {
        source: fixed(mi.describe()),
        credential: Arc::new(mi),
    })
}

/// Tenant, app and token file from the profile, else from the variables the workload identity
/// webhook sets in the pod.
pub(crate) fn workload_identity(profile: &Profile, ctx: &CredentialContext) -> Option<Built> {
    let ProfileKind::WorkloadIdentity {
        tenant_id,
        client_id,
        token_file,
    } = &profile.kind
    else {
        return None;
    };
    let env = ctx.env.as_ref();
    let t = or_env(tenant_id, env, "AZURE_TENANT_ID");
    let c = or_env(client_id, env, "AZURE_CLIENT_ID");
    let f = token_file
        .clone()
        .or_else(|| non_empty(env, "AZURE_FEDERATED_TOKEN_FILE").map(Into::into));
    let (Some(t), Some(c), Some(f)) = (&t, &c, &f) else {
        return Some(unconfigured(
            profile,
            &[
                (t.is_none(), "tenant_id", "AZURE_TENANT_ID"),
                (c.is_none(), "client_id", "AZURE_CLIENT_ID"),
                (f.is_none(), "token_file", "AZURE_FEDERATED_TOKEN_FILE"),
            ],
        ));
    };
    Some(Built {
        source: fixed(format!(
            "workload identity: app {c} in tenant {t}, federated token from {}",
            f.display()
        )),
        credential: Arc::new(WorkloadIdentityCredential::new(
            ctx.entra.clone(),
            profile.authority_host.clone(),
            t.clone(),
            c.clone(),
            f.clone(),
        )),
    })
}

/// Tenant, app and service connection from the profile, else from the environment
/// (`AZURESUBSCRIPTION_*`); the OIDC request URI from the pipeline agent.
pub(crate) fn azure_pipelines(profile: &Profile, ctx: &CredentialContext) -> Option<Built> {
    let ProfileKind::AzurePipelines {
        tenant_id,
        client_id,
        service_connection_id,
        system_access_token,
    } = &profile.kind
    else {
        return None;
    };
    let env = ctx.env.as_ref();
    let t = or_env(tenant_id, env, "AZURESUBSCRIPTION_TENANT_ID");
    let c = or_env(client_id, env, "AZURESUBSCRIPTION_CLIENT_ID");
    let sc_env = "AZURESUBSCRIPTION_SERVICE_CONNECTION_ID";
    let sc = or_env(service_connection_id, env, sc_env);
    let uri = non_empty(env, "SYSTEM_OIDCREQUESTURI");
    let (Some(t), Some(c), Some(sc), Some(uri)) = (&t, &c, &sc, &uri) else {
        return Some(unconfigured(
            profile,
            &[
                (t.is_none(), "tenant_id", "AZURESUBSCRIPTION_TENANT_ID"),
                (c.is_none(), "client_id", "AZURESUBSCRIPTION_CLIENT_ID"),
                (sc.is_none(), "service_connection_id", sc_env),
                (
                    uri.is_none(),
                    "the pipeline agent's",
                    "SYSTEM_OIDCREQUESTURI (is this an Azure Pipelines job?)",
                ),
            ],
        ));
    };
    Some(Built {
        source: fixed(format!(
            "Azure Pipelines service connection {sc}: app {c} in tenant {t}"
        )),
        credential: Arc::new(AzurePipelinesCredential::new(
            ctx.entra.clone(),
            profile.authority_host.clone(),
            t.clone(),
            c.clone(),
            sc.clone(),
            uri.clone(),
            system_access_token.clone(),
            ctx.env.clone(),
        )),
    })
}

pub(crate) fn azure_cli(profile: &Profile, ctx: &CredentialContext) -> Option<Built> {
    let ProfileKind::AzureCli {
        tenant_id,
        subscription,
    } = &profile.kind
    else {
        return None;
    };
    let tenant = tenant_id
        .as_ref()
        .map(|t| format!(", tenant {t}"))
        .unwrap_or_default();
    let subscription_text = subscription
        .as_ref()
        .map(|s| format!(", subscription {s}"))
        .unwrap_or_default();
    Some(Built {
        source: fixed(format!(
            "Azure CLI (`az account get-access-token`{tenant}{subscription_text})"
        )),
        credential: Arc::new(AzureCliCredential::new(
            tenant_id.clone(),
            subscription.clone(),
            ctx.env.clone(),
        )),
    })
}

pub(crate) fn azure_developer_cli(profile: &Profile, ctx: &CredentialContext) -> Option<Built> {
    let ProfileKind::AzureDeveloperCli { tenant_id } = &profile.kind else {
        return None;
    };
    let tenant = tenant_id
        .as_ref()
        .map(|t| format!(", tenant {t}"))
        .unwrap_or_default();
    Some(Built {
        source: fixed(format!("Azure Developer CLI (`azd auth token`{tenant})")),
        credential: Arc::new(AzureDeveloperCliCredential::new(
            tenant_id.clone(),
            ctx.env.clone(),
        )),
    })
}

/// `device_code` and `interactive_browser`: after `patless login`, the stored refresh token (with
/// a web app's secret or certificate).
pub(crate) fn stored_login(profile: &Profile, ctx: &CredentialContext) -> Option<Built> {
    let (tenant_id, client_id, credential) = match &profile.kind {
        ProfileKind::DeviceCode {
            tenant_id,
            client_id,
        } => (tenant_id, client_id, None),
        ProfileKind::InteractiveBrowser {
            tenant_id,
            client_id,
            client_credential,
            ..
        } => (tenant_id, client_id, client_credential.as_ref()),
        _ => return None,
    };
    let auth = credential.map(|c| {
        ClientAuth::new(
            c,
            &ctx.entra,
            &profile.authority_host,
            tenant_id,
            client_id,
            ctx.env.clone(),
        )
    });
    let with = auth
        .as_ref()
        .map(|a| format!(", the web app's {}", a.describe()))
        .unwrap_or_default();
    Some(Built {
        source: fixed(format!(
            "{} login of app {client_id} in tenant {tenant_id}: the refresh token stored under {} \
             by `patless login --profile {}`{with}",
            profile.kind.name(),
            ctx.store.dir().display(),
            profile.name
        )),
        credential: Arc::new(
            RefreshTokenCredential::new(
                ctx.entra.clone(),
                profile.authority_host.clone(),
                tenant_id.clone(),
                client_id.clone(),
                profile.name.clone(),
                ctx.store.clone(),
            )
            .with_client_auth(auth),
        ),
    })
}

/// `auto`: the chain decides at first use; its description says what it chose.
pub(crate) fn auto(profile: &Profile, ctx: &CredentialContext) -> Option<Built> {
    let ProfileKind::Auto {
        tenant_id,
        client_id,
    } = &profile.kind
    else {
        return None;
    };
    let auto = Arc::new(AutoCredential::detect(
        &profile.name,
        profile.authority_host.clone(),
        tenant_id.clone(),
        client_id.clone(),
        ctx,
    ));
    let describe = Arc::clone(&auto);
    Some(Built {
        source: Arc::new(move || describe.describe()),
        credential: auto,
    })
}
