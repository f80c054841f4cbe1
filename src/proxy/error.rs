//! The one place an error becomes its JSON answer and status: the table in docs/errors.md.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::ProxyBody;

/// A request that patless answers itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches.
    #[error("no route matches this path; routes are configured under [[routes]], and host routes serve /{{known-host}}/… (for example /dev.azure.com/…)")]
    NoRoute,
    /// Dot segments, encoded slashes, bad escapes.
    #[error("invalid path: {0}")]
    InvalidPath(&'static str),
    /// The `Host` is neither loopback nor in `allowed_hosts`.
    #[error("the Host header names neither this machine's loopback nor a name in server.allowed_hosts; add it there if this is intended")]
    HostNotAllowed,
    /// A browser's cross-site request.
    #[error("refused a cross-site request from a browser (Sec-Fetch-Site or an Origin not in server.allowed_origins): a web page must not act with patless's identity")]
    CrossSiteRequest,
    /// `inbound_token` is set and the request did not carry it.
    #[error("this proxy requires its inbound token: send it as `Proxy-Authorization: Bearer <token>` or `X-Patless-Token: <token>`")]
    InboundAuthRequired,
    /// The admin listener's `/metrics` without `server.admin_token`.
    #[error("this admin endpoint requires server.admin_token: send it as `Authorization: Bearer <token>` (Prometheus: `authorization` in the scrape config)")]
    AdminAuthRequired,
    /// `CONNECT`, or an absolute-form target naming another host.
    #[error("patless is not an open proxy: {0}")]
    NotAnOpenProxy(String),
    /// A method patless never forwards (`TRACE`).
    #[error("{0} is never forwarded: it would echo the request, credentials included")]
    MethodNotAllowed(&'static str),
    /// The upstream's redirect would send the client off the proxy's origin.
    #[error("the upstream {authority} answered with a redirect that would leave patless's address ({why}); it is not passed on")]
    UnsafeRedirect {
        /// The upstream.
        authority: String,
        /// What was wrong with it.
        why: &'static str,
    },
    /// A request target longer than `server.max_uri_bytes`.
    #[error("the request target is {0} bytes, more than server.max_uri_bytes allows")]
    UriTooLong(usize),
    /// The client's request body could not be read (it broke off, or did not match its length).
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
    /// No token can be had.
    #[error("{message}")]
    TokenUnavailable {
        /// Why, and what to do.
        message: String,
        /// Retry-After.
        retry_after: Duration,
    },
    /// Connection to the upstream failed.
    #[error("cannot reach the upstream {authority}: {reason}")]
    UpstreamUnreachable {
        /// `host[:port]`
        authority: String,
        /// Why.
        reason: String,
    },
    /// A fault inside patless (a panic while handling the request).
    #[error("patless failed while handling this request; it keeps serving, and the log has the details (search it for the request id)")]
    Internal,
    /// No response headers within `server.response_header_timeout`.
    #[error("the upstream {authority} did not answer within {secs}s")]
    UpstreamTimeout {
        /// `host[:port]`
        authority: String,
        /// The timeout.
        secs: u64,
    },
}

impl ProxyError {
    /// The answer's `error` code (docs/errors.md).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::InvalidPath(_) => "invalid_path",
            ProxyError::HostNotAllowed | ProxyError::NotAnOpenProxy(_) => "host_not_allowed",
            ProxyError::InboundAuthRequired | ProxyError::AdminAuthRequired => {
                "inbound_auth_required"
            }
            ProxyError::UriTooLong(_) => "uri_too_long",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::UnsafeRedirect { .. } => "unsafe_redirect",
            ProxyError::ClientBody(_) => "invalid_body",
            ProxyError::CrossSiteRequest => "cross_site_request",
            ProxyError::TokenUnavailable { .. } => "token_unavailable",
            ProxyError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::Internal => "internal_error",
        }
    }

    /// The answer's HTTP status (docs/errors.md).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::InvalidPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::HostNotAllowed
            | ProxyError::CrossSiteRequest
            | ProxyError::NotAnOpenProxy(_) => StatusCode::FORBIDDEN,
            ProxyError::InboundAuthRequired | ProxyError::AdminAuthRequired => {
                StatusCode::UNAUTHORIZED
            }
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UnsafeRedirect { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::TokenUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the client's request is at fault (logged at debug, not as a warning).
    pub fn is_clients_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::NoRoute
                | ProxyError::InvalidPath(_)
                | ProxyError::HostNotAllowed
                | ProxyError::CrossSiteRequest
                | ProxyError::NotAnOpenProxy(_)
                | ProxyError::InboundAuthRequired
                | ProxyError::AdminAuthRequired
                | ProxyError::ClientBody(_)
                | ProxyError::MethodNotAllowed(_)
                | ProxyError::UriTooLong(_)
        )
    }

    /// The JSON answer (see [`ProxyError::to_response`]).
    pub fn into_response(
        self,
        route: Option<&str>,
        profile: Option<&str>,
        request_id: &str,
    ) -> Response<ProxyBody> {
        self.to_response(route, profile, request_id)
    }

    /// The JSON answer of docs/errors.md: `error`, `message`, `route`, `profile`, `request_id`,
    /// with the status of its table, `Cache-Control: no-store` and `x-patless-request-id`.
    pub fn to_response(
        &self,
        route: Option<&str>,
        profile: Option<&str>,
        request_id: &str,
    ) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "route": route,
            "profile": profile,
            "request_id": (!request_id.is_empty()).then_some(request_id),
        });
        let mut resp = Response::new(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(request_id) {
            if !request_id.is_empty() {
                h.insert(crate::header_names::REQUEST_ID.clone(), v);
            }
        }
        if let ProxyError::AdminAuthRequired = self {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"patless-admin\""),
            );
        }
        if let ProxyError::MethodNotAllowed(_) = self {
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        if let ProxyError::TokenUnavailable { retry_after, .. } = self {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
