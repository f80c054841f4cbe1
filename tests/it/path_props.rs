//! Property tests for the path check and the router (docs/security.md): no input panics; every path
//! that could escape its route (dot segments raw or percent-encoded in any case, encoded slashes or
//! backslashes, raw backslashes, NUL, bad escapes) is refused; an accepted path routed to an
//! explicit route lands under the route's upstream base path with exactly the request's own
//! remainder; host routes reach known Microsoft hosts and nothing else.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use patless::config::{load_from_str, ConfigSource, Format};
use patless::credentials::{ArcAgent, CredentialContext, EntraClient};
use patless::env::MapEnv;
use patless::hosts;
use patless::metrics::Metrics;
use patless::proxy::path::validate;
use patless::proxy::routing::Routed;
use patless::proxy::Router;
use patless::store::TokenStore;
use patless::token::{CacheSettings, TokenCache};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Routers under test.
// ---------------------------------------------------------------------------------------------

/// Explicit routes `(prefix, upstream)`: nested prefixes, a base path with a trailing slash, a
/// deeper base path, and an `http` loopback upstream; host routes on.
const ROUTES: &[(&str, &str)] = &[
    ("/ado", "https://dev.azure.com"),
    ("/ado/org", "https://dev.azure.com/org/"),
    ("/graph", "https://graph.microsoft.com/v1.0"),
    ("/mde/api", "https://api.securitycenter.microsoft.com/api/"),
    ("/local", "http://127.0.0.1:8080/base/deeper"),
];

/// A catch-all route: every path is explicit, host routes never apply.
const CATCH_ALL: &[(&str, &str)] = &[
    ("/", "https://management.azure.com/subscriptions"),
    ("/ado", "https://dev.azure.com/"),
];

fn config_text(routes: &[(&str, &str)], host_routes: bool) -> String {
    let mut s = format!(
        r#"
[server]
host_routes = {host_routes}

[profiles.bot]
kind = "client_secret"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "not-used"
"#
    );
    for (prefix, upstream) in routes {
        s.push_str(&format!(
            "\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nprofile = \"bot\"\n\
             scope = \"api://patless-props/.default\"\n"
        ));
    }
    s
}

/// A router built the way `App::new` builds it: config → credentials → cache → table.
fn build_router(text: &str) -> Router {
    patless::tls::install_crypto_provider();
    let env = MapEnv::default();
    let loaded = load_from_str(text, Format::Toml, ConfigSource::Embedded, &env)
        .unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let ctx = CredentialContext {
        entra: EntraClient::new(reqwest::Client::new()),
        env: Arc::new(env),
        store: TokenStore::new(std::env::temp_dir().join("patless-path-props")),
        arc: ArcAgent::default(),
    };
    let credentials: HashMap<_, _> = loaded
        .config
        .profiles
        .values()
        .map(|p| {
            (
                p.name.clone(),
                patless::credentials::build(p, &ctx).credential,
            )
        })
        .collect();
    let cache = TokenCache::new(
        credentials,
        CacheSettings {
            acquire_timeout: Duration::from_secs(1),
            wait_timeout: Duration::from_secs(1),
        },
        Metrics::new(prometheus::Registry::new()),
    );
    Router::new(&loaded.config, &cache).expect("router")
}

/// Explicit routes as `(prefix, upstream)`.
type Routes = &'static [(&'static str, &'static str)];

/// The routers, built once per test binary: `(explicit routes, router)`.
fn routers() -> &'static [(Routes, Router)] {
    static ROUTERS: OnceLock<Vec<(Routes, Router)>> = OnceLock::new();
    ROUTERS.get_or_init(|| {
        vec![
            (ROUTES, build_router(&config_text(ROUTES, true))),
            (CATCH_ALL, build_router(&config_text(CATCH_ALL, true))),
            (ROUTES, build_router(&config_text(ROUTES, false))),
        ]
    })
}

