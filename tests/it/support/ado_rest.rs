//! An Azure DevOps REST stand-in for real clients (curl, the `azure-devops` Python SDK,
//! `azure-devops-node-api`): it accepts only valid Entra bearer tokens for Azure DevOps of the
//! expected identity ([`verify_bearer`], audience `499b84ac-…`, the fake Entra's default app
//! unless [`FakeAdo::expect`] says otherwise); anything else — no credential, a PAT as Basic, a
//! bad token — is `401` as from dev.azure.com, and recorded (with whether a Basic credential ever
//! arrived: a client that went around patless).
//!
//! Served, in Azure DevOps' shapes (paths case-insensitive, as there):
//! - `OPTIONS /{org}/_apis` and `OPTIONS /{org}/_apis/{area}`: the `ApiResourceLocation`s the SDKs
//!   negotiate routes and versions with (Location/ResourceAreas, core/projects, wit/workItems,
//!   with the location ids of the SDK sources).
//! - `GET /{org}/_apis/ResourceAreas[/{id}]`: each area with a `locationUrl` that is this
//!   stand-in's own absolute URL `http://127.0.0.1:PORT/{org}/` (dev.azure.com answers
//!   `https://dev.azure.com/{org}/`), plus Release on `https://vsrm.dev.azure.com/{org}/`.
//! - `GET /{org}/_apis/projects[/{id}]`: `{"count":n,"value":[…]}`.
//! - `POST /{org}/{project}/_apis/wit/workitems/${type}` (`application/json-patch+json`): a new
//!   work item with the patched fields; `PATCH|GET /{org}[/{project}]/_apis/wit/workitems/{id}`.
//! - `GET /{org}/{project}/_apis/build/builds/{id}/artifacts?artifactName=…&$format=zip`: the
//!   artifact, [`FakeAdo::set_artifact`] pattern bytes, chunked, produced as the client reads;
//!   [`FakeAdo::hold_artifact_after`] pauses it part way until [`FakeAdo::release_artifact`].
//!
//! `POST` and `PATCH` without an `api-version` (query or `Accept`) are `400`, as there.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::DecodingKey;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::upstream::{test_decoding_key, verify_bearer, Identity};
use super::{full, lock, pattern_byte, AbortOnDrop, Body};

/// Azure DevOps' Entra resource (the token audience).
pub const ADO_RESOURCE: &str = "499b84ac-1321-427f-aa17-267ca6975798";
/// Resource-area ids (as in the SDKs: `resource_area_identifier`, `RESOURCE_AREA_ID`).
pub const CORE_AREA: &str = "79134c72-4a58-4b42-976c-04e7115f32bf";
pub const WIT_AREA: &str = "5264459e-e5e0-4bd8-b118-0985e68a4ec5";
pub const BUILD_AREA: &str = "5d6898bb-45ec-463f-95f9-54d49c71752e";
pub const LOCATION_AREA: &str = "00d9565f-ed9c-4a06-9a50-00e7896ccab4";
pub const RELEASE_AREA: &str = "efc2f575-36ef-48e9-b672-0c6fb4a48ac5";
/// Location ids (the SDKs' `location_id`s).
pub const RESOURCE_AREAS_LOCATION: &str = "e81700f7-3be2-46de-8624-2eb35882fcaa";
pub const PROJECTS_LOCATION: &str = "603fe2ac-9723-48b9-88ad-09305aa6c6e1";
pub const WORK_ITEM_CREATE_LOCATION: &str = "62d3d110-0047-428c-ad3c-4fe872c91c74";
pub const WORK_ITEM_LOCATION: &str = "72c7ddf8-2cdc-4f60-90cd-ab71c14a399b";
/// The projects every organization has here.
pub const PROJECTS: [&str; 2] = ["Fabrikam", "Tailspin"];
/// Artifact chunk size.
pub const ARTIFACT_CHUNK: u64 = 256 * 1024;

/// The credential a request carried, as far as the stand-in tells (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    None,
    /// A bearer token that verified (signature, audience, expiry, identity).
    ValidBearer,
    /// A bearer token that did not, and why.
    InvalidBearer(String),
    /// `Basic` (a PAT).
    Basic,
    /// Another scheme.
    Other(String),
}

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct AdoRequest {
    pub method: Method,
    pub path_and_query: String,
    pub credential: Credential,
    /// From the query or the `Accept` header.
    pub api_version: Option<String>,
    pub content_type: Option<String>,
    pub status: u16,
}

