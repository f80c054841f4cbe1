//! Step 8 of the road: the body, the send, and the one replay a refused token earns.
//!
//! A body of known length up to [`MAX_REPLAY_BYTES`] is read first, so it can be sent again; any
//! other streams upstream as it arrives. When the upstream refuses the token (`challenge.rs`), the
//! route's entry replaces it (one acquisition, however many requests were refused). The request is
//! replayed once with the fresh token only when its body was kept and the upstream cannot have
//! acted on it (a `401`, a claims challenge, Azure DevOps's sign-in redirect), never after a `2xx`;
//! otherwise the answer is passed on and the token replaced in the background for the requests
//! that follow. Connect failures and a missing answer become `502 upstream_unreachable` and
//! `504 upstream_timeout`, counted in `patless_upstream_errors_total{route,kind}`.
//!
//! A request without a body (most API calls) is sent inline by [`ReplayFuture`], with no box and
//! no scan of its headers unless the answer is a refusal; one with a body, or a refusal, takes the
//! general `async` road, boxed (measured with callgrind: two boxes and the `Accept` scan on every
//! request cost ~1,700 instructions of ~46,000).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::challenge::{self, Refusal};
use super::pool::UpstreamError;
use super::rescue::Rejection;
use super::routing::{RouteTarget, Routed};
use super::{BoxError, ProxyBody, ProxyError};
use crate::metrics::Metrics;
use crate::token::{self, CachedToken, WorkerToken};

/// Request bodies up to this size are buffered so they can be replayed after a refusal.
pub const MAX_REPLAY_BYTES: u64 = 1024 * 1024;

/// Sends each request and replays it once when the upstream refuses its token.
#[derive(Debug, Clone)]
pub struct ReplayLayer {
    metrics: Arc<Metrics>,
    response_header_timeout: Duration,
}

impl ReplayLayer {
    /// Counting into `metrics`; `response_header_timeout` is what the timeout below allows (for
    /// the `504`'s message).
    pub fn new(metrics: Arc<Metrics>, response_header_timeout: Duration) -> Self {
        ReplayLayer {
            metrics,
            response_header_timeout,
        }
    }
}

impl<S> Layer<S> for ReplayLayer {
    type Service = Replay<S>;

