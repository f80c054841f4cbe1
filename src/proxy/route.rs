//! Step 5 of the road: the route. Longest explicit prefix on whole segments, else
//! `/{known-host}/…` (`routing.rs` holds the table), else `404 no_route`. The match travels down as
//! a `Routed` request extension (`routing.rs`): the target (upstream, profile, token entry) and
//! the path and query to send upstream.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{ready, Either, Ready};
use http::Request;
use tower::{Layer, Service};

use super::rescue::Rejection;
#[cfg(test)]
use super::routing::Routed;
use super::routing::Router;
use super::{BoxError, ProxyError};

/// Routes each request, or refuses it with `404 no_route`.
#[derive(Debug, Clone)]
pub struct RouteLayer {
    router: Arc<Router>,
}

impl RouteLayer {
    /// Routing with `router`.
    pub fn new(router: Arc<Router>) -> Self {
        RouteLayer { router }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            router: Arc::clone(&self.router),
        }
    }
}

/// The service of [`RouteLayer`].
#[derive(Debug, Clone)]
pub struct Route<S> {
    inner: S,
    router: Arc<Router>,
}

impl<S, B> Service<Request<B>> for Route<S>
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.router.route(req.uri().path(), req.uri().query()) {
            Some(routed) => {
                req.extensions_mut().insert(routed);
                Either::Right(self.inner.call(req))
            }
            None => Either::Left(ready(Err(
                Rejection::new(ProxyError::NoRoute).with_unread(req.into_body())
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::testing;
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_match_travels_down_as_an_extension() {
        let (router, _cache) = testing::router().await;
        let svc = RouteLayer::new(Arc::new(router)).layer(tower::service_fn(
            |req: Request<http_body_util::Empty<Bytes>>| async move {
                let routed = req.extensions().get::<Routed>().expect("routed").clone();
                Ok::<_, Rejection>(http::Response::new(routed))
            },
        ));
        let req = |uri: &str| {
            Request::builder()
                .uri(uri)
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("request")
        };
        let routed = svc
            .clone()
            .oneshot(req("/ado/_apis/projects?api-version=7.1"))
            .await
            .expect("routed")
            .into_body();
        assert_eq!(&*routed.target.label, "/ado");
        assert_eq!(
            routed.path_and_query,
            "/contoso/_apis/projects?api-version=7.1"
        );
        let refused = svc.oneshot(req("/nowhere")).await;
        assert!(matches!(
            refused,
            Err(Rejection {
                error: ProxyError::NoRoute,
                ..
            })
        ));
    }
}
