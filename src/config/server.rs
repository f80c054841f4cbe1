//! `[server]`: the listeners, who may use them, the limits on clients, the timeouts and the
//! egress proxy. Validated here, and printed back for `patless config`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::check::{duration, listen_addr, loopback_unless, secret_source, Errors};
use super::effective::{duration_text, redacted_ref};
use super::raw::{RawDuration, RawServer, SecretValue};
use super::{defaults, SecretSource};
use crate::env::Environment;
use crate::secret::Secret;

/// Most `server.workers`: more threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

/// Where a listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(std::net::SocketAddr),
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
    /// The default profile: of host routes, `patless token` and `git-credential` without a
    /// route, and the identity endpoint.
    pub default_profile: String,
    /// Why [`ServerConfig::default_profile`] is that profile.
    pub default_profile_choice: DefaultProfileChoice,
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
    /// Speak HTTP/2 to `https` upstreams that offer it.
    pub upstream_http2: bool,
    /// Idle HTTP/1.1 connections kept per upstream and worker.
    pub upstream_max_idle: usize,
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

/// Limits on clients: patless is hardened by default against slow or oversized requests and
/// connection floods (each limit is a `[server]` key, docs/configuration.md).
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
            max_header_bytes: defaults::MAX_HEADER_BYTES,
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
            idle_timeout: defaults::IDLE_TIMEOUT,
            max_connections: defaults::MAX_CONNECTIONS,
            max_uri_bytes: defaults::MAX_URI_BYTES,
        }
    }
}

/// Why the default profile is the one it is (docs/configuration.md, `server.default_profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultProfileChoice {
    /// `server.default_profile` names it (in the file or the environment).
    Configured,
    /// It is the only profile under `[profiles]`.
    OnlyProfile,
    /// No profile is defined: the implicit `auto`.
    NoProfiles,
    /// This many profiles are defined and `server.default_profile` names none: the implicit
    /// `auto`.
    SeveralProfiles(usize),
}

/// `server.default_profile` when written; else the only profile defined; else `auto`.
fn default_profile<'a>(
    raw: &RawServer,
    mut defined: impl ExactSizeIterator<Item = &'a String>,
) -> (String, DefaultProfileChoice) {
    if let Some(p) = &raw.default_profile {
        return (p.clone(), DefaultProfileChoice::Configured);
    }
    let implicit = defaults::DEFAULT_PROFILE.to_string();
    match defined.len() {
        0 => (implicit, DefaultProfileChoice::NoProfiles),
        1 => match defined.next() {
            Some(only) => (only.clone(), DefaultProfileChoice::OnlyProfile),
            None => (implicit, DefaultProfileChoice::NoProfiles),
        },
        n => (implicit, DefaultProfileChoice::SeveralProfiles(n)),
    }
}

/// Validates `[server]`; the problems go to `errs` (the value returned is then not used).
/// `profiles`: the names under `[profiles]`, which the default profile is chosen from.
pub(super) fn validate<'a>(
    errs: &mut Errors,
    raw: &RawServer,
    profiles: impl ExactSizeIterator<Item = &'a String>,
    env: &dyn Environment,
) -> ServerConfig {
    let listen = listener(errs, raw);
    let (default_profile, default_profile_choice) = default_profile(raw, profiles);
    let admin_listen = admin_listener(errs, raw);
    ServerConfig {
        listen: listen.unwrap_or(ListenAddr::Tcp(defaults::LISTEN)),
        admin_listen,
        host_routes: raw.host_routes.unwrap_or(defaults::HOST_ROUTES),
        allowed_hosts: raw
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        allowed_origins: raw.allowed_origins.clone(),
        default_profile,
        default_profile_choice,
        inbound_token: raw.inbound_token.as_ref().map(secret_source),
        admin_token: raw.admin_token.as_ref().map(secret_source),
        unix_socket_mode: unix_socket_mode(errs, raw),
        limits: limits(errs, raw),
        workers: workers(errs, raw),
        state_dir: raw.state_dir.clone(),
        shutdown_grace: duration(
            errs,
            "server.shutdown_grace",
            &raw.shutdown_grace,
            defaults::SHUTDOWN_GRACE,
        ),
        shutdown_delay: duration(
            errs,
            "server.shutdown_delay",
            &raw.shutdown_delay,
            defaults::SHUTDOWN_DELAY,
        ),
        watch_config: raw.watch_config.unwrap_or(defaults::WATCH_CONFIG),
        connect_timeout: duration(
            errs,
            "server.connect_timeout",
            &raw.connect_timeout,
            defaults::CONNECT_TIMEOUT,
        ),
        response_header_timeout: duration(
            errs,
            "server.response_header_timeout",
            &raw.response_header_timeout,
            defaults::RESPONSE_HEADER_TIMEOUT,
        ),
        token_wait_timeout: duration(
            errs,
            "server.token_wait_timeout",
            &raw.token_wait_timeout,
            defaults::TOKEN_WAIT_TIMEOUT,
        ),
        upstream_http2: raw.upstream_http2.unwrap_or(defaults::UPSTREAM_HTTP2),
        upstream_max_idle: raw.upstream_max_idle.unwrap_or(defaults::UPSTREAM_MAX_IDLE),
        egress_proxy: egress_proxy(errs, raw, env),
    }
}

