//! The known Microsoft hosts: which Entra scope each one takes, which cloud (authority) it lives in,
//! whether it is Azure DevOps (which needs `X-TFS-FedAuthRedirect: Suppress`), how it takes the
//! token (`Authorization: Bearer`, or `Basic` for the Azure Artifacts feeds), and whether its
//! answers carry absolute URLs to itself that must be pointed back at patless (package feeds,
//! OData and ARM paging). Host routes (`/{host}/…`) serve these hosts and no others, so patless
//! is never an open proxy.

/// Azure DevOps' one audience, for every one of its hosts.
pub const AZURE_DEVOPS_SCOPE: &str = "499b84ac-1321-427f-aa17-267ca6975798/.default";

/// Public cloud authority.
pub const PUBLIC_AUTHORITY: &str = "https://login.microsoftonline.com";
/// US Government (GCC High, DoD) authority.
pub const US_GOV_AUTHORITY: &str = "https://login.microsoftonline.us";
/// China (21Vianet) authority.
pub const CHINA_AUTHORITY: &str = "https://login.chinacloudapi.cn";

/// How a row matches a host name.
#[derive(Debug, Clone, Copy)]
enum Pattern {
    /// The exact name.
    Exact(&'static str),
    /// Any single label in front of the suffix (`*.dev.azure.com`).
    Subdomain(&'static str),
    /// `prefix*suffix` within one label sequence, e.g. `api-*.securitycenter.microsoft.com`.
    Affix(&'static str, &'static str),
}

/// How the token is presented to an upstream (`auth` of a route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    #[default]
    Bearer,
    /// `Authorization: Basic base64("patless:" + token)`: the form package clients use with a
    /// PAT, which Azure DevOps accepts with an Entra access token as the password.
    Basic,
}

impl Auth {
    /// `"bearer"` or `"basic"`, as the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::Bearer => "bearer",
            Auth::Basic => "basic",
        }
    }

    /// The config's spelling → the scheme.
    pub fn parse(text: &str) -> Option<Auth> {
        match text {
            "bearer" => Some(Auth::Bearer),
            "basic" => Some(Auth::Basic),
            _ => None,
        }
    }
}

/// One row of the known-hosts table.
#[derive(Debug, Clone, Copy)]
pub struct KnownHost {
    pattern: Pattern,
    /// The Entra scope for tokens sent to this host.
    pub scope: &'static str,
    /// The authority host of the cloud this host belongs to.
    pub authority: &'static str,
    /// Azure DevOps host (gets `X-TFS-FedAuthRedirect: Suppress`).
    pub azure_devops: bool,
    /// How the host takes the token, unless a route says otherwise.
    pub auth: Auth,
    /// Whether its answers' absolute URLs to itself are pointed at patless, unless a route says
    /// otherwise (`rewrite_urls`).
    pub rewrite_urls: bool,
}

/// A Microsoft API (Graph, Defender, ARM): bearer tokens, and answers that page with absolute
/// `@odata.nextLink`/`nextLink` URLs to the API itself.
const fn row(pattern: Pattern, scope: &'static str, authority: &'static str) -> KnownHost {
    KnownHost {
        pattern,
        scope,
        authority,
        azure_devops: false,
        auth: Auth::Bearer,
        rewrite_urls: true,
    }
}

/// An Azure DevOps host.
const fn ado(pattern: Pattern) -> KnownHost {
    KnownHost {
        pattern,
        scope: AZURE_DEVOPS_SCOPE,
        authority: PUBLIC_AUTHORITY,
        azure_devops: true,
        auth: Auth::Bearer,
        rewrite_urls: false,
    }
}

/// An Azure Artifacts host: Azure DevOps' audience, the token as a `Basic` password (what
/// package clients send), and answers full of absolute URLs to the feed (tarballs, index links,
/// service-index `@id`s).
const fn feed(pattern: Pattern) -> KnownHost {
    KnownHost {
        auth: Auth::Basic,
        rewrite_urls: true,
        ..ado(pattern)
    }
}

use Pattern::{Affix, Exact, Subdomain};

