//! Step 7 of the road, both ways: the request's head rewritten for the upstream, and the upstream's
//! answer rewritten for the client.
//!
//! Toward the upstream: the path after the route's prefix onto the upstream base (the [`Routed`]
//! extension); hop-by-hop headers, the client's `Authorization`, `X-Patless-Token` and `Expect`
//! dropped; the route's token (in the same extension) set as `Authorization` (marked
//! sensitive); `X-TFS-FedAuthRedirect: Suppress` toward Azure DevOps; `Host` the upstream's.
//!
//! Back to the client: hop-by-hop headers dropped; a `Location` into the upstream pointed at the
//! proxy (never at a value starting `//` or `/\`, which a client reads as another host:
//! `location.rs`); the body streamed back, its breaking off counted (`body.rs`). One answer is
//! read first (`discovery.rs`): Azure DevOps' resource-area list, whose `locationUrl`s are pointed
//! at the address the client used, so the SDKs that follow them stay behind patless. The route
//! goes back on the answer as a response extension, for the metrics (`observe.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::{self, Either, Ready};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::location::rewrite_location;
use super::rescue::Rejection;
use super::routing::{RouteTarget, Routed, Router};
use super::{body, discovery, strip_hop_by_hop, BoxError, ProxyBody, ProxyError};
use crate::metrics::Metrics;
use crate::token::CachedToken;

/// The inbound token's header (never forwarded).
pub use crate::header_names::PATLESS_TOKEN;
/// The header Azure DevOps reads to answer a refused token with `401` instead of a sign-in page.
pub use crate::header_names::TFS_FEDAUTH_REDIRECT as TFS_FEDAUTH;

/// Rewrites requests for the upstream and answers for the client.
#[derive(Debug, Clone)]
pub struct RewriteLayer {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
}

impl RewriteLayer {
    /// With `router` (for the resource-area rewrite) and `metrics` (broken answer bodies).
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>) -> Self {
        RewriteLayer { router, metrics }
    }
}

impl<S> Layer<S> for RewriteLayer {
    type Service = Rewrite<S>;

