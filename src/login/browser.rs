//! The loopback side of `interactive_browser` (RFC 8252): listen on the loopback address of the
//! redirect URI, open the authorize URL in a browser (`BROWSER`, else `xdg-open`, else the person
//! opens the printed URL; never with `--no-browser`), take the one redirect that comes back, close
//! the listener, judge it and redeem its code (`authorize.rs`), and answer the browser with a
//! small page that says how it ended. Opening the browser serves the paste flow (`paste.rs`) too.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::authorize::{authorize_url, judge, new_state, pkce_pair, redeem, Redirect};
use super::{LoginError, LoginOptions, Target};
use crate::env::{non_empty, Environment};

/// How long one connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest request head accepted.
const HEAD_LIMIT: usize = 16 * 1024;

/// Runs the flow on a listener at `ip:port` (a free port when `None`), for the redirect URI
/// `uri` (given the port, [`Redirect::uri_on`]); returns the summary.
pub(super) async fn run(
    target: &Target<'_>,
    (ip, port, uri): (IpAddr, Option<u16>, &str),
    env: &dyn Environment,
    out: &mut (dyn io::Write + Send),
    options: &LoginOptions,
) -> Result<String, LoginError> {
    let (listener, port) = listen(ip, port).await?;
    let redirect_uri = Redirect::uri_on(uri, port);
    let (verifier, challenge) = pkce_pair();
    let state = new_state();
    let authorize = authorize_url(target, &redirect_uri, &challenge, &state)?;
    let wait = options.browser_timeout;
    writeln!(
        out,
        "To sign in, open this page in a browser on this machine (patless waits {}):\n\n  {authorize}\n",
        human(wait)
    )
    .map_err(LoginError::Output)?;
    announce_browser(out, env, &authorize, options)?;

    let (mut stream, params) = tokio::time::timeout(wait, receive_redirect(listener))
        .await
        .map_err(|_| LoginError::Timeout {
            profile: target.profile.to_string(),
            secs: wait.as_secs(),
        })?;
    // The listener is closed now (dropped by `receive_redirect`). Judge the answer and redeem the
    // code before telling the browser, so its page says how the sign-in really ended.
    let outcome = match judge(&params, &state, target.profile) {
        Ok(code) => redeem(target, &code, &redirect_uri, &verifier).await,
        Err(e) => Err(e),
    };
    let page = match &outcome {
        Ok(summary) => page(
            "200 OK",
            "Signed in",
            &format!("patless {summary}. You can close this window and return to the terminal."),
        ),
        Err(e) => page("400 Bad Request", "Sign-in failed", &e.to_string()),
    };
    let _ = stream.write_all(page.as_bytes()).await;
    let _ = stream.shutdown().await;
    outcome
}

/// Listens on `ip:port` (any free port when `None`); returns the listener and its port.
async fn listen(ip: IpAddr, port: Option<u16>) -> Result<(TcpListener, u16), LoginError> {
    let addr = SocketAddr::new(ip, port.unwrap_or(0));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| LoginError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let port = listener
        .local_addr()
        .map_err(|source| LoginError::Listen {
            addr: addr.to_string(),
            source,
        })?
        .port();
    Ok((listener, port))
}

/// Opens the printed authorize URL in a browser, unless `--no-browser` said not to, and says
/// what it did.
pub(super) fn announce_browser(
    out: &mut (dyn io::Write + Send),
    env: &dyn Environment,
    authorize: &url::Url,
    options: &LoginOptions,
) -> Result<(), LoginError> {
    let said = if !options.open_browser {
        writeln!(
            out,
            "Not opening a browser (--no-browser): open the URL above yourself."
        )
    } else {
        match open_browser(env, authorize.as_str()) {
            Some(how) => writeln!(out, "Opened the sign-in page with `{how}`."),
            None => writeln!(
                out,
                "No browser to open it with (set BROWSER, or install xdg-open): open the URL above yourself."
            ),
        }
    };
    said.and_then(|()| out.flush()).map_err(LoginError::Output)
}

