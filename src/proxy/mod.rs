//! The proxy: one road for every request, in this order.
//!
//! 1. **listener** — `server` accepts the connection and hands each request here.
//! 2. **inbound policy** — not an open proxy (`CONNECT`, foreign absolute-form targets → `403`;
//!    `TRACE` → `405`);
//!    `Host` must be loopback or in `allowed_hosts`; a browser's cross-site request
//!    (`Sec-Fetch-Site`, or an `Origin` not in `allowed_origins`) is refused → `403`; the
//!    `inbound_token`, when set, must be presented → `401`.
//! 3. **path check** — dot segments, encoded slashes and bad escapes → `400 invalid_path`.
//! 4. **route** — longest explicit prefix on whole segments, else `/{known-host}/…` → else
//!    `404 no_route`.
//! 5. **token** — the route's cache entry gives a usable token without a lock, or waits for the one
//!    acquisition in flight; none to be had → `503 token_unavailable` with `Retry-After`.
//! 6. **rewrite** — path after the prefix onto the upstream base; hop-by-hop headers, the client's
//!    `Authorization` and `Proxy-Authorization` dropped; `Authorization: Bearer …` (sensitive) and,
//!    toward Azure DevOps, `X-TFS-FedAuthRedirect: Suppress` set; `Host` becomes the upstream's.
//! 7. **forward** — a body of known length ≤ 1 MiB is read first (replayable); any other streams
//!    upstream as it arrives; connect and response-header timeouts apply
//!    (`502 upstream_unreachable`, `504 upstream_timeout`), the body itself has none. When the
//!    upstream refuses the token (`challenge.rs`), the entry replaces it (single-flight); the
//!    request is replayed once only when its body was kept and the upstream cannot have acted on
//!    it (a `401`, a claims challenge, Azure DevOps's sign-in redirect), never after a `2xx`.
//! 8. **response** — hop-by-hop headers dropped, a `Location` into the upstream rewritten to the
//!    proxy's path (never to one starting `//` or `/\`), the body streamed back. One exception (`discovery.rs`): Azure DevOps'
//!    resource-area answer (`GET …/_apis/ResourceAreas`, JSON, ≤ 1 MiB) is read and its
//!    `locationUrl`s pointed at the proxy, so the SDKs that follow them stay behind it.
//! 9. **metrics/log** — `patless_requests_total{route,status}`, the duration histogram, upstream
//!    error counters, one debug log line (never a header value).

pub mod body;
pub mod challenge;
pub mod discovery;
pub mod error;
pub mod inbound;
pub mod path;
pub mod pool;
pub mod routing;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;

pub use error::ProxyError;
pub use inbound::InboundPolicy;
pub use routing::{RouteTarget, Router};

use crate::egress::EgressConnector;
use crate::metrics::Metrics;
use crate::token::{self, CachedToken};

/// How much of an unread request body is read (and dropped) before an early answer.
const DRAIN_BYTES: u64 = 16 * 1024 * 1024;
/// How long that may take.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads and drops `body`, up to [`DRAIN_BYTES`] or [`DRAIN_TIME`].
async fn drain(mut body: Incoming) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Request bodies up to this size are buffered so they can be replayed after a refusal.
pub const MAX_REPLAY_BYTES: u64 = 1024 * 1024;

/// A request body as forwarded: buffered (and so replayable) or streamed.
enum RequestBody {
    Empty,
    Buffered(Bytes),
    Streaming(Incoming),
}

impl RequestBody {
    /// A copy for a replay, if this body can be replayed.
    fn replayable(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Empty => Some(RequestBody::Empty),
            RequestBody::Buffered(b) => Some(RequestBody::Buffered(b.clone())),
            RequestBody::Streaming(_) => None,
        }
    }

    fn into_body(self) -> ProxyBody {
        use http_body_util::{Empty, Full};
        match self {
            RequestBody::Empty => Empty::new().map_err(BoxError::from).boxed_unsync(),
            RequestBody::Buffered(b) => Full::new(b).map_err(BoxError::from).boxed_unsync(),
            RequestBody::Streaming(b) => b.map_err(BoxError::from).boxed_unsync(),
        }
    }
}

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type for requests and responses.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
pub use pool::UpstreamClient;

