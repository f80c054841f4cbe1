//! `managed_identity`: tokens from the Azure platform's identity endpoint (ENTRA.md "Managed
//! identity"), no secret configured anywhere.
//!
//! The source is detected once, in [`ManagedIdentityCredential::new`], from the injected
//! environment and in ENTRA.md's order:
//!
//! | environment | source | request |
//! | --- | --- | --- |
//! | `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` + `IDENTITY_SERVER_THUMBPRINT` | Service Fabric | refused: needs TLS pinned to the thumbprint |
//! | `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` | App Service, Functions, Container Apps | `GET` api-version 2019-08-01, `X-IDENTITY-HEADER` |
//! | `MSI_ENDPOINT` + `MSI_SECRET` | Azure Machine Learning | `GET` api-version 2017-09-01, `secret` header |
//! | `MSI_ENDPOINT` | Cloud Shell | `POST` form `resource=R`, `Metadata: true` |
//! | `IDENTITY_ENDPOINT` + `IMDS_ENDPOINT`, or `/opt/azcmagent/bin/himds` | Azure Arc | `GET`, 401 challenge naming a key file, `GET` again with `Authorization: Basic <key>` |
//! | anything else | IMDS (VM, scale set, AKS node, pod identity) | `GET {base}/metadata/identity/oauth2/token` api-version 2018-02-01, `Metadata: true` |
//!
//! Every protocol asks for a *resource*: the scope without `/.default`. Answers carry their numbers
//! as strings, and some only `expires_on` (Unix seconds). Within one acquisition, IMDS's 404, 410,
//! 429 and 5xx (and the others' 429 and 5xx) are retried with exponential backoff on `tokio::time`:
//! for up to 70 s once IMDS said 410 ("the identity will be ready within 70 s"), else 20 s;
//! `Retry-After` is a floor, and one that does not fit ends the acquisition with the wait attached
//! for the cache's backoff. Connection failures are not retried here: off Azure they fail at once.
//!
//! Secrets (`IDENTITY_HEADER`, `MSI_SECRET`, the Arc key) live in [`Secret`], go out in headers
//! marked sensitive, and are cut out of any error text an endpoint sends back.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use super::entra::NumOrString;
use super::{AccessToken, BoxFuture, Credential, CredentialError, ErrorClass};
use crate::config::ManagedIdentityId;
use crate::env::{non_empty, Env};
use crate::secret::Secret;

/// IMDS's address when neither the profile's `endpoint` nor `AZURE_POD_IDENTITY_AUTHORITY_HOST`
/// names another.
pub const IMDS_DEFAULT: &str = "http://169.254.169.254";
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
const IMDS_API: &str = "2018-02-01";
const APP_SERVICE_API: &str = "2019-08-01";
const AZURE_ML_API: &str = "2017-09-01";
/// ENTRA.md names no version for Arc; the Azure Identity SDKs send this one.
const ARC_API: &str = "2019-11-01";
/// Where the Arc agent listens when only its binary gives it away.
const ARC_DEFAULT_ENDPOINT: &str = "http://localhost:40342/metadata/identity/oauth2/token";
const HIMDS_BINARY: &str = "/opt/azcmagent/bin/himds";
/// The only directory the Arc agent's key files may be read from (in production).
pub const ARC_KEY_DIR: &str = "/var/opt/azcmagent/tokens";
/// Test hook: an absolute directory that replaces [`ARC_KEY_DIR`] (read through the injected
/// environment, so tests need no root). Whoever sets patless's environment could as well point
/// `IDENTITY_ENDPOINT` anywhere, so this opens nothing new; its use is logged at WARN.
pub const ARC_KEY_DIR_ENV: &str = "PATLESS_TEST_ARC_KEY_DIR";
const ARC_KEY_MAX_BYTES: u64 = 4096;

/// Retry budget of one acquisition once IMDS answered 410.
const GONE_BUDGET: Duration = Duration::from_secs(70);
/// Retry budget of one acquisition for the other retryable answers.
const RETRY_BUDGET: Duration = Duration::from_secs(20);
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(16);
/// A last backoff shorter than this is not worth another request.
const MIN_DELAY: Duration = Duration::from_millis(500);

