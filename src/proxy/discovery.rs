//! Azure DevOps' resource-area discovery, kept behind the proxy (part of step 7, on the way back).
//!
//! The Azure DevOps SDKs (`azure-devops` for Python, `azure-devops-node-api`) do not call the URL
//! they were given: they first ask `GET {org}/_apis/ResourceAreas` where each API area lives, and
//! send every later call to the absolute `locationUrl` of its area — `https://dev.azure.com/org/`
//! from the real service. Passed on as it is, that answer would send the SDK around patless,
//! straight to Azure DevOps with whatever credential the SDK holds (a stale PAT). So this one
//! small answer is read (at most [`MAX_DISCOVERY_BYTES`]) and every `locationUrl` that a route
//! serves becomes the proxy URL of that route (`http://127.0.0.1:7070/ado/org/`); the rest of the
//! body is kept byte for byte and `Content-Length` fixed. Anything else — another status, a body
//! that is not JSON, compressed, or larger than the cap — passes through unchanged, streamed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// The largest resource-area answer that is read and rewritten (real ones are a few tens of KiB).
pub const MAX_DISCOVERY_BYTES: usize = 1024 * 1024;

/// Whether `path` (the upstream path, without query) asks for resource areas:
/// `…/_apis/ResourceAreas` or `…/_apis/ResourceAreas/{id}`, case-insensitively.
pub fn is_resource_areas(path: &str) -> bool {
    let segments: Vec<&str> = path
        .trim_end_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let Some(apis) = segments
        .iter()
        .rposition(|s| s.eq_ignore_ascii_case("_apis"))
    else {
        return false;
    };
    let after = &segments[apis + 1..];
    matches!(after.first(), Some(s) if s.eq_ignore_ascii_case("resourceareas")) && after.len() <= 2
}

/// `body` with every `"locationUrl": "<url>"` member whose URL `map` maps replaced by the mapped
/// URL, every other byte kept; `None` when `body` is not JSON or nothing was replaced.
pub fn rewrite_location_urls(
    body: &[u8],
    mut map: impl FnMut(&str) -> Option<String>,
) -> Option<Vec<u8>> {
    // Well-formed JSON first, so the scan below only has to tell strings from the rest.
    serde_json::from_slice::<serde::de::IgnoredAny>(body).ok()?;
    let mut out = Vec::with_capacity(body.len() + 256);
    let mut copied = 0;
    let mut changed = false;
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'"' {
            i += 1;
            continue;
        }
        let key_end = string_end(body, i)?;
        let mut j = skip_ws(body, key_end);
        let is_member = body.get(j) == Some(&b':');
        if !is_member || !decodes_to(&body[i..key_end], "locationUrl") {
            i = key_end;
            continue;
        }
        j = skip_ws(body, j + 1);
        if body.get(j) != Some(&b'"') {
            i = j;
            continue;
        }
        let value_end = string_end(body, j)?;
        let value: String = serde_json::from_slice(&body[j..value_end]).ok()?;
        if let Some(new) = map(&value) {
            out.extend_from_slice(&body[copied..j]);
            out.extend_from_slice(serde_json::to_string(&new).ok()?.as_bytes());
            copied = value_end;
            changed = true;
        }
        i = value_end;
    }
    if !changed {
        return None;
    }
    out.extend_from_slice(&body[copied..]);
    Some(out)
}

/// The index just past the JSON string that starts (with its `"`) at `start`.
fn string_end(body: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while body.get(i).is_some_and(|b| b" \t\r\n".contains(b)) {
        i += 1;
    }
    i
}

/// Whether the JSON string token `raw` (quotes included) is `want`, escapes decoded.
fn decodes_to(raw: &[u8], want: &str) -> bool {
    if raw.len() == want.len() + 2 {
        return &raw[1..raw.len() - 1] == want.as_bytes();
    }
    raw.contains(&b'\\') && serde_json::from_slice::<String>(raw).is_ok_and(|s| s == want)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

fn is_encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// A body whose first frames were already read: those, then an error met while reading them, if
/// any, then the rest of `inner`.
pub struct Prefixed<B: Body> {
    queued: VecDeque<Frame<Bytes>>,
    queued_len: u64,
    error: Option<B::Error>,
    inner: B,
}

impl<B: Body> Prefixed<B> {
    fn new(inner: B) -> Self {
        Prefixed {
            queued: VecDeque::new(),
            queued_len: 0,
            error: None,
            inner,
        }
    }

    fn push(&mut self, frame: Frame<Bytes>) {
        self.queued_len += frame.data_ref().map_or(0, |d| d.len() as u64);
        self.queued.push_back(frame);
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.queued.pop_front() {
            this.queued_len -= frame.data_ref().map_or(0, |d| d.len() as u64);
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(e) = this.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.queued.is_empty() && self.error.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.error.is_some() {
            return SizeHint::default();
        }
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + self.queued_len);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + self.queued_len);
        }
        hint
    }
}

