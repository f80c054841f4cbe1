//! An Azure Artifacts stand-in: package feeds as at `https://pkgs.dev.azure.com`, for the real
//! package clients (npm, pip and twine, cargo, Maven, NuGet's protocol) and, later, for the same
//! clients through patless.
//!
//! [`FakeArtifacts::start`] binds `127.0.0.1:0`; its base URL `http://127.0.0.1:PORT` stands for
//! `https://pkgs.dev.azure.com`. It serves two feeds, `/{ORG}/_packaging/{FEED}/` (organization
//! scoped) and `/{ORG}/{PROJECT}/_packaging/{FEED}/` (project scoped), each with:
//!
//! - npm: `npm/registry/{name}` (scoped as `@scope%2fname` too) answers the packument, every
//!   version with an absolute `dist.tarball` and the tarball's real `dist.shasum` (SHA-1) and
//!   `dist.integrity` (SHA-512); `npm/registry/{name}/-/{file}.tgz` the tarball; `PUT
//!   npm/registry/{name}` publishes (the packument with its base64 `_attachments`, as `npm
//!   publish` sends it).
//! - PyPI: `pypi/simple/` and `pypi/simple/{project}/` (PEP 503, project names normalized) with
//!   absolute links to `pypi/download/{project}/{version}/{file}#sha256=…`; `POST pypi/upload/`
//!   takes twine's `multipart/form-data` (`:action=file_upload`, checks `sha256_digest`).
//! - Maven: `maven/v1/{group path}/{artifact}/{version}/{file}` (`GET`, `HEAD`, `PUT`); `.sha1`,
//!   `.md5`, `.sha256`, `.sha512` of any stored file are answered from its bytes when not
//!   uploaded; seeded artifacts come with `maven-metadata.xml`.
//! - cargo: the sparse index `Cargo/index/config.json` (absolute `dl` and `api`,
//!   `"auth-required": true`), index files at cargo's paths (`1/a`, `2/ab`, `3/a/abc`,
//!   `ab/cd/abcd…`), downloads at `Cargo/api/v1/crates/{name}/{version}/download` and the publish
//!   API `PUT Cargo/api/v1/crates/new` (cargo's length-prefixed JSON and `.crate`).
//! - NuGet: `nuget/v3/index.json` (resources with absolute `@id`s), the flat container
//!   `nuget/v3/flat2/{id}/index.json` and `…/{id}/{version}/{id}.{version}.nupkg` / `.nuspec`.
//!
//! **Authentication as the service does it**: every feed request needs an Entra access token for
//! Azure DevOps ([`ADO_AUDIENCE`]: RS256 by the fake Entra's key, `aud`, `exp`/`nbf`, checked by
//! [`verify_bearer`]), as `Authorization: Bearer <jwt>` or as the *password* of `Authorization:
//! Basic base64(user:jwt)` (any user name: package clients hold their credential that way).
//! Anything else — no header, a PAT, a token for another audience — is `401` with the service's
//! challenges (`Bearer authorization_uri=…`, `Basic realm="https://pkgsprodeus21…"`,
//! `TFS-Federated`). Every request is recorded ([`FeedRequest`]: method, path, which form of
//! credential, whose token), never the credential itself.
//!
//! **Downloads through blob storage**: by default (see [`FakeArtifacts::set_blob_redirects`])
//! tarballs, wheels, `.crate`s and `.nupkg`s answer `303 See Other` to a second listener standing
//! for Azure Blob Storage, at `http://localhost:PORT2/…?sv=…&se=…&sr=b&sp=r&sig=…`: another host
//! name than the feed's (clients drop their credential on a change of host, npm only then, not on
//! a change of port), a SAS signature of its own checked there, and any request carrying
//! `Authorization` refused `403`, as blob storage refuses a credential it did not issue. Maven
//! files are served by the feed itself.
//!
//! **URLs in answers** are built from the base URL the stand-in is configured with (its own), as
//! the real feeds build theirs from their host: a client that follows them talks to the stand-in
//! directly, which is what a proxy in front must rewrite.
//!
//! Not modelled: upstream sources (npmjs, PyPI, Maven Central, crates.io, nuget.org behind the
//! feed), views (`@Local`, `@Release`) and promotion, retention and deletion (npm `unpublish`,
//! yanking, NuGet delete/unlist), NuGet push (`PackagePublish` is advertised, not served), search
//! and registration resources, feed permissions per identity (any valid Azure DevOps token may
//! read and write), the `{org}.pkgs.visualstudio.com` host, feed ids (GUIDs) in URLs, the npm
//! `-/user`, `-/whoami` and audit endpoints, Maven snapshots' timestamped metadata, compression.

