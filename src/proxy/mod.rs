//! The proxy: one road for every request, built as one tower stack ([`stack`]) whose layers are
//! the stops, in this order.
//!
//! 1. **listener** — `server` accepts the connection and hands each request to the worker's stack.
//! 2. **around everything** — client credentials marked sensitive both ways (`sensitive.rs`),
//!    metrics and the debug line (`observe.rs`), a panic in any stop below answered
//!    `500 internal_error` (tower-http's `CatchPanicLayer`), and refusals turned into their JSON
//!    answers with a request id (`x-patless-request-id`), an unread body drained first
//!    (`rescue.rs`).
//! 3. **inbound policy** (`inbound.rs`) — not an open proxy (`CONNECT`, foreign absolute-form
//!    targets → `403`; `TRACE` → `405`); `Host` must be loopback or in `allowed_hosts`; a browser's
//!    cross-site request is refused → `403`; the `inbound_token`, when set, must be presented →
//!    `401`.
//! 4. **path check** (`path.rs`) — too long → `414`; dot segments, encoded slashes and bad escapes →
//!    `400 invalid_path`.
//! 5. **route** (`route.rs`, table in `routing.rs`) — longest explicit prefix on whole segments,
//!    else `/{known-host}/…` → else `404 no_route`.
//! 6. **token** (`token.rs`) — the route's cache entry gives a usable token without a lock, or
//!    waits for the one acquisition in flight; none to be had → `503 token_unavailable` with
//!    `Retry-After`.
//! 7. **URLs in answers** (`urls/`) — on `rewrite_urls` routes (feeds, Graph, Defender, ARM) and
//!    for Azure DevOps' resource-area list, absolute URLs into a route in a JSON, XML or HTML
//!    answer are pointed at the proxy as the client addressed it, streaming, compressed answers
//!    decoded first.
//! 8. **rewrite** (`rewrite.rs`) — path after the prefix onto the upstream base; hop-by-hop
//!    headers, the client's `Authorization` and `Proxy-Authorization` dropped; `Authorization:
//!    Bearer …` (or `Basic` with the token as password, `auth = "basic"`; sensitive) and, toward
//!    Azure DevOps, `X-TFS-FedAuthRedirect: Suppress` set; `Host` becomes the upstream's. On the
//!    way back: hop-by-hop headers dropped, a `Location` into the upstream pointed at the proxy
//!    (`location.rs`), the body streamed back and its breaking off counted (`body.rs`).
//! 9. **replay** (`replay.rs`) — a body of known length ≤ 1 MiB is read first (replayable); any
//!    other streams. A refused token (`challenge.rs`) is replaced (single-flight) and the request
//!    replayed once, only when the upstream cannot have acted on it.
//! 10. **forward** (`forward.rs`) — on the worker's own keep-alive pool (`pool/`: HTTP/2 where the upstream offers it, else HTTP/1.1), within the
//!     response-header timeout (tower's `TimeoutLayer`): `502 upstream_unreachable`,
//!     `504 upstream_timeout`. The body itself has no time limit.
//!
//! tower-http's `CatchPanicLayer`, tower's `TimeoutLayer` and tower-http's `Decompression` (for
//! the URL rewrite's compressed answers) do their jobs as they are. Our own
//! stops are ours because no stock layer expresses them, or at a measured cost (callgrind,
//! instructions per proxied request): the sensitive headers (tower-http's pair: ~1,300 more,
//! `sensitive.rs`); request ids only on the answers patless makes (`rescue.rs`), because
//! tower-http's `SetRequestIdLayer` + `PropagateRequestIdLayer` on every request cost ~3,600 more
//! (an id, a header each way and an extension map each way); the drain before an early answer and
//! the JSON answers of docs/errors.md (`rescue.rs`); metrics by configured route (`observe.rs`);
//! and the replay, which must resend a kept body after a token refresh.

