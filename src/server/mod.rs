//! Listeners, the accept loop and graceful shutdown; the admin endpoints live in `admin`, the
//! identity endpoint for SDKs in `identity`, config reloads in `reload`.

pub mod watchdog;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::config::{Limits, ListenAddr};

/// The accept queue asked of the kernel (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix domain socket, and the path it is reached at.
    Unix(UnixListener, std::path::PathBuf),
}

impl Listener {
    /// Binds `addr`. A Unix socket path that holds a stale socket is replaced; any other file there
    /// (a regular file, a symlink) is left alone and the bind fails. The socket file gets `mode`
    /// (0660 by default): who may connect is who may use patless's identities.
    pub async fn bind(addr: &ListenAddr, mode: u32) -> io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => {
                // A deep accept queue, as nginx and haproxy ask for: a burst of new connections
                // (a build starting hundreds of jobs) waits instead of being dropped.
                let socket = if a.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.set_reuseaddr(true)?;
                socket.bind(*a)?;
                Ok(Listener::Tcp(socket.listen(LISTEN_BACKLOG)?))
            }
            ListenAddr::Unix(path) => {
                use std::os::unix::fs::FileTypeExt;
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if meta.file_type().is_socket() {
                        // Stale only if nothing answers on it: never steal a live patless's socket.
                        if std::os::unix::net::UnixStream::connect(path).is_ok() {
                            return Err(io::Error::new(
                                io::ErrorKind::AddrInUse,
                                format!("{} is in use by another process", path.display()),
                            ));
                        }
                        std::fs::remove_file(path)?;
                    }
                }
                let listener = bind_unix_private(path, mode)?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    /// What it listens on, for logs.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }
}

