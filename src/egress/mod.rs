//! The egress proxy: how patless leaves a network that reaches Entra and the Microsoft APIs only
//! through an HTTP proxy.
//!
//! One [`EgressProxy`] serves both clients: the Entra client (reqwest, via
//! [`EgressProxy::reqwest_proxy`]) and the upstream client (hyper, via [`EgressConnector`]). Both
//! decide with the same rules, parsed by the same code (hyper-util's proxy matcher, which reqwest
//! uses too):
//!
//! - only `https://` destinations go through the proxy, as an HTTP `CONNECT` tunnel; TLS runs
//!   inside the tunnel, end to end to the real host, with the usual verification;
//! - loopback destinations (`localhost`, `127.0.0.0/8`, `::1`) and those matching `no_proxy`
//!   connect directly; plain `http://` (loopback upstreams, the IMDS endpoint) always does;
//! - `Proxy-Authorization` (Basic, from the URL's `user:password`) goes on the `CONNECT` request
//!   only, never to the upstream.
//!
//! Where it comes from: `[server] egress_proxy` (and `no_proxy`) when set; `egress_proxy = ""`
//! turns the proxy off; otherwise `HTTPS_PROXY`/`https_proxy`, then `ALL_PROXY`/`all_proxy`, with
//! `NO_PROXY`/`no_proxy`, read from the injected environment. A proxy URL with credentials is a
//! secret: logs and errors name only `host:port`, and `patless config` shows the password redacted.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use tokio::net::TcpStream;

use crate::env::{non_empty, Environment};
use crate::secret::Secret;

/// The config key of the proxy URL.
pub const KEY: &str = "server.egress_proxy";
/// The config key of the exclusions.
pub const NO_PROXY_KEY: &str = "server.no_proxy";

/// Variables read, in order, when `server.egress_proxy` is absent.
const PROXY_VARS: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];
/// Variables read, in order, when `server.no_proxy` is absent.
const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];
/// Destinations that never go through the proxy, whatever the rules say.
const LOOPBACK_RULES: &str = "localhost, 127.0.0.0/8, ::1, ::ffff:127.0.0.0/104";

/// A bad proxy setting: the key (or variable) it came from and what was expected. Never holds the
/// proxy's credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct EgressError {
    /// `server.egress_proxy` or `server.no_proxy`.
    pub key: &'static str,
    /// What is wrong (naming the environment variable when the value came from there).
    pub message: String,
}

/// A validated egress proxy and the destinations it does not apply to.
#[derive(Clone)]
pub struct EgressProxy {
    /// `http://host:port/`, without credentials: where connections go.
    uri: Uri,
    /// `host:port`, the only part that is ever logged.
    authority: String,
    /// The user name as written in the URL (percent-encoded), for the redacted display.
    user_as_written: Option<String>,
    /// `Basic …` for `Proxy-Authorization`, when the URL carries credentials.
    basic_auth: Option<Secret>,
    /// The user's exclusions, normalised (loopback is always excluded on top of these).
    rules: Vec<String>,
    /// Where the URL came from: `server.egress_proxy` or the variable's name.
    source: &'static str,
    /// The decision, shared with nothing mutable.
    matcher: Arc<Matcher>,
}

impl fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressProxy")
            .field("proxy", &self.authority)
            .field(
                "credentials",
                &if self.basic_auth.is_some() {
                    "***"
                } else {
                    "none"
                },
            )
            .field("no_proxy", &self.rules)
            .field("source", &self.source)
            .finish()
    }
}

/// The same proxy, credentials and exclusions (the matcher is built from these). A reload keeps
/// the credentials of unchanged profiles only when this holds.
impl PartialEq for EgressProxy {
    fn eq(&self, other: &Self) -> bool {
        self.uri == other.uri
            && self.authority == other.authority
            && self.user_as_written == other.user_as_written
            && self.basic_auth == other.basic_auth
            && self.rules == other.rules
            && self.source == other.source
    }
}

