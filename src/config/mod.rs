//! Configuration: found (SPEC §1 lookup order), read (TOML/YAML/JSON + `PATLESS_…` overrides),
//! then validated into the model the rest of the program uses. Every problem is collected and
//! reported at once, each naming its key; nothing binds before the config is whole.

mod load;
pub mod raw;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

pub use load::{
    find_config_file, literal_secret_warnings, load, load_from_str, ConfigSource, Format,
    LoadedConfig,
};
pub use raw::{RawConfig, RawIdentityEndpoint, SecretValue};
pub(crate) use validate::identity_header_problem;

use crate::env::Environment;
use crate::secret::Secret;

/// The embedded default config (SPEC §4).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[entra]`
    pub entra: EntraConfig,
    /// Profiles by name (including an implicit `auto` when host routes need it).
    pub profiles: BTreeMap<String, Profile>,
    /// Explicit routes, in file order.
    pub routes: Vec<Route>,
    /// `[identity_endpoint]`, if set.
    pub identity_endpoint: Option<IdentityEndpointConfig>,
}

/// The identity endpoint's default listener.
pub const IDENTITY_ENDPOINT_LISTEN: &str = "127.0.0.1:7072";

/// `[identity_endpoint]`, validated (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityEndpointConfig {
    /// Where it listens: loopback TCP or a Unix socket.
    pub listen: ListenAddr,
    /// The secret clients send as `X-IDENTITY-HEADER`; resolved when the app is built.
    pub header: SecretSource,
    /// Whose tokens it hands out.
    pub profile: String,
    /// The resources it hands out tokens for, as configured: no trailing `/`, no `/.default`.
    /// Compared with a request's `resource` case-insensitively, trailing `/` ignored.
    pub resources: Vec<String>,
    /// Whether `resources` was written down (else it came from the profile's routes).
    pub resources_explicit: bool,
}

impl IdentityEndpointConfig {
    /// The configured resource a request's `resource` names, if any: trailing `/` and a
    /// `/.default` suffix ignored, compared case-insensitively.
    pub fn allowed(&self, asked: &str) -> Option<&str> {
        let asked = normalise_resource(asked);
        self.resources
            .iter()
            .find(|r| r.eq_ignore_ascii_case(asked))
            .map(String::as_str)
    }

    /// The scopes it may ask the token cache for (`R/.default` for each resource).
    pub fn scopes(&self) -> Vec<String> {
        self.resources
            .iter()
            .map(|r| format!("{r}/.default"))
            .collect()
    }
}

/// A resource as the identity endpoint compares it: surrounding space, a `/.default` suffix
/// (a scope given where a resource belongs) and trailing `/` removed.
pub fn normalise_resource(text: &str) -> &str {
    let t = text.trim();
    let t = t.strip_suffix("/.default").unwrap_or(t);
    t.trim_end_matches('/')
}

/// Where a listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix domain socket path (`unix:/path`).
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Proxy listener.
    pub listen: ListenAddr,
    /// Admin listener, if on.
    pub admin_listen: Option<ListenAddr>,
    /// Serve `/{known-host}/…`.
    pub host_routes: bool,
    /// `Host` values accepted besides loopback names (lower-case).
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to send requests.
    pub allowed_origins: Vec<String>,
    /// Profile for host routes.
    pub default_profile: String,
    /// Drain time on SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// After SIGTERM/SIGINT, how long `/readyz` answers 503 while the proxy still serves, before
    /// the listeners close.
    pub shutdown_delay: Duration,
    /// Reload when the config file changes (besides on SIGHUP).
    pub watch_config: bool,
    /// Upstream connect timeout (TCP + TLS).
    pub connect_timeout: Duration,
    /// Upstream response-header timeout.
    pub response_header_timeout: Duration,
    /// How long a request waits for a token acquisition in flight.
    pub token_wait_timeout: Duration,
    /// Where refresh tokens are stored (else `$XDG_STATE_HOME/patless`).
    pub state_dir: Option<PathBuf>,
    /// The shared secret clients must send, if any.
    pub inbound_token: Option<SecretSource>,
    /// The secret the admin listener requires for `/metrics` and `/readyz`'s details, if any.
    pub admin_token: Option<SecretSource>,
    /// Mode of a `unix:` listener's socket file.
    pub unix_socket_mode: u32,
    /// Limits on what a client may send.
    pub limits: Limits,
    /// Threads serving the proxy listener (`serve`), each with its own upstream pool.
    pub workers: usize,
    /// The egress proxy in effect (key or environment), if any.
    pub egress_proxy: Option<crate::egress::EgressProxy>,
}