/// The most an upstream connection's read buffer grows to, and so a bound on an upstream's
/// response head (one larger is a `502 upstream_unreachable`; hyper checks between reads, so a
/// head of up to twice this may pass; nginx's default refuses heads over 4–8 KiB). Bodies stream through it in reads of up to this size: a 64 KiB cap (measured with
/// bench/) held 256 connections of 64 KiB answers at 57 instead of 78 MiB but cut a 1 GiB
/// download by a quarter; from 128 KiB up the download is as fast as with hyper's ~400 KiB
/// default and the memory the same.
pub const UPSTREAM_READ_BUF_MAX: usize = 256 * 1024;

/// Timeouts toward upstreams.
#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    /// TCP connect.
    pub connect_timeout: Duration,
    /// Until the response headers.
    pub response_header_timeout: Duration,
    /// Longest request target accepted.
    pub max_uri_bytes: usize,
}

/// How long a pooled upstream connection may sit idle before it is closed instead of reused.
/// `run_with` sweeps the pools every quarter of it, so one left idle is closed within 75 s.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the upstream client: rustls over the project's roots, HTTP/1.1, pooled keep-alive;
/// `https` upstreams through the egress proxy's `CONNECT` tunnel when it applies to them (TLS
/// still end to end to the upstream), everything else direct.
pub fn upstream_client(
    tls: rustls::ClientConfig,
    settings: &ProxySettings,
    egress: Option<&crate::egress::EgressProxy>,
) -> UpstreamClient {
    UpstreamClient::new(
        connector(tls, settings.connect_timeout, egress),
        UPSTREAM_IDLE_TIMEOUT,
        UPSTREAM_READ_BUF_MAX,
    )
}

/// TCP with `TCP_NODELAY` and the connect timeout, direct or through the egress proxy, then TLS
/// for `https`.
fn connector(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    egress: Option<&crate::egress::EgressProxy>,
) -> pool::Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let tcp = EgressConnector::new(http, egress, connect_timeout);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp)
}