/// The explicit route a path should take, by the contract alone: the longest prefix that matches
/// on whole segments (`/` matches everything). Returns the prefix and the upstream base path.
fn expected_route(routes: &[(&str, &str)], path: &str) -> Option<(String, String)> {
    routes
        .iter()
        .filter(|(prefix, _)| {
            *prefix == "/"
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|(prefix, _)| if *prefix == "/" { 0 } else { prefix.len() })
        .map(|(prefix, upstream)| {
            let base = url::Url::parse(upstream)
                .expect("upstream URL")
                .path()
                .trim_end_matches('/')
                .to_string();
            (prefix.to_string(), base)
        })
}

/// `true` when a segment is `.` or `..` once `%2e`/`%2E` are decoded.
fn is_dot_segment(segment: &str) -> bool {
    let decoded = segment.replace("%2e", ".").replace("%2E", ".");
    decoded == "." || decoded == ".."
}

/// Splits a routed `path_and_query` into the path, checking the query came through verbatim.
fn upstream_path<'a>(routed: &'a Routed, query: Option<&str>) -> Result<&'a str, TestCaseError> {
    let pq = routed.path_and_query.as_str();
    match query {
        None => Ok(pq),
        Some(q) => {
            let suffix = format!("?{q}");
            let path = pq.strip_suffix(suffix.as_str());
            prop_assert!(path.is_some(), "query {q:?} not kept in {pq:?}");
            Ok(path.unwrap_or_default())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------------------------

/// Path segments that pass the check (some of them look like trouble but are not).
fn good_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9_~-]{1,12}",
        1 => Just(String::new()),
        1 => prop::sample::select(vec![
            "org", "_apis", "projects", "ado", "graph", "mde", "api", "local", "orgx", "v1.0",
            ".well-known", "..x", "x..", "...", ".x", "a.b", "%2e%2ex", ".%2ex", "%2e.x", "%2ex",
            "%20", "%41%42", "%7E", "%25", "%252e", "%252f", "caf%C3%A9", "é", "+", ";", ":",
            "@", "=", "&", "dev.azure.com", "DEV.Azure.COM",
        ])
        .prop_map(str::to_string),
    ]
}

/// A dot segment: `.` or `..`, each dot raw, `%2e` or `%2E`.
fn dot_segment() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec![".", "%2e", "%2E"]), 1..=2)
        .prop_map(|dots| dots.concat())
}

/// `%2f` or `%5c` in any case.
fn encoded_slash() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["%2f", "%2F", "%5c", "%5C"]).prop_map(str::to_string)
}

/// Hex digits, and characters that are not.
const HEX: &str = "[0-9a-fA-F]";
const NOT_HEX: &str = "[g-zG-Z_~.!$'()*+,;=:@/ -]";

/// A bad escape that stays bad whatever follows: `%` then a non-hex character, or `%`, a hex
/// digit and a non-hex character.
fn bad_escape() -> impl Strategy<Value = String> {
    prop_oneof![
        NOT_HEX.prop_map(|c| format!("%{c}")),
        (HEX, NOT_HEX).prop_map(|(h, c)| format!("%{h}{c}")),
    ]
}

/// A path of good segments.
fn good_path() -> impl Strategy<Value = String> {
    prop::collection::vec(good_segment(), 0..6).prop_map(|segs| format!("/{}", segs.join("/")))
}

/// What makes a path bad, placed inside a segment of an otherwise good path.
#[derive(Debug, Clone)]
enum Bad {
    /// A whole segment.
    DotSegment(String),
    /// Anywhere in a segment.
    Inside(String),
    /// At the very end of the path (`%` or `%4` with nothing after).
    Trailing(String),
}

fn bad_piece() -> impl Strategy<Value = Bad> {
    prop_oneof![
        dot_segment().prop_map(Bad::DotSegment),
        encoded_slash().prop_map(Bad::Inside),
        Just(Bad::Inside("\\".into())),
        prop::sample::select(vec!["\0", "%00"]).prop_map(|s| Bad::Inside(s.into())),
        bad_escape().prop_map(Bad::Inside),
        prop_oneof![Just("%".to_string()), HEX.prop_map(|h| format!("%{h}"))]
            .prop_map(Bad::Trailing),
    ]
}

/// A path with exactly one bad piece somewhere.
fn bad_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec("[A-Za-z0-9_~.-]{0,8}", 0..5),
        bad_piece(),
        any::<prop::sample::Index>(),
        "[A-Za-z0-9_~-]{0,4}",
        "[G-Zg-z_~-]{0,4}",
        prop::collection::vec(good_segment(), 0..3),
    )
        .prop_map(|(mut segs, bad, at, left, right, tail)| {
            let i = at.index(segs.len() + 1);
            match bad {
                Bad::DotSegment(dots) => {
                    segs.insert(i, dots);
                    segs.extend(tail);
                    format!("/{}", segs.join("/"))
                }
                // `right` starts with no hex digit, so an escape stays as bad as it was.
                Bad::Inside(piece) => {
                    segs.insert(i, format!("{left}{piece}{right}"));
                    segs.extend(tail);
                    format!("/{}", segs.join("/"))
                }
                Bad::Trailing(piece) => format!("/{}{left}{piece}", segs.join("/")),
            }
        })
}

