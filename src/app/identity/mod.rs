//! The identity endpoint for SDKs (docs/migrate-from-pat.md, "Azure SDKs: the identity endpoint"):
//! a listener of its own that hands out one patless profile's tokens to programs that hold no
//! credential, in the protocol of a managed-identity endpoint. Two paths, one pipeline:
//!
//! - `app_service.rs`: App Service's protocol (`GET /msi/token?resource=R&api-version=2019-08-01`
//!   with the secret `X-IDENTITY-HEADER`), for SDKs started with `IDENTITY_ENDPOINT` and
//!   `IDENTITY_HEADER`;
//! - `imds.rs`: with `identity_endpoint.imds = true`, IMDS's token path
//!   (`GET /metadata/identity/oauth2/token?api-version=…&resource=R` with `Metadata: true`, no
//!   secret), for SDKs and tools that know only IMDS (`AZURE_POD_IDENTITY_AUTHORITY_HOST`,
//!   Terraform's `msi_endpoint`).
//!
//! A request goes: path (which protocol) and method → inbound policy (loopback `Host`, no
//! cross-site browser request) → the protocol's own check (the header secret, compared in constant
//! time; or `Metadata: true` and no proxy's `X-Forwarded-For`) → `api-version` → `resource` (one
//! of the configured resources) → the token, from the app's cache (`R/.default`, shared with the
//! routes and refreshed in the background) → an optional identity selector (`client_id`,
//! `principal_id`/`object_id`, `mi_res_id`/`msi_res_id`) that must name this identity → the
//! answer, in the protocol's shape. Every request is logged (protocol, resource, result) and
//! counted in `patless_identity_requests_total`; the header and the token never are.

mod app_service;
mod imds;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::App;
use crate::config::{IdentityEndpointConfig, ManagedIdentityId, Profile, ProfileKind};
use crate::env::Environment;
use crate::proxy::{InboundPolicy, ProxyBody, ProxyError};
use crate::token::{CachedToken, TokenUnavailable};

pub use app_service::{API_VERSION, HEADER_NAME, TOKEN_PATH};
pub use imds::TOKEN_PATH as IMDS_TOKEN_PATH;

/// The identity endpoint of one [`App`]: its validated settings, with the header secret kept
/// only as a SHA-256 digest (so the comparison is constant-time whatever the lengths).
pub struct IdentityEndpoint {
    /// The validated `[identity_endpoint]`.
    pub config: IdentityEndpointConfig,
    header_digest: aws_lc_rs::digest::Digest,
    client_id: Option<String>,
    resource_id: Option<String>,
    policy: InboundPolicy,
}

impl std::fmt::Debug for IdentityEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityEndpoint")
            .field("config", &self.config)
            .field("header", &"<redacted>")
            .finish()
    }
}

/// Why the identity endpoint cannot be set up (the header secret cannot be read or used).
#[derive(Debug, thiserror::Error)]
#[error("identity_endpoint.header: {0}")]
pub struct IdentityHeaderError(pub String);

fn sha256(bytes: &[u8]) -> aws_lc_rs::digest::Digest {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
}

impl IdentityEndpoint {
    /// Reads the header secret (`{ env }`/`{ file }` now; a reload reads it again) and takes the
    /// profile's ids for the answer and the identity check.
    pub fn new(
        config: IdentityEndpointConfig,
        profile: Option<&Profile>,
        allowed_hosts: Vec<String>,
        allowed_origins: Vec<String>,
        env: &dyn Environment,
    ) -> Result<IdentityEndpoint, IdentityHeaderError> {
        let secret = config.header.resolve(env).map_err(IdentityHeaderError)?;
        if let Some(why) = crate::config::identity_header_problem(secret.expose()) {
            return Err(IdentityHeaderError(format!("the value read {why}")));
        }
        let kind = profile.map(|p| &p.kind);
        let resource_id = match kind {
            Some(ProfileKind::ManagedIdentity {
                id: Some(ManagedIdentityId::ResourceId(r)),
                ..
            }) => Some(r.clone()),
            _ => None,
        };
        Ok(IdentityEndpoint {
            header_digest: sha256(secret.expose().as_bytes()),
            client_id: kind.and_then(|k| k.client_id()).map(str::to_string),
            resource_id,
            policy: InboundPolicy {
                token: None,
                allowed_hosts,
                allowed_origins,
            },
            config,
        })
    }

