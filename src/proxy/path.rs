//! Path validation, before routing: dot segments (raw or percent-encoded, any case), encoded
//! slashes or backslashes, NUL and bad escapes are refused, so a routed path never escapes its
//! prefix and the upstream sees exactly what was matched. One encoded slash is let through: the
//! one in an npm scoped package name, `@scope%2Fname`, which npm sends for every scoped package
//! (decoded, it is two plain segments, neither of them `.` or `..`).

use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{ready, Either, Ready};
use http::Request;
use tower::{Layer, Service};

use super::rescue::Rejection;
use super::{BoxError, ProxyError};

/// Why a path was refused (the `invalid_path` message).
pub fn validate(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("the path must start with `/`");
    }
    let bytes = path.as_bytes();
    // One pass: escapes and forbidden bytes, and each segment as its `/` closes it.
    let mut segment = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' => {
                if is_dot_segment(&path[segment..i]) {
                    return Err(DOT_SEGMENT);
                }
                segment = i + 1;
                i += 1;
            }
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err("the path has an invalid percent escape");
                };
                match (h * 16 + l) as u8 {
                    b'/' if is_npm_scope_slash(path, i) => {}
                    b'/' | b'\\' => return Err("the path has an encoded slash or backslash"),
                    0 => return Err("the path has an encoded NUL"),
                    _ => {}
                }
                i += 3;
            }
            b'\\' => return Err("the path has a backslash"),
            0 => return Err("the path has a NUL byte"),
            _ => i += 1,
        }
    }
    if is_dot_segment(&path[segment..]) {
        return Err(DOT_SEGMENT);
    }
    Ok(())
}

const DOT_SEGMENT: &str = "the path has a `.` or `..` segment";

/// Whether the `%2F` at `at` is the one of an npm scoped name: its segment is `@scope%2Fname`,
/// with a non-empty scope, no other encoded slash before it in the segment, and a name that is
/// neither empty nor a dot segment (a second `%2F` in the name is refused when the scan meets it).
fn is_npm_scope_slash(path: &str, at: usize) -> bool {
    let start = path[..at].rfind('/').map_or(0, |i| i + 1);
    let scope = &path[start..at];
    let end = path[at + 3..].find('/').map_or(path.len(), |i| at + 3 + i);
    let name = &path[at + 3..end];
    scope.len() > 1
        && scope.starts_with('@')
        && !scope.to_ascii_lowercase().contains("%2f")
        && !name.is_empty()
        && !is_dot_segment(name)
}

/// `.` or `..`, each dot raw or as `%2e` in either case (without allocating: this runs on every
/// request).
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return false,
        };
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

/// Step 4 of the road: the request target's length (`414 uri_too_long`) and [`validate`]
/// (`400 invalid_path`), before routing.
#[derive(Debug, Clone, Copy)]
pub struct PathCheckLayer {
    max_uri_bytes: usize,
}

impl PathCheckLayer {
    /// Refusing targets longer than `max_uri_bytes`.
    pub fn new(max_uri_bytes: usize) -> Self {
        PathCheckLayer { max_uri_bytes }
    }
}

impl<S> Layer<S> for PathCheckLayer {
    type Service = PathCheck<S>;

    fn layer(&self, inner: S) -> PathCheck<S> {
        PathCheck {
            inner,
            max_uri_bytes: self.max_uri_bytes,
        }
    }
}

/// The service of [`PathCheckLayer`].
#[derive(Debug, Clone)]
pub struct PathCheck<S> {
    inner: S,
    max_uri_bytes: usize,
}

impl<S, B> Service<Request<B>> for PathCheck<S>
where
    S: Service<Request<B>, Error = Rejection>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Rejection;
    type Future = Either<Ready<Result<S::Response, Rejection>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let uri = req.uri();
        let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        let refused = if target_len > self.max_uri_bytes {
            Some(ProxyError::UriTooLong(target_len))
        } else {
            validate(uri.path()).err().map(ProxyError::InvalidPath)
        };
        match refused {
            None => Either::Right(self.inner.call(req)),
            Some(e) => Either::Left(ready(Err(Rejection::new(e).with_unread(req.into_body())))),
        }
    }
}

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn the_layer_refuses_long_targets_and_bad_paths_before_the_inner_service() {
        use tower::ServiceExt;
        let svc = PathCheckLayer::new(300).layer(tower::service_fn(
            |_req: Request<http_body_util::Empty<Bytes>>| async {
                Ok::<_, Rejection>(http::Response::new(()))
            },
        ));
        let req = |uri: &str| {
            Request::builder()
                .uri(uri)
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("request")
        };
        assert!(svc
            .clone()
            .oneshot(req("/ado/org/_apis/x?y=1"))
            .await
            .is_ok());
        let long = format!("/ado/{}", "a".repeat(400));
        assert!(matches!(
            svc.clone().oneshot(req(&long)).await,
            Err(Rejection {
                error: ProxyError::UriTooLong(_),
                ..
            })
        ));
        assert!(matches!(
            svc.oneshot(req("/ado/%2e%2e/x")).await,
            Err(Rejection {
                error: ProxyError::InvalidPath(_),
                ..
            })
        ));
    }
    use super::*;

    #[test]
    fn refuses_escapes() {
        for bad in [
            "/ado/../x",
            "/ado/./x",
            "/ado/%2e%2E/x",
            "/ado/.%2e",
            "/ado/%2E",
            "/ado/%2e.",
            "/..",
            "/ado/x/..",
            "/ado/a%2fb",
            "/ado/@%2fb",
            "/ado/@scope%2f",
            "/ado/@scope%2f..",
            "/ado/@scope%2F%2e",
            "/ado/@a%2fb%2fc",
            "/ado/x@a%2fb",
            "/ado/@a%5cb",
            "/ado/a%5Cb",
            "/ado/a\\b",
            "/ado/%zz",
            "/ado/%4",
            "/ado/%00",
            "ado",
        ] {
            assert!(validate(bad).is_err(), "{bad} should be refused");
        }
        for good in [
            "/",
            "/ado",
            "/ado/org/_apis/projects",
            "/ado/a%20b/..x",
            "/ado/.well-known",
            "/ado/...",
            "/ado/%2e%2e%2e",
            "/ado/%2ex",
            "/feed/npm/registry/@contoso%2fwidget",
            "/feed/npm/registry/@contoso%2Fwidget/-/widget-1.0.0.tgz",
        ] {
            assert!(validate(good).is_ok(), "{good} should pass");
        }
    }
}
