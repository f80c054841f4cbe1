//! Blob storage behind the feeds' `303`s: one listener whose URLs carry their own SAS-like
//! signature (`sv`, `se`, `sr`, `sp`, `sig`: HMAC-SHA256 of the path and the expiry, with a key
//! of its own) and which refuses, as Azure Blob Storage does, an expired or wrong signature and
//! any request that carries an `Authorization` header (`403`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::hmac;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::archive::{hex, sha256_hex};
use crate::support::{full, lock, query_params, AbortOnDrop, Body};

/// How long a signed URL stays good.
const SAS_LIFETIME_SECS: i64 = 600;

/// One request as blob storage received it.
#[derive(Debug, Clone)]
pub struct BlobRequest {
    pub method: Method,
    pub path: String,
    /// Whether it carried an `Authorization` header (never its value).
    pub had_authorization: bool,
    pub status: StatusCode,
}

pub(super) struct BlobStore {
    pub(super) base_url: String,
    key: hmac::Key,
    /// Path → (content type, bytes).
    blobs: Mutex<HashMap<String, (String, Bytes)>>,
    requests: Mutex<Vec<BlobRequest>>,
}

impl BlobStore {
    pub(super) async fn start() -> (Arc<BlobStore>, AbortOnDrop) {
        let listener = crate::support::bind_loopback().await;
        let port = listener.local_addr().expect("local_addr").port();
        let secret: [u8; 32] = rand::random();
        let store = Arc::new(BlobStore {
            // Another host name than the feed's 127.0.0.1, for the same listener.
            base_url: format!("http://localhost:{port}"),
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            blobs: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
        });
        let server = crate::support::serve(listener, {
            let store = store.clone();
            move |req| {
                let store = store.clone();
                async move { store.handle(req) }
            }
        });
        (store, server)
    }

    pub(super) fn requests(&self) -> Vec<BlobRequest> {
        lock(&self.requests).clone()
    }

    /// Stores `bytes` and returns a signed URL good for [`SAS_LIFETIME_SECS`].
    pub(super) fn signed_url(&self, bytes: Bytes, content_type: &str) -> String {
        let path = format!("/vsblob/{}", sha256_hex(&bytes));
        lock(&self.blobs).insert(path.clone(), (content_type.to_string(), bytes));
        let expiry = (chrono::Utc::now() + chrono::Duration::seconds(SAS_LIFETIME_SECS))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let sig = self.sign(&path, &expiry);
        format!(
            "{}{path}?sv=2019-07-07&sr=b&sp=r&se={}&sig={sig}",
            self.base_url,
            expiry.replace(':', "%3A")
        )
    }

    fn sign(&self, path: &str, expiry: &str) -> String {
        hex(hmac::sign(&self.key, format!("{path}\n{expiry}").as_bytes()).as_ref())
    }

    fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let had_authorization = req.headers().contains_key(header::AUTHORIZATION);
        let response = self.answer(&req, &path, had_authorization);
        lock(&self.requests).push(BlobRequest {
            method: req.method().clone(),
            path,
            had_authorization,
            status: response.status(),
        });
        response
    }

    fn answer(
        &self,
        req: &Request<Incoming>,
        path: &str,
        had_authorization: bool,
    ) -> Response<Body> {
        if had_authorization {
            return storage_error(
                StatusCode::FORBIDDEN,
                "AuthenticationFailed",
                "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
            );
        }
        let query = query_params(req.uri());
        let (Some(expiry), Some(sig)) = (query.get("se"), query.get("sig")) else {
            return storage_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                "The specified resource does not exist.",
            );
        };
        let valid = self.sign(path, expiry) == *sig;
        let expired =
            chrono::DateTime::parse_from_rfc3339(expiry).map_or(true, |e| e < chrono::Utc::now());
        if !valid || expired {
            return storage_error(
                StatusCode::FORBIDDEN,
                "AuthenticationFailed",
                "Signature did not match, or the signed expiry time has passed.",
            );
        }
        match lock(&self.blobs).get(path) {
            Some((content_type, bytes)) if req.method() == Method::GET => Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, content_type)
                .header("x-ms-blob-type", "BlockBlob")
                .body(full(bytes.clone()))
                .expect("response"),
            Some(_) => storage_error(
                StatusCode::FORBIDDEN,
                "AuthorizationPermissionMismatch",
                "This request is not authorized to perform this operation using this permission.",
            ),
            None => storage_error(
                StatusCode::NOT_FOUND,
                "BlobNotFound",
                "The specified blob does not exist.",
            ),
        }
    }
}

/// Blob storage's XML error.
fn storage_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/xml")
        .header("x-ms-error-code", code)
        .body(full(format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        )))
        .expect("response")
}
