//! Fake managed identity endpoints (docs/credentials.md), one server per flavor:
//!
//! - [`FakeMsi::imds`]: `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=R`
//!   with `Metadata: true`; every number in the answer is a JSON string.
//! - [`FakeMsi::app_service`]: `GET /msi/token?api-version=2019-08-01&resource=R`, checks
//!   `X-IDENTITY-HEADER` (a wrong one gets a 401 that echoes it, as a careless server might);
//!   answers with `expires_on` only.
//! - [`FakeMsi::azure_ml`]: `GET /msi/token?api-version=2017-09-01&resource=R[&clientid=]`, checks
//!   the `secret` header; answers with `expires_on` only.
//! - [`FakeMsi::cloud_shell`]: `POST /oauth2/token` with `Metadata: true` and the form `resource=R`.
//! - [`FakeMsi::arc`]: `GET /metadata/identity/oauth2/token?api-version=2019-11-01&resource=R`;
//!   without `Authorization` a 401 with `WWW-Authenticate: Basic realm=<realm>` (the test wrote the
//!   key file and chose the realm), then `Authorization: Basic <key>`.
//!
//! Every request is recorded (method, path and query, headers, form, arrival on the tokio clock).
//! User-assigned identities are checked: a request naming one that was not [`FakeMsi::assign`]ed,
//! or asking for the system-assigned identity when it is off, gets a 400 "Identity not found".
//! Tokens are app-only tokens for `resource` signed like the fake Entra's, of the identity asked
//! for: the system-assigned one ([`system_assigned`], client id [`SYSTEM_ASSIGNED_CLIENT_ID`]) or
//! the user-assigned one the request names ([`user_assigned`]: `appid` = the client id asked for,
//! `oid` = the object/principal id asked for, `xms_mirid` = the resource id asked for), so a
//! [`super::upstream`] fake expecting that identity accepts them and one expecting another refuses
//! them. Failures are scripted with [`FakeMsi::push_status`] and friends.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::entra::{app_object_id, app_token_claims, derived_guid, sign_token, TENANT};
use super::upstream::Identity;
use super::{full, lock, now_secs, AbortOnDrop, Body};

/// The client id of the system-assigned identity (every fake endpoint's, in [`TENANT`]).
pub const SYSTEM_ASSIGNED_CLIENT_ID: &str = "88888888-8888-8888-8888-888888888888";

/// The system-assigned identity, as a fake upstream should expect its tokens.
pub fn system_assigned() -> Identity {
    Identity::app(SYSTEM_ASSIGNED_CLIENT_ID, TENANT)
}

/// The user-assigned identity named by query parameter `param` = `value` (`client_id`,
/// `clientid`, `object_id`, `principal_id`, `msi_res_id`, `mi_res_id`), as a fake upstream should
/// expect its tokens: by client id, that `appid`; by object id, that `oid`; by resource id, ids
/// derived from it.
pub fn user_assigned(param: &str, value: &str) -> Identity {
    let (appid, oid) = ids_of(Some((param, value)));
    Identity::app_with_oid(&appid, TENANT, &oid)
}

/// (`appid`, `oid`) of the identity a request names (`None`: the system-assigned one). The fake
/// does not know which client id goes with which object id: each naming stands for its own.
fn ids_of(named: Option<(&str, &str)>) -> (String, String) {
    let client_of = |v: &str| derived_guid(&format!("managed-identity/{v}"));
    let appid = match named {
        None => SYSTEM_ASSIGNED_CLIENT_ID.to_string(),
        Some(("client_id" | "clientid", v)) => v.to_string(),
        Some((_, v)) => client_of(v),
    };
    let oid = match named {
        Some(("object_id" | "principal_id", v)) => v.to_string(),
        _ => app_object_id(TENANT, &appid),
    };
    (appid, oid)
}

/// A token of the identity `named` (`None`: system-assigned) for `resource`.
fn identity_token(named: Option<(&str, &str)>, resource: &str, lifetime: u64) -> (String, String) {
    let (appid, oid) = ids_of(named);
    let mut claims = app_token_claims(resource, lifetime, TENANT, &appid);
    claims["oid"] = Value::String(oid.clone());
    claims["sub"] = Value::String(oid);
    if let Some((_, res_id)) = named.filter(|(p, _)| p.ends_with("res_id")) {
        claims["xms_mirid"] = Value::String(res_id.to_string());
    }
    (sign_token(&claims), appid)
}

