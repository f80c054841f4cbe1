//! `patless git-credential <get|store|erase>`: git's credential-helper protocol
//! (docs/migrate-from-pat.md, "git"), so `git clone https://dev.azure.com/…` authenticates with an
//! Entra token and no PAT.
//!
//! git writes `key=value` lines (`protocol`, `host` with an optional `:port`, `path` when
//! `credential.useHttpPath` is set, `username`, …) and a blank line or EOF. For `get`, the route
//! whose upstream has the same scheme, host and port answers (several: the longest upstream path
//! that is a prefix of `path`, else the first); a known Azure DevOps host (https) that no route
//! names takes `server.default_profile`. The answer is `username=patless`, `password=<token>` and
//! `password_expiry_utc=<epoch seconds>`, so git never caches it past its expiry. Anything else —
//! another protocol, a host patless does not know — gets an empty answer and exit 0, and git asks
//! its next helper. `store` and `erase` read their input and do nothing: patless keeps its own
//! cache.

use std::io::BufRead;

use clap::ValueEnum;
use percent_encoding::percent_decode_str;
use url::Url;

use crate::config::Config;
use crate::hosts::{is_azure_devops, AZURE_DEVOPS_SCOPE};
use crate::token::CachedToken;

/// The user name patless answers with (Azure DevOps ignores it; git needs one).
pub const USERNAME: &str = "patless";

/// What git asks the helper to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// Answer a credential for the described URL.
    Get,
    /// git found the credential good (patless has nothing to store).
    Store,
    /// git found the credential bad (patless has nothing to erase; its cache refreshes itself).
    Erase,
}

/// The attributes of one request that patless reads; the rest (`wwwauth[]`, `capability[]`, …)
/// are accepted and ignored.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct CredentialRequest {
    /// `https`, `http`, …
    pub protocol: Option<String>,
    /// Host name, with `:port` when the URL had one.
    pub host: Option<String>,
    /// The URL path without its leading `/` (only with `credential.useHttpPath`).
    pub path: Option<String>,
    /// The URL's user name, if it had one.
    pub username: Option<String>,
}

// By hand: git may send a `password` (for `store`/`erase`), which is never read into this type,
// but a user name can be a hint too personal for logs; only what matters for matching is shown.
impl std::fmt::Debug for CredentialRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRequest")
            .field("protocol", &self.protocol)
            .field("host", &self.host)
            .field("path", &self.path)
            .field("username", &self.username.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Reads git's request: `key=value` lines up to a blank line or EOF. Lines without `=` and
/// unknown keys are skipped (git adds keys over time); for a repeated key the last one wins, as
/// in git.
pub fn read_request(input: impl BufRead) -> std::io::Result<CredentialRequest> {
    let mut req = CredentialRequest::default();
    for line in input.lines() {
        let line = line?;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if line.is_empty() {
            break;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let slot = match key {
            "protocol" => &mut req.protocol,
            "host" => &mut req.host,
            "path" => &mut req.path,
            "username" => &mut req.username,
            _ => continue,
        };
        *slot = Some(value.to_string());
    }
    Ok(req)
}

/// Whose token answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Profile name.
    pub profile: String,
    /// Entra scope.
    pub scope: String,
    /// The route's prefix; `None` for a known host that no route names.
    pub route: Option<String>,
}

/// The origin a request names: scheme, lower-case host, port (default ports filled in).
fn request_origin(req: &CredentialRequest) -> Option<(String, String, u16)> {
    let protocol = req.protocol.as_deref()?.to_ascii_lowercase();
    if protocol != "https" && protocol != "http" {
        return None;
    }
    let host = req.host.as_deref()?;
    // A host attribute is a host and an optional port; anything that would make the URL below
    // mean something else (user info, a path) is not.
    if host.is_empty() || host.contains(['/', '\\', '@', '?', '#', ' ']) {
        return None;
    }
    let url = Url::parse(&format!("{protocol}://{host}/")).ok()?;
    origin(&url)
}

fn origin(url: &Url) -> Option<(String, String, u16)> {
    Some((
        url.scheme().to_string(),
        url.host_str()?.to_ascii_lowercase(),
        url.port_or_known_default()?,
    ))
}

/// The decoded, non-empty segments of a path.
fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect()
}

