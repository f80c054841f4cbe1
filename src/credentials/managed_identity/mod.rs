//! `managed_identity`: tokens from the Azure platform's identity endpoint, no secret configured
//! anywhere (see docs/credentials.md, managed_identity).
//!
//! The source is detected once, in [`ManagedIdentityCredential::new`], from the injected
//! environment and [`ArcAgent`]. The first row that matches wins; the order is the Azure Identity
//! SDKs', so patless picks the endpoint they would pick on the same host:
//!
//! | environment | source | request | file |
//! | --- | --- | --- | --- |
//! | `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` + `IDENTITY_SERVER_THUMBPRINT` | Service Fabric | refused: needs TLS pinned to the thumbprint | `mod.rs` |
//! | `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` | App Service, Functions, Container Apps | `GET` api-version 2019-08-01, `X-IDENTITY-HEADER` | `app_service.rs` |
//! | `MSI_ENDPOINT` + `MSI_SECRET` | Azure Machine Learning | `GET` api-version 2017-09-01, `secret` header | `azure_ml.rs` |
//! | `MSI_ENDPOINT` | Cloud Shell | `POST` form `resource=R`, `Metadata: true` | `cloud_shell.rs` |
//! | `IDENTITY_ENDPOINT` + `IMDS_ENDPOINT`, or the Arc agent installed | Azure Arc | `GET`, 401 challenge naming a key file, `GET` again with `Authorization: Basic <key>` | `arc.rs` |
//! | anything else | IMDS (VM, scale set, AKS node, pod identity) | `GET {base}/metadata/identity/oauth2/token` api-version 2018-02-01, `Metadata: true` | `imds.rs` |
//!
//! Every protocol asks for a *resource*: the scope without `/.default`. Answers carry their numbers
//! as strings, and some only `expires_on` (Unix seconds); `answer.rs` reads them, and turns
//! refusals into errors that say what to do. Within one acquisition, IMDS's 404, 410, 429 and 5xx
//! (and the others' 429 and 5xx) are retried with exponential backoff on `tokio::time` (`retry.rs`):
//! for up to 70 s once IMDS said 410 ("the identity will be ready within 70 s"), else 20 s;
//! `Retry-After` is a floor, and one that does not fit ends the acquisition with the wait attached
//! for the cache's backoff. Connection failures are not retried here: off Azure they fail at once.
//!
//! Secrets (`IDENTITY_HEADER`, `MSI_SECRET`, the Arc key) live in [`Secret`], go out in headers
//! marked sensitive, and are cut out of any error text an endpoint sends back.

mod answer;
mod app_service;
mod arc;
mod azure_ml;
mod cloud_shell;
mod imds;
mod retry;

use std::fmt;
use std::path::PathBuf;

use http::HeaderValue;
use url::Url;

use super::{AccessToken, BoxFuture, Credential, CredentialError, ErrorClass};
use crate::config::ManagedIdentityId;
use crate::env::{non_empty, Env, Environment};
// `Metadata: true`, sent to IMDS, Azure ML, Cloud Shell and the Arc agent.
use crate::header_names::METADATA;
use crate::secret::Secret;
use answer::Failure;

pub use arc::ArcAgent;

/// Where the tokens come from, as detected.
enum Source {
    /// Instance Metadata Service; `origin` says where its address came from.
    Imds { url: Url, origin: &'static str },
    /// App Service, Functions, Container Apps.
    AppService { url: Url, header: Secret },
    /// Azure Machine Learning compute.
    AzureMl {
        url: Url,
        secret: Secret,
        default_client_id: Option<String>,
    },
    /// Azure Cloud Shell (the signed-in user).
    CloudShell { url: Url },
    /// Azure Arc-enabled server.
    Arc { url: Url, key_dir: PathBuf },
    /// Detected but not usable: every acquisition says why.
    Unavailable { message: String },
}

impl Source {
    /// "IMDS at http://…", for messages.
    fn label(&self) -> String {
        match self {
            Source::Imds { url, .. } => format!("IMDS at {}", imds::base_of(url)),
            Source::AppService { url, .. } => format!("the App Service identity endpoint {url}"),
            Source::AzureMl { url, .. } => format!("the Azure ML identity endpoint {url}"),
            Source::CloudShell { url } => format!("the Cloud Shell identity endpoint {url}"),
            Source::Arc { url, .. } => format!("the Azure Arc agent at {url}"),
            Source::Unavailable { .. } => "managed identity".to_string(),
        }
    }

