//! Step 2, around everything: `patless_requests_total{route,status}` and
//! `patless_request_duration_seconds{route}` for every answer, and one debug line (never a header
//! value). The route comes back on the answer (a response extension set where the route is known:
//! `rewrite.rs` for forwarded requests, `rescue.rs` for refusals); without one the label is `none`.
//! An explicit route's handles are looked up once (`RouteMetrics`), not hashed per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::RouteTarget;
use crate::metrics::Metrics;

/// Counts and times every answer.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    /// Counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        ObserveLayer { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ObserveFuture {
            inner: self.inner.call(req),
            metrics: Arc::clone(&self.metrics),
            started: Instant::now(),
        }
    }
}

pin_project! {
    /// The future of [`Observe`].
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<Metrics>,
        started: Instant,
    }
}

impl<F, R, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        if let Ok(resp) = &out {
            let target = resp.extensions().get::<Arc<RouteTarget>>();
            observe(
                this.metrics,
                target.map(|t| &**t),
                resp.status(),
                *this.started,
            );
        }
        Poll::Ready(out)
    }
}

/// Counts one answer under its route (`none` without one).
pub fn observe(
    metrics: &Metrics,
    target: Option<&RouteTarget>,
    status: StatusCode,
    started: Instant,
) {
    let elapsed = started.elapsed();
    let route = target.map_or("none", |t| &*t.label);
    let cached = target.and_then(|t| t.metrics.as_deref());
    match cached {
        Some(m) if status == StatusCode::OK => {
            m.ok.get_or_init(|| metrics.requests().with_label_values(&[route, "200"]))
                .inc()
        }
        _ => metrics
            .requests()
            .with_label_values(&[route, status.as_str()])
            .inc(),
    }
    let secs = elapsed.as_secs_f64();
    match cached {
        Some(m) => m
            .duration
            .get_or_init(|| metrics.request_duration().with_label_values(&[route]))
            .observe(secs),
        None => metrics
            .request_duration()
            .with_label_values(&[route])
            .observe(secs),
    }
    tracing::debug!(
        route,
        status = status.as_u16(),
        elapsed_ms = elapsed.as_millis() as u64,
        "answered"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn every_answer_is_counted_under_its_route_or_none() {
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
        let svc = ObserveLayer::new(Arc::clone(&metrics)).layer(tower::service_fn(
            |_req: Request<()>| async {
                Ok::<_, std::convert::Infallible>(
                    Response::builder().status(404).body(()).expect("response"),
                )
            },
        ));
        svc.clone().oneshot(Request::new(())).await.expect("answer");
        svc.oneshot(Request::new(())).await.expect("answer");
        let text = metrics.render();
        assert!(
            text.contains(r#"patless_requests_total{route="none",status="404"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"patless_request_duration_seconds_count{route="none"} 2"#),
            "{text}"
        );
    }
}