impl EgressProxy {
    /// The proxy in effect, if any.
    ///
    /// `configured` is `server.egress_proxy` (already resolved when it was an `{ env }`/`{ file }`
    /// reference): `Some("")` turns the proxy off, `Some(url)` sets it, `None` falls back to
    /// `HTTPS_PROXY`/`https_proxy`/`ALL_PROXY`/`all_proxy`. `no_proxy` is `server.no_proxy`; when
    /// absent, `NO_PROXY`/`no_proxy` apply to a proxy that came from the environment. Entries of
    /// the key are checked even when no proxy is in effect.
    pub fn from_config_and_env(
        configured: Option<&str>,
        no_proxy: Option<&[String]>,
        env: &dyn Environment,
    ) -> Result<Option<EgressProxy>, EgressError> {
        let key_rules = match no_proxy {
            Some(entries) => Some(parse_rules(
                entries.iter().map(String::as_str),
                NO_PROXY_KEY,
            )?),
            None => None,
        };
        let (text, source, strict) = match configured.map(str::trim) {
            Some("") => return Ok(None),
            Some(text) => (text.to_string(), KEY, true),
            None => match PROXY_VARS
                .iter()
                .find_map(|&name| non_empty(env, name).map(|v| (v, name)))
            {
                Some((text, name)) => (text.trim().to_string(), name, false),
                None => return Ok(None),
            },
        };
        let rules = match key_rules {
            Some(rules) => rules,
            None if source == KEY => Vec::new(),
            None => match NO_PROXY_VARS
                .iter()
                .find_map(|&n| env.var(n).map(|v| (v, n)))
            {
                Some((list, name)) => {
                    parse_rules(list.split(','), name).map_err(|e| EgressError {
                        key: NO_PROXY_KEY,
                        message: format!(
                            "{}; fix the variable or set server.no_proxy, which takes precedence",
                            e.message
                        ),
                    })?
                }
                None => Vec::new(),
            },
        };
        let parsed = parse_url(&text, strict).map_err(|why| EgressError {
            key: KEY,
            message: if source == KEY {
                format!("{why}; expected \"http://host:port\" (optionally http://user:password@host:port), or \"\" for no proxy")
            } else {
                format!(
                    "{source} from the environment: {why}; expected http://host:port. \
                     Set server.egress_proxy to override it, or to \"\" to ignore it"
                )
            },
        })?;
        let mut no = LOOPBACK_RULES.to_string();
        for r in &rules {
            no.push_str(", ");
            no.push_str(r);
        }
        let matcher = Matcher::builder()
            .https(parsed.uri.to_string())
            .no(no)
            .build();
        Ok(Some(EgressProxy {
            uri: parsed.uri,
            authority: parsed.authority,
            user_as_written: parsed.user_as_written,
            basic_auth: parsed.basic_auth,
            rules,
            source,
            matcher: Arc::new(matcher),
        }))
    }

    /// `host:port` of the proxy: safe to log.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Where the URL came from: `server.egress_proxy`, or the environment variable's name.
    pub fn source(&self) -> &str {
        self.source
    }

    /// The `no_proxy` rules, as normalised (loopback comes on top of them).
    pub fn no_proxy(&self) -> &[String] {
        &self.rules
    }

    /// Whether the URL carries credentials for the proxy.
    pub fn has_credentials(&self) -> bool {
        self.basic_auth.is_some()
    }

    /// The URL with its password replaced by `<redacted>`, for `patless config`.
    pub fn redacted_url(&self) -> String {
        match (&self.user_as_written, &self.basic_auth) {
            (Some(user), _) => format!("http://{user}:<redacted>@{}", self.authority),
            (None, Some(_)) => format!("http://<redacted>@{}", self.authority),
            (None, None) => format!("http://{}", self.authority),
        }
    }

    /// Whether a connection to `https://{host}` goes through the proxy (`host` as in a URL: a
    /// name, an IPv4 address, or an IPv6 address with or without brackets).
    pub fn applies_to(&self, host: &str) -> bool {
        let bracketed = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        match format!("https://{bracketed}/").parse::<Uri>() {
            Ok(uri) => self.intercepts(&uri),
            // Not a host a connection could be made to; the question does not arise.
            Err(_) => false,
        }
    }

    /// Whether a connection to `dst` goes through the proxy: `https` only, never loopback, never
    /// a `no_proxy` match.
    pub fn intercepts(&self, dst: &Uri) -> bool {
        if dst.scheme_str() != Some("https") {
            return false;
        }
        match dst.host() {
            Some(host) if !crate::hosts::is_loopback(host) => self.matcher.intercept(dst).is_some(),
            _ => false,
        }
    }

