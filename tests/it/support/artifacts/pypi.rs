//! The PyPI side of a feed: the PEP 503 simple index with absolute, hashed links, downloads,
//! and twine's upload (`multipart/form-data`).

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{header, Method, Response, StatusCode};

use super::archive::sha256_hex;
use super::{decode, error, not_found, ok, Call};
use crate::support::Body;

/// One file of a project.
pub(super) struct Dist {
    pub(super) file: String,
    version: String,
    bytes: Bytes,
}

/// PEP 503 normalization: lowercase, runs of `-`, `_`, `.` become one `-`.
pub(super) fn normalize(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

pub(super) fn add(
    projects: &mut BTreeMap<String, Vec<Dist>>,
    name: &str,
    version: &str,
    file: &str,
    bytes: Bytes,
) {
    projects.entry(normalize(name)).or_default().push(Dist {
        file: file.to_string(),
        version: version.to_string(),
        bytes,
    });
}

/// `pypi/{rest}`.
pub(super) fn handle(
    projects: &mut BTreeMap<String, Vec<Dist>>,
    call: &Call,
    rest: &str,
    download: &dyn Fn(Bytes, &str) -> Response<Body>,
) -> Response<Body> {
    let rest = decode(rest);
    if rest == "upload" || rest == "upload/" {
        return match call.method {
            Method::POST => upload(projects, call),
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "Uploads are POSTs."),
        };
    }
    if call.method != Method::GET && call.method != Method::HEAD {
        return error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.");
    }
    if rest == "simple" || rest == "simple/" {
        let links: String = projects
            .keys()
            .map(|p| {
                format!(
                    "<a href=\"{}/pypi/simple/{p}/\">{p}</a><br/>\n",
                    call.feed_url
                )
            })
            .collect();
        return html("Simple index", &links);
    }
    if let Some(project) = rest.strip_prefix("simple/") {
        let project = normalize(project.trim_end_matches('/'));
        let Some(dists) = projects.get(&project) else {
            return not_found(&format!(
                "The package '{project}' does not exist in this feed."
            ));
        };
        let links: String = dists
            .iter()
            .map(|d| {
                format!(
                    "<a href=\"{}/pypi/download/{project}/{}/{}#sha256={}\">{}</a><br/>\n",
                    call.feed_url,
                    d.version,
                    d.file,
                    sha256_hex(&d.bytes),
                    d.file
                )
            })
            .collect();
        return html(&format!("Links for {project}"), &links);
    }
    if let Some(path) = rest.strip_prefix("download/") {
        let mut parts = path.splitn(3, '/');
        let (Some(project), Some(_version), Some(file)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return not_found("No such file.");
        };
        let found = projects
            .get(&normalize(project))
            .and_then(|d| d.iter().find(|d| d.file == file));
        return match found {
            Some(d) => download(d.bytes.clone(), "application/octet-stream"),
            None => not_found(&format!("The file {file} does not exist in this feed.")),
        };
    }
    not_found("No such PyPI resource.")
}

fn html(title: &str, links: &str) -> Response<Body> {
    ok(
        "text/html; charset=utf-8",
        format!("<!DOCTYPE html>\n<html><head><title>{title}</title></head><body><h1>{title}</h1>\n{links}</body></html>\n"),
    )
}

/// twine's upload: `:action=file_upload`, `name`, `version`, `sha256_digest`, the `content` file.
fn upload(projects: &mut BTreeMap<String, Vec<Dist>>, call: &Call) -> Response<Body> {
    let content_type = call
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(boundary) = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
    else {
        return error(StatusCode::BAD_REQUEST, "Expected multipart/form-data.");
    };
    let parts = multipart(&call.body, &boundary);
    let field = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name)
            .map(|p| String::from_utf8_lossy(&p.data).into_owned())
    };
    if field(":action").as_deref() != Some("file_upload") {
        return error(StatusCode::BAD_REQUEST, "Expected :action=file_upload.");
    }
    let content = parts.iter().find(|p| p.name == "content");
    let (Some(name), Some(version), Some(content)) = (field("name"), field("version"), content)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "name, version and content are required.",
        );
    };
    let Some(file) = content.filename.clone() else {
        return error(StatusCode::BAD_REQUEST, "The content has no file name.");
    };
    if field("sha256_digest").is_some_and(|d| d != sha256_hex(&content.data)) {
        return error(
            StatusCode::BAD_REQUEST,
            "The sha256_digest does not match the file.",
        );
    }
    let exists = projects
        .get(&normalize(&name))
        .is_some_and(|d| d.iter().any(|d| d.file == file));
    if exists {
        return error(
            StatusCode::CONFLICT,
            &format!("The feed already contains file '{file}' in package '{name} {version}'."),
        );
    }
    add(projects, &name, &version, &file, content.data.clone());
    ok("text/plain", "OK")
}

struct Part {
    name: String,
    filename: Option<String>,
    data: Bytes,
}

/// The parts of a `multipart/form-data` body.
fn multipart(body: &Bytes, boundary: &str) -> Vec<Part> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut at = match find(body, delimiter.as_bytes(), 0) {
        Some(i) => i + delimiter.len(),
        None => return parts,
    };
    while body[at..].starts_with(b"\r\n") {
        let Some(head_end) = find(body, b"\r\n\r\n", at) else {
            break;
        };
        let head = String::from_utf8_lossy(&body[at + 2..head_end]).into_owned();
        let data_start = head_end + 4;
        let Some(next) = find(body, format!("\r\n{delimiter}").as_bytes(), data_start) else {
            break;
        };
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .unwrap_or_default();
        let param = |key: &str| {
            disposition.split(';').find_map(|p| {
                p.trim()
                    .strip_prefix(&format!("{key}="))
                    .map(|v| v.trim_matches('"').to_string())
            })
        };
        parts.push(Part {
            name: param("name").unwrap_or_default(),
            filename: param("filename"),
            data: body.slice(data_start..next),
        });
        at = next + 2 + delimiter.len();
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}
