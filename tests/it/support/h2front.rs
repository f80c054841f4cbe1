//! An HTTPS front that offers HTTP/2 by ALPN, as dev.azure.com, Graph and ARM do: it terminates
//! TLS with the test PKI's trusted leaf (`egress::pki`), serves HTTP/2 to a client that picks
//! `h2`, and hands each request to a plain HTTP/1.1 fake behind it (so every fake's behaviour —
//! token checks, revocation, claims challenges, streaming — holds over HTTP/2 unchanged). A
//! client that does not pick `h2` gets its bytes relayed as they are (HTTP/1.1 end to end).
//! It counts connections by protocol and the requests that came over HTTP/2.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::egress::pki;
use super::AbortOnDrop;

/// What the front has seen.
#[derive(Default)]
pub struct Seen {
    /// TLS connections that picked `h2`.
    pub h2_connections: AtomicUsize,
    /// TLS connections that did not (relayed as HTTP/1.1).
    pub h1_connections: AtomicUsize,
    /// Requests that came over HTTP/2.
    pub h2_requests: AtomicUsize,
    /// HTTP/2 requests that carried a `Host` header besides `:authority`.
    pub h2_with_host: AtomicUsize,
    /// Most HTTP/2 requests open at once (counted until their answer's head).
    pub h2_peak_streams: AtomicUsize,
    open_streams: AtomicUsize,
}

/// The front; stops when dropped.
pub struct H2Front {
    pub addr: SocketAddr,
    seen: Arc<Seen>,
    _task: AbortOnDrop,
}

impl H2Front {
    /// Listens on `127.0.0.1:0`, offering `h2` and `http/1.1`, in front of `backend`, holding
    /// each HTTP/2 request for `delay` before relaying it (so that many are open at once).
    pub async fn start(backend: SocketAddr, delay: Duration) -> H2Front {
        let mut tls = (*pki().trusted).clone();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let counts = Arc::clone(&seen);
        let task = super::accept_each(listener, move |tcp| {
            let (acceptor, seen) = (acceptor.clone(), Arc::clone(&counts));
            async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    seen.h2_connections.fetch_add(1, Ordering::SeqCst);
                    serve_h2(tls, backend, seen, delay).await;
                } else {
                    seen.h1_connections.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            }
        });
        H2Front {
            addr,
            seen,
            _task: task,
        }
    }

    /// `https://localhost:PORT` (a name the test leaf holds).
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn seen(&self) -> &Seen {
        &self.seen
    }

    pub fn h2_connections(&self) -> usize {
        self.seen.h2_connections.load(Ordering::SeqCst)
    }

    pub fn h1_connections(&self) -> usize {
        self.seen.h1_connections.load(Ordering::SeqCst)
    }

    pub fn h2_requests(&self) -> usize {
        self.seen.h2_requests.load(Ordering::SeqCst)
    }
}

/// HTTP/2 in, one HTTP/1.1 connection to `backend` per request out, bodies streamed both ways.
async fn serve_h2<I>(io: I, backend: SocketAddr, seen: Arc<Seen>, delay: Duration)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let seen = Arc::clone(&seen);
        async move {
            seen.h2_requests.fetch_add(1, Ordering::SeqCst);
            if req.headers().contains_key(header::HOST) {
                seen.h2_with_host.fetch_add(1, Ordering::SeqCst);
            }
            let open = seen.open_streams.fetch_add(1, Ordering::SeqCst) + 1;
            seen.h2_peak_streams.fetch_max(open, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            let answer = relay(req, backend).await;
            seen.open_streams.fetch_sub(1, Ordering::SeqCst);
            answer
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn relay(
    req: Request<Incoming>,
    backend: SocketAddr,
) -> Result<Response<Incoming>, hyper::Error> {
    let (mut parts, body) = req.into_parts();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    parts.version = http::Version::HTTP_11;
    if !parts.headers.contains_key(header::HOST) {
        parts.headers.insert(
            header::HOST,
            authority.parse().expect("authority as a header"),
        );
    }
    let tcp = TcpStream::connect(backend).await.expect("backend");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    sender.send_request(Request::from_parts(parts, body)).await
}
