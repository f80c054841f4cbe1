//! The admin listener: `/healthz` (alive), `/readyz` (every profile a route uses has held a valid
//! token, and patless is not shutting down), `/metrics` (Prometheus text).

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::proxy::ProxyBody;
use crate::App;

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
    for t in app.proxy.router().routes() {
        let s = t.entry.status();
        ready &= s.ever_valid;
        profiles.push(serde_json::json!({
            "route": &*t.label,
            "profile": s.profile,
            "scope": s.scope,
            "has_held_valid_token": s.ever_valid,
            "valid_now": s.valid_now,
            "last_error": s.last_error.as_ref().map(|(class, msg)| serde_json::json!({"class": class.as_str(), "message": msg})),
        }));
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
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", body.to_string())
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