struct State {
    base_url: String,
    key: DecodingKey,
    identity: Mutex<Identity>,
    requests: Mutex<Vec<AdoRequest>>,
    work_items: Mutex<HashMap<u64, Value>>,
    next_id: AtomicU64,
    artifact_len: AtomicU64,
    /// Artifact bytes handed to hyper so far (all downloads).
    artifact_sent: Arc<AtomicU64>,
    hold_after: Mutex<Option<u64>>,
    release: watch::Sender<bool>,
}

/// The stand-in; stops when dropped.
pub struct FakeAdo {
    state: Arc<State>,
    _server: AbortOnDrop,
}

impl FakeAdo {
    /// Starts the stand-in on `127.0.0.1:0`, with a 1 MiB artifact.
    pub async fn start() -> FakeAdo {
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let (release, _) = watch::channel(false);
        let state = Arc::new(State {
            base_url: format!("http://{addr}"),
            key: test_decoding_key(),
            identity: Mutex::new(Identity::default_app()),
            requests: Mutex::new(Vec::new()),
            work_items: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            artifact_len: AtomicU64::new(1024 * 1024),
            artifact_sent: Arc::new(AtomicU64::new(0)),
            hold_after: Mutex::new(None),
            release,
        });
        let handler_state = state.clone();
        let server = super::serve(listener, move |req| handle(handler_state.clone(), req));
        FakeAdo {
            state,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash): a route's upstream.
    pub fn url(&self) -> String {
        self.state.base_url.clone()
    }

    /// Accepts only tokens of `identity` from now on (default: the fake Entra's default app).
    pub fn expect(&self, identity: Identity) {
        *lock(&self.state.identity) = identity;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<AdoRequest> {
        lock(&self.state.requests).clone()
    }

    /// Requests refused for their credential (`401`).
    pub fn rejected(&self) -> Vec<AdoRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.credential != Credential::ValidBearer)
            .collect()
    }

    /// Whether a `Basic` credential (a PAT) ever arrived.
    pub fn saw_basic(&self) -> bool {
        self.requests()
            .iter()
            .any(|r| r.credential == Credential::Basic)
    }

    /// Panics unless every request so far carried a valid bearer token (so came through patless),
    /// with the refused ones (method, path, credential kind) in the message.
    pub fn assert_only_bearer(&self) {
        let all = self.requests();
        assert!(
            !all.is_empty(),
            "no request reached the Azure DevOps stand-in"
        );
        let refused: Vec<String> = self
            .rejected()
            .iter()
            .map(|r| format!("{} {} ({:?})", r.method, r.path_and_query, r.credential))
            .collect();
        assert!(
            refused.is_empty(),
            "the stand-in saw requests without a valid bearer token (a PAT: {}): {refused:#?}",
            self.saw_basic()
        );
    }

    /// The artifact's size from now on.
    pub fn set_artifact(&self, len: u64) {
        self.state.artifact_len.store(len, Ordering::SeqCst);
    }

    /// Artifact downloads pause once `bytes` are sent, until [`FakeAdo::release_artifact`].
    pub fn hold_artifact_after(&self, bytes: u64) {
        *lock(&self.state.hold_after) = Some(bytes);
        self.state.release.send_replace(false);
    }

    /// Lets held artifact downloads go on.
    pub fn release_artifact(&self) {
        self.state.release.send_replace(true);
    }

    /// Artifact bytes handed to the connection so far.
    pub fn artifact_sent(&self) -> u64 {
        self.state.artifact_sent.load(Ordering::SeqCst)
    }

    /// The work item `id`, as stored.
    pub fn work_item(&self, id: u64) -> Option<Value> {
        lock(&self.state.work_items).get(&id).cloned()
    }
}

fn credential(state: &State, headers: &HeaderMap) -> Credential {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Credential::None;
    };
    let scheme = value
        .to_str()
        .ok()
        .and_then(|v| v.split(' ').next())
        .unwrap_or("")
        .to_ascii_lowercase();
    match scheme.as_str() {
        "bearer" => match verify_bearer(
            headers,
            &state.key,
            ADO_RESOURCE,
            &lock(&state.identity).clone(),
        ) {
            Ok(_) => Credential::ValidBearer,
            Err(why) => Credential::InvalidBearer(why),
        },
        "basic" => Credential::Basic,
        other => Credential::Other(other.to_string()),
    }
}