    /// The same proxy for reqwest (the Entra client): `https` destinations only, with the same
    /// exclusions, and the credentials sent on `CONNECT`.
    pub fn reqwest_proxy(&self) -> Result<reqwest::Proxy, EgressError> {
        let proxy = reqwest::Proxy::https(self.uri.to_string()).map_err(|_| EgressError {
            key: KEY,
            message: format!("the HTTP client refused the proxy {}", self.authority),
        })?;
        let proxy = match &self.basic_auth {
            Some(auth) => proxy.custom_http_auth(self.auth_header(auth)),
            None => proxy,
        };
        let mut no = LOOPBACK_RULES.to_string();
        for r in &self.rules {
            no.push_str(", ");
            no.push_str(r);
        }
        Ok(proxy.no_proxy(reqwest::NoProxy::from_string(&no)))
    }

    fn auth_header(&self, auth: &Secret) -> HeaderValue {
        // Built from base64 text, so always a valid header value; an impossible failure sends no
        // credentials rather than panicking.
        let mut v = HeaderValue::from_str(auth.expose()).unwrap_or(HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }

    fn tunnel(&self, http: HttpConnector) -> Tunnel<HttpConnector> {
        let tunnel = Tunnel::new(self.uri.clone(), http);
        match &self.basic_auth {
            Some(auth) => tunnel.with_auth(self.auth_header(auth)),
            None => tunnel,
        }
    }
}

/// Logs, once at start-up, which proxy is used (host:port only) and what bypasses it.
pub fn log_choice(egress: Option<&EgressProxy>) {
    match egress {
        Some(p) => tracing::info!(
            proxy = %p.authority(),
            from = p.source(),
            credentials = p.has_credentials(),
            no_proxy = %p.no_proxy().join(","),
            "egress proxy for Entra and upstreams: https destinations tunnel through it; loopback, \
             plain http and no_proxy matches connect directly"
        ),
        None => tracing::info!("no egress proxy: Entra and upstreams are reached directly"),
    }
}

struct ParsedUrl {
    uri: Uri,
    authority: String,
    user_as_written: Option<String>,
    basic_auth: Option<Secret>,
}

/// `http://[user[:password]@]host:port[/]`. `strict` (the config key) wants the scheme written;
/// the environment's `host:port` means `http://host:port`, as curl reads it. The reason never
/// repeats the value.
fn parse_url(text: &str, strict: bool) -> Result<ParsedUrl, String> {
    let (scheme, rest) = match text.split_once("://") {
        Some((s, rest)) => (s.to_ascii_lowercase(), rest),
        None if strict => return Err("no scheme".into()),
        None => ("http".to_string(), text),
    };
    match scheme.as_str() {
        "http" => {}
        "https" => {
            return Err(
                "a proxy reached over TLS (https://) is not supported; use the proxy's \
                        http:// port (the tunnelled connections stay TLS end to end)"
                    .into(),
            )
        }
        "socks4" | "socks4a" | "socks5" | "socks5h" => {
            return Err("SOCKS proxies are not supported; use an HTTP proxy".into())
        }
        _ => return Err("the scheme is not http".into()),
    }
    // The authority ends at the first `/`, `?` or `#` after the credentials (so a password that
    // was not percent-encoded still parses).
    let from = rest.rfind('@').map_or(0, |i| i + 1);
    let (authority, path) = match rest[from..].find(['/', '?', '#']) {
        Some(i) => rest.split_at(from + i),
        None => (rest, ""),
    };
    if !(path.is_empty() || path == "/") {
        return Err("a proxy URL has no path, query or fragment".into());
    }
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let Some((host, port)) = host_port.rsplit_once(':') else {
        return Err("no port".into());
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err("the port is not a number from 1 to 65535".into()),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    if !host_ok {
        return Err("the host is not a host name or IP address".into());
    }
    let authority = format!("{}:{port}", host.to_ascii_lowercase());
    let uri: Uri = format!("http://{authority}/")
        .parse()
        .map_err(|_| "the host is not a host name or IP address".to_string())?;
    let (user_as_written, basic_auth) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (user, password) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            if user.is_empty() {
                return Err("credentials in the URL have no user name".into());
            }
            let decode = |s: &str| percent_decode_str(s).decode_utf8().map(|c| c.into_owned());
            let (Ok(u), Ok(p)) = (decode(user), decode(password.unwrap_or(""))) else {
                return Err("the credentials are not valid percent-encoded UTF-8".into());
            };
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            (
                Some(user.to_string()),
                Some(Secret::new(format!("Basic {token}"))),
            )
        }
    };
    Ok(ParsedUrl {
        uri,
        authority,
        user_as_written,
        basic_auth,
    })
}

