//! Routing's tests: the table, host routes, the proxy path for an upstream URL, per-worker copies.

use super::*;
use crate::config::{load_from_str, ConfigSource, Format};
use crate::env::MapEnv;
use crate::metrics::Metrics;
use crate::token::CacheSettings;
use std::time::Duration;

fn router(toml: &str) -> Router {
    let env = MapEnv::default();
    let loaded = load_from_str(toml, Format::Toml, ConfigSource::Embedded, &env).expect("config");
    let creds = loaded
        .config
        .profiles
        .values()
        .map(|p| {
            let ctx = crate::credentials::CredentialContext {
                entra: crate::credentials::EntraClient::new(reqwest::Client::new()),
                env: std::sync::Arc::new(MapEnv::default()),
                store: crate::store::TokenStore::new(
                    std::env::temp_dir().join("patless-routing-test"),
                ),
                arc: crate::credentials::ArcAgent::default(),
            };
            (
                p.name.clone(),
                crate::credentials::build(p, &ctx).credential,
            )
        })
        .collect();
    let cache = TokenCache::new(
        creds,
        CacheSettings {
            acquire_timeout: Duration::from_secs(1),
            wait_timeout: Duration::from_secs(1),
        },
        Metrics::new(prometheus::Registry::new()),
    );
    Router::new(&loaded.config, &cache).expect("router")
}

#[test]
fn host_routes_serve_known_hosts_only() {
    crate::tls::install_crypto_provider();
    let r = router(crate::config::EMBEDDED_DEFAULT);
    let t = r
        .route("/dev.azure.com/org/_apis/projects", Some("api-version=7.1"))
        .expect("known host");
    assert_eq!(t.target.authority.as_str(), "dev.azure.com");
    assert_eq!(t.target.scheme, http::uri::Scheme::HTTPS);
    assert_eq!(t.path_and_query, "/org/_apis/projects?api-version=7.1");
    assert!(t.target.azure_devops);
    assert_eq!(&*t.target.profile, "auto");
    assert_eq!(t.target.entry.key().scope, hosts::AZURE_DEVOPS_SCOPE);

    let t = r
        .route("/Contoso.VisualStudio.com/_git/repo", None)
        .expect("visualstudio.com");
    assert_eq!(t.target.authority.as_str(), "contoso.visualstudio.com");
    assert_eq!(
        &*t.target.label, "/*.visualstudio.com",
        "labels stay bounded"
    );

    let t = r
        .route("/api-eu.securitycenter.microsoft.com/api/machines", None)
        .expect("MDE");
    assert_eq!(
        t.target.entry.key().scope,
        "https://api.securitycenter.microsoft.com/.default"
    );
    assert!(!t.target.azure_devops);

    for unknown in [
        "/evil.com/x",
        "/127.0.0.1:8080/x",
        "/dev.azure.com.evil.com/x",
        "/localhost/x",
    ] {
        assert!(
            r.route(unknown, None).is_none(),
            "{unknown} must not be proxied"
        );
    }
    // Explicit routes win over host routes.
    let t = r.route("/ado/org", None).expect("explicit");
    assert_eq!(&*t.target.label, "/ado");
    assert_eq!(t.path_and_query, "/org");
}

#[test]
fn proxy_paths_for_upstream_urls() {
    crate::tls::install_crypto_provider();
    let r = router(&format!(
        "{}\n[[routes]]\nprefix = \"/contoso\"\nupstream = \"https://dev.azure.com/contoso\"\nprofile = \"auto\"\n",
        crate::config::EMBEDDED_DEFAULT
    ));
    let ado = r
        .route("/ado/org/_apis/ResourceAreas", None)
        .expect("route")
        .target;
    let at = |url: &str| r.proxy_path_for(&ado, url);
    // The route the client used wins over another that serves the same upstream.
    assert_eq!(
        at("https://dev.azure.com/contoso/").as_deref(),
        Some("/ado/contoso/")
    );
    assert_eq!(at("https://DEV.azure.com/org").as_deref(), Some("/ado/org"));
    assert_eq!(at("https://dev.azure.com").as_deref(), Some("/ado"));
    let contoso = r.route("/contoso/_apis", None).expect("route").target;
    assert_eq!(
        r.proxy_path_for(&contoso, "https://dev.azure.com/Contoso/")
            .as_deref(),
        Some("/contoso/"),
        "base path on whole segments, case-insensitively"
    );
    assert_eq!(
        r.proxy_path_for(&contoso, "https://dev.azure.com/contosox/")
            .as_deref(),
        Some("/ado/contosox/"),
        "not the /contoso route: another explicit route serves it"
    );
    // Known hosts through host routes; anything else is left alone.
    assert_eq!(
        at("https://vsrm.dev.azure.com/org/").as_deref(),
        Some("/vsrm.dev.azure.com/org/")
    );
    assert_eq!(
        at("https://Contoso.VisualStudio.com/").as_deref(),
        Some("/contoso.visualstudio.com/")
    );
    for foreign in [
        "http://dev.azure.com/org/",
        "https://dev.azure.com:8443/org/",
        "https://evil.example/org/",
        "https://vsrm.dev.azure.com.evil.example/org/",
        "/org/",
        "not a url",
    ] {
        assert_eq!(at(foreign), None, "{foreign}");
    }
    let off = router(&format!(
        "[server]\nhost_routes = false\n{}",
        crate::config::EMBEDDED_DEFAULT
    ));
    let ado = off.route("/ado/org", None).expect("route").target;
    assert_eq!(
        off.proxy_path_for(&ado, "https://vsrm.dev.azure.com/org/"),
        None
    );
}

#[test]
fn host_routes_off_means_explicit_only() {
    crate::tls::install_crypto_provider();
    let r = router(&format!(
        "[server]\nhost_routes = false\n{}",
        crate::config::EMBEDDED_DEFAULT
    ));
    assert!(r.route("/dev.azure.com/org", None).is_none());
    assert!(r.route("/mde/api", None).is_some());
}

#[test]
fn a_worker_s_copy_shares_the_token_entries_and_no_memory_a_request_writes() {
    crate::tls::install_crypto_provider();
    let r = router(&format!(
        "{}\n[[routes]]\nprefix = \"/contoso\"\nupstream = \"https://dev.azure.com/contoso\"\nprofile = \"auto\"\n",
        crate::config::EMBEDDED_DEFAULT
    ));
    let w = r.for_worker();
    for (a, b) in [
        (r.route("/contoso/x", None), w.route("/contoso/x", None)),
        (
            r.route("/dev.azure.com/o", None),
            w.route("/dev.azure.com/o", None),
        ),
    ] {
        let (a, b) = (a.expect("route").target, b.expect("route").target);
        assert!(
            Arc::ptr_eq(&a.entry, &b.entry),
            "one token entry for all workers"
        );
        assert!(!Arc::ptr_eq(&a.token_slot, &b.token_slot));
        assert_eq!(a.authority, b.authority);
        assert_eq!(a.host_header, b.host_header);
        assert_eq!(a.label, b.label);
        if a.metrics.is_some() {
            // An explicit route's target is the table's, copied into memory of the worker's own.
            assert_ne!(a.authority.as_str().as_ptr(), b.authority.as_str().as_ptr());
            assert_ne!(
                a.host_header.as_bytes().as_ptr(),
                b.host_header.as_bytes().as_ptr()
            );
            assert!(!Arc::ptr_eq(&a.label, &b.label));
            let (ma, mb) = (a.metrics.as_ref(), b.metrics.as_ref());
            assert!(!Arc::ptr_eq(ma.expect("handles"), mb.expect("handles")));
        }
    }
}
