//! The destinations that connect directly: loopback always, and the `no_proxy` entries (from
//! `server.no_proxy` or `NO_PROXY`), checked and normalised as curl reads them.

use std::net::IpAddr;

use super::{EgressError, NO_PROXY_KEY};

/// Destinations that never go through the proxy, whatever the rules say.
const LOOPBACK_RULES: &str = "localhost, 127.0.0.0/8, ::1, ::ffff:127.0.0.0/104";

/// The exclusion list given to the matchers: loopback, then `rules`.
pub(super) fn no_proxy_list(rules: &[String]) -> String {
    let mut no = LOOPBACK_RULES.to_string();
    for r in rules {
        no.push_str(", ");
        no.push_str(r);
    }
    no
}

/// Normalises `no_proxy` entries (curl's rules): `*`, an IP address, a CIDR block, or a domain
/// that also covers its subdomains (`corp.example` and `.corp.example` alike; `*.corp.example` is
/// read as `.corp.example`). A `:port` suffix is dropped (the rule then covers every port).
/// Empty entries are skipped.
pub(super) fn parse_rules<'a>(
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

const EXPECTED: &str =
    "expected a host name (.corp.example), an IP address, a CIDR block (10.0.0.0/8) or *";

fn rule(entry: &str) -> Result<String, String> {
    if entry == "*" {
        return Ok("*".into());
    }
    if let Some((addr, bits)) = entry.split_once('/') {
        return cidr(addr, bits);
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
    domain(entry)
}

/// `addr/bits`, an IPv4 or IPv6 block.
fn cidr(addr: &str, bits: &str) -> Result<String, String> {
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    let max = match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => 32,
        Ok(IpAddr::V6(_)) => 128,
        Err(_) => return Err(format!("not a CIDR block; {EXPECTED}")),
    };
    match bits.parse::<u8>() {
        Ok(b) if b <= max => Ok(format!("{addr}/{b}")),
        _ => Err(format!("the prefix length is not 0 to {max}")),
    }
}

/// A domain and its subdomains, lower-cased; `.name` and `*.name` keep their leading dot.
fn domain(entry: &str) -> Result<String, String> {
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

#[cfg(test)]
mod tests {
    use crate::egress::tests::{from, proxy};
    use crate::egress::NO_PROXY_KEY;

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
