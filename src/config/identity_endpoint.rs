//! `[identity_endpoint]`: the App Service managed-identity protocol served to SDKs on the same
//! pod or machine (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`), handing out one profile's tokens for
//! a fixed list of resources; with `imds = true`, IMDS's token path on the same listener too
//! (docs/migrate-from-pat.md, "The IMDS-compatible path").

use std::collections::BTreeMap;

use super::check::{listen_addr, loopback_unless, secret_source, Errors};
use super::effective::redacted_ref;
use super::raw::{RawIdentityEndpoint, RawProfile, SecretValue};
use super::{defaults, ListenAddr, Profile, Route, SecretSource, ServerConfig};

/// `[identity_endpoint]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityEndpointConfig {
    /// Where it listens: loopback TCP or a Unix socket.
    pub listen: ListenAddr,
    /// The secret clients send as `X-IDENTITY-HEADER`; resolved when the app is built.
    pub header: SecretSource,
    /// Whose tokens it hands out.
    pub profile: String,
    /// The resources it hands out tokens for, as configured: no trailing `/`, no `/.default`.
    /// Compared with a request's `resource` case-insensitively, trailing `/` ignored.
    pub resources: Vec<String>,
    /// Whether `resources` was written down (else it came from the profile's routes).
    pub resources_explicit: bool,
    /// Whether IMDS's token path (`/metadata/identity/oauth2/token`, no secret, `Metadata: true`)
    /// is served too.
    pub imds: bool,
}

impl IdentityEndpointConfig {
    /// The configured resource a request's `resource` names, if any: trailing `/` and a
    /// `/.default` suffix ignored, compared case-insensitively.
    pub fn allowed(&self, asked: &str) -> Option<&str> {
        let asked = normalise_resource(asked);
        self.resources
            .iter()
            .find(|r| r.eq_ignore_ascii_case(asked))
            .map(String::as_str)
    }

    /// The scopes it may ask the token cache for (`R/.default` for each resource).
    pub fn scopes(&self) -> Vec<String> {
        self.resources
            .iter()
            .map(|r| format!("{r}/.default"))
            .collect()
    }

    /// `[identity_endpoint]` as `patless config` prints it, the header redacted.
    pub(super) fn to_raw(&self) -> RawIdentityEndpoint {
        RawIdentityEndpoint {
            listen: Some(self.listen.to_string()),
            header: Some(redacted_ref(&self.header)),
            profile: Some(self.profile.clone()),
            resources: Some(self.resources.clone()),
            imds: Some(self.imds),
        }
    }
}

/// A resource as the identity endpoint compares it: surrounding space, a `/.default` suffix
/// (a scope given where a resource belongs) and trailing `/` removed.
pub fn normalise_resource(text: &str) -> &str {
    let t = text.trim();
    let t = t.strip_suffix("/.default").unwrap_or(t);
    t.trim_end_matches('/')
}

/// What the identity endpoint's checks look at besides its own table.
pub(super) struct Context<'a> {
    pub server: &'a ServerConfig,
    pub profiles: &'a BTreeMap<String, Profile>,
    pub raw_profiles: &'a BTreeMap<String, RawProfile>,
    pub routes: &'a [Route],
}

/// Validates `[identity_endpoint]`: a loopback (or Unix socket) listener apart from the others,
/// a header secret, a defined profile, and the resources it may hand out tokens for — by default
/// those of the `/.default` scopes of that profile's routes.
pub(super) fn validate(
    errs: &mut Errors,
    ie: &RawIdentityEndpoint,
    cx: &Context<'_>,
) -> Option<IdentityEndpointConfig> {
    let before = errs.count();
    let listen = listener(errs, ie, cx.server);
    let imds = ie.imds.unwrap_or(defaults::IDENTITY_ENDPOINT_IMDS);
    if let (true, Some(ListenAddr::Unix(path))) = (imds, &listen) {
        errs.add(
            "identity_endpoint.imds",
            format!(
                "IMDS clients connect over TCP and cannot reach unix:{}; listen on a loopback \
                 IP:PORT such as 127.0.0.1:7072, or leave imds off",
                path.display()
            ),
        );
    }
    let header = header(errs, ie.header.as_ref());
    let (profile, profile_ok) = profile(errs, ie, cx);
    let resources = match &ie.resources {
        Some(list) => listed_resources(errs, list),
        None => {
            let hint = ie
                .profile
                .is_none()
                .then(|| cx.server.default_profile_hint(false))
                .flatten();
            route_resources(errs, &profile, profile_ok, hint, cx.routes)
        }
    };
    if errs.count() != before {
        return None;
    }
    Some(IdentityEndpointConfig {
        listen: listen?,
        header: header?,
        profile,
        resources,
        resources_explicit: ie.resources.is_some(),
        imds,
    })
}