/// `server.listen`: off loopback only with inbound authentication, or an explicit opt-out.
fn listener(errs: &mut Errors, raw: &RawServer) -> Option<ListenAddr> {
    let listen = match raw.listen.as_deref() {
        None => Some(ListenAddr::Tcp(defaults::LISTEN)),
        Some(text) => listen_addr(errs, "server.listen", text),
    };
    let guarded = raw.inbound_token.is_some() || raw.allow_unauthenticated_clients == Some(true);
    loopback_unless(errs, "server.listen", listen.as_ref(), guarded, |addr| {
        format!(
            "{addr} is not a loopback address: anyone who reaches it could act with patless's \
             identities. Set inbound_token (clients then send it), listen on 127.0.0.1 (or \
             unix:/path), or set allow_unauthenticated_clients = true if a network policy \
             already restricts who connects"
        )
    });
    listen
}

/// `server.admin_listen` (`""`: off): off loopback only with `admin_token`, or an explicit opt-out.
fn admin_listener(errs: &mut Errors, raw: &RawServer) -> Option<ListenAddr> {
    let admin_listen = match raw.admin_listen.as_deref() {
        None => Some(ListenAddr::Tcp(defaults::ADMIN_LISTEN)),
        Some("") => None,
        Some(text) => listen_addr(errs, "server.admin_listen", text),
    };
    let guarded = raw.admin_token.is_some() || raw.allow_unauthenticated_admin == Some(true);
    loopback_unless(
        errs,
        "server.admin_listen",
        admin_listen.as_ref(),
        guarded,
        |addr| {
            format!(
                "{addr} is not a loopback address: anyone who reaches it could read /metrics \
             and /readyz (routes, profiles, scopes, errors). Set admin_token (Prometheus \
             then sends it as a bearer token; /healthz and /readyz stay open for probes), \
             listen on 127.0.0.1, or set allow_unauthenticated_admin = true if a network \
             policy already restricts who connects"
            )
        },
    );
    admin_listen
}

/// `server.unix_socket_mode`: octal; the owner reads and writes, others get nothing.
fn unix_socket_mode(errs: &mut Errors, raw: &RawServer) -> u32 {
    let Some(text) = raw.unix_socket_mode.as_deref() else {
        return defaults::UNIX_SOCKET_MODE;
    };
    match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 && m & 0o600 == 0o600 && m & 0o007 == 0 => m,
        _ => {
            errs.add(
                "server.unix_socket_mode",
                format!("`{text}`: expected an octal mode the owner can read and write and others cannot use, such as \"0660\" or \"0600\""),
            );
            defaults::UNIX_SOCKET_MODE
        }
    }
}

/// The limits on clients: sizes with a floor, timeouts above zero.
fn limits(errs: &mut Errors, raw: &RawServer) -> Limits {
    let d = Limits::default();
    let mut at_least = |key: &str, v: Option<usize>, default: usize, min: usize| match v {
        None => default,
        Some(n) if n >= min => n,
        Some(n) => {
            errs.add(key, format!("{n} is too small; expected at least {min}"));
            default
        }
    };
    let max_header_bytes = at_least(
        "server.max_header_bytes",
        raw.max_header_bytes,
        d.max_header_bytes,
        8192,
    );
    let max_connections = at_least(
        "server.max_connections",
        raw.max_connections,
        d.max_connections,
        1,
    );
    let max_uri_bytes = at_least(
        "server.max_uri_bytes",
        raw.max_uri_bytes,
        d.max_uri_bytes,
        256,
    );
    let mut clock = |key: &str, value: &Option<RawDuration>, default: Duration| {
        let d = duration(errs, key, value, default);
        if d.is_zero() {
            errs.add(
                key,
                "0 would close every connection at once; expected a duration above 0",
            );
        }
        d
    };
    Limits {
        max_header_bytes,
        max_connections,
        max_uri_bytes,
        header_read_timeout: clock(
            "server.header_read_timeout",
            &raw.header_read_timeout,
            d.header_read_timeout,
        ),
        idle_timeout: clock("server.idle_timeout", &raw.idle_timeout, d.idle_timeout),
    }
}

/// `server.workers`: from 1 to [`MAX_WORKERS`].
fn workers(errs: &mut Errors, raw: &RawServer) -> usize {
    match raw.workers {
        None => defaults::workers(),
        Some(n) if (1..=MAX_WORKERS).contains(&n) => n,
        Some(n) => {
            errs.add(
                "server.workers",
                format!("{n}: expected a number of threads from 1 to {MAX_WORKERS}"),
            );
            1
        }
    }
}