thread_local! {
    /// The worker thread this is (`server::serve_on_workers`); 0 elsewhere.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as worker `index`: its requests use that worker's upstream pool.
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// The proxy's shared state.
#[derive(Debug)]
pub struct Proxy {
    router: Router,
    inbound: InboundPolicy,
    /// One upstream client (and so one keep-alive pool) per worker thread: a pooled connection's
    /// task runs on the thread that opened it, and a request sent on it from another thread would
    /// cross threads twice.
    clients: Box<[UpstreamClient]>,
    settings: ProxySettings,
    metrics: Metrics,
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
static TFS_FEDAUTH: HeaderName = HeaderName::from_static("x-tfs-fedauthredirect");
static PATLESS_TOKEN: HeaderName = HeaderName::from_static("x-patless-token");

/// Removes the hop-by-hop headers (RFC 9110 §7.6.1, plus those `Connection` lists), in both
/// directions (public for the benchmarks in `bench/hot_paths.rs`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let is_hop =
        |n: &HeaderName| HOP_BY_HOP.contains(n) || *n == KEEP_ALIVE || *n == PROXY_CONNECTION;
    // Most messages carry none (or only `Connection`): one pass over the names, no lookups.
    if !headers.keys().any(is_hop) {
        return;
    }
    let mut doomed: Vec<HeaderName> = headers.keys().filter(|n| is_hop(n)).cloned().collect();
    // Names listed in `Connection` are hop-by-hop too.
    doomed.extend(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
    );
    for name in &doomed {
        headers.remove(name);
    }
}

/// A fresh request id: 16 hex digits.
pub fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
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
        Proxy {
            router,
            inbound,
            clients: clients.into_boxed_slice(),
            settings,
            metrics,
        }
    }

    /// Closes the upstream connections idle for [`UPSTREAM_IDLE_TIMEOUT`] or longer, in every
    /// worker's pool; returns how many.
    pub fn close_idle(&self) -> usize {
        self.clients.iter().map(UpstreamClient::close_idle).sum()
    }

    /// The current worker thread's upstream client.
    fn client(&self) -> &UpstreamClient {
        let i = WORKER.with(|w| w.get());
        &self.clients[i % self.clients.len()]
    }

    /// The routing table.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Handles one request; never fails (errors become their JSON answers).
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        // A client that waits for `100 Continue` has not sent its body: nothing to drain.
        let waits_for_continue = parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let mut unread = (!http_body::Body::is_end_stream(&body)).then_some(body);
        let mut resp = self.handle_request(parts, &mut unread).await;
        // An answer given before the request body was read (a refusal, no token): read and drop
        // the body first (bounded), so a client still sending it reads the answer instead of a
        // broken pipe, and close the connection, saying so, so a pooling client does not send
        // its next request into it.
        if let Some(body) = unread {
            if !waits_for_continue {
                drain(body).await;
            }
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    async fn handle_request(
        &self,
        mut parts: http::request::Parts,
        unread: &mut Option<Incoming>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        // 2. inbound policy
        if let Err(refused) = self
            .inbound
            .check_request(&parts.method, &parts.uri, &parts.headers)
        {
            self.metrics
                .inbound_rejections
                .with_label_values(&[refused.code()])
                .inc();
            return self.reject(refused, None, started);
        }
        // 3. path check
        let target_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        if target_len > self.settings.max_uri_bytes {
            return self.reject(ProxyError::UriTooLong(target_len), None, started);
        }
        if let Err(why) = path::validate(parts.uri.path()) {
            return self.reject(ProxyError::InvalidPath(why), None, started);
        }
        // 4. route
        let Some(routed) = self.router.route(parts.uri.path(), parts.uri.query()) else {
            return self.reject(ProxyError::NoRoute, None, started);
        };
        let target: &RouteTarget = &routed.target;
        // Azure DevOps' resource-area discovery: its answer is rewritten in step 8, toward the
        // address the client used (the `Host` it sent, which the inbound policy accepted).
        let discovery = if target.azure_devops
            && parts.method == http::Method::GET
            && discovery::is_resource_areas(
                routed.path_and_query.split('?').next().unwrap_or_default(),
            ) {
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .or_else(|| parts.uri.authority().map(|a| a.to_string()));
            if host.is_none() {
                tracing::debug!(route = %target.label, "resource-area request without Host: its answer is passed on unchanged");
            }
            host.map(|h| format!("http://{h}"))
        } else {
            None
        };
        // 5. token
        let token = match target.entry.get().await {
            Ok(t) => t,
            Err(e) => {
                return self.reject(
                    ProxyError::TokenUnavailable {
                        message: e.message,
                        retry_after: e.retry_after,
                    },
                    Some(target),
                    started,
                )
            }
        };
        // 6. rewrite
        let body = unread.take();
        let uri = match Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query(routed.path_and_query.as_str())
            .build()
        {
            Ok(u) => u,
            Err(_) => {
                return self.reject(
                    ProxyError::InvalidPath("the path cannot be forwarded"),
                    Some(target),
                    started,
                )
            }
        };
        // An API call: only then is an Azure DevOps HTML answer a sign-in page (challenge.rs).
        let expects_api = {
            let accepts = |what: &str| {
                parts
                    .headers
                    .get_all(header::ACCEPT)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| v.contains(what)))
            };
            !accepts("text/html") && (routed.path_and_query.contains("/_apis") || accepts("json"))
        };
        strip_hop_by_hop(&mut parts.headers);
        let h = &mut parts.headers;
        h.remove(header::AUTHORIZATION);
        h.remove(&PATLESS_TOKEN);
        h.remove(header::EXPECT);
        if discovery.is_some() {
            // An answer to rewrite must come uncompressed.
            h.remove(header::ACCEPT_ENCODING);
        }
        // The client's `Host` (checked by the inbound policy) anchors redirects (step 8).
        let client_host = h.insert(header::HOST, target.host_header.clone());
        if target.azure_devops {
            h.insert(TFS_FEDAUTH.clone(), HeaderValue::from_static("Suppress"));
        }
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        // A body small enough to replay after a refusal (SPEC §5) is read first; any other streams.
        let body = match body {
            None => RequestBody::Empty,
            Some(body) => match http_body::Body::size_hint(&body).exact() {
                Some(0) => RequestBody::Empty,
                Some(n) if n <= MAX_REPLAY_BYTES => match body.collect().await {
                    Ok(collected) => RequestBody::Buffered(collected.to_bytes()),
                    Err(e) => {
                        return self.reject(
                            ProxyError::ClientBody(e.to_string()),
                            Some(target),
                            started,
                        )
                    }
                },
                _ => RequestBody::Streaming(body),
            },
        };
        // 7. forward
        let replay = body.replayable().map(|b| (parts.clone(), b));
        let mut resp = match self.forward(parts, &token, body.into_body(), target).await {
            Ok(r) => r,
            Err(e) => return self.reject(e, Some(target), started),
        };
        // 7b. a refusal: replay once with a fresh token when the body allows, else pass the
        // answer on and replace the token in the background for the requests that follow.
        let refused = challenge::refusal(
            resp.status(),
            resp.headers(),
            target.azure_devops,
            expects_api,
        );
        match (refused, replay) {
            (None, _) => token.mark_accepted(),
            (Some(refusal), replay) => {
                let why = refusal.describe();
                // Replayed only when the upstream cannot have acted on it (a 401, the sign-in
                // redirect), never after a 2xx, and only with a body that was kept.
                let replay = replay.filter(|_| refusal.replayable());
                let claims = match refusal {
                    challenge::Refusal::Claims(c) => Some(c),
                    _ => None,
                };
                let Some((parts, body)) = replay else {
                    tracing::info!(
                        route = %target.label,
                        profile = %target.profile,
                        refusal = why,
                        "the upstream refused the token of a request that is not replayed (its \
                         body was streamed, or the answer is one it may have acted on): passing \
                         its answer on, replacing the token for the next ones"
                    );
                    let entry = Arc::clone(&target.entry);
                    let rejected = Arc::clone(&token);
                    tokio::spawn(async move {
                        let _ = entry.reacquire(&rejected, claims).await;
                    });
                    return self
                        .respond(
                            resp,
                            target,
                            started,
                            discovery.as_deref(),
                            client_host.as_ref(),
                        )
                        .await;
                };
                match target.entry.reacquire(&token, claims).await {
                    Ok(fresh) => {
                        self.metrics
                            .upstream_auth_retries
                            .with_label_values(&[&*target.label])
                            .inc();
                        tracing::info!(
                            route = %target.label,
                            profile = %target.profile,
                            refusal = why,
                            "the upstream refused the token; replaying once with a fresh one"
                        );
                        drop(resp);
                        resp = match self.forward(parts, &fresh, body.into_body(), target).await {
                            Ok(r) => r,
                            Err(e) => return self.reject(e, Some(target), started),
                        };
                        let again = challenge::refusal(
                            resp.status(),
                            resp.headers(),
                            target.azure_devops,
                            expects_api,
                        );
                        if again.is_none() {
                            fresh.mark_accepted();
                        }
                    }
                    Err(token::NoReplay::RecentlyReplaced) => {}
                    // The token is known to be refused and no other can be had now: the client
                    // is told so (and when to retry), as for any request without a valid token.
                    Err(token::NoReplay::Unavailable(e)) => {
                        return self.reject(
                            ProxyError::TokenUnavailable {
                                message: format!(
                                    "the upstream refused the token ({why}) and no fresh one can \
                                     be had: {}",
                                    e.message
                                ),
                                retry_after: e.retry_after,
                            },
                            Some(target),
                            started,
                        )
                    }
                }
            }
        }
        drop(token);
        self.respond(
            resp,
            target,
            started,
            discovery.as_deref(),
            client_host.as_ref(),
        )
        .await
    }

    /// Steps 8 and 9: the upstream's answer, rewritten, streamed back and counted. With
    /// `discovery` (the proxy's origin, `http://127.0.0.1:7070`), the answer is a resource-area
    /// list whose `locationUrl`s are pointed at that origin.
    async fn respond(
        &self,
        resp: Response<Incoming>,
        target: &RouteTarget,
        started: Instant,
        discovery: Option<&str>,
        client_host: Option<&HeaderValue>,
    ) -> Response<ProxyBody> {
        // 8. response
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(loc) = parts.headers.get(header::LOCATION) {
            match rewrite_location(loc, target, client_host) {
                Ok(None) => {}
                Ok(Some(new)) => {
                    parts.headers.insert(header::LOCATION, new);
                }
                Err(e) => return self.reject(e, Some(target), started),
            }
        }
        let body = match discovery {
            None => self.counted(body, target),
            Some(origin) => {
                let map = |url: &str| {
                    self.router
                        .proxy_path_for(target, url)
                        .map(|path| format!("{origin}{path}"))
                };
                let body =
                    discovery::rewrite(parts.status, &mut parts.headers, body, map, &target.label)
                        .await;
                self.counted(body, target)
            }
        };
        // 9. metrics/log
        self.observe(Some(target), &target.label, parts.status, started);
        tracing::debug!(
            route = %target.label,
            status = parts.status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "proxied"
        );
        Response::from_parts(parts, body)
    }

    /// The response body, its breaking off counted (`body.rs`).
    fn counted<B>(&self, body: B, target: &RouteTarget) -> ProxyBody
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display + Into<BoxError>,
    {
        body::CountedBody::new(
            body,
            self.metrics.upstream_errors.clone(),
            Arc::clone(&target.label),
        )
        .map_err(Into::into)
        .boxed_unsync()
    }

    /// Sends one request upstream with `token`; connect failures and a missing answer become
    /// their errors, counted in `patless_upstream_errors_total`.
    async fn forward(
        &self,
        mut parts: http::request::Parts,
        token: &CachedToken,
        body: ProxyBody,
        target: &RouteTarget,
    ) -> Result<Response<Incoming>, ProxyError> {
        parts
            .headers
            .insert(header::AUTHORIZATION, token.header.clone());
        let upstream_req = Request::from_parts(parts, body);
        // Boxed, so the handler's own future (which hyper moves when it takes a request) stays
        // small.
        let result = tokio::time::timeout(
            self.settings.response_header_timeout,
            Box::pin(self.client().request(upstream_req)),
        )
        .await;
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let kind = if e.is_connect() {
                    "connect"
                } else {
                    "protocol"
                };
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&*target.label, kind])
                    .inc();
                let mut reason = String::new();
                let mut src: Option<&dyn std::error::Error> = Some(&e);
                while let Some(s) = src {
                    reason = s.to_string();
                    src = s.source();
                }
                Err(ProxyError::UpstreamUnreachable {
                    authority: target.authority.to_string(),
                    reason,
                })
            }
            Err(_) => {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&*target.label, "timeout"])
                    .inc();
                Err(ProxyError::UpstreamTimeout {
                    authority: target.authority.to_string(),
                    secs: self.settings.response_header_timeout.as_secs(),
                })
            }
        }
    }

    /// Counts one answer; an explicit route's handles are looked up once (`RouteMetrics`).
    fn observe(
        &self,
        target: Option<&RouteTarget>,
        route: &str,
        status: http::StatusCode,
        started: Instant,
    ) {
        let elapsed = started.elapsed().as_secs_f64();
        let cached = target.and_then(|t| t.metrics.as_deref());
        match cached {
            Some(m) if status == http::StatusCode::OK => {
                m.ok.get_or_init(|| self.metrics.requests.with_label_values(&[route, "200"]))
                    .inc()
            }
            _ => self
                .metrics
                .requests
                .with_label_values(&[route, status.as_str()])
                .inc(),
        }
        match cached {
            Some(m) => m
                .duration
                .get_or_init(|| self.metrics.request_duration.with_label_values(&[route]))
                .observe(elapsed),
            None => self
                .metrics
                .request_duration
                .with_label_values(&[route])
                .observe(elapsed),
        }
    }

    fn reject(
        &self,
        err: ProxyError,
        target: Option<&RouteTarget>,
        started: Instant,
    ) -> Response<ProxyBody> {
        let id = request_id();
        let route = target.map(|t| &*t.label);
        let status = err.status();
        match &err {
            ProxyError::NoRoute
            | ProxyError::InvalidPath(_)
            | ProxyError::HostNotAllowed
            | ProxyError::CrossSiteRequest
            | ProxyError::NotAnOpenProxy(_)
            | ProxyError::InboundAuthRequired
            | ProxyError::ClientBody(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::UriTooLong(_) => {
                tracing::debug!(request_id = %id, code = err.code(), "refused: {err}")
            }
            _ => {
                tracing::warn!(request_id = %id, route = route.unwrap_or("-"), code = err.code(), "{err}")
            }
        }
        self.observe(target, route.unwrap_or("none"), status, started);
        err.into_response(route, target.map(|t| &*t.profile), &id)
    }
}