/// `identity_endpoint.listen`: loopback or a Unix socket, and not another listener's address.
fn listener(
    errs: &mut Errors,
    ie: &RawIdentityEndpoint,
    server: &ServerConfig,
) -> Option<ListenAddr> {
    let listen = match ie.listen.as_deref() {
        None => Some(ListenAddr::Tcp(defaults::IDENTITY_ENDPOINT_LISTEN)),
        Some(text) => listen_addr(errs, "identity_endpoint.listen", text),
    };
    loopback_unless(
        errs,
        "identity_endpoint.listen",
        listen.as_ref(),
        false,
        |addr| {
            format!(
                "{addr} is not a loopback address: the identity header and the tokens it hands \
             out travel as plain HTTP. Listen on 127.0.0.1 (the pod's or machine's own \
             SDKs reach it there) or on unix:/path"
            )
        },
    );
    if let Some(l) = &listen {
        let port_zero = matches!(l, ListenAddr::Tcp(a) if a.port() == 0);
        for (key, other) in [
            ("server.listen", Some(&server.listen)),
            ("server.admin_listen", server.admin_listen.as_ref()),
        ] {
            if !port_zero && other == Some(l) {
                errs.add(
                    "identity_endpoint.listen",
                    format!("{l} is also {key}; expected an address of its own"),
                );
            }
        }
    }
    listen
}

/// `identity_endpoint.header`: required; a literal must be a usable secret.
fn header(errs: &mut Errors, header: Option<&SecretValue>) -> Option<SecretSource> {
    match header {
        None => {
            errs.add(
                "identity_endpoint.header",
                "missing; expected the secret SDKs send as X-IDENTITY-HEADER (their \
                 IDENTITY_HEADER): { env = \"NAME\" }, { file = \"PATH\" } or a literal",
            );
            None
        }
        Some(SecretValue::Literal(v)) if identity_header_problem(v).is_some() => {
            let why = identity_header_problem(v).unwrap_or_default();
            errs.add("identity_endpoint.header", why);
            None
        }
        Some(v) => Some(secret_source(v)),
    }
}

/// `identity_endpoint.profile` (default `server.default_profile`), and whether it is defined.
fn profile(errs: &mut Errors, ie: &RawIdentityEndpoint, cx: &Context<'_>) -> (String, bool) {
    let profile = ie
        .profile
        .clone()
        .unwrap_or_else(|| cx.server.default_profile.clone());
    let profile_ok = cx.profiles.contains_key(&profile) || cx.raw_profiles.contains_key(&profile);
    if !profile_ok {
        let from = if ie.profile.is_some() {
            ""
        } else {
            " (the default: server.default_profile)"
        };
        errs.add(
            "identity_endpoint.profile",
            format!(
                "profile `{profile}`{from} is not defined; defined: [{}]",
                cx.raw_profiles
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    (profile, profile_ok)
}

/// `identity_endpoint.resources` as written: at least one, each one resource, duplicates dropped.
fn listed_resources(errs: &mut Errors, list: &[String]) -> Vec<String> {
    if list.is_empty() {
        errs.add(
            "identity_endpoint.resources",
            "empty: no token could be handed out; list resources such as \
             \"499b84ac-1321-427f-aa17-267ca6975798\", or drop the key to use those of \
             the profile's routes",
        );
    }
    let mut out: Vec<String> = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let n = normalise_resource(r);
        if n.is_empty() || n.chars().any(char::is_whitespace) {
            errs.add(
                format!("identity_endpoint.resources[{i}]"),
                format!(
                    "`{r}`: expected one resource such as \"https://graph.microsoft.com\" \
                     or \"499b84ac-1321-427f-aa17-267ca6975798\""
                ),
            );
        } else if !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
            out.push(n.to_string());
        }
    }
    out
}

/// The default resources: those of the `<resource>/.default` scopes of the profile's routes.
fn route_resources(
    errs: &mut Errors,
    profile: &str,
    profile_ok: bool,
    hint: Option<String>,
    routes: &[Route],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in routes.iter().filter(|r| r.profile == profile) {
        if let Some(res) = r.scope.strip_suffix("/.default") {
            let res = res.trim_end_matches('/');
            if !out.iter().any(|o| o.eq_ignore_ascii_case(res)) {
                out.push(res.to_string());
            }
        }
    }
    if out.is_empty() && profile_ok {
        errs.add(
            "identity_endpoint.resources",
            format!(
                "no route of profile `{profile}` has a `<resource>/.default` scope to take \
                 the default from; list the resources SDKs may ask for, such as \
                 [\"499b84ac-1321-427f-aa17-267ca6975798\"]{}",
                hint.map(|h| format!(" ({h}, or identity_endpoint.profile)"))
                    .unwrap_or_default()
            ),
        );
    }
    out
}

/// Why `value` cannot be the identity header secret, if it cannot: it must be a header value
/// (visible ASCII) and long enough not to be guessed. Never shows the value.
pub(crate) fn identity_header_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("is empty; expected a random secret of at least 16 characters".into());
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(
            "holds spaces or characters that cannot be sent in an HTTP header; expected visible \
             ASCII (a UUID or a random base64 string)"
                .into(),
        );
    }
    if value.len() < 16 {
        return Some(format!(
            "is {} characters long; expected a random secret of at least 16 (for example \
             `openssl rand -hex 32`)",
            value.len()
        ));
    }
    None
}
