//! The inbound policy (docs/security.md), checked before anything else: the `Host` must be a
//! loopback name or one of `allowed_hosts` (stops DNS rebinding), and a request a browser marks as
//! cross-site, or whose `Origin` is not in `allowed_origins`, is refused — a web page must not act
//! with the proxy's identity. With `inbound_token` set, clients must also send that secret
//! (`Proxy-Authorization: Bearer …` or `X-Patless-Token: …`), compared in constant time. `CONNECT`
//! and absolute-form targets naming another host are refused: patless is not an open proxy.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{ready, Either, Ready};
use http::{header, HeaderMap, HeaderName, Method, Request, Uri};
use tower::{Layer, Service};

use super::rescue::Rejection;
use super::{BoxError, ProxyError};
use crate::hosts;
use crate::metrics::Metrics;
use crate::secret::Secret;

/// Step 3 of the road: [`InboundPolicy::check_request`] before anything else; a refusal is
/// counted in `patless_inbound_rejections_total{reason}`.
#[derive(Debug, Clone)]
pub struct InboundLayer {
    policy: Arc<InboundPolicy>,
    metrics: Arc<Metrics>,
}

impl InboundLayer {
    /// Applying `policy`, counting into `metrics`.
    pub fn new(policy: Arc<InboundPolicy>, metrics: Arc<Metrics>) -> Self {
        InboundLayer { policy, metrics }
    }
}

impl<S> Layer<S> for InboundLayer {
    type Service = Inbound<S>;

    fn layer(&self, inner: S) -> Inbound<S> {
        Inbound {
            inner,
            policy: Arc::clone(&self.policy),
            metrics: Arc::clone(&self.metrics),
            accepted_host: AcceptedHost::default(),
        }
    }
}

/// The service of [`InboundLayer`].
#[derive(Debug, Clone)]
pub struct Inbound<S> {
    inner: S,
    policy: Arc<InboundPolicy>,
    metrics: Arc<Metrics>,
    accepted_host: AcceptedHost,
}

/// The last `Host` value this stack accepted. A client sends the same `Host` on every request,
/// and the policy does not change under a stack, so a request whose `Host` is the same value is
/// not parsed again: the name/port split and the IPv4 parse behind the loopback check, most of
/// the ~1.6k instructions per request that this and the path check's single pass saved under
/// callgrind (bench/README.md). A copy, not the request's `HeaderValue`: that shares the
/// connection's read buffer and would keep it alive.
#[derive(Clone)]
struct AcceptedHost {
    len: usize,
    bytes: [u8; 64],
}

impl Default for AcceptedHost {
    fn default() -> Self {
        AcceptedHost {
            len: 0,
            bytes: [0; 64],
        }
    }
}

impl AcceptedHost {
    fn is(&self, host: &[u8]) -> bool {
        self.len != 0 && host == &self.bytes[..self.len]
    }

    fn remember(&mut self, host: &[u8]) {
        if let Some(slot) = self.bytes.get_mut(..host.len()) {
            slot.copy_from_slice(host);
            self.len = host.len();
        }
    }
}

impl std::fmt::Debug for AcceptedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AcceptedHost")
            .field(&String::from_utf8_lossy(&self.bytes[..self.len]))
            .finish()
    }
}

impl<S, B> Service<Request<B>> for Inbound<S>
where
    S: Service<Request<B>, Error = Rejection>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Rejection;
    type Future = Either<Ready<Result<S::Response, Rejection>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let host = req.headers().get(header::HOST).map(|h| h.as_bytes());
        let known = host.is_some_and(|h| self.accepted_host.is(h));
        // `check_request`, with the `Host` check skipped for a value accepted before.
        let policy = &self.policy;
        let checked = policy
            .check_target(req.method(), req.uri())
            .and_then(|()| match known {
                true => Ok(()),
                false => policy.check_host(req.headers()),
            })
            .and_then(|()| policy.check_client(req.headers()));
        match checked {
            Ok(()) => {
                if let (false, Some(host)) = (known, host) {
                    self.accepted_host.remember(host);
                }
                Either::Right(self.inner.call(req))
            }
            Err(refused) => {
                self.metrics
                    .inbound_rejections
                    .with_label_values(&[refused.code()])
                    .inc();
                Either::Left(ready(Err(
                    Rejection::new(refused).with_unread(req.into_body())
                )))
            }
        }
    }
}

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

