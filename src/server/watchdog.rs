//! Per-connection clocks: how long a client may take to send a request head (the slowloris bound,
//! `server.header_read_timeout`) and how long a kept-alive connection may sit idle between requests
//! (`server.idle_timeout`).
//!
//! hyper has one clock for both (its header-read timer starts whenever it waits for a head), so
//! patless keeps its own: [`Watched`] wraps the connection's I/O and notes the first byte of each
//! head; [`InFlight`] marks a request from the moment its head is parsed until its response body
//! is dropped; [`watch`] returns when a deadline has passed, and the connection is then dropped.
//! While a request is in flight neither clock runs: the upstream's own timeouts bound the wait for
//! headers, and bodies stream without a timeout. While hyper serves a connection, [`watch`] also
//! says when it has been quiet (no request in flight, no byte of a next head, the answer flushed,
//! which [`Watched`] sees too) for the release delay, and hyper's part of it goes (`conn.rs`).
//!
//! Nothing wakes the watchdog when a request starts or ends. It looks at the clocks, sleeps until
//! the deadline it sees or for the shortest of the timeouts (the release delay among them: 1 s
//! while hyper serves), whichever comes first, and looks again. A deadline that appears after a
//! look (a head begun, a response ended) is at least that shortest timeout away, so none is missed
//! or overshot; and a keep-alive request costs the watchdog no wake-up and no timer of its own
//! (one timer per connection, due at most that shortest timeout ahead). That also keeps the
//! worker's timer wheel due sooner than a request's response-header timeout (100 s by default),
//! so arming that timer on each request does not wake the worker's I/O driver, which cost an
//! `eventfd` write per request (measured with `strace`). A `response_header_timeout` shorter than
//! the release delay brings that one system call back, nothing else.

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
    /// hyper has written bytes it has not flushed since: some of an answer may still sit in its
    /// write buffer (it flushes the I/O only once that buffer is empty).
    unflushed: AtomicBool,
    /// hyper has asked to read since [`ConnClock::take_read_tried`] last looked.
    read_tried: AtomicBool,
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
            unflushed: AtomicBool::new(false),
            read_tried: AtomicBool::new(false),
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

    /// Whether hyper asked to read since the last call.
    pub fn take_read_tried(&self) -> bool {
        self.read_tried.swap(false, Ordering::AcqRel)
    }

    /// When the connection went quiet, if it is quiet now: no request in flight, no byte of a
    /// next head read, every byte of the last answer flushed.
    fn quiet_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 || self.unflushed.load(Ordering::Acquire) {
            return None;
        }
        let m = *self.marks();
        match m.head_started {
            None => Some(m.idle_since),
            Some(_) => None,
        }
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

/// Why [`watch`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// A deadline passed (`"header_read_timeout"` or `"idle_timeout"`): close the connection.
    Passed(&'static str),
    /// The connection has been quiet for the `release` delay: hyper's part of it may go.
    Release,
}