fn api_version(query: &HashMap<String, String>, headers: &HeaderMap) -> Option<String> {
    if let Some(v) = query.get("api-version") {
        return Some(v.clone());
    }
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([';', ',']))
        .filter_map(|p| p.trim().strip_prefix("api-version="))
        .map(str::to_string)
        .next()
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header("x-tfs-processid", "00000000-0000-0000-0000-000000000000")
        .body(full(body.to_string()))
        .expect("response")
}

/// Azure DevOps' error body.
fn ado_error(status: StatusCode, type_key: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({
            "$id": "1",
            "innerException": null,
            "message": message,
            "typeName": format!("Microsoft.TeamFoundation.{type_key}, Microsoft.TeamFoundation"),
            "typeKey": type_key,
            "errorCode": 0,
            "eventId": 3000
        }),
    )
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let credential = credential(&state, &parts.headers);
    let query = query_map(parts.uri.query());
    let mut record = AdoRequest {
        method: parts.method.clone(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.to_string()),
        credential: credential.clone(),
        api_version: api_version(&query, &parts.headers),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        status: 0,
    };
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let resp = if credential == Credential::ValidBearer {
        route(
            &state,
            &parts.method,
            parts.uri.path(),
            &query,
            &record,
            &bytes,
        )
    } else {
        // dev.azure.com's answer to a missing or refused credential (with the sign-in redirect
        // suppressed, as patless and the SDKs ask).
        Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(
                header::WWW_AUTHENTICATE,
                "Bearer authorization_uri=https://login.microsoftonline.com/common",
            )
            .header(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"https://dev.azure.com/\"",
            )
            .header("x-tfs-serviceerror", "The+resource+requires+authentication")
            .body(full(""))
            .expect("response")
    };
    record.status = resp.status().as_u16();
    lock(&state.requests).push(record);
    resp
}

fn route(
    state: &Arc<State>,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    record: &AdoRequest,
    body: &[u8],
) -> Response<Body> {
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect();
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let Some(org) = segments.first().map(String::as_str) else {
        return ado_error(StatusCode::NOT_FOUND, "NotFound", "no organization");
    };
    let needs_version = matches!(*method, Method::POST | Method::PATCH);
    if needs_version && record.api_version.is_none() {
        return ado_error(
            StatusCode::BAD_REQUEST,
            "VssVersionNotSpecifiedException",
            &format!(
                "VS800006: No api-version was supplied for the {method} request. Please specify a \
                 version by including an api-version query parameter."
            ),
        );
    }
    match (method, &lower[1..]) {
        (&Method::OPTIONS, ["_apis"]) => locations(None),
        (&Method::OPTIONS, ["_apis", area]) => locations(Some(area)),
        (&Method::GET, ["_apis", "resourceareas"]) => resource_areas(state, org, None),
        (&Method::GET, ["_apis", "resourceareas", id]) => resource_areas(state, org, Some(id)),
        (&Method::GET, ["_apis", "projects"]) => {
            let value: Vec<Value> = PROJECTS.iter().map(|p| project(state, org, p)).collect();
            json_response(
                StatusCode::OK,
                &json!({"count": value.len(), "value": value}),
            )
        }
        (&Method::GET, ["_apis", "projects", id]) => {
            match PROJECTS.iter().find(|p| p.eq_ignore_ascii_case(id)) {
                Some(p) => json_response(StatusCode::OK, &project(state, org, p)),
                None => ado_error(
                    StatusCode::NOT_FOUND,
                    "ProjectDoesNotExistWithNameException",
                    "TF200016: The following project does not exist.",
                ),
            }
        }
        (&Method::POST, [_, "_apis", "wit", "workitems", kind]) if kind.starts_with('$') => {
            let project = segments[1].as_str();
            let kind = &segments[5][1..];
            create_work_item(state, org, project, kind, record, body)
        }
        (&Method::PATCH | &Method::GET, ["_apis", "wit", "workitems", id])
        | (&Method::PATCH | &Method::GET, [_, "_apis", "wit", "workitems", id]) => {
            let Ok(id) = id.parse::<u64>() else {
                return ado_error(StatusCode::BAD_REQUEST, "ArgumentException", "bad id");
            };
            if *method == Method::GET {
                return match lock(&state.work_items).get(&id) {
                    Some(item) => json_response(StatusCode::OK, item),
                    None => work_item_missing(id),
                };
            }
            update_work_item(state, id, record, body)
        }
        (&Method::GET, [_, "_apis", "build", "builds", _, "artifacts"])
            if query.contains_key("artifactName")
                && query.get("$format").map(String::as_str) == Some("zip") =>
        {
            artifact(state)
        }
        _ => ado_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("no such resource: {method} {path}"),
        ),
    }
}

