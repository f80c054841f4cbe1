//! Refusals on the way down, and the one place they become their JSON answer (docs/errors.md).
//!
//! Every stop below this one refuses a request by returning `Err(`[`Rejection`]`)`: the error,
//! the route if one matched, and the request's body if nobody read it. [`Rescue`] turns that into
//! the JSON answer of `error.rs` (with the request's id), logs it, and — when the client may still
//! be sending a body nobody read — reads and drops that body first (bounded), so the client reads
//! the answer instead of a broken pipe, then closes the connection, saying so, so a pooling client
//! does not send its next request into it. (linkerd's "rescue" and pingora's `fail_to_proxy` do the
//! same job.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::request_id::RequestId;

use super::{BoxError, ProxyBody, ProxyError, RouteTarget};

/// How much of an unread request body is read (and dropped) before an early answer.
const DRAIN_BYTES: u64 = 16 * 1024 * 1024;
/// How long that may take.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// A request refused below [`Rescue`].
pub struct Rejection {
    /// What was wrong.
    pub error: ProxyError,
    /// The route, once one matched (the answer names it, the metrics count under it).
    pub route: Option<Arc<RouteTarget>>,
    /// The request body, when nobody read it.
    pub unread: Option<ProxyBody>,
}

impl std::fmt::Debug for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejection")
            .field("error", &self.error)
            .field("route", &self.route.as_ref().map(|t| &*t.label))
            .field("unread", &self.unread.is_some())
            .finish()
    }
}

impl Rejection {
    /// A refusal before any route matched.
    pub fn new(error: ProxyError) -> Self {
        Rejection {
            error,
            route: None,
            unread: None,
        }
    }

    /// A refusal on `route`.
    pub fn on_route(error: ProxyError, route: &Arc<RouteTarget>) -> Self {
        Rejection {
            error,
            route: Some(Arc::clone(route)),
            unread: None,
        }
    }

    /// Hands back the request's unread body, to be drained before the answer.
    pub fn with_unread<B>(mut self, body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if !body.is_end_stream() {
            self.unread = Some(body.map_err(Into::into).boxed_unsync());
        }
        self
    }
}

/// Reads and drops `body`, up to [`DRAIN_BYTES`] or [`DRAIN_TIME`].
async fn drain(mut body: ProxyBody) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// A fresh request id: 16 hex digits.
pub fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The JSON answer for `rejection`, logged; `request_id` is the request's.
pub fn answer(rejection: &Rejection, request_id: &str) -> Response<ProxyBody> {
    let err = &rejection.error;
    let route = rejection.route.as_deref();
    let label = route.map(|t| &*t.label);
    if err.is_clients_fault() {
        tracing::debug!(request_id, code = err.code(), "refused: {err}");
    } else if let ProxyError::TokenUnavailable { retry_after, .. } = err {
        // Its cause is the profile's failure, which the refresher logs once at WARN and then as
        // a summary a minute (src/token/failures.rs): one short line per answer, not the whole
        // explanation again for every request a client makes meanwhile.
        tracing::info!(
            request_id,
            route = label.unwrap_or("-"),
            profile = route.map_or("-", |t| &*t.profile),
            code = err.code(),
            retry_after_s = retry_after.as_secs(),
            "answered 503: the profile has no token yet"
        );
    } else {
        tracing::warn!(
            request_id,
            route = label.unwrap_or("-"),
            code = err.code(),
            "{err}"
        );
    }
    let mut resp = err.to_response(label, route.map(|t| &*t.profile), request_id);
    if let Some(t) = &rejection.route {
        // For the metrics above (`observe.rs`): counted under the route.
        resp.extensions_mut().insert(Arc::clone(t));
    }
    resp
}

/// Turns [`Rejection`]s into JSON answers (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue { inner }
    }
}

/// The service of [`RescueLayer`].
#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = Rejection>,
{
    type Response = Response<ProxyBody>;
    type Error = std::convert::Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A refusal to be ready is a rejection like any other; ours are always ready.
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) | Err(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // An id a layer above set (tower-http's `SetRequestIdLayer`, when a stack has one).
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|id| id.header_value().clone());
        // A client that waits for `100 Continue` has not sent its body: nothing to drain.
        let waits_for_continue = req
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        RescueFuture {
            inner: self.inner.call(req),
            request_id,
            waits_for_continue,
            draining: None,
        }
    }
}

type Draining = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;

pin_project! {
    /// The future of [`Rescue`].
    pub struct RescueFuture<F> {
        #[pin]
        inner: F,
        request_id: Option<HeaderValue>,
        waits_for_continue: bool,
        draining: Option<Draining>,
    }
}

impl<F> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Rejection>>,
{
    type Output = Result<Response<ProxyBody>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(draining) = this.draining {
            return draining.as_mut().poll(cx).map(Ok);
        }
        let mut rejection = match ready!(this.inner.poll(cx)) {
            Ok(resp) => return Poll::Ready(Ok(resp)),
            Err(rejection) => rejection,
        };
        let id = match this.request_id.as_ref().and_then(|v| v.to_str().ok()) {
            Some(id) => id.to_owned(),
            None => request_id(),
        };
        let mut resp = answer(&rejection, &id);
        let Some(body) = rejection.unread.take() else {
            return Poll::Ready(Ok(resp));
        };
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        if *this.waits_for_continue {
            return Poll::Ready(Ok(resp));
        }
        let mut draining: Draining = Box::pin(async move {
            drain(body).await;
            resp
        });
        let polled = draining.as_mut().poll(cx).map(Ok);
        *this.draining = Some(draining);
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use tower::ServiceExt;

    fn full(b: &'static str) -> ProxyBody {
        Full::new(Bytes::from_static(b.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    #[tokio::test]
    async fn a_rejection_becomes_its_json_answer_with_the_request_id() {
        let svc = RescueLayer.layer(tower::service_fn(|_req: Request<ProxyBody>| async {
            Err::<Response<ProxyBody>, _>(Rejection::new(ProxyError::NoRoute))
        }));
        let mut req = Request::new(full(""));
        req.extensions_mut()
            .insert(RequestId::new(HeaderValue::from_static("00000000000000ab")));
        let resp = svc.oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()["x-patless-request-id"], "00000000000000ab");
        assert!(
            resp.headers().get(header::CONNECTION).is_none(),
            "nothing unread"
        );
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["error"], "no_route");
        assert_eq!(json["request_id"], "00000000000000ab");
    }

    #[tokio::test]
    async fn an_unread_body_is_drained_and_the_connection_closed() {
        let (tx, body) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(4);
        let body = http_body_util::StreamBody::new(tokio_stream_of(body));
        let svc = RescueLayer.layer(tower::service_fn(|req: Request<ProxyBody>| async move {
            Err::<Response<ProxyBody>, _>(
                Rejection::new(ProxyError::HostNotAllowed).with_unread(req.into_body()),
            )
        }));
        let sender = tokio::spawn(async move {
            for _ in 0..3 {
                let frame = http_body::Frame::data(Bytes::from_static(b"chunk"));
                if tx.send(Ok(frame)).await.is_err() {
                    return false;
                }
            }
            true
        });
        let resp = svc
            .oneshot(Request::new(body.boxed_unsync()))
            .await
            .expect("infallible");
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()[header::CONNECTION], "close");
        assert!(sender.await.expect("sender"), "the whole body was read");
    }

    /// A `Stream` over an mpsc receiver (no tokio-stream dependency).
    fn tokio_stream_of<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
