//! Raw → validated. Every problem is collected (not just the first), each naming its key and what
//! was expected; cross-checks: every route's profile exists, every scope is known or given,
//! `http://` only toward loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::raw::{RawConfig, RawDuration, RawProfile, SecretValue};
use super::{
    parse_duration, Config, EntraConfig, KeyError, ListenAddr, ManagedIdentityId, Profile,
    ProfileKind, Route, SecretSource, ServerConfig,
};
use crate::env::Environment;
use crate::hosts;
use crate::secret::Secret;

/// Most `server.workers`: more threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

#[derive(Default)]
struct Errors(Vec<KeyError>);

impl Errors {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(KeyError {
            key: key.into(),
            message: message.into(),
        });
    }
}

pub(super) fn validate(raw: &RawConfig, env: &dyn Environment) -> Result<Config, Vec<KeyError>> {
    let mut errs = Errors::default();

    let listen = listen_addr(
        &mut errs,
        "server.listen",
        raw.server.listen.as_deref().unwrap_or("127.0.0.1:7070"),
    );
    if let Some(ListenAddr::Tcp(addr)) = &listen {
        if !addr.ip().is_loopback()
            && raw.server.inbound_token.is_none()
            && raw.server.allow_unauthenticated_clients != Some(true)
        {
            errs.add(
                "server.listen",
                format!(
                    "{addr} is not a loopback address: anyone who reaches it could act with patless's \
                     identities. Set inbound_token (clients then send it), listen on 127.0.0.1 (or \
                     unix:/path), or set allow_unauthenticated_clients = true if a network policy \
                     already restricts who connects"
                ),
            );
        }
    }
    let admin_listen = match raw
        .server
        .admin_listen
        .as_deref()
        .unwrap_or("127.0.0.1:7071")
    {
        "" => None,
        text => listen_addr(&mut errs, "server.admin_listen", text),
    };
    if let Some(ListenAddr::Tcp(addr)) = &admin_listen {
        if !addr.ip().is_loopback()
            && raw.server.admin_token.is_none()
            && raw.server.allow_unauthenticated_admin != Some(true)
        {
            errs.add(
                "server.admin_listen",
                format!(
                    "{addr} is not a loopback address: anyone who reaches it could read /metrics \
                     and /readyz (routes, profiles, scopes, errors). Set admin_token (Prometheus \
                     then sends it as a bearer token; /healthz and /readyz stay open for probes), \
                     listen on 127.0.0.1, or set allow_unauthenticated_admin = true if a network \
                     policy already restricts who connects"
                ),
            );
        }
    }
    let default_profile = raw
        .server
        .default_profile
        .clone()
        .unwrap_or_else(|| "auto".to_string());
    let host_routes = raw.server.host_routes.unwrap_or(true);
    let server = ServerConfig {
        listen: listen.unwrap_or(ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 7070)))),
        admin_listen,
        host_routes,
        allowed_hosts: raw
            .server
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        allowed_origins: raw.server.allowed_origins.clone(),
        default_profile: default_profile.clone(),
        inbound_token: raw.server.inbound_token.as_ref().map(secret_source),
        admin_token: raw.server.admin_token.as_ref().map(secret_source),
        unix_socket_mode: match raw.server.unix_socket_mode.as_deref() {
            None => 0o660,
            Some(text) => match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
                Ok(m) if m <= 0o777 && m & 0o600 == 0o600 && m & 0o007 == 0 => m,
                _ => {
                    errs.add(
                        "server.unix_socket_mode",
                        format!("`{text}`: expected an octal mode the owner can read and write and others cannot use, such as \"0660\" or \"0600\""),
                    );
                    0o660
                }
            },
        },
        limits: {
            let d = crate::config::Limits::default();
            let mut positive = |key: &str, v: Option<usize>, default: usize, min: usize| -> usize {
                match v {
                    None => default,
                    Some(n) if n >= min => n,
                    Some(n) => {
                        errs.add(key, format!("{n} is too small; expected at least {min}"));
                        default
                    }
                }
            };
            let max_header_bytes = positive(
                "server.max_header_bytes",
                raw.server.max_header_bytes,
                d.max_header_bytes,
                8192,
            );
            let max_connections = positive(
                "server.max_connections",
                raw.server.max_connections,
                d.max_connections,
                1,
            );
            let max_uri_bytes = positive(
                "server.max_uri_bytes",
                raw.server.max_uri_bytes,
                d.max_uri_bytes,
                256,
            );
            let mut clock = |key: &str, value: &Option<RawDuration>, default_secs: u64| {
                let d = duration(&mut errs, key, value, default_secs);
                if d.is_zero() {
                    errs.add(
                        key,
                        "0 would close every connection at once; expected a duration above 0",
                    );
                }
                d
            };
            let header_read_timeout = clock(
                "server.header_read_timeout",
                &raw.server.header_read_timeout,
                30,
            );
            let idle_timeout = clock("server.idle_timeout", &raw.server.idle_timeout, 120);
            crate::config::Limits {
                max_header_bytes,
                max_connections,
                max_uri_bytes,
                header_read_timeout,
                idle_timeout,
            }
        },
        workers: match raw.server.workers {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) if (1..=MAX_WORKERS).contains(&n) => n,
            Some(n) => {
                errs.add(
                    "server.workers",
                    format!("{n}: expected a number of threads from 1 to {MAX_WORKERS}"),
                );
                1
            }
        },
        state_dir: raw.server.state_dir.clone(),
        shutdown_grace: duration(
            &mut errs,
            "server.shutdown_grace",
            &raw.server.shutdown_grace,
            30,
        ),
        shutdown_delay: duration(
            &mut errs,
            "server.shutdown_delay",
            &raw.server.shutdown_delay,
            5,
        ),
        watch_config: raw.server.watch_config.unwrap_or(false),
        connect_timeout: duration(
            &mut errs,
            "server.connect_timeout",
            &raw.server.connect_timeout,
            10,
        ),
        response_header_timeout: duration(
            &mut errs,
            "server.response_header_timeout",
            &raw.server.response_header_timeout,
            100,
        ),
        token_wait_timeout: duration(
            &mut errs,
            "server.token_wait_timeout",
            &raw.server.token_wait_timeout,
            30,
        ),
        egress_proxy: egress_proxy(&mut errs, raw, env),
    };

    let authority_text = raw
        .entra
        .authority_host
        .clone()
        .or_else(|| crate::env::non_empty(env, "AZURE_AUTHORITY_HOST"))
        .unwrap_or_else(|| hosts::PUBLIC_AUTHORITY.to_string());
    let authority_host = authority(&mut errs, "entra.authority_host", &authority_text)
        .unwrap_or_else(|| Url::parse(hosts::PUBLIC_AUTHORITY).expect("constant URL"));
    if let Some(t) = &raw.entra.tenant_id {
        tenant(&mut errs, "entra.tenant_id", t);
    }
    if let Some(ca) = &raw.entra.ca_file {
        if !ca.is_file() {
            errs.add(
                "entra.ca_file",
                format!(
                    "{} does not exist; expected a PEM file of CA certificates",
                    ca.display()
                ),
            );
        }
    }
    let entra = EntraConfig {
        authority_host: authority_host.clone(),
        tenant_id: raw.entra.tenant_id.clone(),
        ca_file: raw.entra.ca_file.clone(),
        request_timeout: duration(
            &mut errs,
            "entra.request_timeout",
            &raw.entra.request_timeout,
            30,
        ),
    };

    let mut profiles = BTreeMap::new();
    for (name, p) in &raw.profiles {
        if let Some(profile) = profile(&mut errs, name, p, &entra) {
            profiles.insert(name.clone(), profile);
        }
    }
    // Host routes and the embedded default name `auto`; it exists even when not written down (so
    // does it for an identity endpoint that hands out its tokens).
    let identity_wants_auto = raw
        .identity_endpoint
        .as_ref()
        .is_some_and(|ie| ie.profile.as_deref().unwrap_or(&default_profile) == "auto");
    if (host_routes || identity_wants_auto)
        && default_profile == "auto"
        && !raw.profiles.contains_key("auto")
    {
        profiles.insert(
            "auto".into(),
            Profile {
                name: "auto".into(),
                authority_host: authority_host.clone(),
                kind: ProfileKind::Auto {
                    tenant_id: entra.tenant_id.clone(),
                    client_id: None,
                },
                client_capabilities: Vec::new(),
            },
        );
    }
    if host_routes && !raw.profiles.contains_key(&default_profile) && default_profile != "auto" {
        errs.add(
            "server.default_profile",
            format!("profile `{default_profile}` is not defined under [profiles]"),
        );
    }

    let mut routes: Vec<Route> = Vec::new();
    // Every well-formed prefix with its route index, valid route or not, for the duplicate check.
    let mut seen_prefixes: Vec<(String, usize)> = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        let prefix = match r.prefix.as_deref() {
            None => {
                errs.add(
                    format!("{key}.prefix"),
                    "missing; expected a path such as \"/ado\"",
                );
                None
            }
            Some(p) => prefix(&mut errs, &format!("{key}.prefix"), p),
        };
        let upstream = match r.upstream.as_deref() {
            None => {
                errs.add(
                    format!("{key}.upstream"),
                    "missing; expected a URL such as \"https://dev.azure.com\"",
                );
                None
            }
            Some(u) => upstream(&mut errs, &format!("{key}.upstream"), u),
        };
        let profile = match r.profile.as_deref() {
            None => {
                errs.add(
                    format!("{key}.profile"),
                    "missing; expected the name of a [profiles] entry",
                );
                None
            }
            Some(p) if !profiles.contains_key(p) && !raw.profiles.contains_key(p) => {
                errs.add(
                    format!("{key}.profile"),
                    format!(
                        "profile `{p}` is not defined; defined: [{}]",
                        raw.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
                None
            }
            Some(p) => Some(p.to_string()),
        };
        let scope = match (&r.scope, &upstream) {
            (Some(s), _) => scope(&mut errs, &format!("{key}.scope"), s),
            (None, Some(u)) => {
                let host = u.host_str().unwrap_or_default();
                match hosts::lookup(host) {
                    Some(k) => Some(k.scope.to_string()),
                    None => {
                        errs.add(
                            format!("{key}.scope"),
                            format!(
                                "cannot infer a scope for host `{host}`: it is not a known Microsoft API; \
                                 set scope = \"<resource>/.default\""
                            ),
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        };
        if let Some(p) = &prefix {
            if let Some((_, prev)) = seen_prefixes.iter().find(|(q, _)| q == p) {
                errs.add(
                    format!("{key}.prefix"),
                    format!("`{p}` is already used by routes[{prev}]"),
                );
            }
            seen_prefixes.push((p.clone(), i));
        }
        if let (Some(prefix), Some(upstream), Some(profile), Some(scope)) =
            (prefix, upstream, profile, scope)
        {
            routes.push(Route {
                prefix,
                upstream,
                profile,
                scope,
            });
        }
    }

    let identity_endpoint = raw.identity_endpoint.as_ref().and_then(|ie| {
        identity_endpoint(
            &mut errs,
            ie,
            &server,
            &default_profile,
            &profiles,
            raw,
            &routes,
        )
    });

    if errs.0.is_empty() {
        Ok(Config {
            server,
            entra,
            profiles,
            routes,
            identity_endpoint,
        })
    } else {
        Err(errs.0)
    }
}

/// `[identity_endpoint]`: a loopback (or Unix socket) listener apart from the others, a header
/// secret, a defined profile, and the resources it may hand out tokens for — by default those of
/// the `/.default` scopes of that profile's routes.
fn identity_endpoint(
    errs: &mut Errors,
    ie: &super::raw::RawIdentityEndpoint,
    server: &ServerConfig,
    default_profile: &str,
    profiles: &BTreeMap<String, Profile>,
    raw: &RawConfig,
    routes: &[Route],
) -> Option<super::IdentityEndpointConfig> {
    let before = errs.0.len();
    let text = ie
        .listen
        .as_deref()
        .unwrap_or(super::IDENTITY_ENDPOINT_LISTEN);
    let listen = listen_addr(errs, "identity_endpoint.listen", text);
    if let Some(ListenAddr::Tcp(addr)) = &listen {
        if !addr.ip().is_loopback() {
            errs.add(
                "identity_endpoint.listen",
                format!(
                    "{addr} is not a loopback address: the identity header and the tokens it hands \
                     out travel as plain HTTP. Listen on 127.0.0.1 (the pod's or machine's own \
                     SDKs reach it there) or on unix:/path"
                ),
            );
        }
    }
    if let Some(l) = &listen {
        let port_zero = matches!(l, ListenAddr::Tcp(a) if a.port() == 0);
        for (key, other) in [
            ("server.listen", Some(&server.listen)),
            ("server.admin_listen", server.admin_listen.as_ref()),
        ] {
            if !port_zero && other == Some(l) {
                errs.add(
                    "identity_endpoint.listen",
                    format!("{l} is also {key}; expected an address of its own"),
                );
            }
        }
    }
    let header = match &ie.header {
        None => {
            errs.add(
                "identity_endpoint.header",
                "missing; expected the secret SDKs send as X-IDENTITY-HEADER (their \
                 IDENTITY_HEADER): { env = \"NAME\" }, { file = \"PATH\" } or a literal",
            );
            None
        }
        Some(SecretValue::Literal(v)) if identity_header_problem(v).is_some() => {
            let why = identity_header_problem(v).unwrap_or_default();
            errs.add("identity_endpoint.header", why);
            None
        }
        Some(v) => Some(secret_source(v)),
    };
    let profile = ie
        .profile
        .clone()
        .unwrap_or_else(|| default_profile.to_string());
    let profile_ok = profiles.contains_key(&profile) || raw.profiles.contains_key(&profile);
    if !profile_ok {
        let from = if ie.profile.is_some() {
            ""
        } else {
            " (the default: server.default_profile)"
        };
        errs.add(
            "identity_endpoint.profile",
            format!(
                "profile `{profile}`{from} is not defined; defined: [{}]",
                raw.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    let resources: Vec<String> = match &ie.resources {
        Some(list) => {
            if list.is_empty() {
                errs.add(
                    "identity_endpoint.resources",
                    "empty: no token could be handed out; list resources such as \
                     \"499b84ac-1321-427f-aa17-267ca6975798\", or drop the key to use those of \
                     the profile's routes",
                );
            }
            let mut out: Vec<String> = Vec::new();
            for (i, r) in list.iter().enumerate() {
                let n = super::normalise_resource(r);
                if n.is_empty() || n.chars().any(char::is_whitespace) {
                    errs.add(
                        format!("identity_endpoint.resources[{i}]"),
                        format!(
                            "`{r}`: expected one resource such as \"https://graph.microsoft.com\" \
                             or \"499b84ac-1321-427f-aa17-267ca6975798\""
                        ),
                    );
                } else if !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
                    out.push(n.to_string());
                }
            }
            out
        }
        None => {
            let mut out: Vec<String> = Vec::new();
            for r in routes.iter().filter(|r| r.profile == profile) {
                if let Some(res) = r.scope.strip_suffix("/.default") {
                    let res = res.trim_end_matches('/');
                    if !out.iter().any(|o| o.eq_ignore_ascii_case(res)) {
                        out.push(res.to_string());
                    }
                }
            }
            if out.is_empty() && profile_ok {
                errs.add(
                    "identity_endpoint.resources",
                    format!(
                        "no route of profile `{profile}` has a `<resource>/.default` scope to take \
                         the default from; list the resources SDKs may ask for, such as \
                         [\"499b84ac-1321-427f-aa17-267ca6975798\"]"
                    ),
                );
            }
            out
        }
    };
    if errs.0.len() != before {
        return None;
    }
    Some(super::IdentityEndpointConfig {
        listen: listen?,
        header: header?,
        profile,
        resources,
        resources_explicit: ie.resources.is_some(),
    })
}

/// Why `value` cannot be the identity header secret, if it cannot: it must be a header value
/// (visible ASCII) and long enough not to be guessed. Never shows the value.
pub(crate) fn identity_header_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("is empty; expected a random secret of at least 16 characters".into());
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(
            "holds spaces or characters that cannot be sent in an HTTP header; expected visible \
             ASCII (a UUID or a random base64 string)"
                .into(),
        );
    }
    if value.len() < 16 {
        return Some(format!(
            "is {} characters long; expected a random secret of at least 16 (for example \
             `openssl rand -hex 32`)",
            value.len()
        ));
    }
    None
}

/// `server.egress_proxy` and `server.no_proxy`, falling back to `HTTPS_PROXY`/`NO_PROXY`.
fn egress_proxy(
    errs: &mut Errors,
    raw: &RawConfig,
    env: &dyn Environment,
) -> Option<crate::egress::EgressProxy> {
    let configured = match raw.server.egress_proxy.as_ref().map(secret_source) {
        None => None,
        Some(SecretSource::Literal(s)) => Some(s),
        Some(source) => match source.resolve(env) {
            Ok(s) => Some(s),
            Err(why) => {
                errs.add(crate::egress::KEY, why);
                return None;
            }
        },
    };
    crate::egress::EgressProxy::from_config_and_env(
        configured.as_ref().map(Secret::expose),
        raw.server.no_proxy.as_deref(),
        env,
    )
    .unwrap_or_else(|e| {
        errs.add(e.key, e.message);
        None
    })
}

fn listen_addr(errs: &mut Errors, key: &str, text: &str) -> Option<ListenAddr> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() || !path.starts_with('/') {
            errs.add(key, format!("`{text}`: expected unix:/absolute/path"));
            return None;
        }
        return Some(ListenAddr::Unix(PathBuf::from(path)));
    }
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(ListenAddr::Tcp(a)),
        Err(_) => {
            errs.add(
                key,
                format!(
                    "`{text}`: expected IP:PORT (e.g. \"127.0.0.1:7070\"), \"unix:/path\" or \"\""
                ),
            );
            None
        }
    }
}

fn duration(
    errs: &mut Errors,
    key: &str,
    value: &Option<RawDuration>,
    default_secs: u64,
) -> Duration {
    let parsed = match value {
        None => return Duration::from_secs(default_secs),
        Some(RawDuration::Seconds(s)) if s.is_finite() && *s >= 0.0 => {
            Some(Duration::from_secs_f64(*s))
        }
        Some(RawDuration::Seconds(_)) => None,
        Some(RawDuration::Text(t)) => parse_duration(t),
    };
    parsed.unwrap_or_else(|| {
        errs.add(
            key,
            "expected a duration such as \"30s\", \"500ms\", \"5m\" or a number of seconds",
        );
        Duration::from_secs(default_secs)
    })
}

/// `https://…`, or `http://` toward loopback only (tests, local stand-ins).
fn http_url(errs: &mut Errors, key: &str, text: &str, what: &str) -> Option<Url> {
    let url = match Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            errs.add(
                key,
                format!("`{text}` is not a valid URL ({e}); expected https://host"),
            );
            return None;
        }
    };
    let host = url.host_str().unwrap_or_default().to_string();
    match url.scheme() {
        "https" => {}
        "http" if hosts::is_loopback(&host) => {}
        "http" => {
            errs.add(
                key,
                format!(
                    "`{text}`: http:// is allowed only toward loopback; use https:// for {what}"
                ),
            );
            return None;
        }
        other => {
            errs.add(
                key,
                format!("`{text}`: scheme `{other}` is not supported; expected https://"),
            );
            return None;
        }
    }
    if host.is_empty() {
        errs.add(key, format!("`{text}` has no host"));
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        errs.add(key, "must not carry credentials in the URL");
        return None;
    }
    if url.query().is_some() || url.fragment().is_some() {
        errs.add(key, format!("`{text}` must not have a query or fragment"));
        return None;
    }
    Some(url)
}