static METADATA: HeaderName = HeaderName::from_static("metadata");
static IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-identity-header");
static ML_SECRET: HeaderName = HeaderName::from_static("secret");

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
            Source::Imds { url, .. } => format!("IMDS at {}", base_of(url)),
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

    /// The statuses retried within one acquisition.
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
    /// Said after the source in [`Self::describe`] (an unused `endpoint`, a test override).
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

/// A failed attempt: the error, and whether the status asks for another try.
struct Failure {
    error: CredentialError,
    status: Option<u16>,
    retry: bool,
}

impl From<CredentialError> for Failure {
    fn from(error: CredentialError) -> Self {
        Failure {
            error,
            status: None,
            retry: false,
        }
    }
}

impl ManagedIdentityCredential {
    /// Detects the source from `env` (ENTRA.md's order). `id` picks a user-assigned identity;
    /// `endpoint` is the IMDS base URL (used only when IMDS is the source). `http` should have no
    /// proxy: every endpoint is link-local or loopback.
    pub fn new(
        http: reqwest::Client,
        id: Option<ManagedIdentityId>,
        endpoint: Option<Url>,
        env: Env,
    ) -> Self {
        let env = env.as_ref();
        let var = |name: &str| non_empty(env, name);
        let mut notes = Vec::new();
        let identity_endpoint = var("IDENTITY_ENDPOINT");
        let identity_header = var("IDENTITY_HEADER");
        let msi_endpoint = var("MSI_ENDPOINT");

        let source = if identity_endpoint.is_some()
            && identity_header.is_some()
            && var("IDENTITY_SERVER_THUMBPRINT").is_some()
        {
            Source::Unavailable {
                message: "managed identity: Service Fabric detected (IDENTITY_ENDPOINT, \
                          IDENTITY_HEADER and IDENTITY_SERVER_THUMBPRINT are set), which this \
                          build does not support: its endpoint must be trusted by pinning the \
                          server certificate's thumbprint. Use a client_certificate or \
                          client_secret profile there instead"
                    .to_string(),
            }
        } else if let (Some(ep), Some(header)) = (&identity_endpoint, identity_header) {
            match endpoint_url("IDENTITY_ENDPOINT", ep) {
                Ok(url) => Source::AppService {
                    url,
                    header: Secret::new(header),
                },
                Err(message) => Source::Unavailable { message },
            }
        } else if let Some(ep) = &msi_endpoint {
            match (endpoint_url("MSI_ENDPOINT", ep), var("MSI_SECRET")) {
                (Err(message), _) => Source::Unavailable { message },
                (Ok(url), Some(secret)) => match &id {
                    None | Some(ManagedIdentityId::ClientId(_)) => Source::AzureMl {
                        url,
                        secret: Secret::new(secret),
                        default_client_id: var("DEFAULT_IDENTITY_CLIENT_ID"),
                    },
                    Some(other) => Source::Unavailable {
                        message: format!(
                            "managed identity: Azure Machine Learning (MSI_ENDPOINT and \
                             MSI_SECRET are set) selects a user-assigned identity by client_id \
                             only, not by {}: set client_id in the profile instead",
                            id_key(other)
                        ),
                    },
                },
                (Ok(url), None) => match &id {
                    None => Source::CloudShell { url },
                    Some(other) => Source::Unavailable {
                        message: format!(
                            "managed identity: Cloud Shell (MSI_ENDPOINT is set) gives only the \
                             signed-in user's identity: remove {} from the profile",
                            id_key(other)
                        ),
                    },
                },
            }
        } else if (identity_endpoint.is_some() && var("IMDS_ENDPOINT").is_some())
            || Path::new(HIMDS_BINARY).exists()
        {
            let url = match &identity_endpoint {
                Some(ep) => endpoint_url("IDENTITY_ENDPOINT", ep),
                None => endpoint_url("the Azure Arc default endpoint", ARC_DEFAULT_ENDPOINT),
            };
            let key_dir = match var(ARC_KEY_DIR_ENV) {
                Some(dir) if Path::new(&dir).is_absolute() => {
                    tracing::warn!(
                        "{ARC_KEY_DIR_ENV} is set: Azure Arc key files are read from {dir} instead \
                         of {ARC_KEY_DIR} (a test hook; unset it in production)"
                    );
                    notes.push(format!("key files from {dir}, set by {ARC_KEY_DIR_ENV}"));
                    PathBuf::from(dir)
                }
                _ => PathBuf::from(ARC_KEY_DIR),
            };
            match (url, &id) {
                (Err(message), _) => Source::Unavailable { message },
                (Ok(url), None) => Source::Arc { url, key_dir },
                (Ok(_), Some(other)) => Source::Unavailable {
                    message: format!(
                        "managed identity: Azure Arc supports only the machine's system-assigned \
                         identity: remove {} from the profile",
                        id_key(other)
                    ),
                },
            }
        } else {
            let (base, origin) = match (&endpoint, var("AZURE_POD_IDENTITY_AUTHORITY_HOST")) {
                (Some(e), _) => (Ok(e.clone()), "the profile's endpoint"),
                (None, Some(host)) => (
                    endpoint_url("AZURE_POD_IDENTITY_AUTHORITY_HOST", &host),
                    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                ),
                (None, None) => (endpoint_url("the IMDS default", IMDS_DEFAULT), "default"),
            };
            match base {
                Ok(base) => Source::Imds {
                    url: imds_token_url(&base),
                    origin,
                },
                Err(message) => Source::Unavailable { message },
            }
        };

        if let Some(e) = &endpoint {
            if !matches!(source, Source::Imds { .. } | Source::Unavailable { .. }) {
                tracing::warn!(
                    endpoint = %e,
                    "the managed_identity profile's endpoint is for IMDS; the environment \
                     selects another source ({}), so it is not used",
                    source.label()
                );
                notes.push(format!("the profile's endpoint {e} is not used"));
            }
        }
        ManagedIdentityCredential {
            http,
            id,
            source,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
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
                    base_of(url)
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
        let started = Instant::now();
        let mut retries: u32 = 0;
        let mut gone = false;
        loop {
            let failure = match self.attempt(resource).await {
                Ok(token) => return Ok(token),
                Err(f) => f,
            };
            if !failure.retry {
                return Err(failure.error);
            }
            gone |= failure.status == Some(410);
            let budget = if gone { GONE_BUDGET } else { RETRY_BUDGET };
            let elapsed = started.elapsed();
            match next_delay(retries, failure.error.retry_after, elapsed, budget) {
                Some(delay) => {
                    tracing::debug!(
                        source = %self.source.label(),
                        status = failure.status,
                        attempt = retries + 1,
                        retry_in_ms = delay.as_millis() as u64,
                        "managed identity endpoint asked to retry"
                    );
                    tokio::time::sleep(delay).await;
                    retries += 1;
                }
                None => {
                    let mut error = failure.error;
                    if retries > 0 {
                        error.message.push_str(&format!(
                            " (gave up after {} attempts in {}s)",
                            retries + 1,
                            elapsed.as_secs()
                        ));
                    }
                    return Err(error);
                }
            }
        }
    }

    /// One request (two for Arc), without retries.
    async fn attempt(&self, resource: &str) -> Result<AccessToken, Failure> {
        let metadata = || HeaderValue::from_static("true");
        match &self.source {
            Source::Imds { url, .. } => {
                let mut pairs = vec![("api-version", IMDS_API), ("resource", resource)];
                pairs.extend(self.id_param(["client_id", "object_id", "msi_res_id"]));
                let request = self
                    .http
                    .get(with_query(url, &pairs))
                    .header(&METADATA, metadata());
                let response = self.send(request).await?;
                self.answer(response).await
            }
            Source::AppService { url, header } => {
                let mut pairs = vec![("api-version", APP_SERVICE_API), ("resource", resource)];
                pairs.extend(self.id_param(["client_id", "principal_id", "mi_res_id"]));
                let request = self
                    .http
                    .get(with_query(url, &pairs))
                    .header(&IDENTITY_HEADER, sensitive(header.expose())?);
                let response = self.send(request).await?;
                self.answer(response).await
            }
            Source::AzureMl {
                url,
                secret,
                default_client_id,
            } => {
                let mut pairs = vec![("api-version", AZURE_ML_API), ("resource", resource)];
                match &self.id {
                    Some(ManagedIdentityId::ClientId(c)) => pairs.push(("clientid", c.as_str())),
                    _ => {
                        if let Some(c) = default_client_id {
                            pairs.push(("clientid", c.as_str()));
                        }
                    }
                }
                let request = self
                    .http
                    .get(with_query(url, &pairs))
                    .header(&METADATA, metadata())
                    .header(&ML_SECRET, sensitive(secret.expose())?);
                let response = self.send(request).await?;
                self.answer(response).await
            }
            Source::CloudShell { url } => {
                let request = self
                    .http
                    .post(url.clone())
                    .header(&METADATA, metadata())
                    .form(&[("resource", resource)]);
                let response = self.send(request).await?;
                self.answer(response).await
            }
            Source::Arc { url, key_dir } => {
                let url = with_query(url, &[("api-version", ARC_API), ("resource", resource)]);
                let challenge = self
                    .send(self.http.get(url.clone()).header(&METADATA, metadata()))
                    .await?;
                let status = challenge.status().as_u16();
                if status != 401 {
                    if challenge.status().is_success() {
                        return Err(CredentialError::new(
                            ErrorClass::BadResponse,
                            format!(
                                "{} answered {status} without asking for its key file: is the \
                                 Azure Arc agent (himds) what listens there?",
                                self.source.label()
                            ),
                        )
                        .into());
                    }
                    return Err(self.refusal(challenge).await);
                }
                let realm = challenge
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(realm_of)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        CredentialError::new(
                            ErrorClass::BadResponse,
                            format!(
                                "{} answered 401 without `WWW-Authenticate: Basic realm=<key \
                                 file>`: is the Azure Arc agent (himds) what listens there?",
                                self.source.label()
                            ),
                        )
                    })?;
                let key = read_arc_key(&realm, key_dir).await?;
                let authorization = sensitive(&format!("Basic {}", key.expose()))?;
                let request = self
                    .http
                    .get(url)
                    .header(&METADATA, metadata())
                    .header(reqwest::header::AUTHORIZATION, authorization);
                let response = self.send(request).await?;
                if response.status() == 401 {
                    return Err(CredentialError::new(
                        ErrorClass::InvalidClient,
                        format!(
                            "{} refused the key read from {realm} (401): the key rotates with \
                             each challenge; if this repeats, restart the agent (azcmagent) and \
                             check its status with `azcmagent show`",
                            self.source.label()
                        ),
                    )
                    .into());
                }
                self.answer(response).await
            }
            Source::Unavailable { message } => {
                Err(CredentialError::new(ErrorClass::NotConfigured, message.clone()).into())
            }
        }
    }

    /// The user-assigned identity's query parameter, under this protocol's three names
    /// (client id, object id, resource id).
    fn id_param<'s>(&'s self, names: [&'static str; 3]) -> Option<(&'static str, &'s str)> {
        match self.id.as_ref()? {
            ManagedIdentityId::ClientId(v) => Some((names[0], v.as_str())),
            ManagedIdentityId::ObjectId(v) => Some((names[1], v.as_str())),
            ManagedIdentityId::ResourceId(v) => Some((names[2], v.as_str())),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        request
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.transport_error(&e).into())
    }

    fn transport_error(&self, e: &reqwest::Error) -> CredentialError {
        let class = if e.is_timeout() {
            ErrorClass::Timeout
        } else {
            ErrorClass::Network
        };
        // reqwest's Display is only "error sending request for url (…)": the cause (refused,
        // reset, timed out) is at the end of the source chain.
        let mut cause = e.to_string();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
        while let Some(s) = src {
            cause = s.to_string();
            src = s.source();
        }
        let what = match class {
            ErrorClass::Timeout => "did not answer in time".to_string(),
            _ => format!("is unreachable ({cause})"),
        };
        let hint = match &self.source {
            Source::Imds { origin, .. } if *origin == "default" => {
                "patless does not seem to run on an Azure VM or scale set (IMDS only answers \
                 there). Off Azure, use another profile kind (client_secret, workload_identity, \
                 auto, …); behind AKS pod identity, set AZURE_POD_IDENTITY_AUTHORITY_HOST"
            }
            Source::Imds { .. } => {
                "check the address (the profile's endpoint or AZURE_POD_IDENTITY_AUTHORITY_HOST) \
                 and that the identity service runs there"
            }
            Source::Arc { .. } => {
                "is the Azure Arc agent (himds) running? Check with `azcmagent show`"
            }
            _ => {
                "the platform set this endpoint in the environment; is patless running inside the \
                 service whose environment this is (not a copy of it)?"
            }
        };
        CredentialError::new(class, format!("{} {what}: {hint}", self.source.label()))
    }

    /// Reads an answer: a token, or a classified refusal.
    async fn answer(&self, response: reqwest::Response) -> Result<AccessToken, Failure> {
        if !response.status().is_success() {
            return Err(self.refusal(response).await);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| Failure::from(self.transport_error(&e)))?;
        parse_token(&body, SystemTime::now()).map_err(|why| {
            CredentialError::new(
                ErrorClass::BadResponse,
                format!("{} answered 200 but {why}", self.source.label()),
            )
            .into()
        })
    }

    /// Classifies a non-success answer, with the hint the user needs.
    async fn refusal(&self, response: reqwest::Response) -> Failure {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.unwrap_or_default();
        let detail = error_detail(&body, self.source.secret());
        let label = self.source.label();
        let said = detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let aadsts = detail.as_deref().and_then(aadsts_code);
        let (class, message) = match (status, &self.source) {
            (400, _) if aadsts.is_some() => {
                let code = aadsts.unwrap_or_default();
                let hint = super::entra::hint_for(code)
                    .map(|h| format!(" — hint: {h}"))
                    .unwrap_or_default();
                (
                    ErrorClass::InvalidGrant,
                    format!("{label} passed on Entra's refusal (HTTP 400){said}{hint}"),
                )
            }
            (400, Source::Imds { .. } | Source::AppService { .. } | Source::AzureMl { .. }) => {
                self.not_assigned(&label, &said)
            }
            (401 | 403, Source::AppService { .. }) => (
                ErrorClass::InvalidClient,
                format!(
                    "{label} refused X-IDENTITY-HEADER (HTTP {status}){said}: IDENTITY_HEADER \
                     does not belong to this app (the platform rotates it when the app restarts); \
                     run patless with the app's current environment"
                ),
            ),
            (401 | 403, Source::AzureMl { .. }) => (
                ErrorClass::InvalidClient,
                format!(
                    "{label} refused MSI_SECRET (HTTP {status}){said}: run patless with the \
                     compute's current environment"
                ),
            ),
            (404, Source::Imds { .. }) => (
                ErrorClass::ServerError,
                format!(
                    "{label} answered 404{said}: IMDS is being updated (retry shortly), or the \
                     address does not point at IMDS"
                ),
            ),
            (410, _) => (
                ErrorClass::ServerError,
                format!(
                    "{label} answered 410{said}: the identity is not ready yet (normal for up \
                     to 70 s after the VM starts); patless keeps retrying"
                ),
            ),
            (429, _) => (
                ErrorClass::Throttled,
                format!("{label} is throttling token requests (429){said}; patless backs off"),
            ),
            (500..=599, _) => (
                ErrorClass::ServerError,
                format!("{label} failed (HTTP {status}){said}; patless retries"),
            ),
            (_, Source::Imds { .. }) => (
                ErrorClass::BadResponse,
                format!(
                    "{label} answered HTTP {status}{said}, not a token: is patless running on an \
                     Azure VM or scale set? Off Azure, something else (a network filter or proxy) \
                     answers at this address; IMDS itself refuses requests relayed by a proxy"
                ),
            ),
            _ => (
                ErrorClass::BadResponse,
                format!("{label} answered HTTP {status}{said}, not a token"),
            ),
        };
        let mut error = CredentialError::new(class, message);
        error.retry_after = retry_after;
        Failure {
            error,
            status: Some(status),
            retry: self.source.retryable(status),
        }
    }

    /// The 400 of an identity the platform does not know here.
    fn not_assigned(&self, label: &str, said: &str) -> (ErrorClass, String) {
        let host = self.source.host();
        match &self.id {
            Some(id) => (
                ErrorClass::InvalidClient,
                format!(
                    "{label} answered 400{said}: the user-assigned identity with {} {} is not \
                     assigned to this {host}. Assign it (portal: the {host}'s Identity → User \
                     assigned → Add), or fix {} in the profile",
                    id_key(id),
                    id_value(id),
                    id_key(id)
                ),
            ),
            None => (
                ErrorClass::NotConfigured,
                format!(
                    "{label} answered 400{said}: this {host} has no system-assigned identity. \
                     Turn it on (portal: the {host}'s Identity → System assigned → On), or set \
                     client_id, object_id or resource_id to a user-assigned identity assigned \
                     to it"
                ),
            ),
        }
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

/// The resource of a scope: `https://x/.default` → `https://x`, `https://x//.default` →
/// `https://x/` (ENTRA.md: strip `/.default`, nothing else).
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

/// The next wait within one acquisition, or `None` to give up: exponential from 1 s (capped at
/// 16 s), at least `Retry-After`, and never past the budget (a `Retry-After` that does not fit
/// gives up, leaving the wait to the cache).
fn next_delay(
    retries: u32,
    retry_after: Option<Duration>,
    elapsed: Duration,
    budget: Duration,
) -> Option<Duration> {
    let remaining = budget.saturating_sub(elapsed);
    let backoff = FIRST_DELAY
        .saturating_mul(1u32 << retries.min(8))
        .min(MAX_DELAY);
    match retry_after {
        Some(wait) if wait > remaining => None,
        Some(wait) => Some(wait.max(backoff).min(remaining)),
        None if remaining < MIN_DELAY => None,
        None => Some(backoff.min(remaining)),
    }
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

/// `{base}/metadata/identity/oauth2/token` (a base that already ends so is kept).
fn imds_token_url(base: &Url) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/').to_string();
    if !path.ends_with(IMDS_PATH) {
        url.set_path(&format!("{path}{IMDS_PATH}"));
    }
    url
}

/// `http://host:port` of a URL, for messages and `describe`.
fn base_of(url: &Url) -> String {
    let path = url.path().strip_suffix(IMDS_PATH).unwrap_or(url.path());
    format!(
        "{}{}",
        url.origin().ascii_serialization(),
        path.trim_end_matches('/')
    )
}

fn with_query(base: &Url, pairs: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    url.query_pairs_mut().extend_pairs(pairs);
    url
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

#[derive(Deserialize)]
struct TokenBody {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<NumOrString>,
    expires_on: Option<NumOrString>,
    refresh_in: Option<NumOrString>,
}

/// Parses a success answer; `now` turns an `expires_on` (Unix seconds) into a lifetime when no
/// `expires_in` came. The error says what is wrong, never what the body holds.
fn parse_token(body: &[u8], now: SystemTime) -> Result<AccessToken, String> {
    let parsed: TokenBody = serde_json::from_slice(body)
        .map_err(|e| format!("its body is not a token response ({})", json_problem(&e)))?;
    let token = parsed
        .access_token
        .filter(|t| !t.trim().is_empty())
        .ok_or("its answer has no access_token")?;
    if let Some(tt) = &parsed.token_type {
        if !tt.eq_ignore_ascii_case("bearer") {
            return Err(format!("it returned token_type `{tt}`, expected Bearer"));
        }
    }
    let expires_in = match parsed.expires_in.as_ref().and_then(NumOrString::value) {
        Some(secs) => Duration::from_secs(secs as u64),
        None => {
            let on = parsed
                .expires_on
                .as_ref()
                .and_then(NumOrString::value)
                .ok_or("its answer has neither a valid expires_in nor expires_on")?;
            let now = now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let on = on as u64;
            if on <= now {
                return Err(format!(
                    "its token expired already (expires_on {on}, now {now}): check the clock"
                ));
            }
            Duration::from_secs(on - now)
        }
    };
    Ok(AccessToken {
        token: Secret::new(token),
        expires_in,
        refresh_in: parsed
            .refresh_in
            .as_ref()
            .and_then(NumOrString::value)
            .map(|s| Duration::from_secs(s as u64)),
    })
}

/// What is wrong with a body, without quoting it (serde's messages may quote values).
fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "fields of the wrong type",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    #[serde(alias = "Message")]
    message: Option<String>,
}

/// What an error answer says, shortened and with `secret` cut out: JSON `error` /
/// `error_description` / `message`, or a short plain-text body. HTML pages say nothing useful.
fn error_detail(body: &[u8], secret: Option<&Secret>) -> Option<String> {
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => {
            let description = b
                .error_description
                .or(b.message)
                .map(|d| {
                    d.split(" Trace ID:")
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                })
                .filter(|d| !d.is_empty());
            match (b.error, description) {
                (Some(e), Some(d)) => format!("{e}: {d}"),
                (Some(e), None) => e,
                (None, Some(d)) => d,
                (None, None) => return None,
            }
        }
        Err(_) => {
            let text = std::str::from_utf8(body).ok()?.trim();
            if text.is_empty() || text.starts_with('<') || text.len() > 300 {
                return None;
            }
            text.to_string()
        }
    };
    let mut text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if let Some(s) = secret.filter(|s| !s.expose().is_empty()) {
        text = text.replace(s.expose(), "***");
    }
    if text.chars().count() > 300 {
        text = text.chars().take(300).collect::<String>() + "…";
    }
    Some(text)
}

