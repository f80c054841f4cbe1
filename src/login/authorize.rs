//! The authorization code flow with PKCE (RFC 7636) as `interactive_browser` runs it, whichever
//! way the answer comes back: the authorize URL, the answer judged (`state` first, then `error`,
//! then `code`), and the code redeemed with the verifier — and, for a web (confidential) app, its
//! secret or certificate assertion. Where the answer comes back is the [`Redirect`]: a loopback
//! listener (`browser.rs`) or the address the person pastes (`paste.rs`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use base64::Engine as _;
use url::{Host, Url};

use super::{entra_error, LoginError, Target};

/// Where the sign-in's answer comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Redirect {
    /// A loopback `http://` redirect URI: patless listens on `ip` (`port`, or a free one when
    /// the URI names none) and takes the redirect itself.
    Listen {
        /// The address to bind: `127.0.0.1` for `localhost`, else the URI's own.
        ip: IpAddr,
        /// The port the URI names (or `redirect_port`); `None`: any free one.
        port: Option<u16>,
        /// The URI as configured (default `http://localhost`); see [`Redirect::uri_on`].
        uri: String,
    },
    /// Any other redirect URI (`https://localhost/myapp`, any `https://`, a non-loopback host):
    /// nothing patless runs answers it, so the person pastes the address the browser was sent to.
    Paste(String),
}

impl Redirect {
    /// The redirect of a profile's `redirect_uri` (validated as an absolute http(s) URL) or,
    /// without one, `http://localhost` on `redirect_port`.
    pub(super) fn of(redirect_uri: Option<&str>, redirect_port: Option<u16>) -> Redirect {
        let Some(uri) = redirect_uri else {
            return Redirect::Listen {
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: redirect_port,
                uri: "http://localhost".into(),
            };
        };
        let Ok(parsed) = Url::parse(uri) else {
            return Redirect::Paste(uri.to_string());
        };
        let ip = match parsed.host() {
            _ if parsed.scheme() != "http" => None,
            Some(Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
            }
            Some(Host::Ipv4(ip)) if ip.is_loopback() => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) if ip.is_loopback() => Some(IpAddr::V6(ip)),
            _ => None,
        };
        match ip {
            Some(ip) => Redirect::Listen {
                ip,
                port: explicit_port(uri)
                    .then(|| parsed.port_or_known_default())
                    .flatten()
                    .or(redirect_port),
                uri: uri.to_string(),
            },
            None => Redirect::Paste(uri.to_string()),
        }
    }

    /// A listener's redirect URI once it listens on `port`: the configured URI, with `:port`
    /// added after the host when it names none (Entra accepts any port on a loopback address).
    pub(super) fn uri_on(uri: &str, port: u16) -> String {
        if explicit_port(uri) {
            return uri.to_string();
        }
        let host_start = uri.find("://").map_or(0, |i| i + 3);
        let host_end = uri[host_start..]
            .find(['/', '?', '#'])
            .map_or(uri.len(), |i| host_start + i);
        format!("{}:{port}{}", &uri[..host_end], &uri[host_end..])
    }
}

