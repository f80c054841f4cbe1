//! Step 7 of the road, both ways: the request's head rewritten for the upstream, and the upstream's
//! answer rewritten for the client.
//!
//! Toward the upstream: the path after the route's prefix onto the upstream base (the [`Routed`]
//! extension); hop-by-hop headers, the client's `Authorization`, `X-Patless-Token` and `Expect`
//! dropped; the route's token (in the same extension) set as `Authorization: Bearer …`, or
//! `Basic` with the token as the password on `auth = "basic"` routes (marked sensitive); `X-TFS-FedAuthRedirect: Suppress` toward Azure DevOps; `Host` the upstream's.
//!
//! Back to the client: hop-by-hop headers dropped; a `Location` into the upstream pointed at the
//! proxy (never at a value starting `//` or `/\`, which a client reads as another host:
//! `location.rs`); the body streamed back, its breaking off counted (`body.rs`). The route goes
//! back on the answer as a response extension, for the metrics (`observe.rs`). Absolute URLs in
//! the body are the stop above's (`urls/`).

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
use super::routing::{RouteTarget, Routed};
use super::{body, strip_hop_by_hop, BoxError, ProxyBody, ProxyError};
use crate::hosts::Auth;
use crate::metrics::Metrics;
use crate::token::WorkerToken;

/// The inbound token's header (never forwarded).
pub use crate::header_names::PATLESS_TOKEN;
/// The header Azure DevOps reads to answer a refused token with `401` instead of a sign-in page.
pub use crate::header_names::TFS_FEDAUTH_REDIRECT as TFS_FEDAUTH;

/// Rewrites requests for the upstream and answers for the client.
#[derive(Debug, Clone)]
pub struct RewriteLayer {
    metrics: Arc<Metrics>,
}

impl RewriteLayer {
    /// With `metrics` (where broken answer bodies are counted).
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RewriteLayer { metrics }
    }
}

impl<S> Layer<S> for RewriteLayer {
    type Service = Rewrite<S>;

    fn layer(&self, inner: S) -> Rewrite<S> {
        Rewrite {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service of [`RewriteLayer`].
#[derive(Debug, Clone)]
pub struct Rewrite<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// What the way back needs to know of the request.
struct Back {
    target: Arc<RouteTarget>,
    /// The `Host` the client sent (accepted by the inbound policy): redirects are anchored to it.
    client_host: Option<HeaderValue>,
    metrics: Arc<Metrics>,
}

/// The request headers as the upstream gets them (step 7, on the way up); returns the `Host` the
/// client sent.
pub fn rewrite_request_headers(
    headers: &mut HeaderMap,
    target: &RouteTarget,
    token: &WorkerToken,
) -> Option<HeaderValue> {
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(&PATLESS_TOKEN);
    headers.remove(header::EXPECT);
    let client_host = headers.insert(header::HOST, target.host_header.clone());
    if target.azure_devops {
        headers.insert(TFS_FEDAUTH.clone(), HeaderValue::from_static("Suppress"));
    }
    let authorization = match target.auth {
        Auth::Bearer => &token.header,
        Auth::Basic => &token.basic_header,
    };
    headers.insert(header::AUTHORIZATION, authorization.clone());
    client_host
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
        // From parts rather than `Uri::builder()`, whose steps each move the parts (~200
        // instructions per request under callgrind).
        let uri = http::uri::PathAndQuery::try_from(upstream_path)
            .ok()
            .and_then(|path_and_query| {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(target.scheme.clone());
                parts.authority = Some(target.authority.clone());
                parts.path_and_query = Some(path_and_query);
                Uri::from_parts(parts).ok()
            });
        let Some(uri) = uri else {
            let refused = Rejection::on_route(
                ProxyError::InvalidPath("the path cannot be forwarded"),
                &target,
            );
            return Either::Left(future::ready(Err(refused.with_unread(req.into_body()))));
        };
        let client_host = rewrite_request_headers(req.headers_mut(), &target, &token);
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_11;
        Either::Right(RewriteFuture {
            inner: self.inner.call(req),
            back: Some(Back {
                target,
                client_host,
                metrics: Arc::clone(&self.metrics),
            }),
        })
    }
}

pin_project! {
    /// The future of [`Rewrite`].
    pub struct RewriteFuture<F> {
        #[pin]
        inner: F,
        back: Option<Back>,
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
        let resp = ready!(this.inner.poll(cx))?;
        let Some(back) = this.back.take() else {
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
        let body = counted(body, back);
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

/// The answer's body, its breaking off counted (`body.rs`).
fn counted<B>(body: B, back: Back) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display + Into<BoxError>,
{
    body::CountedBody::new(body, back.metrics, Arc::clone(&back.target.label))
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
        let svc = RewriteLayer::new(metrics).layer(tower::service_fn(
            |req: Request<Full<Bytes>>| async move {
                let h = req.headers();
                assert_eq!(
                    req.uri().to_string(),
                    "https://dev.azure.com/contoso/_apis/projects?x=1"
                );
                assert_eq!(h[header::HOST], "dev.azure.com");
                assert_eq!(h.get_all(header::AUTHORIZATION).iter().count(), 1);
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
            .header(header::AUTHORIZATION, "Bearer second-stale")
            .header("x-patless-token", "inbound")
            .header(header::PROXY_AUTHORIZATION, "Bearer inbound")
            .header(header::CONNECTION, "keep-alive")
            .header(header::EXPECT, "100-continue")
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let mut routed = routed;
        routed.token = Some(routed.target.token_slot.copy_of(&token));
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
    #[tokio::test(start_paused = true)]
    async fn a_basic_route_sends_the_token_as_the_password_and_never_the_client_s() {
        let (router, _cache) = testing::router_from(
            r#"
[profiles.bot]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "not-used"

[[routes]]
prefix = "/feed"
upstream = "https://pkgs.dev.azure.com/org/_packaging/feed"
profile = "bot"

[[routes]]
prefix = "/bearer-feed"
upstream = "https://pkgs.dev.azure.com/org/_packaging/feed"
profile = "bot"
auth = "bearer"
"#,
        )
        .await;
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
        for (path, scheme) in [
            ("/feed/npm/registry/a", "Basic "),
            ("/bearer-feed/x", "Bearer "),
        ] {
            let mut routed = router.route(path, None).expect("route");
            let token = routed.target.entry.get().await.expect("token");
            let want = match scheme {
                "Basic " => {
                    use base64::Engine as _;
                    let creds = format!("patless:{}", token.secret().expose());
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(creds)
                    )
                }
                _ => format!("Bearer {}", token.secret().expose()),
            };
            routed.token = Some(routed.target.token_slot.copy_of(&token));
            let svc = RewriteLayer::new(Arc::clone(&metrics)).layer(tower::service_fn(
                move |req: Request<Full<Bytes>>| {
                    let auth = req.headers()[header::AUTHORIZATION].clone();
                    assert!(auth.is_sensitive());
                    assert_eq!(auth.to_str().expect("ascii"), want, "{path}");
                    async move { Ok::<_, Rejection>(Response::new(Full::new(Bytes::new()))) }
                },
            ));
            let mut req = Request::builder()
                .uri(path)
                .header(header::HOST, "127.0.0.1:7070")
                // A stale PAT as npm and pip send it: replaced, never forwarded.
                .header(header::AUTHORIZATION, "Basic cGF0OnN0YWxlLXBhdA==")
                .body(Full::new(Bytes::new()))
                .expect("request");
            req.extensions_mut().insert(routed);
            svc.oneshot(req).await.expect("answer");
        }
    }
}
