use std::io::Write as _;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use tower::ServiceExt as _;

use super::*;
use crate::proxy::testing;

/// A feed route (rewrite on by default), an Azure DevOps route (off by default), a Graph route
/// with it turned off, and host routes for the rest.
const CONFIG: &str = r#"
[server]
default_profile = "bot"

[profiles.bot]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "not-used"

[[routes]]
prefix = "/npm"
upstream = "https://pkgs.dev.azure.com/org/_packaging/feed/npm/registry"
profile = "bot"

[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com/org"
profile = "bot"

[[routes]]
prefix = "/graph"
upstream = "https://graph.microsoft.com"
profile = "bot"
rewrite_urls = false
"#;

/// What the upstream answered, and what the layer saw of the request.
struct Upstream {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: Bytes,
}

impl Upstream {
    fn json(body: &str) -> Upstream {
        Upstream {
            status: 200,
            headers: vec![("content-type", "application/json; charset=utf-8")],
            body: Bytes::from(body.to_string()),
        }
    }
}

/// `method path` through the layer (Host `127.0.0.1:7070`, `accept_encoding` if any) to a
/// service answering `up`; the answer's headers and body, and the `Accept-Encoding` the upstream
/// got.
async fn through(
    method: &str,
    path: &str,
    accept_encoding: Option<&str>,
    up: Upstream,
) -> (http::HeaderMap, String, Option<String>) {
    let (router, _cache) = testing::router_from(CONFIG).await;
    let router = Arc::new(router);
    let routed = router.route(path, None).expect("route");
    let seen = Arc::new(std::sync::Mutex::new(None));
    let seen_by_upstream = Arc::clone(&seen);
    let svc = RewriteUrlsLayer::new(Arc::clone(&router)).layer(tower::service_fn(
        move |req: Request<Full<Bytes>>| {
            *seen_by_upstream.lock().expect("lock") = req
                .headers()
                .get(header::ACCEPT_ENCODING)
                .map(|v| v.to_str().expect("ascii").to_string());
            let mut resp = Response::builder().status(up.status);
            for (k, v) in &up.headers {
                resp = resp.header(*k, *v);
            }
            resp = resp.header(header::CONTENT_LENGTH, up.body.len());
            let body: ProxyBody = Full::new(up.body.clone())
                .map_err(|never| match never {})
                .boxed_unsync();
            async move { Ok::<_, std::convert::Infallible>(resp.body(body).expect("answer")) }
        },
    ));
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "127.0.0.1:7070");
    if let Some(ae) = accept_encoding {
        req = req.header(header::ACCEPT_ENCODING, ae);
    }
    let mut req = req.body(Full::new(Bytes::new())).expect("request");
    req.extensions_mut().insert(routed);
    let resp = svc.oneshot(req).await.expect("answer");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    let upstream_ae = seen.lock().expect("lock").clone();
    (
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
        upstream_ae,
    )
}

const PACKUMENT: &str = r#"{"name":"a","versions":{"1.0.0":{"dist":{"tarball":"https://pkgs.dev.azure.com/org/_packaging/feed/npm/registry/a/-/a-1.0.0.tgz"}}},"other":"https://pkgs.dev.azure.com/org/_packaging/0f4c/pypi/download/a","foreign":"https://registry.npmjs.org/a/-/a-1.0.0.tgz"}"#;
const REWRITTEN: &str = r#"{"name":"a","versions":{"1.0.0":{"dist":{"tarball":"http://127.0.0.1:7070/npm/a/-/a-1.0.0.tgz"}}},"other":"http://127.0.0.1:7070/pkgs.dev.azure.com/org/_packaging/0f4c/pypi/download/a","foreign":"https://registry.npmjs.org/a/-/a-1.0.0.tgz"}"#;

#[tokio::test(start_paused = true)]
async fn a_feed_answer_points_its_urls_at_the_route_then_at_host_routes() {
    let (headers, body, _) = through("GET", "/npm/a", None, Upstream::json(PACKUMENT)).await;
    assert_eq!(body, REWRITTEN);
    assert!(
        headers.get(header::CONTENT_LENGTH).is_none(),
        "the length changed"
    );
}

fn gzip(text: &str) -> Bytes {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(text.as_bytes()).expect("gzip");
    Bytes::from(enc.finish().expect("gzip"))
}