/// Resolves when the connection has been idle longer than `idle`, or has spent longer than
/// `head` sending one request head; or, given `release`, once it has been quiet (no request in
/// flight, no byte of a next head, its last answer flushed) that long.
pub async fn watch(
    clock: Arc<ConnClock>,
    head: Duration,
    idle: Duration,
    release: Option<Duration>,
) -> Alarm {
    // After a look at time t, a new deadline is a head begun after t (due at least `head` later)
    // or an idle or quiet spell begun after t (due at least `idle` or `release` later): sleeping
    // no longer than `step` after a look meets every deadline on time. (The floor only guards
    // against a busy loop.) A quiet spell whose answer is flushed only after a look is met at the
    // next look, at most `step` late.
    let step = release
        .map_or(head, |r| head.min(r))
        .min(idle)
        .max(Duration::from_millis(1));
    loop {
        let now = Instant::now();
        let mut wake = now + step;
        match clock.deadline(head, idle) {
            // Re-checked: a request may have started while the marks were read (then look again
            // a step later).
            Some((at, why)) if at <= now && clock.in_flight.load(Ordering::Acquire) == 0 => {
                return Alarm::Passed(why);
            }
            Some((at, _)) if at > now => wake = wake.min(at),
            _ => {}
        }
        if let Some(quiet) = release.and_then(|r| clock.quiet_since().map(|since| since + r)) {
            if quiet <= now {
                return Alarm::Release;
            }
            wake = wake.min(quiet);
        }
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

    /// Unwraps the I/O.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        this.clock.read_tried.store(true, Ordering::Release);
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
        let this = self.project();
        this.clock.unflushed.store(true, Ordering::Release);
        this.inner.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        this.clock.unflushed.store(true, Ordering::Release);
        this.inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes the I/O only once its own write buffer is empty: a completed flush
        // means every byte it has been given is in the kernel.
        let this = self.project();
        let r = this.inner.poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            this.clock.unflushed.store(false, Ordering::Release);
        }
        r
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

    /// [`watch`] without release: which deadline passed.
    async fn passed(clock: Arc<ConnClock>, head: Duration, idle: Duration) -> &'static str {
        match watch(clock, head, idle, None).await {
            Alarm::Passed(why) => why,
            Alarm::Release => "release",
        }
    }

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
            passed(Arc::clone(&clock), head, idle).await,
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
            passed(Arc::clone(&clock), head, idle).await,
            "header_read_timeout"
        );
        assert_eq!(begun.elapsed(), head);
        let clock = ConnClock::new();
        drop(clock.request_started());
        let idle_from = Instant::now();
        assert_eq!(passed(Arc::clone(&clock), head, idle).await, "idle_timeout");
        assert_eq!(idle_from.elapsed(), idle);

        // In flight: no clock runs, however long; idle counts again from the response's end.
        let clock = ConnClock::new();
        let req = clock.request_started();
        let w = tokio::spawn(passed(Arc::clone(&clock), head, idle));
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
        let w = tokio::spawn(passed(Arc::clone(&clock), head, idle));
        tokio::time::advance(Duration::from_secs(23)).await;
        clock.bytes_read();
        let begun = Instant::now();
        assert_eq!(w.await.expect("watch"), "header_read_timeout");
        assert_eq!(begun.elapsed(), head);

        // Keep-alive traffic: short heads, short requests, idle spells shorter than `idle`.
        let clock = ConnClock::new();
        drop(clock.request_started());
        let w = tokio::spawn(passed(Arc::clone(&clock), head, idle));
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
        let w = tokio::spawn(passed(Arc::clone(&clock), head, idle));
        tokio::time::advance(Duration::from_secs(59)).await;
        let req = clock.request_started();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(!w.is_finished());
        let ended = Instant::now();
        drop(req);
        assert_eq!(w.await.expect("watch"), "idle_timeout");
        assert_eq!(ended.elapsed(), idle);
    }

    /// With a release delay, the watchdog also says when hyper's part of a connection may go:
    /// after that long with no request in flight, no byte of a next head, the answer flushed.
    #[tokio::test(start_paused = true)]
    async fn release_after_a_quiet_spell_only() {
        let (head, idle) = (Duration::from_secs(10), Duration::from_secs(60));
        let release = Some(Duration::from_secs(1));
        let watch = |clock: &Arc<ConnClock>| watch(Arc::clone(clock), head, idle, release);

        // A new connection awaits its first head: the head clock, never a release.
        let clock = ConnClock::new();
        assert_eq!(watch(&clock).await, Alarm::Passed("header_read_timeout"));

        // After an answer: released `release` later, to the tick.
        let clock = ConnClock::new();
        drop(clock.request_started());
        let ended = Instant::now();
        assert_eq!(watch(&clock).await, Alarm::Release);
        assert_eq!(ended.elapsed(), Duration::from_secs(1));

        // Not while a request is in flight, however long; counted from its end.
        let req = clock.request_started();
        let w = tokio::spawn(watch(&clock));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!w.is_finished());
        drop(req);
        let ended = Instant::now();
        assert_eq!(w.await.expect("watch"), Alarm::Release);
        assert_eq!(ended.elapsed(), Duration::from_secs(1));

        // Not once a next head has begun: that is the head clock's.
        drop(clock.request_started());
        let w = tokio::spawn(watch(&clock));
        tokio::time::advance(Duration::from_millis(500)).await;
        clock.bytes_read();
        let begun = Instant::now();
        assert_eq!(
            w.await.expect("watch"),
            Alarm::Passed("header_read_timeout")
        );
        assert_eq!(begun.elapsed(), head);

        // Not while some of the answer is unflushed; at the next look once it is.
        let clock = ConnClock::new();
        drop(clock.request_started());
        clock.unflushed.store(true, Ordering::Release);
        let w = tokio::spawn(watch(&clock));
        tokio::time::advance(Duration::from_millis(5500)).await;
        assert!(!w.is_finished());
        clock.unflushed.store(false, Ordering::Release);
        let flushed = Instant::now();
        assert_eq!(w.await.expect("watch"), Alarm::Release);
        assert!(flushed.elapsed() <= Duration::from_secs(1));
    }
}