    fn layer(&self, inner: S) -> Replay<S> {
        Replay {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`ReplayLayer`].
#[derive(Debug, Clone)]
pub struct Replay<S> {
    inner: S,
    layer: ReplayLayer,
}

/// A request body as forwarded: buffered (and so replayable) or streamed.
enum RequestBody {
    Empty,
    Buffered(Bytes),
    Streaming(ProxyBody),
}

impl RequestBody {
    /// Reads a small body of known length; streams any other.
    async fn take<B>(body: B) -> Result<RequestBody, String>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + std::fmt::Display,
    {
        if body.is_end_stream() {
            return Ok(RequestBody::Empty);
        }
        Ok(match body.size_hint().exact() {
            Some(0) => RequestBody::Empty,
            Some(n) if n <= MAX_REPLAY_BYTES => match body.collect().await {
                Ok(collected) => RequestBody::Buffered(collected.to_bytes()),
                Err(e) => return Err(e.to_string()),
            },
            _ => RequestBody::Streaming(body.map_err(Into::into).boxed_unsync()),
        })
    }

    /// A copy for a replay, if this body can be replayed.
    fn replayable(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Empty => Some(RequestBody::Empty),
            RequestBody::Buffered(b) => Some(RequestBody::Buffered(b.clone())),
            RequestBody::Streaming(_) => None,
        }
    }

    fn into_body(self) -> ProxyBody {
        use http_body_util::{Empty, Full};
        match self {
            RequestBody::Empty => Empty::new().map_err(BoxError::from).boxed_unsync(),
            RequestBody::Buffered(b) => Full::new(b).map_err(BoxError::from).boxed_unsync(),
            RequestBody::Streaming(b) => b,
        }
    }
}

/// The head of a request kept for a replay (no extensions: the upstream needs none).
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    fn of(parts: &http::request::Parts) -> Head {
        Head {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    fn with_token(self, token: &CachedToken, body: ProxyBody) -> Request<ProxyBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req.headers_mut()
            .insert(header::AUTHORIZATION, token.header.clone());
        req
    }
}

type Slow<T> = Pin<Box<dyn Future<Output = Result<T, Rejection>> + Send>>;

impl<S, B, R> Service<Request<B>> for Replay<S>
where
    S: Service<Request<ProxyBody>, Response = Response<R>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + std::fmt::Display,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = Rejection;
    type Future = ReplayFuture<S, S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Rejection::new(upstream_failure(&self.layer, None, e)))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let body = req.body();
        if !(body.is_end_stream() || body.size_hint().exact() == Some(0)) {
            // A body to read first, or to stream: the general road, one box.
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            return ReplayFuture::Slow {
                fut: Box::pin(send_with_replay(inner, self.layer.clone(), req)),
            };
        }
        // No body (most API calls): sent at once, no box unless the token is refused.
        let (mut parts, _) = req.into_parts();
        let Some(Routed {
            target,
            token: Some(token),
            ..
        }) = parts.extensions.remove::<Routed>()
        else {
            return ReplayFuture::Slow {
                fut: Box::pin(std::future::ready(Err(Rejection::new(ProxyError::NoRoute)))),
            };
        };
        let head = Head::of(&parts);
        // The map is empty now, but allocated: it goes back with the answer, where `rewrite.rs`
        // marks the route (for `observe.rs`) without allocating one anew.
        let extensions = std::mem::take(&mut parts.extensions);
        let empty = RequestBody::Empty.into_body();
        let fut = self.inner.call(Request::from_parts(parts, empty));
        ReplayFuture::First {
            fut,
            sent: Some(Sent {
                inner: self.inner.clone(),
                layer: self.layer.clone(),
                target,
                token,
                head,
                extensions,
            }),
        }
    }
}

/// What a bodiless request's first send keeps, in case its token is refused.
struct Sent<S> {
    inner: S,
    layer: ReplayLayer,
    target: Arc<RouteTarget>,
    token: Arc<WorkerToken>,
    head: Head,
    extensions: http::Extensions,
}

pin_project! {
    /// The future of [`Replay`]: a bodiless request's first send inline, anything else (a body to
    /// read, a refusal to answer) boxed.
    #[project = ReplayProj]
    pub enum ReplayFuture<S, F, R> {
        /// The first send of a request without a body.
        First { #[pin] fut: F, sent: Option<Sent<S>> },
        /// The general road: a body to read or stream, or the refused token's replay.
        Slow { fut: Slow<Response<R>> },
    }
}

impl<S, R> Future for ReplayFuture<S, S::Future, R>
where
    S: Service<Request<ProxyBody>, Response = Response<R>, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Output = Result<Response<R>, Rejection>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (sent, result) = match self.as_mut().project() {
            ReplayProj::Slow { fut } => return fut.as_mut().poll(cx),
            ReplayProj::First { fut, sent } => {
                let result = ready!(fut.poll(cx));
                match sent.take() {
                    Some(sent) => (sent, result),
                    None => return Poll::Ready(Err(Rejection::new(ProxyError::NoRoute))),
                }
            }
        };
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                let error = upstream_failure(&sent.layer, Some(&sent.target), e);
                return Poll::Ready(Err(Rejection::on_route(error, &sent.target)));
            }
        };
        // Whether it was an API call is asked only of an answer that may be a sign-in page.
        let api = || expects_api(&sent.head.uri, &sent.head.headers);
        let refused =
            challenge::refusal(resp.status(), resp.headers(), sent.target.azure_devops, api);
        let Some(refusal) = refused else {
            sent.token.shared.mark_accepted();
            resp.extensions_mut().extend(sent.extensions);
            return Poll::Ready(Ok(resp));
        };
        let Sent {
            inner,
            layer,
            target,
            token,
            head,
            ..
        } = sent;
        let api = expects_api(&head.uri, &head.headers);
        let first = First {
            resp,
            refusal,
            token: Arc::clone(&token.shared),
            api,
            replay: Some((head, RequestBody::Empty)),
        };
        let mut fut: Slow<Response<R>> = Box::pin(after_refusal(inner, layer, target, first));
        let polled = fut.as_mut().poll(cx);
        self.set(ReplayFuture::Slow { fut });
        polled
    }
}

