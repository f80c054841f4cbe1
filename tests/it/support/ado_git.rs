//! An Azure DevOps git stand-in: real `git http-backend`, run as CGI per request, behind a check
//! that accepts only valid Entra tokens for Azure DevOps of the expected identity (verified with
//! [`super::upstream::verify_bearer`], audience [`ADO_AUDIENCE`], the fake Entra's default app
//! unless [`AdoGit::expect`] says otherwise).
//!
//! `/{org}/{project}/_git/{repo}/…` (Azure DevOps' URL shape) serves the bare repository
//! `{org}/{project}/{repo}.git` under a temporary project root. The request body streams into the
//! backend's stdin, its stdout (after the CGI `Status:` and headers) streams back as the body.
//!
//! - [`AdoGit::start`], plain HTTP, as behind patless: requires `Authorization: Bearer <jwt>`.
//! - [`AdoGit::start_tls`], HTTPS with a certificate of the test CA ([`super::certs::pki`]), as git
//!   sees Azure DevOps with a credential helper: also accepts `Authorization: Basic` whose
//!   password is such a JWT (how git presents a helper's answer), and answers a request without
//!   credentials with `401` and `WWW-Authenticate: Basic realm="patless-test"`, so git asks its
//!   helpers.
//!
//! It counts what it accepted, challenged and rejected, and records whether any request carried
//! the stale PAT a test names ([`AdoGit::set_stale_pat`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use jsonwebtoken::DecodingKey;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::entra::ADO_AUDIENCE;
use super::upstream::{test_decoding_key, verify_bearer, Identity};
use super::{full, lock, AbortOnDrop, Body};

/// The realm of the TLS mode's Basic challenge.
pub const REALM: &str = "patless-test";
/// `GIT_HTTP_MAX_REQUEST_BUFFER` for the backend: room for the multi-MiB pushes of the tests.
const MAX_REQUEST_BUFFER: &str = "100M";

/// A `git` command isolated from the user's and the system's configuration: `HOME` is `home`,
/// no system config, no prompts, a fixed author, no inherited `GIT_*` or proxy variables that
/// would point elsewhere.
pub fn git(home: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("git");
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
        "GIT_CONFIG",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
        "XDG_CONFIG_HOME",
        "GIT_TRACE",
        "GIT_CURL_VERBOSE",
        // The CA file of the tests comes from `http.sslCAInfo`, which these would override.
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "GIT_SSL_NO_VERIFY",
        "GIT_HTTP_PROXY_AUTHMETHOD",
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "patless test")
        .env("GIT_AUTHOR_EMAIL", "test@patless.invalid")
        .env("GIT_COMMITTER_NAME", "patless test")
        .env("GIT_COMMITTER_EMAIL", "test@patless.invalid")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion and panics, with its output, unless it succeeds; returns its stdout.
pub fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run git");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Default)]
struct State {
    accepted: AtomicUsize,
    challenged: AtomicUsize,
    rejected: AtomicUsize,
    reasons: Mutex<Vec<String>>,
    stale_pat: Mutex<Option<String>>,
    saw_stale_pat: AtomicBool,
    backend_errors: Mutex<Vec<String>>,
}

struct Shared {
    root: PathBuf,
    tls: bool,
    key: DecodingKey,
    identity: Mutex<Identity>,
    state: State,
}

/// The running stand-in; stops when dropped.
pub struct AdoGit {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    /// Bare repositories, and the HOME of the git commands that make them.
    dir: TempDir,
    _server: AbortOnDrop,
}

impl AdoGit {
    /// Plain HTTP: accepts `Authorization: Bearer <valid Azure DevOps token>` only.
    pub async fn start() -> AdoGit {
        Self::launch(false).await
    }

    /// HTTPS with [`super::certs::Pki::server`]'s certificate: Bearer or Basic with a valid token
    /// as password; no credentials → `401` Basic challenge.
    pub async fn start_tls() -> AdoGit {
        Self::launch(true).await
    }

