//! A `Location` from the upstream, as the client gets it (step 7): pointed at the proxy when it
//! points into the route's upstream, and never a value a client reads as another host.

use http::header::HeaderValue;
use http::Uri;

use super::{ProxyError, RouteTarget};

/// `https://dev.azure.com/org/x` (or `/org/x`) from the route's upstream → `/ado/org/x`: a path
/// on the proxy, which the client resolves against the address it used. `Ok(None)`: not into the
/// upstream, passed on as it is.
///
/// Nothing passed on starts with `//` or `/\`, which a client reads as another host:
/// - the upstream's own `//…` or `/\…` is taken as the path it was (an upstream that reflects the
///   request's path) and rewritten like any path into the upstream, or refused
///   (`502 unsafe_redirect`) when it is not one;
/// - a rewritten path that would start so (a route on `/` and an upstream path with an empty
///   segment) becomes an absolute URL on the proxy's own origin, `http://{host}//evil.example/x`,
///   from the `Host` the client sent (which the inbound policy accepted), or is refused without one.
pub fn rewrite_location(
    loc: &HeaderValue,
    target: &RouteTarget,
    host: Option<&HeaderValue>,
) -> Result<Option<HeaderValue>, ProxyError> {
    let unsafe_redirect = |why| ProxyError::UnsafeRedirect {
        authority: target.authority.to_string(),
        why,
    };
    let Some(rest) = location_in_upstream(loc, target) else {
        if leaves_origin(loc.as_bytes()) {
            return Err(unsafe_redirect(
                "a reference to another host (//host or /\\host) that is no path of the route",
            ));
        }
        return Ok(None);
    };
    let rewritten = match (&*target.prefix, rest) {
        ("", "") => "/".to_string(),
        ("", rest) if rest.starts_with('?') => format!("/{rest}"),
        (prefix, rest) => format!("{prefix}{rest}"),
    };
    let value = if leaves_origin(rewritten.as_bytes()) {
        let host = host.and_then(|h| h.to_str().ok()).ok_or_else(|| {
            unsafe_redirect("a path that starts with // or /\\, and no Host to anchor it to")
        })?;
        format!("http://{host}{rewritten}")
    } else {
        rewritten
    };
    Ok(HeaderValue::from_str(&value).ok())
}

/// The part of a `Location` after the route's upstream base (`""`, or from a `/` or `?`), if it
/// points into the upstream.
fn location_in_upstream<'a>(loc: &'a HeaderValue, target: &RouteTarget) -> Option<&'a str> {
    let text = loc.to_str().ok()?;
    // `//x` and `/\x` too: the path the upstream was sent, reflected.
    let path = if text.starts_with('/') {
        text
    } else {
        let uri: Uri = text.parse().ok()?;
        let same_origin = uri.scheme() == Some(&target.scheme)
            && uri
                .authority()
                .is_some_and(|a| a.as_str().eq_ignore_ascii_case(target.authority.as_str()));
        if !same_origin {
            return None;
        }
        let start = text.find(uri.authority()?.as_str())? + uri.authority()?.as_str().len();
        match &text[start..] {
            "" => "/",
            rest => rest,
        }
    };
    let rest = path.strip_prefix(&*target.base_path)?;
    (rest.is_empty() || rest.starts_with(['/', '?'])).then_some(rest)
}

/// Whether a relative reference leaves the origin it is resolved against: `//host/…`, and `/\host/…`,
/// which browsers read the same way (tabs, which browsers strip from URLs, do not hide either).
fn leaves_origin(reference: &[u8]) -> bool {
    let mut bytes = reference
        .iter()
        .filter(|b| !matches!(b, b'\t' | b'\r' | b'\n'));
    bytes.next() == Some(&b'/') && matches!(bytes.next(), Some(b'/' | b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_to_another_host_is_recognised_through_tabs_and_backslashes() {
        for leaves in ["//evil", "/\\evil", "/\t/evil", "\t//evil"] {
            assert!(leaves_origin(leaves.as_bytes()), "{leaves:?}");
        }
        for stays in ["/", "/x//y", "", "x//y", "/?//"] {
            assert!(!leaves_origin(stays.as_bytes()), "{stays:?}");
        }
    }
}
