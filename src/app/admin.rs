//! The admin listener: `/healthz` (alive), `/readyz` (every profile that serves traffic — each
//! route's, and the host routes' default profile — has held a valid token, and patless is not
//! shutting down), `/metrics` (Prometheus text).
//!
//! It applies the proxy's browser policy (docs/security.md), so a DNS-rebinding page cannot read
//! it: the `Host` must be a loopback name, an `allowed_hosts` entry or an IP literal (a probe or a
//! scraper that dials the pod's address sends that; a rebinding page always sends its own name),
//! and a request a browser marks as cross-site is refused. With `server.admin_token` set,
//! `/metrics` and `/readyz`'s details need it as `Authorization: Bearer …`; `/healthz` and
//! `/readyz`'s status answer without it, for orchestrator probes.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::App;
use crate::config::ServerConfig;
use crate::env::Environment;
use crate::proxy::inbound::{host_allowed, parse_host, secret_eq};
use crate::proxy::{InboundPolicy, ProxyBody, ProxyError};
use crate::secret::Secret;

/// Who may use the admin listener.
#[derive(Clone, Default)]
pub struct AdminPolicy {
    /// The proxy's `allowed_hosts` and `allowed_origins`, without its inbound token.
    browser: InboundPolicy,
    /// `server.admin_token`, if set.
    token: Option<Secret>,
}

impl std::fmt::Debug for AdminPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminPolicy")
            .field("browser", &self.browser)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl AdminPolicy {
    /// The policy for `server`, with `admin_token` read from where it says.
    pub fn new(server: &ServerConfig, env: &dyn Environment) -> Result<AdminPolicy, String> {
        Ok(AdminPolicy {
            browser: InboundPolicy {
                token: None,
                allowed_hosts: server.allowed_hosts.clone(),
                allowed_origins: server.allowed_origins.clone(),
            },
            token: server
                .admin_token
                .as_ref()
                .map(|t| t.resolve(env))
                .transpose()?,
        })
    }

    /// `Ok`, or `host_not_allowed` / `cross_site_request`.
    fn check(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().map_err(|_| ProxyError::HostNotAllowed)?;
            let ip_literal = parse_host(host).is_some_and(|(name, _)| {
                name.starts_with('[') || name.parse::<std::net::Ipv4Addr>().is_ok()
            });
            if !ip_literal && !host_allowed(host, &self.browser.allowed_hosts) {
                return Err(ProxyError::HostNotAllowed);
            }
        }
        self.browser.check_browser(headers)
    }

    /// Whether the request may see `/metrics` and `/readyz`'s details.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .and_then(|v| {
                let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
                scheme
                    .eq_ignore_ascii_case(b"bearer")
                    .then(|| rest.trim_ascii())
            })
            .unwrap_or_default();
        secret_eq(presented, expected.expose().as_bytes())
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Readiness as JSON: `(ready, body)`.
pub fn readiness(app: &App) -> (bool, serde_json::Value) {
    let mut profiles = Vec::new();
    let mut ready = true;
    let router = app.proxy.router();
    // The host routes' entry says why its profile is the default, when no key chose it.
    let note = app.config.server.default_profile_hint(false);
    let host_routes = router
        .host_readiness()
        .map(|e| ("host routes", e, note.as_deref()));
    let routes = router.routes().iter().map(|t| (&*t.label, &t.entry, None));
    for (label, entry, note) in routes.chain(host_routes) {
        let s = entry.status();
        ready &= s.ever_valid;
        let mut status = serde_json::json!({
            "route": label,
            "profile": s.profile,
            "scope": s.scope,
            "has_held_valid_token": s.ever_valid,
            "valid_now": s.valid_now,
            "last_error": s.last_error.as_ref().map(|(class, msg)| serde_json::json!({"class": class.as_str(), "message": msg})),
        });
        if let Some(note) = note {
            status["note"] = note.into();
        }
        profiles.push(status);
    }
    (
        ready,
        serde_json::json!({ "ready": ready, "routes": profiles }),
    )
}

/// Handles one admin request. `shutting_down`: SIGTERM/SIGINT arrived, so `/readyz` answers 503
/// (a load balancer stops sending) while the proxy still serves, until the listeners close.
pub async fn handle(
    app: Arc<App>,
    shutting_down: bool,
    req: Request<hyper::body::Incoming>,
) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            r#"{"error":"method_not_allowed"}"#.into(),
        );
    }
    if let Err(refused) = app.admin.check(req.headers()) {
        app.metrics
            .inbound_rejections
            .with_label_values(&[refused.code()])
            .inc();
        return refused.into_response(None, None, &crate::proxy::request_id());
    }
    let authorized = app.admin.authorized(req.headers());
    match req.uri().path() {
        "/healthz" => reply(
            StatusCode::OK,
            "application/json",
            r#"{"status":"ok"}"#.into(),
        ),
        "/readyz" => {
            let (ready, mut body) = readiness(&app);
            let ready = ready && !shutting_down;
            if shutting_down {
                body["ready"] = serde_json::Value::Bool(false);
                body["shutting_down"] = serde_json::Value::Bool(true);
            }
            if !authorized {
                // The status for probes; routes, profiles and errors only with the token.
                body = serde_json::json!({ "ready": ready });
            }
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", body.to_string())
        }
        "/metrics" if !authorized => {
            app.metrics
                .inbound_rejections
                .with_label_values(&["inbound_auth_required"])
                .inc();
            ProxyError::AdminAuthRequired.into_response(None, None, &crate::proxy::request_id())
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.render(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"not_found","message":"admin endpoints: /healthz, /readyz, /metrics"}"#
                .into(),
        ),
    }
}