pub mod archive;
mod blob;
mod cargo;
mod maven;
mod npm;
mod nuget;
mod pypi;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::DecodingKey;
use serde_json::{json, Value};

use super::upstream::{test_decoding_key, verify_bearer, Identity};
use super::{full, lock, AbortOnDrop, Body};

use archive::{crate_file, npm_tarball, nupkg, wheel};
pub use blob::BlobRequest;

/// Azure DevOps' Entra resource: the audience of the tokens the feeds take.
pub const ADO_AUDIENCE: &str = "499b84ac-1321-427f-aa17-267ca6975798";
/// The organization, project and feed served.
pub const ORG: &str = "org";
pub const PROJECT: &str = "project";
pub const FEED: &str = "feed";
/// The `Basic` challenge of a feed's `401`, as pkgs.dev.azure.com sends it.
pub const BASIC_CHALLENGE: &str = r#"Basic realm="https://pkgsprodeus21.pkgs.visualstudio.com/""#;
/// The `Bearer` challenge of a feed's `401`.
pub const BEARER_CHALLENGE: &str =
    "Bearer authorization_uri=https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47";

/// The client URLs of a feed at `feed_url` (`…/_packaging/{feed}` without a trailing slash, the
/// stand-in's or a proxy route's): what each client is configured with.
pub fn npm_registry(feed_url: &str) -> String {
    format!("{feed_url}/npm/registry/")
}
/// PEP 503 index (`pip install --index-url`).
pub fn pypi_simple(feed_url: &str) -> String {
    format!("{feed_url}/pypi/simple/")
}
/// twine's repository URL.
pub fn pypi_upload(feed_url: &str) -> String {
    format!("{feed_url}/pypi/upload/")
}
/// Maven repository URL.
pub fn maven_repo(feed_url: &str) -> String {
    format!("{feed_url}/maven/v1")
}
/// cargo's registry index (`sparse+` and this).
pub fn cargo_index(feed_url: &str) -> String {
    format!("{feed_url}/Cargo/index/")
}
/// NuGet's v3 service index.
pub fn nuget_index(feed_url: &str) -> String {
    format!("{feed_url}/nuget/v3/index.json")
}

/// Which form of credential a request carried (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthForm {
    None,
    Bearer,
    /// `Basic`, with its user name.
    Basic {
        user: String,
    },
    /// Another scheme, or a header that does not parse.
    Other(String),
}

/// One request as a feed received it.
#[derive(Debug, Clone)]
pub struct FeedRequest {
    pub method: Method,
    pub path_and_query: String,
    pub auth: AuthForm,
    /// The token's `oid` when it verified.
    pub identity: Option<String>,
    /// Why the credential was refused, when it was (no credential counts).
    pub refused: Option<String>,
    pub status: StatusCode,
}

/// What a feed holds.
#[derive(Default)]
struct Feed {
    npm: BTreeMap<String, npm::Package>,
    /// Normalized project name → its files.
    pypi: BTreeMap<String, Vec<pypi::Dist>>,
    /// Path under `maven/v1/` → bytes.
    maven: BTreeMap<String, Bytes>,
    /// Crate name (lowercase) → index entries and `.crate`s.
    crates: BTreeMap<String, Vec<cargo::Version>>,
    /// Package id (lowercase) → version → nupkg.
    nuget: BTreeMap<String, BTreeMap<String, Bytes>>,
}

struct State {
    base_url: String,
    key: DecodingKey,
    /// Whose tokens the feed accepts (the default app, unless [`FakeArtifacts::expect`] says).
    identity: Mutex<Identity>,
    feeds: Mutex<BTreeMap<String, Feed>>,
    requests: Mutex<Vec<FeedRequest>>,
    blob_redirects: AtomicBool,
    blob: Arc<blob::BlobStore>,
}

/// The stand-in (feeds and blob storage); stops when dropped.
pub struct FakeArtifacts {
    state: Arc<State>,
    _server: AbortOnDrop,
    _blob: AbortOnDrop,
}