/// Every known host with its scope — each API's `/.default` scope; Azure DevOps' is its fixed
/// application id — public cloud first, then the sovereign-cloud rows (docs/routes.md).
const KNOWN_HOSTS: &[KnownHost] = &[
    // The feeds first: `pkgs.dev.azure.com` is also a `*.dev.azure.com`.
    feed(Exact("pkgs.dev.azure.com")),
    feed(Subdomain("pkgs.visualstudio.com")),
    ado(Exact("dev.azure.com")),
    ado(Subdomain("dev.azure.com")),
    ado(Subdomain("visualstudio.com")),
    row(
        Exact("api.security.microsoft.com"),
        "https://api.security.microsoft.com/.default",
        PUBLIC_AUTHORITY,
    ),
    row(
        Exact("api.securitycenter.microsoft.com"),
        "https://api.securitycenter.microsoft.com/.default",
        PUBLIC_AUTHORITY,
    ),
    row(
        Affix("api-", ".securitycenter.microsoft.com"),
        "https://api.securitycenter.microsoft.com/.default",
        PUBLIC_AUTHORITY,
    ),
    row(
        Exact("graph.microsoft.com"),
        "https://graph.microsoft.com/.default",
        PUBLIC_AUTHORITY,
    ),
    row(
        Exact("management.azure.com"),
        "https://management.azure.com/.default",
        PUBLIC_AUTHORITY,
    ),
    // Defender in US Government: GCC signs in at the public authority, GCC High/DoD at .us.
    row(
        Exact("api-gcc.securitycenter.microsoft.us"),
        "https://api-gcc.securitycenter.microsoft.us/.default",
        PUBLIC_AUTHORITY,
    ),
    row(
        Exact("api-gcc.security.microsoft.us"),
        "https://api-gcc.security.microsoft.us/.default",
        PUBLIC_AUTHORITY,
    ),
    row(
        Exact("api-gov.securitycenter.microsoft.us"),
        "https://api-gov.securitycenter.microsoft.us/.default",
        US_GOV_AUTHORITY,
    ),
    row(
        Exact("api-gov.security.microsoft.us"),
        "https://api-gov.security.microsoft.us/.default",
        US_GOV_AUTHORITY,
    ),
    row(
        Exact("graph.microsoft.us"),
        "https://graph.microsoft.us/.default",
        US_GOV_AUTHORITY,
    ),
    row(
        Exact("dod-graph.microsoft.us"),
        "https://dod-graph.microsoft.us/.default",
        US_GOV_AUTHORITY,
    ),
    row(
        Exact("management.usgovcloudapi.net"),
        "https://management.usgovcloudapi.net/.default",
        US_GOV_AUTHORITY,
    ),
    row(
        Exact("microsoftgraph.chinacloudapi.cn"),
        "https://microsoftgraph.chinacloudapi.cn/.default",
        CHINA_AUTHORITY,
    ),
    row(
        Exact("management.chinacloudapi.cn"),
        "https://management.chinacloudapi.cn/.default",
        CHINA_AUTHORITY,
    ),
];

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Pattern {
    fn matches(&self, host: &str) -> bool {
        match *self {
            Exact(name) => host == name,
            Subdomain(suffix) => host
                .strip_suffix(suffix)
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(is_label),
            Affix(prefix, suffix) => host
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .is_some_and(is_label),
        }
    }
}

/// The known-host row for `host` (lower-case, without port), if any.
///
/// ```
/// use patless::hosts::{lookup, AZURE_DEVOPS_SCOPE};
/// assert_eq!(lookup("contoso.visualstudio.com").map(|h| h.scope), Some(AZURE_DEVOPS_SCOPE));
/// assert!(lookup("api-eu.securitycenter.microsoft.com").is_some());
/// assert!(lookup("dev.azure.com.attacker.example").is_none());
/// ```
pub fn lookup(host: &str) -> Option<&'static KnownHost> {
    let host = host.strip_suffix('.').unwrap_or(host);
    KNOWN_HOSTS.iter().find(|h| h.pattern.matches(host))
}

