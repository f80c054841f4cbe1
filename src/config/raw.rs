//! The configuration as written: serde types that mirror the file, key for key
//! (docs/configuration.md). Nothing here is checked beyond its shape; `validate` turns it into
//! the model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A secret as written: a literal string, `{ env = "NAME" }` or `{ file = "PATH" }`. A table with
/// any other key (a typo, or both `env` and `file`) is refused, so a secret never comes from a
/// place the operator did not mean.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SecretValue {
    /// `{ env = "NAME" }`: read from the environment at each acquisition.
    Env(EnvRef),
    /// `{ file = "PATH" }`: read at each acquisition, trailing newline trimmed.
    File(FileRef),
    /// The value itself.
    Literal(String),
}

/// `{ env = "NAME" }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnvRef {
    /// Variable name.
    pub env: String,
}

/// `{ file = "PATH" }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// File path.
    pub file: PathBuf,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretValue::Env(r) => write!(f, "{{ env = {:?} }}", r.env),
            SecretValue::File(r) => write!(f, "{{ file = {:?} }}", r.file),
            SecretValue::Literal(_) => f.write_str("\"<redacted>\""),
        }
    }
}

impl SecretValue {
    /// The same reference with a literal value replaced by `<redacted>`.
    pub fn redacted(&self) -> SecretValue {
        match self {
            SecretValue::Literal(_) => SecretValue::Literal("<redacted>".into()),
            other => other.clone(),
        }
    }
}

/// A duration as written: `"30s"`, `"500ms"`, `"5m"`, `"1h"`, or a number of seconds.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RawDuration {
    /// Seconds.
    Seconds(f64),
    /// With a unit.
    Text(String),
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`
    #[serde(default)]
    pub server: RawServer,
    /// `[entra]`
    #[serde(default)]
    pub entra: RawEntra,
    /// `[profiles.NAME]`
    #[serde(default)]
    pub profiles: BTreeMap<String, RawProfile>,
    /// `[[routes]]`
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// `[identity_endpoint]`: absent, no identity endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_endpoint: Option<RawIdentityEndpoint>,
    /// `[logging]`
    #[serde(default)]
    pub logging: RawLogging,
}

/// `[logging]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    /// `"text"` (default) or `"json"`.
    pub format: Option<String>,
}

/// `[identity_endpoint]`: the App Service managed-identity protocol served to local SDKs (and,
/// with `imds`, IMDS's token path).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentityEndpoint {
    /// Listener (default [`IDENTITY_ENDPOINT_LISTEN`](super::defaults::IDENTITY_ENDPOINT_LISTEN));
    /// loopback or `unix:/path` only.
    pub listen: Option<String>,
    /// The secret clients send as `X-IDENTITY-HEADER` (required).
    pub header: Option<SecretValue>,
    /// Whose tokens it hands out (default `server.default_profile`).
    pub profile: Option<String>,
    /// The resources it hands out tokens for (default: those of the profile's routes).
    pub resources: Option<Vec<String>>,
    /// Also serve the IMDS token path (default `false`).
    pub imds: Option<bool>,
}