    /// What holds the identity, for "assign it to this …".
    fn host(&self) -> &'static str {
        match self {
            Source::Imds { .. } => "VM (or scale set)",
            Source::AppService { .. } => "app",
            Source::AzureMl { .. } => "compute",
            Source::CloudShell { .. } => "Cloud Shell session",
            Source::Arc { .. } => "machine",
            Source::Unavailable { .. } => "resource",
        }
    }

    /// The statuses retried within one acquisition. IMDS also answers 404 while it is being
    /// updated and 410 while a starting VM's identity is not ready yet.
    fn retryable(&self, status: u16) -> bool {
        match self {
            Source::Imds { .. } => matches!(status, 404 | 410 | 429 | 500..=599),
            _ => matches!(status, 429 | 500..=599),
        }
    }

    /// The secret this source sends, to cut out of anything an endpoint echoes.
    fn secret(&self) -> Option<&Secret> {
        match self {
            Source::AppService { header, .. } => Some(header),
            Source::AzureMl { secret, .. } => Some(secret),
            _ => None,
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Imds { url, origin } => f
                .debug_struct("Imds")
                .field("url", &url.as_str())
                .field("origin", origin)
                .finish(),
            Source::AppService { url, header } => f
                .debug_struct("AppService")
                .field("url", &url.as_str())
                .field("header", header)
                .finish(),
            Source::AzureMl {
                url,
                secret,
                default_client_id,
            } => f
                .debug_struct("AzureMl")
                .field("url", &url.as_str())
                .field("secret", secret)
                .field("default_client_id", default_client_id)
                .finish(),
            Source::CloudShell { url } => f
                .debug_struct("CloudShell")
                .field("url", &url.as_str())
                .finish(),
            Source::Arc { url, key_dir } => f
                .debug_struct("Arc")
                .field("url", &url.as_str())
                .field("key_dir", key_dir)
                .finish(),
            Source::Unavailable { message } => f
                .debug_struct("Unavailable")
                .field("message", message)
                .finish(),
        }
    }
}

/// A managed identity (system-assigned, or a user-assigned one by client, object or resource id),
/// through whichever platform endpoint the environment reveals.
pub struct ManagedIdentityCredential {
    http: reqwest::Client,
    id: Option<ManagedIdentityId>,
    source: Source,
    /// Said after the source in [`Self::describe`] (an unused `endpoint`).
    note: Option<String>,
}

impl fmt::Debug for ManagedIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedIdentityCredential")
            .field("source", &self.source)
            .field("id", &self.id)
            .finish()
    }
}

impl ManagedIdentityCredential {
    /// Detects the source from `env` and `arc` (the module doc's order). `id` picks a
    /// user-assigned identity; `endpoint` is the IMDS base URL (used only when IMDS is the
    /// source); `arc` says where the Azure Arc agent would be installed ([`ArcAgent::default`] is
    /// its real place). `http` should have no proxy: every endpoint is link-local or loopback.
    pub fn new(
        http: reqwest::Client,
        id: Option<ManagedIdentityId>,
        endpoint: Option<Url>,
        env: Env,
        arc: &ArcAgent,
    ) -> Self {
        let source = detect(env.as_ref(), id.as_ref(), endpoint.as_ref(), arc);
        let mut note = None;
        if let Some(e) = &endpoint {
            if !matches!(source, Source::Imds { .. } | Source::Unavailable { .. }) {
                tracing::warn!(
                    endpoint = %e,
                    "the managed_identity profile's endpoint is for IMDS; the environment \
                     selects another source ({}), so it is not used",
                    source.label()
                );
                note = Some(format!("the profile's endpoint {e} is not used"));
            }
        }
        ManagedIdentityCredential {
            http,
            id,
            source,
            note,
        }
    }

