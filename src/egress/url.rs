//! The proxy URL: `http://[user[:password]@]host:port[/]`, read into the address connections go
//! to, the `host:port` that may be logged, and the `Proxy-Authorization` credentials. A reason
//! for refusing it never repeats the value (it may hold a password).

use base64::Engine as _;
use http::Uri;
use percent_encoding::percent_decode_str;

use crate::secret::Secret;

pub(super) struct ParsedUrl {
    pub(super) uri: Uri,
    pub(super) authority: String,
    pub(super) user_as_written: Option<String>,
    pub(super) basic_auth: Option<Secret>,
}

/// `http://[user[:password]@]host:port[/]`. `strict` (the config key) wants the scheme written;
/// the environment's `host:port` means `http://host:port`, as curl reads it. The reason never
/// repeats the value.
pub(super) fn parse_url(text: &str, strict: bool) -> Result<ParsedUrl, String> {
    let rest = after_scheme(text, strict)?;
    let (userinfo, host_port) = split_authority(rest)?;
    let (authority, uri) = host_and_port(host_port)?;
    let (user_as_written, basic_auth) = match userinfo {
        None => (None, None),
        Some(info) => credentials(info)?,
    };
    Ok(ParsedUrl {
        uri,
        authority,
        user_as_written,
        basic_auth,
    })
}

/// What follows `http://` (or the whole text, when the environment's value has no scheme).
fn after_scheme(text: &str, strict: bool) -> Result<&str, String> {
    let (scheme, rest) = match text.split_once("://") {
        Some((s, rest)) => (s.to_ascii_lowercase(), rest),
        None if strict => return Err("no scheme".into()),
        None => ("http".to_string(), text),
    };
    match scheme.as_str() {
        "http" => Ok(rest),
        "https" => Err(
            "a proxy reached over TLS (https://) is not supported; use the proxy's \
                        http:// port (the tunnelled connections stay TLS end to end)"
                .into(),
        ),
        "socks4" | "socks4a" | "socks5" | "socks5h" => {
            Err("SOCKS proxies are not supported; use an HTTP proxy".into())
        }
        _ => Err("the scheme is not http".into()),
    }
}

/// The user information, if any, and `host:port`; nothing may follow but a `/`.
fn split_authority(rest: &str) -> Result<(Option<&str>, &str), String> {
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
    Ok(match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    })
}

/// `host:port` checked and lower-cased, and the proxy's `http://host:port/`.
fn host_and_port(host_port: &str) -> Result<(String, Uri), String> {
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
    Ok((authority, uri))
}

/// `user[:password]`, percent-encoded: the user as written (for the redacted display) and the
/// `Basic …` value of `Proxy-Authorization`.
fn credentials(info: &str) -> Result<(Option<String>, Option<Secret>), String> {
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
    Ok((
        Some(user.to_string()),
        Some(Secret::new(format!("Basic {token}"))),
    ))
}