/// `[server]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Proxy listener.
    pub listen: Option<String>,
    /// Admin listener; `""` turns it off.
    pub admin_listen: Option<String>,
    /// Serve `/{known-host}/…`.
    pub host_routes: Option<bool>,
    /// `Host` values accepted besides loopback names.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to send requests.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// A shared secret clients must send (`Proxy-Authorization: Bearer` or `X-Patless-Token`).
    pub inbound_token: Option<SecretValue>,
    /// Mode of a `unix:` listener's socket file, in octal (default
    /// [`UNIX_SOCKET_MODE`](super::defaults::UNIX_SOCKET_MODE)).
    pub unix_socket_mode: Option<String>,
    /// Most bytes of request line + headers (default
    /// [`MAX_HEADER_BYTES`](super::defaults::MAX_HEADER_BYTES)); more → 431.
    pub max_header_bytes: Option<usize>,
    /// Time a client may take to send a request head: from the connection opening for the first
    /// request, from the head's first byte for later ones; the slowloris bound (default
    /// [`HEADER_READ_TIMEOUT`](super::defaults::HEADER_READ_TIMEOUT)).
    pub header_read_timeout: Option<RawDuration>,
    /// How long a kept-alive connection may sit idle between requests (default
    /// [`IDLE_TIMEOUT`](super::defaults::IDLE_TIMEOUT)).
    pub idle_timeout: Option<RawDuration>,
    /// Most concurrent client connections (default
    /// [`MAX_CONNECTIONS`](super::defaults::MAX_CONNECTIONS)); more get a 503 and are closed.
    pub max_connections: Option<usize>,
    /// Threads that serve the proxy listener, each with its own event loop and upstream
    /// keep-alive pool (default: the CPUs patless may use). A restart applies a change.
    pub workers: Option<usize>,
    /// Longest request target (path + query) in bytes (default
    /// [`MAX_URI_BYTES`](super::defaults::MAX_URI_BYTES)); longer → 414.
    pub max_uri_bytes: Option<usize>,
    /// Accept a non-loopback `listen` with no inbound authentication (docs/security.md).
    pub allow_unauthenticated_clients: Option<bool>,
    /// A secret the admin listener requires for `/metrics` (and `/readyz`'s details), sent as
    /// `Authorization: Bearer …`; needed for a non-loopback `admin_listen`.
    pub admin_token: Option<SecretValue>,
    /// Accept a non-loopback `admin_listen` with no `admin_token`.
    pub allow_unauthenticated_admin: Option<bool>,
    /// Profile for host routes.
    pub default_profile: Option<String>,
    /// Where `device_code`/`interactive_browser` refresh tokens are stored.
    pub state_dir: Option<PathBuf>,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_grace: Option<RawDuration>,
    /// After SIGTERM/SIGINT, how long `/readyz` answers 503 while the proxy still serves, before
    /// the listeners close (so a load balancer stops sending first).
    pub shutdown_delay: Option<RawDuration>,
    /// Reload the configuration when its file changes (polled every second), besides on SIGHUP.
    pub watch_config: Option<bool>,
    /// Upstream TCP connect timeout.
    pub connect_timeout: Option<RawDuration>,
    /// Time allowed for the upstream's response headers.
    pub response_header_timeout: Option<RawDuration>,
    /// How long a request waits for a token that is being acquired.
    pub token_wait_timeout: Option<RawDuration>,
    /// Speak HTTP/2 to `https` upstreams that offer it by ALPN.
    pub upstream_http2: Option<bool>,
    /// Idle HTTP/1.1 connections kept per upstream and worker.
    pub upstream_max_idle: Option<usize>,
    /// HTTP proxy for Entra and upstreams (`http://[user:password@]host:port`; `""` for none even
    /// when `HTTPS_PROXY` is set). A secret value: it may hold the proxy's password.
    pub egress_proxy: Option<SecretValue>,
    /// Destinations that bypass the egress proxy (host names, `.domain`, IPs, CIDR blocks, `*`);
    /// absent: `NO_PROXY` applies to a proxy from the environment.
    pub no_proxy: Option<Vec<String>>,
}

/// `[entra]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntra {
    /// Authority host (default `AZURE_AUTHORITY_HOST`, else the public cloud).
    pub authority_host: Option<String>,
    /// Default tenant.
    pub tenant_id: Option<String>,
    /// Extra trust roots (PEM), for Entra and upstreams.
    pub ca_file: Option<PathBuf>,
    /// Timeout of one token request.
    pub request_timeout: Option<RawDuration>,
}

/// `[profiles.NAME]`: the keys of every kind; `validate` checks which belong to the kind.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RawProfile {
    /// Credential kind.
    pub kind: Option<String>,
    /// Tenant (overrides `[entra] tenant_id`).
    pub tenant_id: Option<String>,
    /// Application (client) id.
    pub client_id: Option<String>,
    /// Client secret (`client_secret`, and a web app's `interactive_browser`).
    pub client_secret: Option<SecretValue>,
    /// Authority host (overrides `[entra]`).
    pub authority_host: Option<String>,
    /// `client_certificate` (and a web app's `interactive_browser`): PEM (certificate + key) or
    /// PFX/P12 file.
    pub certificate: Option<PathBuf>,
    /// `client_certificate`: the private key in a separate PEM file, when `certificate` holds only
    /// the certificate(s).
    pub certificate_key: Option<PathBuf>,
    /// `client_certificate`: the PFX password, or the key's, if any.
    pub certificate_password: Option<SecretValue>,
    /// `client_certificate`: send the chain (`x5c`) for subject-name/issuer registration.
    pub send_certificate_chain: Option<bool>,
    /// `managed_identity`: user-assigned identity by object (principal) id.
    pub object_id: Option<String>,
    /// `managed_identity`: user-assigned identity by ARM resource id.
    pub resource_id: Option<String>,
    /// `managed_identity`: IMDS base URL (default `http://169.254.169.254`).
    pub endpoint: Option<String>,
    /// `workload_identity`: the projected service-account token file.
    pub token_file: Option<PathBuf>,
    /// `azure_cli`: the subscription to ask `az` for.
    pub subscription: Option<String>,
    /// `interactive_browser`: the loopback redirect port (default: a free one).
    pub redirect_port: Option<u16>,
    /// `interactive_browser`: the redirect URI registered on the app (default
    /// `http://localhost:PORT`); one patless cannot listen on means the person pastes the address
    /// the browser was sent to.
    pub redirect_uri: Option<String>,
    /// `azure_pipelines`: the service connection's id.
    pub service_connection_id: Option<String>,
    /// `azure_pipelines`: the job's access token (default: the environment variable
    /// [`SYSTEM_ACCESS_TOKEN_ENV`](super::defaults::SYSTEM_ACCESS_TOKEN_ENV)).
    pub system_access_token: Option<SecretValue>,
    /// Client capabilities declared to Entra (`["cp1"]`: this client handles CAE claims
    /// challenges), sent as the `xms_cc` claims request.
    pub client_capabilities: Option<Vec<String>>,
    /// Keys no kind knows (reported by `validate`).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Whether a key is written: absent, blank text, or a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    /// Not written.
    Absent,
    /// Written as empty or blank text.
    Blank,
    /// Written.
    Given,
}