    /// One line: the detected source and the identity, e.g. "managed identity via IMDS at
    /// http://169.254.169.254 (user-assigned, client_id …)". Never a secret.
    pub fn describe(&self) -> String {
        let identity = id_text(&self.id);
        let mut line = match &self.source {
            Source::Imds { url, origin } => {
                let from = match *origin {
                    "default" => String::new(),
                    o => format!(", address from {o}"),
                };
                format!(
                    "managed identity via IMDS at {} ({identity}{from})",
                    imds::base_of(url)
                )
            }
            Source::AppService { url, .. } => format!(
                "managed identity via App Service/Functions/Container Apps at {url} \
                 (IDENTITY_ENDPOINT, {identity})"
            ),
            Source::AzureMl { url, .. } => {
                format!("managed identity via Azure Machine Learning at {url} (MSI_ENDPOINT, {identity})")
            }
            Source::CloudShell { url } => {
                format!(
                    "managed identity via Cloud Shell at {url} (MSI_ENDPOINT, the signed-in user)"
                )
            }
            Source::Arc { url, .. } => {
                format!("managed identity via Azure Arc at {url} ({identity})")
            }
            Source::Unavailable { message } => message.clone(),
        };
        if let Some(n) = &self.note {
            line.push_str(&format!(" [{n}]"));
        }
        line
    }

    async fn acquire_token(
        &self,
        scope: &str,
        claims: Option<&str>,
    ) -> Result<AccessToken, CredentialError> {
        if let Source::Unavailable { message } = &self.source {
            return Err(CredentialError::new(
                ErrorClass::NotConfigured,
                message.clone(),
            ));
        }
        if claims.is_some() {
            tracing::debug!(
                scope,
                "managed identity endpoints take no claims challenge: acquiring a token without it"
            );
        }
        let resource = resource_of(scope)?;
        self.with_retries(resource).await
    }

    /// One request (two for Arc), without retries.
    async fn attempt(&self, resource: &str) -> Result<AccessToken, Failure> {
        let id = self.id.as_ref();
        let http = &self.http;
        let request = match &self.source {
            Source::Imds { url, .. } => imds::request(http, url, resource, id),
            Source::AppService { url, header } => {
                app_service::request(http, url, header, resource, id)?
            }
            Source::AzureMl {
                url,
                secret,
                default_client_id,
            } => azure_ml::request(http, url, secret, default_client_id, resource, id)?,
            Source::CloudShell { url } => cloud_shell::request(http, url, resource),
            Source::Arc { url, key_dir } => return self.arc_attempt(url, key_dir, resource).await,
            Source::Unavailable { message } => {
                return Err(CredentialError::new(ErrorClass::NotConfigured, message.clone()).into())
            }
        };
        let response = self.send(request).await?;
        self.answer(response).await
    }
}

impl Credential for ManagedIdentityCredential {
    fn acquire<'a>(
        &'a self,
        scope: &'a str,
        claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        Box::pin(self.acquire_token(scope, claims))
    }
}

/// The source the environment reveals: the first row of the module doc's table that matches.
fn detect(
    env: &dyn Environment,
    id: Option<&ManagedIdentityId>,
    endpoint: Option<&Url>,
    arc: &ArcAgent,
) -> Source {
    let var = |name: &str| non_empty(env, name);
    let identity_endpoint = var("IDENTITY_ENDPOINT");
    let identity_header = var("IDENTITY_HEADER");
    if identity_endpoint.is_some()
        && identity_header.is_some()
        && var("IDENTITY_SERVER_THUMBPRINT").is_some()
    {
        return service_fabric();
    }
    if let (Some(ep), Some(header)) = (&identity_endpoint, identity_header) {
        return app_service::source(ep, header);
    }
    if let Some(ep) = var("MSI_ENDPOINT") {
        return match var("MSI_SECRET") {
            Some(secret) => azure_ml::source(&ep, secret, id, var("DEFAULT_IDENTITY_CLIENT_ID")),
            None => cloud_shell::source(&ep, id),
        };
    }
    if (identity_endpoint.is_some() && var("IMDS_ENDPOINT").is_some()) || arc.installed() {
        return arc::source(identity_endpoint.as_deref(), id, arc);
    }
    imds::source(endpoint, var("AZURE_POD_IDENTITY_AUTHORITY_HOST"))
}

