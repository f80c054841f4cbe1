//! Each kind's keys → its settings ([`ProfileKind`]) and back, in the order of the kind table
//! (`kinds/mod.rs`). A `parse` runs after the table's required keys were found present, so it
//! reads them with `?`; a `print` writes what `patless config` shows, secrets redacted.

use url::Url;

use crate::config::check::{secret_source, Errors};
use crate::config::effective::redacted_ref;
use crate::config::raw::RawProfile;
use crate::config::{defaults, ManagedIdentityId, ProfileKind, SecretSource};

/// What a kind's `parse` reads: the profile as written and its tenant (the profile's, else
/// `[entra] tenant_id`).
pub(in crate::config) struct Settings<'a> {
    /// The profile as written.
    pub(in crate::config) raw: &'a RawProfile,
    /// The profile's `tenant_id`, else `[entra]`'s.
    pub(in crate::config) tenant_id: Option<String>,
    /// `profiles.NAME`.
    pub(in crate::config) key: &'a str,
    pub(in crate::config) errs: &'a mut Errors,
}

impl Settings<'_> {
    /// Records that the profile's `key` is wrong.
    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errs.add(format!("{}.{key}", self.key), message);
    }
}

pub(super) fn parse_client_secret(s: &mut Settings<'_>) -> Option<ProfileKind> {
    Some(ProfileKind::ClientSecret {
        tenant_id: s.tenant_id.clone()?,
        client_id: s.raw.client_id.clone()?,
        client_secret: secret_source(s.raw.client_secret.as_ref()?),
    })
}

pub(super) fn print_client_secret(kind: &ProfileKind, raw: &mut RawProfile) {
    if let ProfileKind::ClientSecret {
        tenant_id,
        client_id,
        client_secret,
    } = kind
    {
        raw.tenant_id = Some(tenant_id.clone());
        raw.client_id = Some(client_id.clone());
        raw.client_secret = Some(redacted_ref(client_secret));
    }
}

pub(super) fn parse_client_certificate(s: &mut Settings<'_>) -> Option<ProfileKind> {
    let p = s.raw;
    Some(ProfileKind::ClientCertificate {
        tenant_id: s.tenant_id.clone()?,
        client_id: p.client_id.clone()?,
        certificate: p.certificate.clone()?,
        certificate_key: p.certificate_key.clone(),
        certificate_password: p.certificate_password.as_ref().map(secret_source),
        send_certificate_chain: p
            .send_certificate_chain
            .unwrap_or(defaults::SEND_CERTIFICATE_CHAIN),
    })
}

pub(super) fn print_client_certificate(kind: &ProfileKind, raw: &mut RawProfile) {
    if let ProfileKind::ClientCertificate {
        tenant_id,
        client_id,
        certificate,
        certificate_key,
        certificate_password,
        send_certificate_chain,
    } = kind
    {
        raw.tenant_id = Some(tenant_id.clone());
        raw.client_id = Some(client_id.clone());
        raw.certificate = Some(certificate.clone());
        raw.certificate_key = certificate_key.clone();
        raw.certificate_password = certificate_password.as_ref().map(redacted_ref);
        raw.send_certificate_chain = Some(*send_certificate_chain);
    }
}

/// At most one user-assigned identity id (none: the system-assigned identity), and an IMDS base
/// URL if the default address does not reach it.
pub(super) fn parse_managed_identity(s: &mut Settings<'_>) -> Option<ProfileKind> {
    let p = s.raw;
    let ids: Vec<ManagedIdentityId> = [
        p.client_id.clone().map(ManagedIdentityId::ClientId),
        p.object_id.clone().map(ManagedIdentityId::ObjectId),
        p.resource_id.clone().map(ManagedIdentityId::ResourceId),
    ]
    .into_iter()
    .flatten()
    .collect();
    if ids.len() > 1 {
        s.error(
            "client_id",
            "set at most one of client_id, object_id, resource_id (none: the system-assigned identity)",
        );
    }
    let endpoint = match &p.endpoint {
        None => None,
        Some(e) => match Url::parse(e) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
            _ => {
                s.error(
                    "endpoint",
                    format!(
                        "`{e}`: expected the IMDS base URL, such as \"http://169.254.169.254\""
                    ),
                );
                None
            }
        },
    };
    Some(ProfileKind::ManagedIdentity {
        id: ids.into_iter().next(),
        endpoint,
    })
}

pub(super) fn print_managed_identity(kind: &ProfileKind, raw: &mut RawProfile) {
    if let ProfileKind::ManagedIdentity { id, endpoint } = kind {
        match id {
            Some(ManagedIdentityId::ClientId(v)) => raw.client_id = Some(v.clone()),
            Some(ManagedIdentityId::ObjectId(v)) => raw.object_id = Some(v.clone()),
            Some(ManagedIdentityId::ResourceId(v)) => raw.resource_id = Some(v.clone()),
            None => {}
        }
        raw.endpoint = endpoint
            .as_ref()
            .map(|u| u.as_str().trim_end_matches('/').to_string());
    }
}

