//! The inbound policy (SPEC §6), checked before anything else: the `Host` must be a loopback name
//! or one of `allowed_hosts` (stops DNS rebinding), and a request a browser marks as cross-site, or
//! whose `Origin` is not in `allowed_origins`, is refused — a web page must not act with the
//! proxy's identity. With `inbound_token` set, clients must also send that secret
//! (`Proxy-Authorization: Bearer …` or `X-Patless-Token: …`), compared in constant time. `CONNECT`
//! and absolute-form targets naming another host are refused: patless is not an open proxy.

use http::{header, HeaderMap, Method, Uri};

use super::ProxyError;
use crate::hosts;
use crate::secret::Secret;

/// The configured policy.
#[derive(Clone, Default)]
pub struct InboundPolicy {
    /// The shared secret clients must send, if set.
    pub token: Option<Secret>,
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

impl std::fmt::Debug for InboundPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundPolicy")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("allowed_hosts", &self.allowed_hosts)
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

/// The inbound token a request carries, if any.
fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get("x-patless-token") {
        return Some(v.as_bytes());
    }
    let v = headers.get(header::PROXY_AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

impl InboundPolicy {
    /// `Ok` or the refusal, for the whole request: method and target first (not an open proxy),
    /// then [`InboundPolicy::check`].
    pub fn check_request(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<(), ProxyError> {
        if method == Method::CONNECT {
            return Err(ProxyError::NotAnOpenProxy("CONNECT is refused".into()));
        }
        if let Some(authority) = uri.authority() {
            let host = authority.host().to_ascii_lowercase();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let ours = hosts::is_loopback(host)
                || self
                    .allowed_hosts
                    .iter()
                    .any(|a| a == host || a == authority.as_str());
            if !ours {
                return Err(ProxyError::NotAnOpenProxy(format!(
                    "an absolute-form request to {host} is refused; send requests to patless's own address"
                )));
            }
        }
        self.check(headers)
    }

    /// `Ok` or the refusal (`host_not_allowed`, `cross_site_request`, `inbound_auth_required`).
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
        if let Some(expected) = &self.token {
            let presented = presented_token(headers).unwrap_or_default();
            let matches = aws_lc_rs::constant_time::verify_slices_are_equal(
                presented,
                expected.expose().as_bytes(),
            )
            .is_ok();
            if !matches {
                return Err(ProxyError::InboundAuthRequired);
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