/// Whether the request is an API call: only then is an Azure DevOps HTML answer a sign-in page.
fn expects_api(uri: &Uri, headers: &HeaderMap) -> bool {
    let accepts = |what: &str| {
        headers
            .get_all(header::ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains(what)))
    };
    let path = uri.path_and_query().map_or("", |pq| pq.as_str());
    !accepts("text/html") && (path.contains("/_apis") || accepts("json"))
}

async fn send_with_replay<S, B, R>(
    mut inner: S,
    layer: ReplayLayer,
    req: Request<B>,
) -> Result<Response<R>, Rejection>
where
    S: Service<Request<ProxyBody>, Response = Response<R>, Error = BoxError>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    let (mut parts, body) = req.into_parts();
    let Some(Routed {
        target,
        token: Some(token),
        ..
    }) = parts.extensions.remove::<Routed>()
    else {
        return Err(Rejection::new(ProxyError::NoRoute).with_unread(body));
    };
    let api = expects_api(&parts.uri, &parts.headers);
    let body = RequestBody::take(body)
        .await
        .map_err(|e| Rejection::on_route(ProxyError::ClientBody(e), &target))?;
    let replay = body.replayable().map(|b| (Head::of(&parts), b));
    let resp = send(
        &mut inner,
        &layer,
        &target,
        Request::from_parts(parts, body.into_body()),
    )
    .await?;
    let Some(refusal) =
        challenge::refusal(resp.status(), resp.headers(), target.azure_devops, || api)
    else {
        token.shared.mark_accepted();
        return Ok(resp);
    };
    let first = First {
        resp,
        refusal,
        token: Arc::clone(&token.shared),
        api,
        replay,
    };
    after_refusal(inner, layer, target, first).await
}

/// A first send the upstream refused, and what its replay needs.
struct First<R> {
    resp: Response<R>,
    refusal: Refusal,
    token: Arc<CachedToken>,
    api: bool,
    /// The head and a copy of the body, when the body was kept.
    replay: Option<(Head, RequestBody)>,
}

/// After a refused token: the answer passed on (the token replaced in the background), or the
/// request replayed once with a fresh token.
async fn after_refusal<S, R>(
    mut inner: S,
    layer: ReplayLayer,
    target: Arc<RouteTarget>,
    first: First<R>,
) -> Result<Response<R>, Rejection>
where
    S: Service<Request<ProxyBody>, Response = Response<R>, Error = BoxError>,
    S::Future: Send + 'static,
{
    let First {
        resp,
        refusal,
        token,
        api,
        replay,
    } = first;
    let why = refusal.describe();
    // Replayed only when the upstream cannot have acted on it, and only with a body that was kept.
    let replay = replay.filter(|_| refusal.replayable());
    let claims = match refusal {
        Refusal::Claims(c) => Some(c),
        _ => None,
    };
    let Some((head, body)) = replay else {
        replace_in_background(&target, token, claims, why);
        return Ok(resp);
    };
    let Some(fresh) = fresh_token(&target, &token, claims, why).await? else {
        return Ok(resp);
    };
    layer
        .metrics
        .upstream_auth_retries
        .with_label_values(&[&*target.label])
        .inc();
    tracing::info!(
        route = %target.label,
        profile = %target.profile,
        refusal = why,
        "the upstream refused the token; replaying once with a fresh one"
    );
    drop(resp);
    let resp = send(
        &mut inner,
        &layer,
        &target,
        head.with_token(&fresh, body.into_body()),
    )
    .await?;
    if challenge::refusal(resp.status(), resp.headers(), target.azure_devops, || api).is_none() {
        fresh.mark_accepted();
    }
    Ok(resp)
}

