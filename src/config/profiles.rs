//! `[profiles.NAME]`: a credential of one kind with its settings. What each kind requires and
//! accepts is in the kind table (`config/kinds.rs`); this file checks a profile against its entry,
//! adds the implicit `auto` profile, and prints profiles back for `patless config`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use url::Url;

use super::check::{authority, tenant, Errors};
use super::kinds::{self, KindSpec, Settings, KINDS};
use super::raw::{Presence, RawConfig, RawProfile};
use super::{defaults, suggest, EntraConfig, SecretSource, ServerConfig};

/// A credential profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Its name (`[profiles.NAME]`).
    pub name: String,
    /// Authority host for this profile.
    pub authority_host: Url,
    /// What kind of credential, with its settings.
    pub kind: ProfileKind,
    /// Client capabilities (`cp1`) declared in every token request, merged into claims.
    pub client_capabilities: Vec<String>,
}

/// A user-assigned managed identity, by one of its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagedIdentityId {
    /// Client (application) id.
    ClientId(String),
    /// Object (principal) id.
    ObjectId(String),
    /// ARM resource id.
    ResourceId(String),
}

/// How a confidential client (a web app) proves itself when it redeems an authorization code or
/// a refresh token: the same keys, and the same semantics, as the `client_secret` and
/// `client_certificate` kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientCredential {
    /// `client_secret`.
    Secret(SecretSource),
    /// `certificate`, with its key, password and chain settings: a signed client assertion.
    Certificate(CertificateFiles),
}

/// A client certificate's settings (`certificate`, `certificate_key`, `certificate_password`,
/// `send_certificate_chain`).
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateFiles {
    /// PEM (certificate + key) or PFX file, read at each use.
    pub certificate: PathBuf,
    /// The private key's PEM file, when separate.
    pub key: Option<PathBuf>,
    /// PFX (or encrypted key) password.
    pub password: Option<SecretSource>,
    /// Send `x5c`.
    pub send_chain: bool,
}

/// The credential kinds this build supports, with their validated settings. Values that default
/// from the environment (`AZURE_CLIENT_ID`, …) are `None` here and resolved when the credential is
/// built, from the injected environment. The keys, names and constructors of the kinds are in
/// [`super::KINDS`]; [`ProfileKind::spec`] leads from a variant to its entry.
#[derive(Debug, Clone, PartialEq)]
pub enum ProfileKind {
    /// Client credentials grant with a secret.
    ClientSecret {
        /// Tenant.
        tenant_id: String,
        /// Application id.
        client_id: String,
        /// The secret.
        client_secret: SecretSource,
    },
    /// Client credentials grant with a certificate-signed assertion.
    ClientCertificate {
        /// Tenant.
        tenant_id: String,
        /// Application id.
        client_id: String,
        /// PEM (certificate + key) or PFX file, read at each acquisition.
        certificate: PathBuf,
        /// The private key's PEM file, when separate.
        certificate_key: Option<PathBuf>,
        /// PFX (or encrypted key) password.
        certificate_password: Option<SecretSource>,
        /// Send `x5c`.
        send_certificate_chain: bool,
    },
    /// Managed identity (IMDS, App Service, Arc, Cloud Shell), detected from the environment.
    ManagedIdentity {
        /// A user-assigned identity, or `None` for system-assigned.
        id: Option<ManagedIdentityId>,
        /// IMDS base URL override.
        endpoint: Option<Url>,
    },
    /// Kubernetes workload identity: a federated service-account token as the assertion.
    WorkloadIdentity {
        /// Tenant (else `AZURE_TENANT_ID`).
        tenant_id: Option<String>,
        /// Application id (else `AZURE_CLIENT_ID`).
        client_id: Option<String>,
        /// Token file (else `AZURE_FEDERATED_TOKEN_FILE`).
        token_file: Option<PathBuf>,
    },
    /// Azure Pipelines OIDC service connection.
    AzurePipelines {
        /// Tenant (else `AZURESUBSCRIPTION_TENANT_ID`).
        tenant_id: Option<String>,
        /// Application id (else `AZURESUBSCRIPTION_CLIENT_ID`).
        client_id: Option<String>,
        /// Service connection id (else `AZURESUBSCRIPTION_SERVICE_CONNECTION_ID`).
        service_connection_id: Option<String>,
        /// The job's access token (default `SYSTEM_ACCESSTOKEN`).
        system_access_token: SecretSource,
    },
    /// `az account get-access-token`, run by patless.
    AzureCli {
        /// `--tenant`.
        tenant_id: Option<String>,
        /// `--subscription`.
        subscription: Option<String>,
    },
    /// `azd auth token`.
    AzureDeveloperCli {
        /// `--tenant-id`.
        tenant_id: Option<String>,
    },
    /// Device code flow at `patless login`, then the stored refresh token.
    DeviceCode {
        /// Tenant (or `organizations`/`common`).
        tenant_id: String,
        /// The public client's application id.
        client_id: String,
    },
    /// Authorization code + PKCE at `patless login` (the redirect taken on a loopback listener,
    /// or pasted by the person), then the stored refresh token.
    InteractiveBrowser {
        /// Tenant (or `organizations`/`common`).
        tenant_id: String,
        /// The application id: a public client, or a web app with `client_credential`.
        client_id: String,
        /// Loopback redirect port; `None` picks a free one (unless `redirect_uri` names one).
        redirect_port: Option<u16>,
        /// The redirect URI as written (an absolute http or https URL); `None`:
        /// `http://localhost:PORT`.
        redirect_uri: Option<String>,
        /// A web (confidential) app's secret or certificate, sent with the code exchange and
        /// every refresh; `None` for a public client.
        client_credential: Option<ClientCredential>,
    },
    /// The `auto` chain.
    Auto {
        /// Tenant (else `AZURE_TENANT_ID`).
        tenant_id: Option<String>,
        /// Client id (else `AZURE_CLIENT_ID`).
        client_id: Option<String>,
    },
}