/// Normalises `no_proxy` entries (curl's rules): `*`, an IP address, a CIDR block, or a domain
/// that also covers its subdomains (`corp.example` and `.corp.example` alike; `*.corp.example` is
/// read as `.corp.example`). A `:port` suffix is dropped (the rule then covers every port).
/// Empty entries are skipped.
fn parse_rules<'a>(
    entries: impl IntoIterator<Item = &'a str>,
    origin: &str,
) -> Result<Vec<String>, EgressError> {
    let mut rules = Vec::new();
    for (i, raw) in entries.into_iter().enumerate() {
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let err = |why: &str| EgressError {
                key: NO_PROXY_KEY,
                message: if origin == NO_PROXY_KEY {
                    format!("entry {i} `{entry}`: {why}")
                } else {
                    format!("{origin} entry `{entry}`: {why}")
                },
            };
            rules.push(rule(entry).map_err(|why| err(&why))?);
        }
    }
    Ok(rules)
}

fn rule(entry: &str) -> Result<String, String> {
    const EXPECTED: &str =
        "expected a host name (.corp.example), an IP address, a CIDR block (10.0.0.0/8) or *";
    if entry == "*" {
        return Ok("*".into());
    }
    if let Some((addr, bits)) = entry.split_once('/') {
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let max = match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => 32,
            Ok(IpAddr::V6(_)) => 128,
            Err(_) => return Err(format!("not a CIDR block; {EXPECTED}")),
        };
        return match bits.parse::<u8>() {
            Ok(b) if b <= max => Ok(format!("{addr}/{b}")),
            _ => Err(format!("the prefix length is not 0 to {max}")),
        };
    }
    let bare = entry.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(bare.to_string());
    }
    // `[v6]:port` or `host:port`: the port is not part of curl's rules.
    if let Some((host, port)) = entry.rsplit_once(':') {
        if port.parse::<u16>().is_ok() {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.parse::<IpAddr>().is_ok() {
                return Ok(host.to_string());
            }
            return rule(host);
        }
    }
    let (dot, name) = match entry.strip_prefix("*.").or_else(|| entry.strip_prefix('.')) {
        Some(n) => (".", n),
        None => ("", entry),
    };
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && !name.ends_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !valid {
        return Err(EXPECTED.into());
    }
    Ok(format!("{dot}{}", name.to_ascii_lowercase()))
}

/// Why a tunnel through the egress proxy could not be opened. Its message is complete (the proxy's
/// `host:port`, the destination, the cause); it has no `source`, so the answer to the client reads
/// it whole.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TunnelFailed(String);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

/// The upstream client's TCP connector: a `CONNECT` tunnel through the egress proxy for the
/// destinations it applies to, a direct connection for the rest. It sits under
/// `hyper_rustls::HttpsConnector`, so TLS runs over the tunnel to the real upstream.
#[derive(Clone)]
pub struct EgressConnector {
    direct: HttpConnector,
    tunnel: Option<(Arc<EgressProxy>, Tunnel<HttpConnector>)>,
    /// Bound on reaching the proxy and getting its answer to `CONNECT`.
    timeout: Duration,
}

impl fmt::Debug for EgressConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressConnector")
            .field("egress", &self.tunnel.as_ref().map(|(p, _)| p))
            .finish()
    }
}

impl EgressConnector {
    /// Connects with `http` (its timeouts and options apply to the proxy too), through `egress`
    /// when it applies; `timeout` bounds the tunnel's set-up (TCP to the proxy and its answer).
    pub fn new(http: HttpConnector, egress: Option<&EgressProxy>, timeout: Duration) -> Self {
        let tunnel = egress.map(|p| (Arc::new(p.clone()), p.tunnel(http.clone())));
        EgressConnector {
            direct: http,
            tunnel,
            timeout,
        }
    }
}

