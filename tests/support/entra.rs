//! A fake Microsoft Entra token endpoint (client-credentials grant with a client secret).
//!
//! `POST {authority}/{TENANT}/oauth2/v2.0/token` answers like Entra: RS256 access tokens signed
//! with [`super::TEST_KEY_PEM`] (kid `test-key`), or Entra-shaped JSON errors. Faults can be
//! injected, one-shot ([`FakeEntra::push_fault`]) or sticky ([`FakeEntra::set_fault`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::distr::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};

use super::{full, AbortOnDrop, Body};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "11111111-1111-1111-1111-111111111111";
/// The only client secret the fake accepts.
pub const CLIENT_SECRET: &str = "s3cr3t-VALUE-never-logged";
/// `oid` claim of every issued token (the service principal's object id).
pub const OBJECT_ID: &str = "22222222-2222-2222-2222-222222222222";
/// `kid` header of every issued token.
pub const KEY_ID: &str = "test-key";
/// Azure DevOps audience (scope `…/.default`).
pub const ADO_AUDIENCE: &str = "499b84ac-1321-427f-aa17-267ca6975798";
pub const ADO_SCOPE: &str = "499b84ac-1321-427f-aa17-267ca6975798/.default";
/// Defender XDR audience (scope `…/.default`).
pub const DEFENDER_AUDIENCE: &str = "https://api.security.microsoft.com";
pub const DEFENDER_SCOPE: &str = "https://api.security.microsoft.com/.default";
/// Default `expires_in` of issued tokens.
pub const DEFAULT_LIFETIME_SECS: u64 = 3599;

/// A failure the fake answers with instead of (or before) a normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 401 `invalid_client` / AADSTS7000215, as for a wrong secret.
    InvalidClient,
    /// 429 with `Retry-After: N` and a `temporarily_unavailable` error body.
    Throttled { retry_after_secs: u64 },
    /// 500 with a `server_error` error body.
    ServerError,
    /// Sleep (`tokio::time::sleep`) this long, then answer normally.
    Delay(Duration),
    /// 200 `application/json` with the truncated body `{"access_token": `.
    MalformedJson,
    /// 502 `text/html` page (as from a broken intermediary).
    HtmlPage,
}

/// One request to the token endpoint, as received.
#[derive(Debug, Clone)]
pub struct TokenRequestRecord {
    pub path: String,
    pub form: HashMap<String, String>,
    pub headers: HeaderMap,
}

struct State {
    token_requests: AtomicUsize,
    requests: Mutex<Vec<TokenRequestRecord>>,
    issued: Mutex<Vec<String>>,
    lifetime: AtomicU64,
    refresh_in: Mutex<Option<u64>>,
    sticky_fault: Mutex<Option<Fault>>,
    fault_queue: Mutex<VecDeque<Fault>>,
    numbers_as_strings: AtomicBool,
    addr: SocketAddr,
    federated: Mutex<Vec<String>>,
    assertion_verifier: Mutex<Option<AssertionVerifier>>,
}

/// Checks a `client_assertion` (JWT) against what the app has registered; `Err((aadsts, message))`
/// becomes a 401 `invalid_client` with that code. Arguments: the assertion and the exact token URL
/// it must name as `aud`.
pub type AssertionVerifier = Arc<dyn Fn(&str, &str) -> Result<(), (u32, String)> + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fake Entra server; stops when dropped.
pub struct FakeEntra {
    addr: SocketAddr,
    state: Arc<State>,
    _server: AbortOnDrop,
}