impl RawProfile {
    /// The keys that only some kinds take, in the order problems with them are reported, each
    /// with whether it is written. The kind table (`config/kinds.rs`) names these keys; this is
    /// where a name meets its field.
    pub(crate) fn kind_keys(&self) -> [(&'static str, Presence); 15] {
        fn text(v: &Option<String>) -> Presence {
            match v {
                None => Presence::Absent,
                Some(t) if t.trim().is_empty() => Presence::Blank,
                Some(_) => Presence::Given,
            }
        }
        fn any<T>(v: &Option<T>) -> Presence {
            match v {
                None => Presence::Absent,
                Some(_) => Presence::Given,
            }
        }
        [
            ("client_id", text(&self.client_id)),
            ("client_secret", any(&self.client_secret)),
            ("certificate", any(&self.certificate)),
            ("certificate_key", any(&self.certificate_key)),
            ("certificate_password", any(&self.certificate_password)),
            ("send_certificate_chain", any(&self.send_certificate_chain)),
            ("object_id", text(&self.object_id)),
            ("resource_id", text(&self.resource_id)),
            ("endpoint", text(&self.endpoint)),
            ("token_file", any(&self.token_file)),
            ("service_connection_id", text(&self.service_connection_id)),
            ("system_access_token", any(&self.system_access_token)),
            ("subscription", text(&self.subscription)),
            ("redirect_port", any(&self.redirect_port)),
            ("redirect_uri", text(&self.redirect_uri)),
        ]
    }

    /// Whether the kind-specific `key` is written ([`Presence::Absent`] for a name it does not know).
    pub(crate) fn presence(&self, key: &str) -> Presence {
        self.kind_keys()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map_or(Presence::Absent, |(_, p)| p)
    }
}

/// `[[routes]]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Path prefix, matched on whole segments.
    pub prefix: Option<String>,
    /// Upstream base URL.
    pub upstream: Option<String>,
    /// Credential profile.
    pub profile: Option<String>,
    /// Entra scope; inferred for known hosts.
    pub scope: Option<String>,
    /// `"bearer"` or `"basic"`; by default the known host's (`basic` for Azure Artifacts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Point the upstream's absolute URLs in textual answers at the route; by default on for the
    /// Azure Artifacts, Graph, Defender and ARM hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_urls: Option<bool>,
}

impl RawConfig {
    /// A copy with every literal secret replaced by `<redacted>` (for `patless config`).
    pub fn redacted(&self) -> RawConfig {
        let mut c = self.clone();
        c.server.inbound_token = c.server.inbound_token.as_ref().map(SecretValue::redacted);
        c.server.admin_token = c.server.admin_token.as_ref().map(SecretValue::redacted);
        // The proxy URL may carry user:password.
        c.server.egress_proxy = c.server.egress_proxy.as_ref().map(SecretValue::redacted);
        if let Some(ie) = c.identity_endpoint.as_mut() {
            ie.header = ie.header.as_ref().map(SecretValue::redacted);
        }
        for p in c.profiles.values_mut() {
            p.client_secret = p.client_secret.as_ref().map(SecretValue::redacted);
            p.certificate_password = p.certificate_password.as_ref().map(SecretValue::redacted);
            p.system_access_token = p.system_access_token.as_ref().map(SecretValue::redacted);
            for (k, v) in p.other.iter_mut() {
                if k.contains("secret") || k.contains("password") || k.contains("token") {
                    *v = serde_json::Value::String("<redacted>".into());
                }
            }
        }
        c
    }
}
