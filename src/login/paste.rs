//! The paste side of `interactive_browser`: for a redirect URI that patless cannot listen on (a
//! web app's `https://localhost/myapp`, any `https://` address, a host other than loopback),
//! `patless login` prints the authorize URL (and opens a browser, unless `--no-browser`), and the
//! person pastes the address the browser was sent to after signing in — the page itself fails to
//! load, as nothing answers there. patless reads it from stdin ([`PasteInput`]), checks that it
//! is the redirect URI's, judges it as the loopback flow judges a redirect (`state` first, then
//! `error`, then `code`) and redeems the code with the PKCE verifier.
//!
//! The code alone may be pasted too. It carries no `state`, and is accepted all the same: PKCE
//! binds a code to the challenge of the sign-in that asked for it, so a code from any other
//! sign-in (a stale one, or one an attacker obtained for their own account) fails to redeem
//! (AADSTS50148) and nothing is stored. Pasted text is never echoed: it holds a code.

use std::collections::HashMap;
use std::io;

use tokio::sync::mpsc;
use url::Url;

use super::authorize::{authorize_url, judge, new_state, pkce_pair, redeem};
use super::browser::{announce_browser, human};
use super::{LoginError, LoginOptions, Target};
use crate::env::Environment;

/// Where the paste flow reads what the person pastes, one line at a time.
#[derive(Debug)]
pub struct PasteInput {
    source: Source,
}

#[derive(Debug)]
enum Source {
    /// The process's stdin, read on a thread started at the first line wanted.
    Stdin(Option<mpsc::UnboundedReceiver<io::Result<String>>>),
    /// Lines sent by the program (tests, a program embedding the login).
    Lines(mpsc::UnboundedReceiver<String>),
}

impl PasteInput {
    /// The process's stdin. It is read on a thread of its own, started when the flow first needs
    /// a line: a blocked read of a terminal cannot be cancelled, and that thread does not keep
    /// the process from exiting once the login is over.
    pub fn stdin() -> PasteInput {
        PasteInput {
            source: Source::Stdin(None),
        }
    }

    /// Lines sent on the returned sender; dropping it is the end of the input.
    pub fn channel() -> (mpsc::UnboundedSender<String>, PasteInput) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            tx,
            PasteInput {
                source: Source::Lines(rx),
            },
        )
    }

    /// The next line; `None` at the end of the input.
    async fn next_line(&mut self) -> Option<io::Result<String>> {
        match &mut self.source {
            Source::Stdin(lines) => lines.get_or_insert_with(read_stdin).recv().await,
            Source::Lines(lines) => lines.recv().await.map(Ok),
        }
    }
}

/// Reads stdin line by line on a thread of its own until the end, an error, or nobody listens.
fn read_stdin() -> mpsc::UnboundedReceiver<io::Result<String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    // Without the thread, `tx` is dropped with the closure and the input reads as ended.
    let _ = std::thread::Builder::new()
        .name("patless-stdin".into())
        .spawn(move || loop {
            let mut line = String::new();
            match io::stdin().read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if tx.send(Ok(line)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        });
    rx
}

/// Runs the flow for the redirect URI `redirect_uri`; returns the summary.
pub(super) async fn run(
    target: &Target<'_>,
    redirect_uri: &str,
    env: &dyn Environment,
    out: &mut (dyn io::Write + Send),
    options: &LoginOptions,
    input: &mut PasteInput,
) -> Result<String, LoginError> {
    let (verifier, challenge) = pkce_pair();
    let state = new_state();
    let authorize = authorize_url(target, redirect_uri, &challenge, &state)?;
    let wait = options.browser_timeout;
    writeln!(
        out,
        "To sign in, open this page in a browser, on this machine or any other:\n\n  {authorize}\n"
    )
    .map_err(LoginError::Output)?;
    announce_browser(out, env, &authorize, options)?;
    writeln!(
        out,
        "\nAfter you sign in, Entra sends the browser to {redirect_uri}, where nothing answers: the \
         page does not load, and that is expected. Copy the whole address from the browser's \
         address bar (or only its code) and paste it here, then press Enter (patless waits {}):",
        human(wait)
    )
    .and_then(|()| out.flush())
    .map_err(LoginError::Output)?;

    let line = tokio::time::timeout(wait, first_line(input, target.profile))
        .await
        .map_err(|_| LoginError::Timeout {
            profile: target.profile.to_string(),
            secs: wait.as_secs(),
        })??;
    let code = match pasted(&line, redirect_uri, target.profile)? {
        Pasted::Answer(params) => judge(&params, &state, target.profile)?,
        Pasted::Code(code) => code,
    };
    redeem(target, &code, redirect_uri, &verifier).await
}

/// The first line that is not blank.
async fn first_line(input: &mut PasteInput, profile: &str) -> Result<String, LoginError> {
    loop {
        match input.next_line().await {
            None => return Err(LoginError::InputClosed(profile.to_string())),
            Some(Err(e)) => return Err(LoginError::Input(e)),
            Some(Ok(line)) if line.trim().is_empty() => continue,
            Some(Ok(line)) => return Ok(line),
        }
    }
}