/// Why an answer is passed on as it is, if it is.
fn not_rewritable(status: StatusCode, headers: &HeaderMap) -> Option<&'static str> {
    if !status.is_success() {
        Some("not a success")
    } else if !is_json(headers) {
        Some("not JSON")
    } else if is_encoded(headers) {
        Some("compressed")
    } else if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_DISCOVERY_BYTES as u64)
    {
        Some("larger than the cap")
    } else {
        None
    }
}

/// Reads the whole body into `out`'s queue; its length, or `None` when it is to be passed on as
/// it is (trailers, over the cap, an error — all kept in `out`).
async fn read_whole<B>(out: &mut Prefixed<B>, route: &str) -> Option<usize>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    let mut read = 0usize;
    loop {
        match out.inner.frame().await {
            None => return Some(read),
            Some(Ok(frame)) => {
                let data = frame.data_ref().map(|d| d.len());
                out.push(frame);
                let Some(n) = data else {
                    // Trailers: not a plain JSON answer.
                    tracing::debug!(
                        route,
                        "resource-area answer with trailers passed through unchanged"
                    );
                    return None;
                };
                read += n;
                if read > MAX_DISCOVERY_BYTES {
                    tracing::debug!(
                        route,
                        cap = MAX_DISCOVERY_BYTES,
                        "resource-area answer larger than the cap passed through unchanged"
                    );
                    return None;
                }
            }
            Some(Err(e)) => {
                out.error = Some(e);
                return None;
            }
        }
    }
}