impl tower::Service<Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.direct.poll_ready(cx))?;
        if let Some((_, tunnel)) = &mut self.tunnel {
            ready!(tunnel.poll_ready(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some((egress, tunnel)) = self.tunnel.as_mut().filter(|(p, _)| p.intercepts(&dst))
        else {
            let connecting = self.direct.call(dst);
            return Box::pin(async move { connecting.await.map_err(BoxError::from) });
        };
        let proxy = egress.authority().to_string();
        let target = format!(
            "{}:{}",
            dst.host().unwrap_or_default(),
            dst.port_u16().unwrap_or(443)
        );
        tracing::trace!(%proxy, %target, "opening a tunnel through the egress proxy");
        let connecting = tunnel.call(dst);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(io)) => Ok(io),
                Ok(Err(e)) => Err(tunnel_failed(&proxy, &target, &e).into()),
                Err(_) => Err(TunnelFailed(format!(
                    "the egress proxy {proxy} did not open a tunnel to {target} within {}s",
                    timeout.as_secs_f64()
                ))
                .into()),
            }
        })
    }
}

/// The cause of a failure reached through the proxy, in words: hyper-util's tunnel errors
/// ("tunnel error: …") are explained, anything else (refused, DNS, TLS) is passed on.
pub fn explain_tunnel_cause(cause: &str) -> String {
    match cause.strip_prefix("tunnel error: ") {
        Some("proxy authorization required") => "the proxy wants authentication (407): give \
             user:password in the proxy URL, or check them"
            .into(),
        Some("unsuccessful") => "the proxy refused the tunnel".into(),
        Some(other) => format!("opening the tunnel failed: {other}"),
        None => cause.to_string(),
    }
}

