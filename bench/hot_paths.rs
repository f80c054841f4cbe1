//! Micro-benchmarks of the per-request work in `Proxy::handle` (bench/README.md):
//!
//! - `route/*`: `Router::route` over a table of explicit routes plus host routes, as `App::new`
//!   builds it (config → credentials → cache → table), with a stand-in credential.
//! - `path_validate/*`: `proxy::path::validate` on typical and awkward paths.
//! - `header_rewrite/layer_*`: the real rewrite layer (`proxy::rewrite::Rewrite`) over an upstream
//!   that answers at once: request head rewritten (hop-by-hop strip, credential removal, `Host`,
//!   `X-TFS-FedAuthRedirect`, `Authorization`, upstream URI), the call, and the answer's way back.
//!   `header_rewrite/headers_*`: its header step alone (`rewrite_request_headers`);
//!   `header_rewrite/response_strip`: the answer's hop-by-hop strip alone.
//! - `token_get/warm`: `TokenEntry::get` on an entry holding a usable token (the lock-free read
//!   every request makes).
//! - `per_request/*`: two other costs every request pays in `Proxy::handle`: the copy of the
//!   request head kept for a possible replay (`parts.clone()`, made for every request whose body
//!   is empty or buffered), and the observe stop's metrics (`patless_requests_total` and the duration
//!   histogram, looked up by label values).
//!
//! - `url_rewrite/*`: the streaming URL rewrite of answers (`proxy::urls::Rewriter`) over a 1 MiB
//!   npm packument with a tarball URL every ~150 bytes, and over 1 MiB of JSON with none, in
//!   16 KiB chunks (throughput: bytes of answer per second).
//!
//! `cargo bench --bench hot_paths` runs them; `cargo bench --no-run` (CI) only compiles them.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use bytes::Bytes;
use http_body_util::Full;
use patless::config::{load_from_str, ConfigSource, Format};
use patless::credentials::{AccessToken, BoxFuture, Credential, CredentialError};
use patless::env::MapEnv;
use patless::metrics::Metrics;
use patless::proxy::path::validate;
use patless::proxy::rescue::Rejection;
use patless::proxy::rewrite::{rewrite_request_headers, RewriteLayer};
use patless::proxy::{strip_hop_by_hop, Router};
use patless::secret::Secret;
use patless::token::{CacheSettings, TokenCache};
use tower::{Layer, Service};

/// A credential that answers at once with a fixed token of Entra's size.
#[derive(Debug)]
struct Fixed;

impl Credential for Fixed {
    fn acquire<'a>(
        &'a self,
        _scope: &'a str,
        _claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        Box::pin(async move {
            Ok(AccessToken {
                token: Secret::new(format!("eyJ0eXAiOiJKV1Qi.{}.sig", "x".repeat(1200))),
                expires_in: Duration::from_secs(3599),
                refresh_in: None,
            })
        })
    }
}

const CONFIG: &str = r#"
[server]
host_routes = true
default_profile = "bot"

[profiles.bot]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "not-used"

[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com"
profile = "bot"

[[routes]]
prefix = "/contoso"
upstream = "https://dev.azure.com/contoso"
profile = "bot"

[[routes]]
prefix = "/defender"
upstream = "https://api.security.microsoft.com"
profile = "bot"

[[routes]]
prefix = "/mde/api"
upstream = "https://api.securitycenter.microsoft.com/api/"
profile = "bot"

[[routes]]
prefix = "/graph"
upstream = "https://graph.microsoft.com/v1.0"
profile = "bot"

[[routes]]
prefix = "/local"
upstream = "http://127.0.0.1:8080/base"
profile = "bot"
scope = "api://bench/.default"
"#;

fn cache_and_router() -> (TokenCache, Router) {
    patless::tls::install_crypto_provider();
    let env = MapEnv::default();
    let loaded = load_from_str(CONFIG, Format::Toml, ConfigSource::Embedded, &env)
        .unwrap_or_else(|e| panic!("bench config invalid: {e}"));
    let mut credentials: HashMap<String, Arc<dyn Credential>> = HashMap::new();
    for name in loaded.config.profiles.keys() {
        credentials.insert(name.clone(), Arc::new(Fixed));
    }
    let cache = TokenCache::new(
        credentials,
        CacheSettings {
            acquire_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(5),
        },
        Metrics::new(prometheus::Registry::new()),
    );
    let router = Router::new(&loaded.config, &cache).expect("router");
    (cache, router)
}

fn route(c: &mut Criterion) {
    let (_cache, router) = cache_and_router();
    let mut g = c.benchmark_group("route");
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "explicit",
            "/ado/contoso/_apis/projects",
            Some("api-version=7.1"),
        ),
        ("explicit_nested", "/mde/api/machines/abc123/alerts", None),
        (
            "host_route",
            "/dev.azure.com/contoso/_apis/git/repositories",
            Some("api-version=7.1"),
        ),
        ("no_route", "/nothing/here", None),
    ];
    for (name, path, query) in cases {
        if *name != "no_route" {
            assert!(router.route(path, *query).is_some(), "{path} must route");
        }
        g.bench_function(*name, |b| {
            b.iter(|| router.route(black_box(path), black_box(*query)))
        });
    }
    g.finish();
}

