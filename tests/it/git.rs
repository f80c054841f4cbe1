//! git against Azure DevOps without a PAT (docs/migrate-from-pat.md, "git"): the real git client,
//! the real `git http-backend` behind a stand-in that accepts only valid Entra tokens
//! ([`support::ado_git::AdoGit`]), and patless both as the proxy (clone, fetch, a multi-MiB push,
//! the `insteadOf` URL rewrite) and as git's credential helper (`patless git-credential`, the built
//! binary, with no `serve` running).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;
use tempfile::TempDir;

use crate::support;
use crate::support::ado_git::{git, AdoGit};
use crate::support::entra::{
    FakeEntra, ADO_AUDIENCE, CLIENT_ID, CLIENT_SECRET, DEFENDER_AUDIENCE, TENANT,
};
use crate::support::now_secs;
use crate::support::patless::{config, Patless, ADO, DEFENDER};
use crate::support::sandbox::{run_with_input, Run, Sandbox};
use crate::support::upstream::{test_decoding_key, verify_bearer, Identity};

const STALE_PAT: &str = "stalepat-VALUE-must-not-reach-upstream";
const WRONG_SECRET: &str = "wrong-secret-VALUE-do-not-print";
const INSTALL_GIT: &str = "apt-get install git";

fn have_git() -> bool {
    support::clients::require_tool("git", INSTALL_GIT)
}

/// A git run that must succeed; returns its stdout.
async fn git_ok(cmd: std::process::Command) -> String {
    let desc = format!("{cmd:?}");
    let r = run_with_input(cmd, "").await;
    assert!(r.ok(), "{desc} failed: {r:?}");
    r.stdout
}

/// `n` bytes nobody can compress (xorshift64*, fixed seed).
fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