    async fn launch(tls: bool) -> AdoGit {
        let dir = TempDir::new().expect("tempdir");
        let root = dir.path().join("repos");
        std::fs::create_dir_all(&root).expect("repos dir");
        std::fs::create_dir_all(dir.path().join("home")).expect("home dir");
        let shared = Arc::new(Shared {
            root,
            tls,
            key: test_decoding_key(),
            identity: Mutex::new(Identity::default_app()),
            state: State::default(),
        });
        let listener = super::bind_loopback().await;
        let addr = listener.local_addr().expect("addr");
        let handler = {
            let shared = shared.clone();
            move |req| handle(shared.clone(), req)
        };
        let server = if tls {
            serve_tls(listener, handler)
        } else {
            super::serve(listener, handler)
        };
        AdoGit {
            addr,
            shared,
            dir,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The bare repository behind `/{org}/{project}/_git/{repo}`.
    pub fn repo_path(&self, org: &str, project: &str, repo: &str) -> PathBuf {
        self.shared
            .root
            .join(org)
            .join(project)
            .join(format!("{repo}.git"))
    }

    /// Creates that bare repository with one commit on `main` (a README); returns its path.
    /// Blocking: a few quick local git commands.
    pub fn create_repo(&self, org: &str, project: &str, repo: &str) -> PathBuf {
        let bare = self.repo_path(org, project, repo);
        let home = self.dir.path().join("home");
        run_ok(
            git(&home)
                .args(["init", "-q", "--bare", "-b", "main"])
                .arg(&bare),
        );
        let work = self.seed_dir(org, project, repo);
        run_ok(git(&home).args(["init", "-q", "-b", "main"]).arg(&work));
        self.commit(org, project, repo, "initial commit");
        bare
    }

    /// A commit on the bare repository's `main`, made beside the HTTP path (another user's
    /// push): appends `message` to the README. Returns the commit id. Blocking.
    pub fn commit(&self, org: &str, project: &str, repo: &str, message: &str) -> String {
        let home = self.dir.path().join("home");
        let work = self.seed_dir(org, project, repo);
        let readme = work.join("README.md");
        let mut text = std::fs::read_to_string(&readme).unwrap_or_else(|_| format!("# {repo}\n"));
        text.push_str(&format!("\n{message}\n"));
        std::fs::write(&readme, text).expect("write README");
        run_ok(git(&home).arg("-C").arg(&work).args(["add", "README.md"]));
        run_ok(
            git(&home)
                .arg("-C")
                .arg(&work)
                .args(["commit", "-q", "-m", message]),
        );
        run_ok(
            git(&home)
                .arg("-C")
                .arg(&work)
                .args(["push", "-q"])
                .arg(self.repo_path(org, project, repo))
                .arg("main"),
        );
        run_ok(git(&home).arg("-C").arg(&work).args(["rev-parse", "HEAD"]))
            .trim()
            .to_string()
    }

    fn seed_dir(&self, org: &str, project: &str, repo: &str) -> PathBuf {
        self.dir.path().join(format!("seed-{org}-{project}-{repo}"))
    }

    /// `git rev-parse --verify <rev>` in the bare repository; `None` if it does not resolve.
    pub fn rev_parse(&self, org: &str, project: &str, repo: &str, rev: &str) -> Option<String> {
        let out = git(&self.dir.path().join("home"))
            .arg("--git-dir")
            .arg(self.repo_path(org, project, repo))
            .args(["rev-parse", "--verify", "--quiet", rev])
            .output()
            .expect("run git rev-parse");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Accepts only tokens of `identity` from now on (default: the fake Entra's default app).
    pub fn expect(&self, identity: Identity) {
        *lock(&self.shared.identity) = identity;
    }

    /// Watch every request for `pat` (raw, or as a Basic password).
    pub fn set_stale_pat(&self, pat: &str) {
        *lock(&self.shared.state.stale_pat) = Some(pat.to_string());
    }

    /// Whether a request carried the stale PAT.
    pub fn saw_stale_pat(&self) -> bool {
        self.shared.state.saw_stale_pat.load(Ordering::SeqCst)
    }

    /// Requests with a valid token, handed to `git http-backend`.
    pub fn accepted(&self) -> usize {
        self.shared.state.accepted.load(Ordering::SeqCst)
    }

    /// Requests without credentials, answered with the Basic challenge (TLS mode).
    pub fn challenged(&self) -> usize {
        self.shared.state.challenged.load(Ordering::SeqCst)
    }

    /// Requests with credentials that are not a valid token (or, plain HTTP, none at all).
    pub fn rejected(&self) -> usize {
        self.shared.state.rejected.load(Ordering::SeqCst)
    }

    /// Why requests were rejected (token errors, never the token).
    pub fn reasons(&self) -> Vec<String> {
        lock(&self.shared.state.reasons).clone()
    }

    /// What `git http-backend` wrote to stderr.
    pub fn backend_errors(&self) -> Vec<String> {
        lock(&self.shared.state.backend_errors).clone()
    }

    /// A one-line summary for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "accepted {}, challenged {}, rejected {} {:?}, backend stderr {:?}",
            self.accepted(),
            self.challenged(),
            self.rejected(),
            self.reasons(),
            self.backend_errors()
        )
    }
}

/// Serves HTTPS on `listener` with the test CA's server certificate.
fn serve_tls<F, Fut>(listener: tokio::net::TcpListener, handler: F) -> AbortOnDrop
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let pki = super::certs::pki();
    let server = pki.server();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![
                CertificateDer::from(server.der.clone()),
                CertificateDer::from(pki.ca.der.clone()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key_der.clone())),
        )
        .expect("server TLS config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    super::accept_each(listener, move |tcp| {
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        async move {
            if let Ok(stream) = acceptor.accept(tcp).await {
                super::serve_connection(stream, handler).await;
            }
        }
    })
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full(text.to_string()))
        .expect("response")
}

