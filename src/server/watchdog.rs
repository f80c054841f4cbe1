//! Per-connection clocks: how long a client may take to send a request head (the slowloris bound,
//! `server.header_read_timeout`) and how long a kept-alive connection may sit idle between requests
//! (`server.idle_timeout`).
//!
//! hyper has one clock for both (its header-read timer starts whenever it waits for a head), so
//! patless keeps its own: [`Watched`] wraps the connection's I/O and notes the first byte of each
//! head; [`InFlight`] marks a request from the moment its head is parsed until its response body
//! is dropped; [`watch`] returns when a deadline has passed, and the accept loop then drops the
//! connection. While a request is in flight neither clock runs: the upstream's own timeouts bound
//! the wait for headers, and bodies stream without a timeout.
//!
//! Nothing wakes the watchdog when a request starts or ends. It looks at the clocks, sleeps until
//! the deadline it sees or for the shorter of the two timeouts, whichever comes first, and looks
//! again. A deadline that appears after a look (a head begun, a response ended) is at least that
//! shorter timeout away, so none is missed or overshot; and a keep-alive request costs the
//! watchdog no wake-up and no timer of its own (one timer per connection, due at most the
//! shorter timeout ahead: 30 s by default). That also keeps the worker's timer wheel due sooner
//! than a request's response-header timeout (100 s by default), so arming that timer on each
//! request does not wake the worker's I/O driver, which cost an `eventfd` write per request
//! (measured with `strace`). A `response_header_timeout` shorter than both clocks brings that
//! one system call back, nothing else.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What the clocks know of one connection.
#[derive(Debug)]
pub struct ConnClock {
    /// Requests whose head is parsed and whose response body is not yet dropped.
    in_flight: AtomicUsize,
    /// A byte of the next head has arrived while no request was in flight.
    reading_head: AtomicBool,
    /// When the connection opened or last went idle, and when the current head began.
    marks: Mutex<Marks>,
}

#[derive(Debug, Clone, Copy)]
struct Marks {
    idle_since: Instant,
    head_started: Option<Instant>,
}

impl ConnClock {
    /// A connection that just opened. Its first head is timed from now (as nginx's
    /// `client_header_timeout` is): a connection that sends nothing is a slowloris too.
    pub fn new() -> Arc<ConnClock> {
        let now = Instant::now();
        Arc::new(ConnClock {
            in_flight: AtomicUsize::new(0),
            reading_head: AtomicBool::new(true),
            marks: Mutex::new(Marks {
                idle_since: now,
                head_started: Some(now),
            }),
        })
    }

    fn marks(&self) -> std::sync::MutexGuard<'_, Marks> {
        // Plain data, never held across an await: a poisoned lock still holds valid marks.
        self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.reading_head.swap(true, Ordering::AcqRel)
        {
            self.marks().head_started = Some(Instant::now());
        }
    }

    /// A request's head was parsed: the clocks stop until its response is done.
    pub fn request_started(self: &Arc<ConnClock>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.reading_head.store(false, Ordering::Release);
        self.marks().head_started = None;
        InFlight(Arc::clone(self))
    }
}

/// Held by a response body: dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<ConnClock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.marks().idle_since = Instant::now();
        }
    }
}

/// Resolves when the connection has been idle longer than `idle`, or has spent longer than
/// `head` sending one request head.
pub async fn watch(clock: Arc<ConnClock>, head: Duration, idle: Duration) -> &'static str {
    // After a look at time t, a new deadline is a head begun after t (due at least `head` later)
    // or an idle spell begun after t (due at least `idle` later): sleeping no longer than `step`
    // after a look meets every deadline on time. (The floor only guards against a busy loop.)
    let step = head.min(idle).max(Duration::from_millis(1));
    loop {
        let now = Instant::now();
        let wake = match clock.deadline(head, idle) {
            Some((at, why)) if at <= now => {
                // Re-check: a request may have started while the marks were read.
                if clock.in_flight.load(Ordering::Acquire) == 0 {
                    return why;
                }
                now + step
            }
            Some((at, _)) => at.min(now + step),
            None => now + step,
        };
        tokio::time::sleep_until(wake).await;
    }
}

impl ConnClock {
    /// The running clock's deadline and its name; none while a request is in flight.
    fn deadline(&self, head: Duration, idle: Duration) -> Option<(Instant, &'static str)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let m = *self.marks();
        Some(match m.head_started {
            Some(started) => (started + head, "header_read_timeout"),
            None => (m.idle_since + idle, "idle_timeout"),
        })
    }
}