fn location(id: &str, area: &str, resource: &str, template: &str, resource_version: u32) -> Value {
    json!({
        "id": id,
        "area": area,
        "resourceName": resource,
        "routeTemplate": template,
        "resourceVersion": resource_version,
        "minVersion": "1.0",
        "maxVersion": "7.2",
        "releasedVersion": "7.1"
    })
}

/// The `OPTIONS` answer: every location, or one area's.
fn locations(area: Option<&str>) -> Response<Body> {
    let all = [
        json!({
            "id": RESOURCE_AREAS_LOCATION,
            "area": "Location",
            "resourceName": "ResourceAreas",
            "routeTemplate": "_apis/{resource}/{areaId}",
            "resourceVersion": 1,
            "minVersion": "3.2",
            "maxVersion": "7.2",
            "releasedVersion": "0.0"
        }),
        location(
            PROJECTS_LOCATION,
            "core",
            "projects",
            "_apis/{resource}/{*projectId}",
            4,
        ),
        location(
            WORK_ITEM_CREATE_LOCATION,
            "wit",
            "workItems",
            "{project}/_apis/{area}/{resource}/${type}",
            3,
        ),
        location(
            WORK_ITEM_LOCATION,
            "wit",
            "workItems",
            "{project}/_apis/{area}/{resource}/{id}",
            3,
        ),
    ];
    let value: Vec<Value> = all
        .into_iter()
        .filter(|l| {
            area.is_none_or(|a| {
                l["area"]
                    .as_str()
                    .is_some_and(|la| la.eq_ignore_ascii_case(a))
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"count": value.len(), "value": value}),
    )
}

fn resource_areas(state: &State, org: &str, id: Option<&str>) -> Response<Body> {
    let here = format!("{}/{org}/", state.base_url);
    let areas = [
        (CORE_AREA, "core", here.clone()),
        (WIT_AREA, "wit", here.clone()),
        (BUILD_AREA, "build", here.clone()),
        (LOCATION_AREA, "Location", here.clone()),
        // Release lives on its own host at dev.azure.com: patless leaves such a URL alone unless
        // a route serves it.
        (
            RELEASE_AREA,
            "Release",
            format!("https://vsrm.dev.azure.com/{org}/"),
        ),
    ];
    let value: Vec<Value> = areas
        .iter()
        .map(|(id, name, url)| json!({"id": id, "name": name, "locationUrl": url}))
        .collect();
    match id {
        None => json_response(
            StatusCode::OK,
            &json!({"count": value.len(), "value": value}),
        ),
        Some(id) => match value.into_iter().find(|a| a["id"] == *id) {
            Some(area) => json_response(StatusCode::OK, &area),
            None => ado_error(
                StatusCode::NOT_FOUND,
                "ResourceAreaNotFoundException",
                "no such resource area",
            ),
        },
    }
}

fn project_id(name: &str) -> String {
    let n = PROJECTS
        .iter()
        .position(|p| p.eq_ignore_ascii_case(name))
        .unwrap_or(9);
    format!("6ce954b1-ce1f-45d1-b94d-e6bf2464ba2{n}")
}

fn project(state: &State, org: &str, name: &str) -> Value {
    let id = project_id(name);
    json!({
        "id": id,
        "name": name,
        "description": format!("{name} team project"),
        "url": format!("{}/{org}/_apis/projects/{id}", state.base_url),
        "state": "wellFormed",
        "revision": 411,
        "visibility": "private",
        "lastUpdateTime": "2024-05-02T10:11:12.13Z"
    })
}

/// An Azure DevOps error answer, kept small until it is one.
struct Refusal(StatusCode, &'static str, &'static str);

impl Refusal {
    fn response(&self) -> Response<Body> {
        ado_error(self.0, self.1, self.2)
    }
}

/// The JSON-patch document of a work-item request, checked as Azure DevOps does.
fn patch_document(record: &AdoRequest, body: &[u8]) -> Result<Vec<Value>, Refusal> {
    let media = record
        .content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    if media.as_deref() != Some("application/json-patch+json") {
        return Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "VssRequestContentTypeNotSupportedException",
            "The request indicated a Content-Type of application/json for method type PATCH/POST \
             which is not supported. Valid content types for this method are: \
             application/json-patch+json.",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(ops)) if !ops.is_empty() => Ok(ops),
        _ => Err(Refusal(
            StatusCode::BAD_REQUEST,
            "VssPropertyValidationException",
            "You must pass a valid patch document in the body of the request.",
        )),
    }
}

