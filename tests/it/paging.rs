//! Absolute URLs in answers stay behind patless (docs/routes.md, "Absolute URLs in answers"):
//! a script that pages through Graph's `@odata.nextLink`, Defender's, or ARM's `nextLink` keeps
//! calling patless, never the service; compressed pages are decoded for the rewrite; a redirect to
//! another host (a feed's download from blob storage) passes untouched and is never followed.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use jsonwebtoken::DecodingKey;
use serde_json::{json, Value};

use crate::support::entra::FakeEntra;
use crate::support::patless::{bot_config, route_toml, Patless};
use crate::support::upstream::{test_decoding_key, verify_bearer, Identity};
use crate::support::{self, full, lock, AbortOnDrop, Body};

const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";
const PAGES: u64 = 3;

/// One API that pages with absolute URLs to itself: `/v1.0/users` (Graph, `@odata.nextLink`,
/// `$skiptoken`), `/api/machines` (Defender, `@odata.nextLink`, `$skip`), `/subscriptions/s/
/// resourcegroups` (ARM, `nextLink`); `/download` answers `303` to another host.
struct PagedApi {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    _server: AbortOnDrop,
}

/// What the API saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path_and_query: String,
    /// The token verified (signature, audience, expiry), or why not.
    verified: Result<(), String>,
}

