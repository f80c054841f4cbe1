use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use tower::{Layer, Service, ServiceExt};

use super::{SourceError, TokenLayer, TokenLayerError, TokenService, TokenSource};
use crate::credentials::{AccessToken, BoxFuture, Credential, CredentialError, ErrorClass};
use crate::secret::Secret;

const SCOPE: &str = "api://test/.default";
/// What the fake credential hands out, numbered: `tok-SECRET-1`, …
const TOKEN_PREFIX: &str = "tok-SECRET-";

/// Counts acquisitions; each takes `delay` (paused time) and succeeds, or fails when `fail`.
#[derive(Debug)]
struct Fake {
    acquisitions: AtomicUsize,
    delay: Duration,
    lifetime: Duration,
    fail: bool,
}

impl Fake {
    fn new(lifetime: Duration, fail: bool) -> Arc<Fake> {
        Arc::new(Fake {
            acquisitions: AtomicUsize::new(0),
            delay: Duration::from_millis(200),
            lifetime,
            fail,
        })
    }

    fn ok() -> Arc<Fake> {
        Fake::new(Duration::from_secs(3600), false)
    }

    fn failing() -> Arc<Fake> {
        Fake::new(Duration::from_secs(3600), true)
    }

    fn count(&self) -> usize {
        self.acquisitions.load(Ordering::SeqCst)
    }
}

impl Credential for Fake {
    fn acquire<'a>(
        &'a self,
        _scope: &'a str,
        _claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        Box::pin(async move {
            let n = self.acquisitions.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.delay).await;
            if self.fail {
                return Err(CredentialError::new(
                    ErrorClass::InvalidClient,
                    "AADSTS7000215: invalid client secret",
                ));
            }
            Ok(AccessToken {
                token: Secret::new(format!("{TOKEN_PREFIX}{n}")),
                expires_in: self.lifetime,
                refresh_in: None,
            })
        })
    }
}

/// The `Authorization` values the inner service saw, one per request (`None`: no header).
type Seen = Arc<Mutex<Vec<Vec<HeaderValue>>>>;

/// A `service_fn` that records every request's `Authorization` values and answers `200`.
fn recorder() -> (
    Seen,
    impl Service<
            Request<String>,
            Response = http::StatusCode,
            Error = Infallible,
            Future = impl std::future::Future<Output = Result<http::StatusCode, Infallible>>
                         + Send
                         + 'static,
        > + Clone
        + Send
        + 'static,
) {
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let svc = tower::service_fn(move |req: Request<String>| {
        let values = req
            .headers()
            .get_all(AUTHORIZATION)
            .iter()
            .cloned()
            .collect();
        if let Ok(mut log) = log.lock() {
            log.push(values);
        }
        async { Ok::<_, Infallible>(http::StatusCode::OK) }
    });
    (seen, svc)
}