fn upstream(errs: &mut Errors, key: &str, text: &str) -> Option<Url> {
    let mut url = http_url(errs, key, text, "an upstream")?;
    let trimmed = url.path().trim_end_matches('/').to_string();
    url.set_path(&trimmed);
    Some(url)
}

fn authority(errs: &mut Errors, key: &str, text: &str) -> Option<Url> {
    let mut url = http_url(errs, key, text, "an authority host")?;
    let trimmed = url.path().trim_end_matches('/').to_string();
    url.set_path(&trimmed);
    Some(url)
}

fn prefix(errs: &mut Errors, key: &str, text: &str) -> Option<String> {
    if !text.starts_with('/') {
        errs.add(
            key,
            format!("`{text}`: expected a path starting with `/`, such as \"/ado\""),
        );
        return None;
    }
    let trimmed = text.trim_end_matches('/');
    let bad = trimmed.split('/').skip(1).any(|seg| {
        seg.is_empty() || seg == "." || seg == ".." || seg.contains(['%', '?', '#', '\\'])
    });
    if bad {
        errs.add(
            key,
            format!("`{text}`: expected plain path segments (no empty, dot, encoded or `?#\\` segments)"),
        );
        return None;
    }
    Some(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    })
}

fn scope(errs: &mut Errors, key: &str, text: &str) -> Option<String> {
    let ok = !text.is_empty() && !text.chars().any(char::is_whitespace);
    if !ok {
        errs.add(
            key,
            format!(
                "`{text}`: expected one scope such as \"https://graph.microsoft.com/.default\""
            ),
        );
        return None;
    }
    Some(text.to_string())
}