impl FakeEntra {
    pub async fn start() -> FakeEntra {
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            token_requests: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
            lifetime: AtomicU64::new(DEFAULT_LIFETIME_SECS),
            refresh_in: Mutex::new(None),
            sticky_fault: Mutex::new(None),
            fault_queue: Mutex::new(VecDeque::new()),
            numbers_as_strings: AtomicBool::new(false),
            addr,
            federated: Mutex::new(Vec::new()),
            assertion_verifier: Mutex::new(None),
        });
        let handler_state = state.clone();
        let server = super::serve(listener, move |req| handle(handler_state.clone(), req));
        FakeEntra {
            addr,
            state,
            _server: server,
        }
    }

    /// Accepts `assertion` verbatim as a federated client assertion (a projected service-account
    /// token, an Azure Pipelines OIDC token), as a federated identity credential would.
    pub fn accept_federated_assertion(&self, assertion: &str) {
        lock(&self.state.federated).push(assertion.to_string());
    }

    /// Verifies other client assertions (certificate-signed ones) with `verifier`.
    pub fn set_assertion_verifier(&self, verifier: AssertionVerifier) {
        *lock(&self.state.assertion_verifier) = Some(verifier);
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn authority(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `{authority}/{TENANT}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority(), TENANT)
    }

    /// Number of POSTs to the token endpoint (any tenant), failed and faulted ones included.
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Every token endpoint request, in arrival order.
    pub fn requests(&self) -> Vec<TokenRequestRecord> {
        lock(&self.state.requests).clone()
    }

    /// Every access token issued so far, in order.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.state.issued).clone()
    }

    /// `expires_in` (and `ext_expires_in`) of tokens issued from now on; default 3599.
    pub fn set_lifetime(&self, secs: u64) {
        self.state.lifetime.store(secs, Ordering::SeqCst);
    }

    /// Adds `refresh_in` to successful answers when `Some`.
    pub fn set_refresh_in(&self, secs: Option<u64>) {
        *lock(&self.state.refresh_in) = secs;
    }

    /// Sticky fault: applies to every request until cleared with `None`.
    pub fn set_fault(&self, fault: Option<Fault>) {
        *lock(&self.state.sticky_fault) = fault;
    }

    /// One-shot fault, queued FIFO; queued faults are consumed before the sticky one applies.
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.state.fault_queue).push_back(fault);
    }

    /// Sends `expires_in`, `ext_expires_in` and `refresh_in` as JSON strings.
    pub fn set_numbers_as_strings(&self, on: bool) {
        self.state.numbers_as_strings.store(on, Ordering::SeqCst);
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn random_uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// `YYYY-MM-DD hh:mm:ssZ`, as in Entra error bodies.
fn entra_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Signs `claims` as an RS256 JWT with [`super::TEST_KEY_PEM`] and kid `test-key`, exactly as the
/// fake issues its tokens. Lets tests craft expired or odd tokens the fake upstream will judge.
pub fn sign_token(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KEY_ID.to_string());
    let key = EncodingKey::from_rsa_pem(super::TEST_KEY_PEM.as_bytes()).expect("test RSA key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign JWT")
}

/// The claims the fake puts in a token for `audience` living `lifetime_secs` from now.
pub fn token_claims(audience: &str, lifetime_secs: u64) -> Value {
    let now = now_secs();
    json!({
        "aud": audience,
        "iss": format!("https://sts.windows.net/{TENANT}/"),
        "iat": now - 300,
        "nbf": now - 300,
        "exp": now + lifetime_secs,
        "aio": random_string(40),
        "appid": CLIENT_ID,
        "appidacr": "1",
        "azp": CLIENT_ID,
        "idp": format!("https://sts.windows.net/{TENANT}/"),
        "oid": OBJECT_ID,
        "rh": random_string(20),
        "roles": ["Machine.Read.All"],
        "sub": OBJECT_ID,
        "tid": TENANT,
        "uti": random_string(22),
        "ver": "1.0",
    })
}

/// A token as the fake would issue it, without going through HTTP (not recorded in
/// `issued_tokens`).
pub fn mint_token(audience: &str, lifetime_secs: u64) -> String {
    sign_token(&token_claims(audience, lifetime_secs))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store, no-cache")
        .header(header::PRAGMA, "no-cache")
        .body(full(body.to_string()))
        .expect("response")
}

struct ErrorCtx {
    correlation_id: String,
}

fn entra_error(
    ctx: &ErrorCtx,
    status: StatusCode,
    error: &str,
    code: u64,
    message: &str,
) -> Response<Body> {
    let trace_id = random_uuid();
    let timestamp = entra_timestamp(now_secs());
    let description = format!(
        "AADSTS{code}: {message} Trace ID: {trace_id} Correlation ID: {} Timestamp: {timestamp}",
        ctx.correlation_id
    );
    json_response(
        status,
        &json!({
            "error": error,
            "error_description": description,
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": ctx.correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

fn invalid_client(ctx: &ErrorCtx, client_id: &str) -> Response<Body> {
    entra_error(
        ctx,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        7_000_215,
        &format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the \
             client secret value, not the client secret ID, for a secret added to app '{client_id}'."
        ),
    )
}

fn not_found() -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": "not_found", "error_description": "no such endpoint on the fake Entra"}),
    )
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_token_path = segments.len() == 4 && segments[1..] == ["oauth2", "v2.0", "token"];
    if !is_token_path {
        return not_found();
    }
    let tenant = segments[0].to_string();
    if req.method() != Method::POST {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "invalid_request", "error_description": "the token endpoint only accepts POST"}),
        );
    }

    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&bytes).into_owned().collect();
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    lock(&state.requests).push(TokenRequestRecord {
        path: path.clone(),
        form: form.clone(),
        headers: parts.headers.clone(),
    });

    let ctx = ErrorCtx {
        correlation_id: parts
            .headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(random_uuid),
    };
    let client_id = form.get("client_id").cloned().unwrap_or_default();

    let fault = {
        let queued = lock(&state.fault_queue).pop_front();
        queued.or_else(|| lock(&state.sticky_fault).clone())
    };
    match fault {
        None => {}
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::InvalidClient) => return invalid_client(&ctx, &client_id),
        Some(Fault::Throttled { retry_after_secs }) => {
            let mut resp = entra_error(
                &ctx,
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                90_033,
                "A transient error has occurred. Please try again.",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return resp;
        }
        Some(Fault::ServerError) => {
            return entra_error(
                &ctx,
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                50_000,
                "There was an error issuing a token or an issue with our sign-in service.",
            )
        }
        Some(Fault::MalformedJson) => {
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
                .body(full(r#"{"access_token": "#))
                .expect("response")
        }
        Some(Fault::HtmlPage) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .body(full(
                    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>\
                     <body><h1>Bad Gateway</h1><p>The proxy server received an invalid response \
                     from an upstream server.</p></body></html>",
                ))
                .expect("response")
        }
    }

    if tenant != TENANT {
        return entra_error(
            &ctx,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90_002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID \
                 and are signing into the correct cloud."
            ),
        );
    }
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            return entra_error(
                &ctx,
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70_003,
                &format!("The app requested an unsupported grant type '{other}'."),
            )
        }
        None => {
            return entra_error(
                &ctx,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900_144,
                "The request body must contain the following parameter: 'grant_type'.",
            )
        }
    }
    if client_id != CLIENT_ID {
        return entra_error(
            &ctx,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700_016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory \
                 '{TENANT}'. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant."
            ),
        );
    }
    if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return entra_error(
                &ctx,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50_027,
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            );
        }
        let federated = lock(&state.federated).iter().any(|a| a == assertion);
        if !federated {
            let verifier = lock(&state.assertion_verifier).clone();
            let token_url = format!("http://{}/{TENANT}/oauth2/v2.0/token", state.addr);
            let verdict = match verifier {
                Some(v) => v(assertion, &token_url),
                None => Err((
                    70_021,
                    "No matching federated identity record found for presented assertion."
                        .to_string(),
                )),
            };
            if let Err((code, message)) = verdict {
                return entra_error(
                    &ctx,
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    u64::from(code),
                    &message,
                );
            }
        }
    } else if form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET) {
        return invalid_client(&ctx, &client_id);
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    let audience = match scope.strip_suffix("/.default") {
        Some(aud) if !aud.is_empty() && !scope.contains(char::is_whitespace) => aud.to_string(),
        _ => {
            return entra_error(
                &ctx,
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                70_011,
                &format!(
                    "The provided request must include a 'scope' input parameter. The provided \
                     value for the input parameter 'scope' is not valid. The scope '{scope}' is \
                     not valid. The scope must be in the format of a resource identifier with the \
                     '/.default' suffix."
                ),
            );
        }
    };

    let lifetime = state.lifetime.load(Ordering::SeqCst);
    let token = mint_token(&audience, lifetime);
    lock(&state.issued).push(token.clone());

    let as_strings = state.numbers_as_strings.load(Ordering::SeqCst);
    let number = |n: u64| -> Value {
        if as_strings {
            Value::String(n.to_string())
        } else {
            Value::from(n)
        }
    };
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": number(lifetime),
        "ext_expires_in": number(lifetime),
        "access_token": token,
    });
    if let Some(refresh_in) = *lock(&state.refresh_in) {
        body["refresh_in"] = number(refresh_in);
    }
    json_response(StatusCode::OK, &body)
}
