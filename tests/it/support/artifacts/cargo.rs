//! The cargo registry of a feed: the sparse index (`config.json` with absolute `dl` and `api`,
//! `auth-required`), `.crate` downloads and the publish API as cargo calls it.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::archive::sha256_hex;
use super::{json_response, ok, Call};
use crate::support::Body;

/// One published version: its index line and its `.crate`.
pub(super) struct Version {
    entry: Value,
    file: Bytes,
}

impl Version {
    pub(super) fn vers(&self) -> String {
        self.entry["vers"].as_str().unwrap_or_default().to_string()
    }
}

/// The index entry of a crate without dependencies or features (its `cksum` is set by [`add`]).
pub(super) fn entry(name: &str, version: &str) -> Value {
    json!({"name": name, "vers": version, "deps": [], "features": {}, "yanked": false})
}

/// Adds a version (`entry` gets the `.crate`'s `cksum`).
pub(super) fn add(crates: &mut BTreeMap<String, Vec<Version>>, mut entry: Value, file: Vec<u8>) {
    entry["cksum"] = json!(sha256_hex(&file));
    let name = entry["name"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    crates.entry(name).or_default().push(Version {
        entry,
        file: Bytes::from(file),
    });
}

/// Where cargo looks for `name` in a sparse index (`1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd`).
pub fn index_path(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    match n.len() {
        1 => format!("1/{n}"),
        2 => format!("2/{n}"),
        3 => format!("3/{}/{n}", &n[..1]),
        _ => format!("{}/{}/{n}", &n[..2], &n[2..4]),
    }
}

/// `Cargo/{rest}`.
pub(super) fn handle(
    crates: &mut BTreeMap<String, Vec<Version>>,
    call: &Call,
    rest: &str,
    download: &dyn Fn(Bytes, &str) -> Response<Body>,
) -> Response<Body> {
    if rest == "index/config.json" {
        return json_response(
            StatusCode::OK,
            &json!({
                "dl": format!("{}/Cargo/api/v1/crates", call.feed_url),
                "api": format!("{}/Cargo", call.feed_url),
                "auth-required": true,
            }),
        );
    }
    if let Some(path) = rest.strip_prefix("index/") {
        let name = path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        return match crates.get(&name) {
            Some(versions) if index_path(&name) == path.to_ascii_lowercase() => {
                let lines: String = versions.iter().map(|v| format!("{}\n", v.entry)).collect();
                ok("text/plain; charset=utf-8", lines)
            }
            _ => cargo_error(StatusCode::NOT_FOUND, "not found"),
        };
    }
    if rest == "api/v1/crates/new" {
        return match call.method {
            Method::PUT => publish(crates, &call.body),
            _ => cargo_error(StatusCode::METHOD_NOT_ALLOWED, "publish is a PUT"),
        };
    }
    if let Some(path) = rest.strip_prefix("api/v1/crates/") {
        let parts: Vec<&str> = path.split('/').collect();
        if let [name, version, "download"] = parts[..] {
            let file = crates
                .get(&name.to_ascii_lowercase())
                .and_then(|vs| vs.iter().find(|v| v.vers() == version))
                .map(|v| v.file.clone());
            if let Some(file) = file {
                return download(file, "application/x-tar");
            }
        }
    }
    cargo_error(StatusCode::NOT_FOUND, "not found")
}

/// `PUT /api/v1/crates/new`: u32 LE length, the JSON metadata, u32 LE length, the `.crate`.
fn publish(crates: &mut BTreeMap<String, Vec<Version>>, body: &[u8]) -> Response<Body> {
    let Some((meta, file)) = split_publish(body) else {
        return cargo_error(StatusCode::BAD_REQUEST, "malformed publish body");
    };
    let (Some(name), Some(vers)) = (meta["name"].as_str(), meta["vers"].as_str()) else {
        return cargo_error(StatusCode::BAD_REQUEST, "metadata without name or vers");
    };
    let exists = crates
        .get(&name.to_ascii_lowercase())
        .is_some_and(|vs| vs.iter().any(|v| v.vers() == vers));
    if exists {
        return cargo_error(
            StatusCode::CONFLICT,
            &format!("crate version `{name}@{vers}` is already uploaded"),
        );
    }
    let deps: Vec<Value> = meta["deps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let explicit = d["explicit_name_in_toml"].as_str();
            json!({
                "name": explicit.unwrap_or(d["name"].as_str().unwrap_or_default()),
                "req": d["version_req"],
                "features": d["features"],
                "optional": d["optional"],
                "default_features": d["default_features"],
                "target": d["target"],
                "kind": d["kind"],
                "registry": d["registry"],
                "package": explicit.map(|_| d["name"].clone()),
            })
        })
        .collect();
    let entry = json!({
        "name": name,
        "vers": vers,
        "deps": deps,
        "features": meta["features"],
        "yanked": false,
        "links": meta["links"],
    });
    add(crates, entry, file.to_vec());
    json_response(
        StatusCode::OK,
        &json!({"warnings": {"invalid_categories": [], "invalid_badges": [], "other": []}}),
    )
}

fn split_publish(body: &[u8]) -> Option<(Value, &[u8])> {
    let take = |at: usize| -> Option<(usize, usize)> {
        let len = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        (body.len() >= at + 4 + len).then_some((at + 4, at + 4 + len))
    };
    let (meta_start, meta_end) = take(0)?;
    let meta = serde_json::from_slice(&body[meta_start..meta_end]).ok()?;
    let (file_start, file_end) = take(meta_end)?;
    Some((meta, &body[file_start..file_end]))
}

/// An error as cargo shows it: `{"errors": [{"detail": …}]}`.
fn cargo_error(status: StatusCode, detail: &str) -> Response<Body> {
    json_response(status, &json!({"errors": [{"detail": detail}]}))
}
