//! `interactive_browser` for a web (confidential) app: the Defender for Endpoint "Authorization
//! Code Flow" app, with a client secret (or a certificate) and the redirect URI
//! `https://localhost/myapp`, where nothing listens. The real `patless login` binary prints the
//! authorize URL and waits for the redirected address on stdin; the test plays the person: it
//! signs in at the fake Entra's authorize page, takes the address the page redirects to, and
//! pastes it. The fake Entra wants the web app's secret or assertion on the code and refresh
//! grants (AADSTS7000218 without) and refuses one from the public client (AADSTS700025), so a
//! passing test proves what patless sent; the secret, codes and tokens are checked absent from
//! everything patless printed and logged ([`Hygiene`]).
//!
//! `in_process.rs` drives the same flows through the library (a loopback redirect URI, the
//! timeout, an unreadable secret) and checks the fake itself; `config.rs` the web app's keys.

mod config;
mod in_process;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use patless::store::TokenStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};

use crate::support;
use crate::support::capture::Hygiene;
use crate::support::certs::{jwt_claims, pki, verifier_for};
use crate::support::entra::{
    pkce_challenge, AuthorizeStep, FakeEntra, ADO_SCOPE, CLIENT_ID, CLIENT_SECRET,
    PUBLIC_CLIENT_ID, TENANT, USER_UPN, WEB_REDIRECT_URI,
};
use crate::support::sandbox::{Run, Sandbox};
use crate::support::SharedBuf;

/// The environment variable the web app's `client_secret = { env = … }` names.
const SECRET_ENV: &str = "WEB_APP_SECRET";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A config with the one `interactive_browser` profile `web` (`client_id` and the extra `keys`)
/// for the Azure DevOps route, Entra being `entra`, logins stored in `state`.
fn web_toml(entra: &FakeEntra, state: &Path, client_id: &str, keys: &str) -> String {
    format!(
        r#"
[server]
host_routes = false
state_dir = "{state}"

[entra]
authority_host = "{authority}"

[profiles.web]
kind = "interactive_browser"
tenant_id = "{TENANT}"
client_id = "{client_id}"
{keys}

[[routes]]
prefix = "/ado"
upstream = "https://dev.azure.com/contoso"
profile = "web"
scope = "{ADO_SCOPE}"
"#,
        state = state.display(),
        authority = entra.authority(),
    )
}

/// The web app with its secret from the environment and the Web redirect URI.
fn secret_keys() -> String {
    format!("client_secret = {{ env = \"{SECRET_ENV}\" }}\nredirect_uri = \"{WEB_REDIRECT_URI}\"")
}

struct Web {
    entra: FakeEntra,
    sb: Sandbox,
    state: PathBuf,
    config: PathBuf,
}

impl Web {
    /// A fake Entra and a sandbox whose `patless.toml` has the profile `web` of `client_id` with
    /// `keys`.
    async fn new(client_id: &str, keys: &str) -> Web {
        let entra = FakeEntra::start().await;
        let sb = Sandbox::new();
        let state = sb.path().join("login-state");
        let config = sb.write("patless.toml", web_toml(&entra, &state, client_id, keys));
        Web {
            entra,
            sb,
            state,
            config,
        }
    }

    /// Rewrites the profile's keys.
    fn rewrite(&self, client_id: &str, keys: &str) {
        std::fs::write(
            &self.config,
            web_toml(&self.entra, &self.state, client_id, keys),
        )
        .expect("write config");
    }

    /// `patless login --profile web ARGS` running, with the secret in its environment, TRACE
    /// logging (checked for secrets), and `env`.
    fn login(&self, args: &[&str], env: &[(&str, &str)]) -> Login {
        let config = self.config.to_str().expect("UTF-8 path");
        let mut all = vec!["login", "--profile", "web", "--config", config];
        all.extend_from_slice(args);
        let mut env = env.to_vec();
        env.extend([(SECRET_ENV, CLIENT_SECRET), ("PATLESS_LOG", "trace")]);
        let mut cmd = self.sb.command(&all, &env);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Login::spawn(cmd)
    }