pub(super) fn parse_workload_identity(s: &mut Settings<'_>) -> Option<ProfileKind> {
    Some(ProfileKind::WorkloadIdentity {
        tenant_id: s.tenant_id.clone(),
        client_id: s.raw.client_id.clone(),
        token_file: s.raw.token_file.clone(),
    })
}

pub(super) fn print_workload_identity(kind: &ProfileKind, raw: &mut RawProfile) {
    if let ProfileKind::WorkloadIdentity {
        tenant_id,
        client_id,
        token_file,
    } = kind
    {
        raw.tenant_id = tenant_id.clone();
        raw.client_id = client_id.clone();
        raw.token_file = token_file.clone();
    }
}

pub(super) fn parse_azure_pipelines(s: &mut Settings<'_>) -> Option<ProfileKind> {
    let p = s.raw;
    Some(ProfileKind::AzurePipelines {
        tenant_id: s.tenant_id.clone(),
        client_id: p.client_id.clone(),
        service_connection_id: p.service_connection_id.clone(),
        system_access_token: p
            .system_access_token
            .as_ref()
            .map(secret_source)
            .unwrap_or_else(|| SecretSource::Env(defaults::SYSTEM_ACCESS_TOKEN_ENV.into())),
    })
}

pub(super) fn print_azure_pipelines(kind: &ProfileKind, raw: &mut RawProfile) {
    if let ProfileKind::AzurePipelines {
        tenant_id,
        client_id,
        service_connection_id,
        system_access_token,
    } = kind
    {
        raw.tenant_id = tenant_id.clone();
        raw.client_id = client_id.clone();
        raw.service_connection_id = service_connection_id.clone();
        raw.system_access_token = Some(redacted_ref(system_access_token));
    }
}

pub(super) fn parse_azure_cli(s: &mut Settings<'_>) -> Option<ProfileKind> {
    Some(ProfileKind::AzureCli {
        tenant_id: s.tenant_id.clone(),
        subscription: s.raw.subscription.clone(),
    })
}

pub(super) fn print_azure_cli(kind: &ProfileKind, raw: &mut RawProfile) {
    if let ProfileKind::AzureCli {
        tenant_id,
        subscription,
    } = kind
    {
        raw.tenant_id = tenant_id.clone();
        raw.subscription = subscription.clone();
    }
}

pub(super) fn parse_azure_developer_cli(s: &mut Settings<'_>) -> Option<ProfileKind> {
    Some(ProfileKind::AzureDeveloperCli {
        tenant_id: s.tenant_id.clone(),
    })
}

pub(super) fn print_azure_developer_cli(kind: &ProfileKind, raw: &mut RawProfile) {
    if let ProfileKind::AzureDeveloperCli { tenant_id } = kind {
        raw.tenant_id = tenant_id.clone();
    }
}

pub(super) fn parse_device_code(s: &mut Settings<'_>) -> Option<ProfileKind> {
    Some(ProfileKind::DeviceCode {
        tenant_id: s.tenant_id.clone()?,
        client_id: s.raw.client_id.clone()?,
    })
}

pub(super) fn print_device_code(kind: &ProfileKind, raw: &mut RawProfile) {
    if let ProfileKind::DeviceCode {
        tenant_id,
        client_id,
    } = kind
    {
        raw.tenant_id = Some(tenant_id.clone());
        raw.client_id = Some(client_id.clone());
    }
}

pub(super) fn parse_interactive_browser(s: &mut Settings<'_>) -> Option<ProfileKind> {
    Some(ProfileKind::InteractiveBrowser {
        tenant_id: s.tenant_id.clone()?,
        client_id: s.raw.client_id.clone()?,
        redirect_port: s.raw.redirect_port,
    })
}

pub(super) fn print_interactive_browser(kind: &ProfileKind, raw: &mut RawProfile) {
    if let ProfileKind::InteractiveBrowser {
        tenant_id,
        client_id,
        redirect_port,
    } = kind
    {
        raw.tenant_id = Some(tenant_id.clone());
        raw.client_id = Some(client_id.clone());
        raw.redirect_port = *redirect_port;
    }
}

pub(super) fn parse_auto(s: &mut Settings<'_>) -> Option<ProfileKind> {
    Some(ProfileKind::Auto {
        tenant_id: s.tenant_id.clone(),
        client_id: s.raw.client_id.clone(),
    })
}

pub(super) fn print_auto(kind: &ProfileKind, raw: &mut RawProfile) {
    if let ProfileKind::Auto {
        tenant_id,
        client_id,
    } = kind
    {
        raw.tenant_id = tenant_id.clone();
        raw.client_id = client_id.clone();
    }
}