    fn header_matches(&self, presented: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(
            sha256(presented).as_ref(),
            self.header_digest.as_ref(),
        )
        .is_ok()
    }

    /// Who `token` stands for: the profile's ids where the config names them, else the token's
    /// own claims.
    fn identity_of(&self, token: &CachedToken) -> Ids {
        let claims = crate::jwt::claims(token.secret().expose()).unwrap_or_default();
        let claim = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_string);
        Ids {
            client_id: self
                .client_id
                .clone()
                .or_else(|| claim("appid"))
                .or_else(|| claim("azp")),
            object_id: claim("oid"),
            resource_id: self.resource_id.clone().or_else(|| claim("xms_mirid")),
        }
    }
}

/// The ids of the identity whose tokens the endpoint hands out, as far as patless can tell.
struct Ids {
    client_id: Option<String>,
    object_id: Option<String>,
    resource_id: Option<String>,
}

/// The protocol a request speaks, told by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    AppService,
    Imds,
}

impl Protocol {
    fn of(path: &str) -> Option<Protocol> {
        if app_service::serves(path) {
            Some(Protocol::AppService)
        } else if imds::serves(path) {
            Some(Protocol::Imds)
        } else {
            None
        }
    }

    /// The `protocol` label of `patless_identity_requests_total`.
    fn label(protocol: Option<Protocol>) -> &'static str {
        match protocol {
            Some(Protocol::AppService) => "app_service",
            Some(Protocol::Imds) => "imds",
            None => "other",
        }
    }
}

/// A request the identity endpoint refuses.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(
        "the identity endpoint serves GET {TOKEN_PATH}?resource=…&api-version={API_VERSION} \
         (and, with identity_endpoint.imds = true, GET {IMDS_TOKEN_PATH}) only"
    )]
    NotFound,
    #[error("the identity endpoint is off in the running configuration ([identity_endpoint] was removed); its listener closes when patless restarts")]
    Off,
    #[error("the IMDS-compatible path {IMDS_TOKEN_PATH} is off: set identity_endpoint.imds = true to serve it")]
    ImdsOff,
    #[error("the identity endpoint answers GET only")]
    MethodNotAllowed,
    #[error("this endpoint requires the X-IDENTITY-HEADER header: start the SDK with IDENTITY_HEADER set to identity_endpoint.header")]
    HeaderMissing,
    #[error("the X-IDENTITY-HEADER value is not identity_endpoint.header: the SDK's IDENTITY_HEADER is stale or wrong")]
    HeaderWrong,
    #[error(
        "Required metadata header not specified: IMDS clients send the header `Metadata: true`"
    )]
    MetadataMissing,
    #[error("the request carries {0}, which a proxy adds when it relays a request: refused, as IMDS refuses it (call the endpoint directly, not through a proxy)")]
    Relayed(&'static str),
    #[error("{0}")]
    Policy(ProxyError),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("resource {asked:?} is not one this endpoint hands out tokens for; allowed: [{allowed}] (identity_endpoint.resources)")]
    ResourceNotAllowed { asked: String, allowed: String },
    #[error("{0}")]
    WrongIdentity(String),
    #[error("{0}")]
    TokenUnavailable(TokenUnavailable),
}

