//! What the section validators share: the collector that keeps every problem (not just the
//! first), and the checks of values that appear in more than one section — listen addresses,
//! durations, URLs, tenants, secret references.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::raw::{RawDuration, SecretValue};
use super::{parse_duration, KeyError, ListenAddr, SecretSource};
use crate::hosts;
use crate::secret::Secret;

/// Every problem found so far, each naming its key.
#[derive(Default)]
pub(super) struct Errors(Vec<KeyError>);

impl Errors {
    /// Records that `key` is wrong, and what was expected.
    pub(super) fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(KeyError {
            key: key.into(),
            message: message.into(),
        });
    }

    /// How many problems so far (a section compares before and after to know whether it failed).
    pub(super) fn count(&self) -> usize {
        self.0.len()
    }

    /// `value` when nothing was wrong, else every problem.
    pub(super) fn or<T>(self, value: T) -> Result<T, Vec<KeyError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

/// `IP:PORT` or `unix:/absolute/path`.
pub(super) fn listen_addr(errs: &mut Errors, key: &str, text: &str) -> Option<ListenAddr> {
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

/// A TCP listener off loopback is refused unless `guarded` (its clients must authenticate, or
/// the operator said a network policy does); `why` says so for the address.
pub(super) fn loopback_unless(
    errs: &mut Errors,
    key: &str,
    listen: Option<&ListenAddr>,
    guarded: bool,
    why: impl FnOnce(&SocketAddr) -> String,
) {
    if let Some(ListenAddr::Tcp(addr)) = listen {
        if !addr.ip().is_loopback() && !guarded {
            errs.add(key, why(addr));
        }
    }
}

/// A duration as written, `default` when absent (or wrong, after recording why).
pub(super) fn duration(
    errs: &mut Errors,
    key: &str,
    value: &Option<RawDuration>,
    default: Duration,
) -> Duration {
    let parsed = match value {
        None => return default,
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
        default
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
    let refused = match url.scheme() {
        "https" => None,
        "http" if hosts::is_loopback(&host) => None,
        "http" => Some(format!(
            "`{text}`: http:// is allowed only toward loopback; use https:// for {what}"
        )),
        other => Some(format!(
            "`{text}`: scheme `{other}` is not supported; expected https://"
        )),
    };
    let refused = refused.or_else(|| {
        if host.is_empty() {
            Some(format!("`{text}` has no host"))
        } else if !url.username().is_empty() || url.password().is_some() {
            Some("must not carry credentials in the URL".to_string())
        } else if url.query().is_some() || url.fragment().is_some() {
            Some(format!("`{text}` must not have a query or fragment"))
        } else {
            None
        }
    });
    match refused {
        Some(why) => {
            errs.add(key, why);
            None
        }
        None => Some(url),
    }
}

/// A base URL (an upstream, an authority host): [`http_url`]'s rules, no trailing `/`.
pub(super) fn base_url(errs: &mut Errors, key: &str, text: &str, what: &str) -> Option<Url> {
    let mut url = http_url(errs, key, text, what)?;
    let trimmed = url.path().trim_end_matches('/').to_string();
    url.set_path(&trimmed);
    Some(url)
}

/// An authority host, such as `https://login.microsoftonline.com`.
pub(super) fn authority(errs: &mut Errors, key: &str, text: &str) -> Option<Url> {
    base_url(errs, key, text, "an authority host")
}

/// A tenant id (GUID) or domain name.
pub(super) fn tenant(errs: &mut Errors, key: &str, text: &str) {
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
}

/// A secret reference as written → as it is resolved at each use.
pub(super) fn secret_source(v: &SecretValue) -> SecretSource {
    match v {
        SecretValue::Literal(s) => SecretSource::Literal(Secret::new(s.clone())),
        SecretValue::Env(r) => SecretSource::Env(r.env.clone()),
        SecretValue::File(r) => SecretSource::File(r.file.clone()),
    }
}