impl ProfileKind {
    /// The kind's entry in the kind table: its name, keys and constructor.
    pub fn spec(&self) -> &'static KindSpec {
        match self {
            ProfileKind::ClientSecret { .. } => &kinds::CLIENT_SECRET,
            ProfileKind::ClientCertificate { .. } => &kinds::CLIENT_CERTIFICATE,
            ProfileKind::ManagedIdentity { .. } => &kinds::MANAGED_IDENTITY,
            ProfileKind::WorkloadIdentity { .. } => &kinds::WORKLOAD_IDENTITY,
            ProfileKind::AzurePipelines { .. } => &kinds::AZURE_PIPELINES,
            ProfileKind::AzureCli { .. } => &kinds::AZURE_CLI,
            ProfileKind::AzureDeveloperCli { .. } => &kinds::AZURE_DEVELOPER_CLI,
            ProfileKind::DeviceCode { .. } => &kinds::DEVICE_CODE,
            ProfileKind::InteractiveBrowser { .. } => &kinds::INTERACTIVE_BROWSER,
            ProfileKind::Auto { .. } => &kinds::AUTO,
        }
    }

    /// The kind's name, as in the config.
    pub fn name(&self) -> &'static str {
        self.spec().name
    }

    /// The client (application) id written in the config, if the kind has one and it is set.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            ProfileKind::ClientSecret { client_id, .. }
            | ProfileKind::ClientCertificate { client_id, .. }
            | ProfileKind::DeviceCode { client_id, .. }
            | ProfileKind::InteractiveBrowser { client_id, .. } => Some(client_id),
            ProfileKind::ManagedIdentity {
                id: Some(ManagedIdentityId::ClientId(c)),
                ..
            } => Some(c),
            ProfileKind::WorkloadIdentity { client_id, .. }
            | ProfileKind::AzurePipelines { client_id, .. }
            | ProfileKind::Auto { client_id, .. } => client_id.as_deref(),
            _ => None,
        }
    }
}

/// Validates every profile, and adds the `auto` profile when something uses it without it being
/// written down: the host routes or the identity endpoint (as the default profile when no
/// profile, or several, are defined and `server.default_profile` is not set), or a route.
pub(super) fn validate(
    errs: &mut Errors,
    raw: &RawConfig,
    server: &ServerConfig,
    entra: &EntraConfig,
) -> BTreeMap<String, Profile> {
    let mut profiles = BTreeMap::new();
    for (name, p) in &raw.profiles {
        if let Some(profile) = profile(errs, name, p, entra) {
            profiles.insert(name.clone(), profile);
        }
    }
    let default_profile = &server.default_profile;
    let implicit = defaults::DEFAULT_PROFILE;
    let identity_wants_it = raw
        .identity_endpoint
        .as_ref()
        .is_some_and(|ie| ie.profile.as_deref().unwrap_or(default_profile) == implicit);
    let a_route_names_it = raw
        .routes
        .iter()
        .any(|r| r.profile.as_deref() == Some(implicit));
    let host_routes_use_it = server.host_routes && default_profile == implicit;
    if (host_routes_use_it || identity_wants_it || a_route_names_it)
        && !raw.profiles.contains_key(implicit)
    {
        profiles.insert(
            implicit.into(),
            Profile {
                name: implicit.into(),
                authority_host: entra.authority_host.clone(),
                kind: ProfileKind::Auto {
                    tenant_id: entra.tenant_id.clone(),
                    client_id: None,
                },
                client_capabilities: Vec::new(),
            },
        );
    }
    if server.host_routes
        && !raw.profiles.contains_key(default_profile)
        && default_profile != implicit
    {
        errs.add(
            "server.default_profile",
            format!("profile `{default_profile}` is not defined under [profiles]"),
        );
    }
    profiles
}

