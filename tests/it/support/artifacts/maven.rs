//! The Maven repository of a feed (`maven/v1/`): files by path, checksums of any stored file,
//! and `PUT` as `mvn deploy` sends it.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Method, Response, StatusCode};

use super::archive::{jar, md5_hex, pom, sha1_hex, sha256_hex, sha512_hex};
use super::{decode, error, not_found, Call};
use crate::support::{empty, full, Body};

/// Stores `group:artifact:version` (POM, jar, their `.sha1` and `.md5`) and the artifact's
/// `maven-metadata.xml` (and its checksums).
pub(super) fn add(files: &mut BTreeMap<String, Bytes>, group: &str, artifact: &str, version: &str) {
    let dir = format!("{}/{artifact}", group.replace('.', "/"));
    let metadata = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metadata>\n  <groupId>{group}</groupId>\n  <artifactId>{artifact}</artifactId>\n  <versioning>\n    <latest>{version}</latest>\n    <release>{version}</release>\n    <versions>\n      <version>{version}</version>\n    </versions>\n    <lastUpdated>20261207000000</lastUpdated>\n  </versioning>\n</metadata>\n"
    );
    let stored = [
        (
            format!("{dir}/{version}/{artifact}-{version}.pom"),
            Bytes::from(pom(group, artifact, version)),
        ),
        (
            format!("{dir}/{version}/{artifact}-{version}.jar"),
            Bytes::from(jar(artifact, version)),
        ),
        (format!("{dir}/maven-metadata.xml"), Bytes::from(metadata)),
    ];
    for (path, bytes) in stored {
        files.insert(format!("{path}.sha1"), Bytes::from(sha1_hex(&bytes)));
        files.insert(format!("{path}.md5"), Bytes::from(md5_hex(&bytes)));
        files.insert(path, bytes);
    }
}

/// `maven/v1/{rest}`.
pub(super) fn handle(
    files: &mut BTreeMap<String, Bytes>,
    call: &Call,
    rest: &str,
) -> Response<Body> {
    let path = decode(rest);
    if path.is_empty() || path.split('/').any(|s| s.is_empty() || s == "..") {
        return not_found("No such path.");
    }
    match call.method {
        Method::GET | Method::HEAD => match lookup(files, &path) {
            Some(bytes) => {
                let len = bytes.len();
                let body = if call.method == Method::HEAD {
                    empty()
                } else {
                    full(bytes)
                };
                Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_TYPE, content_type(&path))
                    .header(http::header::CONTENT_LENGTH, len)
                    .body(body)
                    .expect("response")
            }
            None => not_found(&format!("The file '{path}' does not exist in this feed.")),
        },
        Method::PUT => {
            files.insert(path, call.body.clone());
            Response::builder()
                .status(StatusCode::CREATED)
                .body(empty())
                .expect("response")
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
    }
}

/// The stored file, or the checksum of a stored file.
fn lookup(files: &BTreeMap<String, Bytes>, path: &str) -> Option<Bytes> {
    if let Some(bytes) = files.get(path) {
        return Some(bytes.clone());
    }
    let (base, ext) = path.rsplit_once('.')?;
    let digest: fn(&[u8]) -> String = match ext {
        "sha1" => sha1_hex,
        "md5" => md5_hex,
        "sha256" => sha256_hex,
        "sha512" => sha512_hex,
        _ => return None,
    };
    files.get(base).map(|b| Bytes::from(digest(b)))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("pom" | "xml") => "application/xml",
        Some("jar") => "application/java-archive",
        Some("sha1" | "md5" | "sha256" | "sha512") => "text/plain",
        _ => "application/octet-stream",
    }
}