/// Reads a resource-area answer (status `status`, headers `headers`) and rewrites its
/// `locationUrl`s with `map`, fixing `Content-Length`; an answer that does not qualify, or is
/// larger than [`MAX_DISCOVERY_BYTES`], comes back whole and unchanged (what was read of it
/// first, then the rest as it streams). `route` is for the log.
pub async fn rewrite<B>(
    status: StatusCode,
    headers: &mut HeaderMap,
    body: B,
    map: impl FnMut(&str) -> Option<String>,
    route: &str,
) -> Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    let mut out = Prefixed::new(body);
    if let Some(why) = not_rewritable(status, headers) {
        tracing::debug!(route, why, "resource-area answer passed through unchanged");
        return out;
    }
    let Some(read) = read_whole(&mut out, route).await else {
        return out;
    };
    let mut whole = Vec::with_capacity(read);
    for frame in out.queued.drain(..) {
        if let Some(d) = frame.data_ref() {
            whole.extend_from_slice(d);
        }
    }
    out.queued_len = 0;
    let body = match rewrite_location_urls(&whole, map) {
        Some(new) => {
            tracing::debug!(
                route,
                before = whole.len(),
                after = new.len(),
                "resource-area locationUrls rewritten to the proxy"
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(new.len()));
            new
        }
        None => whole,
    };
    out.push(Frame::data(Bytes::from(body)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn to_proxy(url: &str) -> Option<String> {
        url.strip_prefix("https://dev.azure.com/")
            .map(|rest| format!("http://127.0.0.1:7070/ado/{rest}"))
    }

    #[test]
    fn resource_area_paths() {
        for yes in [
            "/org/_apis/ResourceAreas",
            "/org/_apis/resourceareas/",
            "/_apis/RESOURCEAREAS",
            "/org/_apis/ResourceAreas/79134c72-4a58-4b42-976c-04e7115f32bf",
        ] {
            assert!(is_resource_areas(yes), "{yes}");
        }
        for no in [
            "/org/_apis/projects",
            "/org/_apis/ResourceAreas/a/b",
            "/org/ResourceAreas",
            "/org/_apis",
            "/org/_apis/ResourceAreasX",
        ] {
            assert!(!is_resource_areas(no), "{no}");
        }
    }

    #[test]
    fn rewrites_only_location_urls_and_keeps_every_other_byte() {
        let body = br#"{"count":3,"value":[
  {"id":"79134c72-4a58-4b42-976c-04e7115f32bf","name":"core","locationUrl":"https://dev.azure.com/org/"},
  {"id":"x", "name" : "https://dev.azure.com/org/", "locationUrl" : "https:\/\/dev.azure.com\/org\/"},
  {"id":"efc2f575","name":"Release","locationUrl":"https://vsrm.dev.azure.com/org/"}]}"#;
        let new = rewrite_location_urls(body, to_proxy).expect("rewritten");
        let want = br#"{"count":3,"value":[
  {"id":"79134c72-4a58-4b42-976c-04e7115f32bf","name":"core","locationUrl":"http://127.0.0.1:7070/ado/org/"},
  {"id":"x", "name" : "https://dev.azure.com/org/", "locationUrl" : "http://127.0.0.1:7070/ado/org/"},
  {"id":"efc2f575","name":"Release","locationUrl":"https://vsrm.dev.azure.com/org/"}]}"#;
        assert_eq!(String::from_utf8_lossy(&new), String::from_utf8_lossy(want));
    }

    #[test]
    fn leaves_other_bodies_alone() {
        // Nothing to map, not JSON, a locationUrl that is not a string, a key only in a value.
        assert!(
            rewrite_location_urls(br#"{"locationUrl":"https://elsewhere/"}"#, to_proxy).is_none()
        );
        assert!(rewrite_location_urls(b"<html>locationUrl</html>", to_proxy).is_none());
        assert!(rewrite_location_urls(br#"{"locationUrl":null}"#, to_proxy).is_none());
        assert!(rewrite_location_urls(
            br#"["locationUrl","https://dev.azure.com/org/"]"#,
            to_proxy
        )
        .is_none());
        assert!(
            rewrite_location_urls(br#"{"locationUrl":"https://dev.azure.com/"#, to_proxy).is_none()
        );
    }

    fn json_headers(len: Option<usize>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        if let Some(n) = len {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        h
    }

    async fn collect<B>(body: Prefixed<B>) -> Vec<u8>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Unpin + std::fmt::Debug,
    {
        body.collect().await.expect("body").to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_small_answer_is_rewritten_with_its_length() {
        let text = r#"{"count":1,"value":[{"id":"a","locationUrl":"https://dev.azure.com/org/"}]}"#;
        let mut h = json_headers(Some(text.len()));
        let body = rewrite(
            StatusCode::OK,
            &mut h,
            Full::new(Bytes::from(text)),
            to_proxy,
            "/ado",
        )
        .await;
        assert_eq!(body.size_hint().exact(), Some(body.queued_len));
        let got = collect(body).await;
        let want =
            r#"{"count":1,"value":[{"id":"a","locationUrl":"http://127.0.0.1:7070/ado/org/"}]}"#;
        assert_eq!(String::from_utf8_lossy(&got), want);
        assert_eq!(h[header::CONTENT_LENGTH], want.len().to_string().as_str());
    }

    fn chunked(chunks: Vec<Vec<u8>>) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_chunked_answer_over_the_cap_passes_through_whole() {
        // Valid JSON with a locationUrl up front, then padding past the cap, in 64 KiB chunks.
        let mut text =
            br#"{"value":[{"locationUrl":"https://dev.azure.com/org/"}],"pad":""#.to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_DISCOVERY_BYTES + 10));
        text.extend_from_slice(b"\"}");
        let chunks: Vec<Vec<u8>> = text.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
        let mut h = json_headers(None);
        let body = rewrite(StatusCode::OK, &mut h, chunked(chunks), to_proxy, "/ado").await;
        assert!(h.get(header::CONTENT_LENGTH).is_none());
        assert_eq!(collect(body).await, text, "unchanged, nothing lost");
    }

    #[tokio::test]
    async fn other_answers_are_not_read() {
        let text = r#"{"value":[{"locationUrl":"https://dev.azure.com/org/"}]}"#;
        for (status, mut h) in [
            (StatusCode::UNAUTHORIZED, json_headers(Some(text.len()))),
            (StatusCode::OK, {
                let mut h = json_headers(Some(text.len()));
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                h
            }),
            (StatusCode::OK, {
                let mut h = json_headers(Some(text.len()));
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                h
            }),
            (StatusCode::OK, json_headers(Some(MAX_DISCOVERY_BYTES + 1))),
        ] {
            let body = rewrite(
                status,
                &mut h,
                Full::new(Bytes::from(text)),
                to_proxy,
                "/ado",
            )
            .await;
            assert!(
                body.queued.is_empty(),
                "{status} {h:?}: read although it does not qualify"
            );
            assert_eq!(collect(body).await, text.as_bytes());
        }
    }

    #[tokio::test]
    async fn an_error_mid_body_is_passed_on_after_what_was_read() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"{\"value\":"))),
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ];
        let mut h = json_headers(None);
        let mut body = rewrite(
            StatusCode::OK,
            &mut h,
            StreamBody::new(futures_util::stream::iter(frames)),
            to_proxy,
            "/ado",
        )
        .await;
        let first = body.frame().await.expect("frame").expect("data");
        assert_eq!(
            first.into_data().expect("data"),
            Bytes::from_static(b"{\"value\":")
        );
        assert!(body.frame().await.expect("an item").is_err());
    }
}
