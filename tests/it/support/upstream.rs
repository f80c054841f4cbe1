//! A fake upstream API (think Azure DevOps or Defender) that insists on a valid Entra bearer token
//! of the identity it expects.
//!
//! Every request's `Authorization: Bearer <jwt>` is verified against [`super::TEST_PUB_PEM`]
//! (RS256, expected `aud`, `exp` in the future with no leeway, `nbf` not in the future), then
//! checked against the expected [`Identity`]: who the token is for (`appid`, `tid`, `oid`),
//! whether it is an app's or a person's (no `scp`, or `scp`), and the `roles`/`scp` entries it
//! must hold. [`FakeUpstream::start`] expects the fake Entra's default app ([`CLIENT_ID`] in
//! [`TENANT`]); a test whose route uses another identity says which
//! ([`FakeUpstream::expect`]). So a token of another profile or tenant, even for the right
//! audience, fails the test. Requests without a valid token of that identity get a 401 with
//! `WWW-Authenticate`, and their reason (the claim and both values, never the token) is recorded.
//! Valid ones are routed:
//!
//! - `GET /download/{n}`: 200, exactly `n` bytes of [`super::pattern_byte`], streamed lazily in
//!   64 KiB chunks, no `Content-Length`.
//! - `POST|PUT /upload`: reads the body frame by frame, answers `{"len": n, "fnv": "<16 hex>"}`.
//! - `/redirect`: 302 to `{url}/echo/after-redirect?x=1`; `/redirect-relative`: 302 to
//!   `/echo/relative`.
//! - `…/redirect-to?to=<location>` (under any path): 302 to exactly `location`, for the
//!   `Location` rewrite's hostile cases.
//! - `/status/{code}`: empty answer with that status.
//! - anything else: 200 JSON echo of method, path, headers and body length, with `x-upstream: fake`.
//!
//! Policy refusals, for replay tests: [`FakeUpstream::revoke`] refuses given tokens (as a 401, or
//! the way Azure DevOps does without `X-TFS-FedAuthRedirect: Suppress`: [`RevokedAnswer`]), and
//! [`FakeUpstream::require_claims`] answers a CAE claims challenge to every token whose claims
//! request (the fake Entra's `test_claims_request` claim) does not hold the challenge's claims.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Map, Value};

use super::entra::{app_object_id, CLIENT_ID, TENANT, USER_OID, USER_SCP};
use super::{empty, fnv1a, full, lock, pattern_byte, AbortOnDrop, Body, FNV_OFFSET};

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
    /// The claims of a valid token (of the expected identity).
    pub claims: Option<Value>,
    /// A valid token refused by policy (revoked, claims challenge), and how.
    pub refused: Option<String>,
}

/// What arrived, counted (always, recording or not).
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests with a valid, unexpired token of the right audience and identity.
    pub valid: std::sync::atomic::AtomicU64,
    /// Requests without one (never expected from patless).
    pub invalid: std::sync::atomic::AtomicU64,
    /// Valid tokens refused by policy (revoked, claims challenge).
    pub refused: std::sync::atomic::AtomicU64,
    /// Why invalid tokens were invalid (the first 20).
    pub invalid_reasons: Mutex<Vec<String>>,
}

/// How a revoked token is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedAnswer {
    /// `401` with `WWW-Authenticate`.
    Unauthorized,
    /// Azure DevOps's `203 Non-Authoritative Information` sign-in page.
    AdoNonAuthoritative,
    /// A `200 text/html` sign-in page.
    AdoHtml,
    /// A `302` to `…/_signin` on Azure DevOps's sign-in host.
    AdoSignInRedirect,
    /// A `302` to `…/_signin` on some other host: not Azure DevOps refusing a token.
    ForeignSignInRedirect,
}

