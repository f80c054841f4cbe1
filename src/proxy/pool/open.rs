//! Opening one upstream connection: TCP (direct or through the egress proxy's tunnel), TLS for
//! `https` with ALPN offering `h2` and `http/1.1` when HTTP/2 is on, then hyper's handshake when
//! the upstream picked `h2` (HTTP/1.1 needs none: `h1/`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Uri;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::ServiceExt;

use super::{h1, Connector, UpstreamError};
use crate::proxy::ProxyBody;

/// The most requests patless sends on one HTTP/2 connection at a time (counted until each
/// answer's head) before it opens another: the floor RFC 9113 §6.5.2 advises a peer to allow
/// (nginx allows 128). Past the peer's own limit hyper queues a request until a stream ends.
pub const MAX_STREAMS: usize = 100;

/// How connections are made and which protocols they may speak.
#[derive(Clone)]
pub struct Opener {
    connector: Connector,
    /// `None` when HTTP/2 is off (`server.upstream_http2 = false`).
    h2: Option<http2::Builder<TokioExecutor>>,
}

/// A new connection, in the protocol the upstream chose.
pub enum Opened {
    Http1(h1::Conn),
    Http2(Multiplexed),
}

/// An HTTP/2 connection and the requests in flight on it.
#[derive(Clone)]
pub struct Multiplexed {
    pub sender: http2::SendRequest<ProxyBody>,
    streams: Arc<AtomicUsize>,
}

/// One request's place on an HTTP/2 connection, given back when dropped (its answer's head is
/// in, or it failed, or it was abandoned).
pub struct Stream(Arc<AtomicUsize>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Multiplexed {
    /// A place for one more request, unless [`MAX_STREAMS`] are in flight or the connection is
    /// closed.
    pub fn reserve(&self) -> Option<Stream> {
        if self.sender.is_closed() {
            return None;
        }
        self.streams
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()?;
        Some(Stream(Arc::clone(&self.streams)))
    }

    /// A place even past [`MAX_STREAMS`]: for the requests that waited for this connection to
    /// open (hyper queues what the peer's limit does not let through).
    pub fn reserve_anyway(&self) -> Stream {
        self.streams.fetch_add(1, Ordering::Relaxed);
        Stream(Arc::clone(&self.streams))
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }
}

impl Opener {
    /// `http2` offers `h2` to `https` upstreams.
    pub fn new(connector: Connector, http2: bool) -> Self {
        let h2 = http2.then(|| {
            let mut b = http2::Builder::new(TokioExecutor::new());
            // A dead connection is noticed while idle, not by the next request.
            b.timer(TokioTimer::new())
                .keep_alive_interval(std::time::Duration::from_secs(30))
                .keep_alive_while_idle(false);
            b
        });
        Opener { connector, h2 }
    }

    /// Whether `h2` is offered at all.
    pub fn offers_h2(&self) -> bool {
        self.h2.is_some()
    }

    /// Connects to `to` (its scheme and authority) and shakes hands in the protocol agreed.
    pub async fn open(&self, to: Uri) -> Result<Opened, UpstreamError> {
        let io = self
            .connector
            .clone()
            .oneshot(to)
            .await
            .map_err(UpstreamError::Connect)?;
        match &self.h2 {
            Some(h2) if io.connected().is_negotiated_h2() => {
                let (sender, conn) = h2
                    .handshake(io)
                    .await
                    .map_err(|e| UpstreamError::Protocol(e.into()))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("upstream HTTP/2 connection ended: {e}");
                    }
                });
                Ok(Opened::Http2(Multiplexed {
                    sender,
                    streams: Arc::new(AtomicUsize::new(0)),
                }))
            }
            _ => Ok(Opened::Http1(h1::Conn::new(TokioIo::new(io)))),
        }
    }
}
