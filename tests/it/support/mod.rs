#![allow(dead_code)]
//! In-process test doubles shared by the integration tests: a fake Microsoft Entra token endpoint
//! ([`entra::FakeEntra`]) and a fake upstream API that verifies the injected bearer tokens
//! ([`upstream::FakeUpstream`]).

pub mod ado_git;
pub mod ado_rest;
pub mod capture;
pub mod certs;
pub mod clients;
pub mod entra;
pub mod fake_cli;
pub mod faults;
pub mod msi;
pub mod patless;
pub mod pipelines;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Once;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
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

/// Binds a listener on `127.0.0.1:0`.
pub async fn bind_loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

/// Serves HTTP/1.1 on `listener`, one task per connection, calling `handler` for every request.
/// Dropping the returned guard stops accepting and aborts every open connection.
pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> AbortOnDrop
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    AbortOnDrop(tokio::spawn(async move {
        // Connection tasks live in the JoinSet: aborting this task drops the set, which aborts them.
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            connections.spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}