/// A `Host` value split into its name and port, or `None` when it is not a plain `name[:port]`
/// or `[ipv6-literal][:port]`: a bracketed literal must be a valid IPv6 address followed by
/// nothing but `:port` (`[::1]evil.example`, `[::1]@evil.example` and `[::1` are not hosts), and
/// a name holds only the characters a DNS name or IPv4 address can.
pub(crate) fn parse_host(host: &str) -> Option<(&str, Option<&str>)> {
    let port_ok = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let (literal, after) = rest.split_once(']')?;
        literal.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').filter(|p| port_ok(p))?),
        };
        return Some((&host[..literal.len() + 2], port));
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port).filter(|p| port_ok(p))?.into()),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    name_ok.then_some((name, port))
}

/// Named once: a name given as a string is parsed at each lookup.
static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Whether `host` (a `Host` value, any case) is a loopback name or one of `allowed` (lower-case,
/// with or without port).
pub(crate) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    // Compared without case rather than lower-cased: no copy per request.
    let Some((name, _)) = parse_host(host) else {
        return false;
    };
    hosts::is_loopback(name)
        || allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(name))
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

/// Whether `presented` is `expected`, compared as SHA-256 digests in constant time: the time taken
/// says nothing about either value, not even its length.
pub(crate) fn secret_eq(presented: &[u8], expected: &[u8]) -> bool {
    let digest = |b: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    aws_lc_rs::constant_time::verify_slices_are_equal(
        digest(presented).as_ref(),
        digest(expected).as_ref(),
    )
    .is_ok()
}

