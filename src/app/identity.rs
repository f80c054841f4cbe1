//! The identity endpoint for SDKs (docs/migrate-from-pat.md, "Azure SDKs: the identity endpoint"):
//! the App Service managed-identity protocol
//! (`GET /msi/token?resource=R&api-version=2019-08-01` with `X-IDENTITY-HEADER`) on a listener of
//! its own, so an Azure SDK started with `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` gets the tokens
//! of one patless profile and holds no credential itself.
//!
//! A request goes: path and method → inbound policy (loopback `Host`, no cross-site browser
//! request) → the header secret (compared in constant time) → `api-version` → `resource` (one of
//! the configured resources) → the token, from the app's cache (`R/.default`, shared with the
//! routes and refreshed in the background) → an optional identity selector (`client_id`,
//! `principal_id`/`object_id`, `mi_res_id`) that must name this identity → the answer. Every
//! request is logged (resource, result) and counted in `patless_identity_requests_total`; the
//! header and the token never are.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::App;
use crate::config::{IdentityEndpointConfig, ManagedIdentityId, Profile, ProfileKind};
use crate::env::Environment;
use crate::proxy::{InboundPolicy, ProxyBody, ProxyError};
use crate::token::TokenUnavailable;

/// The path SDKs are pointed at (`IDENTITY_ENDPOINT=http://127.0.0.1:7072/msi/token`).
pub const TOKEN_PATH: &str = "/msi/token";
/// The one protocol version served (App Service's, which the SDKs send).
pub const API_VERSION: &str = "2019-08-01";
/// The header that carries the secret.
pub use crate::header_names::IDENTITY_HEADER as HEADER_NAME;

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
}

/// A request the identity endpoint refuses.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(
        "the identity endpoint serves GET {TOKEN_PATH}?resource=…&api-version={API_VERSION} only"
    )]
    NotFound,
    #[error("the identity endpoint is off in the running configuration ([identity_endpoint] was removed); its listener closes when patless restarts")]
    Off,
    #[error("{TOKEN_PATH} answers GET only")]
    MethodNotAllowed,
    #[error("this endpoint requires the X-IDENTITY-HEADER header: start the SDK with IDENTITY_HEADER set to identity_endpoint.header")]
    HeaderMissing,
    #[error("the X-IDENTITY-HEADER value is not identity_endpoint.header: the SDK's IDENTITY_HEADER is stale or wrong")]
    HeaderWrong,
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
            Refusal::NotFound | Refusal::Off => "not_found",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::HeaderMissing | Refusal::HeaderWrong => "inbound_auth_required",
            Refusal::Policy(e) => e.code(),
            Refusal::InvalidRequest(_) | Refusal::WrongIdentity(_) => "invalid_request",
            Refusal::ResourceNotAllowed { .. } => "resource_not_allowed",
            Refusal::TokenUnavailable(_) => "token_unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::NotFound | Refusal::Off => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::HeaderMissing | Refusal::HeaderWrong => StatusCode::UNAUTHORIZED,
            Refusal::Policy(e) => e.status(),
            Refusal::InvalidRequest(_) | Refusal::WrongIdentity(_) => StatusCode::BAD_REQUEST,
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