/// `https://dev.azure.com/org/x` (or `/org/x`) from the route's upstream → `/ado/org/x`: a path
/// on the proxy, which the client resolves against the address it used. `Ok(None)`: not into the
/// upstream, passed on as it is.
///
/// Nothing passed on starts with `//` or `/\`, which a client reads as another host:
/// - the upstream's own `//…` or `/\…` is taken as the path it was (an upstream that reflects the
///   request's path) and rewritten like any path into the upstream, or refused
///   (`502 unsafe_redirect`) when it is not one;
/// - a rewritten path that would start so (a route on `/` and an upstream path with an empty
///   segment) becomes an absolute URL on the proxy's own origin, `http://{host}//evil.example/x`,
///   from the `Host` the client sent (which the inbound policy accepted), or is refused without one.
fn rewrite_location(
    loc: &HeaderValue,
    target: &RouteTarget,
    host: Option<&HeaderValue>,
) -> Result<Option<HeaderValue>, ProxyError> {
    let unsafe_redirect = |why| ProxyError::UnsafeRedirect {
        authority: target.authority.to_string(),
        why,
    };
    let Some(rest) = location_in_upstream(loc, target) else {
        if leaves_origin(loc.as_bytes()) {
            return Err(unsafe_redirect(
                "a reference to another host (//host or /\\host) that is no path of the route",
            ));
        }
        return Ok(None);
    };
    let rewritten = match (&*target.prefix, rest) {
        ("", "") => "/".to_string(),
        ("", rest) if rest.starts_with('?') => format!("/{rest}"),
        (prefix, rest) => format!("{prefix}{rest}"),
    };
    let value = if leaves_origin(rewritten.as_bytes()) {
        let host = host.and_then(|h| h.to_str().ok()).ok_or_else(|| {
            unsafe_redirect("a path that starts with // or /\\, and no Host to anchor it to")
        })?;
        format!("http://{host}{rewritten}")
    } else {
        rewritten
    };
    Ok(HeaderValue::from_str(&value).ok())
}