/// Limits on clients (SPEC §6, issue "hardened by default").
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line + headers, bytes.
    pub max_header_bytes: usize,
    /// A request head must arrive within this: from the connection opening (first request) or
    /// from its first byte (later requests).
    pub header_read_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Request target length, bytes.
    pub max_uri_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_connections: 1024,
            max_uri_bytes: 8 * 1024,
        }
    }
}

/// `[entra]`, validated.
#[derive(Debug, Clone)]
pub struct EntraConfig {
    /// Authority host (`https://login.microsoftonline.com`).
    pub authority_host: Url,
    /// Default tenant.
    pub tenant_id: Option<String>,
    /// Extra trust roots.
    pub ca_file: Option<PathBuf>,
    /// Timeout of one token request.
    pub request_timeout: Duration,
}

/// A secret reference, resolved at each acquisition (so rotated files are picked up).
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A literal value from the config.
    Literal(Secret),
    /// An environment variable.
    Env(String),
    /// A file, re-read each time, trailing newline trimmed.
    File(PathBuf),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Literal(_) => f.write_str("literal(<redacted>)"),
            SecretSource::Env(name) => write!(f, "env({name})"),
            SecretSource::File(path) => write!(f, "file({})", path.display()),
        }
    }
}

impl SecretSource {
    /// Reads the secret now. The error says where it looked, never what it found.
    pub fn resolve(&self, env: &dyn Environment) -> Result<Secret, String> {
        match self {
            SecretSource::Literal(s) => Ok(s.clone()),
            SecretSource::Env(name) => match env.var(name) {
                Some(v) if !v.is_empty() => Ok(Secret::new(v)),
                _ => Err(format!("environment variable {name} is not set or empty")),
            },
            SecretSource::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => {
                    let v = text.trim_end_matches(['\n', '\r']);
                    if v.is_empty() {
                        Err(format!("secret file {} is empty", path.display()))
                    } else {
                        Ok(Secret::new(v))
                    }
                }
                Err(e) => Err(format!("cannot read secret file {}: {e}", path.display())),
            },
        }
    }
}

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

/// The credential kinds this build supports, with their validated settings. Values that default
/// from the environment (`AZURE_CLIENT_ID`, …) are `None` here and resolved when the credential is
/// built, from the injected environment.
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
    /// Authorization code + PKCE on a loopback redirect at `patless login`, then the stored
    /// refresh token.
    InteractiveBrowser {
        /// Tenant (or `organizations`/`common`).
        tenant_id: String,
        /// The public client's application id.
        client_id: String,
        /// Loopback redirect port; `None` picks a free one.
        redirect_port: Option<u16>,
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

    /// The kind's name, as in the config.
    pub fn name(&self) -> &'static str {
        match self {
            ProfileKind::ClientSecret { .. } => "client_secret",
            ProfileKind::ClientCertificate { .. } => "client_certificate",
            ProfileKind::ManagedIdentity { .. } => "managed_identity",
            ProfileKind::WorkloadIdentity { .. } => "workload_identity",
            ProfileKind::AzurePipelines { .. } => "azure_pipelines",
            ProfileKind::AzureCli { .. } => "azure_cli",
            ProfileKind::AzureDeveloperCli { .. } => "azure_developer_cli",
            ProfileKind::DeviceCode { .. } => "device_code",
            ProfileKind::InteractiveBrowser { .. } => "interactive_browser",
            ProfileKind::Auto { .. } => "auto",
        }
    }
}

/// An explicit route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Normalised prefix: starts with `/`, no trailing `/` (`/` alone for the root).
    pub prefix: String,
    /// Upstream base URL (no trailing `/` in the path, no query).
    pub upstream: Url,
    /// Profile name.
    pub profile: String,
    /// Entra scope.
    pub scope: String,
}

impl Config {
    /// The profiles that some route (or host routes) uses, in name order.
    pub fn profiles_in_use(&self) -> Vec<&Profile> {
        let mut names: Vec<&str> = self.routes.iter().map(|r| r.profile.as_str()).collect();
        if self.server.host_routes {
            names.push(&self.server.default_profile);
        }
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| self.profiles.get(n))
            .collect()
    }
}

