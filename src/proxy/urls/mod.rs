//! Absolute URLs in answers kept behind patless (part of step 7, on the way back;
//! docs/feeds.md).
//!
//! Package feeds answer with absolute URLs to themselves (npm's `dist.tarball`, the links of a
//! PEP 503 page, NuGet's service-index `@id`s, cargo's `config.json`), Graph and Defender page
//! with `@odata.nextLink`, ARM with `nextLink`, and Azure DevOps' SDKs send every call to the
//! `locationUrl` of their resource area. A client that followed one as it is would leave patless
//! and reach the service with no credential (or a stale PAT). So on a route with `rewrite_urls`,
//! and on Azure DevOps' resource-area list whatever the route says, every URL in a textual
//! answer that a route serves becomes that route's URL on the proxy, as the client addressed it
//! (`http://{Host}{prefix}…`): the route's own upstream first, then the other routes, then host
//! routes (`Router::proxy_path_for`).
//!
//! The body streams through the rewrite (`scan.rs`) in constant memory, `Content-Length` dropped.
//! A compressed answer (gzip, deflate, br) is decompressed for it with tower-http's
//! `Decompression` and sent on uncompressed; the request's `Accept-Encoding` is narrowed to those
//! codings so that no other comes back. Not rewritten: `HEAD`, `206`/`204`/`304`, answers that
//! are not JSON, XML or HTML, and requests without a `Host` to point the URLs at. A `Location` to
//! another host (a feed's `303` to signed blob storage) is left as it is (`location.rs`).

mod scan;

pub use scan::{Rewriter, RewrittenBody, UrlMap, MAX_URL_HEAD};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::FutureExt as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower::{Layer, Service, ServiceExt as _};

use super::routing::{RouteTarget, Routed, Router};
use super::ProxyBody;

/// Points absolute URLs in answers at the proxy (see the module docs).
#[derive(Debug, Clone)]
pub struct RewriteUrlsLayer {
    router: Arc<Router>,
}

impl RewriteUrlsLayer {
    /// With `router`, which knows which URLs the proxy serves.
    pub fn new(router: Arc<Router>) -> Self {
        RewriteUrlsLayer { router }
    }
}

impl<S> Layer<S> for RewriteUrlsLayer {
    type Service = RewriteUrls<S>;

    fn layer(&self, inner: S) -> RewriteUrls<S> {
        RewriteUrls {
            inner,
            router: Arc::clone(&self.router),
        }
    }
}

/// The service of [`RewriteUrlsLayer`].
#[derive(Debug, Clone)]
pub struct RewriteUrls<S> {
    inner: S,
    router: Arc<Router>,
}

/// What the answer of a request whose URLs are rewritten needs.
struct Plan {
    router: Arc<Router>,
    target: Arc<RouteTarget>,
    /// `http://{Host}`: the proxy as the client addressed it.
    origin: String,
}

impl<S, B> Service<Request<B>> for RewriteUrls<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>>,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = RewriteUrlsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let plan = self.plan(&req);
        if plan.is_some() {
            narrow_accept_encoding(req.headers_mut());
        }
        RewriteUrlsFuture {
            inner: self.inner.call(req),
            plan,
        }
    }
}

impl<S> RewriteUrls<S> {
    /// Whether `req`'s answer is to be rewritten, and with what.
    fn plan<B>(&self, req: &Request<B>) -> Option<Plan> {
        let routed = req.extensions().get::<Routed>()?;
        let target = &routed.target;
        let wanted = target.rewrite_urls
            || (target.azure_devops
                && req.method() == Method::GET
                && is_resource_areas(routed.path_and_query.split('?').next().unwrap_or_default()));
        if !wanted || req.method() == Method::HEAD {
            return None;
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        let Some(host) = host else {
            tracing::debug!(route = %target.label, "no Host: the answer's URLs are passed on unchanged");
            return None;
        };
        Some(Plan {
            router: Arc::clone(&self.router),
            target: Arc::clone(target),
            origin: format!("http://{host}"),
        })
    }
}

pin_project! {
    /// The future of [`RewriteUrls`].
    pub struct RewriteUrlsFuture<F> {
        #[pin]
        inner: F,
        plan: Option<Plan>,
    }
}

impl<F, E> Future for RewriteUrlsFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, E>>,
{
    type Output = Result<Response<ProxyBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(match this.plan.take() {
            Some(plan) => rewritten(resp, plan),
            None => resp,
        }))
    }
}

