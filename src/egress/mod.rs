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

mod env;
mod rules;
mod tunnel;
mod url;

use std::fmt;
use std::sync::Arc;

use http::{HeaderValue, Uri};
use hyper_util::client::proxy::matcher::Matcher;

use crate::env::Environment;
use crate::secret::Secret;

pub use tunnel::{explain_tunnel_cause, EgressConnector, TunnelFailed};

/// The config key of the proxy URL.
pub const KEY: &str = "server.egress_proxy";
/// The config key of the exclusions.
pub const NO_PROXY_KEY: &str = "server.no_proxy";

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
            Some(entries) => Some(rules::parse_rules(
                entries.iter().map(String::as_str),
                NO_PROXY_KEY,
            )?),
            None => None,
        };
        let (text, source, strict) = match configured.map(str::trim) {
            Some("") => return Ok(None),
            Some(text) => (text.to_string(), KEY, true),
            None => match env::proxy_url(env) {
                Some((text, name)) => (text, name, false),
                None => return Ok(None),
            },
        };
        let rules = match key_rules {
            Some(rules) => rules,
            None if source == KEY => Vec::new(),
            None => env::no_proxy_rules(env)?,
        };
        let parsed = url::parse_url(&text, strict).map_err(|why| bad_url(source, &why))?;
        let matcher = Matcher::builder()
            .https(parsed.uri.to_string())
            .no(rules::no_proxy_list(&rules))
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
        let no = rules::no_proxy_list(&self.rules);
        Ok(proxy.no_proxy(reqwest::NoProxy::from_string(&no)))
    }

    fn auth_header(&self, auth: &Secret) -> HeaderValue {
        // Built from base64 text, so always a valid header value; an impossible failure sends no
        // credentials rather than panicking.
        let mut v = HeaderValue::from_str(auth.expose()).unwrap_or(HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }
}

/// The error for a proxy URL that does not parse: `why`, and what was expected where it came from.
fn bad_url(source: &'static str, why: &str) -> EgressError {
    EgressError {
        key: KEY,
        message: if source == KEY {
            format!("{why}; expected \"http://host:port\" (optionally http://user:password@host:port), or \"\" for no proxy")
        } else {
            format!(
                "{source} from the environment: {why}; expected http://host:port. \
                 Set server.egress_proxy to override it, or to \"\" to ignore it"
            )
        },
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

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;
    use crate::env::MapEnv;

    /// The proxy for `server.egress_proxy`, `server.no_proxy` and this environment.
    pub(super) fn from(
        configured: Option<&str>,
        no_proxy: Option<&[&str]>,
        env: &[(&str, &str)],
    ) -> Result<Option<EgressProxy>, EgressError> {
        let no: Option<Vec<String>> = no_proxy.map(|n| n.iter().map(|s| s.to_string()).collect());
        EgressProxy::from_config_and_env(configured, no.as_deref(), &MapEnv::new(env.to_vec()))
    }

    /// The proxy a valid `server.egress_proxy` and `server.no_proxy` give.
    pub(super) fn proxy(configured: &str, no_proxy: &[&str]) -> EgressProxy {
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
}