/// Whether any header carries `pat`, as is or inside a Basic credential.
fn carries(headers: &HeaderMap, pat: &str) -> bool {
    headers.values().any(|v| {
        let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
        if text.contains(pat) {
            return true;
        }
        let basic = text
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .and_then(|(_, b64)| STANDARD.decode(b64.trim()).ok());
        basic.is_some_and(|raw| String::from_utf8_lossy(&raw).contains(pat))
    })
}

/// The Entra token a request presents: Bearer, or (TLS mode) the password of a Basic credential.
/// `Ok(None)`: no credentials at all.
fn check_token(shared: &Shared, headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| "Authorization header is not ASCII".to_string())?;
    let as_bearer = match text.split_once(' ') {
        Some((scheme, b64)) if shared.tls && scheme.eq_ignore_ascii_case("basic") => {
            let raw = STANDARD
                .decode(b64.trim())
                .map_err(|_| "Basic credential is not base64".to_string())?;
            let raw = String::from_utf8(raw).map_err(|_| "Basic credential is not UTF-8")?;
            let (_, password) = raw
                .split_once(':')
                .ok_or("Basic credential has no password")?;
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {password}"))
                    .map_err(|_| "Basic password is not a token".to_string())?,
            );
            h
        }
        _ => headers.clone(),
    };
    let identity = lock(&shared.identity).clone();
    let (_, claims) = verify_bearer(&as_bearer, &shared.key, ADO_AUDIENCE, &identity)?;
    let who = ["oid", "appid", "azp", "sub"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(|v| v.as_str()))
        .unwrap_or("entra")
        .to_string();
    Ok(Some(who))
}