/// Paths that a router may route: starts that hit (or nearly hit) the prefixes, then segments.
fn routable_path() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            3 => prop::sample::select(vec!["/ado", "/ado/org", "/graph", "/mde/api", "/local"]),
            1 => prop::sample::select(vec![
                "", "/ado/orgx", "/adox", "/graphx", "/mde", "/mde/apix", "/ADO",
                "/dev.azure.com", "/x.visualstudio.com",
            ]),
        ],
        good_path(),
        any::<bool>(),
    )
        .prop_map(|(start, rest, bare)| {
            if bare && !start.is_empty() {
                start.to_string()
            } else {
                format!("{start}{rest}")
            }
        })
}

/// First path segments for host routes: known hosts, their look-alikes, and anything at all.
fn first_segment() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "dev.azure.com",
        "vssps.dev.azure.com",
        "contoso.visualstudio.com",
        "api.security.microsoft.com",
        "api.securitycenter.microsoft.com",
        "api-eu.securitycenter.microsoft.com",
        "graph.microsoft.com",
        "management.azure.com",
        "graph.microsoft.us",
        "management.chinacloudapi.cn",
    ]);
    let suffix = prop_oneof![
        3 => Just(""),
        1 => prop::sample::select(vec![
            ".", ":443", ":8080", ".evil.com", "%2e", "@evil.com", "\\", "%00", "#x", "?x",
        ]),
    ];
    let prefix = prop_oneof![
        3 => Just(""),
        1 => prop::sample::select(vec!["x", "a.", "a.b.", "evil.com@", "-", ".", "%41", "api-"]),
    ];
    let decorated =
        (known, suffix, prefix, any::<bool>()).prop_map(|(host, suffix, prefix, upper)| {
            let s = format!("{prefix}{host}{suffix}");
            if upper {
                s.to_uppercase()
            } else {
                s
            }
        });
    prop_oneof![
        3 => decorated,
        1 => "[a-z0-9.:@%_-]{0,40}",
        1 => any::<String>().prop_map(|s| s.replace('/', "")),
    ]
}

/// Arbitrary text for the query: strings, and lossily decoded bytes.
fn any_query() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        any::<String>().prop_map(Some),
        prop::collection::vec(any::<u8>(), 0..48)
            .prop_map(|b| Some(String::from_utf8_lossy(&b).into_owned())),
    ]
}