struct ApiState {
    base: String,
    key: DecodingKey,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl PagedApi {
    async fn start() -> PagedApi {
        let listener = support::bind_loopback().await;
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(ApiState {
            base: base.clone(),
            key: test_decoding_key(),
            seen: Arc::clone(&seen),
        });
        let server = support::serve(listener, move |req| answer(Arc::clone(&state), req));
        PagedApi {
            base,
            seen,
            _server: server,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }
}

/// `{name}={n}` from the query, 0 when absent.
fn page_number(query: &str, name: &str) -> u64 {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn answer(state: Arc<ApiState>, req: Request<Incoming>) -> Response<Body> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let verified = verify_bearer(
        req.headers(),
        &state.key,
        GRAPH_AUDIENCE,
        &Identity::default_app(),
    )
    .map(|_| ());
    lock(&state.seen).push(Seen {
        path_and_query: path_and_query.clone(),
        verified: verified.clone(),
    });
    if verified.is_err() {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .body(full(r#"{"error":{"code":"InvalidAuthenticationToken"}}"#))
            .expect("answer");
    }
    let query = req.uri().query().unwrap_or_default();
    let path = req.uri().path();
    let base = &state.base;
    let (items, next) = match path {
        "/v1.0/users" => {
            let n = page_number(query, "$skiptoken");
            let next = format!("{base}/v1.0/users?$skiptoken={}", n + 1);
            (
                json!([{ "id": format!("user-{n}") }]),
                ("@odata.nextLink", n, next),
            )
        }
        "/api/machines" => {
            let n = page_number(query, "$skip");
            let next = format!("{base}/api/machines?$skip={}", n + 1);
            (
                json!([{ "id": format!("machine-{n}") }]),
                ("@odata.nextLink", n, next),
            )
        }
        "/subscriptions/s/resourcegroups" => {
            let n = page_number(query, "$skiptoken");
            let next = format!(
                "{base}/subscriptions/s/resourcegroups?api-version=2021-04-01&$skiptoken={}",
                n + 1
            );
            (
                json!([{ "name": format!("rg-{n}") }]),
                ("nextLink", n, next),
            )
        }
        "/download" => {
            return Response::builder()
                .status(StatusCode::SEE_OTHER)
                .header(
                    header::LOCATION,
                    "http://blob.invalid/container/a-1.0.0.tgz?sv=2021&sig=c2lnbmF0dXJl",
                )
                .body(full(""))
                .expect("answer");
        }
        _ => {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(full("{}"))
                .expect("answer")
        }
    };
    let (link_name, n, next) = next;
    let mut page =
        json!({ "@odata.context": format!("{base}/v1.0/$metadata#users"), "value": items });
    if n + 1 < PAGES {
        page[link_name] = Value::String(next);
    }
    let text = page.to_string();
    let gzip_ok = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let builder = Response::builder().header(
        header::CONTENT_TYPE,
        "application/json; odata.metadata=minimal",
    );
    if gzip_ok {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).expect("gzip");
        builder
            .header(header::CONTENT_ENCODING, "gzip")
            .body(full(enc.finish().expect("gzip")))
            .expect("answer")
    } else {
        builder.body(full(text)).expect("answer")
    }
}

/// patless with the route `/graph` → the paged API, rewriting its URLs.
async fn patless(entra: &FakeEntra, api: &PagedApi) -> Patless {
    let mut toml = bot_config(&entra.authority(), &[], "", "");
    toml.push_str(&route_toml("/graph", &api.base, "bot", GRAPH_SCOPE));
    toml.push_str("rewrite_urls = true\n");
    Patless::start(&toml).await
}

/// Follows `link` from `first` through patless, as a paging script does: the pages' items, and
/// every link it was given.
async fn page_through(first: String, link: &str, accept_gzip: bool) -> (Vec<String>, Vec<String>) {
    let client = support::http_client();
    let (mut items, mut links) = (Vec::new(), Vec::new());
    let mut url = Some(first);
    while let Some(u) = url.take() {
        let mut req = client.get(&u);
        if accept_gzip {
            req = req.header(header::ACCEPT_ENCODING, "gzip");
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("GET {u}: {e}"));
        assert_eq!(r.status(), 200, "GET {u}");
        assert!(
            r.headers().get(header::CONTENT_ENCODING).is_none(),
            "the rewritten page is sent plain"
        );
        let page: Value = r.json().await.expect("JSON page");
        for item in page["value"].as_array().expect("value") {
            let id = item.get("id").or_else(|| item.get("name")).expect("id");
            items.push(id.as_str().expect("string").to_string());
        }
        if let Some(next) = page[link].as_str() {
            links.push(next.to_string());
            url = Some(next.to_string());
        }
        assert!(
            items.len() <= PAGES as usize,
            "paging does not end: {items:?}"
        );
    }
    (items, links)
}

#[tokio::test]
async fn a_script_pages_through_graph_defender_and_arm_without_leaving_patless() {
    let entra = FakeEntra::start().await;
    let api = PagedApi::start().await;
    let p = patless(&entra, &api).await;
    let cases = [
        ("/graph/v1.0/users", "@odata.nextLink", "user", false),
        ("/graph/api/machines", "@odata.nextLink", "machine", true),
        (
            "/graph/subscriptions/s/resourcegroups?api-version=2021-04-01",
            "nextLink",
            "rg",
            false,
        ),
    ];
    for (first, link, item, gzip) in cases {
        let (items, links) = page_through(p.url(first), link, gzip).await;
        let want: Vec<String> = (0..PAGES).map(|n| format!("{item}-{n}")).collect();
        assert_eq!(items, want, "{first}: every page, in order");
        assert_eq!(links.len(), PAGES as usize - 1);
        for l in &links {
            assert!(
                l.starts_with(&p.url("/graph/")),
                "{first}: the next link points at patless: {l}"
            );
        }
    }
    let seen = api.seen();
    assert_eq!(seen.len(), 3 * PAGES as usize, "{seen:?}");
    for s in &seen {
        assert_eq!(
            s.verified,
            Ok(()),
            "{s:?}: every page came with a valid token"
        );
    }
    assert!(
        seen.iter()
            .any(|s| s.path_and_query == "/v1.0/users?$skiptoken=2"),
        "{seen:?}"
    );
    assert_eq!(entra.token_requests(), 1);
    p.stop().await;
}

#[tokio::test]
async fn a_redirect_to_another_host_passes_untouched_and_is_not_followed() {
    let entra = FakeEntra::start().await;
    let api = PagedApi::start().await;
    let p = patless(&entra, &api).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = client
        .get(p.url("/graph/download"))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()[header::LOCATION],
        "http://blob.invalid/container/a-1.0.0.tgz?sv=2021&sig=c2lnbmF0dXJl",
        "a signed URL to another host is passed on as it is"
    );
    assert_eq!(api.seen().len(), 1, "patless did not follow it");
    p.stop().await;
}