/// The inbound token a request carries, if any.
fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(&crate::header_names::PATLESS_TOKEN) {
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
        self.check_target(method, uri)?;
        self.check(headers)
    }

    /// Method and target: not an open proxy.
    fn check_target(&self, method: &Method, uri: &Uri) -> Result<(), ProxyError> {
        if method == Method::CONNECT {
            return Err(ProxyError::NotAnOpenProxy("CONNECT is refused".into()));
        }
        // TRACE echoes the request, credentials included, back to whoever sent it.
        if method == Method::TRACE {
            return Err(ProxyError::MethodNotAllowed("TRACE"));
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
        Ok(())
    }

    /// `Ok` or the refusal (`host_not_allowed`, `cross_site_request`, `inbound_auth_required`).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        self.check_host(headers)?;
        self.check_client(headers)
    }

    /// `Ok`, or `host_not_allowed` for a `Host` neither loopback nor in `allowed_hosts`.
    fn check_host(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().map_err(|_| ProxyError::HostNotAllowed)?;
            if !host_allowed(host, &self.allowed_hosts) {
                return Err(ProxyError::HostNotAllowed);
            }
        }
        Ok(())
    }

    /// The browser's marks and the inbound token.
    fn check_client(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        self.check_browser(headers)?;
        self.check_token(headers)
    }

    /// `Ok`, or `cross_site_request` for a request a browser marks as cross-site or sends from an
    /// `Origin` not in `allowed_origins`.
    pub fn check_browser(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        if let Some(site) = headers.get(&SEC_FETCH_SITE) {
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

    /// `Ok`, or `inbound_auth_required` when the inbound token is set and not presented.
    fn check_token(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        if let Some(expected) = &self.token {
            // Digests, so that neither the comparison's time nor an early return on a length
            // mismatch tells a client anything about the token.
            let presented = presented_token(headers).unwrap_or_default();
            let matches = secret_eq(presented, expected.expose().as_bytes());
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
            "[::1]",
            "[0:0:0:0:0:0:0:1]:1",
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
            // Bracketed values: an IPv6 literal and nothing after `]` but `:port`.
            "[::1]evil.com",
            "[::1]@evil.com",
            "[::1].evil.com:80",
            "[localhost]evil",
            "[localhost]",
            "[::1",
            "[::1]:",
            "[::1]:x",
            "[::1]:7070:1",
            "[::2]:7070",
            // Names with what no DNS name holds.
            "localhost@evil.example",
            "127.0.0.1/evil.example",
            "localhost:",
            "localhost:70700000",
            ":7070",
            "",
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
    fn the_inbound_token_must_match_whatever_its_length() {
        let p = InboundPolicy {
            token: Some(Secret::new("s3cret-inbound".to_string())),
            ..Default::default()
        };
        assert!(p
            .check(&headers(&[("x-patless-token", "s3cret-inbound")]))
            .is_ok());
        for bad in ["s3cret-inboun", "s3cret-inboundx", "", "S3CRET-INBOUND"] {
            let mut h = HeaderMap::new();
            h.insert("x-patless-token", bad.parse().expect("value"));
            assert!(
                matches!(p.check(&h), Err(ProxyError::InboundAuthRequired)),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_layer_refuses_before_the_inner_service_and_counts_the_refusal() {
        use tower::ServiceExt;
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
        let called = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&called);
        let svc = InboundLayer::new(Arc::new(InboundPolicy::default()), Arc::clone(&metrics))
            .layer(tower::service_fn(
                move |_req: Request<http_body_util::Empty<Bytes>>| {
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async { Ok::<_, Rejection>(http::Response::new(())) }
                },
            ));
        let req = |host: &str| {
            Request::builder()
                .uri("/ado/x")
                .header("host", host)
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("request")
        };
        let refused = svc.clone().oneshot(req("evil.example")).await;
        assert!(matches!(
            refused,
            Err(Rejection {
                error: ProxyError::HostNotAllowed,
                ..
            })
        ));
        assert!(svc.oneshot(req("127.0.0.1:7070")).await.is_ok());
        assert_eq!(called.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(metrics
            .render()
            .contains(r#"patless_inbound_rejections_total{reason="host_not_allowed"} 1"#));
    }

    #[tokio::test]
    async fn a_host_accepted_before_skips_only_the_host_check() {
        use tower::ServiceExt;
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
        let policy = InboundPolicy {
            token: Some(Secret::new("inbound-secret".to_string())),
            ..Default::default()
        };
        let mut svc = InboundLayer::new(Arc::new(policy), metrics).layer(tower::service_fn(
            |_req: Request<http_body_util::Empty<Bytes>>| async {
                Ok::<_, Rejection>(http::Response::new(()))
            },
        ));
        let token = ("x-patless-token", "inbound-secret");
        let cross = ("sec-fetch-site", "cross-site");
        // In order, through one service as a worker's stack is: (method, Host, headers, refusal).
        type Step<'a> = (Method, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
        let steps: &[Step] = &[
            // Refused for its token: the host is not remembered as accepted.
            (Method::GET, "evil.example", &[], Some("host_not_allowed")),
            (
                Method::GET,
                "127.0.0.1:7070",
                &[],
                Some("inbound_auth_required"),
            ),
            (Method::GET, "127.0.0.1:7070", &[token], None),
            // The same host again: the token, the browser and the method are still checked.
            (Method::GET, "127.0.0.1:7070", &[token], None),
            (
                Method::GET,
                "127.0.0.1:7070",
                &[],
                Some("inbound_auth_required"),
            ),
            (
                Method::GET,
                "127.0.0.1:7070",
                &[token, cross],
                Some("cross_site_request"),
            ),
            (
                Method::TRACE,
                "127.0.0.1:7070",
                &[token],
                Some("method_not_allowed"),
            ),
            // Another host is checked, and a foreign one refused, whatever was accepted before.
            (
                Method::GET,
                "evil.example",
                &[token],
                Some("host_not_allowed"),
            ),
            (
                Method::GET,
                "127.0.0.1:7070.evil",
                &[token],
                Some("host_not_allowed"),
            ),
            (Method::GET, "localhost:7070", &[token], None),
            (Method::GET, "127.0.0.1:7071", &[token], None),
        ];
        for (i, (method, host, extra, refusal)) in steps.iter().enumerate() {
            let mut b = Request::builder()
                .method(method.clone())
                .uri("/ado/x")
                .header("host", *host);
            for (k, v) in extra.iter() {
                b = b.header(*k, *v);
            }
            let req = b
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("request");
            let svc = svc
                .ready()
                .await
                .map_err(|e| e.error.code())
                .expect("ready");
            let answer = svc.call(req).await.map(|_| ()).map_err(|e| e.error.code());
            assert_eq!(answer.err(), *refusal, "step {i}: {method} {host}");
        }
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