/// Binds a Unix socket at `path` with `mode` and no moment in between with another: the socket
/// is made in a new directory only the owner can enter (so the umask's mode, which `bind` gives
/// it, cannot be used by anyone else), given `mode`, then renamed into place.
fn bind_unix_private(path: &std::path::Path, mode: u32) -> io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    // Short, so the temporary path is no longer than most real ones (sockets' paths are capped
    // at about 107 bytes).
    let private = parent.join(format!(".pl{:06x}", rand::random::<u32>() & 0xff_ffff));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let inner = private.join("s");
    let bound = UnixListener::bind(&inner).and_then(|listener| {
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&inner, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Serves HTTP/1.1 on `listener` with `handler` until `shutdown` resolves with a grace period,
/// then stops accepting and lets open connections finish for up to that grace. `limits` bound what clients may send: head size
/// (→ 431), the time to send a request head (→ closed), how long a kept-alive connection may sit
/// idle (→ closed), and concurrent connections (one more gets a JSON 503 and is closed).
/// Everything runs on the calling runtime; [`serve_on_workers`] spreads connections over threads.
pub async fn serve<H, F, RB>(
    listener: Listener,
    handler: H,
    shutdown: impl Future<Output = Duration>,
    limits: Limits,
    name: &'static str,
) where
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<RB>> + Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<crate::proxy::BoxError>,
{
    let server = ConnServer::new(handler, limits, name);
    let mut conns = Connections::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    let grace = loop {
        conns.reap();
        let io = match next_accepted(&listener, shutdown.as_mut(), name).await {
            Ok(io) => io.into_io(),
            Err(grace) => break grace,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            conns.refuse(io, &limits, name);
            continue;
        };
        server.start(&mut conns, io, slot, None);
    };
    drop(listener);
    conns.drain(grace, name).await;
}

/// [`serve`], with the connections spread over `workers` threads of their own, each running a
/// single-threaded runtime (as nginx runs worker processes): a connection and everything its
/// requests do — hyper's parsing, the upstream call on that thread's own connection pool, the
/// timers — stay on one thread, with no work stealing and no cross-thread wake-ups per request.
/// The calling runtime accepts and hands each connection to the worker with the fewest open
/// ones; token refreshes, admin and reloads stay on it too. Worker `i` serves with `handler(i)`
/// (the proxy's handler for a worker uses that worker's stack and upstream pool).
pub async fn serve_on_workers<M, H, F, RB>(
    listener: Listener,
    handler: M,
    shutdown: impl Future<Output = Duration>,
    limits: Limits,
    name: &'static str,
    workers: usize,
) where
    M: Fn(usize) -> H,
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<RB>> + Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<crate::proxy::BoxError>,
{
    let workers = workers.max(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut pool = Vec::with_capacity(workers);
    for index in 0..workers {
        match Worker::spawn(index, ConnServer::new(handler(index), limits, name)) {
            Ok(w) => pool.push(w),
            Err(e) => {
                // No thread to be had (a tight `ulimit -u`): serve on the threads there are.
                tracing::warn!(listener = name, "cannot start worker thread {index}: {e}");
                break;
            }
        }
    }
    if pool.is_empty() {
        tracing::warn!(
            listener = name,
            "no worker thread could start; serving on the main runtime"
        );
        return serve(listener, handler(0), shutdown, limits, name).await;
    }
    tracing::debug!(
        listener = name,
        workers = pool.len(),
        "worker threads started"
    );
    let mut refused = Connections::default();
    tokio::pin!(shutdown);
    let grace = loop {
        refused.reap();
        let io = match next_accepted(&listener, shutdown.as_mut(), name).await {
            Ok(io) => io,
            Err(grace) => break grace,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refused.refuse(io.into_io(), &limits, name);
            continue;
        };
        // Off this runtime's reactor, onto the worker's.
        let stream = match io.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(listener = name, "cannot hand the connection on: {e}");
                continue;
            }
        };
        let worker = pool
            .iter()
            .min_by_key(|w| w.open.load(std::sync::atomic::Ordering::Relaxed))
            .expect("at least one worker");
        worker
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if worker.tx.send(WorkerMsg::Conn(stream, slot)).is_err() {
            worker
                .open
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(listener = name, "a worker thread has stopped");
        }
    };
    drop(listener);
    tracing::info!(
        listener = name,
        grace_ms = grace.as_millis() as u64,
        "draining connections"
    );
    for w in &pool {
        let _ = w.tx.send(WorkerMsg::Drain(grace));
    }
    for w in pool {
        let _ = w.done.await;
        let _ = w.thread.join();
    }
    refused.abort();
}

/// What one accept gave: a stream on the accepting runtime's reactor.
enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// A connection between runtimes.
enum StdStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Accepted {
    fn into_io(self) -> Box<dyn Io> {
        match self {
            Accepted::Tcp(s) => Box::new(s),
            Accepted::Unix(s) => Box::new(s),
        }
    }

    fn into_std(self) -> io::Result<StdStream> {
        Ok(match self {
            Accepted::Tcp(s) => StdStream::Tcp(s.into_std()?),
            Accepted::Unix(s) => StdStream::Unix(s.into_std()?),
        })
    }
}

impl StdStream {
    /// Registers the stream with the current runtime's reactor (it is non-blocking already).
    fn into_tokio(self) -> io::Result<Box<dyn Io>> {
        Ok(match self {
            StdStream::Tcp(s) => Box::new(tokio::net::TcpStream::from_std(s)?),
            StdStream::Unix(s) => Box::new(tokio::net::UnixStream::from_std(s)?),
        })
    }
}

enum WorkerMsg {
    Conn(StdStream, tokio::sync::OwnedSemaphorePermit),
    /// Stop taking connections; let the open ones finish for up to this long.
    Drain(Duration),
}

/// One worker thread of [`serve_on_workers`].
struct Worker {
    tx: tokio::sync::mpsc::UnboundedSender<WorkerMsg>,
    /// Connections handed to it and not yet closed.
    open: Arc<std::sync::atomic::AtomicUsize>,
    /// Resolves when it has drained.
    done: tokio::sync::oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Worker {
    fn spawn<H, F, RB>(index: usize, server: ConnServer<H>) -> io::Result<Worker>
    where
        H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = hyper::Response<RB>> + Send + 'static,
        RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        RB::Error: Into<crate::proxy::BoxError>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&open);
        let name = server.name;
        let thread = std::thread::Builder::new()
            .name(format!("patless-{name}-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut conns = Connections::default();
                    let grace = loop {
                        conns.reap();
                        match rx.recv().await {
                            Some(WorkerMsg::Conn(stream, slot)) => match stream.into_tokio() {
                                Ok(io) => {
                                    server.start(&mut conns, io, slot, Some(Arc::clone(&count)))
                                }
                                Err(e) => {
                                    count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                                    tracing::debug!(
                                        listener = name,
                                        "cannot take the connection: {e}"
                                    );
                                }
                            },
                            Some(WorkerMsg::Drain(grace)) => break grace,
                            None => break Duration::ZERO,
                        }
                    };
                    drop(rx);
                    conns.drain_quietly(grace, name).await;
                });
                let _ = done_tx.send(());
            })?;
        Ok(Worker {
            tx,
            open,
            done,
            thread,
        })
    }
}