    fn layer(&self, inner: S) -> Rewrite<S> {
        Rewrite {
            inner,
            router: Arc::clone(&self.router),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service of [`RewriteLayer`].
#[derive(Debug, Clone)]
pub struct Rewrite<S> {
    inner: S,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
}

/// What the way back needs to know of the request.
struct Back {
    target: Arc<RouteTarget>,
    /// The `Host` the client sent (accepted by the inbound policy): redirects are anchored to it.
    client_host: Option<HeaderValue>,
    /// For a resource-area list: the proxy's origin its `locationUrl`s are pointed at.
    discovery: Option<String>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
}

/// The request headers as the upstream gets them (step 7, on the way up); returns the `Host` the
/// client sent.
pub fn rewrite_request_headers(
    headers: &mut HeaderMap,
    target: &RouteTarget,
    token: &CachedToken,
    discovery: bool,
) -> Option<HeaderValue> {
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(&PATLESS_TOKEN);
    headers.remove(header::EXPECT);
    if discovery {
        // An answer to rewrite must come uncompressed.
        headers.remove(header::ACCEPT_ENCODING);
    }
    let client_host = headers.insert(header::HOST, target.host_header.clone());
    if target.azure_devops {
        headers.insert(TFS_FEDAUTH.clone(), HeaderValue::from_static("Suppress"));
    }
    headers.insert(header::AUTHORIZATION, token.header.clone());
    client_host
}

/// The proxy's origin (`http://{Host}`) when `req` asks Azure DevOps for its resource areas.
fn discovery_origin<B>(
    req: &Request<B>,
    target: &RouteTarget,
    upstream_path: &str,
) -> Option<String> {
    let asks = target.azure_devops
        && req.method() == http::Method::GET
        && discovery::is_resource_areas(upstream_path.split('?').next().unwrap_or_default());
    if !asks {
        return None;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if host.is_none() {
        tracing::debug!(route = %target.label, "resource-area request without Host: its answer is passed on unchanged");
    }
    host.map(|h| format!("http://{h}"))
}

impl<S, B, R> Service<Request<B>> for Rewrite<S>
where
    S: Service<Request<B>, Response = Response<R>, Error = Rejection>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    R: Body<Data = Bytes> + Send + 'static,
    R::Error: std::fmt::Display + Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Rejection;
    type Future = Either<Ready<Result<Response<ProxyBody>, Rejection>>, RewriteFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let routed = req.extensions_mut().get_mut::<Routed>();
        let Some((routed, Some(token))) = routed.map(|r| {
            let token = r.token.clone();
            (r, token)
        }) else {
            let refused = Rejection::new(ProxyError::NoRoute).with_unread(req.into_body());
            return Either::Left(future::ready(Err(refused)));
        };
        let target = Arc::clone(&routed.target);
        let upstream_path = std::mem::take(&mut routed.path_and_query);
        let discovery = discovery_origin(&req, &target, &upstream_path);
        let uri = Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query(upstream_path)
            .build();
        let Ok(uri) = uri else {
            let refused = Rejection::on_route(
                ProxyError::InvalidPath("the path cannot be forwarded"),
                &target,
            );
            return Either::Left(future::ready(Err(refused.with_unread(req.into_body()))));
        };
        let client_host =
            rewrite_request_headers(req.headers_mut(), &target, &token, discovery.is_some());
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_11;
        Either::Right(RewriteFuture {
            inner: self.inner.call(req),
            back: Some(Back {
                target,
                client_host,
                discovery,
                router: Arc::clone(&self.router),
                metrics: Arc::clone(&self.metrics),
            }),
            discovering: None,
        })
    }
}

type Discovering = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;

pin_project! {
    /// The future of [`Rewrite`].
    pub struct RewriteFuture<F> {
        #[pin]
        inner: F,
        back: Option<Back>,
        discovering: Option<Discovering>,
    }
}

impl<F, R> Future for RewriteFuture<F>
where
    F: Future<Output = Result<Response<R>, Rejection>>,
    R: Body<Data = Bytes> + Send + 'static,
    R::Error: std::fmt::Display + Into<BoxError>,
{
    type Output = Result<Response<ProxyBody>, Rejection>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(d) = this.discovering {
            return d.as_mut().poll(cx).map(Ok);
        }
        let resp = ready!(this.inner.poll(cx))?;
        let Some(mut back) = this.back.take() else {
            return Poll::Ready(Err(Rejection::new(ProxyError::NoRoute)));
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(loc) = parts.headers.get(header::LOCATION) {
            match rewrite_location(loc, &back.target, back.client_host.as_ref()) {
                Ok(None) => {}
                Ok(Some(new)) => {
                    parts.headers.insert(header::LOCATION, new);
                }
                Err(e) => return Poll::Ready(Err(Rejection::on_route(e, &back.target))),
            }
        }
        parts.extensions.insert(Arc::clone(&back.target));
        let Some(origin) = back.discovery.take() else {
            let body = counted(body, &back);
            return Poll::Ready(Ok(Response::from_parts(parts, body)));
        };
        let body: ProxyBody = body.map_err(Into::into).boxed_unsync();
        let mut discovering: Discovering = Box::pin(async move {
            let target = Arc::clone(&back.target);
            let map = |url: &str| {
                back.router
                    .proxy_path_for(&target, url)
                    .map(|path| format!("{origin}{path}"))
            };
            let body =
                discovery::rewrite(parts.status, &mut parts.headers, body, map, &target.label)
                    .await;
            let body = counted(body, &back);
            Response::from_parts(parts, body)
        });
        let polled = discovering.as_mut().poll(cx).map(Ok);
        *this.discovering = Some(discovering);
        polled
    }
}

/// The answer's body, its breaking off counted (`body.rs`).
fn counted<B>(body: B, back: &Back) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display + Into<BoxError>,
{
    body::CountedBody::new(
        body,
        back.metrics.upstream_errors.clone(),
        Arc::clone(&back.target.label),
    )
    .map_err(Into::into)
    .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::testing;
    use http_body_util::Full;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn the_upstream_gets_the_route_s_token_and_host_and_nothing_of_the_client_s() {
        let (router, _cache) = testing::router().await;
        let router = Arc::new(router);
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
        let routed = router
            .route("/ado/_apis/projects", Some("x=1"))
            .expect("route");
        let token = routed.target.entry.get().await.expect("token");
        let svc = RewriteLayer::new(Arc::clone(&router), metrics).layer(tower::service_fn(
            |req: Request<Full<Bytes>>| async move {
                let h = req.headers();
                assert_eq!(
                    req.uri().to_string(),
                    "https://dev.azure.com/contoso/_apis/projects?x=1"
                );
                assert_eq!(h[header::HOST], "dev.azure.com");
                assert!(h[header::AUTHORIZATION].is_sensitive());
                assert!(h[header::AUTHORIZATION]
                    .to_str()
                    .expect("ascii")
                    .starts_with("Bearer "));
                assert_eq!(h[&TFS_FEDAUTH], "Suppress");
                for gone in [
                    "x-patless-token",
                    "proxy-authorization",
                    "connection",
                    "expect",
                ] {
                    assert!(h.get(gone).is_none(), "{gone} forwarded");
                }
                assert_eq!(h["accept"], "application/json");
                Ok::<_, Rejection>(
                    Response::builder()
                        .status(302)
                        .header(header::LOCATION, "https://dev.azure.com/contoso/_apis/x")
                        .header(header::CONNECTION, "close")
                        .body(Full::new(Bytes::from_static(b"moved")))
                        .expect("response"),
                )
            },
        ));
        let mut req = Request::builder()
            .uri("/ado/_apis/projects?x=1")
            .header(header::HOST, "127.0.0.1:7070")
            .header(header::AUTHORIZATION, "Basic OnN0YWxlLXBhdA==")
            .header("x-patless-token", "inbound")
            .header(header::PROXY_AUTHORIZATION, "Bearer inbound")
            .header(header::CONNECTION, "keep-alive")
            .header(header::EXPECT, "100-continue")
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let mut routed = routed;
        routed.token = Some(token);
        req.extensions_mut().insert(routed);
        let resp = svc.oneshot(req).await.expect("answer");
        assert_eq!(resp.headers()[header::LOCATION], "/ado/_apis/x");
        assert!(resp.headers().get(header::CONNECTION).is_none());
        assert_eq!(
            &*resp
                .extensions()
                .get::<Arc<RouteTarget>>()
                .expect("route")
                .label,
            "/ado"
        );
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"moved");
    }
}