impl FakeArtifacts {
    /// Starts the feeds on `127.0.0.1:0` and the blob storage on another port, both empty.
    pub async fn start() -> FakeArtifacts {
        let (blob, blob_server) = blob::BlobStore::start().await;
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("local_addr");
        let mut feeds = BTreeMap::new();
        feeds.insert(format!("/{ORG}/_packaging/{FEED}"), Feed::default());
        feeds.insert(
            format!("/{ORG}/{PROJECT}/_packaging/{FEED}"),
            Feed::default(),
        );
        let state = Arc::new(State {
            base_url: format!("http://{addr}"),
            key: test_decoding_key(),
            identity: Mutex::new(Identity::default_app()),
            feeds: Mutex::new(feeds),
            requests: Mutex::new(Vec::new()),
            blob_redirects: AtomicBool::new(true),
            blob,
        });
        let server = super::serve(listener, {
            let state = state.clone();
            move |req| handle(state.clone(), req)
        });
        FakeArtifacts {
            state,
            _server: server,
            _blob: blob_server,
        }
    }

    /// Accepts tokens of `identity` only (by default the fake Entra's default app).
    pub fn expect(&self, identity: Identity) {
        *lock(&self.state.identity) = identity;
    }

    /// `http://127.0.0.1:PORT`, standing for `https://pkgs.dev.azure.com`.
    pub fn base_url(&self) -> String {
        self.state.base_url.clone()
    }

    /// The organization's feed: `http://127.0.0.1:PORT/org/_packaging/feed`.
    pub fn feed_url(&self) -> String {
        format!("{}/{ORG}/_packaging/{FEED}", self.state.base_url)
    }

    /// The project's feed: `http://127.0.0.1:PORT/org/project/_packaging/feed`.
    pub fn project_feed_url(&self) -> String {
        format!("{}/{ORG}/{PROJECT}/_packaging/{FEED}", self.state.base_url)
    }

    /// The blob storage's base URL, `http://localhost:PORT2`.
    pub fn blob_url(&self) -> String {
        self.state.blob.base_url.clone()
    }

    /// Whether downloads answer `303` to blob storage (the default) or `200` themselves.
    pub fn set_blob_redirects(&self, on: bool) {
        self.state.blob_redirects.store(on, Ordering::SeqCst);
    }

    /// Every feed request so far, in order.
    pub fn requests(&self) -> Vec<FeedRequest> {
        lock(&self.state.requests).clone()
    }

    /// Every blob storage request so far, in order.
    pub fn blob_requests(&self) -> Vec<BlobRequest> {
        self.state.blob.requests()
    }

    /// Asserts that at least one request was served and that no request carried a credential
    /// the feed refused (requests without any are fine: clients probe before they authenticate).
    /// Returns the served requests.
    #[track_caller]
    pub fn assert_only_valid_credentials(&self) -> Vec<FeedRequest> {
        let requests = self.requests();
        let bad: Vec<_> = requests
            .iter()
            .filter(|r| r.auth != AuthForm::None && r.refused.is_some())
            .collect();
        assert!(bad.is_empty(), "credentials refused: {bad:#?}");
        let served: Vec<_> = requests
            .into_iter()
            .filter(|r| r.identity.is_some())
            .collect();
        assert!(!served.is_empty(), "no request was served");
        served
    }

    /// Asserts that blob storage never saw an `Authorization` header.
    #[track_caller]
    pub fn assert_blob_saw_no_credential(&self) {
        let with: Vec<_> = self
            .blob_requests()
            .into_iter()
            .filter(|r| r.had_authorization)
            .collect();
        assert!(with.is_empty(), "blob storage got credentials: {with:#?}");
    }

    fn with_feed<T>(&self, feed_url: &str, f: impl FnOnce(&mut Feed) -> T) -> T {
        let root = feed_url
            .strip_prefix(&self.state.base_url)
            .unwrap_or(feed_url);
        let mut feeds = lock(&self.state.feeds);
        let feed = feeds
            .get_mut(root)
            .unwrap_or_else(|| panic!("no feed at {feed_url}"));
        f(feed)
    }

    /// Publishes `name@version` (an [`npm_tarball`]) to the organization's feed.
    pub fn add_npm(&self, name: &str, version: &str) {
        let tarball = Bytes::from(npm_tarball(name, version));
        let manifest = json!({"name": name, "version": version, "main": "index.js"});
        self.with_feed(&self.feed_url(), |f| {
            npm::add_version(&mut f.npm, name, version, manifest, tarball)
        });
    }

