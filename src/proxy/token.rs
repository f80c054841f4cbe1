//! Step 6 of the road: the route's token. The route's cache entry gives a usable token without a
//! lock (no allocation, nothing awaited), or the request waits for the one acquisition in flight
//! (single-flight, `token/entry.rs`); none to be had → `503 token_unavailable` with `Retry-After`.
//! The token travels down in the request's `Routed` extension; `rewrite.rs` attaches it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::Request;
use tower::{Layer, Service};

use super::rescue::Rejection;
use super::routing::Routed;
use super::{BoxError, ProxyError};
use crate::token::WorkerToken;

/// Attaches the route's token (as an extension) to each routed request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteTokenLayer;

impl<S> Layer<S> for RouteTokenLayer {
    type Service = RouteToken<S>;

    fn layer(&self, inner: S) -> RouteToken<S> {
        RouteToken { inner }
    }
}

/// The service of [`RouteTokenLayer`].
#[derive(Debug, Clone)]
pub struct RouteToken<S> {
    inner: S,
}

type Waiting<T> = Pin<Box<dyn Future<Output = Result<T, Rejection>> + Send>>;

impl<S, B> Service<Request<B>> for RouteToken<S>
where
    S: Service<Request<B>, Error = Rejection> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Rejection;
    type Future = Either<S::Future, Waiting<S::Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The token now (this worker's copy), or the target to wait with.
        let looked = req.extensions().get::<Routed>().map(|r| {
            let target = &r.target;
            target
                .token_slot
                .usable(&target.entry)
                .ok_or_else(|| Arc::clone(target))
        });
        let target = match looked {
            Some(Ok(token)) => {
                set_token(&mut req, token);
                return Either::Left(self.inner.call(req));
            }
            Some(Err(target)) => target,
            None => {
                // Only a stack without the route stop gets here.
                let refused = Rejection::new(ProxyError::NoRoute).with_unread(req.into_body());
                return Either::Right(Box::pin(std::future::ready(Err(refused))));
            }
        };
        // Wait for the acquisition in flight; the service that was readied goes with it.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            match target.entry.get().await {
                Ok(token) => {
                    set_token(&mut req, target.token_slot.copy_of(&token));
                    inner.call(req).await
                }
                Err(e) => {
                    let error = ProxyError::TokenUnavailable {
                        message: target.explain(e.message),
                        retry_after: e.retry_after,
                    };
                    let mut refused = Rejection::new(error).with_unread(req.into_body());
                    refused.route = Some(target);
                    Err(refused)
                }
            }
        }))
    }
}

/// The token goes down in the request's [`Routed`] extension.
fn set_token<B>(req: &mut Request<B>, token: Arc<WorkerToken>) {
    if let Some(routed) = req.extensions_mut().get_mut::<Routed>() {
        routed.token = Some(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::testing;
    use tower::ServiceExt;

    fn routed_request(routed: Routed) -> Request<http_body_util::Empty<Bytes>> {
        let mut req = Request::new(http_body_util::Empty::<Bytes>::new());
        req.extensions_mut().insert(routed);
        req
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_travels_down_and_a_missing_one_is_a_503_with_the_body_handed_back() {
        let (router, _cache) = testing::router().await;
        let routed = router.route("/ado/x", None).expect("route");
        let svc = RouteTokenLayer.layer(tower::service_fn(
            |req: Request<http_body_util::Empty<Bytes>>| async move {
                let routed = req.extensions().get::<Routed>().expect("routed");
                let token = routed.token.as_ref().expect("token");
                Ok::<_, Rejection>(http::Response::new(token.header.clone()))
            },
        ));
        // The first request waits for the acquisition; the next reads the cached token.
        let first = svc
            .clone()
            .oneshot(routed_request(routed.clone()))
            .await
            .expect("token");
        assert!(first.body().is_sensitive());
        let second = svc.oneshot(routed_request(routed)).await.expect("token");
        assert_eq!(first.body(), second.body());

        let (router, _cache) = testing::router_failing().await;
        let routed = router.route("/ado/x", None).expect("route");
        let svc = RouteTokenLayer.layer(tower::service_fn(
            |_req: Request<http_body_util::Empty<Bytes>>| async move {
                panic!("never called without a token");
                #[allow(unreachable_code)]
                Ok::<_, Rejection>(http::Response::new(()))
            },
        ));
        let refused = svc.oneshot(routed_request(routed)).await;
        match refused {
            Err(Rejection {
                error: ProxyError::TokenUnavailable { .. },
                route: Some(route),
                ..
            }) => assert_eq!(&*route.label, "/ado"),
            other => panic!("expected token_unavailable on /ado, got {other:?}"),
        }
    }
}
