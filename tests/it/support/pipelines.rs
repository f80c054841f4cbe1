//! A fake Azure Pipelines OIDC endpoint (`SYSTEM_OIDCREQUESTURI`), as the agent's job sees it.
//!
//! `POST {uri}?api-version=7.1&serviceConnectionId={id}` with `Authorization: Bearer {system
//! token}`, `X-TFS-FedAuthRedirect: Suppress` and `Content-Type: application/json` answers
//! `{"oidcToken":"<jwt>"}`, a fresh token each time, which the fake registers with
//! [`FakeEntra::accept_federated_assertion`] (as the app's federated credential would accept it).
//! A bad system token gets a 401, or without the Suppress header the 302 to a sign-in page that
//! Azure DevOps sends. [`FakePipelines::set_mode`] makes it misbehave on purpose.
//!
//! The OIDC token is no access token: it says who the pipeline is (`sub` = the service
//! connection), and the access token patless gets for it is the fake Entra's, of the app the
//! profile names (`appid` = its `client_id`, `tid` = its tenant).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use super::entra::{sign_token, FakeEntra};
use super::{full, lock, AbortOnDrop, Body};

/// The job's system access token the fake accepts.
pub const SYSTEM_TOKEN: &str = "SYSTEM-access-token-never-shown-4242";
/// The service connection the fake knows.
pub const SERVICE_CONNECTION_ID: &str = "33333333-3333-3333-3333-333333333333";
/// Path of the OIDC endpoint, as in a real `SYSTEM_OIDCREQUESTURI`.
pub const OIDC_PATH: &str =
    "/org/44444444-4444-4444-4444-444444444444/_apis/distributedtask/hubs/build/plans/55555555-5555-5555-5555-555555555555/jobs/66666666-6666-6666-6666-666666666666/oidctoken";
/// `iss` of the issued OIDC tokens.
pub const ISSUER: &str = "https://vstoken.dev.azure.com/77777777-7777-7777-7777-777777777777";
/// `sub` of the issued OIDC tokens.
pub const SUBJECT: &str = "sc://org/project/patless-connection";

/// How the fake answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As Azure DevOps does.
    Normal,
    /// 203 Non-Authoritative Information with an HTML sign-in page.
    SignInPage203,
    /// 302 to a sign-in page.
    Redirect302,
    /// 200 with an HTML page.
    Html200,
    /// 401 whatever the token.
    Unauthorized401,
    /// 500 with an Azure DevOps error body.
    ServerError500,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct OidcRequest {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: String,
}

struct State {
    entra: Arc<FakeEntra>,
    mode: Mutex<Mode>,
    requests: Mutex<Vec<OidcRequest>>,
    issued: Mutex<Vec<String>>,
}

/// The fake OIDC endpoint; stops when dropped.
pub struct FakePipelines {
    addr: SocketAddr,
    state: Arc<State>,
    _server: AbortOnDrop,
}

impl FakePipelines {
    /// Starts the fake; the tokens it issues are accepted by `entra`.
    pub async fn start(entra: Arc<FakeEntra>) -> FakePipelines {
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            entra,
            mode: Mutex::new(Mode::Normal),
            requests: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
        });
        let handler_state = state.clone();
        let server = super::serve(listener, move |req| handle(handler_state.clone(), req));
        FakePipelines {
            addr,
            state,
            _server: server,
        }
    }

    /// The `SYSTEM_OIDCREQUESTURI` value.
    pub fn oidc_request_uri(&self) -> String {
        format!("http://{}{OIDC_PATH}", self.addr)
    }

    /// Switches how the fake answers.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.state.mode) = mode;
    }

    /// Every request, in order.
    pub fn requests(&self) -> Vec<OidcRequest> {
        lock(&self.state.requests).clone()
    }

    /// Every OIDC token issued, in order.
    pub fn issued(&self) -> Vec<String> {
        lock(&self.state.issued).clone()
    }
}

fn html(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(full(
            "<!DOCTYPE html><html><head><title>Azure DevOps Services | Sign In</title></head>\
             <body>Sign in to continue</body></html>",
        ))
        .expect("response")
}

fn redirect() -> Response<Body> {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(
            header::LOCATION,
            "https://spsprodweu5.vssps.visualstudio.com/_signin?realm=dev.azure.com",
        )
        .body(full(""))
        .expect("response")
}

fn devops_error(status: StatusCode, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(full(
            json!({
                "$id": "1",
                "innerException": null,
                "message": message,
                "typeName": "Microsoft.TeamFoundation.DistributedTask.WebApi.TaskOrchestrationPlanSecurityException",
                "typeKey": "TaskOrchestrationPlanSecurityException",
                "errorCode": 0,
                "eventId": 3000
            })
            .to_string(),
        ))
        .expect("response")
}

fn unauthorized() -> Response<Body> {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(
            header::WWW_AUTHENTICATE,
            "Bearer authorization_uri=https://login.microsoftonline.com/common",
        )
        .header("X-TFS-ProcessId", "00000000-0000-0000-0000-000000000000")
        .body(full(""))
        .expect("response")
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
        .unwrap_or_default();
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    lock(&state.requests).push(OidcRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: query.clone(),
        headers: parts.headers.clone(),
        body,
    });
    let mode = *lock(&state.mode);
    match mode {
        Mode::Normal => {}
        Mode::SignInPage203 => return html(StatusCode::NON_AUTHORITATIVE_INFORMATION),
        Mode::Redirect302 => return redirect(),
        Mode::Html200 => return html(StatusCode::OK),
        Mode::Unauthorized401 => return unauthorized(),
        Mode::ServerError500 => {
            return devops_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "VS402908: an internal error occurred.",
            )
        }
    }
    if parts.uri.path() != OIDC_PATH {
        return devops_error(StatusCode::NOT_FOUND, "the resource cannot be found");
    }
    let suppressed = parts
        .headers
        .get("x-tfs-fedauthredirect")
        .is_some_and(|v| v == "Suppress");
    let authorized = parts
        .headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == format!("Bearer {SYSTEM_TOKEN}").as_bytes());
    if !authorized {
        return if suppressed {
            unauthorized()
        } else {
            redirect()
        };
    }
    if parts.method != Method::POST {
        return devops_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the OIDC token endpoint takes POST",
        );
    }
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    if get("api-version") != Some("7.1") {
        return devops_error(
            StatusCode::BAD_REQUEST,
            "VS403429: api-version 7.1 is required here.",
        );
    }
    if get("serviceConnectionId") != Some(SERVICE_CONNECTION_ID) {
        return devops_error(
            StatusCode::BAD_REQUEST,
            "VS402889: the service connection does not exist or has not been authorized for use.",
        );
    }
    let json_body = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return devops_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected application/json",
        );
    }
    let now = super::now_secs();
    let token = sign_token(&json!({
        "jti": format!("{:032x}", rand::random::<u128>()),
        "sub": SUBJECT,
        "aud": "api://AzureADTokenExchange",
        "iss": ISSUER,
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    }));
    state.entra.accept_federated_assertion(&token);
    lock(&state.issued).push(token.clone());
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(full(json!({ "oidcToken": token }).to_string()))
        .expect("response")
}