// ---------------------------------------------------------------------------------------------
// Through the proxy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_fetch_and_push_through_the_proxy_strip_the_stale_pat() {
    if !have_git() {
        return;
    }
    let entra = FakeEntra::start().await;
    let ado = AdoGit::start().await;
    ado.create_repo("org", "project", "repo");
    ado.set_stale_pat(STALE_PAT);
    let p = Patless::start(&config(&entra, &[("/ado", &ado.url(), ADO)], "", "")).await;
    let home = TempDir::new().expect("home");
    let work = home.path().join("repo");
    // What a script that used a PAT sent: patless must drop it and send its own token.
    let stale = format!(
        "http.extraHeader=Authorization: Basic {}",
        STANDARD.encode(format!(":{STALE_PAT}"))
    );
    let url = p.url("/ado/org/project/_git/repo");

    let mut clone = git(home.path());
    clone.args(["-c", &stale, "clone", "-q", &url]).arg(&work);
    git_ok(clone).await;
    assert!(work.join("README.md").is_file());

    // Someone else pushes; fetch brings it.
    let theirs = ado.commit("org", "project", "repo", "their change");
    let mut fetch = git(home.path());
    fetch
        .arg("-C")
        .arg(&work)
        .args(["-c", &stale, "fetch", "-q", "origin"]);
    git_ok(fetch).await;
    let mut rev = git(home.path());
    rev.arg("-C").arg(&work).args(["rev-parse", "origin/main"]);
    assert_eq!(git_ok(rev).await.trim(), theirs);

    // A push bigger than git's 1 MiB post buffer: chunked, streamed through patless.
    let mut merge = git(home.path());
    merge
        .arg("-C")
        .arg(&work)
        .args(["merge", "-q", "--ff-only", "origin/main"]);
    git_ok(merge).await;
    std::fs::write(work.join("blob.bin"), incompressible(8 << 20, 0x5eed)).expect("write blob");
    let mut add = git(home.path());
    add.arg("-C").arg(&work).args(["add", "blob.bin"]);
    git_ok(add).await;
    let mut commit = git(home.path());
    commit
        .arg("-C")
        .arg(&work)
        .args(["commit", "-q", "-m", "8 MiB of noise"]);
    git_ok(commit).await;
    let mut head = git(home.path());
    head.arg("-C").arg(&work).args(["rev-parse", "HEAD"]);
    let ours = git_ok(head).await.trim().to_string();
    let mut push = git(home.path());
    push.arg("-C")
        .arg(&work)
        .args(["-c", &stale, "push", "-q", "origin", "main"]);
    git_ok(push).await;

    assert_eq!(
        ado.rev_parse("org", "project", "repo", "refs/heads/main"),
        Some(ours.clone()),
        "{}",
        ado.summary()
    );
    let mut cat = git(home.path());
    cat.arg("--git-dir")
        .arg(ado.repo_path("org", "project", "repo"))
        .args(["cat-file", "-s", &format!("{ours}:blob.bin")]);
    assert_eq!(git_ok(cat).await.trim(), (8u64 << 20).to_string());
    assert!(!ado.saw_stale_pat(), "the stale PAT reached the upstream");
    assert_eq!(ado.rejected(), 0, "{}", ado.summary());
    // info/refs + upload-pack (clone), the same (fetch), info/refs + receive-pack (push).
    assert!(ado.accepted() >= 6, "{}", ado.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insteadof_rewrites_azure_devops_urls_to_the_proxy() {
    if !have_git() {
        return;
    }
    let entra = FakeEntra::start().await;
    let ado = AdoGit::start().await;
    ado.create_repo("org", "project", "repo");
    let p = Patless::start(&config(&entra, &[("/ado", &ado.url(), ADO)], "", "")).await;
    let home = TempDir::new().expect("home");
    let work = home.path().join("repo");
    let rewrite = format!("url.{}.insteadOf=https://dev.azure.com/", p.url("/ado/"));
    let mut clone = git(home.path());
    clone
        .args(["-c", &rewrite, "clone", "-q"])
        .arg("https://dev.azure.com/org/project/_git/repo")
        .arg(&work);
    git_ok(clone).await;
    let mut head = git(home.path());
    head.arg("-C").arg(&work).args(["rev-parse", "HEAD"]);
    assert_eq!(
        Some(git_ok(head).await.trim().to_string()),
        ado.rev_parse("org", "project", "repo", "main")
    );
    // The clone remembers the URL as written; git rewrites it on every use.
    let mut remote = git(home.path());
    remote
        .arg("-C")
        .arg(&work)
        .args(["remote", "get-url", "origin"]);
    assert_eq!(
        git_ok(remote).await.trim(),
        "https://dev.azure.com/org/project/_git/repo"
    );
    assert_eq!(ado.rejected(), 0, "{}", ado.summary());
    assert!(ado.accepted() >= 2, "{}", ado.summary());
}

// ---------------------------------------------------------------------------------------------
// The credential helper protocol, driving the binary

/// A scratch directory with a config file for the helper.
struct HelperSandbox {
    sb: Sandbox,
    config: PathBuf,
}

impl HelperSandbox {
    fn new(text: &str) -> HelperSandbox {
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.path().join("state")).expect("state dir");
        let config = sb.write("patless.toml", text);
        // It holds a literal client secret: owner-only, as patless asks of such a file.
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod 600");
        HelperSandbox { sb, config }
    }

    fn path(&self) -> &Path {
        self.sb.path()
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        self.command_with(&self.config, args)
    }

    fn command_with(&self, config: &Path, args: &[&str]) -> std::process::Command {
        let config = config.to_str().expect("UTF-8 path");
        let args: Vec<&str> = ["--config", config].iter().chain(args).copied().collect();
        self.sb.command(&args, &[])
    }

    async fn helper(&self, action: &str, input: &str) -> Run {
        run_with_input(self.command(&["git-credential", action]), input).await
    }
}

/// The answer's attributes, checked for shape: `key=value` lines and the closing blank line.
fn attributes(r: &Run) -> Vec<(String, String)> {
    assert!(r.ok(), "{r:?}");
    assert!(r.stdout.ends_with("\n\n"), "no closing blank line: {r:?}");
    r.stdout
        .trim_end()
        .lines()
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Checks a `get` answer and returns the verified token's claims (a token of the profile `bot`,
/// the fake Entra's default app: every route the helper answers here uses it).
fn verified_answer(r: &Run, audience: &str) -> Value {
    let attrs = attributes(r);
    let keys: Vec<&str> = attrs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["username", "password", "password_expiry_utc"],
        "{r:?}"
    );
    assert_eq!(attrs[0].1, "patless");
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {}", attrs[1].1).parse().expect("header"),
    );
    let (_, claims) = verify_bearer(
        &headers,
        &test_decoding_key(),
        audience,
        &Identity::default_app(),
    )
    .unwrap_or_else(|e| panic!("the password is not a valid {audience} token: {e}"));
    let expiry: u64 = attrs[2].1.parse().expect("epoch seconds");
    // The token's expiry, as patless computed it from `expires_in` (a second's rounding apart).
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(
        expiry.abs_diff(exp) <= 2,
        "expiry {expiry}, token exp {exp}"
    );
    assert!(expiry > now_secs(), "already expired");
    assert!(r.stderr.trim().is_empty(), "noise on git's terminal: {r:?}");
    claims
}