/// Picks the route (or the default profile) for `req`; `None` when patless has nothing for it.
pub fn select(config: &Config, req: &CredentialRequest) -> Option<Target> {
    let (scheme, host, port) = request_origin(req)?;
    let candidates: Vec<_> = config
        .routes
        .iter()
        .filter(|r| origin(&r.upstream).is_some_and(|o| o == (scheme.clone(), host.clone(), port)))
        .collect();
    let by_path = req.path.as_deref().and_then(|path| {
        let wanted = segments(path);
        candidates
            .iter()
            .filter_map(|r| {
                let have = segments(r.upstream.path());
                wanted.starts_with(&have).then_some((have.len(), *r))
            })
            // The first of equally long matches, like the first route otherwise.
            .fold(None, |best: Option<(usize, _)>, (len, r)| match best {
                Some((l, _)) if l >= len => best,
                _ => Some((len, r)),
            })
            .map(|(_, r)| r)
    });
    if let Some(route) = by_path.or_else(|| candidates.first().copied()) {
        return Some(Target {
            profile: route.profile.clone(),
            scope: route.scope.clone(),
            route: Some(route.prefix.clone()),
        });
    }
    (scheme == "https" && port == 443 && is_azure_devops(&host)).then(|| Target {
        profile: config.server.default_profile.clone(),
        scope: AZURE_DEVOPS_SCOPE.to_string(),
        route: None,
    })
}

