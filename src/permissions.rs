//! What the usual endpoints of the Defender and Azure DevOps APIs need a token to hold, in one
//! table, for `patless check`: it reads the token's `roles` (application permissions) or `scp`
//! (delegated), says which families of endpoints the token can call, and on an upstream `403`
//! names what the token lacks for the probed path.
//!
//! Sources: the "Permissions" section of each endpoint's page in Microsoft's Defender XDR and
//! Defender for Endpoint API references, and Azure DevOps' OAuth scopes and access levels.

use url::Url;

/// An API whose permission model `check` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Microsoft Defender XDR (`api.security.microsoft.com`).
    DefenderXdr,
    /// Microsoft Defender for Endpoint (`api.securitycenter.microsoft.com`).
    DefenderForEndpoint,
    /// Azure DevOps (`dev.azure.com` and its sibling hosts).
    AzureDevOps,
}

impl Api {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Api::DefenderXdr => "Defender XDR",
            Api::DefenderForEndpoint => "Defender for Endpoint",
            Api::AzureDevOps => "Azure DevOps",
        }
    }

    /// Where an admin grants the permissions.
    pub fn how_to_grant(self) -> &'static str {
        match self {
            Api::DefenderXdr => {
                "grant it on the app registration: API permissions → APIs my organization uses → \
                 Microsoft Threat Protection → Application permissions, then grant admin consent"
            }
            Api::DefenderForEndpoint => {
                "grant it on the app registration: API permissions → APIs my organization uses → \
                 WindowsDefenderATP → Application permissions, then grant admin consent"
            }
            Api::AzureDevOps => {
                "Azure DevOps tokens carry no per-API grant: add the identity under Organization \
                 settings → Users (service principals too) with a sufficient access level, and \
                 give it the permission in the project (Project settings → Permissions)"
            }
        }
    }

    /// The path `check` probes on a route whose upstream is this API's root.
    pub fn probe_path(self) -> Option<&'static str> {
        match self {
            Api::DefenderXdr => Some("/api/incidents?$top=1"),
            Api::DefenderForEndpoint => Some("/api/machines?$top=1"),
            Api::AzureDevOps => None,
        }
    }

    /// The API a route talks to, from its scope (works for any upstream URL, a test double's
    /// too) or else its upstream host.
    pub fn of_route(scope: &str, upstream: &Url) -> Option<Api> {
        Api::of_scope(scope).or_else(|| {
            upstream
                .host_str()
                .and_then(|h| Api::of_host(&h.to_ascii_lowercase()))
        })
    }

    /// The API a scope is for, when its resource says (Azure DevOps' and Defender for
    /// Endpoint's application ids, or a known API's URL).
    pub fn of_scope(scope: &str) -> Option<Api> {
        let resource = scope.strip_suffix("/.default").unwrap_or(scope);
        if resource.eq_ignore_ascii_case(AZURE_DEVOPS_APP_ID) {
            Some(Api::AzureDevOps)
        } else if resource.eq_ignore_ascii_case(WINDOWS_DEFENDER_ATP_APP_ID) {
            Some(Api::DefenderForEndpoint)
        } else {
            Url::parse(resource)
                .ok()
                .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
                .and_then(|h| Api::of_host(&h))
        }
    }

    fn of_host(host: &str) -> Option<Api> {
        if host == "api.security.microsoft.com" || host.ends_with(".security.microsoft.us") {
            Some(Api::DefenderXdr)
        } else if host.ends_with(".securitycenter.microsoft.com")
            || host.ends_with(".securitycenter.windows.com")
            || host.ends_with(".securitycenter.microsoft.us")
            || host == "securitycenter.onmicrosoft.com"
        {
            Some(Api::DefenderForEndpoint)
        } else if crate::hosts::is_azure_devops(host) {
            Some(Api::AzureDevOps)
        } else {
            None
        }
    }
}

/// Azure DevOps' application id, its tokens' audience.
pub const AZURE_DEVOPS_APP_ID: &str = "499b84ac-1321-427f-aa17-267ca6975798";

