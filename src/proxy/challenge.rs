//! What an upstream's refusal means (docs/credentials.md, "Token lifecycle"): a `401` whose token
//! should be replaced, a claims challenge (Continuous Access Evaluation) to satisfy, or — toward
//! Azure DevOps, which answers some rejected tokens with a sign-in page instead of a `401` — a
//! `203` or an HTML page where an API answer was expected.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http::{header, HeaderMap, StatusCode};

/// Why the upstream refused the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The token is refused before anything was done (a `401`, the Azure DevOps sign-in redirect):
    /// replace it, and the request may be replayed.
    Token(&'static str),
    /// A claims challenge (a `401`): acquire a token with these claims (JSON); replayable.
    Claims(String),
    /// Azure DevOps's sign-in page as a `2xx` (a `203`, or HTML where an API answer was expected):
    /// the token is refused, but a `2xx` is an answer the upstream may have acted on, so the
    /// request is never replayed; its answer is passed on and the token replaced for the next.
    SignInPage(&'static str),
}

impl Refusal {
    /// Whether the upstream cannot have acted on the request, so that sending it again is safe.
    pub fn replayable(&self) -> bool {
        !matches!(self, Refusal::SignInPage(_))
    }

    /// What it was, for logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Refusal::Token(why) | Refusal::SignInPage(why) => why,
            Refusal::Claims(_) => "claims challenge",
        }
    }
}

/// Azure DevOps's own sign-in hosts (`app.vssps.visualstudio.com`,
/// `spsprodweu5.vssps.visualstudio.com`): a redirect there, to `/_signin`, is its answer to a
/// token it refused before doing anything.
fn is_azure_devops_sign_in(location: &str) -> bool {
    let Ok(uri) = location.parse::<http::Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    let sign_in_host = host == "vssps.visualstudio.com"
        || host.ends_with(".vssps.visualstudio.com")
        || host == "vssps.dev.azure.com";
    uri.scheme() == Some(&http::uri::Scheme::HTTPS)
        && sign_in_host
        && uri.path().to_ascii_lowercase().starts_with("/_signin")
}

/// The refusal in an upstream answer, if it is one. `azure_devops` turns on Azure DevOps's
/// sign-in answers; `expects_api` is whether the request was an API call (an `_apis` path, or
/// JSON asked for, and not HTML): only then is a `200` HTML page a sign-in page rather than an
/// answer.
pub fn refusal(
    status: StatusCode,
    headers: &HeaderMap,
    azure_devops: bool,
    expects_api: impl FnOnce() -> bool,
) -> Option<Refusal> {
    if status == StatusCode::UNAUTHORIZED {
        return Some(match claims_challenge(headers) {
            Some(claims) => Refusal::Claims(claims),
            None => Refusal::Token("401"),
        });
    }
    if !azure_devops {
        return None;
    }
    if status == StatusCode::NON_AUTHORITATIVE_INFORMATION {
        return Some(Refusal::SignInPage("Azure DevOps 203 sign-in page"));
    }
    if status.is_redirection()
        && headers
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .is_some_and(is_azure_devops_sign_in)
    {
        return Some(Refusal::Token("Azure DevOps redirect to sign-in"));
    }
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("text/html"));
    if status == StatusCode::OK && html && expects_api() {
        return Some(Refusal::SignInPage("Azure DevOps HTML sign-in page"));
    }
    None
}

/// The decoded `claims` of a `Bearer … error="insufficient_claims", claims="…"` challenge, among
/// any number of `WWW-Authenticate` headers and challenges.
pub fn claims_challenge(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(header::WWW_AUTHENTICATE) {
        let Ok(text) = value.to_str() else { continue };
        for challenge in parse(text) {
            if !challenge.scheme.eq_ignore_ascii_case("bearer") {
                continue;
            }
            let param = |name: &str| {
                challenge
                    .params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
            };
            if param("error") != Some("insufficient_claims") {
                continue;
            }
            if let Some(json) = param("claims").and_then(decode_claims) {
                return Some(json);
            }
        }
    }
    None
}