pub mod body;
pub mod challenge;
pub mod error;
pub mod forward;
pub mod inbound;
pub mod location;
pub mod observe;
pub mod path;
pub mod pool;
pub mod replay;
pub mod rescue;
pub mod rewrite;
pub mod route;
pub mod routing;
pub mod sensitive;
pub mod token;
pub mod urls;

#[cfg(test)]
mod testing;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::timeout::Timeout;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::catch_panic::{CatchPanic, CatchPanicLayer};

pub use error::ProxyError;
pub use inbound::InboundPolicy;
pub use replay::MAX_REPLAY_BYTES;
pub use rescue::request_id;
pub use routing::{RouteTarget, Router};

use crate::egress::EgressConnector;
use crate::metrics::Metrics;

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type for requests and responses inside the stack.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
/// The body of the stack's answers (tower-http's `CatchPanicLayer` boxes them once more).
pub type ResponseBody = tower_http::body::UnsyncBoxBody<Bytes, BoxError>;
/// A panic's answer, as `CatchPanicLayer` calls it.
pub type PanicAnswer = fn(Box<dyn std::any::Any + Send + 'static>) -> Response<ProxyBody>;

/// The whole road over `F` (the worker's pool: [`forward::Forward`]), as [`stack`] builds it:
/// a named type, so a request's future is not boxed as a whole.
pub type Stack<F> = sensitive::SensitiveHeaders<
    observe::Observe<
        CatchPanic<
            rescue::Rescue<
                inbound::Inbound<
                    path::PathCheck<
                        route::Route<
                            token::RouteToken<
                                urls::RewriteUrls<rewrite::Rewrite<replay::Replay<Timeout<F>>>>,
                            >,
                        >,
                    >,
                >,
            >,
            PanicAnswer,
        >,
    >,
>;
pub use pool::UpstreamClient;

/// The header that carries the id of an answer patless made itself (a refusal, a panic's `500`).
pub use crate::header_names::REQUEST_ID;

/// The longest upstream answer head accepted (one longer is a `502 upstream_unreachable`;
/// nginx's default refuses heads over 4–8 KiB). Only a head this long grows a connection's
/// buffer this far: bodies are read in chunks of at most 16 KiB (`pool/h1/`).
pub const UPSTREAM_MAX_HEAD: usize = 256 * 1024;

/// Timeouts and connections toward upstreams.
#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    /// TCP connect.
    pub connect_timeout: Duration,
    /// Until the response headers.
    pub response_header_timeout: Duration,
    /// Longest request target accepted.
    pub max_uri_bytes: usize,
    /// Offer HTTP/2 to `https` upstreams (`server.upstream_http2`).
    pub upstream_http2: bool,
    /// Idle HTTP/1.1 connections kept per upstream and worker (`server.upstream_max_idle`).
    pub upstream_max_idle: usize,
}

/// How long a pooled upstream connection may sit idle before it is closed instead of reused.
/// `run_with` sweeps the pools every quarter of it, so one left idle is closed within 75 s.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the upstream client: rustls over the project's roots, HTTP/2 where the upstream offers
/// it (and `upstream_http2` allows), else HTTP/1.1, pooled keep-alive;
/// `https` upstreams through the egress proxy's `CONNECT` tunnel when it applies to them (TLS
/// still end to end to the upstream), everything else direct.
pub fn upstream_client(
    tls: rustls::ClientConfig,
    settings: &ProxySettings,
    egress: Option<&crate::egress::EgressProxy>,
) -> UpstreamClient {
    UpstreamClient::new(
        connector(
            tls,
            settings.connect_timeout,
            egress,
            settings.upstream_http2,
        ),
        pool::PoolSettings {
            idle_timeout: UPSTREAM_IDLE_TIMEOUT,
            max_idle: settings.upstream_max_idle,
            max_head: UPSTREAM_MAX_HEAD,
            http2: settings.upstream_http2,
        },
    )
}