#[tokio::test(start_paused = true)]
async fn a_gzip_answer_is_decoded_rewritten_and_sent_plain() {
    let up = Upstream {
        status: 200,
        headers: vec![
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        body: gzip(PACKUMENT),
    };
    let (headers, body, upstream_ae) =
        through("GET", "/npm/a", Some("gzip, deflate, br, zstd"), up).await;
    assert_eq!(body, REWRITTEN);
    assert!(headers.get(header::CONTENT_ENCODING).is_none());
    assert!(headers.get(header::CONTENT_LENGTH).is_none());
    assert_eq!(
        upstream_ae.as_deref(),
        Some("gzip, deflate, br"),
        "no coding the rewrite cannot decode is asked for"
    );
}

#[tokio::test(start_paused = true)]
async fn accept_encoding_is_left_alone_off_rewrite_routes_and_absent_stays_absent() {
    let (_, _, ae) = through(
        "GET",
        "/graph/v1.0/users",
        Some("zstd"),
        Upstream::json("{}"),
    )
    .await;
    assert_eq!(ae.as_deref(), Some("zstd"));
    let (_, _, ae) = through("GET", "/npm/a", None, Upstream::json("{}")).await;
    assert_eq!(ae, None);
    let (_, _, ae) = through("GET", "/npm/a", Some("zstd"), Upstream::json("{}")).await;
    assert_eq!(ae, None, "nothing decodable: identity");
}

#[tokio::test(start_paused = true)]
async fn answers_that_must_not_change_pass_as_they_are() {
    // A route with the rewrite off (Graph, turned off in the config).
    let next = r#"{"@odata.nextLink":"https://graph.microsoft.com/v1.0/users?$skiptoken=x"}"#;
    let (h, body, _) = through("GET", "/graph/v1.0/users", None, Upstream::json(next)).await;
    assert_eq!(body, next);
    assert_eq!(h[header::CONTENT_LENGTH], next.len().to_string().as_str());
    // Binary, partial, HEAD, and a coding that cannot be decoded.
    let cases = [
        ("GET", 200, "application/octet-stream", None),
        ("GET", 206, "application/json", None),
        ("HEAD", 200, "application/json", None),
        ("GET", 200, "application/json", Some("zstd")),
    ];
    for (method, status, ctype, encoding) in cases {
        let mut headers = vec![("content-type", ctype)];
        if let Some(e) = encoding {
            headers.push(("content-encoding", e));
        }
        let up = Upstream {
            status,
            headers,
            body: Bytes::from_static(PACKUMENT.as_bytes()),
        };
        let (h, body, _) = through(method, "/npm/a", None, up).await;
        assert_eq!(body, PACKUMENT, "{method} {status} {ctype} {encoding:?}");
        assert_eq!(
            h[header::CONTENT_LENGTH],
            PACKUMENT.len().to_string().as_str()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn azure_devops_resource_areas_are_rewritten_on_any_azure_devops_route() {
    let areas = r#"{"count":2,"value":[{"id":"79134c72","name":"core","locationUrl":"https://dev.azure.com/org/"},{"id":"efc2f575","name":"Release","locationUrl":"https:\/\/vsrm.dev.azure.com\/org\/"}]}"#;
    let want = r#"{"count":2,"value":[{"id":"79134c72","name":"core","locationUrl":"http://127.0.0.1:7070/ado/"},{"id":"efc2f575","name":"Release","locationUrl":"http:\/\/127.0.0.1:7070\/vsrm.dev.azure.com\/org\/"}]}"#;
    let (_, body, _) = through(
        "GET",
        "/ado/_apis/ResourceAreas",
        None,
        Upstream::json(areas),
    )
    .await;
    assert_eq!(body, want);
    // Any other Azure DevOps answer is passed on as it is (the route's rewrite is off).
    let (_, body, _) = through("GET", "/ado/_apis/projects", None, Upstream::json(areas)).await;
    assert_eq!(body, areas);
}

#[test]
fn resource_area_paths() {
    for yes in [
        "/org/_apis/ResourceAreas",
        "/org/_apis/resourceareas/",
        "/_apis/RESOURCEAREAS",
        "/org/_apis/ResourceAreas/79134c72-4a58-4b42-976c-04e7115f32bf",
    ] {
        assert!(is_resource_areas(yes), "{yes}");
    }
    for no in [
        "/org/_apis/projects",
        "/org/_apis/ResourceAreas/a/b",
        "/org/ResourceAreas",
        "/org/_apis",
        "/org/_apis/ResourceAreasX",
    ] {
        assert!(!is_resource_areas(no), "{no}");
    }
}

#[test]
fn textual_types() {
    for yes in [
        "application/json",
        "application/vnd.npm.install-v1+json",
        "application/vnd.pypi.simple.v1+html",
        "text/html",
        "application/xml",
        "text/xml",
        "application/atom+xml",
    ] {
        assert!(is_textual(yes), "{yes}");
    }
    for no in [
        "application/octet-stream",
        "application/gzip",
        "text/plain",
        "image/svg",
    ] {
        assert!(!is_textual(no), "{no}");
    }
}