/// The WindowsDefenderATP application id, which Defender for Endpoint tokens may name as their
/// resource.
pub const WINDOWS_DEFENDER_ATP_APP_ID: &str = "fc780465-2017-40d4-a0c5-307022471b92";

/// A family of endpoints and what a token needs to call it.
#[derive(Debug)]
pub struct Family {
    /// The API.
    pub api: Api,
    /// Path from the API root, segment by segment; `*` matches any one segment. For Azure DevOps
    /// the path starts at the segment after the organization and project (`_apis/…`, `_git`).
    pub path: &'static str,
    /// What the family does, in words.
    pub what: &'static str,
    /// Application permissions (`roles`), any one of which suffices.
    pub roles: &'static [&'static str],
    /// Delegated permissions (`scp`), any one of which suffices.
    pub scopes: &'static [&'static str],
    /// Azure DevOps: the organization or project permission that grants it.
    pub grant: &'static str,
}

/// The one table. Order matters only for display; matching takes the longest path.
pub const FAMILIES: &[Family] = &[
    // Defender XDR
    Family {
        api: Api::DefenderXdr,
        path: "api/incidents",
        what:
            "list and read incidents (GET /api/incidents); updating needs the ReadWrite permission",
        roles: &["Incident.Read.All", "Incident.ReadWrite.All"],
        scopes: &["Incident.Read", "Incident.ReadWrite"],
        grant: "",
    },
    Family {
        api: Api::DefenderXdr,
        path: "api/advancedhunting",
        what: "advanced hunting queries (POST /api/advancedhunting/run)",
        roles: &["AdvancedHunting.Read.All"],
        scopes: &["AdvancedHunting.Read"],
        grant: "",
    },
    // Defender for Endpoint
    Family {
        api: Api::DefenderForEndpoint,
        path: "api/machines",
        what: "devices (GET /api/machines)",
        roles: &["Machine.Read.All", "Machine.ReadWrite.All"],
        scopes: &["Machine.Read", "Machine.ReadWrite"],
        grant: "",
    },
    Family {
        api: Api::DefenderForEndpoint,
        path: "api/machines/*/isolate",
        what: "isolate a device (POST /api/machines/{id}/isolate)",
        roles: &["Machine.Isolate"],
        scopes: &["Machine.Isolate"],
        grant: "",
    },
    Family {
        api: Api::DefenderForEndpoint,
        path: "api/machineactions",
        what: "device actions (GET /api/machineactions)",
        roles: &["Machine.Read.All", "Machine.ReadWrite.All"],
        scopes: &["Machine.Read", "Machine.ReadWrite"],
        grant: "",
    },
    Family {
        api: Api::DefenderForEndpoint,
        path: "api/alerts",
        what: "alerts (GET /api/alerts)",
        roles: &["Alert.Read.All", "Alert.ReadWrite.All"],
        scopes: &["Alert.Read", "Alert.ReadWrite"],
        grant: "",
    },
    Family {
        api: Api::DefenderForEndpoint,
        path: "api/advancedqueries",
        what: "advanced hunting queries (POST /api/advancedqueries/run)",
        roles: &["AdvancedQuery.Read.All"],
        scopes: &["AdvancedQuery.Read"],
        grant: "",
    },
    Family {
        api: Api::DefenderForEndpoint,
        path: "api/indicators",
        what: "threat indicators (GET/POST /api/indicators)",
        roles: &["Ti.ReadWrite", "Ti.ReadWrite.All"],
        scopes: &["Ti.ReadWrite"],
        grant: "",
    },
    Family {
        api: Api::DefenderForEndpoint,
        path: "api/vulnerabilities",
        what: "vulnerabilities (GET /api/vulnerabilities)",
        roles: &["Vulnerability.Read.All"],
        scopes: &["Vulnerability.Read"],
        grant: "",
    },
    Family {
        api: Api::DefenderForEndpoint,
        path: "api/software",
        what: "software inventory (GET /api/Software)",
        roles: &["Software.Read.All"],
        scopes: &["Software.Read"],
        grant: "",
    },
    // Azure DevOps: the token grants the identity's own rights (`scp` `user_impersonation` for a
    // person, nothing for a service principal); OAuth apps' `vso.*` scopes narrow them.
    Family {
        api: Api::AzureDevOps,
        path: "_apis/connectiondata",
        what: "who the token is (GET /{org}/_apis/connectionData)",
        roles: &[],
        scopes: &["user_impersonation", "vso.profile"],
        grant: "a user of the organization (any access level)",
    },
    Family {
        api: Api::AzureDevOps,
        path: "_apis/projects",
        what: "projects (GET /{org}/_apis/projects)",
        roles: &[],
        scopes: &["user_impersonation", "vso.project"],
        grant:
            "a user of the organization (Stakeholder or above), and View project-level information",
    },
    Family {
        api: Api::AzureDevOps,
        path: "_apis/git",
        what: "repositories over REST (/{org}/{project}/_apis/git)",
        roles: &[],
        scopes: &["user_impersonation", "vso.code"],
        grant: "Basic access level, and Code: Read (project Readers); pushing needs Contribute",
    },
    Family {
        api: Api::AzureDevOps,
        path: "_git",
        what: "git clone, fetch and push (/{org}/{project}/_git/{repo})",
        roles: &[],
        scopes: &["user_impersonation", "vso.code", "vso.code_write"],
        grant: "Basic access level, and Code: Read (project Readers); pushing needs Contribute",
    },
    Family {
        api: Api::AzureDevOps,
        path: "_apis/wit",
        what: "work items (/{org}/{project}/_apis/wit)",
        roles: &[],
        scopes: &["user_impersonation", "vso.work", "vso.work_write"],
        grant: "Stakeholder or above, and View work items in this node (area path)",
    },
    Family {
        api: Api::AzureDevOps,
        path: "_apis/build",
        what: "builds and artifacts (/{org}/{project}/_apis/build)",
        roles: &[],
        scopes: &["user_impersonation", "vso.build", "vso.build_execute"],
        grant: "Basic access level, and View builds (project Readers); queueing needs Queue builds",
    },
    Family {
        api: Api::AzureDevOps,
        path: "_apis/pipelines",
        what: "pipelines and runs (/{org}/{project}/_apis/pipelines)",
        roles: &[],
        scopes: &["user_impersonation", "vso.build", "vso.build_execute"],
        grant: "Basic access level, and View builds; running needs Queue builds",
    },
    Family {
        api: Api::AzureDevOps,
        path: "_apis/packaging",
        what: "package feeds (feeds.dev.azure.com, pkgs.dev.azure.com)",
        roles: &[],
        scopes: &["user_impersonation", "vso.packaging", "vso.packaging_write"],
        grant: "Feed Reader on the feed; publishing needs Feed Publisher (Contributor)",
    },
];