/// What was pasted.
#[derive(Debug, PartialEq, Eq)]
enum Pasted {
    /// The redirected address's query (or the query alone): judged like a redirect.
    Answer(HashMap<String, String>),
    /// The code alone.
    Code(String),
}

/// Reads a pasted line: the redirected address (which must be the redirect URI's, with a `code`
/// or an `error`), its query alone, or a bare code. Errors never quote the text.
fn pasted(line: &str, redirect_uri: &str, profile: &str) -> Result<Pasted, LoginError> {
    let text = line
        .trim()
        .trim_matches(|c| matches!(c, '"' | '\'' | '<' | '>'));
    let query = match Url::parse(text) {
        Ok(url) => {
            if !same_endpoint(&url, redirect_uri) {
                return Err(LoginError::NotTheRedirect {
                    profile: profile.to_string(),
                    redirect_uri: redirect_uri.to_string(),
                });
            }
            Some(url.query().unwrap_or_default().to_string())
        }
        // `localhost/myapp?code=…` (the address without its scheme), or `code=…&state=…`.
        Err(_) if text.contains('=') => Some(
            text.split_once('?')
                .map_or(text, |(_, q)| q)
                .split('#')
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        Err(_) => None,
    };
    match query {
        Some(q) => {
            let params: HashMap<String, String> = url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect();
            if params.contains_key("code") || params.contains_key("error") {
                Ok(Pasted::Answer(params))
            } else {
                Err(LoginError::NoCode)
            }
        }
        None if looks_like_code(text) => Ok(Pasted::Code(text.to_string())),
        None => Err(LoginError::Unreadable {
            profile: profile.to_string(),
            redirect_uri: redirect_uri.to_string(),
        }),
    }
}

/// Same scheme, host, port and path (a trailing `/` aside) as the redirect URI.
fn same_endpoint(url: &Url, redirect_uri: &str) -> bool {
    let Ok(expected) = Url::parse(redirect_uri) else {
        return false;
    };
    url.scheme() == expected.scheme()
        && url.host_str().map(str::to_ascii_lowercase)
            == expected.host_str().map(str::to_ascii_lowercase)
        && url.port_or_known_default() == expected.port_or_known_default()
        && url.path().trim_end_matches('/') == expected.path().trim_end_matches('/')
}

/// An authorization code's shape: Entra's are long runs of base64url characters and dots
/// (`1.AXoA…`).
fn looks_like_code(text: &str) -> bool {
    text.len() >= 16
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~' | '*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "https://localhost/myapp";
    const CODE: &str = "1.AXoAfake-code.0123456789abcdef";

    fn answer(pairs: &[(&str, &str)]) -> Pasted {
        Pasted::Answer(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_redirected_address_its_query_or_the_code_alone() {
        let full = format!("{URI}?code={CODE}&state=s1&session_state=x");
        let expected = answer(&[("code", CODE), ("state", "s1"), ("session_state", "x")]);
        for line in [
            full.clone(),
            format!("  {full}\n"),
            format!("\"{full}\""),
            format!("<{full}>"),
            full.replace("https://localhost/myapp", "https://LOCALHOST:443/myapp/"),
            full.replace("https://", ""),
            format!("code={CODE}&state=s1&session_state=x"),
            format!("?code={CODE}&state=s1&session_state=x"),
        ] {
            assert_eq!(pasted(&line, URI, "p").expect(&line), expected, "{line}");
        }
        assert_eq!(
            pasted(&format!(" {CODE}\r\n"), URI, "p").expect("code"),
            Pasted::Code(CODE.into())
        );
        let denied =
            format!("{URI}?error=access_denied&error_description=AADSTS65004%3A+No&state=s1");
        assert_eq!(
            pasted(&denied, URI, "p").expect("error"),
            answer(&[
                ("error", "access_denied"),
                ("error_description", "AADSTS65004: No"),
                ("state", "s1")
            ])
        );
    }

    #[test]
    fn anything_else_is_refused_without_being_quoted() {
        for (line, want) in [
            (
                format!("https://evil.example/myapp?code={CODE}&state=s"),
                "not",
            ),
            (format!("http://localhost/myapp?code={CODE}&state=s"), "not"),
            (
                format!("https://localhost/other?code={CODE}&state=s"),
                "not",
            ),
            (format!("https://localhost:8443/myapp?code={CODE}"), "not"),
            (URI.to_string(), "no authorization code"),
            (format!("{URI}?state=s"), "no authorization code"),
            (format!("hello there {CODE}"), "neither"),
            ("short".to_string(), "neither"),
            ("<html>".to_string(), "neither"),
        ] {
            let e = pasted(&line, URI, "web").expect_err(&line).to_string();
            assert!(e.contains(want), "{line}: {e}");
            assert!(!e.contains(CODE), "{e}");
        }
    }
}