/// Whether the URI's authority names a port (`http://localhost:80` does, though `Url` calls it
/// the default).
fn explicit_port(uri: &str) -> bool {
    let rest = uri.find("://").map_or(uri, |i| &uri[i + 3..]);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    match host_port.rfind(']') {
        Some(bracket) => host_port[bracket..].contains(':'),
        None => host_port.contains(':'),
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A PKCE verifier (86 characters of the unreserved set, from 64 random bytes) and its S256
/// challenge: base64url, unpadded, of its SHA-256.
pub(super) fn pkce_pair() -> (String, String) {
    let random: [u8; 64] = rand::random();
    let verifier = b64url(&random);
    let challenge =
        b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref());
    (verifier, challenge)
}

/// A fresh random `state` (32 characters).
pub(super) fn new_state() -> String {
    b64url(&rand::random::<[u8; 24]>())
}

/// The authorize URL: code flow, PKCE S256, the answer in the redirect's query.
pub(super) fn authorize_url(
    target: &Target<'_>,
    redirect_uri: &str,
    challenge: &str,
    state: &str,
) -> Result<Url, LoginError> {
    Url::parse_with_params(
        &target.endpoint("authorize"),
        &[
            ("client_id", target.client_id.as_str()),
            ("response_type", "code"),
            ("redirect_uri", redirect_uri),
            ("response_mode", "query"),
            ("scope", target.scopes.as_str()),
            ("state", state),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
            ("prompt", "select_account"),
        ],
    )
    .map_err(|e| LoginError::Setup(format!("cannot build the authorize URL: {e}")))
}

/// The code of an answer, or why there is none. The state is checked first: an answer that is
/// not this login's is not trusted for anything.
pub(super) fn judge(
    params: &HashMap<String, String>,
    state: &str,
    profile: &str,
) -> Result<String, LoginError> {
    if params.get("state").map(String::as_str) != Some(state) {
        return Err(LoginError::StateMismatch(profile.to_string()));
    }
    if let Some(error) = params.get("error") {
        return Err(LoginError::Denied {
            error: error.clone(),
            description: params
                .get("error_description")
                .map(|d| d.lines().next().unwrap_or_default().to_string()),
        });
    }
    params
        .get("code")
        .filter(|c| !c.is_empty())
        .cloned()
        .ok_or(LoginError::NoCode)
}

/// Redeems the authorization code with the PKCE verifier (and a web app's secret or assertion);
/// stores the refresh token.
pub(super) async fn redeem(
    target: &Target<'_>,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Result<String, LoginError> {
    let auth = target.client_auth_fields().await?;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("client_id", target.client_id.as_str()),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier),
        ("scope", target.scopes.as_str()),
    ];
    if let Some(a) = &auth {
        a.add_to(&mut form);
    }
    let token = target
        .entra
        .request_token_full(&target.endpoint("token"), &form)
        .await
        .map_err(|e| {
            let mut e = e.credential;
            if let Some(a) = &auth {
                a.explain(&mut e);
            }
            entra_error(e, target.client_auth.is_some())
        })?;
    target.finish(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_is_rfc7636() {
        let (v, c) = pkce_pair();
        assert!((43..=128).contains(&v.len()), "{}", v.len());
        assert!(v
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-._~".contains(ch)));
        assert_eq!(c.len(), 43);
        assert_ne!(pkce_pair().0, v);
        // RFC 7636 appendix B.
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        );
        assert_eq!(
            b64url(digest.as_ref()),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn state_is_checked_before_anything_else() {
        let p = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(matches!(
            judge(&p(&[("code", "c"), ("state", "x")]), "s", "p"),
            Err(LoginError::StateMismatch(_))
        ));
        assert!(matches!(
            judge(&p(&[("error", "access_denied")]), "s", "p"),
            Err(LoginError::StateMismatch(_))
        ));
        assert!(matches!(
            judge(&p(&[("error", "access_denied"), ("state", "s")]), "s", "p"),
            Err(LoginError::Denied { .. })
        ));
        assert_eq!(
            judge(&p(&[("code", "c"), ("state", "s")]), "s", "p").expect("code"),
            "c"
        );
    }

    #[test]
    fn loopback_http_is_listened_on_anything_else_is_pasted() {
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let listen = |port: Option<u16>, uri: &str| Redirect::Listen {
            ip: local,
            port,
            uri: uri.into(),
        };
        assert_eq!(Redirect::of(None, None), listen(None, "http://localhost"));
        assert_eq!(
            Redirect::of(None, Some(8400)),
            listen(Some(8400), "http://localhost")
        );
        for uri in [
            "http://localhost/cb",
            "http://127.0.0.1",
            "HTTP://LOCALHOST",
        ] {
            assert_eq!(Redirect::of(Some(uri), None), listen(None, uri), "{uri}");
        }
        assert_eq!(
            Redirect::of(Some("http://localhost:8400/cb"), None),
            listen(Some(8400), "http://localhost:8400/cb")
        );
        assert_eq!(
            Redirect::of(Some("http://localhost:80"), Some(9)),
            listen(Some(80), "http://localhost:80")
        );
        assert!(matches!(
            Redirect::of(Some("http://[::1]:7000/"), None),
            Redirect::Listen {
                ip: IpAddr::V6(_),
                port: Some(7000),
                ..
            }
        ));
        for uri in [
            "https://localhost/myapp",
            "https://127.0.0.1:8443/",
            "http://myhost.contoso.example/callback",
            "http://10.0.0.1/cb",
        ] {
            assert_eq!(
                Redirect::of(Some(uri), None),
                Redirect::Paste(uri.into()),
                "{uri}"
            );
        }
    }

    #[test]
    fn a_listener_names_its_port_where_the_uri_names_none() {
        assert_eq!(
            Redirect::uri_on("http://localhost", 51234),
            "http://localhost:51234"
        );
        assert_eq!(
            Redirect::uri_on("http://localhost/cb?x=1", 5),
            "http://localhost:5/cb?x=1"
        );
        assert_eq!(Redirect::uri_on("http://[::1]/cb", 5), "http://[::1]:5/cb");
        assert_eq!(
            Redirect::uri_on("http://localhost:8400/cb", 5),
            "http://localhost:8400/cb"
        );
        assert_eq!(
            Redirect::uri_on("http://[::1]:7000", 5),
            "http://[::1]:7000"
        );
    }
}