fn tenant(errs: &mut Errors, key: &str, text: &str) -> bool {
    let ok = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !ok {
        errs.add(
            key,
            format!("`{text}`: expected a tenant id (GUID) or domain name"),
        );
    }
    ok
}

fn secret_source(v: &SecretValue) -> SecretSource {
    match v {
        SecretValue::Literal(s) => SecretSource::Literal(Secret::new(s.clone())),
        SecretValue::Env(r) => SecretSource::Env(r.env.clone()),
        SecretValue::File(r) => SecretSource::File(r.file.clone()),
    }
}

/// The kinds this build supports.
const KINDS: &str = "client_secret, client_certificate, managed_identity, workload_identity, \
                     azure_pipelines, azure_cli, azure_developer_cli, device_code, interactive_browser, auto";

/// Which optional keys each kind takes (besides kind, tenant_id, authority_host).
fn keys_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "client_secret" => &["client_id", "client_secret"],
        "client_certificate" => &[
            "client_id",
            "certificate",
            "certificate_key",
            "certificate_password",
            "send_certificate_chain",
        ],
        "managed_identity" => &["client_id", "object_id", "resource_id", "endpoint"],
        "workload_identity" => &["client_id", "token_file"],
        "azure_pipelines" => &["client_id", "service_connection_id", "system_access_token"],
        "azure_cli" => &["subscription"],
        "azure_developer_cli" => &[],
        "device_code" => &["client_id"],
        "interactive_browser" => &["client_id", "redirect_port"],
        "auto" => &["client_id"],
        _ => &[],
    }
}