fn helper_config(entra: &FakeEntra) -> String {
    config(
        entra,
        &[
            ("/ex", "https://git.example.com", ADO),
            // A longer upstream path on the same host, told apart by its audience.
            ("/team", "https://git.example.com/team", DEFENDER),
        ],
        "default_profile = \"bot\"",
        &format!(
            r#"
[profiles.broken]
kind = "client_secret"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret = "{WRONG_SECRET}"

[[routes]]
prefix = "/broken"
upstream = "https://broken.example.com"
profile = "broken"
scope = "{ADO}"
"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_answers_a_matching_host_with_a_verified_token_and_its_expiry() {
    let entra = FakeEntra::start().await;
    let sb = HelperSandbox::new(&helper_config(&entra));
    let r = sb
        .helper(
            "get",
            "capability[]=authtype\nprotocol=https\nhost=git.example.com\nwwwauth[]=Basic realm=\"x\"\n\n",
        )
        .await;
    verified_answer(&r, ADO_AUDIENCE);
    // The default port written out is the same origin.
    let r = sb
        .helper("get", "protocol=https\nhost=git.example.com:443\n")
        .await;
    verified_answer(&r, ADO_AUDIENCE);
    assert_eq!(entra.token_requests(), 2, "one acquisition per run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_path_selects_the_route_with_the_longest_upstream_path() {
    let entra = FakeEntra::start().await;
    let sb = HelperSandbox::new(&helper_config(&entra));
    let ask = |path: &str| format!("protocol=https\nhost=git.example.com\npath={path}\n\n");
    verified_answer(
        &sb.helper("get", &ask("team/project/_git/repo")).await,
        DEFENDER_AUDIENCE,
    );
    verified_answer(
        &sb.helper("get", &ask("other/project/_git/repo")).await,
        ADO_AUDIENCE,
    );
    // `teamx` is not the segment `team`.
    verified_answer(
        &sb.helper("get", &ask("teamx/p/_git/r")).await,
        ADO_AUDIENCE,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_uses_the_default_profile_for_azure_devops_hosts_without_a_route() {
    let entra = FakeEntra::start().await;
    let sb = HelperSandbox::new(&helper_config(&entra));
    for host in ["dev.azure.com", "contoso.visualstudio.com"] {
        let r = sb
            .helper(
                "get",
                &format!("protocol=https\nhost={host}\npath=org/p/_git/r\n"),
            )
            .await;
        verified_answer(&r, ADO_AUDIENCE);
    }
    // The default profile is what answers: point it at the broken one and the answer fails.
    let broken =
        helper_config(&entra).replace("default_profile = \"bot\"", "default_profile = \"broken\"");
    let sb = HelperSandbox::new(&broken);
    let r = sb
        .helper("get", "protocol=https\nhost=dev.azure.com\n")
        .await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(
        r.stderr.contains("server.default_profile `broken`"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_uses_the_only_profile_when_no_default_profile_is_set() {
    let entra = FakeEntra::start().await;
    // One profile, no route, no `default_profile`: an Azure DevOps host gets that profile's token.
    let only = config(&entra, &[], "", "");
    assert!(!only.contains("default_profile"), "{only}");
    let ask = "protocol=https\nhost=dev.azure.com\npath=org/p/_git/r\n";
    verified_answer(
        &HelperSandbox::new(&only).helper("get", ask).await,
        ADO_AUDIENCE,
    );
    // When it fails, the message says it is the default profile, why, and how to pick another.
    let broken = HelperSandbox::new(&only.replace(CLIENT_SECRET, WRONG_SECRET));
    let r = broken.helper("get", ask).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(
        r.stderr.contains(
            "no token for the default profile `bot`, the only profile defined under [profiles] \
             (set server.default_profile to pick another): "
        ),
        "{r:?}"
    );
    assert!(r.stderr.contains("AADSTS7000215"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_says_nothing_for_hosts_and_protocols_it_does_not_serve() {
    let entra = FakeEntra::start().await;
    let sb = HelperSandbox::new(&helper_config(&entra));
    for input in [
        "protocol=https\nhost=unknown.example.com\n\n",
        "protocol=http\nhost=git.example.com\n\n",
        "protocol=https\nhost=git.example.com:8443\n\n",
        "protocol=ssh\nhost=dev.azure.com\n\n",
        "protocol=http\nhost=dev.azure.com\n\n",
        "protocol=https\nhost=graph.microsoft.com\n\n",
        "",
    ] {
        let r = sb.helper("get", input).await;
        assert_eq!(r.code, Some(0), "{input:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{input:?}: {r:?}");
    }
    assert_eq!(entra.token_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_store_and_erase_accept_and_do_nothing() {
    let entra = FakeEntra::start().await;
    let sb = HelperSandbox::new(&helper_config(&entra));
    let input = "protocol=https\nhost=git.example.com\nusername=patless\npassword=eyJ.some.token\npassword_expiry_utc=1\n\n";
    for action in ["store", "erase"] {
        let r = sb.helper(action, input).await;
        assert_eq!(r.code, Some(0), "{action}: {r:?}");
        assert!(
            r.stdout.is_empty() && r.stderr.is_empty(),
            "{action}: {r:?}"
        );
    }
    // They need no config at all (git runs erase after a failure; it must not fail too).
    let cmd = sb.command_with(
        Path::new("/nonexistent/patless.toml"),
        &["git-credential", "erase"],
    );
    let r = run_with_input(cmd, input).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(entra.token_requests(), 0);
    // An unknown action is a usage error.
    let r = sb.helper("approve", input).await;
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("get"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_exits_1_without_printing_a_secret_when_the_profile_fails() {
    let entra = FakeEntra::start().await;
    let sb = HelperSandbox::new(&helper_config(&entra));
    let r = sb
        .helper("get", "protocol=https\nhost=broken.example.com\n\n")
        .await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(
        r.stderr.contains("route `/broken`, profile `broken`"),
        "{r:?}"
    );
    for secret in [WRONG_SECRET, CLIENT_SECRET] {
        assert!(!r.stderr.contains(secret), "secret on stderr: {r:?}");
    }
    assert!(entra.token_requests() >= 1, "Entra was asked and refused");
}

// ---------------------------------------------------------------------------------------------
// A real git with patless as its credential helper (no proxy)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clones_over_https_with_patless_as_its_credential_helper() {
    if !have_git() {
        return;
    }
    let entra = FakeEntra::start().await;
    let ado = AdoGit::start_tls().await;
    ado.create_repo("org", "project", "repo");
    let sb = HelperSandbox::new(&config(&entra, &[("/ado", &ado.url(), ADO)], "", ""));
    let ca = sb.path().join("ca.pem");
    std::fs::write(&ca, &support::certs::pki().ca.pem).expect("write CA");
    let home = sb.path().join("home");
    let work = sb.path().join("clone");
    let helper = format!(
        "credential.helper=!'{}' --config '{}' git-credential",
        env!("CARGO_BIN_EXE_patless"),
        sb.config.display()
    );
    let url = format!("{}/org/project/_git/repo", ado.url());
    let mut clone = git(&home);
    clone
        .arg("-c")
        .arg(format!("http.sslCAInfo={}", ca.display()))
        // An empty value clears the helpers git would inherit; then only patless.
        .args([
            "-c",
            "credential.helper=",
            "-c",
            &helper,
            "clone",
            "-q",
            &url,
        ])
        .arg(&work);
    let r = run_with_input(clone, "").await;
    assert!(r.ok(), "git clone failed: {r:?}\n{}", ado.summary());
    assert_eq!(
        Some(head(&home, &work).await),
        ado.rev_parse("org", "project", "repo", "main")
    );
    // git asked without credentials first, then with the helper's token (as Basic).
    assert!(ado.challenged() >= 1, "{}", ado.summary());
    assert!(ado.accepted() >= 2, "{}", ado.summary());
    assert_eq!(ado.rejected(), 0, "{}", ado.summary());
    assert!(entra.token_requests() >= 1);
}

async fn head(home: &Path, work: &Path) -> String {
    let mut cmd = git(home);
    cmd.arg("-C").arg(work).args(["rev-parse", "HEAD"]);
    git_ok(cmd).await.trim().to_string()
}