/// The AADSTS number in an error text, if Entra's refusal was passed on.
fn aadsts_code(text: &str) -> Option<u32> {
    let at = text.find("AADSTS")?;
    let digits: String = text[at + 6..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The key file path of an Arc challenge: `Basic realm=/var/opt/azcmagent/tokens/….key`.
fn realm_of(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let (name, value) = rest.trim().split_once('=')?;
    if !name.trim().eq_ignore_ascii_case("realm") {
        return None;
    }
    let value = value.trim().trim_matches('"');
    (!value.is_empty()).then_some(value)
}

/// `.` and `..` resolved without touching the filesystem (`..` never climbs above the root).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Reads the key file an Arc challenge names, after checking that it is a `*.key` file of at most
/// 4096 bytes directly inside `dir` — lexically (`..` resolved) before touching the file, and
/// again once links are resolved. Anything else is refused: a process squatting on the agent's port
/// must not get patless to send it another file.
async fn read_arc_key(realm: &str, dir: &Path) -> Result<Secret, CredentialError> {
    let refuse = |why: &str| {
        CredentialError::new(
            ErrorClass::BadResponse,
            format!(
                "refused the key file `{realm}` named by the Azure Arc challenge: {why}. patless \
                 reads only `*.key` files of at most {ARC_KEY_MAX_BYTES} bytes directly inside \
                 {}; is something other than the Arc agent (himds) listening at the identity \
                 endpoint?",
                dir.display()
            ),
        )
    };
    let no_access = |e: &std::io::Error| {
        CredentialError::new(
            ErrorClass::NotConfigured,
            format!(
                "cannot read the Azure Arc key file {realm} ({e}): run patless as a member of \
                 the `himds` group (sudo usermod -aG himds <user>) or as root"
            ),
        )
    };
    let path = Path::new(realm);
    if !path.is_absolute() {
        return Err(refuse("it is not an absolute path"));
    }
    let normal = lexical(path);
    if normal.parent() != Some(lexical(dir).as_path()) {
        return Err(refuse(if realm.contains("..") {
            "it is not inside the key directory once `..` is resolved"
        } else {
            "it is not inside the key directory"
        }));
    }
    if normal.extension().and_then(|e| e.to_str()) != Some("key") {
        return Err(refuse("its name does not end in .key"));
    }
    let canonical_dir = tokio::fs::canonicalize(dir).await.map_err(|e| {
        CredentialError::new(
            ErrorClass::NotConfigured,
            format!(
                "the Azure Arc key directory {} is unavailable ({e}): is the Azure Arc agent \
                 installed?",
                dir.display()
            ),
        )
    })?;
    let canonical = tokio::fs::canonicalize(&normal)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => no_access(&e),
            _ => refuse(&format!("it cannot be opened ({e})")),
        })?;
    if canonical.parent() != Some(canonical_dir.as_path())
        || canonical.extension().and_then(|e| e.to_str()) != Some("key")
    {
        return Err(refuse("it links to a file outside the key directory"));
    }
    let meta = tokio::fs::metadata(&canonical)
        .await
        .map_err(|e| no_access(&e))?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    if meta.len() > ARC_KEY_MAX_BYTES {
        return Err(refuse(&format!(
            "it is {} bytes, over the {ARC_KEY_MAX_BYTES}-byte limit",
            meta.len()
        )));
    }
    let bytes = tokio::fs::read(&canonical)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => no_access(&e),
            _ => refuse(&format!("it cannot be read ({e})")),
        })?;
    if bytes.len() as u64 > ARC_KEY_MAX_BYTES {
        return Err(refuse("it grew over the size limit while being read"));
    }
    let key = String::from_utf8(bytes).map_err(|_| refuse("it is not text"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(refuse("it is empty"));
    }
    Ok(Secret::new(key))
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

    #[test]
    fn delays_double_honour_retry_after_and_stay_in_budget() {
        let s = Duration::from_secs;
        assert_eq!(next_delay(0, None, s(0), GONE_BUDGET), Some(s(1)));
        assert_eq!(next_delay(1, None, s(1), GONE_BUDGET), Some(s(2)));
        assert_eq!(next_delay(6, None, s(40), GONE_BUDGET), Some(s(16)));
        // The last wait is cut to land on the budget; then it is over.
        assert_eq!(next_delay(7, None, s(63), GONE_BUDGET), Some(s(7)));
        assert_eq!(next_delay(8, None, s(70), GONE_BUDGET), None);
        // Retry-After is a floor; one longer than what is left gives up.
        assert_eq!(next_delay(0, Some(s(3)), s(0), RETRY_BUDGET), Some(s(3)));
        assert_eq!(next_delay(3, Some(s(1)), s(0), RETRY_BUDGET), Some(s(8)));
        assert_eq!(next_delay(0, Some(s(30)), s(0), RETRY_BUDGET), None);
    }

    #[test]
    fn token_numbers_as_strings_or_numbers_or_expires_on() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t = parse_token(
            br#"{"access_token":"a","expires_in":"86399","expires_on":"1700086399","token_type":"Bearer","resource":"r"}"#,
            now,
        )
        .expect("strings");
        assert_eq!(t.expires_in, Duration::from_secs(86399));
        let t = parse_token(br#"{"access_token":"a","expires_in":3600}"#, now).expect("number");
        assert_eq!(t.expires_in, Duration::from_secs(3600));
        let t = parse_token(
            br#"{"access_token":"a","expires_on":"1700003600","token_type":"Bearer"}"#,
            now,
        )
        .expect("expires_on only");
        assert_eq!(t.expires_in, Duration::from_secs(3600));
        assert!(parse_token(br#"{"access_token":"a","expires_on":"1600000000"}"#, now).is_err());
        assert!(parse_token(br#"{"access_token":"a"}"#, now).is_err());
        let e = parse_token(
            br#"{"access_token":"tok-SECRET","token_type":"pop","expires_in":"1"}"#,
            now,
        )
        .err()
        .unwrap_or_default();
        assert!(!e.contains("tok-SECRET"), "{e}");
    }

    #[test]
    fn error_detail_redacts_and_shortens() {
        let s = Secret::new("hdr-secret-value");
        let d = error_detail(
            br#"{"statusCode":401,"message":"bad header hdr-secret-value"}"#,
            Some(&s),
        )
        .unwrap_or_default();
        assert_eq!(d, "bad header ***");
        assert_eq!(
            error_detail(
                br#"{"error":"invalid_request","error_description":"Identity not found"}"#,
                None
            )
            .as_deref(),
            Some("invalid_request: Identity not found")
        );
        assert_eq!(error_detail(b"<html>oops</html>", None), None);
        assert_eq!(
            aadsts_code("invalid_resource: AADSTS500011: The resource principal"),
            Some(500011)
        );
    }

    #[test]
    fn realm_and_lexical_paths() {
        assert_eq!(
            realm_of("Basic realm=/var/opt/azcmagent/tokens/a.key"),
            Some("/var/opt/azcmagent/tokens/a.key")
        );
        assert_eq!(realm_of("basic realm=\"/x/a.key\""), Some("/x/a.key"));
        assert_eq!(realm_of("Bearer realm=/x/a.key"), None);
        assert_eq!(realm_of("Basic"), None);
        assert_eq!(
            lexical(Path::new("/var/opt/azcmagent/tokens/../../../etc/x.key")),
            PathBuf::from("/var/etc/x.key")
        );
        assert_eq!(
            lexical(Path::new("/a/./b/../c.key")),
            PathBuf::from("/a/c.key")
        );
        assert_eq!(lexical(Path::new("/../../x")), PathBuf::from("/x"));
    }

    #[test]
    fn imds_urls() {
        let u = |s: &str| Url::parse(s).expect("url");
        assert_eq!(
            imds_token_url(&u("http://169.254.169.254")).as_str(),
            "http://169.254.169.254/metadata/identity/oauth2/token"
        );
        assert_eq!(
            imds_token_url(&u("http://127.0.0.1:8080/prefix/")).as_str(),
            "http://127.0.0.1:8080/prefix/metadata/identity/oauth2/token"
        );
        assert_eq!(
            imds_token_url(&u("http://h/metadata/identity/oauth2/token")).as_str(),
            "http://h/metadata/identity/oauth2/token"
        );
        assert_eq!(
            base_of(&imds_token_url(&u("http://169.254.169.254"))),
            "http://169.254.169.254"
        );
    }
}