/// Applies `add`/`replace`/`remove` of `/fields/{name}` to `item`.
fn apply(item: &mut Value, ops: &[Value]) -> Result<(), Refusal> {
    for op in ops {
        let kind = op["op"].as_str().unwrap_or("");
        let Some(field) = op["path"].as_str().and_then(|p| p.strip_prefix("/fields/")) else {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "WorkItemPatchPathNotSupportedException",
                "only /fields/ paths are supported here",
            ));
        };
        let fields = &mut item["fields"];
        match kind {
            "add" | "replace" => fields[field] = op["value"].clone(),
            "remove" => {
                if let Some(map) = fields.as_object_mut() {
                    map.remove(field);
                }
            }
            _ => {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "WorkItemPatchOperationNotSupportedException",
                    "unsupported patch operation",
                ))
            }
        }
    }
    Ok(())
}

fn create_work_item(
    state: &State,
    org: &str,
    project: &str,
    kind: &str,
    record: &AdoRequest,
    body: &[u8],
) -> Response<Body> {
    let ops = match patch_document(record, body) {
        Ok(ops) => ops,
        Err(refusal) => return refusal.response(),
    };
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    let url = format!("{}/{org}/_apis/wit/workItems/{id}", state.base_url);
    let mut item = json!({
        "id": id,
        "rev": 1,
        "fields": {
            "System.AreaPath": project,
            "System.TeamProject": project,
            "System.IterationPath": project,
            "System.WorkItemType": kind,
            "System.State": "To Do",
            "System.Reason": "New task",
            "System.CreatedDate": "2024-05-02T10:11:12.13Z",
        },
        "_links": {"self": {"href": url}},
        "url": url
    });
    if let Err(refusal) = apply(&mut item, &ops) {
        return refusal.response();
    }
    lock(&state.work_items).insert(id, item.clone());
    json_response(StatusCode::OK, &item)
}

fn work_item_missing(id: u64) -> Response<Body> {
    ado_error(
        StatusCode::NOT_FOUND,
        "WorkItemUnauthorizedAccessException",
        &format!(
            "TF401232: Work item {id} does not exist, or you do not have permissions to read it."
        ),
    )
}

fn update_work_item(state: &State, id: u64, record: &AdoRequest, body: &[u8]) -> Response<Body> {
    let ops = match patch_document(record, body) {
        Ok(ops) => ops,
        Err(refusal) => return refusal.response(),
    };
    let mut items = lock(&state.work_items);
    let Some(item) = items.get_mut(&id) else {
        return work_item_missing(id);
    };
    let mut updated = item.clone();
    if let Err(refusal) = apply(&mut updated, &ops) {
        return refusal.response();
    }
    updated["rev"] = json!(updated["rev"].as_u64().unwrap_or(1) + 1);
    *item = updated.clone();
    json_response(StatusCode::OK, &updated)
}

/// The artifact body: chunks from a producer task, which pauses where
/// [`FakeAdo::hold_artifact_after`] says and stops when the client goes away.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

fn artifact(state: &Arc<State>) -> Response<Body> {
    let total = state.artifact_len.load(Ordering::SeqCst);
    let hold = *lock(&state.hold_after);
    let mut release = state.release.subscribe();
    let sent = state.artifact_sent.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        let mut pos = 0u64;
        while pos < total {
            if hold.is_some_and(|h| pos >= h) && release.wait_for(|go| *go).await.is_err() {
                return;
            }
            let end = (pos + ARTIFACT_CHUNK).min(total);
            let chunk: Vec<u8> = (pos..end).map(pattern_byte).collect();
            if tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
            sent.fetch_add(end - pos, Ordering::SeqCst);
            pos = end;
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/zip")
        .header(
            header::CONTENT_DISPOSITION,
            "attachment; filename=drop.zip; filename*=utf-8''drop.zip",
        )
        .body(ChannelBody(rx).boxed())
        .expect("response")
}