/// One problem with the configuration: which key, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// Dotted key path (`routes[1].profile`).
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be used. Every variant means: nothing starts (exit 64).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` or `$PATLESS_CONFIG` does not exist or can't be read.
    #[error("config file {path}: {reason}")]
    File {
        /// Path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file or the environment could not be read into the config's shape.
    #[error("invalid configuration ({source_name}):\n{}", bullet(errors))]
    Parse {
        /// File or "embedded default".
        source_name: String,
        /// Every error.
        errors: Vec<String>,
    },
    /// The values are wrong.
    #[error("invalid configuration ({source_name}):\n{}", bullet(errors))]
    Invalid {
        /// File or "embedded default".
        source_name: String,
        /// Every error, each naming its key.
        errors: Vec<KeyError>,
    },
}

fn bullet<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses `"30s"`, `"250ms"`, `"5m"`, `"1h"` or plain seconds.
///
/// ```
/// use std::time::Duration;
/// use patless::config::parse_duration;
/// assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
/// assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
/// assert_eq!(parse_duration("12"), Some(Duration::from_secs(12)));
/// assert_eq!(parse_duration("soon"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "sec" | "secs" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// A secret reference as written, a literal value redacted.
fn redacted_ref(s: &SecretSource) -> SecretValue {
    match s {
        SecretSource::Literal(_) => SecretValue::Literal("<redacted>".into()),
        SecretSource::Env(env) => SecretValue::Env(raw::EnvRef { env: env.clone() }),
        SecretSource::File(file) => SecretValue::File(raw::FileRef { file: file.clone() }),
    }
}

fn duration_text(d: Duration) -> raw::RawDuration {
    let ms = d.as_millis();
    raw::RawDuration::Text(if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    })
}

