//! The npm registry of a feed: packuments with absolute tarball URLs and real digests,
//! tarballs, and `npm publish`.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::archive::{npm_integrity, sha1_hex};
use super::{decode, error, json_response, not_found, Call};
use crate::support::Body;

/// A package: its versions and the `latest` tag.
#[derive(Default)]
pub(super) struct Package {
    pub(super) versions: BTreeMap<String, Version>,
    latest: String,
}

pub(super) struct Version {
    /// `package.json` as published, without `dist`.
    manifest: Value,
    tarball: Bytes,
}

pub(super) fn add_version(
    packages: &mut BTreeMap<String, Package>,
    name: &str,
    version: &str,
    manifest: Value,
    tarball: Bytes,
) {
    let package = packages.entry(name.to_string()).or_default();
    package
        .versions
        .insert(version.to_string(), Version { manifest, tarball });
    package.latest = version.to_string();
}

/// `npm/registry/{rest}`.
pub(super) fn handle(
    packages: &mut BTreeMap<String, Package>,
    call: &Call,
    rest: &str,
    download: &dyn Fn(Bytes, &str) -> Response<Body>,
) -> Response<Body> {
    let rest = decode(rest);
    if let Some((name, file)) = rest.split_once("/-/") {
        if call.method != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.");
        }
        let tarball = packages.get(name).and_then(|p| {
            p.versions
                .iter()
                .find(|(v, _)| file_name(name, v) == file)
                .map(|(_, v)| v.tarball.clone())
        });
        return match tarball {
            Some(t) => download(t, "application/octet-stream"),
            None => not_found(&format!("The tarball {file} does not exist in this feed.")),
        };
    }
    let name = rest.trim_end_matches('/');
    match call.method {
        Method::GET | Method::HEAD => match packages.get(name) {
            Some(p) => json_response(StatusCode::OK, &packument(&call.feed_url, name, p)),
            None => not_found(&format!(
                "NotFound - The package '{name}' does not exist in this feed."
            )),
        },
        Method::PUT => publish(packages, name, &call.body),
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
    }
}

/// `{basename}-{version}.tgz` (`@scope/x` → `x-1.0.0.tgz`).
fn file_name(name: &str, version: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    format!("{base}-{version}.tgz")
}

fn packument(feed_url: &str, name: &str, package: &Package) -> Value {
    let mut versions = Map::new();
    for (v, version) in &package.versions {
        let mut manifest = version.manifest.as_object().cloned().unwrap_or_default();
        manifest.insert("name".into(), json!(name));
        manifest.insert("version".into(), json!(v));
        manifest.insert("_id".into(), json!(format!("{name}@{v}")));
        manifest.insert(
            "dist".into(),
            json!({
                "tarball": format!("{feed_url}/npm/registry/{name}/-/{}", file_name(name, v)),
                "shasum": sha1_hex(&version.tarball),
                "integrity": npm_integrity(&version.tarball),
            }),
        );
        versions.insert(v.clone(), Value::Object(manifest));
    }
    json!({
        "_id": name,
        "name": name,
        "dist-tags": {"latest": package.latest},
        "versions": versions,
    })
}

/// `npm publish`: the packument with the new version and its tarball as a base64 attachment.
fn publish(packages: &mut BTreeMap<String, Package>, name: &str, body: &[u8]) -> Response<Body> {
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, "The package document is not JSON.");
    };
    let attachments = doc.get("_attachments").and_then(Value::as_object);
    let versions = doc.get("versions").and_then(Value::as_object);
    let (Some(attachments), Some(versions)) = (attachments, versions) else {
        return error(StatusCode::BAD_REQUEST, "No versions or attachments.");
    };
    for (v, manifest) in versions {
        if packages
            .get(name)
            .is_some_and(|p| p.versions.contains_key(v))
        {
            return error(
                StatusCode::CONFLICT,
                &format!("The feed already contains '{name}@{v}'."),
            );
        }
        // npm names the attachment `{name}-{version}.tgz`, scope included.
        let data = attachments
            .get(&format!("{name}-{v}.tgz"))
            .or_else(|| attachments.get(&file_name(name, v)))
            .and_then(|a| a.get("data"))
            .and_then(Value::as_str)
            .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok());
        let Some(tarball) = data else {
            return error(
                StatusCode::BAD_REQUEST,
                "The tarball attachment is missing.",
            );
        };
        let dist = manifest.get("dist");
        let claimed = |k: &str| dist.and_then(|d| d.get(k)).and_then(Value::as_str);
        if claimed("shasum").is_some_and(|s| s != sha1_hex(&tarball))
            || claimed("integrity").is_some_and(|s| s != npm_integrity(&tarball))
        {
            return error(
                StatusCode::BAD_REQUEST,
                "The tarball does not match its shasum or integrity.",
            );
        }
        let mut manifest = manifest.clone();
        if let Some(m) = manifest.as_object_mut() {
            m.remove("dist");
        }
        add_version(packages, name, v, manifest, Bytes::from(tarball));
    }
    json_response(StatusCode::OK, &json!({"success": true}))
}
