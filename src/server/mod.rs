//! Serving HTTP/1.1: the accept loop and graceful shutdown (here), on worker threads
//! (`workers.rs`), over TCP or Unix-socket listeners (`listener.rs`), with per-connection clocks
//! for slow and idle clients (`watchdog.rs`), each connection served by hyper only while it has
//! something to serve (`conn.rs`). What is served is a handler function: the proxy's stack, or the
//! admin and identity endpoints (`app/`).

mod conn;
mod listener;
pub mod watchdog;
mod workers;

pub use listener::Listener;
pub use workers::serve_on_workers;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;

use crate::config::Limits;
use listener::{next_accepted, Io};

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
    accept_loop(listener, ConnServer::new(handler, limits, name), shutdown).await;
}

/// [`serve`], with its connections' server made.
async fn accept_loop<H, F, RB>(
    listener: Listener,
    server: ConnServer<H>,
    shutdown: impl Future<Output = Duration>,
) where
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<RB>> + Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<crate::proxy::BoxError>,
{
    let (limits, name) = (server.shared.limits, server.name());
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

/// How connections are served: hyper's settings and the request handler, shared by every
/// connection (an `Arc` each: the handler is no longer cloned into each connection).
pub(super) struct ConnServer<H> {
    shared: Arc<conn::Shared<H>>,
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
            shared: Arc::new(conn::Shared {
                builder,
                // The proxy's stack marks them itself (`proxy::sensitive`), as its first stop.
                sensitive: if name == "proxy" {
                    Box::new([])
                } else {
                    Box::new(crate::proxy::sensitive::REQUEST.clone())
                },
                handler,
                limits,
                name,
                parked: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// The listener's name, for logs.
    fn name(&self) -> &'static str {
        self.shared.name
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
        let shared = Arc::clone(&self.shared);
        let stop = conns.stop.subscribe();
        conns.set.spawn(async move {
            conn::run(shared, io, stop).await;
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
pub(super) struct Connections {
    /// Tells every connection to finish: hyper's graceful shutdown for one it serves, a close for
    /// a parked one. Each connection holds a receiver until it closes. (hyper-util's
    /// `GracefulShutdown` is this channel, but watches hyper's connection futures only.)
    stop: tokio::sync::watch::Sender<()>,
    // Every connection's task, so the ones still open when the grace runs out can be ended.
    set: tokio::task::JoinSet<()>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            stop: tokio::sync::watch::Sender::new(()),
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
        self.stop.send_replace(());
        if tokio::time::timeout(grace, self.stop.closed())
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

#[cfg(test)]
mod conn_tests;

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