struct State {
    base_url: String,
    audience: String,
    identity: Mutex<Identity>,
    key: DecodingKey,
    requests: Mutex<Vec<RecordedRequest>>,
    revoked: Mutex<Vec<String>>,
    revoked_answer: Mutex<RevokedAnswer>,
    refuse_all: Mutex<bool>,
    /// Soak mode: counts instead of records (memory stays flat over long runs).
    recording: std::sync::atomic::AtomicBool,
    counts: Counts,
    /// Revoke a presented token with this probability, if first seen at least this long ago.
    random_revocation: Mutex<Option<(f64, std::time::Duration)>>,
    first_seen: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// A claims challenge (JSON) every token must satisfy.
    required_claims: Mutex<Option<Value>>,
    /// (path prefix, role): a token without the role gets Defender's `403` on those paths.
    required_roles: Mutex<Vec<(String, String)>>,
}

/// The fake upstream server; stops when dropped.
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    _server: AbortOnDrop,
}

impl FakeUpstream {
    /// Starts a fake API accepting tokens whose `aud` is `expected_audience`, of the fake Entra's
    /// default app ([`Identity::default_app`]; another with [`FakeUpstream::expect`]).
    pub async fn start(expected_audience: &str) -> FakeUpstream {
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            base_url: format!("http://{addr}"),
            audience: expected_audience.to_string(),
            identity: Mutex::new(Identity::default_app()),
            key: test_decoding_key(),
            requests: Mutex::new(Vec::new()),
            revoked: Mutex::new(Vec::new()),
            revoked_answer: Mutex::new(RevokedAnswer::Unauthorized),
            refuse_all: Mutex::new(false),
            recording: std::sync::atomic::AtomicBool::new(true),
            counts: Counts::default(),
            random_revocation: Mutex::new(None),
            first_seen: Mutex::new(std::collections::HashMap::new()),
            required_claims: Mutex::new(None),
            required_roles: Mutex::new(Vec::new()),
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

    /// Accepts only tokens of `identity` from now on (a token of anyone else is a bad token).
    pub fn expect(&self, identity: Identity) {
        *lock(&self.state.identity) = identity;
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received, in the order they completed reading their body.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// Requests that arrived without a valid token of the expected identity.
    pub fn rejected(&self) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| !r.token_valid)
            .count()
    }

    /// Requests that arrived with a valid token and were served (not refused by policy).
    pub fn accepted(&self) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.token_valid && r.refused.is_none())
            .count()
    }

    /// Refuses `token` from now on (a revoked session, a disabled app), answering as
    /// [`FakeUpstream::set_revoked_answer`] says.
    pub fn revoke(&self, token: &str) {
        lock(&self.state.revoked).push(token.to_string());
    }

    /// Stops recording requests (counting only), for long runs.
    #[allow(dead_code)] // tests/soak.rs
    pub fn stop_recording(&self) {
        self.state
            .recording
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// The counts of what arrived.
    pub fn counts(&self) -> &Counts {
        &self.state.counts
    }

    /// Revokes the presented token with probability `p` (a revoked session, at random), but only
    /// a token first presented at least `min_age` ago: a replacement just acquired is served, so
    /// a replay succeeds.
    #[allow(dead_code)] // tests/soak.rs
    pub fn revoke_at_random(&self, p: f64, min_age: std::time::Duration) {
        *lock(&self.state.random_revocation) = Some((p, min_age));
    }

    /// Refuses every token from now on, however fresh (an identity the API does not accept).
    pub fn refuse_every_token(&self) {
        *lock(&self.state.refuse_all) = true;
    }

    /// How revoked tokens are answered (default: `401`).
    pub fn set_revoked_answer(&self, answer: RevokedAnswer) {
        *lock(&self.state.revoked_answer) = answer;
    }

    /// Requests whose path starts with `path_prefix` need `role` in the token's `roles`; others
    /// get the `403` the Defender APIs send when an application permission is missing.
    pub fn require_role(&self, path_prefix: &str, role: &str) {
        lock(&self.state.required_roles).push((path_prefix.to_string(), role.to_string()));
    }

    /// From now on, a token is served only when its claims request holds every
    /// `access_token` claim of `challenge`; others get a `401` claims challenge with it.
    pub fn require_claims(&self, challenge: Value) {
        *lock(&self.state.required_claims) = Some(challenge);
    }
}

