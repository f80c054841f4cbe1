//! The token layer: patless as a library, for a Rust program that calls Entra-protected APIs
//! with its own HTTP client instead of through the proxy.
//!
//! A [`TokenSource`] keeps one token fresh in the background — the same cache, single-flight
//! acquisition, early refresh and backoff as the proxy (the `token` module), around any
//! [`Credential`](crate::credentials::Credential): one built in code, from a
//! [`Profile`](crate::config::Profile), or from a patless config file. [`TokenLayer`] is a
//! [`tower::Layer`] whose [`TokenService`] sets `Authorization: Bearer …` on every request, marked
//! sensitive, replacing whatever the request carried. It wraps any
//! `Service<http::Request<B>>` that is `Clone`: hyper-util's legacy client, an axum or tower
//! outbound client, or reqwest's client once a `service_fn` converts the request:
//!
//!
//! ```no_run
//! use patless::layer::{TokenLayer, TokenSource};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let source = TokenSource::from_config_file("patless.toml".as_ref(), "graph-bot", None)?;
//! let client = reqwest::Client::builder()
//!     .use_preconfigured_tls(patless::tls::client_config(None)?)
//!     .build()?;
//! // reqwest's client is a `Service<reqwest::Request>`: convert the `http::Request`.
//! let reqwest = tower::service_fn(move |req: http::Request<reqwest::Body>| {
//!     let client = client.clone();
//!     async move { client.execute(reqwest::Request::try_from(req)?).await }
//! });
//! let graph = ServiceBuilder::new().layer(TokenLayer::new(source)).service(reqwest);
//! let request = http::Request::get("https://graph.microsoft.com/v1.0/applications")
//!     .body(reqwest::Body::from(""))?;
//! let response = graph.oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```
//!
//! A request whose token is cached costs a lock-free read and a header insert: no boxing, no
//! awaiting. Only when no usable token is cached (the first requests, or after an outage outlasted
//! the token) does the request wait for the one acquisition in flight, for up to 30 s (or the
//! config's `server.token_wait_timeout`). When no token can be had the request is not sent: the
//! call fails with [`TokenLayerError::Token`], whose message says why and never holds a secret.
//!
//! `examples/tower_client.rs` is a complete program around hyper-util's client; README.md's "Use
//! it as a library" shows the same in a few lines.

mod source;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::Request;
use tower::{Layer, Service};

pub use crate::token::{CachedToken, TokenUnavailable};
pub use source::{SourceError, TokenSource};

use crate::credentials::BoxFuture;

/// A [`tower::Layer`] that sets `Authorization` from a [`TokenSource`] on every request.
#[derive(Clone, Debug)]
pub struct TokenLayer {
    source: TokenSource,
}

impl TokenLayer {
    /// A layer over `source` (every service it makes shares the source's token).
    pub fn new(source: TokenSource) -> Self {
        TokenLayer { source }
    }

    /// The token source.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }
}

impl<S> Layer<S> for TokenLayer {
    type Service = TokenService<S>;

    fn layer(&self, inner: S) -> TokenService<S> {
        TokenService::new(inner, self.source.clone())
    }
}

/// The service [`TokenLayer`] makes: `inner`, with `Authorization: Bearer …` (marked sensitive)
/// set on every request from a [`TokenSource`]. Readiness is the inner service's.
///
/// The inner service must be `Clone` (clients are: hyper-util's, reqwest's): a request that must
/// wait for a token takes the inner service that [`Service::poll_ready`] readied with it, and
/// leaves a clone in its place for the next request.
#[derive(Clone, Debug)]
pub struct TokenService<S> {
    inner: S,
    source: TokenSource,
}

impl<S> TokenService<S> {
    /// `inner`, with tokens from `source`.
    pub fn new(inner: S, source: TokenSource) -> Self {
        TokenService { inner, source }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The token source.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }
}

/// Why a [`TokenService`] call failed.
///
/// It is a `std::error::Error` when `E` is one (hyper-util's and reqwest's errors are). tower's
/// `BoxError` is not: put layers whose error is a `BoxError` (`timeout`, `buffer`) outside the
/// token layer, where they box this error, rather than between it and the client.
#[derive(Debug, thiserror::Error)]
pub enum TokenLayerError<E> {
    /// No token could be had, so the request was not sent. The message says why (the credential's
    /// error, or the wait that ran out) and never holds a token or a secret.
    #[error("request not sent: {0}")]
    Token(TokenUnavailable),
    /// The inner service failed (its `poll_ready` or its call).
    #[error(transparent)]
    Inner(E),
}

impl<E> TokenLayerError<E> {
    /// For [`TokenLayerError::Token`]: how long to wait before trying again (the token source's
    /// backoff); `None` for an inner error.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TokenLayerError::Token(t) => Some(t.retry_after),
            TokenLayerError::Inner(_) => None,
        }
    }
}

/// Sets the token on `req`. `insert` replaces every `Authorization` value the request carried.
fn authorize<B>(req: &mut Request<B>, token: &CachedToken) {
    let mut value = token.header.clone();
    // The cache builds it sensitive; kept so whatever the cache does, HTTP/2's HPACK and header
    // logging (tower-http's sensitive headers) never index or print it.
    value.set_sensitive(true);
    req.headers_mut().insert(AUTHORIZATION, value);
}

impl<S, B> Service<Request<B>> for TokenService<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = TokenLayerError<S::Error>;
    type Future = ResponseFuture<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TokenLayerError::Inner)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(token) = self.source.usable() {
            authorize(&mut req, &token);
            return ResponseFuture {
                state: State::Ready {
                    future: self.inner.call(req),
                },
            };
        }
        // The readied service goes with this request; the next one readies the clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let source = self.source.clone();
        ResponseFuture {
            state: State::Waiting {
                future: Box::pin(async move {
                    let token = source.token().await.map_err(TokenLayerError::Token)?;
                    authorize(&mut req, &token);
                    inner.call(req).await.map_err(TokenLayerError::Inner)
                }),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`TokenService`] call: the inner service's future itself when a token was
    /// cached, else a boxed wait for the token followed by the call.
    pub struct ResponseFuture<F, T, E> {
        #[pin]
        state: State<F, T, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, T, E> {
        Ready { #[pin] future: F },
        Waiting { future: BoxFuture<'static, Result<T, TokenLayerError<E>>> },
    }
}

impl<F, T, E> ResponseFuture<F, T, E> {
    /// Whether this call had to wait for a token (tests check the fast path).
    #[cfg(test)]
    pub(crate) fn waits_for_token(&self) -> bool {
        matches!(self.state, State::Waiting { .. })
    }
}

impl<F, T, E> Future for ResponseFuture<F, T, E>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, TokenLayerError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Ready { future } => future.poll(cx).map_err(TokenLayerError::Inner),
            StateProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, T, E> fmt::Debug for ResponseFuture<F, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Ready { .. } => "ready",
            State::Waiting { .. } => "waiting for a token",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
