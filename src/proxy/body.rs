//! The upstream's response body on its way back (step 7): a pass-through that counts a body
//! breaking off mid-stream — a reset, a close before `Content-Length` or the last chunk, a bad
//! chunk — as `patless_upstream_errors_total{route, kind="body"}`. The headers went out long
//! before, so the count (and the aborted client connection hyper makes of the error) is all that
//! tells such a failure from a short answer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::metrics::Metrics;

/// The `kind` label of a response body that failed after its headers.
pub const KIND: &str = "body";

pin_project! {
    /// Counts the first error of `inner` once, under `{route, kind="body"}`; frames, size hint
    /// and end of stream pass through untouched (so `Content-Length` is kept).
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        // Taken at the first error: counted once, however often the body is polled after.
        // The worker's own `Arc`s: cloning a shared one per answer would write a count that
        // the other cores write too.
        errors: Option<(Arc<Metrics>, Arc<str>)>,
    }
}

impl<B> CountedBody<B> {
    /// Wraps `inner`, counting its error in `metrics` (`patless_upstream_errors_total`) under
    /// the route label `route`.
    pub fn new(inner: B, metrics: Arc<Metrics>, route: Arc<str>) -> Self {
        CountedBody {
            inner,
            errors: Some((metrics, route)),
        }
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body,
    B::Error: std::fmt::Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            if let Some((metrics, route)) = this.errors.take() {
                metrics
                    .upstream_errors
                    .with_label_values(&[&*route, KIND])
                    .inc();
                tracing::warn!(
                    route = %route,
                    "the upstream's answer broke off mid-body; the client's connection is closed \
                     so the answer cannot pass for complete: {e}"
                );
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn counter() -> Arc<Metrics> {
        Arc::new(Metrics::new(prometheus::Registry::new()))
    }

    fn count(metrics: &Metrics) -> u64 {
        metrics
            .upstream_errors
            .with_label_values(&["/r", KIND])
            .get()
    }

    #[tokio::test]
    async fn counts_a_body_error_once() {
        let errors = counter();
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"partial"))),
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ];
        let mut body = CountedBody::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            Arc::clone(&errors),
            Arc::from("/r"),
        );
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(
            first.into_data().expect("data"),
            Bytes::from_static(b"partial")
        );
        assert_eq!(count(&errors), 0, "nothing counted before the error");
        assert!(body.frame().await.expect("an item").is_err());
        assert_eq!(count(&errors), 1);
        assert!(body.frame().await.expect("an item").is_err());
        assert_eq!(count(&errors), 1, "counted once per body");
        let other = errors.upstream_errors.with_label_values(&["/other", KIND]);
        assert_eq!(other.get(), 0);
    }

    #[tokio::test]
    async fn a_complete_body_passes_through_with_its_size() {
        let errors = counter();
        let body = CountedBody::new(
            Full::new(Bytes::from_static(b"hello")),
            Arc::clone(&errors),
            Arc::from("/r"),
        );
        // The exact size survives, so hyper still sends Content-Length.
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let all = body.collect().await.expect("complete").to_bytes();
        assert_eq!(all, Bytes::from_static(b"hello"));
        assert_eq!(count(&errors), 0);
    }
}