/// Whether `token`'s claims request (JSON in the fake Entra's claim) holds every `access_token`
/// claim of `challenge`.
fn satisfies(token_claims: &Value, challenge: &Value) -> bool {
    let requested = token_claims
        .get(super::entra::CLAIMS_REQUEST_CLAIM)
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok());
    let (Some(requested), Some(wanted)) = (requested, challenge.get("access_token")) else {
        return false;
    };
    wanted.as_object().is_some_and(|w| {
        w.iter()
            .all(|(k, v)| requested.get("access_token").and_then(|a| a.get(k)) == Some(v))
    })
}

fn refusal_answer(
    state: &State,
    path: &str,
    token: &str,
    claims: &Value,
) -> Option<(String, Response<Body>)> {
    let roles: Vec<&str> = claims
        .get("roles")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let missing = lock(&state.required_roles)
        .iter()
        .find(|(prefix, role)| path.starts_with(prefix.as_str()) && !roles.contains(&role.as_str()))
        .map(|(_, role)| role.clone());
    if let Some(role) = missing {
        let resp = json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": {
                "code": "Forbidden",
                "message": format!("The application does not have any of the required application permissions ({role}) to access the resource."),
            }}),
        );
        return Some((format!("missing role {role}"), resp));
    }
    if let Some(challenge) = lock(&state.required_claims).clone() {
        if !satisfies(claims, &challenge) {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(challenge.to_string());
            let mut resp = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "insufficient_claims", "message": "claims challenge"}),
            );
            // Two challenges in two headers, as real services send them.
            resp.headers_mut().append(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"fake\""),
            );
            resp.headers_mut().append(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_str(&format!(
                    "Bearer authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", error=\"insufficient_claims\", claims=\"{b64}\""
                ))
                .expect("header"),
            );
            return Some(("claims challenge".into(), resp));
        }
    }
    if !*lock(&state.refuse_all) && !lock(&state.revoked).iter().any(|t| t == token) {
        return None;
    }
    let answer = *lock(&state.revoked_answer);
    let resp = match answer {
        RevokedAnswer::Unauthorized => {
            let mut r = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "invalid_token", "message": "TF400813: revoked"}),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(WWW_AUTHENTICATE),
            );
            r
        }
        RevokedAnswer::AdoNonAuthoritative | RevokedAnswer::AdoHtml => Response::builder()
            .status(if answer == RevokedAnswer::AdoHtml {
                StatusCode::OK
            } else {
                StatusCode::NON_AUTHORITATIVE_INFORMATION
            })
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header("x-upstream", "fake")
            .body(full(
                "<html><head><title>Azure DevOps Services | Sign In</title></head></html>",
            ))
            .expect("response"),
        RevokedAnswer::AdoSignInRedirect | RevokedAnswer::ForeignSignInRedirect => {
            Response::builder()
                .status(StatusCode::FOUND)
                .header(
                    header::LOCATION,
                    if answer == RevokedAnswer::AdoSignInRedirect {
                        "https://spsprodweu5.vssps.visualstudio.com/_signin?realm=dev.azure.com"
                    } else {
                        "https://evil.example/_signin?realm=dev.azure.com"
                    },
                )
                .header("x-upstream", "fake")
                .body(empty())
                .expect("response")
        }
    };
    Some((format!("{answer:?}"), resp))
}

/// Checks the request's bearer token; `Ok` carries the token and its claims, `Err` the reason.
fn verify(state: &State, headers: &HeaderMap) -> Result<(String, Value), String> {
    let identity = lock(&state.identity).clone();
    verify_bearer(headers, &state.key, &state.audience, &identity)
}