/// TCP with `TCP_NODELAY` and the connect timeout, direct or through the egress proxy, then TLS
/// for `https`, offering `h2` and `http/1.1` by ALPN when `http2`.
fn connector(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    egress: Option<&crate::egress::EgressProxy>,
    http2: bool,
) -> pool::Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let tcp = EgressConnector::new(http, egress, connect_timeout);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if http2 {
        https.enable_all_versions().wrap_connector(tcp)
    } else {
        https.enable_http1().wrap_connector(tcp)
    }
}

/// Headers that belong to one connection (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the hop-by-hop headers (RFC 9110 §7.6.1, plus those `Connection` lists), in both
/// directions (public for the benchmarks in `bench/hot_paths.rs`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let is_hop =
        |n: &HeaderName| HOP_BY_HOP.contains(n) || *n == KEEP_ALIVE || *n == PROXY_CONNECTION;
    // Most messages carry none, or only `Connection`: one pass over the names, no lookups.
    let (mut connection, mut others) = (false, false);
    for name in headers.keys() {
        if *name == header::CONNECTION {
            connection = true;
        } else if is_hop(name) {
            others = true;
        }
    }
    if !connection && !others {
        return;
    }
    // Nearly every upstream answer: `Connection: keep-alive` alone, which lists no other header.
    let lists_nothing = || {
        headers.get_all(header::CONNECTION).iter().all(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .map(str::trim)
                    .all(|t| t.is_empty() || t.eq_ignore_ascii_case(KEEP_ALIVE.as_str()))
            })
        })
    };
    if !others && lists_nothing() {
        headers.remove(header::CONNECTION);
        return;
    }
    let mut doomed: Vec<HeaderName> = headers.keys().filter(|n| is_hop(n)).cloned().collect();
    // Names listed in `Connection` are hop-by-hop too. `keep-alive`, the one nearly every
    // upstream lists, is among the fixed names already: no name is made for it.
    doomed.extend(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !n.eq_ignore_ascii_case(KEEP_ALIVE.as_str()))
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()),
    );
    for name in &doomed {
        headers.remove(name);
    }
}

/// A panic below: `500 internal_error` with a request id, which the log line names too (the
/// panic's message is logged, never sent); the process keeps serving.
fn panic_answer(panic: Box<dyn std::any::Any + Send + 'static>) -> Response<ProxyBody> {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let id = request_id();
    tracing::error!(request_id = %id, panic = %what, "a request's handling panicked; answered 500 internal_error");
    ProxyError::Internal.to_response(None, None, &id)
}

/// What the stack of one worker is built from.
#[derive(Debug, Clone)]
pub struct StackParts {
    /// The routing table (a copy of the worker's own: `Router::for_worker`).
    pub router: Arc<Router>,
    /// The inbound policy.
    pub inbound: Arc<InboundPolicy>,
    /// Timeouts and limits.
    pub settings: ProxySettings,
    /// Where requests are counted.
    pub metrics: Arc<Metrics>,
}

/// The road, top to bottom: the proxy's `Service` for one worker, sending on `forward` (the
/// worker's pool in production, `tower::service_fn` in a test).
pub fn stack<F>(parts: StackParts, forward: F) -> Stack<F> {
    let StackParts {
        router,
        inbound,
        settings,
        metrics,
    } = parts;
    ServiceBuilder::new()
        .layer(sensitive::SensitiveHeadersLayer)
        .layer(observe::ObserveLayer::new(Arc::clone(&metrics)))
        .layer(CatchPanicLayer::custom(panic_answer as PanicAnswer))
        .layer(rescue::RescueLayer)
        .layer(inbound::InboundLayer::new(inbound, Arc::clone(&metrics)))
        .layer(path::PathCheckLayer::new(settings.max_uri_bytes))
        .layer(route::RouteLayer::new(Arc::clone(&router)))
        .layer(token::RouteTokenLayer)
        .layer(urls::RewriteUrlsLayer::new(router))
        .layer(rewrite::RewriteLayer::new(Arc::clone(&metrics)))
        .layer(replay::ReplayLayer::new(
            metrics,
            settings.response_header_timeout,
        ))
        .layer(tower::timeout::TimeoutLayer::new(
            settings.response_header_timeout,
        ))
        .service(forward)
}