/// How connections are served: hyper's settings and the request handler.
struct ConnServer<H> {
    builder: Arc<http1::Builder>,
    sensitive: Arc<[http::HeaderName]>,
    handler: H,
    limits: Limits,
    name: &'static str,
}

impl<H, F, RB> ConnServer<H>
where
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<RB>> + Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<crate::proxy::BoxError>,
{
    fn new(handler: H, limits: Limits, name: &'static str) -> Self {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // Head and idle clocks are patless's own (watchdog.rs): hyper's one timer does both.
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes)
            .keep_alive(true);
        ConnServer {
            builder: Arc::new(builder),
            // The proxy's stack marks them itself (`proxy::sensitive`), as its first stop.
            sensitive: if name == "proxy" {
                Arc::new([])
            } else {
                Arc::new(crate::proxy::sensitive::REQUEST.clone())
            },
            handler,
            limits,
            name,
        }
    }

    /// Serves one accepted connection on the current runtime, holding `slot` until it closes
    /// (and counting it down from `open`, when given).
    fn start(
        &self,
        conns: &mut Connections,
        io: Box<dyn Io>,
        slot: tokio::sync::OwnedSemaphorePermit,
        open: Option<Arc<std::sync::atomic::AtomicUsize>>,
    ) {
        let name = self.name;
        let clock = watchdog::ConnClock::new();
        let io = TokioIo::new(watchdog::Watched::new(io, Arc::clone(&clock)));
        let h = self.handler.clone();
        let req_clock = Arc::clone(&clock);
        // Credentials a client sends (a leftover PAT, the inbound token) and the one patless
        // injects are marked sensitive before anything can trace them.
        let sensitive = Arc::clone(&self.sensitive);
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            if !sensitive.is_empty() {
                mark_sensitive(req.headers_mut(), &sensitive);
            }
            let in_flight = req_clock.request_started();
            let fut = h(req);
            async move {
                let resp = fut.await;
                Ok::<_, std::convert::Infallible>(
                    resp.map(|b| watchdog::TrackedBody::new(b, in_flight)),
                )
            }
        });
        let conn = self.builder.serve_connection(io, svc);
        let conn = conns.graceful.watch(conn);
        let (head, idle) = (self.limits.header_read_timeout, self.limits.idle_timeout);
        conns.set.spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(listener = name, "connection ended: {e}");
                },
                why = watchdog::watch(clock, head, idle) => {
                    tracing::debug!(listener = name, "connection closed: {why} passed");
                }
            }
            drop(slot);
            if let Some(open) = open {
                open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
}

/// Marks every value of the `names` headers sensitive (`HeaderValue::set_sensitive`), so no
/// `Debug` or trace prints them: one pass over what the request carries, no lookups.
fn mark_sensitive(headers: &mut http::HeaderMap, names: &[http::HeaderName]) {
    crate::proxy::sensitive::mark(headers, names);
}

/// The open connections of one runtime, and their graceful shutdown.
struct Connections {
    graceful: GracefulShutdown,
    // Every connection's task, so the ones still open when the grace runs out can be ended.
    set: tokio::task::JoinSet<()>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            graceful: GracefulShutdown::new(),
            set: tokio::task::JoinSet::new(),
        }
    }
}

impl Connections {
    fn reap(&mut self) {
        while self.set.try_join_next().is_some() {}
    }

