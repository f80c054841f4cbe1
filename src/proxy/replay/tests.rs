use super::*;
use crate::proxy::testing;
use http_body_util::Full;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::ServiceExt;

/// A stand-in upstream: refuses every token it has not seen acquired after a refusal with
/// `refused`, counts what it received.
fn upstream(
    refused: u16,
    seen: Arc<AtomicUsize>,
) -> impl Service<
    Request<ProxyBody>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: Request<ProxyBody>| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let body = req.into_body().collect().await?.to_bytes();
            assert_eq!(&body[..], b"{\"a\":1}", "the body arrives whole every time");
            let status = if n == 0 { refused } else { 200 };
            let mut resp = Response::builder().status(status);
            if status == 200 && refused == 200 {
                resp = resp.header(header::CONTENT_TYPE, "text/html");
            }
            Ok::<_, BoxError>(resp.body(Full::new(Bytes::new()))?)
        }
    })
}

async fn request(
    path: &str,
) -> (
    Request<Full<Bytes>>,
    Arc<testing::Counted>,
    Arc<crate::token::TokenCache>,
) {
    let (router, counted, cache) = testing::router_counted().await;
    let routed = router.route(path, None).expect("route");
    let token = routed.target.entry.get().await.expect("token");
    let mut req = Request::builder()
        .method("POST")
        .uri(format!("https://dev.azure.com{path}"))
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
        .expect("request");
    let mut routed = routed;
    routed.token = Some(routed.target.token_slot.copy_of(&token));
    req.extensions_mut().insert(routed);
    (req, counted, cache)
}

#[tokio::test(start_paused = true)]
async fn a_401_is_replayed_once_with_a_fresh_token() {
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
    let seen = Arc::new(AtomicUsize::new(0));
    let layer = ReplayLayer::new(Arc::clone(&metrics), Duration::from_secs(100));
    let (req, counted, _cache) = request("/ado/_apis/wit/workitems").await;
    let resp = layer
        .layer(upstream(401, Arc::clone(&seen)))
        .oneshot(req)
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(seen.load(Ordering::SeqCst), 2, "sent twice");
    assert_eq!(counted.acquisitions(), 2, "one fresh token");
    assert!(metrics
        .render()
        .contains(r#"patless_upstream_auth_retries_total{route="/ado"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn a_bodiless_request_is_sent_inline_and_replayed_the_same_way() {
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
    let seen = Arc::new(AtomicUsize::new(0));
    let layer = ReplayLayer::new(Arc::clone(&metrics), Duration::from_secs(100));
    let (router, counted, _cache) = testing::router_counted().await;
    let mut routed = router.route("/ado/_apis/projects", None).expect("route");
    let token = routed.target.entry.get().await.expect("token");
    routed.token = Some(routed.target.token_slot.copy_of(&token));
    let first_token = routed.token.as_ref().map(|t| t.header.clone());
    let mut req = Request::builder()
        .method("GET")
        .uri("https://dev.azure.com/contoso/_apis/projects")
        .header("x-kept", "1")
        // As the rewrite above sets it.
        .header(header::AUTHORIZATION, first_token.clone().expect("token"))
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    req.extensions_mut().insert(routed);
    let upstream = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |req: Request<ProxyBody>| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let first_token = first_token.clone();
            async move {
                assert_eq!(req.headers()["x-kept"], "1", "the replay keeps the head");
                let auth = req.headers().get(header::AUTHORIZATION).cloned();
                assert_eq!(auth == first_token, n == 0, "the replay has a fresh token");
                let status = if n == 0 { 401 } else { 200 };
                Ok::<_, BoxError>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::new()))?,
                )
            }
        })
    };
    let resp = layer.layer(upstream).oneshot(req).await.expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(seen.load(Ordering::SeqCst), 2, "sent twice");
    assert_eq!(counted.acquisitions(), 2, "one fresh token");
    assert!(metrics
        .render()
        .contains(r#"patless_upstream_auth_retries_total{route="/ado"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn a_2xx_sign_in_page_is_passed_on_never_replayed() {
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
    let seen = Arc::new(AtomicUsize::new(0));
    let layer = ReplayLayer::new(metrics, Duration::from_secs(100));
    let (req, counted, _cache) = request("/ado/_apis/wit/workitems").await;
    let resp = layer
        .layer(upstream(200, Arc::clone(&seen)))
        .oneshot(req)
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the POST went once");
    // The token is replaced in the background for the next request.
    for _ in 0..100 {
        if counted.acquisitions() == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(counted.acquisitions(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_below_is_a_504_counted_under_the_route() {
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
    let layer = ReplayLayer::new(Arc::clone(&metrics), Duration::from_secs(3));
    let (req, _counted, _cache) = request("/ado/x").await;
    let slow = tower::ServiceBuilder::new()
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(3)))
        .service(tower::service_fn(|_req: Request<ProxyBody>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::new())))
        }));
    let refused = layer.layer(slow).oneshot(req).await;
    match refused {
        Err(Rejection {
            error: ProxyError::UpstreamTimeout { secs: 3, .. },
            route: Some(_),
            ..
        }) => {}
        other => panic!("expected a 504, got {other:?}"),
    }
    assert!(metrics
        .render()
        .contains(r#"patless_upstream_errors_total{kind="timeout",route="/ado"} 1"#));
}
