//! A fake upstream API (think Azure DevOps or Defender) that insists on a valid Entra bearer token.
//!
//! Every request's `Authorization: Bearer <jwt>` is verified against [`super::TEST_PUB_PEM`]
//! (RS256, expected `aud`, `exp` in the future with no leeway, `nbf` not in the future). Requests
//! without a valid token get a 401 with `WWW-Authenticate`. Valid ones are routed:
//!
//! - `GET /download/{n}`: 200, exactly `n` bytes of [`super::pattern_byte`], streamed lazily in
//!   64 KiB chunks, no `Content-Length`.
//! - `POST|PUT /upload`: reads the body frame by frame, answers `{"len": n, "fnv": "<16 hex>"}`.
//! - `/redirect`: 302 to `{url}/echo/after-redirect?x=1`; `/redirect-relative`: 302 to
//!   `/echo/relative`.
//! - `/status/{code}`: empty answer with that status.
//! - anything else: 200 JSON echo of method, path, headers and body length, with `x-upstream: fake`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Map, Value};

use super::{empty, fnv1a, full, pattern_byte, AbortOnDrop, Body, FNV_OFFSET};

/// `WWW-Authenticate` value of the fake's 401 answers.
pub const WWW_AUTHENTICATE: &str =
    r#"Bearer authorization_uri="https://login.microsoftonline.com/common""#;
/// Chunk size of `/download/{n}` bodies.
pub const DOWNLOAD_CHUNK: u64 = 64 * 1024;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    /// Bytes of request body read (the body is always drained).
    pub body_len: u64,
    pub token_valid: bool,
    /// Why the token was refused, when it was.
    pub token_error: Option<String>,
}

struct State {
    base_url: String,
    audience: String,
    key: DecodingKey,
    requests: Mutex<Vec<RecordedRequest>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fake upstream server; stops when dropped.
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    _server: AbortOnDrop,
}

impl FakeUpstream {
    /// Starts a fake API accepting tokens whose `aud` is `expected_audience`.
    pub async fn start(expected_audience: &str) -> FakeUpstream {
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            base_url: format!("http://{addr}"),
            audience: expected_audience.to_string(),
            key: DecodingKey::from_rsa_pem(super::TEST_PUB_PEM.as_bytes()).expect("test RSA pub"),
            requests: Mutex::new(Vec::new()),
        });
        let handler_state = state.clone();
        let server = super::serve(listener, move |req| handle(handler_state.clone(), req));
        FakeUpstream {
            addr,
            state,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        self.state.base_url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received, in the order they completed reading their body.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// Requests that arrived without a valid token.
    pub fn rejected(&self) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| !r.token_valid)
            .count()
    }

    /// Requests that arrived with a valid token.
    pub fn accepted(&self) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.token_valid)
            .count()
    }
}

/// Checks the request's bearer token; `Err` carries the reason.
fn verify(state: &State, headers: &HeaderMap) -> Result<(), String> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| "missing Authorization header".to_string())?;
    let value = value
        .to_str()
        .map_err(|_| "Authorization header is not ASCII".to_string())?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| "Authorization header has no scheme".to_string())?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(format!("Authorization scheme is {scheme:?}, not Bearer"));
    }
    let mut validation = Validation::new(Algorithm::RS256);
    validation.leeway = 0;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_audience(&[state.audience.as_str()]);
    validation.set_required_spec_claims(&["exp", "aud"]);
    jsonwebtoken::decode::<Value>(token.trim(), &state.key, &validation)
        .map(|_| ())
        .map_err(|e| format!("invalid token: {e}"))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header("x-upstream", "fake")
        .body(full(body.to_string()))
        .expect("response")
}

fn status_only(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("x-upstream", "fake")
        .body(empty())
        .expect("response")
}

/// Reads the body to its end, frame by frame; returns (bytes, FNV-1a).
async fn drain(mut body: Incoming) -> (u64, u64) {
    let mut len = 0u64;
    let mut hash = FNV_OFFSET;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                    hash = fnv1a(hash, data);
                }
            }
            Err(_) => break,
        }
    }
    (len, hash)
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    let path = parts.uri.path().to_string();
    let verdict = verify(&state, &parts.headers);
    let (body_len, fnv) = drain(body).await;
    lock(&state.requests).push(RecordedRequest {
        method: parts.method.clone(),
        path_and_query: path_and_query.clone(),
        headers: parts.headers.clone(),
        body_len,
        token_valid: verdict.is_ok(),
        token_error: verdict.as_ref().err().cloned(),
    });

    if let Err(reason) = verdict {
        let mut resp = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({
                "error": "invalid_token",
                "message": format!("TF400813: The user is not authorized to access this resource. ({reason})"),
            }),
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(WWW_AUTHENTICATE),
        );
        return resp;
    }

    if let Some(n) = path.strip_prefix("/download/") {
        if parts.method == Method::GET {
            return match n.parse::<u64>() {
                Ok(total) => Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header("x-upstream", "fake")
                    .body(PatternBody::new(total).boxed())
                    .expect("response"),
                Err(_) => json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "bad_request", "message": "download size is not a number"}),
                ),
            };
        }
    }
    if path == "/upload" && (parts.method == Method::POST || parts.method == Method::PUT) {
        return json_response(
            StatusCode::OK,
            &json!({"len": body_len, "fnv": format!("{fnv:016x}")}),
        );
    }
    if path == "/redirect" {
        return redirect(&format!("{}/echo/after-redirect?x=1", state.base_url));
    }
    if path == "/redirect-relative" {
        return redirect("/echo/relative");
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => status_only(status),
            None => json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "bad_request", "message": "not a status code"}),
            ),
        };
    }

    let mut headers = Map::new();
    for name in parts.headers.keys() {
        let joined = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        headers.insert(name.as_str().to_ascii_lowercase(), Value::String(joined));
    }
    json_response(
        StatusCode::OK,
        &json!({
            "method": parts.method.as_str(),
            "path": path_and_query,
            "headers": headers,
            "body_len": body_len,
        }),
    )
}

fn redirect(location: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, location)
        .header("x-upstream", "fake")
        .body(empty())
        .expect("response")
}

/// Lazily generated body of `total` pattern bytes, in [`DOWNLOAD_CHUNK`] frames, of unknown size
/// (so hyper sends it chunked, without `Content-Length`).
pub struct PatternBody {
    pos: u64,
    total: u64,
}

impl PatternBody {
    pub fn new(total: u64) -> Self {
        PatternBody { pos: 0, total }
    }
}

impl HttpBody for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.pos >= self.total {
            return Poll::Ready(None);
        }
        let end = (self.pos + DOWNLOAD_CHUNK).min(self.total);
        let chunk: Vec<u8> = (self.pos..end).map(pattern_byte).collect();
        self.pos = end;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}