    /// The versions of npm package `name` in the feed at `feed_url`.
    pub fn npm_versions(&self, feed_url: &str, name: &str) -> Vec<String> {
        self.with_feed(feed_url, |f| {
            f.npm
                .get(name)
                .map(|p| p.versions.keys().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Adds a [`wheel`] of `name` `version` to the organization's feed.
    pub fn add_wheel(&self, name: &str, version: &str) {
        let (file, bytes) = wheel(name, version);
        self.with_feed(&self.feed_url(), |f| {
            pypi::add(&mut f.pypi, name, version, &file, Bytes::from(bytes))
        });
    }

    /// The file names of PyPI project `name` in the feed at `feed_url`.
    pub fn pypi_files(&self, feed_url: &str, name: &str) -> Vec<String> {
        self.with_feed(feed_url, |f| {
            f.pypi
                .get(&pypi::normalize(name))
                .map(|d| d.iter().map(|d| d.file.clone()).collect())
                .unwrap_or_default()
        })
    }

    /// Adds `group:artifact:version` (POM, [`archive::jar`], their `.sha1`/`.md5`, `maven-metadata.xml`)
    /// to the organization's feed.
    pub fn add_maven(&self, group: &str, artifact: &str, version: &str) {
        self.with_feed(&self.feed_url(), |f| {
            maven::add(&mut f.maven, group, artifact, version)
        });
    }

    /// The bytes stored at `path` (under `maven/v1/`) of the feed at `feed_url`.
    pub fn maven_file(&self, feed_url: &str, path: &str) -> Option<Bytes> {
        self.with_feed(feed_url, |f| f.maven.get(path).cloned())
    }

    /// Adds a [`crate_file`] of `name` `version` to the organization's feed.
    pub fn add_crate(&self, name: &str, version: &str) {
        self.with_feed(&self.feed_url(), |f| {
            cargo::add(
                &mut f.crates,
                cargo::entry(name, version),
                crate_file(name, version),
            )
        });
    }

    /// The versions of crate `name` in the feed at `feed_url`.
    pub fn crate_versions(&self, feed_url: &str, name: &str) -> Vec<String> {
        self.with_feed(feed_url, |f| {
            f.crates
                .get(&name.to_ascii_lowercase())
                .map(|v| v.iter().map(cargo::Version::vers).collect())
                .unwrap_or_default()
        })
    }

    /// Adds a [`nupkg`] of `id` `version` to the organization's feed.
    pub fn add_nuget(&self, id: &str, version: &str) {
        self.with_feed(&self.feed_url(), |f| {
            f.nuget.entry(id.to_ascii_lowercase()).or_default().insert(
                version.to_ascii_lowercase(),
                Bytes::from(nupkg(id, version)),
            );
        });
    }
}

/// One request, read whole, with where it is going.
struct Call {
    method: Method,
    headers: HeaderMap,
    /// The feed's absolute URL as answers spell it (`{base}/org/_packaging/feed`).
    feed_url: String,
    /// The path after the feed, from `/` (still percent-encoded).
    rest: String,
    body: Bytes,
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |pq| pq.to_string());
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let (auth, verdict) = authenticate(&state, &parts.headers);
    let response = match &verdict {
        Err(_) => unauthorized(),
        Ok(_) => match split_feed(&state, parts.uri.path()) {
            None => not_found("The feed does not exist."),
            Some((root, rest)) => {
                let call = Call {
                    method: parts.method.clone(),
                    headers: parts.headers.clone(),
                    feed_url: format!("{}{root}", state.base_url),
                    rest,
                    body,
                };
                route(&state, &root, &call)
            }
        },
    };
    lock(&state.requests).push(FeedRequest {
        method: parts.method,
        path_and_query,
        auth,
        identity: verdict.as_ref().ok().cloned(),
        refused: verdict.err(),
        status: response.status(),
    });
    response
}

/// The form of the request's credential, and the token's `oid` when the credential is a valid
/// Azure DevOps token (`Err`: why not).
fn authenticate(state: &State, headers: &HeaderMap) -> (AuthForm, Result<String, String>) {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return (AuthForm::None, Err("no credential".into()));
    };
    let value = value.to_str().unwrap_or_default();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let (form, token) = if scheme.eq_ignore_ascii_case("bearer") {
        (AuthForm::Bearer, rest.trim().to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((user, password)) => (
                AuthForm::Basic {
                    user: user.to_string(),
                },
                password.to_string(),
            ),
            None => {
                let form = AuthForm::Other("Basic (not base64 user:password)".into());
                return (form, Err("malformed Basic credential".into()));
            }
        }
    } else {
        let form = AuthForm::Other(scheme.to_string());
        return (form, Err(format!("scheme {scheme:?}")));
    };
    let mut bearer = HeaderMap::new();
    match HeaderValue::from_str(&format!("Bearer {token}")) {
        Ok(v) => bearer.insert(header::AUTHORIZATION, v),
        Err(_) => return (form, Err("credential is not a header value".into())),
    };
    let identity = lock(&state.identity).clone();
    let verdict = verify_bearer(&bearer, &state.key, ADO_AUDIENCE, &identity).map(|(_, claims)| {
        claims
            .get("oid")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    });
    (form, verdict)
}

/// Splits `/org[/project]/_packaging/feed/rest` into the feed's root and `/rest`, for a feed
/// that exists.
fn split_feed(state: &State, path: &str) -> Option<(String, String)> {
    let at = path.find("/_packaging/")?;
    let after = &path[at + "/_packaging/".len()..];
    let feed_len = after.find('/').unwrap_or(after.len());
    let root = &path[..at + "/_packaging/".len() + feed_len];
    let rest = &path[root.len()..];
    let known = lock(&state.feeds)
        .keys()
        .any(|k| k.eq_ignore_ascii_case(root));
    known.then(|| (root.to_string(), rest.to_string()))
}

fn route(state: &State, root: &str, call: &Call) -> Response<Body> {
    let rest = call.rest.as_str();
    let mut feeds = lock(&state.feeds);
    let Some(feed) = feeds
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case(root))
        .map(|(_, f)| f)
    else {
        return not_found("The feed does not exist.");
    };
    let download = |bytes: Bytes, content_type: &str| -> Response<Body> {
        if state.blob_redirects.load(Ordering::SeqCst) {
            let location = state.blob.signed_url(bytes, content_type);
            return Response::builder()
                .status(StatusCode::SEE_OTHER)
                .header(header::LOCATION, location)
                .body(super::empty())
                .expect("response");
        }
        ok(content_type, bytes)
    };
    if let Some(r) = rest.strip_prefix("/npm/registry/") {
        npm::handle(&mut feed.npm, call, r, &download)
    } else if let Some(r) = rest.strip_prefix("/pypi/") {
        pypi::handle(&mut feed.pypi, call, r, &download)
    } else if let Some(r) = rest.strip_prefix("/maven/v1/") {
        maven::handle(&mut feed.maven, call, r)
    } else if let Some(r) = rest.strip_prefix("/Cargo/") {
        cargo::handle(&mut feed.crates, call, r, &download)
    } else if let Some(r) = rest.strip_prefix("/nuget/v3/") {
        nuget::handle(&feed.nuget, call, r, &download)
    } else {
        not_found("No such protocol on this feed.")
    }
}

/// The `401` of a feed: Azure DevOps' JSON error and its three challenges.
fn unauthorized() -> Response<Body> {
    let mut r = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({
            "$id": "1",
            "innerException": null,
            "message": "TF400813: The user '' is not authorized to access this resource.",
            "typeName": "Microsoft.TeamFoundation.Framework.Server.UnauthorizedRequestException, Microsoft.TeamFoundation.Framework.Server",
            "typeKey": "UnauthorizedRequestException",
            "errorCode": 0,
            "eventId": 3000,
        }),
    );
    let h = r.headers_mut();
    for challenge in [BEARER_CHALLENGE, BASIC_CHALLENGE, "TFS-Federated"] {
        h.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    h.insert(
        "x-tfs-fedauthrealm",
        HeaderValue::from_static("https://app.vssps.visualstudio.com/"),
    );
    r
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(full(body.to_string()))
        .expect("response")
}

/// `200` with `body` as `content_type`.
fn ok(content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(full(body))
        .expect("response")
}

/// An Azure DevOps style JSON error.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"$id": "1", "innerException": null, "message": message, "typeKey": "PackageException", "errorCode": 0, "eventId": 3000}),
    )
}

fn not_found(message: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, message)
}

/// `path` percent-decoded.
fn decode(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}