    /// `patless ARGS --config patless.toml` to completion, with TRACE logging and, when
    /// `with_secret`, the secret in its environment.
    async fn run(&self, args: &[&str], with_secret: bool) -> Run {
        let config = self.config.to_str().expect("UTF-8 path");
        let mut all = args.to_vec();
        all.extend(["--config", config]);
        let env: &[(&str, &str)] = if with_secret {
            &[(SECRET_ENV, CLIENT_SECRET), ("PATLESS_LOG", "trace")]
        } else {
            &[("PATLESS_LOG", "trace")]
        };
        self.sb.run_async(&all, env).await
    }

    /// The refresh token stored for `web`, if any.
    fn stored(&self) -> Option<String> {
        TokenStore::new(self.state.clone())
            .load("web")
            .expect("store readable")
            .map(|l| l.refresh_token.expose().to_string())
    }
}

/// A running `patless login`: its stdout and stderr collected as they come, its stdin open.
struct Login {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: SharedBuf,
    stderr: SharedBuf,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Login {
    fn spawn(cmd: std::process::Command) -> Login {
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn patless login");
        let (stdout, stderr) = (SharedBuf::default(), SharedBuf::default());
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Login {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The authorize URL it printed (waits up to 20 s for it).
    async fn printed_url(&self) -> url::Url {
        let started = Instant::now();
        loop {
            if let Some(u) = printed_url(&self.stdout.text()) {
                return u;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no authorize URL printed: {}\n{}",
                self.stdout.text(),
                self.stderr.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Types `text` and Enter.
    async fn paste(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{text}\n").as_bytes())
            .await
            .expect("write stdin");
        stdin.flush().await.expect("flush stdin");
    }

    /// Closes stdin and waits (up to 30 s) for the process to end.
    async fn finish(mut self) -> Run {
        drop(self.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("patless login ends")
            .expect("wait");
        for r in self.readers {
            r.await.expect("reader");
        }
        Run {
            code: status.code(),
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
        }
    }
}

/// Copies what `from` says into `into`, as it comes, until its end.
fn collect(
    mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    mut into: SharedBuf,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            std::io::Write::write_all(&mut into, &buf[..n]).expect("buffer");
        }
    })
}

/// The authorize URL printed in `out`.
fn printed_url(out: &str) -> Option<url::Url> {
    out.lines()
        .map(str::trim)
        .find(|l| l.contains("/oauth2/v2.0/authorize?"))
        .map(|l| l.parse().expect("a URL"))
}

/// A URL's query as a map.
fn query(u: &url::Url) -> std::collections::HashMap<String, String> {
    u.query_pairs().into_owned().collect()
}

/// The person signs in at the authorize page: the address it redirects the browser to.
async fn authorize(url: &url::Url) -> String {
    let r = support::http_client()
        .get(url.clone())
        .send()
        .await
        .expect("authorize page");
    assert_eq!(r.status(), 302, "the authorize page redirects");
    r.headers()["location"].to_str().expect("ascii").to_string()
}

/// A `BROWSER` that writes the URL it is given into `marker`.
fn marker_browser(dir: &Path, marker: &Path) -> String {
    let script = dir.join("browser.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > '{}'\n", marker.display()),
    )
    .expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script.display().to_string()
}

/// Registers every code, verifier, token and refresh token the fake handed out or received.
fn forbid_flow_secrets(h: &mut Hygiene, entra: &FakeEntra) {
    h.forbid("client secret", CLIENT_SECRET);
    let grants = entra.grant_requests("authorization_code");
    h.forbid_all(
        "authorization code",
        grants.iter().map(|g| g.form["code"].clone()),
    );
    h.forbid_all(
        "PKCE verifier",
        grants.iter().map(|g| g.form["code_verifier"].clone()),
    );
    h.forbid_all(
        "client assertion",
        entra.client_assertions().iter().cloned(),
    );
    h.forbid_all("refresh token", entra.issued_refresh_tokens());
    h.forbid_all("access token", entra.issued_tokens());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_app_signs_in_with_its_secret_and_refreshes_with_it() {
    let mut h = Hygiene::new("web app login");
    let w = Web::new(CLIENT_ID, &secret_keys()).await;
    let marker = w.sb.path().join("opened");
    let browser = marker_browser(w.sb.path(), &marker);
    let mut login = w.login(&[], &[("BROWSER", &browser)]);
    let url = login.printed_url().await;
    let redirected = authorize(&url).await;
    assert!(
        redirected.starts_with(&format!("{WEB_REDIRECT_URI}?code=")),
        "{redirected}"
    );
    login.paste(&redirected).await;
    let run = login.finish().await;
    assert!(run.ok(), "{run:?}");
    assert!(
        run.stdout.contains(&format!("signed in as {USER_UPN}")),
        "{run:?}"
    );
    assert!(run.stdout.contains("paste it here"), "{run:?}");
    // The paste flow opens a browser too, unless told not to.
    assert_eq!(std::fs::read_to_string(&marker).ok(), Some(url.to_string()));

    // What the authorize page got, and the code exchange: the secret, PKCE, the web redirect URI.
    let q = &w.entra.authorize_requests()[0].query;
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["redirect_uri"], WEB_REDIRECT_URI);
    assert_eq!(q["code_challenge_method"], "S256");
    let grants = w.entra.grant_requests("authorization_code");
    assert_eq!(grants.len(), 1);
    let f = &grants[0].form;
    assert_eq!(f["client_secret"], CLIENT_SECRET);
    assert_eq!(f["redirect_uri"], WEB_REDIRECT_URI);
    assert_eq!(pkce_challenge(&f["code_verifier"]), q["code_challenge"]);
    assert_eq!(
        Some(&f["code"]),
        query(&redirected.parse().expect("URL")).get("code")
    );
    let login_rt = w.stored().expect("stored");
    assert_eq!(Some(login_rt.clone()), w.entra.latest_refresh_token());

    // A refresh (`patless token`) sends the secret with the stored refresh token.
    let token = w.run(&["token", "--profile", "web"], true).await;
    assert!(token.ok(), "{}", token.stderr);
    let json: serde_json::Value = serde_json::from_str(&token.stdout).expect("JSON");
    let access = json["accessToken"].as_str().expect("accessToken");
    assert!(w.entra.issued_tokens().iter().any(|t| t == access));
    let refresh = w.entra.grant_requests("refresh_token");
    assert_eq!(refresh.len(), 1);
    assert_eq!(refresh[0].form["refresh_token"], login_rt);
    assert_eq!(refresh[0].form["client_secret"], CLIENT_SECRET);
    assert_eq!(w.stored(), w.entra.latest_refresh_token(), "rotated");

    // Without the secret the web app's refresh is refused, and the error says what to set.
    w.rewrite(CLIENT_ID, "");
    let refused = w.run(&["token", "--profile", "web"], true).await;
    assert!(!refused.ok(), "{refused:?}");
    assert!(
        refused.stderr.contains("AADSTS7000218"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("client_secret"),
        "{}",
        refused.stderr
    );
    let last = w.entra.grant_requests("refresh_token").pop().expect("sent");
    assert!(!last.form.contains_key("client_secret"));

    forbid_flow_secrets(&mut h, &w.entra);
    h.output("login stdout", run.stdout);
    h.output("login stderr", run.stderr);
    h.output("token stderr", token.stderr);
    h.output("refused token", refused.all());
    h.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pasted_answer_with_another_state_is_refused() {
    let w = Web::new(CLIENT_ID, &secret_keys()).await;
    w.entra.push_authorize_step(AuthorizeStep::WrongState);
    let mut login = w.login(&["--no-browser"], &[]);
    let redirected = authorize(&login.printed_url().await).await;
    login.paste(&redirected).await;
    let run = login.finish().await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("state does not match"), "{run:?}");
    assert!(run.stderr.contains("nothing was stored"), "{run:?}");
    assert!(
        w.entra.grant_requests("authorization_code").is_empty(),
        "not redeemed"
    );
    assert_eq!(w.stored(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_pasted_is_named_with_its_description() {
    let w = Web::new(CLIENT_ID, &secret_keys()).await;
    w.entra.push_authorize_step(AuthorizeStep::Deny);
    let mut login = w.login(&["--no-browser"], &[]);
    let redirected = authorize(&login.printed_url().await).await;
    assert!(redirected.contains("error=access_denied"), "{redirected}");
    login.paste(&redirected).await;
    let run = login.finish().await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("sign-in failed: access_denied"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("AADSTS65004: User declined to consent"),
        "{run:?}"
    );
    assert!(w.entra.grant_requests("authorization_code").is_empty());
    assert_eq!(w.stored(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_another_address_or_no_answer_is_refused_unquoted() {
    let w = Web::new(CLIENT_ID, &secret_keys()).await;
    let garbage = "I signed in, what now? 1.AXoAfake";
    let cases: [(&str, Option<String>, &str); 3] = [
        (
            "garbage",
            Some(garbage.into()),
            "neither the address the browser was sent to",
        ),
        (
            "another address",
            Some("https://evil.example/myapp?code=1.AXoAstolen-code-123&state=x".into()),
            "is not the redirect URI https://localhost/myapp",
        ),
        ("nothing", None, "the input ended before"),
    ];
    for (what, pasted, expected) in cases {
        let mut login = w.login(&["--no-browser"], &[]);
        login.printed_url().await;
        if let Some(p) = &pasted {
            login.paste(p).await;
        }
        let run = login.finish().await;
        assert_eq!(run.code, Some(1), "{what}: {run:?}");
        assert!(run.stderr.contains(expected), "{what}: {run:?}");
        assert!(
            run.stderr.contains("patless login --profile web"),
            "{what}: {run:?}"
        );
        if let Some(p) = &pasted {
            assert!(!run.all().contains(p.as_str()), "{what}: echoed");
            assert!(!run.all().contains("AXoA"), "{what}: echoed");
        }
    }
    assert!(w.entra.grant_requests("authorization_code").is_empty());
    assert_eq!(w.stored(), None);
}

/// A bare code has no state to check; PKCE binds it to this sign-in instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_alone_is_accepted_because_pkce_binds_it() {
    let w = Web::new(CLIENT_ID, &secret_keys()).await;
    let code_of = |redirected: &str| {
        query(&redirected.parse().expect("URL"))
            .remove("code")
            .expect("a code")
    };
    // A code bound to another sign-in's challenge (a stale or injected one) does not redeem.
    w.entra.push_authorize_step(AuthorizeStep::SwapChallenge);
    let mut login = w.login(&["--no-browser"], &[]);
    let foreign = code_of(&authorize(&login.printed_url().await).await);
    login.paste(&foreign).await;
    let run = login.finish().await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("AADSTS50148"), "{run:?}");
    assert_eq!(w.stored(), None);

    let mut login = w.login(&["--no-browser"], &[]);
    let code = code_of(&authorize(&login.printed_url().await).await);
    login.paste(&format!("  {code}  ")).await;
    let run = login.finish().await;
    assert!(run.ok(), "{run:?}");
    let grants = w.entra.grant_requests("authorization_code");
    assert_eq!(grants.last().expect("redeemed").form["code"], code);
    assert_eq!(w.stored(), w.entra.latest_refresh_token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_app_with_a_certificate_sends_assertions() {
    let mut h = Hygiene::new("web app login (certificate)");
    let pki = pki();
    let cert_keys = |dir: &Path| {
        let pem = support::write_file(
            dir,
            "web.pem",
            format!("{}{}", pki.leaf.pem, pki.leaf.key_pem),
        );
        format!(
            "certificate = \"{}\"\nredirect_uri = \"{WEB_REDIRECT_URI}\"",
            pem.display()
        )
    };
    let w = Web::new(CLIENT_ID, "").await;
    w.rewrite(CLIENT_ID, &cert_keys(w.sb.path()));
    w.entra
        .set_assertion_verifier(verifier_for(&pki.leaf.der, CLIENT_ID));
    let mut login = w.login(&["--no-browser"], &[]);
    let redirected = authorize(&login.printed_url().await).await;
    login.paste(&redirected).await;
    let run = login.finish().await;
    assert!(run.ok(), "{run:?}");
    let f = &w.entra.grant_requests("authorization_code")[0].form;
    assert_eq!(f["client_assertion_type"], JWT_BEARER);
    assert!(!f.contains_key("client_secret"));
    assert_eq!(
        jwt_claims(&f["client_assertion"])["aud"],
        w.entra.token_url(),
        "signed for the token URL"
    );
    assert_eq!(w.stored(), w.entra.latest_refresh_token());

    let token = w.run(&["token", "--profile", "web"], false).await;
    assert!(token.ok(), "{}", token.stderr);
    let r = &w.entra.grant_requests("refresh_token")[0].form;
    assert_eq!(r["client_assertion_type"], JWT_BEARER);
    assert_ne!(
        r["client_assertion"], f["client_assertion"],
        "a fresh assertion"
    );

    // A certificate Entra does not know is named in the refusal.
    w.entra
        .set_assertion_verifier(verifier_for(&pki.other.der, CLIENT_ID));
    let refused = w.run(&["token", "--profile", "web"], false).await;
    assert!(
        refused.stderr.contains("AADSTS700027"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("thumbprint"), "{}", refused.stderr);

    forbid_flow_secrets(&mut h, &w.entra);
    h.forbid_pem_key("private key", &pki.leaf.key_pem);
    h.output("login", run.all());
    h.output("token stderr", token.stderr);
    h.output("refused token", refused.all());
    h.finish();
}

/// The public client must not send a secret: Entra's AADSTS700025, with what to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_app_given_a_secret_is_told_to_drop_it() {
    let w = Web::new(
        PUBLIC_CLIENT_ID,
        &format!("client_secret = \"{CLIENT_SECRET}\""),
    )
    .await;
    let login = w.login(&["--no-browser"], &[]);
    let redirected = authorize(&login.printed_url().await).await;
    assert!(
        redirected.starts_with("http://localhost:"),
        "the loopback flow: {redirected}"
    );
    let page = support::http_client()
        .get(&redirected)
        .send()
        .await
        .expect("the listener answers")
        .text()
        .await
        .expect("page");
    let run = login.finish().await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(page.contains("Sign-in failed"), "{page}");
    assert!(run.stderr.contains("AADSTS700025"), "{run:?}");
    assert!(
        run.stderr
            .contains("public client, which must not send a secret"),
        "{run:?}"
    );
    assert!(run.stderr.contains("remove client_secret"), "{run:?}");
    assert_eq!(
        w.entra.grant_requests("authorization_code")[0].form["client_secret"],
        CLIENT_SECRET
    );
    assert_eq!(w.stored(), None);
    assert!(!run.all().contains(CLIENT_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_browser_prints_the_url_and_starts_no_browser() {
    let w = Web::new(PUBLIC_CLIENT_ID, "").await;
    let marker = w.sb.path().join("opened");
    let browser = marker_browser(w.sb.path(), &marker);
    let login = w.login(&["--no-browser"], &[("BROWSER", &browser)]);
    let redirected = authorize(&login.printed_url().await).await;
    let page = support::http_client()
        .get(&redirected)
        .send()
        .await
        .expect("the listener answers")
        .text()
        .await
        .expect("page");
    let run = login.finish().await;
    assert!(run.ok(), "{run:?}");
    assert!(page.contains("Signed in"), "{page}");
    assert!(
        run.stdout.contains("Not opening a browser (--no-browser)"),
        "{run:?}"
    );
    assert!(!marker.exists(), "BROWSER was run");
    assert_eq!(w.stored(), w.entra.latest_refresh_token());
}