/// The proxy's shared state: the routing table, and one stack (and upstream pool) per worker.
pub struct Proxy {
    router: Arc<Router>,
    /// One upstream client (and so one keep-alive pool) per worker thread: a pooled connection's
    /// task runs on the thread that opened it, and a request sent on it from another thread would
    /// cross threads twice.
    clients: Box<[Arc<UpstreamClient>]>,
    /// Each worker's stack, over its own pool and its own copies of the shared state (so the
    /// reference counts a request touches stay on its core). Only that worker locks it, and each
    /// sits on cache lines of its own: a lock taken per request must not share a line with
    /// another worker's stack.
    stacks: Box<[OwnLines<Mutex<Stack<forward::Forward>>>]>,
}

/// A value on cache lines of its own (128 bytes: x86's adjacent-line prefetch pairs lines).
#[repr(align(128))]
struct OwnLines<T>(T);

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("router", &self.router)
            .field("workers", &self.stacks.len())
            .finish()
    }
}

impl Proxy {
    /// A proxy over this routing table and clients (one per worker thread; at least one).
    pub fn new(
        router: Router,
        inbound: InboundPolicy,
        clients: Vec<UpstreamClient>,
        settings: ProxySettings,
        metrics: Metrics,
    ) -> Self {
        assert!(!clients.is_empty(), "a proxy needs an upstream client");
        let clients: Box<[Arc<UpstreamClient>]> = clients.into_iter().map(Arc::new).collect();
        let stacks = clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let parts = StackParts {
                    router: Arc::new(router.for_worker()),
                    inbound: Arc::new(inbound.clone()),
                    settings,
                    metrics: Arc::new(metrics.for_worker(i)),
                };
                OwnLines(Mutex::new(stack(
                    parts,
                    forward::Forward::new(Arc::clone(client)),
                )))
            })
            .collect();
        Proxy {
            router: Arc::new(router),
            clients,
            stacks,
        }
    }

    /// Closes the upstream connections idle for [`UPSTREAM_IDLE_TIMEOUT`] or longer, in every
    /// worker's pool; returns how many.
    pub fn close_idle(&self) -> usize {
        self.clients.iter().map(|c| c.close_idle()).sum()
    }

    /// The routing table.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Handles one request on worker `worker`'s stack; never fails (errors become their JSON
    /// answers). The one box per request: it names the future as `Send` where the compiler can
    /// see that it is one (inside a generic caller it cannot, rust-lang/rust#64552).
    pub fn handle(
        &self,
        worker: usize,
        req: Request<Incoming>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<ResponseBody>> + Send>> {
        let i = worker % self.stacks.len();
        let answer = {
            let mut svc = match self.stacks[i].0.lock() {
                Ok(svc) => svc,
                Err(poisoned) => poisoned.into_inner(),
            };
            // Every stop is always ready (they delegate down to the pool, which opens a
            // connection when none is free); a stack that is not is used through a clone.
            let ready = Service::<Request<Incoming>>::poll_ready(
                &mut *svc,
                &mut Context::from_waker(Waker::noop()),
            );
            match ready {
                Poll::Ready(Ok(())) => futures_util::future::Either::Left(svc.call(req)),
                _ => futures_util::future::Either::Right(svc.clone().oneshot(req)),
            }
        };
        // A combinator, not an `async` block: the compiler checks `Send` on its concrete type.
        Box::pin(futures_util::FutureExt::map(
            answer,
            |answer| match answer {
                Ok(resp) => resp,
                Err(never) => match never {},
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::{BodyExt, Full};

    async fn road<F>(forward: F) -> (Stack<F>, Arc<Metrics>, Arc<crate::token::TokenCache>) {
        let (router, cache) = testing::router().await;
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
        let parts = StackParts {
            router: Arc::new(router),
            inbound: Arc::new(InboundPolicy::default()),
            settings: ProxySettings {
                connect_timeout: Duration::from_secs(5),
                response_header_timeout: Duration::from_secs(100),
                max_uri_bytes: 8192,
                upstream_http2: true,
                upstream_max_idle: 64,
            },
            metrics: Arc::clone(&metrics),
        };
        (stack(parts, forward), metrics, cache)
    }

    fn get(uri: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .uri(uri)
            .header(header::HOST, "127.0.0.1:7070")
            .header(header::AUTHORIZATION, "Basic OnN0YWxlLXBhdA==")
            .body(Full::new(Bytes::new()))
            .expect("request")
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_lists_are_dropped() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("connection", "Keep-Alive, X-Hop"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("content-type", "application/json"),
            ("x-end-to-end", "kept"),
        ] {
            h.append(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-end-to-end"]);
        let mut plain = HeaderMap::new();
        plain.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1, "nothing to drop, nothing dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn the_whole_road_over_a_stand_in_forward() {
        let forward = tower::service_fn(|req: Request<ProxyBody>| async move {
            let auth = req.headers()[header::AUTHORIZATION].clone();
            assert!(auth.is_sensitive());
            assert!(
                !auth.as_bytes().starts_with(b"Basic"),
                "the PAT never leaves"
            );
            Ok::<_, BoxError>(
                Response::builder()
                    .header(header::SET_COOKIE, "s=1")
                    .body(Full::new(Bytes::from_static(b"ok")))?,
            )
        });
        let (svc, metrics, _cache) = road(forward).await;
        let resp = svc
            .clone()
            .oneshot(get("/ado/_apis/projects"))
            .await
            .expect("answer");
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()[header::SET_COOKIE].is_sensitive());
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
        let refused = svc.oneshot(get("/nowhere")).await.expect("answer");
        assert_eq!(refused.status(), 404);
        let id = refused.headers()[&REQUEST_ID]
            .to_str()
            .expect("id")
            .to_string();
        let body = refused
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            json["request_id"],
            id.as_str(),
            "the header's id is the body's"
        );
        let text = metrics.render();
        assert!(
            text.contains(r#"patless_requests_total{route="/ado",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"patless_requests_total{route="none",status="404"} 1"#),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_below_is_a_json_500_and_the_stack_keeps_serving() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let forward = tower::service_fn(move |_req: Request<ProxyBody>| {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("a bug in a layer");
                }
                Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        });
        let (svc, metrics, _cache) = road(forward).await;
        let resp = svc.clone().oneshot(get("/ado/x")).await.expect("answer");
        assert_eq!(resp.status(), 500);
        let id = resp.headers()[&REQUEST_ID]
            .to_str()
            .expect("id")
            .to_string();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["error"], "internal_error");
        assert_eq!(json["request_id"], id.as_str());
        assert!(
            !String::from_utf8_lossy(&body).contains("a bug"),
            "the panic stays in the log"
        );
        let resp = svc.oneshot(get("/ado/x")).await.expect("answer");
        assert_eq!(resp.status(), 200, "still serving");
        assert!(metrics
            .render()
            .contains(r#"patless_requests_total{route="none",status="500"} 1"#));
    }

    #[test]
    fn an_upstream_s_connection_keep_alive_alone_goes_and_nothing_else() {
        for value in ["keep-alive", "Keep-Alive", " keep-alive , "] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(value));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
            h.insert("x-keep", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert!(h.get(header::CONNECTION).is_none(), "{value:?}");
            assert_eq!(h.len(), 2, "{value:?}: {h:?}");
        }
    }
}