/// What a token holds: its application roles and delegated scopes.
#[derive(Debug, Default, Clone)]
pub struct Grants {
    /// `roles`.
    pub roles: Vec<String>,
    /// `scp`, split on spaces.
    pub scopes: Vec<String>,
}

impl Grants {
    /// From a token's (unverified) claims.
    pub fn from_claims(claims: &serde_json::Map<String, serde_json::Value>) -> Grants {
        let roles = claims
            .get("roles")
            .and_then(|v| v.as_array())
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let scopes = claims
            .get("scp")
            .and_then(|v| v.as_str())
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        Grants { roles, scopes }
    }

    /// The permission of `family` that this token holds, if any.
    pub fn satisfying(&self, family: &Family) -> Option<String> {
        let has = |held: &[String], wanted: &[&str]| {
            wanted
                .iter()
                .find(|w| held.iter().any(|h| h.eq_ignore_ascii_case(w)))
                .map(|w| w.to_string())
        };
        has(&self.roles, family.roles).or_else(|| has(&self.scopes, family.scopes))
    }
}

/// The families of `api`.
pub fn families(api: Api) -> impl Iterator<Item = &'static Family> {
    FAMILIES.iter().filter(move |f| f.api == api)
}

/// The family a request path (the full upstream path) belongs to: the longest match.
pub fn family_of(api: Api, path: &str) -> Option<&'static Family> {
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    // Azure DevOps paths start with an organization and maybe a project: match from the first
    // `_apis` or `_git` segment.
    let from = if api == Api::AzureDevOps {
        segments
            .iter()
            .position(|s| s == "_apis" || s == "_git")
            .unwrap_or(segments.len())
    } else {
        0
    };
    let segments = &segments[from..];
    families(api)
        .filter(|f| {
            let pattern: Vec<&str> = f.path.split('/').collect();
            pattern.len() <= segments.len()
                && pattern
                    .iter()
                    .zip(segments)
                    .all(|(p, s)| *p == "*" || p.eq_ignore_ascii_case(s))
        })
        .max_by_key(|f| f.path.split('/').count())
}