    /// One connection too many: a JSON 503, then close.
    fn refuse(&mut self, mut io: Box<dyn Io>, limits: &Limits, name: &'static str) {
        tracing::warn!(
            listener = name,
            max = limits.max_connections,
            "connection limit reached"
        );
        self.set.spawn(async move { refuse_busy(&mut io).await });
    }

    fn abort(mut self) {
        self.set.abort_all();
    }

    /// Lets the open connections finish for up to `grace`, then ends the rest.
    async fn drain(self, grace: Duration, name: &'static str) {
        tracing::info!(
            listener = name,
            grace_ms = grace.as_millis() as u64,
            "draining connections"
        );
        self.drain_quietly(grace, name).await;
    }

    async fn drain_quietly(mut self, grace: Duration, name: &'static str) {
        if tokio::time::timeout(grace, self.graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                listener = name,
                "grace period over; closing the remaining connections"
            );
            self.set.abort_all();
        }
    }
}

/// The answer to one connection too many: a complete JSON 503, then close.
async fn refuse_busy(stream: &mut Box<dyn Io>) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":"too_many_connections","message":"patless has server.max_connections open connections; retry shortly"}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The next connection, or `Err(grace)` once `shutdown` resolves. A failed accept (EMFILE and
/// friends) is logged and followed by a short pause: the listener keeps serving.
async fn next_accepted<S: Future<Output = Duration>>(
    listener: &Listener,
    mut shutdown: std::pin::Pin<&mut S>,
    name: &'static str,
) -> Result<Accepted, Duration> {
    loop {
        let accepted = tokio::select! {
            biased;
            grace = shutdown.as_mut() => return Err(grace),
            a = accept(listener) => a,
        };
        match accepted {
            Ok(io) => return Ok(io),
            Err(e) => {
                tracing::warn!(listener = name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok(Accepted::Tcp(s))
        }
        Listener::Unix(l, _) => {
            let (s, _) = l.accept().await?;
            Ok(Accepted::Unix(s))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mark_sensitive;
    use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE};

    /// The socket file never exists with another mode than the configured one, not even between
    /// `bind` and `chmod`: a watcher that looks at the path as fast as it can, over many binds,
    /// sees the configured mode or nothing. (Binding in place, it saw the umask's 0755 at once.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_unix_socket_appears_with_its_mode_and_no_other() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("patless.sock");
        let addr = crate::config::ListenAddr::Unix(path.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (path, stop) = (path.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(meta) = std::fs::symlink_metadata(&path) {
                        if meta.file_type().is_socket() {
                            seen.insert(meta.permissions().mode() & 0o777);
                        }
                    }
                }
                seen
            })
        };
        for _ in 0..300 {
            let listener = super::Listener::bind(&addr, 0o600).await.expect("bind");
            assert_eq!(listener.describe(), format!("unix:{}", path.display()));
            drop(listener);
            std::fs::remove_file(&path).expect("remove");
        }
        stop.store(true, Ordering::Relaxed);
        let seen = watcher.join().expect("watcher");
        let modes: Vec<String> = seen.iter().map(|m| format!("{m:o}")).collect();
        assert!(seen.iter().all(|m| *m == 0o600), "modes seen: {modes:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert!(left.is_empty(), "nothing left behind: {left:?}");
    }

    #[test]
    fn every_value_of_a_credential_header_is_marked_sensitive() {
        let mut h = HeaderMap::new();
        h.append(AUTHORIZATION, HeaderValue::from_static("Basic cGF0"));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer second"));
        h.append(COOKIE, HeaderValue::from_static("a=b"));
        h.append("accept", HeaderValue::from_static("*/*"));
        mark_sensitive(
            &mut h,
            &[
                AUTHORIZATION,
                COOKIE,
                crate::header_names::PATLESS_TOKEN.clone(),
            ],
        );
        assert!(h.get_all(AUTHORIZATION).iter().all(|v| v.is_sensitive()));
        assert!(h[COOKIE].is_sensitive());
        assert!(!h["accept"].is_sensitive());
        let shown = format!("{h:?}");
        assert!(
            !shown.contains("cGF0") && !shown.contains("second"),
            "{shown}"
        );
    }
}