/// `/{org}/{project}/_git/{repo}/{rest}` → `/{org}/{project}/{repo}.git/{rest}` (PATH_INFO).
fn path_info(path: &str) -> Option<String> {
    let mut parts = path.trim_start_matches('/').splitn(5, '/');
    let (org, project, git, repo) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next().unwrap_or("");
    let ok = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('%');
    if git != "_git" || !ok(org) || !ok(project) || !ok(repo) || rest.contains("..") {
        return None;
    }
    Some(format!("/{org}/{project}/{repo}.git/{rest}"))
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let state = &shared.state;
    if let Some(pat) = lock(&state.stale_pat).clone() {
        if carries(req.headers(), &pat) {
            state.saw_stale_pat.store(true, Ordering::SeqCst);
        }
    }
    let user = match check_token(&shared, req.headers()) {
        Ok(Some(user)) => user,
        Ok(None) if shared.tls => {
            state.challenged.fetch_add(1, Ordering::SeqCst);
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(header::WWW_AUTHENTICATE, format!("Basic realm=\"{REALM}\""))
                .body(full("credentials required"))
                .expect("response");
        }
        Ok(None) => {
            state.rejected.fetch_add(1, Ordering::SeqCst);
            lock(&state.reasons).push("missing Authorization header".into());
            return plain(StatusCode::UNAUTHORIZED, "a bearer token is required");
        }
        Err(reason) => {
            state.rejected.fetch_add(1, Ordering::SeqCst);
            lock(&state.reasons).push(reason);
            let mut resp = plain(StatusCode::UNAUTHORIZED, "invalid credentials");
            if shared.tls {
                let challenge = HeaderValue::from_str(&format!("Basic realm=\"{REALM}\""))
                    .expect("header value");
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, challenge);
            }
            return resp;
        }
    };
    let Some(path_info) = path_info(req.uri().path()) else {
        return plain(StatusCode::NOT_FOUND, "not an Azure DevOps git URL");
    };
    state.accepted.fetch_add(1, Ordering::SeqCst);
    cgi(shared.clone(), req, path_info, user).await
}

/// Runs `git http-backend` for one request.
async fn cgi(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    path_info: String,
    user: String,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &shared.root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_HTTP_MAX_REQUEST_BUFFER", MAX_REQUEST_BUFFER)
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", &path_info)
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REMOTE_USER", &user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in &parts.headers {
        let Ok(value) = value.to_str() else {
            continue;
        };
        match *name {
            header::CONTENT_TYPE => {
                cmd.env("CONTENT_TYPE", value);
            }
            header::CONTENT_LENGTH => {
                cmd.env("CONTENT_LENGTH", value);
            }
            header::AUTHORIZATION | header::PROXY_AUTHORIZATION | header::HOST => {}
            _ => {
                let var = format!(
                    "HTTP_{}",
                    name.as_str().to_ascii_uppercase().replace('-', "_")
                );
                cmd.env(var, value);
            }
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot run git http-backend: {e}"),
            )
        }
    };
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no pipes to git http-backend",
        );
    };
    // The request body streams in while the answer streams out (git may answer before it read
    // everything, and a large push must not sit in memory here).
    tokio::spawn(async move {
        let mut body = body;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                if stdin.write_all(data).await.is_err() {
                    return;
                }
            }
        }
        let _ = stdin.shutdown().await;
    });
    let errors = shared.clone();
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        let _ = child.wait().await;
        if !text.trim().is_empty() {
            lock(&errors.state.backend_errors).push(text.trim().to_string());
        }
    });
    let mut out = BufReader::new(stdout);
    let mut builder = Response::builder();
    let mut status = StatusCode::OK;
    loop {
        let mut line = String::new();
        match out.read_line(&mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    &format!("git http-backend output: {e}"),
                )
            }
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|code| code.parse::<u16>().ok())
                .and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
        } else {
            builder = builder.header(name, value);
        }
    }
    let stream = futures_util::stream::unfold(out, |mut out| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match out.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(buf))),
                    out,
                ))
            }
        }
    });
    builder
        .status(status)
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("CGI response")
}