fn seen(seen: &Seen) -> Vec<Vec<HeaderValue>> {
    seen.lock().map(|s| s.clone()).unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn the_header_is_set_and_sensitive() {
    let fake = Fake::ok();
    let source = TokenSource::from_credential(fake.clone(), SCOPE);
    let (log, inner) = recorder();
    let svc = TokenLayer::new(source).layer(inner);
    let status = svc.oneshot(Request::new(String::new())).await;
    assert!(matches!(status, Ok(http::StatusCode::OK)));
    let log = seen(&log);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].len(), 1);
    assert_eq!(log[0][0], "Bearer tok-SECRET-1");
    assert!(log[0][0].is_sensitive());
    assert_eq!(fake.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_client_sent_authorization_is_replaced() {
    let source = TokenSource::from_credential(Fake::ok(), SCOPE);
    let (log, inner) = recorder();
    let svc = TokenLayer::new(source).layer(inner);
    let mut req = Request::new(String::new());
    req.headers_mut().append(
        AUTHORIZATION,
        HeaderValue::from_static("Basic dXNlcjpwYXQ="),
    );
    req.headers_mut().append(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer from-the-client"),
    );
    assert!(svc.oneshot(req).await.is_ok());
    let log = seen(&log);
    assert_eq!(log[0].len(), 1, "exactly one Authorization: {:?}", log[0]);
    assert_eq!(log[0][0], "Bearer tok-SECRET-1");
    assert!(log[0][0].is_sensitive());
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_calls_share_one_acquisition() {
    let fake = Fake::ok();
    let source = TokenSource::from_credential(fake.clone(), SCOPE);
    let (log, inner) = recorder();
    let svc = TokenLayer::new(source).layer(inner);
    let calls = (0..50).map(|_| svc.clone().oneshot(Request::new(String::new())));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        fake.count(),
        1,
        "single-flight: one acquisition for 50 calls"
    );
    let log = seen(&log);
    assert_eq!(log.len(), 50);
    assert!(log
        .iter()
        .all(|v| v.len() == 1 && v[0] == "Bearer tok-SECRET-1"));
}

#[tokio::test(start_paused = true)]
async fn a_cached_token_takes_the_fast_path() {
    let source = TokenSource::from_credential(Fake::ok(), SCOPE);
    let (log, inner) = recorder();
    let mut svc = TokenLayer::new(source.clone()).layer(inner);
    // Nothing cached yet: the first call waits.
    let first = svc.ready().await.unwrap().call(Request::new(String::new()));
    assert!(first.waits_for_token());
    assert!(first.await.is_ok());
    // Cached now: the next call is the inner future itself, nothing boxed.
    let second = svc.ready().await.unwrap().call(Request::new(String::new()));
    assert!(!second.waits_for_token());
    assert!(second.await.is_ok());
    assert_eq!(seen(&log).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_credential_error_is_a_token_error_and_nothing_is_sent() {
    let fake = Fake::failing();
    let source = TokenSource::from_credential(fake.clone(), SCOPE);
    let (log, inner) = recorder();
    let svc = TokenLayer::new(source).layer(inner);
    let result = svc.oneshot(Request::new(String::new())).await;
    let Err(err) = result else {
        panic!("a request without a token must not succeed")
    };
    assert!(matches!(err, TokenLayerError::Token(_)), "{err:?}");
    assert!(err
        .retry_after()
        .is_some_and(|d| d >= Duration::from_secs(1)));
    let text = err.to_string();
    assert!(text.contains("request not sent"), "{text}");
    assert!(text.contains("AADSTS7000215"), "{text}");
    assert!(seen(&log).is_empty(), "the inner service was called");
    assert_eq!(fake.count(), 1);
}

/// Ready only once `open` is set; its calls fail.
#[derive(Clone)]
struct Gate {
    open: Arc<std::sync::atomic::AtomicBool>,
    polled: Arc<AtomicUsize>,
}

impl Service<Request<String>> for Gate {
    type Response = ();
    type Error = &'static str;
    type Future = std::future::Ready<Result<(), &'static str>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.polled.fetch_add(1, Ordering::SeqCst);
        if self.open.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn call(&mut self, _req: Request<String>) -> Self::Future {
        std::future::ready(Err("upstream refused"))
    }
}

#[tokio::test(start_paused = true)]
async fn poll_ready_is_the_inner_services() {
    let gate = Gate {
        open: Arc::default(),
        polled: Arc::default(),
    };
    let mut svc = TokenService::new(
        gate.clone(),
        TokenSource::from_credential(Fake::ok(), SCOPE),
    );
    let poll = std::future::poll_fn(|cx| Poll::Ready(svc.poll_ready(cx))).await;
    assert!(poll.is_pending(), "the inner service is not ready");
    assert_eq!(gate.polled.load(Ordering::SeqCst), 1);
    gate.open.store(true, Ordering::SeqCst);
    let poll = std::future::poll_fn(|cx| Poll::Ready(svc.poll_ready(cx))).await;
    assert!(matches!(poll, Poll::Ready(Ok(()))));
    // The inner service's own errors come back as `Inner`.
    let result = svc.call(Request::new(String::new())).await;
    assert!(matches!(
        result,
        Err(TokenLayerError::Inner("upstream refused"))
    ));
}

#[tokio::test(start_paused = true)]
async fn the_refresher_starts_at_once_and_stops_with_the_last_clone() {
    let fake = Fake::new(Duration::from_secs(600), false);
    let source = TokenSource::from_credential(fake.clone(), SCOPE);
    let clone = source.clone();
    // No request yet: the refresher acquires on its own.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fake.count(), 1);
    assert!(source.status().valid_now);
    // And renews before expiry (a 10-minute token is refreshed after 5 minutes).
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let renewed = fake.count();
    assert!(renewed >= 6, "{renewed} acquisitions in an hour");
    let token = clone.token().await;
    assert!(token.is_ok_and(|t| t.is_usable()));
    drop(source);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(
        fake.count() > renewed,
        "one clone is left: still refreshing"
    );
    let before = fake.count();
    drop(clone);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        fake.count(),
        before,
        "refreshed after the last clone was dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn token_gives_the_cached_token() {
    let fake = Fake::ok();
    let source = TokenSource::from_credential(fake.clone(), SCOPE);
    let a = source.token().await;
    let b = source.token().await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.secret().expose(), "tok-SECRET-1");
    assert_eq!(a.header, "Bearer tok-SECRET-1");
    assert_eq!(source.profile(), "custom");
    assert_eq!(source.scope(), SCOPE);
    assert_eq!(fake.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn debug_never_shows_the_token() {
    let source = TokenSource::from_credential(Fake::ok(), SCOPE);
    let layer = TokenLayer::new(source.clone());
    let (_, inner) = recorder();
    let svc = layer.layer(inner);
    let token = source.token().await;
    assert!(token.is_ok());
    let mut req = Request::new(String::new());
    if let Some(t) = source.usable() {
        super::authorize(&mut req, &t);
    }
    let texts = [
        format!("{source:?}"),
        format!("{layer:?}"),
        format!("{:?}", svc.source()),
        format!("{token:?}"),
        format!("{req:?}"),
        format!(
            "{:?}",
            TokenLayerError::<Infallible>::Token(crate::token::TokenUnavailable {
                message: "m".into(),
                retry_after: Duration::from_secs(1),
                class: None,
            })
        ),
    ];
    for text in &texts {
        assert!(!text.contains(TOKEN_PREFIX), "{text}");
    }
    assert!(texts[0].contains("token_cached: true"), "{}", texts[0]);
}

#[test]
fn made_outside_a_runtime_it_starts_on_the_first_request() {
    let fake = Fake::ok();
    let source = TokenSource::from_credential(fake.clone(), SCOPE);
    assert_eq!(fake.count(), 0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let token = rt.block_on(source.token());
    assert!(token.is_ok());
    assert_eq!(fake.count(), 1);
}

/// A config file with a `client_secret` profile whose secret variable is never set: the
/// credential is built, and its acquisitions fail before any network use.
fn config_file(routes: &str) -> tempfile::NamedTempFile {
    let text = format!(
        r#"
[profiles.bot]
kind = "client_secret"
tenant_id = "00000000-0000-0000-0000-000000000001"
client_id = "00000000-0000-0000-0000-000000000002"
client_secret = {{ env = "PATLESS_LAYER_TEST_SECRET_NEVER_SET" }}

{routes}
"#
    );
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

const GRAPH_ROUTE: &str = r#"
[[routes]]
prefix = "/graph"
upstream = "https://graph.microsoft.com"
profile = "bot"
scope = "https://graph.microsoft.com/.default"
"#;

const ARM_ROUTE: &str = r#"
[[routes]]
prefix = "/arm"
upstream = "https://management.azure.com"
profile = "bot"
scope = "https://management.azure.com/.default"
"#;

#[tokio::test]
async fn from_config_file_takes_the_scope_of_the_profiles_route() {
    let file = config_file(GRAPH_ROUTE);
    let source = TokenSource::from_config_file(file.path(), "bot", None).unwrap();
    assert_eq!(source.profile(), "bot");
    assert_eq!(source.scope(), "https://graph.microsoft.com/.default");
    // The credential is the config's: its secret variable is not set, which the error says.
    let err = source.token().await.map(|_| ()).unwrap_err();
    assert!(
        err.message.contains("PATLESS_LAYER_TEST_SECRET_NEVER_SET"),
        "{}",
        err.message
    );

    let given = TokenSource::from_config_file(file.path(), "bot", Some("api://x/.default"));
    assert!(given.is_ok_and(|s| s.scope() == "api://x/.default"));
}

#[tokio::test]
async fn from_config_file_explains_what_is_missing() {
    let file = config_file(GRAPH_ROUTE);
    let unknown = TokenSource::from_config_file(file.path(), "nobody", None);
    assert!(
        matches!(&unknown, Err(SourceError::UnknownProfile { known, .. }) if known.contains(&"bot".to_string())),
        "{unknown:?}"
    );

    let file = config_file("");
    let none = TokenSource::from_config_file(file.path(), "bot", None);
    let Err(err) = none else {
        panic!("no route, no scope")
    };
    assert!(matches!(err, SourceError::NoScope { .. }), "{err:?}");
    assert!(err.to_string().contains("pass a scope"), "{err}");

    let file = config_file(&format!("{GRAPH_ROUTE}{ARM_ROUTE}"));
    let several = TokenSource::from_config_file(file.path(), "bot", None);
    let Err(err) = several else {
        panic!("two scopes")
    };
    assert!(matches!(err, SourceError::AmbiguousScope { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("https://management.azure.com/.default"),
        "{text}"
    );

    let missing = TokenSource::from_config_file("/nonexistent/patless.toml".as_ref(), "bot", None);
    assert!(
        matches!(missing, Err(SourceError::Config(_))),
        "{missing:?}"
    );
}

#[tokio::test]
async fn from_profile_builds_the_profiles_credential() {
    let profile = crate::config::Profile {
        name: "code".into(),
        authority_host: url::Url::parse(crate::hosts::PUBLIC_AUTHORITY).unwrap(),
        kind: crate::config::ProfileKind::ClientSecret {
            tenant_id: "00000000-0000-0000-0000-000000000001".into(),
            client_id: "00000000-0000-0000-0000-000000000002".into(),
            client_secret: crate::config::SecretSource::Env(
                "PATLESS_LAYER_TEST_SECRET_NEVER_SET".into(),
            ),
        },
        client_capabilities: Vec::new(),
    };
    let source = TokenSource::from_profile(&profile, SCOPE).unwrap();
    assert_eq!(source.profile(), "code");
    let err = source.token().await.map(|_| ()).unwrap_err();
    assert_eq!(err.class, Some(ErrorClass::NotConfigured));
}

#[tokio::test]
async fn wraps_hyper_utils_client() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    // A local upstream that answers with the Authorization header it received.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let echo = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
            let auth = req.headers().get(AUTHORIZATION).cloned();
            let body = auth.map(|v| v.as_bytes().to_vec()).unwrap_or_default();
            Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from(body),
            )))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), echo)
            .await;
    });

    let fake = Fake::ok();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let svc = tower::ServiceBuilder::new()
        .layer(TokenLayer::new(TokenSource::from_credential(
            fake.clone(),
            SCOPE,
        )))
        .service(client);
    let req = Request::get(format!("http://{addr}/"))
        .header(AUTHORIZATION, "Bearer from-the-client")
        .body(Empty::new())
        .unwrap();
    let response = svc.oneshot(req).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"Bearer tok-SECRET-1");
    assert_eq!(fake.count(), 1);
}