/// Path of the IMDS and Arc token endpoints.
pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";

/// Which endpoint the fake plays.
#[derive(Debug, Clone)]
pub enum Flavor {
    /// Azure Instance Metadata Service.
    Imds,
    /// App Service / Functions / Container Apps, expecting this `X-IDENTITY-HEADER`.
    AppService { header: String },
    /// Azure Machine Learning, expecting this `secret` header.
    AzureMl { secret: String },
    /// Azure Cloud Shell.
    CloudShell,
    /// Azure Arc agent (himds), expecting `Authorization: Basic {key}`.
    Arc { key: String },
}

impl Flavor {
    fn path(&self) -> &'static str {
        match self {
            Flavor::Imds | Flavor::Arc { .. } => IMDS_PATH,
            Flavor::AppService { .. } | Flavor::AzureMl { .. } => "/msi/token",
            Flavor::CloudShell => "/oauth2/token",
        }
    }

    fn api_version(&self) -> Option<&'static str> {
        match self {
            Flavor::Imds => Some("2018-02-01"),
            Flavor::AppService { .. } => Some("2019-08-01"),
            Flavor::AzureMl { .. } => Some("2017-09-01"),
            Flavor::Arc { .. } => Some("2019-11-01"),
            Flavor::CloudShell => None,
        }
    }

    /// The query parameters that name a user-assigned identity.
    fn id_params(&self) -> &'static [&'static str] {
        match self {
            Flavor::Imds => &["client_id", "object_id", "msi_res_id"],
            Flavor::AppService { .. } => &["client_id", "principal_id", "mi_res_id"],
            Flavor::AzureMl { .. } => &["clientid"],
            Flavor::CloudShell | Flavor::Arc { .. } => &[],
        }
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct MsiRequest {
    pub method: Method,
    pub path: String,
    pub path_and_query: String,
    /// Decoded query parameters.
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    /// Decoded `application/x-www-form-urlencoded` body (empty otherwise).
    pub form: HashMap<String, String>,
    /// Arrival, on the tokio clock (paused in retry tests).
    pub at: tokio::time::Instant,
}

impl MsiRequest {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A scripted answer, served instead of the normal one.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub retry_after: Option<u64>,
    /// Body (JSON); a generic error body when `None`.
    pub body: Option<String>,
}

struct State {
    flavor: Flavor,
    addr: SocketAddr,
    requests: Mutex<Vec<MsiRequest>>,
    script: Mutex<VecDeque<Scripted>>,
    sticky: Mutex<Option<Scripted>>,
    system_assigned: AtomicBool,
    assigned: Mutex<Vec<(String, String)>>,
    realm: Mutex<String>,
    issued: Mutex<Vec<String>>,
    lifetime: AtomicU64,
    numbers_as_strings: AtomicBool,
}

/// A fake managed identity endpoint; stops when dropped.
pub struct FakeMsi {
    state: Arc<State>,
    _server: AbortOnDrop,
}

impl FakeMsi {
    async fn start(flavor: Flavor) -> FakeMsi {
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            flavor,
            addr,
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            sticky: Mutex::new(None),
            system_assigned: AtomicBool::new(true),
            assigned: Mutex::new(Vec::new()),
            realm: Mutex::new(String::new()),
            issued: Mutex::new(Vec::new()),
            lifetime: AtomicU64::new(3600),
            numbers_as_strings: AtomicBool::new(true),
        });
        let handler_state = state.clone();
        let server = super::serve(listener, move |req| handle(handler_state.clone(), req));
        FakeMsi {
            state,
            _server: server,
        }
    }

    /// A fake IMDS.
    pub async fn imds() -> FakeMsi {
        Self::start(Flavor::Imds).await
    }

    /// A fake App Service identity endpoint accepting `identity_header`.
    pub async fn app_service(identity_header: &str) -> FakeMsi {
        Self::start(Flavor::AppService {
            header: identity_header.to_string(),
        })
        .await
    }

    /// A fake Azure ML identity endpoint accepting `secret`.
    pub async fn azure_ml(secret: &str) -> FakeMsi {
        Self::start(Flavor::AzureMl {
            secret: secret.to_string(),
        })
        .await
    }

    /// A fake Cloud Shell identity endpoint.
    pub async fn cloud_shell() -> FakeMsi {
        Self::start(Flavor::CloudShell).await
    }

    /// A fake Azure Arc agent whose challenge names `realm` and which accepts `key`.
    pub async fn arc(realm: &str, key: &str) -> FakeMsi {
        let fake = Self::start(Flavor::Arc {
            key: key.to_string(),
        })
        .await;
        fake.set_realm(realm);
        fake
    }

    /// `http://127.0.0.1:PORT` (IMDS base URL, Arc's `IMDS_ENDPOINT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    /// The full token endpoint URL (`IDENTITY_ENDPOINT`, `MSI_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("{}{}", self.url(), self.state.flavor.path())
    }

    /// Every request, in arrival order.
    pub fn requests(&self) -> Vec<MsiRequest> {
        lock(&self.state.requests).clone()
    }

    /// Every token issued, in order.
    pub fn issued(&self) -> Vec<String> {
        lock(&self.state.issued).clone()
    }

    /// One scripted answer with `status` (FIFO, before any normal answer).
    pub fn push_status(&self, status: u16) {
        self.push(Scripted {
            status,
            retry_after: None,
            body: None,
        });
    }

    /// One scripted answer with `status` and `Retry-After: secs`.
    pub fn push_retry_after(&self, status: u16, secs: u64) {
        self.push(Scripted {
            status,
            retry_after: Some(secs),
            body: None,
        });
    }

    /// One scripted answer.
    pub fn push(&self, answer: Scripted) {
        lock(&self.state.script).push_back(answer);
    }

    /// Answers every request with `status` (after the queued ones) until `None`.
    pub fn set_sticky_status(&self, status: Option<u16>) {
        *lock(&self.state.sticky) = status.map(|status| Scripted {
            status,
            retry_after: None,
            body: None,
        });
    }

    /// Assigns a user-assigned identity, as named by query parameter `param` (`client_id`,
    /// `object_id`, `msi_res_id`, `principal_id`, `mi_res_id`, `clientid`).
    pub fn assign(&self, param: &str, value: &str) {
        lock(&self.state.assigned).push((param.to_string(), value.to_string()));
    }

    /// Whether the system-assigned identity is on (default on).
    pub fn set_system_assigned(&self, on: bool) {
        self.state.system_assigned.store(on, Ordering::SeqCst);
    }

    /// The key file path Arc's challenge names.
    pub fn set_realm(&self, realm: &str) {
        *lock(&self.state.realm) = realm.to_string();
    }

    /// Lifetime of issued tokens (default 3600 s).
    pub fn set_lifetime(&self, secs: u64) {
        self.state.lifetime.store(secs, Ordering::SeqCst);
    }

    /// Numbers as JSON strings (the default, as IMDS does) or as JSON numbers.
    pub fn set_numbers_as_strings(&self, on: bool) {
        self.state.numbers_as_strings.store(on, Ordering::SeqCst);
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(full(body.to_string()))
        .expect("response")
}

