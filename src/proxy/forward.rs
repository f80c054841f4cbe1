//! Step 9, the last stop: the request goes out on the worker's own upstream pool (`pool/`: HTTP/2 where the upstream offers it, else HTTP/1.1). A
//! `Service`, so the stack above it is the same whatever sends the request (a test replaces it
//! with `tower::service_fn`), and tower's `TimeoutLayer` bounds it with the response-header
//! timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use super::pool::{UpstreamBody, UpstreamClient, UpstreamError};
use super::ProxyBody;

/// Sends requests on one worker's upstream pool.
#[derive(Clone)]
pub struct Forward {
    client: Arc<UpstreamClient>,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forward")
    }
}

impl Forward {
    /// Over `client`, a worker's pool.
    pub fn new(client: Arc<UpstreamClient>) -> Self {
        Forward { client }
    }
}

impl Service<Request<ProxyBody>> for Forward {
    type Response = Response<UpstreamBody>;
    type Error = UpstreamError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool opens a connection when none is free: never full.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        let client = Arc::clone(&self.client);
        Box::pin(async move { client.request(req).await })
    }
}
