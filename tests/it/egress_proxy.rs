//! The egress proxy end to end (`[server] egress_proxy` / `no_proxy`, `HTTPS_PROXY` & co. from the
//! injected environment; see `src/egress.rs`).
//!
//! Loopback never goes through the proxy, so the destinations that must be tunnelled have names
//! nothing resolves: `login.test` (the fake Entra) and `upstream.test` (the fake upstream). Only
//! the fake `CONNECT` proxy (`support/egress.rs`) knows them: it maps `login.test:443` and
//! `upstream.test:443` to local TLS fronts, which hold a certificate from the test CA (given to
//! patless as `[entra] ca_file`) and relay the decrypted bytes to the plain-HTTP fakes. So a 200
//! proves the request went through the tunnel, that TLS inside it was verified against the test
//! CA for the right name, and (the fake upstream checks every token) that a token issued by the
//! fake Entra — fetched through the same proxy — arrived.
//!
//! A destination that is meant to connect directly either is loopback, or is the IP `0.0.0.0`
//! (which Linux connects to the local host, so a direct connection succeeds), or has a name
//! nothing resolves (a direct attempt fails in DNS); in every case the proxy must see no
//! `CONNECT` for it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use patless::env::MapEnv;
use serde_json::Value;

use crate::support;
use crate::support::egress::{pki, write_ca, Answer, FakeConnectProxy, TlsFront};
use crate::support::entra::{FakeEntra, DEFENDER_AUDIENCE};
use crate::support::patless::{config, load, Patless, DEFENDER};
use crate::support::sandbox::Sandbox;
use crate::support::upstream::FakeUpstream;

// ---------------------------------------------------------------------------------------------
// The world: fakes, TLS fronts, the proxy, the CA file
// ---------------------------------------------------------------------------------------------

/// Where the profile gets its tokens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EntraAt {
    /// `https://login.test`: only reachable through the proxy.
    Tls,
    /// `http://127.0.0.1:PORT`: loopback, always direct.
    Loopback,
}