pin_project_lite::pin_project! {
    /// The connection's I/O, telling the clock when bytes arrive.
    pub struct Watched<T> {
        #[pin]
        inner: T,
        clock: Arc<ConnClock>,
    }
}

impl<T> Watched<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, clock: Arc<ConnClock>) -> Watched<T> {
        Watched { inner, clock }
    }

    /// The wrapped I/O.
    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_read();
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request (for the clocks) when dropped.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        in_flight: InFlight,
    }
}

impl<B> TrackedBody<B> {
    /// Wraps `inner`, holding `in_flight` until the body is dropped.
    pub fn new(inner: B, in_flight: InFlight) -> TrackedBody<B> {
        TrackedBody { inner, in_flight }
    }
}

impl<B: Body<Data = Bytes>> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
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

    #[tokio::test(start_paused = true)]
    async fn idle_then_head_then_in_flight() {
        let clock = ConnClock::new();
        let head = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        // A new connection must send its first head in time, bytes or none.
        let opened = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        clock.bytes_read();
        assert_eq!(
            watch(Arc::clone(&clock), head, idle).await,
            "header_read_timeout"
        );
        assert_eq!(opened.elapsed(), head);

        // Between requests the idle clock runs; the next head's first byte starts the head clock.
        let clock = ConnClock::new();
        drop(clock.request_started());
        tokio::time::advance(Duration::from_secs(50)).await;
        clock.bytes_read();
        let begun = Instant::now();
        assert_eq!(
            watch(Arc::clone(&clock), head, idle).await,
            "header_read_timeout"
        );
        assert_eq!(begun.elapsed(), head);
        let clock = ConnClock::new();
        drop(clock.request_started());
        let idle_from = Instant::now();
        assert_eq!(watch(Arc::clone(&clock), head, idle).await, "idle_timeout");
        assert_eq!(idle_from.elapsed(), idle);

        // In flight: no clock runs, however long; idle counts again from the response's end.
        let clock = ConnClock::new();
        let req = clock.request_started();
        let w = tokio::spawn(watch(Arc::clone(&clock), head, idle));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!w.is_finished());
        let ended = Instant::now();
        drop(req);
        assert_eq!(w.await.expect("watch"), "idle_timeout");
        assert_eq!(ended.elapsed(), idle);
    }

    /// The watchdog is not told when a head begins or a request ends; it must still meet each
    /// deadline exactly, and never fire while requests keep coming.
    #[tokio::test(start_paused = true)]
    async fn changes_while_it_sleeps_are_met_on_time() {
        let head = Duration::from_secs(10);
        let idle = Duration::from_secs(60);

        // An idle connection starts a head while the watchdog sleeps.
        let clock = ConnClock::new();
        drop(clock.request_started());
        let w = tokio::spawn(watch(Arc::clone(&clock), head, idle));
        tokio::time::advance(Duration::from_secs(23)).await;
        clock.bytes_read();
        let begun = Instant::now();
        assert_eq!(w.await.expect("watch"), "header_read_timeout");
        assert_eq!(begun.elapsed(), head);

        // Keep-alive traffic: short heads, short requests, idle spells shorter than `idle`.
        let clock = ConnClock::new();
        drop(clock.request_started());
        let w = tokio::spawn(watch(Arc::clone(&clock), head, idle));
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(7)).await;
            clock.bytes_read();
            let req = clock.request_started();
            tokio::time::advance(Duration::from_secs(1)).await;
            drop(req);
        }
        assert!(!w.is_finished());
        let ended = Instant::now();
        assert_eq!(w.await.expect("watch"), "idle_timeout");
        assert_eq!(ended.elapsed(), idle);

        // A request that starts just before the idle deadline holds the clocks however long it
        // runs; idle counts again from its end.
        let clock = ConnClock::new();
        drop(clock.request_started());
        let w = tokio::spawn(watch(Arc::clone(&clock), head, idle));
        tokio::time::advance(Duration::from_secs(59)).await;
        let req = clock.request_started();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(!w.is_finished());
        let ended = Instant::now();
        drop(req);
        assert_eq!(w.await.expect("watch"), "idle_timeout");
        assert_eq!(ended.elapsed(), idle);
    }
}