impl Config {
    /// The effective configuration — file, environment and defaults, with inferred scopes and the
    /// implicit `auto` profile — in the file's shape, every literal secret redacted.
    pub fn effective(&self, raw: &RawConfig) -> RawConfig {
        let s = &self.server;
        let server = raw::RawServer {
            listen: Some(s.listen.to_string()),
            admin_listen: Some(
                s.admin_listen
                    .as_ref()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            ),
            host_routes: Some(s.host_routes),
            allowed_hosts: s.allowed_hosts.clone(),
            allowed_origins: s.allowed_origins.clone(),
            allow_unauthenticated_clients: raw.server.allow_unauthenticated_clients,
            admin_token: s.admin_token.as_ref().map(redacted_ref),
            allow_unauthenticated_admin: raw.server.allow_unauthenticated_admin,
            default_profile: Some(s.default_profile.clone()),
            shutdown_grace: Some(duration_text(s.shutdown_grace)),
            shutdown_delay: Some(duration_text(s.shutdown_delay)),
            watch_config: Some(s.watch_config),
            connect_timeout: Some(duration_text(s.connect_timeout)),
            response_header_timeout: Some(duration_text(s.response_header_timeout)),
            token_wait_timeout: Some(duration_text(s.token_wait_timeout)),
            state_dir: s.state_dir.clone(),
            inbound_token: s.inbound_token.as_ref().map(redacted_ref),
            unix_socket_mode: Some(format!("{:04o}", s.unix_socket_mode)),
            max_header_bytes: Some(s.limits.max_header_bytes),
            header_read_timeout: Some(duration_text(s.limits.header_read_timeout)),
            idle_timeout: Some(duration_text(s.limits.idle_timeout)),
            max_connections: Some(s.limits.max_connections),
            workers: Some(s.workers),
            max_uri_bytes: Some(s.limits.max_uri_bytes),
            // The proxy in effect (from the key or HTTPS_PROXY), its password redacted.
            egress_proxy: match (&s.egress_proxy, &raw.server.egress_proxy) {
                (_, Some(r @ (raw::SecretValue::Env(_) | raw::SecretValue::File(_)))) => {
                    Some(r.clone())
                }
                (Some(p), _) => Some(raw::SecretValue::Literal(p.redacted_url())),
                (None, r) => r.as_ref().map(|_| raw::SecretValue::Literal(String::new())),
            },
            no_proxy: s
                .egress_proxy
                .as_ref()
                .map(|p| p.no_proxy().to_vec())
                .or_else(|| raw.server.no_proxy.clone()),
        };
        let entra = raw::RawEntra {
            authority_host: Some(
                self.entra
                    .authority_host
                    .as_str()
                    .trim_end_matches('/')
                    .to_string(),
            ),
            tenant_id: self.entra.tenant_id.clone(),
            ca_file: self.entra.ca_file.clone(),
            request_timeout: Some(duration_text(self.entra.request_timeout)),
        };
        let profiles = self
            .profiles
            .values()
            .map(|p| {
                let mut rp = raw::RawProfile {
                    kind: Some(p.kind.name().to_string()),
                    authority_host: Some(
                        p.authority_host.as_str().trim_end_matches('/').to_string(),
                    ),
                    client_capabilities: (!p.client_capabilities.is_empty())
                        .then(|| p.client_capabilities.clone()),
                    ..Default::default()
                };
                match &p.kind {
                    ProfileKind::ClientSecret {
                        tenant_id,
                        client_id,
                        client_secret,
                    } => {
                        rp.tenant_id = Some(tenant_id.clone());
                        rp.client_id = Some(client_id.clone());
                        rp.client_secret = Some(redacted_ref(client_secret));
                    }
                    ProfileKind::Auto {
                        tenant_id,
                        client_id,
                    } => {
                        rp.tenant_id = tenant_id.clone();
                        rp.client_id = client_id.clone();
                    }
                    ProfileKind::ClientCertificate {
                        tenant_id,
                        client_id,
                        certificate,
                        certificate_key,
                        certificate_password,
                        send_certificate_chain,
                    } => {
                        rp.tenant_id = Some(tenant_id.clone());
                        rp.client_id = Some(client_id.clone());
                        rp.certificate = Some(certificate.clone());
                        rp.certificate_key = certificate_key.clone();
                        rp.certificate_password = certificate_password.as_ref().map(redacted_ref);
                        rp.send_certificate_chain = Some(*send_certificate_chain);
                    }
                    ProfileKind::ManagedIdentity { id, endpoint } => {
                        match id {
                            Some(ManagedIdentityId::ClientId(v)) => rp.client_id = Some(v.clone()),
                            Some(ManagedIdentityId::ObjectId(v)) => rp.object_id = Some(v.clone()),
                            Some(ManagedIdentityId::ResourceId(v)) => {
                                rp.resource_id = Some(v.clone())
                            }
                            None => {}
                        }
                        rp.endpoint = endpoint
                            .as_ref()
                            .map(|u| u.as_str().trim_end_matches('/').to_string());
                    }
                    ProfileKind::AzureCli {
                        tenant_id,
                        subscription,
                    } => {
                        rp.tenant_id = tenant_id.clone();
                        rp.subscription = subscription.clone();
                    }
                    ProfileKind::AzureDeveloperCli { tenant_id } => {
                        rp.tenant_id = tenant_id.clone()
                    }
                    ProfileKind::DeviceCode {
                        tenant_id,
                        client_id,
                    } => {
                        rp.tenant_id = Some(tenant_id.clone());
                        rp.client_id = Some(client_id.clone());
                    }
                    ProfileKind::InteractiveBrowser {
                        tenant_id,
                        client_id,
                        redirect_port,
                    } => {
                        rp.tenant_id = Some(tenant_id.clone());
                        rp.client_id = Some(client_id.clone());
                        rp.redirect_port = *redirect_port;
                    }
                    ProfileKind::WorkloadIdentity {
                        tenant_id,
                        client_id,
                        token_file,
                    } => {
                        rp.tenant_id = tenant_id.clone();
                        rp.client_id = client_id.clone();
                        rp.token_file = token_file.clone();
                    }
                    ProfileKind::AzurePipelines {
                        tenant_id,
                        client_id,
                        service_connection_id,
                        system_access_token,
                    } => {
                        rp.tenant_id = tenant_id.clone();
                        rp.client_id = client_id.clone();
                        rp.service_connection_id = service_connection_id.clone();
                        rp.system_access_token = Some(redacted_ref(system_access_token));
                    }
                }
                (p.name.clone(), rp)
            })
            .collect();
        let routes = self
            .routes
            .iter()
            .map(|r| raw::RawRoute {
                prefix: Some(r.prefix.clone()),
                upstream: Some(r.upstream.as_str().trim_end_matches('/').to_string()),
                profile: Some(r.profile.clone()),
                scope: Some(r.scope.clone()),
            })
            .collect();
        let identity_endpoint =
            self.identity_endpoint
                .as_ref()
                .map(|ie| raw::RawIdentityEndpoint {
                    listen: Some(ie.listen.to_string()),
                    header: Some(redacted_ref(&ie.header)),
                    profile: Some(ie.profile.clone()),
                    resources: Some(ie.resources.clone()),
                });
        RawConfig {
            server,
            entra,
            profiles,
            routes,
            identity_endpoint,
        }
    }
}