/// Arbitrary text for the path.
fn any_path() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        any::<String>().prop_map(|s| format!("/{s}")),
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| format!("/{}", String::from_utf8_lossy(&b))),
        bad_path(),
        routable_path(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------------

// proptest's default of 256 cases per property; `PROPTEST_CASES=20000` for a deeper run.
proptest! {
    /// Nothing panics: the check and every router take any path and query.
    #[test]
    fn no_input_panics(path in any_path(), query in any_query()) {
        let _ = validate(&path);
        for (_, router) in routers() {
            let _ = router.route(&path, query.as_deref());
        }
    }

    /// Every escape the contract names is refused, wherever it sits.
    #[test]
    fn escapes_are_refused(path in bad_path()) {
        prop_assert!(validate(&path).is_err(), "accepted {path:?}");
    }

    /// A dot segment in any spelling is refused at any position, even as the last segment.
    #[test]
    fn dot_segments_are_refused(
        head in prop::collection::vec(good_segment(), 0..4),
        dots in dot_segment(),
        tail in prop::collection::vec(good_segment(), 0..3),
        trailing_slash in any::<bool>(),
    ) {
        let mut segs = head;
        segs.push(dots);
        segs.extend(tail);
        let mut path = format!("/{}", segs.join("/"));
        if trailing_slash {
            path.push('/');
        }
        prop_assert!(validate(&path).is_err(), "accepted {path:?}");
    }

    /// The check accepts plain paths: no false alarms on segments that only look like trouble.
    #[test]
    fn good_paths_are_accepted(path in good_path()) {
        prop_assert!(validate(&path).is_ok(), "refused {path:?}: {:?}", validate(&path));
    }

    /// An accepted path has none of the forbidden bytes or escapes, whatever it was made of: the
    /// only encoded slash is an npm scoped name's (`@scope%2Fname`, one per segment), and with it
    /// decoded there is still no dot segment.
    #[test]
    fn accepted_paths_are_clean(path in any_path()) {
        if validate(&path).is_ok() {
            let lower = path.to_ascii_lowercase();
            prop_assert!(path.starts_with('/'));
            prop_assert!(!path.contains('\\') && !path.contains('\0'), "{path:?}");
            prop_assert!(!lower.contains("%5c") && !lower.contains("%00"), "{path:?}");
            for segment in lower.split('/').filter(|s| s.contains("%2f")) {
                prop_assert!(
                    segment.starts_with('@') && segment.matches("%2f").count() == 1,
                    "{path:?}"
                );
            }
            prop_assert!(!path.split('/').any(is_dot_segment), "{path:?}");
            let decoded = lower.replace("%2f", "/");
            prop_assert!(!decoded.split('/').any(is_dot_segment), "{path:?}");
        }
    }

    /// An accepted path routed to an explicit route: the upstream path is the base path `B` and
    /// then exactly the request's path after the prefix `P` (or `/` when both are empty); the
    /// remainder starts with `/` and holds no dot segment; the longest whole-segment prefix wins.
    #[test]
    fn explicit_routes_stay_under_their_base(
        which in 0..3usize,
        path in prop_oneof![5 => routable_path(), 1 => any_path()],
        query in any_query(),
    ) {
        let (routes, router) = &routers()[which];
        prop_assume!(validate(&path).is_ok());
        let expected = expected_route(routes, &path);
        let routed = router.route(&path, query.as_deref());
        let Some((prefix, base)) = expected else {
            // No explicit route: only a host route may answer.
            if let Some(r) = &routed {
                prop_assert!(
                    hosts::lookup(r.target.authority.host()).is_some(),
                    "{path:?} went to {}", r.target.authority
                );
            }
            return Ok(());
        };
        prop_assert!(routed.is_some(), "{path:?} should take route {prefix}");
        let routed = routed.expect("checked");
        prop_assert_eq!(&*routed.target.label, prefix.as_str(), "{:?}", path);
        prop_assert_eq!(&*routed.target.base_path, base.as_str());

        let upstream = upstream_path(&routed, query.as_deref())?;
        let after_prefix = if prefix == "/" { path.as_str() } else { &path[prefix.len()..] };
        prop_assert!(upstream.starts_with(base.as_str()), "{upstream:?} not under {base:?}");
        let remainder = &upstream[base.len()..];
        if base.is_empty() && after_prefix.is_empty() {
            prop_assert_eq!(remainder, "/");
        } else {
            prop_assert!(remainder.is_empty() || remainder.starts_with('/'), "{remainder:?}");
            prop_assert_eq!(remainder, after_prefix);
        }
        prop_assert!(!remainder.split('/').any(is_dot_segment), "{remainder:?}");
    }

    /// Host routes: whatever the first segment, a host route targets a known Microsoft host over
    /// https, named by that segment in lower case, with the rest of the path as is.
    #[test]
    fn host_routes_reach_known_hosts_only(
        host in first_segment(),
        rest in good_path(),
        bare in any::<bool>(),
        query in any_query(),
    ) {
        let path = if bare { format!("/{host}") } else { format!("/{host}{rest}") };
        let (routes, router) = &routers()[0];
        let Some(routed) = router.route(&path, query.as_deref()) else {
            return Ok(());
        };
        if expected_route(routes, &path).is_some() {
            return Ok(()); // an explicit route took it: the property above covers it
        }
        let authority = routed.target.authority.as_str();
        prop_assert!(
            hosts::lookup(routed.target.authority.host()).is_some(),
            "{path:?} routed to unknown host {authority:?}"
        );
        prop_assert_eq!(&routed.target.scheme, &http::uri::Scheme::HTTPS);
        prop_assert_eq!(authority, host.to_ascii_lowercase());
        prop_assert_eq!(&*routed.target.base_path, "");
        let upstream = upstream_path(&routed, query.as_deref())?;
        let after = &path[1 + host.len()..];
        if after.is_empty() {
            prop_assert_eq!(upstream, "/");
        } else {
            prop_assert_eq!(upstream, after);
        }
        // With host routes off, the same path is not routed at all.
        prop_assert!(routers()[2].1.route(&path, None).is_none(), "{path:?}");
    }
}