/// Service Fabric's endpoint serves HTTPS with a certificate no CA vouches for: a client must
/// trust it by pinning `IDENTITY_SERVER_THUMBPRINT`, which this build does not do.
fn service_fabric() -> Source {
    Source::Unavailable {
        message: "managed identity: Service Fabric detected (IDENTITY_ENDPOINT, \
                  IDENTITY_HEADER and IDENTITY_SERVER_THUMBPRINT are set), which this \
                  build does not support: its endpoint must be trusted by pinning the \
                  server certificate's thumbprint. Use a client_certificate or \
                  client_secret profile there instead"
            .to_string(),
    }
}

/// The resource of a scope: `https://x/.default` → `https://x`, `https://x//.default` →
/// `https://x/`. Only the `/.default` suffix is stripped, nothing else: resources whose identifier
/// ends in `/` need the double slash.
fn resource_of(scope: &str) -> Result<&str, CredentialError> {
    let scope = scope.trim();
    if scope.split_whitespace().count() > 1 {
        return Err(CredentialError::new(
            ErrorClass::InvalidGrant,
            format!(
                "managed identity asks for one resource per token; scope `{scope}` names \
                 several: give the route a single `<resource>/.default` scope"
            ),
        ));
    }
    let resource = scope.strip_suffix("/.default").unwrap_or(scope);
    if resource.is_empty() {
        return Err(CredentialError::new(
            ErrorClass::InvalidGrant,
            format!("scope `{scope}` names no resource: expected `<resource>/.default`"),
        ));
    }
    Ok(resource)
}

/// An endpoint from the environment: an http(s) URL.
fn endpoint_url(name: &str, value: &str) -> Result<Url, String> {
    match Url::parse(value.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(u),
        _ => Err(format!(
            "managed identity: {name} is `{value}`, not an http(s) URL"
        )),
    }
}

fn with_query(base: &Url, pairs: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    url.query_pairs_mut().extend_pairs(pairs);
    url
}

/// `Metadata: true`.
fn metadata() -> HeaderValue {
    HeaderValue::from_static("true")
}

/// A header value marked sensitive (kept out of traces).
fn sensitive(value: &str) -> Result<HeaderValue, Failure> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        Failure::from(CredentialError::new(
            ErrorClass::NotConfigured,
            "a managed identity secret (IDENTITY_HEADER, MSI_SECRET or the Arc key) holds \
             characters not allowed in an HTTP header",
        ))
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// The user-assigned identity's query parameter, under a protocol's three names for the client
/// id, the object id and the resource id.
fn id_param<'a>(
    id: Option<&'a ManagedIdentityId>,
    names: [&'static str; 3],
) -> Option<(&'static str, &'a str)> {
    match id? {
        ManagedIdentityId::ClientId(v) => Some((names[0], v.as_str())),
        ManagedIdentityId::ObjectId(v) => Some((names[1], v.as_str())),
        ManagedIdentityId::ResourceId(v) => Some((names[2], v.as_str())),
    }
}

/// The configuration key that names an identity (`client_id`, …), for messages.
fn id_key(id: &ManagedIdentityId) -> &'static str {
    match id {
        ManagedIdentityId::ClientId(_) => "client_id",
        ManagedIdentityId::ObjectId(_) => "object_id",
        ManagedIdentityId::ResourceId(_) => "resource_id",
    }
}

fn id_value(id: &ManagedIdentityId) -> &str {
    match id {
        ManagedIdentityId::ClientId(v)
        | ManagedIdentityId::ObjectId(v)
        | ManagedIdentityId::ResourceId(v) => v,
    }
}

fn id_text(id: &Option<ManagedIdentityId>) -> String {
    match id {
        None => "system-assigned".to_string(),
        Some(id) => format!("user-assigned, {} {}", id_key(id), id_value(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_to_resource() {
        assert_eq!(
            resource_of("https://management.azure.com/.default").ok(),
            Some("https://management.azure.com")
        );
        assert_eq!(
            resource_of("https://management.azure.com//.default").ok(),
            Some("https://management.azure.com/")
        );
        assert_eq!(
            resource_of("499b84ac-1321-427f-aa17-267ca6975798/.default").ok(),
            Some("499b84ac-1321-427f-aa17-267ca6975798")
        );
        assert_eq!(resource_of("https://x").ok(), Some("https://x"));
        assert!(resource_of("a/.default b/.default").is_err());
        assert!(resource_of("/.default").is_err());
    }
}