fn parse_query(query: &str) -> Result<Query, Refusal> {
    let mut q = Query::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*k {
            "resource" => &mut q.resource,
            "api-version" => &mut q.api_version,
            "client_id" => &mut q.client_id,
            // App Service says principal_id; MSAL Python sends object_id.
            "principal_id" | "object_id" => &mut q.principal_id,
            // App Service says mi_res_id; IMDS's spelling is accepted too.
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

/// Handles one request on the identity listener, with the app current when it arrived.
pub async fn handle(app: Arc<App>, req: Request<hyper::body::Incoming>) -> Response<ProxyBody> {
    let request_id = format!("{:016x}", rand::random::<u64>());
    let asked = req
        .uri()
        .query()
        .and_then(|q| parse_query(q).ok())
        .and_then(|q| q.resource);
    let outcome = answer(&app, &req).await;
    let result = match &outcome {
        Ok(_) => "success",
        Err(r) => r.code(),
    };
    app.metrics
        .identity_requests
        .with_label_values(&[result])
        .inc();
    let resource = asked.as_deref().map(loggable).unwrap_or_else(|| "-".into());
    let profile = app
        .identity
        .as_ref()
        .map(|e| e.config.profile.as_str())
        .unwrap_or("-");
    match outcome {
        Ok((status, body)) => {
            tracing::info!(
                request_id = %request_id,
                profile,
                resource = %resource,
                status = status.as_u16(),
                "identity endpoint: token handed out"
            );
            let mut r = json_response(status, &body);
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                r.headers_mut()
                    .insert(crate::header_names::REQUEST_ID.clone(), v);
            }
            r
        }
        Err(refusal) => {
            let status = refusal.status();
            if status.is_server_error() || status == StatusCode::UNAUTHORIZED {
                tracing::warn!(request_id = %request_id, profile, resource = %resource, code = refusal.code(), status = status.as_u16(), "identity endpoint: {refusal}");
            } else {
                tracing::info!(request_id = %request_id, profile, resource = %resource, code = refusal.code(), status = status.as_u16(), "identity endpoint: {refusal}");
            }
            let body = serde_json::json!({
                "error": refusal.code(),
                "message": refusal.to_string(),
                // App Service's own error field, which MSAL Python shows.
                "statusCode": status.as_u16(),
                "route": null,
                "profile": app.identity.as_ref().map(|e| e.config.profile.as_str()),
                "request_id": request_id,
            });
            let mut r = json_response(status, &body);
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                h.insert(crate::header_names::REQUEST_ID.clone(), v);
            }
            match &refusal {
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
    }
}

async fn answer(
    app: &App,
    req: &Request<hyper::body::Incoming>,
) -> Result<(StatusCode, serde_json::Value), Refusal> {
    let path = req.uri().path();
    if path != TOKEN_PATH && path != "/msi/token/" {
        return Err(Refusal::NotFound);
    }
    let Some(ep) = app.identity.as_ref() else {
        return Err(Refusal::Off);
    };
    if req.method() != Method::GET {
        return Err(Refusal::MethodNotAllowed);
    }
    ep.policy.check(req.headers()).map_err(Refusal::Policy)?;
    let presented = req
        .headers()
        .get(&HEADER_NAME)
        .ok_or(Refusal::HeaderMissing)?;
    if !ep.header_matches(presented.as_bytes()) {
        return Err(Refusal::HeaderWrong);
    }
    let q = parse_query(req.uri().query().unwrap_or_default())?;
    let asked = asked_resource(&q)?;
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
    let token = entry.get().await.map_err(Refusal::TokenUnavailable)?;
    token_answer(ep, &q, &token, asked)
}

/// The resource a well-formed request asks for (App Service's `api-version` and `resource`).
fn asked_resource(q: &Query) -> Result<&str, Refusal> {
    match q.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(Refusal::InvalidRequest(format!(
                "api-version {} is not supported; this endpoint speaks App Service's \
                 api-version={API_VERSION}",
                loggable(other)
            )))
        }
        None => {
            return Err(Refusal::InvalidRequest(format!(
                "the api-version query parameter is missing; expected api-version={API_VERSION}"
            )))
        }
    }
    match q.resource.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => Ok(r),
        _ => Err(Refusal::InvalidRequest(
            "the resource query parameter is missing; expected resource=<the API's resource, \
             such as 499b84ac-1321-427f-aa17-267ca6975798>"
                .into(),
        )),
    }
}

/// App Service's answer for `token`, once the request's identity selectors name its identity.
fn token_answer(
    ep: &IdentityEndpoint,
    q: &Query,
    token: &crate::token::CachedToken,
    asked: &str,
) -> Result<(StatusCode, serde_json::Value), Refusal> {
    let claims = crate::jwt::claims(token.secret().expose()).unwrap_or_default();
    let claim = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let client_id = ep
        .client_id
        .clone()
        .or_else(|| claim("appid"))
        .or_else(|| claim("azp"));
    check_identity(
        q,
        &ep.config.profile,
        client_id.as_deref(),
        claim("oid").as_deref(),
        ep.resource_id
            .clone()
            .or_else(|| claim("xms_mirid"))
            .as_deref(),
    )?;
    let mut body = serde_json::json!({
        "access_token": token.secret().expose(),
        "expires_on": token.expires_unix.to_string(),
        "resource": asked,
        "token_type": "Bearer",
    });
    if let Some(c) = client_id {
        body["client_id"] = serde_json::Value::String(c);
    }
    Ok((StatusCode::OK, body))
}

/// A selector in the request (`client_id`, `principal_id`/`object_id`, `mi_res_id`) must name
/// the identity whose tokens this endpoint hands out: an SDK configured for another identity
/// would otherwise get a token it did not ask for.
fn check_identity(
    q: &Query,
    profile: &str,
    client_id: Option<&str>,
    object_id: Option<&str>,
    resource_id: Option<&str>,
) -> Result<(), Refusal> {
    for (param, asked, ours) in [
        ("client_id", &q.client_id, client_id),
        ("principal_id", &q.principal_id, object_id),
        ("mi_res_id", &q.resource_id, resource_id),
    ] {
        let Some(asked) = asked.as_deref() else {
            continue;
        };
        match ours {
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
        let ok = |q: &Query| check_identity(q, "p", Some("AbC"), Some("oid-1"), None);
        assert!(ok(&q(None, None, None)).is_ok());
        assert!(ok(&q(Some("abc"), Some("OID-1"), None)).is_ok());
        let e = ok(&q(Some("other"), None, None)).expect_err("another client id");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("client_id \"other\""), "{e}");
        assert!(ok(&q(None, Some("oid-2"), None)).is_err());
        let e = ok(&q(None, None, Some("/subscriptions/x"))).expect_err("unknown resource id");
        assert!(e.to_string().contains("cannot tell"), "{e}");
    }

    #[test]
    fn repeated_parameters_are_refused_and_unknown_ones_ignored() {
        assert!(parse_query("resource=a&resource=b").is_err());
        let q = parse_query("resource=https%3A%2F%2Fgraph.microsoft.com&api-version=2019-08-01&xms_cc=cp1&object_id=o")
            .expect("parses");
        assert_eq!(q.resource.as_deref(), Some("https://graph.microsoft.com"));
        assert_eq!(q.principal_id.as_deref(), Some("o"));
    }
}