/// `server.egress_proxy` and `server.no_proxy`, falling back to `HTTPS_PROXY`/`NO_PROXY`.
fn egress_proxy(
    errs: &mut Errors,
    raw: &RawServer,
    env: &dyn Environment,
) -> Option<crate::egress::EgressProxy> {
    let configured = match raw.egress_proxy.as_ref().map(secret_source) {
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
        raw.no_proxy.as_deref(),
        env,
    )
    .unwrap_or_else(|e| {
        errs.add(e.key, e.message);
        None
    })
}

impl ServerConfig {
    /// Why the default profile is the one it is, in words: `patless config` prints it.
    pub fn default_profile_reason(&self) -> String {
        let p = &self.default_profile;
        match self.default_profile_choice {
            DefaultProfileChoice::Configured => format!("`{p}`, set by server.default_profile"),
            DefaultProfileChoice::OnlyProfile => {
                format!("`{p}`, the only profile defined under [profiles]")
            }
            DefaultProfileChoice::NoProfiles => format!(
                "`{p}` (the implicit profile of kind auto): no profile is defined under [profiles]"
            ),
            DefaultProfileChoice::SeveralProfiles(n) => format!(
                "`{p}` (the implicit profile of kind auto): {n} profiles are defined under \
                 [profiles] and server.default_profile names none of them"
            ),
        }
    }

    /// For an error that involves the default profile when no `server.default_profile` chose
    /// it: which profile that is, why, and how to pick another. `flag`: the command takes
    /// `--profile`. `None` when the key chose it (the error names the profile already).
    pub fn default_profile_hint(&self, flag: bool) -> Option<String> {
        if self.default_profile_choice == DefaultProfileChoice::Configured {
            return None;
        }
        let pick = if flag {
            "name another with --profile NAME, or set server.default_profile"
        } else {
            "set server.default_profile to pick another"
        };
        Some(format!(
            "the default profile is {}; {pick}",
            self.default_profile_reason()
        ))
    }

    /// `[server]` as `patless config` prints it: every value in effect, secrets redacted. `raw`
    /// supplies the opt-outs, which the model does not keep.
    pub(super) fn to_raw(&self, raw: &RawServer) -> RawServer {
        let limits = &self.limits;
        RawServer {
            listen: Some(self.listen.to_string()),
            admin_listen: Some(
                self.admin_listen
                    .as_ref()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            ),
            host_routes: Some(self.host_routes),
            allowed_hosts: self.allowed_hosts.clone(),
            allowed_origins: self.allowed_origins.clone(),
            allow_unauthenticated_clients: raw.allow_unauthenticated_clients,
            admin_token: self.admin_token.as_ref().map(redacted_ref),
            allow_unauthenticated_admin: raw.allow_unauthenticated_admin,
            default_profile: Some(self.default_profile.clone()),
            shutdown_grace: Some(duration_text(self.shutdown_grace)),
            shutdown_delay: Some(duration_text(self.shutdown_delay)),
            watch_config: Some(self.watch_config),
            connect_timeout: Some(duration_text(self.connect_timeout)),
            response_header_timeout: Some(duration_text(self.response_header_timeout)),
            token_wait_timeout: Some(duration_text(self.token_wait_timeout)),
            upstream_http2: Some(self.upstream_http2),
            upstream_max_idle: Some(self.upstream_max_idle),
            state_dir: self.state_dir.clone(),
            inbound_token: self.inbound_token.as_ref().map(redacted_ref),
            unix_socket_mode: Some(format!("{:04o}", self.unix_socket_mode)),
            max_header_bytes: Some(limits.max_header_bytes),
            header_read_timeout: Some(duration_text(limits.header_read_timeout)),
            idle_timeout: Some(duration_text(limits.idle_timeout)),
            max_connections: Some(limits.max_connections),
            workers: Some(self.workers),
            max_uri_bytes: Some(limits.max_uri_bytes),
            egress_proxy: self.egress_proxy_ref(raw),
            no_proxy: self
                .egress_proxy
                .as_ref()
                .map(|p| p.no_proxy().to_vec())
                .or_else(|| raw.no_proxy.clone()),
        }
    }

    /// The proxy in effect (from the key or `HTTPS_PROXY`), its password redacted; a reference
    /// to the environment or a file as written.
    fn egress_proxy_ref(&self, raw: &RawServer) -> Option<SecretValue> {
        match (&self.egress_proxy, &raw.egress_proxy) {
            (_, Some(r @ (SecretValue::Env(_) | SecretValue::File(_)))) => Some(r.clone()),
            (Some(p), _) => Some(SecretValue::Literal(p.redacted_url())),
            (None, r) => r.as_ref().map(|_| SecretValue::Literal(String::new())),
        }
    }
}
