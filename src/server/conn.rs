//! One client connection's life, with hyper's buffers only while there is something to serve.
//!
//! hyper's HTTP/1 connection allocates its 8 KiB write buffer when it is built and reserves an
//! 8 KiB read buffer at its first read, bytes or none, and keeps both for as long as it lives
//! (`proto/h1/io.rs`). Held idle, that made a connection cost about 11 KiB of RSS before its
//! first request and 14 KiB after one (`bench/idle_conns.py`). So a connection here is either:
//! - *parked*: its socket, its clocks (`watchdog.rs`) and its slot, and no hyper connection (about
//!   1.5 KiB in all). It waits for the client's next bytes (read into a copy of their size, which
//!   the next hyper connection reads first), under the head and idle clocks as ever and the
//!   server's stop signal; the client's close or an error ends it; or
//! - *served*: a hyper connection over the socket, until the connection has been quiet (no request
//!   in flight, no byte of a next head read, the last answer flushed) for [`RELEASE_AFTER`]. Then
//!   it is parked again.
//!
//! Releasing uses hyper's graceful shutdown, which on a connection at rest between requests
//! (keep-alive idle) closes its state at once and writes nothing (`Conn::disable_keep_alive`:
//! `State::close`, no `Connection: close`, no byte); `without_shutdown` then hands back the socket
//! and any bytes hyper had read but not parsed, which the next hyper connection reads first
//! ([`Rewind`]). A request that arrives meanwhile waits in the socket, or in those bytes: none is
//! answered with `Connection: close`, lost or cut. Whether hyper was at rest is checked, not
//! assumed: if it did not end in that one poll without reading (an answer sent while the client was
//! still sending its request's body, say), its keep-alive is now off, hyper finishes the exchange
//! under way and reads no next request, and the connection is closed, as any server may close a
//! kept-alive connection.
//!
//! Every other end of a hyper connection is hyper's own (`Connection` polled as a future: flushed,
//! then shut down). `without_shutdown` is used for the release only: a connection it ends for
//! another reason (`Connection: close`, an error) would drop whatever hyper had not flushed yet.
//!
//! What a release frees goes back to the allocator, which reuses it for the next connections
//! served; whether RSS falls is the allocator's choice. glibc's malloc keeps freed memory of its
//! thread arenas unless it is at the top of a heap, so after a burst of requests on many
//! connections RSS stays near the burst's peak until `malloc_trim` (measured: 14.5 KiB per
//! connection, 2.5 KiB after `malloc_trim`). So the binary uses jemalloc with a 1 s decay
//! (src/main.rs), which gives 2.5 KiB without it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use super::listener::Io;
use super::watchdog::{self, Alarm, ConnClock, TrackedBody, Watched};
use crate::config::Limits;

/// How long a connection stays with hyper after it went quiet: long enough that a client sending
/// requests one after another keeps its hyper connection, short against the idle timeout.
pub(super) const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// What every connection of one server shares (one `Arc` per connection holds it).
pub(super) struct Shared<H> {
    pub(super) builder: http1::Builder,
    /// Request headers marked sensitive before anything can trace them.
    pub(super) sensitive: Box<[http::HeaderName]>,
    pub(super) handler: H,
    pub(super) limits: Limits,
    pub(super) name: &'static str,
    /// Connections without a hyper connection now: new ones that have sent nothing yet, and
    /// parked ones.
    pub(super) parked: AtomicUsize,
}

/// Serves one connection until it closes: parked while there is nothing to read, served by hyper
/// while there is. `stop` says the server is shutting down.
pub(super) async fn run<H, F, RB>(
    shared: Arc<Shared<H>>,
    io: Box<dyn Io>,
    mut stop: watch::Receiver<()>,
) where
    H: Fn(hyper::Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = hyper::Response<RB>> + Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<crate::proxy::BoxError>,
{
    let clock = ConnClock::new();
    let mut io = Rewind::new(io, Bytes::new());
    loop {
        // Bytes hyper had read and not parsed are served at once.
        if io.pre.is_empty() && !parked(&shared, &mut io, &clock, &mut stop).await {
            return;
        }
        // Boxed: a parked connection's task keeps a pointer, not hyper's connection.
        match Box::pin(serve(&shared, io, &clock, &mut stop)).await {
            Some(rest) => io = rest,
            None => return,
        }
    }
}

/// Waits, with no hyper connection, for the client's next bytes: true with them in `io`, to be
/// read first; false when the connection is to close (the client closed it, a clock ran out, the
/// server stops, the socket failed).
async fn parked<H>(
    shared: &Shared<H>,
    io: &mut Rewind,
    clock: &Arc<ConnClock>,
    stop: &mut watch::Receiver<()>,
) -> bool {
    let name = shared.name;
    let (head, idle) = (
        shared.limits.header_read_timeout,
        shared.limits.idle_timeout,
    );
    // Held `&mut`: `dyn Io` is `Send`, not `Sync`.
    let socket = &mut io.io;
    let _counted = Counted::new(&shared.parked);
    let arrived = tokio::select! {
        biased;
        _ = stop.changed() => None,
        r = std::future::poll_fn(move |cx| poll_first_bytes(&**socket, cx)) => match r {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!(listener = name, "connection ended: {e}");
                None
            }
        },
        alarm = watchdog::watch(Arc::clone(clock), head, idle, None) => {
            if let Alarm::Passed(why) = alarm {
                tracing::debug!(listener = name, "connection closed: {why} passed");
            }
            None
        }
    };
    match arrived {
        Some(bytes) => {
            io.pre = bytes;
            true
        }
        None => false,
    }
}

