//! The inbound policy (SPEC §6), checked before anything else: the `Host` must be a loopback name
//! or one of `allowed_hosts` (stops DNS rebinding), and a request a browser marks as cross-site, or
//! whose `Origin` is not in `allowed_origins`, is refused — a web page must not act with the
//! proxy's identity.

use http::{header, HeaderMap};

use super::ProxyError;
use crate::hosts;

/// The configured policy.
#[derive(Debug, Clone, Default)]
pub struct InboundPolicy {
    /// Lower-case host names (with or without port) accepted besides loopback names.
    pub allowed_hosts: Vec<String>,
    /// Exact origins (`http://127.0.0.1:3000`) allowed to send requests.
    pub allowed_origins: Vec<String>,
}

fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [::1]:7070
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

impl InboundPolicy {
    /// `Ok` or the refusal (`host_not_allowed`, `cross_site_request`).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        if let Some(host) = headers.get(header::HOST) {
            let host = host
                .to_str()
                .map_err(|_| ProxyError::HostNotAllowed)?
                .to_ascii_lowercase();
            let name = host_without_port(&host);
            let allowed = hosts::is_loopback(name)
                || self.allowed_hosts.iter().any(|a| a == &host || a == name);
            if !allowed {
                return Err(ProxyError::HostNotAllowed);
            }
        }
        if let Some(site) = headers.get("sec-fetch-site") {
            if matches!(site.as_bytes(), b"cross-site" | b"same-site") {
                return Err(ProxyError::CrossSiteRequest);
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let ok = origin.to_str().is_ok_and(|o| {
                self.allowed_origins
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(o))
            });
            if !ok {
                return Err(ProxyError::CrossSiteRequest);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn host_allowlist() {
        let p = InboundPolicy {
            allowed_hosts: vec!["patless.tools.svc".into()],
            ..Default::default()
        };
        for ok in [
            "127.0.0.1:7070",
            "localhost",
            "LOCALHOST:1",
            "[::1]:7070",
            "patless.tools.svc",
            "patless.tools.svc:7070",
        ] {
            assert!(p.check(&headers(&[("host", ok)])).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7070",
            "127.0.0.1.evil.example",
            "10.0.0.1:7070",
        ] {
            assert!(
                matches!(
                    p.check(&headers(&[("host", bad)])),
                    Err(ProxyError::HostNotAllowed)
                ),
                "{bad}"
            );
        }
        assert!(
            p.check(&HeaderMap::new()).is_ok(),
            "no Host (HTTP/1.0 tools)"
        );
    }

    #[test]
    fn cross_site_browser_requests() {
        let p = InboundPolicy {
            allowed_origins: vec!["http://localhost:3000".into()],
            ..Default::default()
        };
        let h = |extra| {
            let mut v = vec![("host", "127.0.0.1:7070")];
            v.push(extra);
            headers(&v)
        };
        assert!(matches!(
            p.check(&h(("sec-fetch-site", "cross-site"))),
            Err(ProxyError::CrossSiteRequest)
        ));
        assert!(matches!(
            p.check(&h(("sec-fetch-site", "same-site"))),
            Err(ProxyError::CrossSiteRequest)
        ));
        assert!(p.check(&h(("sec-fetch-site", "none"))).is_ok());
        assert!(p.check(&h(("sec-fetch-site", "same-origin"))).is_ok());
        assert!(matches!(
            p.check(&h(("origin", "https://evil.example"))),
            Err(ProxyError::CrossSiteRequest)
        ));
        assert!(matches!(
            p.check(&h(("origin", "null"))),
            Err(ProxyError::CrossSiteRequest)
        ));
        assert!(p.check(&h(("origin", "http://localhost:3000"))).is_ok());
    }
}