/// What `family` needs, in words: "Incident.Read.All or Incident.ReadWrite.All (application),
/// Incident.Read or Incident.ReadWrite (delegated)".
pub fn needs(family: &Family) -> String {
    if family.api == Api::AzureDevOps {
        let oauth: Vec<&str> = family
            .scopes
            .iter()
            .copied()
            .filter(|s| *s != "user_impersonation")
            .collect();
        return format!("{} (OAuth apps: {})", family.grant, oauth.join(" or "));
    }
    format!(
        "{} (application), {} (delegated)",
        family.roles.join(" or "),
        family.scopes.join(" or ")
    )
}

/// The lines `check` prints under a token for `api`: each usual family, and whether the token's
/// grants cover it.
pub fn report(api: Api, grants: &Grants) -> Vec<String> {
    let mut lines = Vec::new();
    if api == Api::AzureDevOps {
        lines.push(format!(
            "  {}: the token grants the identity's own rights ({}); what it may do is set in \
             the organization and projects. The usual endpoints need:",
            api.name(),
            if grants.scopes.is_empty() {
                "no scp: an application identity".to_string()
            } else {
                format!("scp {}", grants.scopes.join(" "))
            }
        ));
        for f in families(api) {
            let verdict = match grants.satisfying(f) {
                Some(p) => format!("token has {p}"),
                None if grants.scopes.is_empty() => "depends on membership".to_string(),
                None => "token's scp lacks it".to_string(),
            };
            lines.push(format!("    {:<22} {} — {verdict}", f.path, f.grant));
        }
        return lines;
    }
    lines.push(format!(
        "  {} permissions of the usual endpoints (token: {}):",
        api.name(),
        held(grants)
    ));
    for f in families(api) {
        let verdict = match grants.satisfying(f) {
            Some(p) => format!("ok, has {p}"),
            None => "MISSING".to_string(),
        };
        lines.push(format!(
            "    {:<24} {:<45} {verdict}",
            f.path,
            f.roles.join(" or ")
        ));
    }
    lines
}

/// Why an upstream answered `403` to `path`, given what the token holds.
pub fn forbidden_hint(api: Api, path: &str, grants: &Grants) -> String {
    let Some(family) = family_of(api, path) else {
        return format!(
            "{} has no entry for this path; the token holds {}",
            api.name(),
            held(grants)
        );
    };
    match (api, grants.satisfying(family)) {
        (Api::AzureDevOps, _) => format!(
            "{} needs {}; {}",
            family.what,
            needs(family),
            api.how_to_grant()
        ),
        (_, None) => format!(
            "the token lacks {} needed for {}; it holds {}; {}",
            family.roles.join(" or "),
            family.what,
            held(grants),
            api.how_to_grant()
        ),
        (_, Some(p)) => format!(
            "the token holds {p}, which {} needs, so the refusal is not about application \
             permissions: check the tenant's Defender licensing and RBAC (device groups), or \
             that consent was granted in this tenant",
            family.what
        ),
    }
}

fn held(grants: &Grants) -> String {
    match (grants.roles.is_empty(), grants.scopes.is_empty()) {
        (false, _) => format!("roles {}", grants.roles.join(", ")),
        (true, false) => format!("scp {}", grants.scopes.join(" ")),
        (true, true) => "no roles or scp".to_string(),
    }
}

#[cfg(test)]
mod tests;