/// `resp` with its URLs rewritten, if it is an answer that may be.
fn rewritten(resp: Response<ProxyBody>, plan: Plan) -> Response<ProxyBody> {
    let label = Arc::clone(&plan.target.label);
    if let Some(why) = not_rewritable(resp.status(), resp.headers()) {
        tracing::trace!(route = %label, why, "answer passed on as it is");
        return resp;
    }
    let resp = if resp.headers().contains_key(header::CONTENT_ENCODING) {
        decompressed(resp)
    } else {
        resp
    };
    if resp.headers().contains_key(header::CONTENT_ENCODING) {
        tracing::debug!(route = %label, "an encoding that cannot be decoded: the answer's URLs are passed on unchanged");
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let Plan {
        router,
        target,
        origin,
    } = plan;
    let map: UrlMap = Box::new(move |url: &str| {
        router
            .proxy_path_for(&target, url)
            .map(|path| format!("{origin}{path}"))
    });
    let body = RewrittenBody::new(body, Rewriter::new(map), label).boxed_unsync();
    Response::from_parts(parts, body)
}

/// Why an answer is passed on as it is, if it is.
fn not_rewritable(status: StatusCode, headers: &HeaderMap) -> Option<&'static str> {
    if matches!(
        status,
        StatusCode::PARTIAL_CONTENT | StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    ) || status.is_informational()
    {
        return Some("no whole body");
    }
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    match mime {
        Some(m) if is_textual(&m) => None,
        _ => Some("not JSON, XML or HTML"),
    }
}

/// JSON, XML and HTML, including the `application/vnd.…+json` kinds (npm's install format,
/// PEP 691) and `+xml`/`+html`.
fn is_textual(mime: &str) -> bool {
    matches!(
        mime,
        "application/json" | "application/xml" | "text/xml" | "text/html"
    ) || (mime.starts_with("application/")
        && [("+json"), ("+xml"), ("+html")]
            .iter()
            .any(|s| mime.ends_with(s)))
}

/// The codings the rewrite can decode.
const DECODABLE: [&str; 5] = ["gzip", "x-gzip", "deflate", "br", "identity"];

/// Keeps, of the client's `Accept-Encoding`, the codings the rewrite can decode (a client that
/// accepts none of them gets the answer as it is).
fn narrow_accept_encoding(headers: &mut HeaderMap) {
    if !headers.contains_key(header::ACCEPT_ENCODING) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| {
            let coding = c.split(';').next().unwrap_or_default().trim();
            DECODABLE.iter().any(|d| d.eq_ignore_ascii_case(coding))
        })
        .map(str::to_owned)
        .collect();
    headers.remove(header::ACCEPT_ENCODING);
    if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
        if !kept.is_empty() {
            headers.insert(header::ACCEPT_ENCODING, v);
        }
    }
}

/// `resp` decoded by tower-http's `Decompression` (gzip, deflate, br), which drops
/// `Content-Encoding` and `Content-Length` when it decodes and leaves any other coding as it is.
fn decompressed(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let mut once = Some(resp);
    let svc =
        tower_http::decompression::Decompression::new(tower::service_fn(move |_: Request<()>| {
            let resp = once.take().expect("called once");
            futures_util::future::ready(Ok::<_, std::convert::Infallible>(resp))
        }));
    // A ready future over a ready answer: done on the first poll.
    match svc.oneshot(Request::new(())).now_or_never() {
        Some(Ok(resp)) => resp.map(|b| b.boxed_unsync()),
        Some(Err(never)) => match never {},
        None => unreachable!("a ready answer is ready"),
    }
}

/// Whether `path` (the upstream path, without query) asks Azure DevOps for its resource areas:
/// `…/_apis/ResourceAreas` or `…/_apis/ResourceAreas/{id}`, case-insensitively. The SDKs send
/// every later call to the `locationUrl`s of this answer, so it is rewritten on every Azure
/// DevOps route.
pub fn is_resource_areas(path: &str) -> bool {
    // Every GET to Azure DevOps asks this: most paths are ruled out without an allocation.
    const AREAS: &[u8] = b"resourceareas";
    if !path
        .as_bytes()
        .windows(AREAS.len())
        .any(|w| w.eq_ignore_ascii_case(AREAS))
    {
        return false;
    }
    let segments: Vec<&str> = path
        .trim_end_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let Some(apis) = segments
        .iter()
        .rposition(|s| s.eq_ignore_ascii_case("_apis"))
    else {
        return false;
    };
    let after = &segments[apis + 1..];
    matches!(after.first(), Some(s) if s.eq_ignore_ascii_case("resourceareas")) && after.len() <= 2
}

#[cfg(test)]
mod tests;