impl Refusal {
    fn code(&self) -> &'static str {
        match self {
            Refusal::NotFound | Refusal::Off | Refusal::ImdsOff => "not_found",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::HeaderMissing | Refusal::HeaderWrong => "inbound_auth_required",
            Refusal::Policy(e) => e.code(),
            Refusal::InvalidRequest(_)
            | Refusal::WrongIdentity(_)
            | Refusal::MetadataMissing
            | Refusal::Relayed(_) => "invalid_request",
            Refusal::ResourceNotAllowed { .. } => "resource_not_allowed",
            Refusal::TokenUnavailable(_) => "token_unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::NotFound | Refusal::Off | Refusal::ImdsOff => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::HeaderMissing | Refusal::HeaderWrong => StatusCode::UNAUTHORIZED,
            Refusal::Policy(e) => e.status(),
            Refusal::InvalidRequest(_)
            | Refusal::WrongIdentity(_)
            | Refusal::MetadataMissing
            | Refusal::Relayed(_) => StatusCode::BAD_REQUEST,
            Refusal::ResourceNotAllowed { .. } => StatusCode::FORBIDDEN,
            Refusal::TokenUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The query parameters that matter, each at most once.
#[derive(Default)]
struct Query {
    resource: Option<String>,
    api_version: Option<String>,
    client_id: Option<String>,
    principal_id: Option<String>,
    resource_id: Option<String>,
}

/// The parameters of either protocol. Each selector is accepted in both spellings on both paths:
/// one that names another identity is refused rather than ignored.
fn parse_query(query: &str) -> Result<Query, Refusal> {
    let mut q = Query::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*k {
            "resource" => &mut q.resource,
            "api-version" => &mut q.api_version,
            "client_id" => &mut q.client_id,
            // App Service says principal_id; IMDS (and MSAL Python on App Service) object_id.
            "principal_id" | "object_id" => &mut q.principal_id,
            // App Service says mi_res_id; IMDS msi_res_id.
            "mi_res_id" | "msi_res_id" => &mut q.resource_id,
            // Others (token_sha256_to_refresh, xms_cc from MSAL) change nothing here.
            _ => continue,
        };
        if slot.is_some() {
            return Err(Refusal::InvalidRequest(format!(
                "the query parameter {k} is given more than once"
            )));
        }
        *slot = Some(v.into_owned());
    }
    Ok(q)
}

/// A client-supplied value for a log line: quoted, escaped and cut short.
fn loggable(text: &str) -> String {
    let cut: String = text.chars().take(120).collect();
    format!("{cut:?}")
}

/// What one request came to, for its answer, its log line and its count.
struct Outcome {
    protocol: Option<Protocol>,
    request_id: String,
    profile: Option<String>,
    resource: String,
}

/// Handles one request on the identity listener, with the app current when it arrived.
pub async fn handle(app: Arc<App>, req: Request<hyper::body::Incoming>) -> Response<ProxyBody> {
    let protocol = Protocol::of(req.uri().path());
    let asked = req
        .uri()
        .query()
        .and_then(|q| parse_query(q).ok())
        .and_then(|q| q.resource);
    let result = answer(&app, protocol, &req).await;
    app.metrics
        .identity_requests
        .with_label_values(&[
            Protocol::label(protocol),
            result.as_ref().map_or_else(Refusal::code, |_| "success"),
        ])
        .inc();
    let outcome = Outcome {
        protocol,
        request_id: format!("{:016x}", rand::random::<u64>()),
        profile: app.identity.as_ref().map(|e| e.config.profile.clone()),
        resource: asked.as_deref().map(loggable).unwrap_or_else(|| "-".into()),
    };
    let mut r = match result {
        Ok(body) => handed_out(&outcome, &body),
        Err(refusal) => refused(&outcome, &refusal),
    };
    if let Ok(v) = HeaderValue::from_str(&outcome.request_id) {
        r.headers_mut()
            .insert(crate::header_names::REQUEST_ID.clone(), v);
    }
    r
}

fn handled_profile(o: &Outcome) -> &str {
    o.profile.as_deref().unwrap_or("-")
}

/// The `200` with a token, logged.
fn handed_out(o: &Outcome, body: &serde_json::Value) -> Response<ProxyBody> {
    tracing::info!(
        request_id = %o.request_id,
        protocol = Protocol::label(o.protocol),
        profile = handled_profile(o),
        resource = %o.resource,
        status = 200,
        "identity endpoint: token handed out"
    );
    json_response(StatusCode::OK, body)
}

/// A refusal's answer, in the shape of the protocol asked for, logged.
fn refused(o: &Outcome, refusal: &Refusal) -> Response<ProxyBody> {
    let status = refusal.status();
    let (protocol, profile) = (Protocol::label(o.protocol), handled_profile(o));
    if status.is_server_error() || status == StatusCode::UNAUTHORIZED {
        tracing::warn!(request_id = %o.request_id, protocol, profile, resource = %o.resource, code = refusal.code(), status = status.as_u16(), "identity endpoint: {refusal}");
    } else {
        tracing::info!(request_id = %o.request_id, protocol, profile, resource = %o.resource, code = refusal.code(), status = status.as_u16(), "identity endpoint: {refusal}");
    }
    let mut body = serde_json::json!({
        "error": refusal.code(),
        "message": refusal.to_string(),
        "route": null,
        "profile": o.profile,
        "request_id": o.request_id,
    });
    match o.protocol {
        Some(Protocol::Imds) => imds::error_fields(&mut body, refusal),
        _ => app_service::error_fields(&mut body, status),
    }
    let mut r = json_response(status, &body);
    let h = r.headers_mut();
    match refusal {
        Refusal::MethodNotAllowed => {
            h.insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        Refusal::TokenUnavailable(t) => {
            let secs = t.retry_after.as_secs_f64().ceil().max(1.0) as u64;
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        _ => {}
    }
    r
}

/// The token answer to `req`, or why there is none.
async fn answer(
    app: &App,
    protocol: Option<Protocol>,
    req: &Request<hyper::body::Incoming>,
) -> Result<serde_json::Value, Refusal> {
    let protocol = protocol.ok_or(Refusal::NotFound)?;
    let ep = app.identity.as_ref().ok_or(Refusal::Off)?;
    if protocol == Protocol::Imds && !ep.config.imds {
        return Err(Refusal::ImdsOff);
    }
    if req.method() != Method::GET {
        return Err(Refusal::MethodNotAllowed);
    }
    ep.policy.check(req.headers()).map_err(Refusal::Policy)?;
    admit(ep, protocol, req.headers())?;
    let q = parse_query(req.uri().query().unwrap_or_default())?;
    match protocol {
        Protocol::AppService => app_service::check_api_version(q.api_version.as_deref())?,
        Protocol::Imds => imds::check_api_version(q.api_version.as_deref())?,
    }
    let asked = asked_resource(&q)?;
    let token = token_for(app, ep, asked).await?;
    let ids = ep.identity_of(&token);
    check_identity(&q, protocol, &ep.config.profile, &ids)?;
    Ok(match protocol {
        Protocol::AppService => app_service::token_body(&token, asked, ids.client_id),
        Protocol::Imds => imds::token_body(&token, asked, ids.client_id),
    })
}

/// The protocol's own admission check: App Service's header secret, or IMDS's `Metadata: true`
/// on a request no proxy relayed.
fn admit(ep: &IdentityEndpoint, protocol: Protocol, headers: &HeaderMap) -> Result<(), Refusal> {
    match protocol {
        Protocol::AppService => app_service::admit(ep, headers),
        Protocol::Imds => imds::admit(headers),
    }
}

/// The resource a request asks for: present and not empty.
fn asked_resource(q: &Query) -> Result<&str, Refusal> {
    match q.resource.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => Ok(r),
        _ => Err(Refusal::InvalidRequest(
            "the resource query parameter is missing; expected resource=<the API's resource, \
             such as 499b84ac-1321-427f-aa17-267ca6975798>"
                .into(),
        )),
    }
}

/// The token for `asked`, once the allow-list (`identity_endpoint.resources`) admits it: from the
/// app's cache, entry `R/.default` of the endpoint's profile.
async fn token_for(
    app: &App,
    ep: &IdentityEndpoint,
    asked: &str,
) -> Result<Arc<CachedToken>, Refusal> {
    let Some(resource) = ep.config.allowed(asked) else {
        return Err(Refusal::ResourceNotAllowed {
            asked: asked.chars().take(200).collect(),
            allowed: ep.config.resources.join(", "),
        });
    };
    let scope = format!("{resource}/.default");
    let entry = app
        .cache
        .entry(&ep.config.profile, &scope, None)
        .ok_or_else(|| {
            Refusal::TokenUnavailable(TokenUnavailable {
                message: format!("profile `{}` has no credential", ep.config.profile),
                retry_after: std::time::Duration::from_secs(1),
                class: None,
            })
        })?;
    entry.get().await.map_err(Refusal::TokenUnavailable)
}

/// A selector in the request (`client_id`, `principal_id`/`object_id`, `mi_res_id`/`msi_res_id`)
/// must name the identity whose tokens this endpoint hands out: an SDK configured for another
/// identity would otherwise get a token it did not ask for. Messages use the protocol's spelling.
fn check_identity(q: &Query, protocol: Protocol, profile: &str, ids: &Ids) -> Result<(), Refusal> {
    let (object_id, resource_id) = match protocol {
        Protocol::AppService => ("principal_id", "mi_res_id"),
        Protocol::Imds => ("object_id", "msi_res_id"),
    };
    for (param, asked, ours) in [
        ("client_id", &q.client_id, &ids.client_id),
        (object_id, &q.principal_id, &ids.object_id),
        (resource_id, &q.resource_id, &ids.resource_id),
    ] {
        let Some(asked) = asked.as_deref() else {
            continue;
        };
        match ours.as_deref() {
            Some(ours) if ours.eq_ignore_ascii_case(asked.trim()) => {}
            Some(ours) => {
                return Err(Refusal::WrongIdentity(format!(
                    "the request asks for the identity with {param} {}, but this endpoint hands \
                     out the tokens of profile `{profile}` ({param} {ours}); drop {param} from \
                     the SDK's settings (or point identity_endpoint.profile at that identity)",
                    loggable(asked)
                )))
            }
            None => {
                return Err(Refusal::WrongIdentity(format!(
                    "the request asks for the identity with {param} {}, but patless cannot tell \
                     the {param} of profile `{profile}`; drop {param} from the SDK's settings",
                    loggable(asked)
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_must_name_this_identity() {
        let q = |client: Option<&str>, principal: Option<&str>, res: Option<&str>| Query {
            client_id: client.map(str::to_string),
            principal_id: principal.map(str::to_string),
            resource_id: res.map(str::to_string),
            ..Default::default()
        };
        let ids = Ids {
            client_id: Some("AbC".into()),
            object_id: Some("oid-1".into()),
            resource_id: None,
        };
        let ok = |q: &Query| check_identity(q, Protocol::AppService, "p", &ids);
        assert!(ok(&q(None, None, None)).is_ok());
        assert!(ok(&q(Some("abc"), Some("OID-1"), None)).is_ok());
        let e = ok(&q(Some("other"), None, None)).expect_err("another client id");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("client_id \"other\""), "{e}");
        assert!(ok(&q(None, Some("oid-2"), None)).is_err());
        let e = ok(&q(None, None, Some("/subscriptions/x"))).expect_err("unknown resource id");
        assert!(e.to_string().contains("cannot tell"), "{e}");
        assert!(e.to_string().contains("mi_res_id"), "{e}");
        let e = check_identity(
            &q(None, Some("oid-2"), Some("/subscriptions/x")),
            Protocol::Imds,
            "p",
            &ids,
        )
        .expect_err("IMDS spelling");
        assert!(e.to_string().contains("object_id \"oid-2\""), "{e}");
    }

    #[test]
    fn repeated_parameters_are_refused_and_unknown_ones_ignored() {
        assert!(parse_query("resource=a&resource=b").is_err());
        assert!(
            parse_query("object_id=a&principal_id=b").is_err(),
            "one selector, two spellings"
        );
        let q = parse_query("resource=https%3A%2F%2Fgraph.microsoft.com&api-version=2019-08-01&xms_cc=cp1&object_id=o&msi_res_id=r")
            .expect("parses");
        assert_eq!(q.resource.as_deref(), Some("https://graph.microsoft.com"));
        assert_eq!(q.principal_id.as_deref(), Some("o"));
        assert_eq!(q.resource_id.as_deref(), Some("r"));
    }

    #[test]
    fn the_path_tells_the_protocol() {
        assert_eq!(Protocol::of("/msi/token"), Some(Protocol::AppService));
        assert_eq!(Protocol::of("/msi/token/"), Some(Protocol::AppService));
        assert_eq!(
            Protocol::of("/metadata/identity/oauth2/token"),
            Some(Protocol::Imds)
        );
        assert_eq!(
            Protocol::of("/metadata/identity/oauth2/token/"),
            Some(Protocol::Imds)
        );
        assert_eq!(Protocol::of("/metadata/identity/oauth2/token//"), None);
        assert_eq!(Protocol::of("/metadata/instance"), None);
        assert_eq!(Protocol::of("/"), None);
    }
}