/// Explains a failed `CONNECT`. hyper-util does not export its `TunnelError` type, so the kind is
/// read from its `Display` (stable: "tunnel error: <kind>") and the cause from its source chain.
fn tunnel_failed(proxy: &str, target: &str, e: &(dyn std::error::Error + 'static)) -> TunnelFailed {
    let innermost = || crate::error_chain::innermost_source(e);
    let text = e.to_string();
    let kind = text.strip_prefix("tunnel error: ").unwrap_or(&text);
    TunnelFailed(match kind {
        "failed to create underlying connection" => format!(
            "cannot connect to the egress proxy {proxy}: {}",
            innermost().unwrap_or_else(|| kind.to_string())
        ),
        "proxy authorization required" => format!(
            "the egress proxy {proxy} wants authentication (407) for a tunnel to {target}: give \
             user:password in the proxy URL, or check them"
        ),
        "unsuccessful" => format!("the egress proxy {proxy} refused a tunnel to {target}"),
        "io error establishing tunnel" => format!(
            "the egress proxy {proxy} failed while opening a tunnel to {target}: {}",
            innermost().unwrap_or_else(|| kind.to_string())
        ),
        other => format!("the egress proxy {proxy}, tunnel to {target}: {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MapEnv;

    fn from(
        configured: Option<&str>,
        no_proxy: Option<&[&str]>,
        env: &[(&str, &str)],
    ) -> Result<Option<EgressProxy>, EgressError> {
        let no: Option<Vec<String>> = no_proxy.map(|n| n.iter().map(|s| s.to_string()).collect());
        EgressProxy::from_config_and_env(configured, no.as_deref(), &MapEnv::new(env.to_vec()))
    }

    fn proxy(configured: &str, no_proxy: &[&str]) -> EgressProxy {
        from(Some(configured), Some(no_proxy), &[])
            .expect("valid")
            .expect("a proxy")
    }

    #[test]
    fn the_key_wins_and_empty_turns_it_off() {
        let env = [("HTTPS_PROXY", "http://env-proxy:8080")];
        let p = from(Some("http://proxy.corp:3128"), None, &env)
            .unwrap()
            .unwrap();
        assert_eq!(p.authority(), "proxy.corp:3128");
        assert_eq!(p.source(), KEY);
        assert!(from(Some(""), None, &env).unwrap().is_none());
        assert!(from(None, None, &[]).unwrap().is_none());
    }

    #[test]
    fn the_environment_is_read_in_order() {
        let p = from(
            None,
            None,
            &[("https_proxy", "proxy-a:1"), ("ALL_PROXY", "http://b:2")],
        )
        .unwrap()
        .unwrap();
        assert_eq!((p.authority(), p.source()), ("proxy-a:1", "https_proxy"));
        let p = from(None, None, &[("all_proxy", "http://b:2")])
            .unwrap()
            .unwrap();
        assert_eq!(p.authority(), "b:2");
        // HTTP_PROXY is for http:// destinations, which never use the proxy.
        assert!(from(None, None, &[("HTTP_PROXY", "http://c:3")])
            .unwrap()
            .is_none());
    }

    #[test]
    fn no_proxy_comes_from_the_key_or_else_the_environment() {
        let env = [
            ("HTTPS_PROXY", "http://p:1"),
            ("NO_PROXY", "a.example, .b.example"),
        ];
        let p = from(None, None, &env).unwrap().unwrap();
        assert_eq!(p.no_proxy(), ["a.example", ".b.example"]);
        let p = from(None, Some(&["c.example"]), &env).unwrap().unwrap();
        assert_eq!(p.no_proxy(), ["c.example"]);
        // A proxy from the key does not take exclusions from the environment.
        let p = from(Some("http://p:1"), None, &env).unwrap().unwrap();
        assert!(p.no_proxy().is_empty());
    }

    #[test]
    fn bad_urls_name_the_key_and_never_echo_the_password() {
        for bad in [
            "proxy.corp:3128",
            "http://proxy.corp",
            "https://proxy.corp:3128",
            "socks5://proxy.corp:1080",
            "http://proxy.corp:3128/path",
            "http://:hunter2@proxy.corp:3128/x",
            "http://proxy corp:1",
            "http://proxy.corp:0",
        ] {
            let e = from(Some(bad), None, &[]).unwrap_err();
            assert_eq!(e.key, KEY, "{bad}");
            assert!(!e.message.contains("hunter2"), "{e}");
            assert!(e.message.contains("expected"), "{e}");
        }
        let e = from(None, None, &[("HTTPS_PROXY", "https://u:hunter2@p:1")]).unwrap_err();
        assert!(e.message.contains("HTTPS_PROXY"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn credentials_are_redacted_everywhere_but_the_header() {
        let p = proxy("http://alice:s%40cret@Proxy.Corp:3128/", &[]);
        assert_eq!(p.authority(), "proxy.corp:3128");
        assert_eq!(p.redacted_url(), "http://alice:<redacted>@proxy.corp:3128");
        assert!(!format!("{p:?}").contains("cret"));
        let expected = base64::engine::general_purpose::STANDARD.encode("alice:s@cret");
        assert_eq!(
            p.basic_auth.as_ref().map(Secret::expose),
            Some(format!("Basic {expected}").as_str())
        );
        let proxy = p.reqwest_proxy().expect("reqwest proxy");
        assert!(!format!("{proxy:?}").contains("cret"));
        assert!(!format!("{proxy:?}").contains(&expected));
    }

    #[test]
    fn loopback_and_no_proxy_connect_directly() {
        let p = proxy(
            "http://proxy.corp:3128",
            &[
                "internal.example",
                ".corp.example",
                "*.wild.example",
                "10.0.0.0/8",
                "fd00::/8",
            ],
        );
        for direct in [
            "localhost",
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
            "internal.example",
            "api.internal.example",
            "corp.example",
            "x.corp.example",
            "a.wild.example",
            "10.1.2.3",
            "fd00::1",
        ] {
            assert!(!p.applies_to(direct), "{direct} should connect directly");
        }
        for proxied in [
            "login.microsoftonline.com",
            "dev.azure.com",
            "notinternal.example",
            "11.0.0.1",
            "2001:db8::1",
            "localhost.evil.example",
        ] {
            assert!(p.applies_to(proxied), "{proxied} should use the proxy");
        }
        // Plain http never does.
        assert!(!p.intercepts(&"http://dev.azure.com/".parse().unwrap()));
        assert!(p.intercepts(&"https://dev.azure.com:8443/x".parse().unwrap()));
        let all = proxy("http://proxy.corp:3128", &["*"]);
        assert!(!all.applies_to("dev.azure.com"));
    }

    #[test]
    fn no_proxy_entries_are_checked() {
        for bad in ["10.0.0.0/33", "bad host", "a/b", "::1/129", "."] {
            let e = from(Some("http://p:1"), Some(&[bad]), &[]).unwrap_err();
            assert_eq!(e.key, NO_PROXY_KEY, "{bad}");
            assert!(e.message.contains(bad), "{e}");
        }
        let p = proxy(
            "http://p:1",
            &["Host.Example:8443", "[fd00::1]:443", "a,b", ""],
        );
        assert_eq!(p.no_proxy(), ["host.example", "fd00::1", "a", "b"]);
        let e = from(
            None,
            None,
            &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "x/y")],
        )
        .unwrap_err();
        assert!(e.message.contains("NO_PROXY"), "{e}");
    }
}