/// Every distinct scope of the table (host routes keep one token entry per scope).
pub fn all_scopes() -> Vec<&'static str> {
    let mut scopes: Vec<&'static str> = KNOWN_HOSTS.iter().map(|h| h.scope).collect();
    scopes.sort_unstable();
    scopes.dedup();
    scopes
}

impl KnownHost {
    /// The row as a bounded metric label: `/dev.azure.com`, `/*.visualstudio.com`,
    /// `/api-*.securitycenter.microsoft.com`.
    pub fn label(&self) -> String {
        match self.pattern {
            Exact(name) => format!("/{name}"),
            Subdomain(suffix) => format!("/*.{suffix}"),
            Affix(prefix, suffix) => format!("/{prefix}*{suffix}"),
        }
    }
}

/// Whether `host` is one of Azure DevOps' hosts.
pub fn is_azure_devops(host: &str) -> bool {
    lookup(host).is_some_and(|h| h.azure_devops)
}

/// Whether `host` names this machine's loopback interface (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_devops_hosts() {
        for h in [
            "dev.azure.com",
            "vssps.dev.azure.com",
            "feeds.dev.azure.com",
            "contoso.visualstudio.com",
        ] {
            let k = lookup(h).unwrap_or_else(|| panic!("{h} should be known"));
            assert_eq!(k.scope, AZURE_DEVOPS_SCOPE);
            assert!(k.azure_devops);
        }
        assert!(lookup("evil.com").is_none());
        assert!(lookup("dev.azure.com.evil.com").is_none());
        assert!(lookup("a.b.dev.azure.com").is_none());
        assert!(lookup("xdev.azure.com").is_none());
    }

    #[test]
    fn feed_hosts_take_basic_and_rewrite_their_urls() {
        for h in ["pkgs.dev.azure.com", "contoso.pkgs.visualstudio.com"] {
            let k = lookup(h).unwrap_or_else(|| panic!("{h} should be known"));
            assert_eq!(k.scope, AZURE_DEVOPS_SCOPE, "{h}");
            assert_eq!(k.auth, Auth::Basic, "{h}");
            assert!(k.rewrite_urls, "{h}");
            assert!(k.azure_devops, "{h}");
        }
        for h in [
            "dev.azure.com",
            "vssps.dev.azure.com",
            "contoso.visualstudio.com",
        ] {
            let k = lookup(h).expect("known");
            assert_eq!(k.auth, Auth::Bearer, "{h}");
            assert!(!k.rewrite_urls, "{h}");
        }
        for h in [
            "graph.microsoft.com",
            "api.security.microsoft.com",
            "api-eu.securitycenter.microsoft.com",
            "management.azure.com",
        ] {
            let k = lookup(h).expect("known");
            assert_eq!(k.auth, Auth::Bearer, "{h}");
            assert!(k.rewrite_urls, "{h} pages with absolute URLs");
        }
        assert!(lookup("a.b.pkgs.visualstudio.com").is_none());
        assert_eq!(Auth::parse("basic"), Some(Auth::Basic));
        assert_eq!(Auth::parse("Basic"), None);
        assert_eq!(Auth::Bearer.as_str(), "bearer");
    }

    #[test]
    fn defender_hosts() {
        assert_eq!(
            lookup("api-eu.securitycenter.microsoft.com").map(|k| k.scope),
            Some("https://api.securitycenter.microsoft.com/.default")
        );
        assert_eq!(
            lookup("api.security.microsoft.com").map(|k| k.scope),
            Some("https://api.security.microsoft.com/.default")
        );
        assert!(!is_azure_devops("api.security.microsoft.com"));
        assert!(lookup("api-.securitycenter.microsoft.com").is_none());
        assert_eq!(
            lookup("graph.microsoft.us").map(|k| k.authority),
            Some(US_GOV_AUTHORITY)
        );
    }

    #[test]
    fn loopback_names() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("127.1.2.3"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("LOCALHOST"));
        assert!(!is_loopback("10.0.0.1"));
        assert!(!is_loopback("localhost.evil.com"));
    }
}