/// git's answer for `token`: user name, password and its expiry, then the blank line.
pub fn answer(token: &CachedToken) -> String {
    format!(
        "username={USERNAME}\npassword={}\npassword_expiry_utc={}\n\n",
        token.secret().expose(),
        token.expires_unix
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_from_str, ConfigSource, Format};
    use crate::env::MapEnv;

    fn req(text: &str) -> CredentialRequest {
        read_request(text.as_bytes()).expect("in-memory read")
    }

    fn config(routes: &[(&str, &str, &str)], server: &str) -> Config {
        let mut text = format!(
            "[server]\nhost_routes = false\n{server}\n\
             [profiles.a]\nkind = \"azure_cli\"\n[profiles.b]\nkind = \"azure_cli\"\n\
             [profiles.c]\nkind = \"azure_cli\"\n"
        );
        for (prefix, upstream, profile) in routes {
            text.push_str(&format!(
                "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nprofile = \"{profile}\"\n\
                 scope = \"{AZURE_DEVOPS_SCOPE}\"\n"
            ));
        }
        load_from_str(
            &text,
            Format::Toml,
            ConfigSource::Embedded,
            &MapEnv::default(),
        )
        .unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
        .config
    }

    fn profile(config: &Config, text: &str) -> Option<String> {
        select(config, &req(text)).map(|t| t.profile)
    }

    #[test]
    fn reads_attributes_until_the_blank_line() {
        let r = req(
            "protocol=https\nhost=dev.azure.com\npath=org/p/_git/r\nusername=me\n\
                     wwwauth[]=Basic realm=\"x\"\ncapability[]=authtype\nnonsense\n\nhost=later\n",
        );
        assert_eq!(r.protocol.as_deref(), Some("https"));
        assert_eq!(r.host.as_deref(), Some("dev.azure.com"));
        assert_eq!(r.path.as_deref(), Some("org/p/_git/r"));
        assert_eq!(r.username.as_deref(), Some("me"));
        // EOF ends it as well as a blank line; CRLF is tolerated; a value may hold `=`.
        let r = req("protocol=http\r\nhost=h:8080\r\npath=a=b");
        assert_eq!(r.host.as_deref(), Some("h:8080"));
        assert_eq!(r.path.as_deref(), Some("a=b"));
        assert_eq!(req(""), CredentialRequest::default());
    }

    #[test]
    fn debug_hides_the_user_name() {
        let text = format!("{:?}", req("protocol=https\nhost=x\nusername=alice\n"));
        assert!(!text.contains("alice"), "{text}");
    }

    #[test]
    fn matches_scheme_host_and_port_with_default_ports_normalised() {
        let c = config(
            &[
                ("/one", "https://git.example.com", "a"),
                ("/two", "http://127.0.0.1:8080", "b"),
                ("/three", "http://localhost", "c"),
            ],
            "",
        );
        assert_eq!(
            profile(&c, "protocol=https\nhost=git.example.com\n"),
            Some("a".into())
        );
        assert_eq!(
            profile(&c, "protocol=https\nhost=GIT.example.com:443\n"),
            Some("a".into())
        );
        assert_eq!(profile(&c, "protocol=http\nhost=git.example.com\n"), None);
        assert_eq!(
            profile(&c, "protocol=https\nhost=git.example.com:8443\n"),
            None
        );
        assert_eq!(
            profile(&c, "protocol=http\nhost=127.0.0.1:8080\n"),
            Some("b".into())
        );
        assert_eq!(profile(&c, "protocol=http\nhost=127.0.0.1\n"), None);
        assert_eq!(
            profile(&c, "protocol=http\nhost=LOCALHOST:80\n"),
            Some("c".into())
        );
        let t = select(&c, &req("protocol=https\nhost=git.example.com\n")).expect("a target");
        assert_eq!(t.route.as_deref(), Some("/one"));
        assert_eq!(t.scope, AZURE_DEVOPS_SCOPE);
    }

    #[test]
    fn nothing_for_other_protocols_odd_hosts_or_missing_attributes() {
        let c = config(&[("/one", "https://git.example.com", "a")], "");
        for text in [
            "protocol=ssh\nhost=git.example.com\n",
            "protocol=https\n",
            "host=git.example.com\n",
            "protocol=https\nhost=\n",
            "protocol=https\nhost=evil@git.example.com\n",
            "protocol=https\nhost=git.example.com/x\n",
            "protocol=https\nhost=git.example.com.evil.test\n",
        ] {
            assert_eq!(profile(&c, text), None, "{text}");
        }
    }

    #[test]
    fn path_picks_the_longest_upstream_prefix_on_whole_segments() {
        let c = config(
            &[
                ("/root", "https://dev.azure.com", "a"),
                ("/org", "https://dev.azure.com/org", "b"),
                ("/team", "https://dev.azure.com/org/team", "c"),
            ],
            "",
        );
        let ask = |path: &str| profile(&c, &format!("protocol=https\nhost=dev.azure.com\n{path}"));
        assert_eq!(ask("path=org/team/_git/r\n"), Some("c".into()));
        assert_eq!(ask("path=org/other/_git/r\n"), Some("b".into()));
        assert_eq!(ask("path=orgx/p/_git/r\n"), Some("a".into()));
        assert_eq!(ask("path=org%20x/p\n"), Some("a".into()));
        // Without a path (no credential.useHttpPath): the first route.
        assert_eq!(ask(""), Some("a".into()));
        // Percent-encoded upstream paths compare decoded, as git sends the path.
        let c = config(
            &[
                ("/x", "https://dev.azure.com/other", "a"),
                ("/y", "https://dev.azure.com/my%20org", "b"),
            ],
            "",
        );
        assert_eq!(
            profile(
                &c,
                "protocol=https\nhost=dev.azure.com\npath=my org/p/_git/r\n"
            ),
            Some("b".into())
        );
        // No route's path fits: still the first route of that origin.
        assert_eq!(
            profile(&c, "protocol=https\nhost=dev.azure.com\npath=third/p\n"),
            Some("a".into())
        );
    }

    #[test]
    fn known_azure_devops_host_without_route_takes_the_default_profile() {
        let c = config(
            &[("/one", "https://git.example.com", "a")],
            "default_profile = \"c\"",
        );
        for host in [
            "dev.azure.com",
            "contoso.visualstudio.com",
            "dev.azure.com:443",
        ] {
            let t = select(&c, &req(&format!("protocol=https\nhost={host}\n")))
                .unwrap_or_else(|| panic!("{host} should be answered"));
            assert_eq!(t.profile, "c");
            assert_eq!(t.scope, AZURE_DEVOPS_SCOPE);
            assert_eq!(t.route, None);
        }
        // https only, default port only, and Azure DevOps only (not every known host).
        assert_eq!(profile(&c, "protocol=http\nhost=dev.azure.com\n"), None);
        assert_eq!(
            profile(&c, "protocol=https\nhost=dev.azure.com:8443\n"),
            None
        );
        assert_eq!(
            profile(&c, "protocol=https\nhost=graph.microsoft.com\n"),
            None
        );
    }
}