/// Claims arrive base64-encoded (standard or URL-safe, padded or not); the result must be JSON.
fn decode_claims(b64: &str) -> Option<String> {
    let b64 = b64.trim();
    let bytes = [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(b64).ok())?;
    let text = String::from_utf8(bytes).ok()?;
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .filter(serde_json::Value::is_object)?;
    Some(text)
}

#[derive(Debug, Default)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

/// The end of a token (a scheme or parameter name) starting at `j`.
fn token_end(b: &[u8], mut j: usize) -> usize {
    while j < b.len() && !matches!(b[j], b'=' | b',' | b' ' | b'\t' | b'"') {
        j += 1;
    }
    j
}

/// The first byte at or after `j` that is not a space or tab.
fn skip_ws(b: &[u8], mut j: usize) -> usize {
    while j < b.len() && matches!(b[j], b' ' | b'\t') {
        j += 1;
    }
    j
}

/// Whether a `=` (not `==`, a token68's padding) is at `j`.
fn is_equals(b: &[u8], j: usize) -> bool {
    j < b.len() && b[j] == b'=' && !(j + 1 < b.len() && b[j + 1] == b'=')
}

/// A parameter's value starting at `i` (quoted, with `\` escapes, or up to the next `,`), and
/// where parsing goes on.
fn value(text: &str, mut i: usize) -> (String, usize) {
    let b = text.as_bytes();
    if i < b.len() && b[i] == b'"' {
        let mut v = String::new();
        i += 1;
        while i < b.len() && b[i] != b'"' {
            if b[i] == b'\\' && i + 1 < b.len() {
                i += 1;
            }
            let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
            v.push_str(&text[i..i + ch_len]);
            i += ch_len;
        }
        return (v, i + 1);
    }
    let s = i;
    while i < b.len() && b[i] != b',' {
        i += 1;
    }
    (text[s..i].trim().to_string(), i)
}