fn set_keys(p: &RawProfile) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut add = |set: bool, k: &'static str| {
        if set {
            v.push(k)
        }
    };
    add(p.client_id.is_some(), "client_id");
    add(p.client_secret.is_some(), "client_secret");
    add(p.certificate.is_some(), "certificate");
    add(p.certificate_key.is_some(), "certificate_key");
    add(p.certificate_password.is_some(), "certificate_password");
    add(p.send_certificate_chain.is_some(), "send_certificate_chain");
    add(p.object_id.is_some(), "object_id");
    add(p.resource_id.is_some(), "resource_id");
    add(p.endpoint.is_some(), "endpoint");
    add(p.token_file.is_some(), "token_file");
    add(p.service_connection_id.is_some(), "service_connection_id");
    add(p.system_access_token.is_some(), "system_access_token");
    add(p.subscription.is_some(), "subscription");
    add(p.redirect_port.is_some(), "redirect_port");
    v
}

fn profile(errs: &mut Errors, name: &str, p: &RawProfile, entra: &EntraConfig) -> Option<Profile> {
    let key = format!("profiles.{name}");
    let before = errs.0.len();
    for extra in p.other.keys() {
        errs.add(format!("{key}.{extra}"), "unknown key for any profile kind");
    }
    let authority_host = match &p.authority_host {
        Some(a) => authority(errs, &format!("{key}.authority_host"), a),
        None => Some(entra.authority_host.clone()),
    };
    let tenant_id = p.tenant_id.clone().or_else(|| entra.tenant_id.clone());
    if let Some(t) = &p.tenant_id {
        tenant(errs, &format!("{key}.tenant_id"), t);
    }
    let Some(kind_name) = p.kind.as_deref() else {
        errs.add(
            format!("{key}.kind"),
            format!("missing; expected one of {KINDS}"),
        );
        return None;
    };
    if !KINDS.split(',').any(|k| k.trim() == kind_name) {
        errs.add(
            format!("{key}.kind"),
            format!("unknown kind `{kind_name}`; expected one of {KINDS}"),
        );
        return None;
    }
    for k in set_keys(p) {
        if !keys_of(kind_name).contains(&k) {
            errs.add(
                format!("{key}.{k}"),
                format!(
                    "not used by kind `{kind_name}`; its keys: tenant_id, authority_host, {}",
                    keys_of(kind_name).join(", ")
                ),
            );
        }
    }
    let mut required = |value: Option<String>, k: &str, what: &str| -> Option<String> {
        match value.filter(|v| !v.trim().is_empty()) {
            Some(v) => Some(v),
            None => {
                errs.add(format!("{key}.{k}"), format!("missing; expected {what}"));
                None
            }
        }
    };
    let kind = match kind_name {
        "client_secret" => {
            let t = required(
                tenant_id,
                "tenant_id",
                "the tenant GUID (or set [entra] tenant_id)",
            );
            let c = required(
                p.client_id.clone(),
                "client_id",
                "the application (client) id",
            );
            if p.client_secret.is_none() {
                errs.add(
                    format!("{key}.client_secret"),
                    "missing; expected a literal, { env = \"NAME\" } or { file = \"PATH\" }",
                );
            }
            match (t, c, &p.client_secret) {
                (Some(tenant_id), Some(client_id), Some(s)) => Some(ProfileKind::ClientSecret {
                    tenant_id,
                    client_id,
                    client_secret: secret_source(s),
                }),
                _ => None,
            }
        }
        "client_certificate" => {
            let t = required(
                tenant_id,
                "tenant_id",
                "the tenant GUID (or set [entra] tenant_id)",
            );
            let c = required(
                p.client_id.clone(),
                "client_id",
                "the application (client) id",
            );
            if p.certificate.is_none() {
                errs.add(
                    format!("{key}.certificate"),
                    "missing; expected the path of a PEM (certificate and private key) or PFX file",
                );
            }
            match (t, c, &p.certificate) {
                (Some(tenant_id), Some(client_id), Some(certificate)) => {
                    Some(ProfileKind::ClientCertificate {
                        tenant_id,
                        client_id,
                        certificate: certificate.clone(),
                        certificate_key: p.certificate_key.clone(),
                        certificate_password: p.certificate_password.as_ref().map(secret_source),
                        send_certificate_chain: p.send_certificate_chain.unwrap_or(false),
                    })
                }
                _ => None,
            }
        }
        "managed_identity" => {
            let ids: Vec<ManagedIdentityId> = [
                p.client_id.clone().map(ManagedIdentityId::ClientId),
                p.object_id.clone().map(ManagedIdentityId::ObjectId),
                p.resource_id.clone().map(ManagedIdentityId::ResourceId),
            ]
            .into_iter()
            .flatten()
            .collect();
            if ids.len() > 1 {
                errs.add(
                    format!("{key}.client_id"),
                    "set at most one of client_id, object_id, resource_id (none: the system-assigned identity)",
                );
            }
            let endpoint = match &p.endpoint {
                None => None,
                Some(e) => match Url::parse(e) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                        Some(u)
                    }
                    _ => {
                        errs.add(
                            format!("{key}.endpoint"),
                            format!("`{e}`: expected the IMDS base URL, such as \"http://169.254.169.254\""),
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
        "azure_cli" => Some(ProfileKind::AzureCli {
            tenant_id,
            subscription: p.subscription.clone(),
        }),
        "azure_developer_cli" => Some(ProfileKind::AzureDeveloperCli { tenant_id }),
        "device_code" | "interactive_browser" => {
            let t = required(
                tenant_id,
                "tenant_id",
                "the tenant GUID, or \"organizations\" for any work account",
            );
            let c = required(
                p.client_id.clone(),
                "client_id",
                "the public client's application id (see the README: app registration for login)",
            );
            match (t, c) {
                (Some(tenant_id), Some(client_id)) if kind_name == "device_code" => {
                    Some(ProfileKind::DeviceCode {
                        tenant_id,
                        client_id,
                    })
                }
                (Some(tenant_id), Some(client_id)) => Some(ProfileKind::InteractiveBrowser {
                    tenant_id,
                    client_id,
                    redirect_port: p.redirect_port,
                }),
                _ => None,
            }
        }
        "workload_identity" => Some(ProfileKind::WorkloadIdentity {
            tenant_id,
            client_id: p.client_id.clone(),
            token_file: p.token_file.clone(),
        }),
        "azure_pipelines" => Some(ProfileKind::AzurePipelines {
            tenant_id,
            client_id: p.client_id.clone(),
            service_connection_id: p.service_connection_id.clone(),
            system_access_token: p
                .system_access_token
                .as_ref()
                .map(secret_source)
                .unwrap_or_else(|| SecretSource::Env("SYSTEM_ACCESSTOKEN".into())),
        }),
        _ => Some(ProfileKind::Auto {
            tenant_id,
            client_id: p.client_id.clone(),
        }),
    };
    let client_capabilities = p.client_capabilities.clone().unwrap_or_default();
    if !client_capabilities.is_empty() {
        let k = format!("{key}.client_capabilities");
        if matches!(
            kind_name,
            "azure_cli" | "azure_developer_cli" | "managed_identity"
        ) {
            errs.add(
                k,
                format!("kind `{kind_name}` cannot send claims to Entra, so it cannot declare client capabilities"),
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
    }
    if errs.0.len() != before {
        return None;
    }
    Some(Profile {
        name: name.to_string(),
        authority_host: authority_host?,
        kind: kind?,
        client_capabilities,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{load_from_str, ConfigError, ConfigSource, Format};
    use crate::env::MapEnv;

    fn errors(toml: &str) -> Vec<String> {
        match load_from_str(
            toml,
            Format::Toml,
            ConfigSource::Embedded,
            &MapEnv::default(),
        ) {
            Err(ConfigError::Invalid { errors, .. }) => {
                errors.iter().map(|e| e.to_string()).collect()
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn non_loopback_listen_needs_an_explicit_opt_in() {
        let errs = errors("[server]\nlisten = \"0.0.0.0:7070\"\n");
        assert!(
            errs.iter()
                .any(|e| e.starts_with("server.listen:") && e.contains("not a loopback")),
            "{errs:?}"
        );
        let ok = load_from_str(
            "[server]\nlisten = \"0.0.0.0:7070\"\nallow_unauthenticated_clients = true\n",
            Format::Toml,
            ConfigSource::Embedded,
            &MapEnv::default(),
        );
        assert!(ok.is_ok(), "{ok:?}");
        for loopback in ["127.0.0.1:7070", "[::1]:7070", "unix:/run/patless.sock"] {
            let toml = format!("[server]\nlisten = \"{loopback}\"\n");
            assert!(
                load_from_str(
                    &toml,
                    Format::Toml,
                    ConfigSource::Embedded,
                    &MapEnv::default()
                )
                .is_ok(),
                "{loopback}"
            );
        }
    }
}