struct World {
    entra: FakeEntra,
    up: FakeUpstream,
    entra_tls: TlsFront,
    up_tls: TlsFront,
    rogue_tls: TlsFront,
    proxy: FakeConnectProxy,
    dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        support::capture::init();
        support::install_crypto_provider();
        let entra = FakeEntra::start().await;
        let up = FakeUpstream::start(DEFENDER_AUDIENCE).await;
        let entra_tls = TlsFront::start(entra.addr(), pki().trusted.clone()).await;
        let up_tls = TlsFront::start(up.addr(), pki().trusted.clone()).await;
        let rogue_tls = TlsFront::start(up.addr(), pki().untrusted.clone()).await;
        let routes = HashMap::from([
            ("login.test:443".to_string(), entra_tls.addr),
            ("upstream.test:443".to_string(), up_tls.addr),
            ("intercepted.test:443".to_string(), rogue_tls.addr),
            (format!("0.0.0.0:{}", up_tls.port()), up_tls.addr),
        ]);
        let proxy = FakeConnectProxy::start(routes).await;
        let dir = tempfile::TempDir::new().expect("tempdir");
        write_ca(dir.path());
        World {
            entra,
            up,
            entra_tls,
            up_tls,
            rogue_tls,
            proxy,
            dir,
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The standard test config (profile `bot`), every route with the Defender scope (the fake
    /// upstream's audience), Entra where asked, the test CA trusted.
    fn config(&self, entra_at: EntraAt, routes: &[(&str, &str)], server_extra: &str) -> String {
        let routes: Vec<(&str, &str, &str)> =
            routes.iter().map(|(p, u)| (*p, *u, DEFENDER)).collect();
        let toml = config(&self.entra, &routes, server_extra, "");
        let authority = match entra_at {
            EntraAt::Tls => "https://login.test".to_string(),
            EntraAt::Loopback => self.entra.authority(),
        };
        let from = format!("authority_host = \"{}\"", self.entra.authority());
        assert!(
            toml.contains(&from),
            "unexpected test config shape:\n{toml}"
        );
        toml.replacen(
            &from,
            &format!(
                "authority_host = \"{authority}\"\nca_file = \"{}\"\nrequest_timeout = \"2s\"",
                self.ca_file().display()
            ),
            1,
        )
    }
}

/// `egress_proxy = "<url>"` for `server_extra`.
fn egress(url: &str) -> String {
    format!("egress_proxy = \"{url}\"")
}

struct Answered {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    body: Value,
}

async fn get(p: &Patless, path: &str) -> Answered {
    let resp = support::http_client()
        .get(p.url(path))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("request to patless");
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answered {
        status,
        content_type,
        retry_after,
        body,
    }
}

/// `base64(user:password)`, as `Proxy-Authorization: Basic` carries it.
fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// `patless config` as printed (the effective configuration).
fn printed_config(toml: &str, env: &MapEnv) -> String {
    let loaded = load(toml, env);
    toml::to_string_pretty(&loaded.config.effective(&loaded.raw)).expect("TOML")
}

/// `egress_proxy = …` line of a printed config.
fn egress_line(printed: &str) -> Option<String> {
    printed
        .lines()
        .find(|l| l.trim_start().starts_with("egress_proxy"))
        .map(|l| l.trim().to_string())
}

/// The real binary's `patless config` for `toml` (written to a file), in a scrubbed environment.
async fn patless_config_command(toml: &str) -> String {
    let sb = Sandbox::new();
    let path = sb.write("patless.toml", toml);
    let run = sb
        .run_async(
            &["config", "--config", path.to_str().expect("UTF-8 path")],
            &[],
        )
        .await;
    assert!(run.ok(), "patless config failed: {}", run.stderr);
    run.all()
}

fn assert_token_from_entra(w: &World, path: &str) {
    let rec =
        w.up.requests()
            .into_iter()
            .find(|r| r.path_and_query == path)
            .unwrap_or_else(|| panic!("the upstream never saw {path}"));
    assert!(
        rec.token_valid,
        "upstream refused the token: {:?}",
        rec.token_error
    );
    let auth = rec.headers["authorization"].to_str().expect("ascii");
    assert!(
        w.entra
            .issued_tokens()
            .iter()
            .any(|t| auth == format!("Bearer {t}")),
        "the bearer token is not one the fake Entra issued"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. The configured proxy carries Entra and the upstream, TLS verified end to end
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_and_https_upstream_tunnel_through_the_configured_proxy_with_tls_end_to_end() {
    let w = World::start().await;
    let toml = w.config(
        EntraAt::Tls,
        &[
            ("/def", "https://upstream.test"),
            ("/mitm", "https://intercepted.test"),
        ],
        &egress(&w.proxy.url()),
    );
    let p = Patless::start(&toml).await;

    let r = get(&p, "/def/api/incidents?top=1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["path"], "/api/incidents?top=1");
    assert_eq!(r.body["headers"]["host"], "upstream.test");
    assert_token_from_entra(&w, "/api/incidents?top=1");

    // Both legs went through the proxy as CONNECT tunnels (the names resolve nowhere else), and
    // nothing was sent to it in the clear.
    let seen = w.proxy.requests();
    assert!(
        seen.iter().all(|r| r.method == "CONNECT"),
        "only CONNECT may reach the proxy: {seen:?}"
    );
    let targets = w.proxy.targets();
    assert!(
        targets.contains(&"login.test:443".to_string()),
        "{targets:?}"
    );
    assert!(
        targets.contains(&"upstream.test:443".to_string()),
        "{targets:?}"
    );
    assert!(
        seen.iter()
            .all(|r| r.header("proxy-authorization").is_none()),
        "no credentials in the URL, none on the CONNECT: {seen:?}"
    );
    assert_eq!(w.entra.token_requests(), 1);
    // TLS ran inside the tunnels, to the real names.
    assert_eq!(w.entra_tls.sni(), ["login.test"]);
    assert_eq!(w.up_tls.sni(), ["upstream.test"]);

    // A tunnel that ends at a certificate the test CA did not sign (a proxy intercepting TLS) is
    // refused: TLS is verified end to end, not merely encrypted.
    let before = w.up.requests().len();
    let r = get(&p, "/mitm/api/secrets").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.body["error"], "upstream_unreachable");
    let message = r.body["message"].as_str().unwrap_or_default();
    assert!(
        message.to_ascii_lowercase().contains("certificate"),
        "{message}"
    );
    assert!(w
        .proxy
        .targets()
        .contains(&"intercepted.test:443".to_string()));
    assert_eq!(
        w.up.requests().len(),
        before,
        "nothing may be sent over an unverified TLS connection"
    );
    assert!(
        w.rogue_tls.sni().is_empty(),
        "the rogue handshake must not complete"
    );
    p.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Proxy credentials: on CONNECT only, never shown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_credentials_go_on_connect_only_and_are_never_shown() {
    const PASSWORD: &str = "p@ss-Egress-71z";
    const PASSWORD_ENCODED: &str = "p%40ss-Egress-71z";
    let w = World::start().await;
    let expected = basic("user", PASSWORD);
    // The proxy tunnels only with exactly these credentials (decoded from the URL).
    w.proxy.require_auth(&expected);
    let url = format!("http://user:{PASSWORD_ENCODED}@{}", w.proxy.authority());
    let toml = w.config(
        EntraAt::Tls,
        &[("/def", "https://upstream.test")],
        &egress(&url),
    );
    let p = Patless::start(&toml).await;

    let resp = support::http_client()
        .get(p.url("/def/api/machines"))
        .header("Proxy-Authorization", basic("client", "client-side-value"))
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let body = resp.text().await.expect("body");
    assert_eq!(status, 200, "{body}");
    assert_token_from_entra(&w, "/api/machines");

    let seen = w.proxy.requests();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert!(targets.contains(&"login.test:443"), "{targets:?}");
    assert!(targets.contains(&"upstream.test:443"), "{targets:?}");
    for r in &seen {
        assert_eq!(
            r.header("proxy-authorization"),
            Some(expected.as_str()),
            "every CONNECT (Entra's and the upstream's) carries the URL's credentials: {r:?}"
        );
    }
    // Inside the tunnels, neither the upstream nor Entra sees any Proxy-Authorization (not the
    // egress proxy's, not the client's).
    for rec in w.up.requests() {
        assert!(
            rec.headers.get("proxy-authorization").is_none(),
            "{:?}",
            rec.headers
        );
    }
    for rec in w.entra.requests() {
        assert!(
            rec.headers.get("proxy-authorization").is_none(),
            "{:?}",
            rec.headers
        );
    }

    // `patless config` shows the proxy with its password redacted, in process and as the binary
    // prints it.
    let printed = printed_config(&toml, &MapEnv::default());
    assert_eq!(
        egress_line(&printed).as_deref(),
        Some(
            format!(
                "egress_proxy = \"http://user:<redacted>@{}\"",
                w.proxy.authority()
            )
            .as_str()
        ),
        "{printed}"
    );
    let command = patless_config_command(&toml).await;
    assert!(
        command.contains(&format!("http://user:<redacted>@{}", w.proxy.authority())),
        "{command}"
    );
    let loaded = load(&toml, &MapEnv::default());
    let debug = format!("{loaded:?}");
    let raw_redacted = toml::to_string(&loaded.raw.redacted()).expect("TOML");

    p.stop().await;
    let logs = support::capture::logs();
    assert!(
        logs.contains(&w.proxy.authority()),
        "the log capture must show the proxy's host:port (is capture working?)"
    );
    let b64 = expected.trim_start_matches("Basic ");
    for (what, out) in [
        ("the logs", &logs),
        ("patless config", &printed),
        ("the patless config command", &command),
        ("Debug of the config", &debug),
        ("the redacted raw config", &raw_redacted),
    ] {
        for secret in [PASSWORD, PASSWORD_ENCODED, b64] {
            assert!(
                !out.contains(secret),
                "the proxy password leaked into {what}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. no_proxy and loopback connect directly
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_matches_and_loopback_destinations_connect_directly() {
    let w = World::start().await;
    let plain = w.up.url();
    let loopback_tls = format!("https://127.0.0.1:{}", w.up_tls.port());
    let localhost_tls = format!("https://localhost:{}", w.up_tls.port());
    let by_ip = format!("https://0.0.0.0:{}", w.up_tls.port());
    let routes = [
        ("/plain", plain.as_str()),
        ("/loopback", loopback_tls.as_str()),
        ("/localhost", localhost_tls.as_str()),
        ("/ip", by_ip.as_str()),
        ("/corp", "https://api.corp.test"),
        ("/proxied", "https://upstream.test"),
    ];
    let server = format!(
        "{}\nno_proxy = [\"0.0.0.0\", \".corp.test\"]\nresponse_header_timeout = \"1500ms\"",
        egress(&w.proxy.url())
    );
    // Entra on loopback: direct, whatever the proxy settings.
    let p = Patless::start(&w.config(EntraAt::Loopback, &routes, &server)).await;

    for path in ["/plain", "/loopback", "/localhost", "/ip", "/proxied"] {
        let r = get(&p, &format!("{path}/api/x")).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    assert_eq!(w.up.accepted(), 5);
    assert_eq!(w.up.rejected(), 0);
    // `.corp.test` is excluded: patless resolves the name itself, which fails (or times out),
    // and the proxy is never asked.
    let r = get(&p, "/corp/api/x").await;
    assert!(matches!(r.status, 502 | 504), "{}: {}", r.status, r.body);
    let message = r.body["message"].as_str().unwrap_or_default();
    assert!(!message.contains("egress proxy"), "{message}");

    // Only the one destination that is neither loopback nor excluded went through the proxy;
    // Entra (loopback http), the loopback upstreams (http and https), 0.0.0.0 and api.corp.test
    // did not.
    assert_eq!(w.proxy.targets(), ["upstream.test:443"]);
    // TLS to each: no SNI for IP addresses (127.0.0.1, 0.0.0.0), the name otherwise.
    assert_eq!(w.up_tls.sni(), ["", "localhost", "", "upstream.test"]);
    p.stop().await;

    // The same routes without no_proxy: 0.0.0.0 and api.corp.test now go through the proxy.
    w.proxy.clear();
    let server = format!(
        "{}\nresponse_header_timeout = \"1500ms\"",
        egress(&w.proxy.url())
    );
    let p = Patless::start(&w.config(EntraAt::Loopback, &routes, &server)).await;
    let r = get(&p, "/ip/api/y").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(&p, "/corp/api/y").await;
    assert_eq!(r.status, 502, "{}", r.body);
    let r = get(&p, "/loopback/api/y").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let targets = w.proxy.targets();
    assert_eq!(
        targets,
        [
            format!("0.0.0.0:{}", w.up_tls.port()),
            "api.corp.test:443".to_string()
        ],
        "loopback still direct, the rest through the proxy"
    );
    p.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. HTTPS_PROXY & co. from the injected environment; egress_proxy = "" turns it off
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_proxy_is_used_unless_the_key_turns_it_off() {
    let w = World::start().await;
    let routes = [("/def", "https://upstream.test")];
    let timeout = "response_header_timeout = \"1500ms\"";

    // Each variable on its own, the key absent.
    for var in ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        w.proxy.clear();
        let toml = w.config(EntraAt::Tls, &routes, timeout);
        let env = MapEnv::new([(var, w.proxy.url())]);
        let p = Patless::start_with_env(&toml, env.clone()).await;
        let r = get(&p, "/def/api/alerts").await;
        assert_eq!(r.status, 200, "{var}: {}", r.body);
        let targets = w.proxy.targets();
        assert!(
            targets.contains(&"login.test:443".to_string())
                && targets.contains(&"upstream.test:443".to_string()),
            "{var}: {targets:?}"
        );
        assert_eq!(
            egress_line(&printed_config(&toml, &env)).as_deref(),
            Some(format!("egress_proxy = \"{}\"", w.proxy.url()).as_str()),
            "{var}: patless config shows the proxy in effect"
        );
        p.stop().await;
    }
    assert_token_from_entra(&w, "/api/alerts");

    // HTTP_PROXY is for http:// destinations, which never use a proxy.
    w.proxy.clear();
    let toml = w.config(EntraAt::Loopback, &routes, timeout);
    let p = Patless::start_with_env(&toml, MapEnv::new([("HTTP_PROXY", w.proxy.url())])).await;
    let r = get(&p, "/def/api/alerts").await;
    assert!(matches!(r.status, 502 | 504), "{}: {}", r.status, r.body);
    assert!(w.proxy.targets().is_empty(), "{:?}", w.proxy.targets());
    p.stop().await;

    // NO_PROXY from the environment goes with HTTPS_PROXY: Entra still tunnels, the excluded
    // upstream is tried directly (and does not resolve).
    w.proxy.clear();
    let toml = w.config(EntraAt::Tls, &routes, timeout);
    let env = MapEnv::new([
        ("HTTPS_PROXY", w.proxy.url()),
        ("NO_PROXY", "upstream.test".to_string()),
    ]);
    let p = Patless::start_with_env(&toml, env).await;
    let r = get(&p, "/def/api/alerts").await;
    assert!(matches!(r.status, 502 | 504), "{}: {}", r.status, r.body);
    assert_eq!(w.proxy.targets(), ["login.test:443"]);
    p.stop().await;

    // egress_proxy = "" wins over HTTPS_PROXY, for the upstream client …
    w.proxy.clear();
    let env = MapEnv::new([("HTTPS_PROXY", w.proxy.url())]);
    let off = format!("{}\n{timeout}", egress(""));
    let toml = w.config(EntraAt::Loopback, &routes, &off);
    assert_eq!(
        egress_line(&printed_config(&toml, &env)).as_deref(),
        Some("egress_proxy = \"\""),
        "patless config shows the proxy off"
    );
    let p = Patless::start_with_env(&toml, env.clone()).await;
    let r = get(&p, "/def/api/alerts").await;
    assert!(matches!(r.status, 502 | 504), "{}: {}", r.status, r.body);
    assert_eq!(
        r.body["error"],
        if r.status == 502 {
            "upstream_unreachable"
        } else {
            "upstream_timeout"
        }
    );
    p.stop().await;
    // … and for Entra.
    let toml = w.config(EntraAt::Tls, &routes, &off);
    let p = Patless::start_with_env(&toml, env).await;
    let r = get(&p, "/def/api/alerts").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"], "token_unavailable");
    assert!(
        w.proxy.targets().is_empty(),
        "egress_proxy = \"\" must bypass HTTPS_PROXY: {:?}",
        w.proxy.targets()
    );
    p.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. A proxy that refuses the tunnel: clean JSON errors naming the proxy, never its password
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tunnel_is_a_clean_error_naming_the_proxy_but_not_its_password() {
    const PASSWORD: &str = "refused-Pw-93q";
    let w = World::start().await;
    let routes = [("/def", "https://upstream.test")];
    let with_password = format!("http://egress-user:{PASSWORD}@{}", w.proxy.authority());
    let proxy = w.proxy.authority();
    let mut answers = Vec::new();

    // 403 to the upstream's CONNECT.
    w.proxy.set_answer(Answer::Refuse(403));
    let p = Patless::start(&w.config(EntraAt::Loopback, &routes, &egress(&with_password))).await;
    let r = get(&p, "/def/api/a").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.content_type, "application/json");
    assert_eq!(r.body["error"], "upstream_unreachable");
    assert_eq!(r.body["route"], "/def");
    let message = r.body["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains(&proxy), "{message}");
    assert!(message.contains("upstream.test:443"), "{message}");
    assert!(message.contains("refused"), "{message}");
    answers.push(r.body.to_string());
    p.stop().await;

    // 407: the credentials are wrong (or missing).
    w.proxy.set_answer(Answer::Refuse(407));
    let p = Patless::start(&w.config(EntraAt::Loopback, &routes, &egress(&with_password))).await;
    let r = get(&p, "/def/api/b").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.content_type, "application/json");
    assert_eq!(r.body["error"], "upstream_unreachable");
    let message = r.body["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains(&proxy), "{message}");
    assert!(message.contains("407"), "{message}");
    answers.push(r.body.to_string());
    p.stop().await;

    // Entra's CONNECT refused: 503 token_unavailable with Retry-After, Entra never reached.
    w.proxy.set_answer(Answer::Refuse(403));
    let entra_before = w.entra.token_requests();
    let p = Patless::start(&w.config(EntraAt::Tls, &routes, &egress(&with_password))).await;
    let r = get(&p, "/def/api/c").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.content_type, "application/json");
    assert_eq!(r.body["error"], "token_unavailable");
    assert!(r.retry_after.is_some());
    assert_eq!(w.entra.token_requests(), entra_before);
    let message = r.body["message"].as_str().unwrap_or_default().to_string();
    // It names the token URL and the proxy, and says the proxy refused the tunnel.
    assert!(message.contains("https://login.test/"), "{message}");
    assert!(
        message.contains(&format!("through the egress proxy {proxy}")),
        "{message}"
    );
    assert!(message.contains("refused the tunnel"), "{message}");
    answers.push(r.body.to_string());
    p.stop().await;

    // The proxy is down: the answer says it is the proxy that cannot be reached.
    let closed = support::ClosedPort::new();
    let closed_addr = closed.addr();
    let down = format!("http://egress-user:{PASSWORD}@{closed_addr}");
    let p = Patless::start(&w.config(EntraAt::Loopback, &routes, &egress(&down))).await;
    let r = get(&p, "/def/api/d").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.body["error"], "upstream_unreachable");
    let message = r.body["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains(&format!("egress proxy {closed_addr}")),
        "{message}"
    );
    answers.push(r.body.to_string());
    p.stop().await;

    assert_eq!(w.up.requests().len(), 0, "no request got through");
    let logs = support::capture::logs();
    for (i, out) in answers.iter().chain([&logs]).enumerate() {
        assert!(
            !out.contains(PASSWORD),
            "the proxy password leaked into output #{i}"
        );
        assert!(!out.contains(basic("egress-user", PASSWORD).trim_start_matches("Basic ")));
    }
}