/// One profile: keys no kind knows, the authority and tenant, the kind and its keys (through the
/// kind table), and the client capabilities.
fn profile(errs: &mut Errors, name: &str, p: &RawProfile, entra: &EntraConfig) -> Option<Profile> {
    let key = format!("profiles.{name}");
    let before = errs.count();
    for extra in p.other.keys() {
        let keys = ["kind", "tenant_id", "authority_host", "client_capabilities"];
        let kind_keys = p.kind_keys().map(|(k, _)| k);
        let message = match suggest::nearest(extra, keys.into_iter().chain(kind_keys)) {
            Some(near) => format!("unknown key for any profile kind; did you mean `{near}`?"),
            None => "unknown key for any profile kind".to_string(),
        };
        errs.add(format!("{key}.{extra}"), message);
    }
    let authority_host = match &p.authority_host {
        Some(a) => authority(errs, &format!("{key}.authority_host"), a),
        None => Some(entra.authority_host.clone()),
    };
    let tenant_id = p.tenant_id.clone().or_else(|| entra.tenant_id.clone());
    if let Some(t) = &p.tenant_id {
        tenant(errs, &format!("{key}.tenant_id"), t);
    }
    let spec = spec(errs, &key, p.kind.as_deref())?;
    keys(errs, &key, spec, p, tenant_id.as_deref());
    let kind = (spec.parse)(&mut Settings {
        raw: p,
        tenant_id,
        key: &key,
        errs,
    });
    let client_capabilities = capabilities(errs, &key, spec, p);
    if errs.count() != before {
        return None;
    }
    Some(Profile {
        name: name.to_string(),
        authority_host: authority_host?,
        kind: kind?,
        client_capabilities,
    })
}

/// `kind`: written, and in the table.
fn spec(errs: &mut Errors, key: &str, kind: Option<&str>) -> Option<&'static KindSpec> {
    let Some(name) = kind else {
        errs.add(
            format!("{key}.kind"),
            format!("missing; expected one of {}", kinds::names()),
        );
        return None;
    };
    let spec = kinds::lookup(name);
    if spec.is_none() {
        let message = match suggest::nearest(name, KINDS.iter().map(|k| k.name)) {
            Some(near) => format!("unknown kind `{name}`; did you mean `{near}`?"),
            None => format!("unknown kind `{name}`; expected one of {}", kinds::names()),
        };
        errs.add(format!("{key}.kind"), message);
    }
    spec
}

/// The kind's keys: none it does not take, every one it requires (a blank text counts as missing).
fn keys(errs: &mut Errors, key: &str, spec: &KindSpec, p: &RawProfile, tenant_id: Option<&str>) {
    for (k, presence) in p.kind_keys() {
        if presence != Presence::Absent && !spec.keys().any(|own| own == k) {
            errs.add(
                format!("{key}.{k}"),
                format!(
                    "not used by kind `{}`; its keys: tenant_id, authority_host, {}",
                    spec.name,
                    spec.keys().collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    for (k, expected) in spec.required {
        let given = match *k {
            "tenant_id" => tenant_id.is_some_and(|t| !t.trim().is_empty()),
            _ => p.presence(k) == Presence::Given,
        };
        if !given {
            errs.add(
                format!("{key}.{k}"),
                format!("missing; expected {expected}"),
            );
        }
    }
}

/// `client_capabilities`: only for kinds that send claims; each a plain name such as `cp1`.
fn capabilities(errs: &mut Errors, key: &str, spec: &KindSpec, p: &RawProfile) -> Vec<String> {
    let client_capabilities = p.client_capabilities.clone().unwrap_or_default();
    if client_capabilities.is_empty() {
        return client_capabilities;
    }
    let k = format!("{key}.client_capabilities");
    if !spec.sends_claims {
        errs.add(
            k,
            format!(
                "kind `{}` cannot send claims to Entra, so it cannot declare client capabilities",
                spec.name
            ),
        );
    } else if let Some(bad) = client_capabilities
        .iter()
        .find(|c| c.is_empty() || !c.chars().all(|ch| ch.is_ascii_alphanumeric()))
    {
        errs.add(
            k,
            format!("`{bad}` is not a capability name; expected e.g. [\"cp1\"] (CAE)"),
        );
    }
    client_capabilities
}

impl Profile {
    /// The profile as `patless config` prints it: its kind's keys in effect, secrets redacted.
    pub(super) fn to_raw(&self) -> RawProfile {
        let mut raw = RawProfile {
            kind: Some(self.kind.name().to_string()),
            authority_host: Some(
                self.authority_host
                    .as_str()
                    .trim_end_matches('/')
                    .to_string(),
            ),
            client_capabilities: (!self.client_capabilities.is_empty())
                .then(|| self.client_capabilities.clone()),
            ..Default::default()
        };
        (self.kind.spec().print)(&self.kind, &mut raw);
        raw
    }
}
