//! In-process test doubles shared by the integration tests (`tests/it` and `tests/soak.rs`): a
//! fake Microsoft Entra token endpoint ([`entra::FakeEntra`]), a fake upstream API that verifies
//! the injected bearer tokens ([`upstream::FakeUpstream`]), a `CONNECT` egress proxy with TLS
//! fronts for real HTTPS names ([`egress`]), patless started in process or as the real binary
//! ([`patless`]), and the small helpers the tests share.

pub mod ado_git;
pub mod ado_rest;
pub mod artifacts;
pub mod capture;
pub mod certs;
pub mod clients;
pub mod egress;
pub mod entra;
pub mod fake_cli;
pub mod faults;
pub mod h2front;
pub mod msi;
pub mod patless;
pub mod pipelines;
pub mod raw;
pub mod sandbox;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// RSA private key (PKCS#8 PEM) the fake Entra signs its access tokens with.
pub const TEST_KEY_PEM: &str = include_str!("keys/entra_test_key.pem");
/// RSA public key (SPKI PEM) the fake upstream verifies access tokens with.
pub const TEST_PUB_PEM: &str = include_str!("keys/entra_test_pub.pem");

/// Byte `i` of the deterministic pattern served by `GET /download/{n}`.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// FNV-1a 64-bit offset basis: the initial `hash` for [`fnv1a`].
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Continues an FNV-1a 64-bit hash over `bytes` (start with [`FNV_OFFSET`]); feed a streamed body
/// chunk by chunk.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

/// FNV-1a hash and length of the first `n` bytes of the download pattern.
pub fn pattern_fnv(n: u64) -> u64 {
    let mut hash = FNV_OFFSET;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut i = 0;
    while i < n {
        let end = (i + 64 * 1024).min(n);
        buf.clear();
        buf.extend((i..end).map(pattern_byte));
        hash = fnv1a(hash, &buf);
        i = end;
    }
    hash
}

/// Locks `m`, taking over a lock poisoned by a panicking test thread (its data is still what the
/// fakes recorded).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asserts that `text` contains every one of `needles`, naming the first missing one.
#[track_caller]
pub fn assert_contains_all(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "expected `{needle}` in:\n{text}");
    }
}

/// Seconds since the Unix epoch, by the system clock (what token `iat`/`exp` are made of).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Writes `contents` to `dir/name` (making the directories on the way) and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create dirs");
    }
    std::fs::write(&path, contents).expect("write test file");
    path
}

/// A `Write` into a shared buffer: what a writer (a log subscriber, `login`'s output) wrote, read
/// by the test while the writer still holds a clone.
#[derive(Clone, Default)]
pub struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(lock(&self.0).clone()).expect("UTF-8 output")
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the aws-lc-rs rustls crypto provider as the process default (idempotent). reqwest is
/// built with `rustls-no-provider`, so a client cannot be built before this ran.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was already installed: fine too.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A reqwest client for talking to the fakes (and to a proxy under test): no system proxy, no
/// automatic redirects.
pub fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("build reqwest client")
}

/// `GET url` on `client` (its pooled connections reused); panics when no answer comes (any
/// status is an answer).
pub async fn get(client: &reqwest::Client, url: String) -> reqwest::Response {
    client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The query parameters of `uri`, decoded (the last of a repeated name wins).
pub fn query_params(uri: &hyper::Uri) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// Response body type used by the fakes.
pub type Body = BoxBody<Bytes, Infallible>;

/// A complete in-memory body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Aborts the wrapped task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A local port that refuses connections for as long as this lives: bound, never listening. (A
/// port bound and let go is refused only until another test's listener is given it, which in
/// one process full of tests binding `127.0.0.1:0` happens.)
pub struct ClosedPort {
    addr: std::net::SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    /// Binds `127.0.0.1:0` without listening (and without `SO_REUSEADDR`, so nothing else can
    /// bind the port meanwhile).
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind 127.0.0.1:0");
        let addr = socket.local_addr().expect("addr");
        ClosedPort {
            addr,
            _socket: socket,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Binds a listener on `127.0.0.1:0`.
pub async fn bind_loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

/// Accepts connections on `listener`, each handled by `on_connection` in a task of its own.
/// Dropping the returned guard stops accepting and aborts every open connection.
pub fn accept_each<F, Fut>(listener: TcpListener, on_connection: F) -> AbortOnDrop
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    AbortOnDrop(tokio::spawn(async move {
        // Connection tasks live in the JoinSet: aborting this task drops the set, which aborts them.
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            match listener.accept().await {
                Ok((stream, _)) => {
                    connections.spawn(on_connection(stream));
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    }))
}

/// Serves HTTP/1.1 on `listener`, one task per connection, calling `handler` for every request.
/// Dropping the returned guard stops accepting and aborts every open connection.
pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> AbortOnDrop
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    accept_each(listener, move |stream| {
        let _ = stream.set_nodelay(true);
        serve_connection(stream, handler.clone())
    })
}

/// Serves HTTP/1.1 on one connection (plain or TLS), calling `handler` for every request.
pub async fn serve_connection<I, F, Fut>(io: I, handler: F)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}
