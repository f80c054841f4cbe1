//! Listeners, the accept loop and graceful shutdown; the admin endpoints live in `admin`, the
//! identity endpoint for SDKs in `identity`, config reloads in `reload`.

pub mod admin;
pub mod identity;
pub mod reload;
pub mod watchdog;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::config::{Limits, ListenAddr};
use crate::proxy::ProxyBody;

/// The accept queue asked of the kernel (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix domain socket.
    Unix(UnixListener),
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
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
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
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                Ok(Listener::Unix(listener))
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
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix:?".into()),
        }
    }
}

/// Serves HTTP/1.1 on `listener` with `handler` until `shutdown` resolves with a grace period,
/// then stops accepting and lets open connections finish for up to that grace. `limits` bound what clients may send: head size
/// (→ 431), the time to send a request head (→ closed), how long a kept-alive connection may sit
/// idle (→ closed), and concurrent connections (one more gets a JSON 503 and is closed).
pub async fn serve<H, F>(
    listener: Listener,
    handler: H,
    shutdown: impl Future<Output = Duration>,
    limits: Limits,
    name: &'static str,
) where
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<ProxyBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    // Every connection's task, so the ones still open when the grace runs out can be ended.
    let mut connections = tokio::task::JoinSet::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Head and idle clocks are patless's own (watchdog.rs): hyper's one timer does both.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let sensitive: Arc<[http::HeaderName]> = Arc::new([
        http::header::AUTHORIZATION,
        http::header::PROXY_AUTHORIZATION,
        http::header::COOKIE,
        http::HeaderName::from_static("x-patless-token"),
        http::HeaderName::from_static("x-identity-header"),
    ]);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    let grace = loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            biased;
            grace = &mut shutdown => break grace,
            a = accept(&listener) => a,
        };
        let clock = watchdog::ConnClock::new();
        let mut io = match accepted {
            Ok(io) => TokioIo::new(watchdog::Watched::new(io, Arc::clone(&clock))),
            Err(e) => {
                // EMFILE and friends: say so, pause, keep serving.
                tracing::warn!(listener = name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(
                listener = name,
                max = limits.max_connections,
                "connection limit reached"
            );
            connections.spawn(async move { refuse_busy(&mut io).await });
            continue;
        };
        let h = handler.clone();
        let req_clock = Arc::clone(&clock);
        // Credentials a client sends (a leftover PAT, the inbound token) and the one patless
        // injects are marked sensitive before anything can trace them.
        let svc = tower::ServiceBuilder::new()
            .layer(SetSensitiveRequestHeadersLayer::from_shared(Arc::clone(
                &sensitive,
            )))
            .service_fn(move |req| {
                let in_flight = req_clock.request_started();
                let fut = h(req);
                async move {
                    let resp = fut.await;
                    Ok::<_, std::convert::Infallible>(
                        resp.map(|b| watchdog::TrackedBody::new(b, in_flight)),
                    )
                }
            });
        let svc = TowerToHyperService::new(svc);
        let conn = builder.serve_connection(io, svc);
        let conn = graceful.watch(conn);
        let (head, idle) = (limits.header_read_timeout, limits.idle_timeout);
        connections.spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(listener = name, "connection ended: {e}");
                },
                why = watchdog::watch(clock, head, idle) => {
                    tracing::debug!(listener = name, "connection closed: {why} passed");
                }
            }
            drop(slot);
        });
    };
    drop(listener);
    tracing::info!(
        listener = name,
        grace_ms = grace.as_millis() as u64,
        "draining connections"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "grace period over; closing the remaining connections"
        );
        connections.abort_all();
    }
}

/// The answer to one connection too many: a complete JSON 503, then close.
async fn refuse_busy(io: &mut TokioIo<watchdog::Watched<Box<dyn Io>>>) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":"too_many_connections","message":"patless has server.max_connections open connections; retry shortly"}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let stream = io.inner_mut().inner_mut();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

async fn accept(listener: &Listener) -> io::Result<Box<dyn Io>> {
    match listener {
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s))
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok(Box::new(s))
        }
    }
}
