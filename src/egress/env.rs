//! The proxy from the environment, when `server.egress_proxy` is absent: `HTTPS_PROXY`,
//! `https_proxy`, `ALL_PROXY`, `all_proxy` in that order, with `NO_PROXY`/`no_proxy` as its
//! exclusions unless `server.no_proxy` is set. `HTTP_PROXY` is not read: plain `http://`
//! destinations never use the proxy.

use super::rules::parse_rules;
use super::{EgressError, NO_PROXY_KEY};
use crate::env::{non_empty, Environment};

/// Variables read, in order, when `server.egress_proxy` is absent.
const PROXY_VARS: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];
/// Variables read, in order, when `server.no_proxy` is absent.
const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// The first proxy variable set (and not empty), trimmed, with its name.
pub(super) fn proxy_url(env: &dyn Environment) -> Option<(String, &'static str)> {
    PROXY_VARS
        .iter()
        .find_map(|&name| non_empty(env, name).map(|v| (v, name)))
        .map(|(text, name)| (text.trim().to_string(), name))
}

/// The exclusions of the first `no_proxy` variable set, normalised; none when neither is.
pub(super) fn no_proxy_rules(env: &dyn Environment) -> Result<Vec<String>, EgressError> {
    match NO_PROXY_VARS
        .iter()
        .find_map(|&n| env.var(n).map(|v| (v, n)))
    {
        Some((list, name)) => parse_rules(list.split(','), name).map_err(|e| EgressError {
            key: NO_PROXY_KEY,
            message: format!(
                "{}; fix the variable or set server.no_proxy, which takes precedence",
                e.message
            ),
        }),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use crate::egress::tests::from;

    #[test]
    fn the_environment_is_read_in_order() {
        let p = from(
            None,
            None,
            &[("https_proxy", "proxy-a:1"), ("ALL_PROXY", "http://b:2")],
        )
        .unwrap()
        .unwrap();
        assert_eq!((p.authority(), p.source()), ("proxy-a:1", "https_proxy"));
        let p = from(None, None, &[("all_proxy", "http://b:2")])
            .unwrap()
            .unwrap();
        assert_eq!(p.authority(), "b:2");
        // HTTP_PROXY is for http:// destinations, which never use the proxy.
        assert!(from(None, None, &[("HTTP_PROXY", "http://c:3")])
            .unwrap()
            .is_none());
    }

    #[test]
    fn no_proxy_comes_from_the_key_or_else_the_environment() {
        let env = [
            ("HTTPS_PROXY", "http://p:1"),
            ("NO_PROXY", "a.example, .b.example"),
        ];
        let p = from(None, None, &env).unwrap().unwrap();
        assert_eq!(p.no_proxy(), ["a.example", ".b.example"]);
        let p = from(None, Some(&["c.example"]), &env).unwrap().unwrap();
        assert_eq!(p.no_proxy(), ["c.example"]);
        // A proxy from the key does not take exclusions from the environment.
        let p = from(Some("http://p:1"), None, &env).unwrap().unwrap();
        assert!(p.no_proxy().is_empty());
    }
}
