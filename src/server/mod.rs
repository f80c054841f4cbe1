//! Listeners, the accept loop and graceful shutdown; the admin endpoints live in `admin`.

pub mod admin;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::config::ListenAddr;
use crate::proxy::ProxyBody;

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
    /// is left alone and the bind fails.
    pub async fn bind(addr: &ListenAddr) -> io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await?)),
            ListenAddr::Unix(path) => {
                use std::os::unix::fs::FileTypeExt;
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if meta.file_type().is_socket() {
                        std::fs::remove_file(path)?;
                    }
                }
                Ok(Listener::Unix(UnixListener::bind(path)?))
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

/// Serves HTTP/1.1 on `listener` with `handler` until `shutdown` resolves, then stops accepting and
/// lets open connections finish for up to `grace`.
pub async fn serve<H, F>(
    listener: Listener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    name: &'static str,
) where
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<ProxyBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            a = accept(&listener) => a,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                // EMFILE and friends: say so, pause, keep serving.
                tracing::warn!(listener = name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let h = handler.clone();
        let svc = service_fn(move |req| {
            let fut = h(req);
            async move { Ok::<_, std::convert::Infallible>(fut.await) }
        });
        let conn = builder.serve_connection(io, svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(listener = name, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    tracing::info!(
        listener = name,
        grace_s = grace.as_secs(),
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
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

async fn accept(listener: &Listener) -> io::Result<TokioIo<Box<dyn Io>>> {
    match listener {
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok(TokioIo::new(Box::new(s)))
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok(TokioIo::new(Box::new(s)))
        }
    }
}