/// RFC 9110 §11.6.1 challenges: `scheme param=value, param="quoted", other-scheme …`.
fn parse(text: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        i = skip_ws(b, i);
        if i < b.len() && b[i] == b',' {
            i += 1;
            continue;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        i = token_end(b, i);
        if i == start {
            // A stray quote or '=': skip it.
            i += 1;
            continue;
        }
        let name = &text[start..i];
        let after = skip_ws(b, i);
        if is_equals(b, after) {
            let (v, next) = value(text, skip_ws(b, after + 1));
            i = next;
            if let Some(c) = out.last_mut() {
                c.params.push((name.to_string(), v));
            }
            continue;
        }
        // A scheme, possibly followed by a token68 (`Basic abc==`), which is skipped.
        out.push(Challenge {
            scheme: name.to_string(),
            params: Vec::new(),
        });
        i = after;
        let t = token_end(b, i);
        if t > i && !is_equals(b, skip_ws(b, t)) {
            i = t;
            while i < b.len() && b[i] == b'=' {
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::WWW_AUTHENTICATE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const CLAIMS: &str = r#"{"access_token":{"nbf":{"essential":true,"value":"1726000000"}}}"#;

    #[test]
    fn finds_the_claims_challenge_among_several() {
        let b64 = STANDARD.encode(CLAIMS);
        let h = headers(&[
            "Basic realm=\"dev.azure.com\"",
            &format!(
                "Bearer authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", error=\"insufficient_claims\", claims=\"{b64}\""
            ),
        ]);
        assert_eq!(claims_challenge(&h).as_deref(), Some(CLAIMS));
        // One header, two challenges, URL-safe unpadded base64.
        let b64 = URL_SAFE_NO_PAD.encode(CLAIMS);
        let h = headers(&[&format!(
            "Basic abc==, Bearer realm=\"\", error=\"insufficient_claims\", claims=\"{b64}\""
        )]);
        assert_eq!(claims_challenge(&h).as_deref(), Some(CLAIMS));
    }

    #[test]
    fn a_plain_401_or_a_broken_challenge_is_a_token_refusal() {
        let plain = headers(&["Bearer authorization_uri=\"https://login.microsoftonline.com/x\""]);
        assert_eq!(
            refusal(StatusCode::UNAUTHORIZED, &plain, false, || false),
            Some(Refusal::Token("401"))
        );
        let wrong_error = headers(&[&format!(
            "Bearer error=\"invalid_token\", claims=\"{}\"",
            STANDARD.encode(CLAIMS)
        )]);
        assert_eq!(claims_challenge(&wrong_error), None);
        let not_json = headers(&[&format!(
            "Bearer error=\"insufficient_claims\", claims=\"{}\"",
            STANDARD.encode("not json")
        )]);
        assert_eq!(claims_challenge(&not_json), None);
        let not_b64 = headers(&["Bearer error=\"insufficient_claims\", claims=\"%%%\""]);
        assert_eq!(claims_challenge(&not_b64), None);
    }

    #[test]
    fn azure_devops_sign_in_answers_are_refusals_elsewhere_they_are_answers() {
        let mut html = HeaderMap::new();
        html.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        let none = HeaderMap::new();
        assert!(refusal(
            StatusCode::NON_AUTHORITATIVE_INFORMATION,
            &none,
            true,
            || false
        )
        .is_some());
        assert!(refusal(StatusCode::OK, &html, true, || true).is_some());
        assert!(
            refusal(StatusCode::OK, &html, true, || false).is_none(),
            "a page, not an API"
        );
        assert!(
            refusal(StatusCode::OK, &html, false, || true).is_none(),
            "not Azure DevOps"
        );
        let mut signin = HeaderMap::new();
        signin.insert(
            header::LOCATION,
            HeaderValue::from_static(
                "https://spsprodweu5.vssps.visualstudio.com/_signin?realm=dev.azure.com",
            ),
        );
        assert_eq!(
            refusal(StatusCode::FOUND, &signin, true, || false),
            Some(Refusal::Token("Azure DevOps redirect to sign-in"))
        );
        // `/_signin` on any other host (or over plain HTTP) is a redirect like any other.
        for other in [
            "https://evil.example/_signin?realm=dev.azure.com",
            "https://vssps.visualstudio.com.evil.example/_signin",
            "http://app.vssps.visualstudio.com/_signin",
            "/_signin?realm=dev.azure.com",
            "https://dev.azure.com/org/_signin",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::LOCATION, HeaderValue::from_static(other));
            assert_eq!(
                refusal(StatusCode::FOUND, &h, true, || false),
                None,
                "{other}"
            );
        }
        // A 2xx sign-in page refuses the token but is never replayed.
        for (status, h) in [
            (StatusCode::NON_AUTHORITATIVE_INFORMATION, &none),
            (StatusCode::OK, &html),
        ] {
            let r = refusal(status, h, true, || true).expect("a refusal");
            assert!(!r.replayable(), "{status}");
        }
        assert!(refusal(StatusCode::UNAUTHORIZED, &none, true, || true)
            .expect("a refusal")
            .replayable());
        let mut elsewhere = HeaderMap::new();
        elsewhere.insert(
            header::LOCATION,
            HeaderValue::from_static("https://dev.azure.com/org/x"),
        );
        assert!(refusal(StatusCode::FOUND, &elsewhere, true, || false).is_none());
        assert!(refusal(StatusCode::FORBIDDEN, &none, true, || false).is_none());
    }

    #[test]
    fn the_parser_never_panics_on_odd_input() {
        for text in [
            "",
            "=",
            "\"",
            "Bearer",
            "Bearer ,,,",
            "a=\"unterminated",
            "x==y",
            "é=ü, ß",
        ] {
            let _ = parse(text);
        }
    }
}