fn bad_request(description: &str) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": "invalid_request", "error_description": description}),
    )
}

fn identity_not_found(flavor: &Flavor) -> Response<Body> {
    match flavor {
        Flavor::AppService { .. } => json_response(
            StatusCode::BAD_REQUEST,
            &json!({
                "statusCode": 400,
                "message": "Unable to load the proper Managed Identity.",
                "correlationId": "7b2d9c1e-0000-4000-8000-000000000000",
            }),
        ),
        _ => bad_request("Identity not found"),
    }
}

fn scripted(answer: Scripted) -> Response<Body> {
    let status = StatusCode::from_u16(answer.status).expect("status code");
    let body = answer.body.unwrap_or_else(|| {
        json!({
            "error": "scripted",
            "error_description": format!("scripted answer {}", answer.status),
        })
        .to_string()
    });
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8");
    if let Some(secs) = answer.retry_after {
        builder = builder.header(header::RETRY_AFTER, secs.to_string());
    }
    builder.body(full(body)).expect("response")
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let query = super::query_params(&parts.uri);
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form: HashMap<String, String> = if is_form {
        url::form_urlencoded::parse(&body).into_owned().collect()
    } else {
        HashMap::new()
    };
    let record = MsiRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_default(),
        query: query.clone(),
        headers: parts.headers.clone(),
        form: form.clone(),
        at: tokio::time::Instant::now(),
    };
    lock(&state.requests).push(record);

    let flavor = &state.flavor;
    if parts.uri.path() != flavor.path() {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
    }
    let queued = lock(&state.script).pop_front();
    if let Some(answer) = queued.or_else(|| lock(&state.sticky).clone()) {
        return scripted(answer);
    }
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());

    // The protocol: method, version, headers, secrets.
    let expected_method = match flavor {
        Flavor::CloudShell => Method::POST,
        _ => Method::GET,
    };
    if parts.method != expected_method {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method_not_allowed"}),
        );
    }
    if let Some(version) = flavor.api_version() {
        if query.get("api-version").map(String::as_str) != Some(version) {
            return bad_request(&format!("api-version must be {version}"));
        }
    }
    let needs_metadata = !matches!(flavor, Flavor::AppService { .. });
    if needs_metadata && header("metadata") != Some("true") {
        return bad_request("Required metadata header not specified");
    }
    match flavor {
        Flavor::AppService { header: expected } => {
            let got = header("x-identity-header").unwrap_or_default();
            if got != expected {
                // Echoes what it received, so tests prove patless cuts it out of messages.
                return json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({
                        "statusCode": 401,
                        "message": format!("X-IDENTITY-HEADER '{got}' is not valid for this app"),
                    }),
                );
            }
        }
        Flavor::AzureMl { secret } => {
            if header("secret") != Some(secret.as_str()) {
                return json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({"statusCode": 401, "message": "secret header is not valid"}),
                );
            }
        }
        Flavor::Arc { key } => match header("authorization") {
            None => {
                let realm = lock(&state.realm).clone();
                return Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header(header::WWW_AUTHENTICATE, format!("Basic realm={realm}"))
                    .body(full(""))
                    .expect("response");
            }
            Some(auth) if auth == format!("Basic {key}") => {}
            Some(_) => {
                return json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "unauthorized", "error_description": "wrong key"}),
                );
            }
        },
        Flavor::Imds | Flavor::CloudShell => {}
    }

    // The identity.
    let named: Vec<(&str, &String)> = flavor
        .id_params()
        .iter()
        .filter_map(|p| query.get(*p).map(|v| (*p, v)))
        .collect();
    let known = match named.as_slice() {
        [] => state.system_assigned.load(Ordering::SeqCst),
        [(param, value)] => lock(&state.assigned)
            .iter()
            .any(|(p, v)| p == param && &v == value),
        _ => false,
    };
    if !known {
        return identity_not_found(flavor);
    }

    // The token.
    let resource = match flavor {
        Flavor::CloudShell => form.get("resource"),
        _ => query.get("resource"),
    };
    let Some(resource) = resource.filter(|r| !r.is_empty()) else {
        return bad_request("resource is required");
    };
    let lifetime = state.lifetime.load(Ordering::SeqCst);
    let named = named.first().map(|(p, v)| (*p, v.as_str()));
    let (token, client_id) = identity_token(named, resource, lifetime);
    lock(&state.issued).push(token.clone());
    let now = now_secs();
    let strings = state.numbers_as_strings.load(Ordering::SeqCst);
    let number = |n: u64| -> Value {
        if strings {
            Value::String(n.to_string())
        } else {
            Value::from(n)
        }
    };
    let body = match flavor {
        Flavor::AppService { .. } | Flavor::AzureMl { .. } => json!({
            "access_token": token,
            "expires_on": number(now + lifetime),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id,
        }),
        _ => json!({
            "access_token": token,
            "client_id": client_id,
            "expires_in": number(lifetime),
            "expires_on": number(now + lifetime),
            "ext_expires_in": number(lifetime),
            "not_before": number(now),
            "resource": resource,
            "token_type": "Bearer",
        }),
    };
    json_response(StatusCode::OK, &body)
}