/// Verifies `Authorization: Bearer <jwt>` against the fake Entra's signing key: RS256 signature,
/// `aud == audience`, `exp`/`nbf` with no leeway, and who it is for ([`Identity::check`]).
/// Shared by every stand-in that must accept only tokens patless obtained for the identity its
/// test configured (the fake upstream, the git and REST stand-ins).
pub fn verify_bearer(
    headers: &HeaderMap,
    key: &DecodingKey,
    audience: &str,
    identity: &Identity,
) -> Result<(String, Value), String> {
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
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "aud"]);
    let claims = jsonwebtoken::decode::<Value>(token.trim(), key, &validation)
        .map_err(|e| format!("invalid token: {e}"))?
        .claims;
    identity.check(&claims)?;
    Ok((token.trim().to_string(), claims))
}

/// Who a stand-in expects tokens to be for: an app (service principal, managed identity) or a
/// person signed in with a client, in a tenant, holding some `roles` or `scp` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `None`: any identity ([`Identity::any`]).
    expected: Option<Expected>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    /// A person's token (`scp`) or an app's (no `scp`).
    user: bool,
    appid: String,
    tid: String,
    oid: String,
    roles: Vec<String>,
    scp: Vec<String>,
}

impl Identity {
    /// The app-only token of confidential app `client_id` in `tenant`, as the fake Entra issues
    /// it (`oid` = [`app_object_id`]); no role required (add some with [`Identity::with_roles`]).
    pub fn app(client_id: &str, tenant: &str) -> Identity {
        Identity::app_with_oid(client_id, tenant, &app_object_id(tenant, client_id))
    }

    /// An app-only token of `client_id` in `tenant` whose service principal is `oid` (a managed
    /// identity).
    pub fn app_with_oid(client_id: &str, tenant: &str, oid: &str) -> Identity {
        Identity {
            expected: Some(Expected {
                user: false,
                appid: client_id.to_string(),
                tid: tenant.to_string(),
                oid: oid.to_string(),
                roles: Vec::new(),
                scp: Vec::new(),
            }),
        }
    }

    /// The fake Entra's default app: [`CLIENT_ID`] in [`TENANT`], object id
    /// [`super::entra::OBJECT_ID`]. What [`FakeUpstream::start`] expects.
    pub fn default_app() -> Identity {
        Identity::app(CLIENT_ID, TENANT)
    }

    /// The test user ([`USER_OID`] in [`TENANT`]) signed in with the public client `client_id`,
    /// holding the `scp` [`USER_SCP`].
    pub fn user(client_id: &str) -> Identity {
        Identity {
            expected: Some(Expected {
                user: true,
                appid: client_id.to_string(),
                tid: TENANT.to_string(),
                oid: USER_OID.to_string(),
                roles: Vec::new(),
                scp: vec![USER_SCP.to_string()],
            }),
        }
    }

    /// Anyone the fake Entra signed a token for. Only for a test that deliberately accepts
    /// several identities on one upstream, saying why where it is used.
    pub fn any() -> Identity {
        Identity { expected: None }
    }

    /// Also requires each of `roles` in the token's `roles`.
    pub fn with_roles(mut self, roles: &[&str]) -> Identity {
        if let Some(e) = &mut self.expected {
            e.roles.extend(roles.iter().map(|r| r.to_string()));
        }
        self
    }

