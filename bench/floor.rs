//! The bench's *floor*: patless's server and upstream pool with nothing between them, used by
//! `bench/run` as the `floor` row (bench/README.md, "What the floor shows").
//!
//! `bench-floor LISTEN UPSTREAM` serves HTTP/1.1 on `LISTEN` (`127.0.0.1:PORT`) the way `patless
//! serve` does — the same worker threads (one per CPU, each a single-threaded runtime), the same
//! connection handling (`patless::server::serve_on_workers`) and the same per-worker upstream
//! pool (`patless::proxy::upstream_client`) — and forwards `/ado/…` to `UPSTREAM/…` with the
//! bearer token in `$BENCH_TOKEN`, hop-by-hop headers stripped both ways. It has none of the
//! stack (`src/proxy/mod.rs`): no inbound policy, path check, routing table, token cache,
//! replay, timeouts, metrics or JSON errors. Its CPU per request is what the stack is measured
//! against: the cost of hyper's server, patless's HTTP/1.1 client (src/proxy/pool/h1/) and
//! tokio, which the stack cannot go below.

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, HOST};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use patless::config::{Limits, ListenAddr};
use patless::proxy::{strip_hop_by_hop, BoxError, ProxyBody, ProxySettings, UpstreamClient};

/// What every request is forwarded with.
struct Floor {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    auth: HeaderValue,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bench-floor LISTEN UPSTREAM (token in $BENCH_TOKEN)");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen
        .parse()
        .expect("LISTEN: an address such as 127.0.0.1:8080");
    let upstream: Uri = upstream
        .parse()
        .expect("UPSTREAM: a URL such as http://127.0.0.1:80");
    let token = std::env::var("BENCH_TOKEN").expect("the token in $BENCH_TOKEN");
    let authority = upstream.authority().expect("UPSTREAM has a host").clone();
    let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value");
    auth.set_sensitive(true);
    let floor = Arc::new(Floor {
        scheme: upstream.scheme().cloned().unwrap_or(Scheme::HTTP),
        host: HeaderValue::from_str(authority.as_str()).expect("a header value"),
        authority,
        auth,
    });
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    patless::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(serve(listen, floor, workers));
}

async fn serve(listen: SocketAddr, floor: Arc<Floor>, workers: usize) {
    let settings = ProxySettings {
        connect_timeout: Duration::from_secs(5),
        response_header_timeout: Duration::from_secs(100),
        max_uri_bytes: 8192,
        upstream_http2: false,
        upstream_max_idle: 64,
    };
    let tls = patless::tls::client_config(None).expect("TLS roots");
    let clients: Vec<Arc<UpstreamClient>> = (0..workers)
        .map(|_| {
            Arc::new(patless::proxy::upstream_client(
                tls.clone(),
                &settings,
                None,
            ))
        })
        .collect();
    let listener = patless::server::Listener::bind(&ListenAddr::Tcp(listen), 0o660)
        .await
        .expect("bind");
    let limits = Limits {
        max_connections: 8192,
        ..Limits::default()
    };
    let handler = move |worker: usize| {
        let (client, floor) = (Arc::clone(&clients[worker]), Arc::clone(&floor));
        move |req: Request<Incoming>| forward(Arc::clone(&client), Arc::clone(&floor), req)
    };
    patless::server::serve_on_workers(
        listener,
        handler,
        std::future::pending(),
        limits,
        "floor",
        workers,
    )
    .await;
}

/// `/ado/rest` → `UPSTREAM/rest`, with the token; 502 when the upstream cannot be reached.
async fn forward(
    client: Arc<UpstreamClient>,
    floor: Arc<Floor>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let rest = path.strip_prefix("/ado").unwrap_or(path);
    let uri = Uri::builder()
        .scheme(floor.scheme.clone())
        .authority(floor.authority.clone())
        .path_and_query(if rest.is_empty() { "/" } else { rest })
        .build();
    let Ok(uri) = uri else {
        return answer(StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(HOST, floor.host.clone());
    parts.headers.insert(AUTHORIZATION, floor.auth.clone());
    let body = body.map_err(BoxError::from).boxed_unsync();
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
        }
        Err(_) => answer(StatusCode::BAD_GATEWAY),
    }
}

fn answer(status: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp
}