fn path_validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("path_validate");
    let cases: &[(&str, &str)] = &[
        ("short", "/ado/small"),
        (
            "typical",
            "/ado/contoso/_apis/git/repositories/3f2b9c1e-8d4a-4e6f-9b7c-2a1d5e8f0c34/items",
        ),
        (
            "escaped",
            "/ado/contoso/My%20Project/_apis/wit/workitems/%E2%9C%93/updates",
        ),
        (
            "long_200_segments",
            &*Box::leak("/ado/a".repeat(200).into_boxed_str()),
        ),
    ];
    for (name, path) in cases {
        assert!(validate(path).is_ok(), "{path} must be valid");
        g.throughput(Throughput::Bytes(path.len() as u64));
        g.bench_function(*name, |b| b.iter(|| validate(black_box(path))));
    }
    g.finish();
}

// ---- header rewriting: the rewrite layer (src/proxy/rewrite.rs) -------------------------------

/// What `wrk` sends: Host only.
fn wrk_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7070"));
    h
}

/// A git/curl client with a leftover PAT and a `Connection` list.
fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:7070"),
        (
            "user-agent",
            "git/2.43.0 (linux) git-credential-manager/2.4",
        ),
        ("accept", "application/json;api-version=7.1"),
        ("accept-encoding", "gzip, deflate, br"),
        (
            "authorization",
            "Basic OnBhdC10aGF0LXNob3VsZC1uZXZlci1sZWF2ZQ==",
        ),
        ("connection", "keep-alive, x-hop"),
        ("keep-alive", "timeout=5"),
        ("x-hop", "1"),
        ("content-type", "application/json"),
        ("x-request-id", "9f1c2b3a4d5e6f70"),
    ] {
        h.append(
            HeaderName::from_static(k),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    h
}

fn header_rewrite(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let (cache, router) = cache_and_router();
    let router = Arc::new(router);
    let routed = router
        .route("/contoso/_apis/projects", Some("api-version=7.1"))
        .expect("route");
    let token = runtime
        .block_on(routed.target.entry.get())
        .unwrap_or_else(|e| panic!("warm-up: {e}"));
    let token = routed.target.token_slot.copy_of(&token);
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
    // The real layer (`proxy::rewrite`) over an upstream that answers at once: the request head
    // rewritten, the call, and the answer's way back (hop-by-hop strip, route on the answer,
    // body wrapped for counting).
    let layer =
        RewriteLayer::new(metrics).layer(tower::service_fn(|_req: http::Request<Full<Bytes>>| {
            std::future::ready(Ok::<_, Rejection>(http::Response::new(Full::new(
                Bytes::new(),
            ))))
        }));
    let mut g = c.benchmark_group("header_rewrite");
    for (name, make) in [
        ("wrk_1_header", wrk_headers as fn() -> HeaderMap),
        ("client_10_headers", client_headers),
    ] {
        let request = || {
            let mut req = http::Request::builder()
                .uri("/contoso/_apis/projects?api-version=7.1")
                .body(Full::new(Bytes::new()))
                .expect("request");
            *req.headers_mut() = make();
            let mut routed = routed.clone();
            routed.token = Some(Arc::clone(&token));
            req.extensions_mut().insert(routed);
            req
        };
        g.bench_function(format!("layer_{name}"), |b| {
            b.iter_batched(
                request,
                |req| {
                    let resp = layer.clone().call(black_box(req)).now_or_never();
                    black_box(resp.expect("ready at once").expect("answer"))
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("headers_{name}"), |b| {
            b.iter_batched_ref(
                make,
                |h| rewrite_request_headers(black_box(h), &routed.target, &token),
                BatchSize::SmallInput,
            )
        });
    }
    // The response side: the strip alone, on a typical Azure DevOps answer.
    g.bench_function("response_strip", |b| {
        b.iter_batched_ref(
            || {
                let mut h = HeaderMap::new();
                for (k, v) in [
                    ("content-type", "application/json; charset=utf-8"),
                    ("content-length", "1234"),
                    ("cache-control", "no-cache"),
                    ("x-tfs-processid", "3f2b9c1e-8d4a-4e6f-9b7c-2a1d5e8f0c34"),
                    ("x-vss-e2eid", "3f2b9c1e-8d4a-4e6f-9b7c-2a1d5e8f0c34"),
                    ("activityid", "3f2b9c1e-8d4a-4e6f-9b7c-2a1d5e8f0c34"),
                    ("strict-transport-security", "max-age=31536000"),
                    ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ] {
                    h.append(
                        HeaderName::from_static(k),
                        HeaderValue::from_str(v).expect("value"),
                    );
                }
                h
            },
            |h| strip_hop_by_hop(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    drop(router);
    cache.stop();
}

fn token_get(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let (cache, router) = cache_and_router();
    let routed = router.route("/ado/contoso", None).expect("route");
    let entry = routed.target.entry.clone();
    // Warm: the first get starts the refresher and waits for its acquisition.
    runtime
        .block_on(entry.get())
        .unwrap_or_else(|e| panic!("warm-up: {e}"));
    let mut g = c.benchmark_group("token_get");
    g.bench_function("warm", |b| {
        b.iter(|| {
            // A usable token is returned without awaiting anything.
            let t = entry.get().now_or_never().expect("ready at once");
            black_box(t.expect("token"))
        })
    });
    g.finish();
    drop(router);
    cache.stop();
}

fn per_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("per_request");
    // The head as forwarded upstream: client headers rewritten (the real function), token set.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let (cache, router) = cache_and_router();
    let routed = router
        .route("/contoso/_apis/projects", None)
        .expect("route");
    let token = runtime
        .block_on(routed.target.entry.get())
        .unwrap_or_else(|e| panic!("warm-up: {e}"));
    let token = routed.target.token_slot.copy_of(&token);
    let mut headers = client_headers();
    rewrite_request_headers(&mut headers, &routed.target, &token);
    let mut req = http::Request::builder()
        .method(http::Method::GET)
        .uri("https://dev.azure.com/contoso/_apis/projects?api-version=7.1")
        .body(())
        .expect("request");
    *req.headers_mut() = headers;
    let (parts, ()) = req.into_parts();
    g.bench_function("replay_parts_clone", |b| {
        b.iter(|| black_box(&parts).clone())
    });

    let metrics = Metrics::new(prometheus::Registry::new());
    let started = std::time::Instant::now();
    g.bench_function("metrics_observe", |b| {
        b.iter(|| {
            metrics
                .requests()
                .with_label_values(&[black_box("/ado"), black_box("200")])
                .inc();
            metrics
                .request_duration()
                .with_label_values(&[black_box("/ado")])
                .observe(started.elapsed().as_secs_f64());
        })
    });
    g.finish();
    drop(router);
    cache.stop();
}

fn url_rewrite(c: &mut Criterion) {
    use patless::proxy::urls::{Rewriter, UrlMap};
    let packument: Vec<u8> = {
        let mut s = String::from("{\"versions\":{");
        let mut i = 0;
        while s.len() < 1024 * 1024 {
            s.push_str(&format!(
                "\"1.0.{i}\":{{\"dist\":{{\"tarball\":\"https://pkgs.dev.azure.com/org/_packaging/feed/npm/registry/p/-/p-1.0.{i}.tgz\"}}}},"
            ));
            i += 1;
        }
        s.push_str("}}");
        s.into_bytes()
    };
    let plain: Vec<u8> = packument
        .iter()
        .map(|&b| if b == b'h' { b'x' } else { b })
        .collect();
    let mut g = c.benchmark_group("url_rewrite");
    for (name, body) in [("packument_1MiB", &packument), ("no_urls_1MiB", &plain)] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        let chunks: Vec<Bytes> = body.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
        g.bench_function(name, |b| {
            b.iter(|| {
                let map: UrlMap = Box::new(|url: &str| {
                    url.strip_prefix("https://pkgs.dev.azure.com/org/_packaging/feed/npm/registry")
                        .map(|rest| format!("http://127.0.0.1:7070/npm{rest}"))
                });
                let mut r = Rewriter::new(map);
                let mut n = 0;
                for c in &chunks {
                    n += r.push(black_box(c.clone())).len();
                }
                n + r.finish().len()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = route, path_validate, header_rewrite, token_get, per_request, url_rewrite
}
criterion_main!(benches);