/// A refused token whose request is not replayed: its answer is passed on and the token replaced
/// for the requests that follow.
fn replace_in_background(
    target: &RouteTarget,
    token: Arc<CachedToken>,
    claims: Option<String>,
    why: &'static str,
) {
    tracing::info!(
        route = %target.label,
        profile = %target.profile,
        refusal = why,
        "the upstream refused the token of a request that is not replayed (its body was \
         streamed, or the answer is one it may have acted on): passing its answer on, \
         replacing the token for the next ones"
    );
    let entry = Arc::clone(&target.entry);
    tokio::spawn(async move {
        let _ = entry.reacquire(&token, claims).await;
    });
}

/// The token that replaces a refused one; `None` when the refused one was itself a replacement
/// moments ago (the answer is passed on), a `503` when none can be had.
async fn fresh_token(
    target: &Arc<RouteTarget>,
    token: &Arc<CachedToken>,
    claims: Option<String>,
    why: &'static str,
) -> Result<Option<Arc<CachedToken>>, Rejection> {
    match target.entry.reacquire(token, claims).await {
        Ok(fresh) => Ok(Some(fresh)),
        Err(token::NoReplay::RecentlyReplaced) => Ok(None),
        // The token is known to be refused and no other can be had now: the client is told so
        // (and when to retry), as for any request without a valid token.
        Err(token::NoReplay::Unavailable(e)) => {
            let error = ProxyError::TokenUnavailable {
                message: target.explain(format!(
                    "the upstream refused the token ({why}) and no fresh one can be had: {}",
                    e.message
                )),
                retry_after: e.retry_after,
            };
            Err(Rejection::on_route(error, target))
        }
    }
}

/// One send on `inner`; its failure as the error patless answers with (docs/errors.md).
async fn send<S, R>(
    inner: &mut S,
    layer: &ReplayLayer,
    target: &Arc<RouteTarget>,
    req: Request<ProxyBody>,
) -> Result<Response<R>, Rejection>
where
    S: Service<Request<ProxyBody>, Response = Response<R>, Error = BoxError>,
    S::Future: Send + 'static,
{
    let result = match std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
        Ok(()) => {
            // Named as a boxed `Send` future here, where the compiler can see that it is one.
            let call: Pin<Box<dyn Future<Output = Result<Response<R>, BoxError>> + Send>> =
                Box::pin(inner.call(req));
            call.await
        }
        Err(e) => Err(e),
    };
    result.map_err(|e| Rejection::on_route(upstream_failure(layer, Some(target), e), target))
}

/// A failed send as `502 upstream_unreachable` or `504 upstream_timeout`, counted.
fn upstream_failure(layer: &ReplayLayer, target: Option<&RouteTarget>, e: BoxError) -> ProxyError {
    let authority = target.map_or_else(String::new, |t| t.authority.to_string());
    let kind = if e.is::<tower::timeout::error::Elapsed>() {
        "timeout"
    } else if e
        .downcast_ref::<UpstreamError>()
        .is_some_and(UpstreamError::is_connect)
    {
        "connect"
    } else {
        "protocol"
    };
    if let Some(t) = target {
        layer
            .metrics
            .upstream_errors
            .with_label_values(&[&*t.label, kind])
            .inc();
    }
    if kind == "timeout" {
        return ProxyError::UpstreamTimeout {
            authority,
            secs: layer.response_header_timeout.as_secs(),
        };
    }
    ProxyError::UpstreamUnreachable {
        authority,
        reason: crate::error_chain::innermost(&*e),
    }
}

#[cfg(test)]
mod tests;