    /// Whether `claims` (of a token whose signature, audience and lifetime are valid) are this
    /// identity's; `Err` names the first claim that is not, with both values.
    pub fn check(&self, claims: &Value) -> Result<(), String> {
        let Some(e) = &self.expected else {
            return Ok(());
        };
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        for (name, want) in [("appid", &e.appid), ("tid", &e.tid), ("oid", &e.oid)] {
            match text(name) {
                Some(got) if got == want.as_str() => {}
                got => {
                    return Err(format!(
                        "wrong identity: {name} is {}, expected {want:?}",
                        got.map_or("missing".to_string(), |g| format!("{g:?}"))
                    ))
                }
            }
        }
        let scp: Vec<&str> = text("scp")
            .map(|s| s.split(' ').collect())
            .unwrap_or_default();
        match (e.user, text("scp")) {
            (false, Some(got)) => {
                return Err(format!(
                    "wrong identity: scp is {got:?} (a person's token), expected an app's token without scp"
                ))
            }
            (true, None) => {
                return Err(
                    "wrong identity: scp is missing (an app's token), expected a person's token"
                        .to_string(),
                )
            }
            _ => {}
        }
        if let Some(missing) = e.scp.iter().find(|w| !scp.contains(&w.as_str())) {
            return Err(format!(
                "wrong identity: scp is {:?}, expected it to hold {missing:?}",
                text("scp").unwrap_or_default()
            ));
        }
        let roles: Vec<&str> = claims
            .get("roles")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(missing) = e.roles.iter().find(|w| !roles.contains(&w.as_str())) {
            return Err(format!(
                "wrong identity: roles are {roles:?}, expected them to hold {missing:?}"
            ));
        }
        Ok(())
    }
}

/// The fake Entra's public key, for [`verify_bearer`].
pub fn test_decoding_key() -> DecodingKey {
    DecodingKey::from_rsa_pem(super::TEST_PUB_PEM.as_bytes()).expect("test RSA pub")
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
    if let (Ok((token, _)), Some((p, min_age))) = (&verdict, *lock(&state.random_revocation)) {
        let now = std::time::Instant::now();
        let first = *lock(&state.first_seen).entry(token.clone()).or_insert(now);
        if now.duration_since(first) >= min_age && rand::random::<f64>() < p {
            lock(&state.revoked).push(token.clone());
        }
    }
    let refused = verdict
        .as_ref()
        .ok()
        .and_then(|(token, claims)| refusal_answer(&state, &path, token, claims));
    {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &state.counts;
        match (&verdict, &refused) {
            (Err(why), _) => {
                let mut reasons = lock(&c.invalid_reasons);
                if reasons.len() < 20 {
                    reasons.push(why.clone());
                }
                c.invalid.fetch_add(1, Relaxed)
            }
            (Ok(_), Some(_)) => c.refused.fetch_add(1, Relaxed),
            (Ok(_), None) => c.valid.fetch_add(1, Relaxed),
        };
    }
    if state.recording.load(std::sync::atomic::Ordering::Relaxed) {
        lock(&state.requests).push(RecordedRequest {
            method: parts.method.clone(),
            path_and_query: path_and_query.clone(),
            headers: parts.headers.clone(),
            body_len,
            token_valid: verdict.is_ok(),
            token_error: verdict.as_ref().err().cloned(),
            claims: verdict.as_ref().ok().map(|(_, claims)| claims.clone()),
            refused: refused.as_ref().map(|(why, _)| why.clone()),
        });
    }
    if let Some((_, resp)) = refused {
        return resp;
    }

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
    if path == "/hop-by-hop" {
        return hop_by_hop_answer();
    }
    if path == "/redirect" {
        return redirect(&format!("{}/echo/after-redirect?x=1", state.base_url));
    }
    if path == "/redirect-relative" {
        return redirect("/echo/relative");
    }
    if path.ends_with("/redirect-to") {
        let to = url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "to")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        return redirect(&to);
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

/// `200` with every kind of hop-by-hop header (RFC 9110 §7.6.1: the fixed ones and one that
/// `Connection` names) beside two end-to-end ones, `x-end` and `x-upstream`.
fn hop_by_hop_answer() -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONNECTION, "keep-alive, X-Hop")
        .header("x-hop", "for the next hop only")
        .header("keep-alive", "timeout=5, max=100")
        .header("proxy-connection", "keep-alive")
        .header(header::PROXY_AUTHENTICATE, "Basic realm=\"upstream proxy\"")
        .header(header::UPGRADE, "h2c")
        .header("x-end", "kept")
        .header("x-upstream", "fake")
        .body(empty())
        .expect("response")
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