/// The part of a `Location` after the route's upstream base (`""`, or from a `/` or `?`), if it
/// points into the upstream.
fn location_in_upstream<'a>(loc: &'a HeaderValue, target: &RouteTarget) -> Option<&'a str> {
    let text = loc.to_str().ok()?;
    // `//x` and `/\x` too: the path the upstream was sent, reflected.
    let path = if text.starts_with('/') {
        text
    } else {
        let uri: Uri = text.parse().ok()?;
        let same_origin = uri.scheme() == Some(&target.scheme)
            && uri
                .authority()
                .is_some_and(|a| a.as_str().eq_ignore_ascii_case(target.authority.as_str()));
        if !same_origin {
            return None;
        }
        let start = text.find(uri.authority()?.as_str())? + uri.authority()?.as_str().len();
        match &text[start..] {
            "" => "/",
            rest => rest,
        }
    };
    let rest = path.strip_prefix(&*target.base_path)?;
    (rest.is_empty() || rest.starts_with(['/', '?'])).then_some(rest)
}

/// Whether a relative reference leaves the origin it is resolved against: `//host/…`, and `/\host/…`,
/// which browsers read the same way (tabs, which browsers strip from URLs, do not hide either).
fn leaves_origin(reference: &[u8]) -> bool {
    let mut bytes = reference
        .iter()
        .filter(|b| !matches!(b, b'\t' | b'\r' | b'\n'));
    bytes.next() == Some(&b'/') && matches!(bytes.next(), Some(b'/' | b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_lists_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Trace"),
        );
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));

        // Nothing to remove: left as it is.
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.append("x-many", HeaderValue::from_static("a"));
        h.append("x-many", HeaderValue::from_static("b"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3);
    }
}
