//! Each kind's keys → its settings ([`ProfileKind`]) and back, in the order of the kind table
//! (`kinds/mod.rs`). A `parse` runs after the table's required keys were found present, so it
//! reads them with `?`; a `print` writes what `patless config` shows, secrets redacted.

use url::Url;

use crate::config::check::{secret_source, Errors};
use crate::config::effective::redacted_ref;
use crate::config::raw::RawProfile;
use crate::config::{
    defaults, CertificateFiles, ClientCredential, ManagedIdentityId, ProfileKind, SecretSource,
};

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

/// A public client (no secret) or a web app (`client_secret` or `certificate`), redirected to a
/// loopback listener or to the `redirect_uri` registered on the app.
pub(super) fn parse_interactive_browser(s: &mut Settings<'_>) -> Option<ProfileKind> {
    let redirect_uri = s.raw.redirect_uri.clone().map(|u| u.trim().to_string());
    if let Some(uri) = &redirect_uri {
        if let Err(problem) = redirect_uri_problem(uri) {
            s.error("redirect_uri", problem);
        }
        if s.raw.redirect_port.is_some() {
            s.error(
                "redirect_port",
                "set redirect_uri or redirect_port, not both (a loopback redirect_uri names its \
                 port: \"http://localhost:8400\")",
            );
        }
    }
    Some(ProfileKind::InteractiveBrowser {
        tenant_id: s.tenant_id.clone()?,
        client_id: s.raw.client_id.clone()?,
        redirect_port: s.raw.redirect_port,
        redirect_uri,
        client_credential: confidential_client(s),
    })
}

/// Why `uri` cannot be a redirect URI: it must be an absolute `http://` or `https://` URL with a
/// host, without user-info or a fragment (OAuth forbids one: the answer comes in the query).
fn redirect_uri_problem(uri: &str) -> Result<(), String> {
    let expected = "expected the absolute URL registered as the app's redirect URI, such as \
                    \"https://localhost/myapp\" or \"http://localhost:8400\"";
    let parsed =
        Url::parse(uri).map_err(|e| format!("`{uri}` is not an absolute URL ({e}); {expected}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("`{uri}`: {expected}"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "`{uri}`: a redirect URI has no user-info; {expected}"
        ));
    }
    if parsed.fragment().is_some() {
        return Err(format!(
            "`{uri}`: a redirect URI has no #fragment (Entra sends the answer in its query)"
        ));
    }
    Ok(())
}

/// A web app's `client_secret` or `certificate` (with the certificate's other keys), as the
/// `client_secret` and `client_certificate` kinds take them; `None` for a public client.
fn confidential_client(s: &mut Settings<'_>) -> Option<ClientCredential> {
    let p = s.raw;
    if p.client_secret.is_some() && p.certificate.is_some() {
        s.error(
            "client_secret",
            "set client_secret or certificate, not both (the app proves itself with one of them)",
        );
        return None;
    }
    if p.certificate.is_none() {
        let stray = [
            ("certificate_key", p.certificate_key.is_some()),
            ("certificate_password", p.certificate_password.is_some()),
            ("send_certificate_chain", p.send_certificate_chain.is_some()),
        ];
        for (key, _) in stray.into_iter().filter(|(_, set)| *set) {
            s.error(
                key,
                "only with certificate (a web app's client certificate)",
            );
        }
    }
    if let Some(secret) = &p.client_secret {
        return Some(ClientCredential::Secret(secret_source(secret)));
    }
    Some(ClientCredential::Certificate(CertificateFiles {
        certificate: p.certificate.clone()?,
        key: p.certificate_key.clone(),
        password: p.certificate_password.as_ref().map(secret_source),
        send_chain: p
            .send_certificate_chain
            .unwrap_or(defaults::SEND_CERTIFICATE_CHAIN),
    }))
}

pub(super) fn print_interactive_browser(kind: &ProfileKind, raw: &mut RawProfile) {
    if let ProfileKind::InteractiveBrowser {
        tenant_id,
        client_id,
        redirect_port,
        redirect_uri,
        client_credential,
    } = kind
    {
        raw.tenant_id = Some(tenant_id.clone());
        raw.client_id = Some(client_id.clone());
        raw.redirect_port = *redirect_port;
        raw.redirect_uri = redirect_uri.clone();
        match client_credential {
            None => {}
            Some(ClientCredential::Secret(secret)) => {
                raw.client_secret = Some(redacted_ref(secret));
            }
            Some(ClientCredential::Certificate(c)) => {
                raw.certificate = Some(c.certificate.clone());
                raw.certificate_key = c.key.clone();
                raw.certificate_password = c.password.as_ref().map(redacted_ref);
                raw.send_certificate_chain = Some(c.send_chain);
            }
        }
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
