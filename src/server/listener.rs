//! The listeners patless binds (TCP, or a Unix socket created private and then opened up to its
//! mode), and accepting on them.

use std::future::Future;
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::config::ListenAddr;

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

/// What one accept gave: a stream on the accepting runtime's reactor.
pub(super) enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// A connection between runtimes.
pub(super) enum StdStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Accepted {
    pub(super) fn into_io(self) -> Box<dyn Io> {
        match self {
            Accepted::Tcp(s) => Box::new(s),
            Accepted::Unix(s) => Box::new(s),
        }
    }

    pub(super) fn into_std(self) -> io::Result<StdStream> {
        Ok(match self {
            Accepted::Tcp(s) => StdStream::Tcp(s.into_std()?),
            Accepted::Unix(s) => StdStream::Unix(s.into_std()?),
        })
    }
}

impl StdStream {
    /// Registers the stream with the current runtime's reactor (it is non-blocking already).
    pub(super) fn into_tokio(self) -> io::Result<Box<dyn Io>> {
        Ok(match self {
            StdStream::Tcp(s) => Box::new(tokio::net::TcpStream::from_std(s)?),
            StdStream::Unix(s) => Box::new(tokio::net::UnixStream::from_std(s)?),
        })
    }
}

/// An accepted connection's stream, whatever its kind.
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin {
    /// Ready once a read may not block. A false positive is possible (tokio takes an accepted
    /// stream for readable until a read finds otherwise): [`Io::try_read`] tells.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Reads what is there without waiting (`WouldBlock` when nothing is, which also clears the
    /// readiness).
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
}

impl Io for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        tokio::net::TcpStream::try_read(self, buf)
    }
}

impl Io for tokio::net::UnixStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::UnixStream::poll_read_ready(self, cx)
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        tokio::net::UnixStream::try_read(self, buf)
    }
}

/// The next connection, or `Err(grace)` once `shutdown` resolves. A failed accept (EMFILE and
/// friends) is logged and followed by a short pause: the listener keeps serving.
pub(super) async fn next_accepted<S: Future<Output = Duration>>(
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