/// Waits for the one request that carries the sign-in answer (`code`, `error` or `state` in the
/// query); other requests (a favicon, a browser's idle pre-connection) get a 404 and do not end
/// the wait. Returns its connection and query; the listener is closed on return.
async fn receive_redirect(listener: TcpListener) -> (TcpStream, HashMap<String, String>) {
    let mut reading: JoinSet<Option<(TcpStream, String)>> = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    reading.spawn(async move {
                        tokio::time::timeout(HEAD_TIMEOUT, read_target(stream)).await.ok().flatten()
                    });
                }
            }
            Some(done) = reading.join_next(), if !reading.is_empty() => {
                let Ok(Some((mut stream, target))) = done else { continue };
                let params: HashMap<String, String> = url::Url::parse("http://localhost/")
                    .and_then(|base| base.join(&target))
                    .map(|u| u.query_pairs().into_owned().collect())
                    .unwrap_or_default();
                if ["code", "error", "state"].iter().any(|k| params.contains_key(*k)) {
                    return (stream, params);
                }
                let _ = stream
                    .write_all(page("404 Not Found", "Waiting", "patless is waiting for the sign-in redirect.").as_bytes())
                    .await;
                let _ = stream.shutdown().await;
            }
        }
    }
}

/// Reads a request head; returns the request target of a GET.
async fn read_target(mut stream: TcpStream) -> Option<(TcpStream, String)> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > HEAD_LIMIT {
            return None;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    (method == "GET" && target.starts_with('/')).then(|| (stream, target.to_string()))
}

/// A complete HTTP/1.1 answer with a small HTML page.
fn page(status: &str, title: &str, text: &str) -> String {
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>patless: {title}</title></head>\
         <body style=\"font-family:sans-serif;margin:3em\"><h1>{title}</h1><p>{}</p></body></html>\n",
        html_escape(text)
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn html_escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

pub(super) fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s % 60 == 0 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// Opens `url` the way the `BROWSER` convention says: a `:`-separated list of commands, tried
/// in order; `%s` in a command is replaced by the URL (`%%` is a `%`), else the URL is its last
/// argument. Without `BROWSER`: `xdg-open` (`open` on macOS) if on `PATH`. Programs are looked up
/// on the injected environment's `PATH` and run with that environment. Returns the command used.
fn open_browser(env: &dyn Environment, url: &str) -> Option<String> {
    let mut candidates: Vec<String> = non_empty(env, "BROWSER")
        .map(|b| {
            b.split(':')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    candidates.push(
        if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        }
        .to_string(),
    );
    for entry in candidates {
        let mut words = entry.split_whitespace();
        let Some(program) = words.next() else {
            continue;
        };
        let Some(path) = which(program, env) else {
            continue;
        };
        let mut args: Vec<String> = words.map(str::to_string).collect();
        if args.iter().any(|a| a.contains("%s")) {
            for a in &mut args {
                *a = a
                    .replace("%%", "\u{0}")
                    .replace("%s", url)
                    .replace('\u{0}', "%");
            }
        } else {
            args.push(url.to_string());
        }
        let spawned = Command::new(&path)
            .args(&args)
            .env_clear()
            .envs(env.vars())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(mut child) => {
                // Reap it whenever it exits; a browser may outlive the login.
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                return Some(entry);
            }
            Err(e) => {
                tracing::debug!(browser = %entry, "cannot start the browser: {e}");
            }
        }
    }
    None
}

/// `program` as a path when it has a `/`, else the first executable of that name on `PATH`.
fn which(program: &str, env: &dyn Environment) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    let path = env.var("PATH")?;
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_entra_sent() {
        let p = page("400 Bad Request", "Sign-in failed", "<script>x</script>");
        assert!(p.contains("&lt;script&gt;"));
        assert!(p.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    }
}