/// The first bytes that arrive on `io`, in a copy of their own (None: the client closed it).
/// Readiness alone is not enough: tokio takes a new stream for readable until a read finds it is
/// not, and a read is what clears that.
fn poll_first_bytes(io: &dyn Io, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
    loop {
        if let Err(e) = std::task::ready!(io.poll_read_ready(cx)) {
            return Poll::Ready(Err(e));
        }
        // Most request heads whole, on the stack for the moment of the read.
        let mut probe = [0u8; 4096];
        match io.try_read(&mut probe) {
            Ok(0) => return Poll::Ready(Ok(None)),
            Ok(n) => return Poll::Ready(Ok(Some(Bytes::copy_from_slice(&probe[..n])))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// One more in a count for as long as it lives (a task ended at the grace's end included).
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicUsize) -> Counted<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `io` with a new hyper connection until it ends (None) or is released (the socket and
/// any bytes read ahead, to park).
pub(super) async fn serve<H, F, RB>(
    shared: &Arc<Shared<H>>,
    io: Rewind,
    clock: &Arc<ConnClock>,
    stop: &mut watch::Receiver<()>,
) -> Option<Rewind>
where
    H: Fn(hyper::Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = hyper::Response<RB>> + Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<crate::proxy::BoxError>,
{
    let name = shared.name;
    let (head, idle) = (
        shared.limits.header_read_timeout,
        shared.limits.idle_timeout,
    );
    let svc = {
        let (shared, clock) = (Arc::clone(shared), Arc::clone(clock));
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            // Credentials a client sends (a leftover PAT, the inbound token) and the one patless
            // injects are marked sensitive before anything can trace them.
            if !shared.sensitive.is_empty() {
                super::mark_sensitive(req.headers_mut(), &shared.sensitive);
            }
            let in_flight = clock.request_started();
            let fut = (shared.handler)(req);
            async move {
                let resp = fut.await;
                Ok::<_, std::convert::Infallible>(resp.map(|b| TrackedBody::new(b, in_flight)))
            }
        })
    };
    let io = TokioIo::new(Watched::new(io, Arc::clone(clock)));
    let mut conn = shared.builder.serve_connection(io, svc);
    let mut stopping = false;
    loop {
        let release = (!stopping).then_some(RELEASE_AFTER);
        tokio::select! {
            biased;
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(listener = name, "connection ended: {e}");
                }
                return None;
            }
            _ = stop.changed(), if !stopping => {
                // Idle: closed at once; a request under way is answered with `Connection: close`.
                stopping = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            alarm = watchdog::watch(Arc::clone(clock), head, idle, release) => match alarm {
                Alarm::Passed(why) => {
                    tracing::debug!(listener = name, "connection closed: {why} passed");
                    return None;
                }
                Alarm::Release => break,
            }
        }
    }

    // Quiet for RELEASE_AFTER: at rest between requests, hyper ends at the first poll and reads
    // nothing in it (its read side is closed).
    Pin::new(&mut conn).graceful_shutdown();
    clock.take_read_tried();
    let mut rest = std::pin::pin!(conn.without_shutdown());
    let first = std::future::poll_fn(|cx| Poll::Ready(rest.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(Ok(parts)) => {
            let io = parts.io.into_inner().into_inner();
            if clock.take_read_tried() {
                // It ended by reading: not at rest after all. Close, as hyper would have.
                close(io).await;
                return None;
            }
            tracing::trace!(listener = name, "connection parked");
            Some(io.rewound(&parts.read_buf))
        }
        Poll::Ready(Err(e)) => {
            tracing::debug!(listener = name, "connection ended: {e}");
            None
        }
        Poll::Pending => {
            // Not at rest after all (its last request's body still arriving, say): keep-alive is
            // off now, so hyper finishes that exchange, reads no next request, and ends.
            tokio::select! {
                r = rest => match r {
                    Ok(parts) => close(parts.io.into_inner().into_inner()).await,
                    Err(e) => tracing::debug!(listener = name, "connection ended: {e}"),
                },
                alarm = watchdog::watch(Arc::clone(clock), head, idle, None) => {
                    if let Alarm::Passed(why) = alarm {
                        tracing::debug!(listener = name, "connection closed: {why} passed");
                    }
                }
            }
            None
        }
    }
}

/// Ends the connection as hyper would: the write side shut, then the socket closed.
async fn close(mut io: Rewind) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

/// A connection's stream, and bytes read from it before that the next reader gets first (what
/// hyper had read but not parsed when it let the connection go: pipelined requests).
pub(super) struct Rewind {
    pre: Bytes,
    io: Box<dyn Io>,
}

impl Rewind {
    pub(super) fn new(io: Box<dyn Io>, pre: Bytes) -> Rewind {
        Rewind { pre, io }
    }

    /// How many bytes are to be read before the socket's.
    #[cfg(test)]
    pub(super) fn pending(&self) -> usize {
        self.pre.len()
    }

    /// The stream with `read` (hyper's unparsed bytes) to be read first, then what is left of
    /// `pre`. Copied: the slice hyper hands back holds its whole read buffer.
    fn rewound(self, read: &[u8]) -> Rewind {
        let pre = if read.is_empty() {
            self.pre
        } else {
            let mut all = Vec::with_capacity(read.len() + self.pre.len());
            all.extend_from_slice(read);
            all.extend_from_slice(&self.pre);
            Bytes::from(all)
        };
        Rewind { pre, io: self.io }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            if self.pre.is_empty() {
                // Let go of the copy.
                self.pre = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
