//! Running a developer CLI (`az`, `azd`) for a token, shared by `azure_cli` and
//! `azure_developer_cli`.
//!
//! The program is looked up on the `PATH` of the injected environment (absolute entries only) and
//! run directly, without a shell, with exactly that environment, stdin closed, stdout and stderr
//! captured, in its own process group (no terminal signals, no prompts on the terminal) and from
//! `/` (the Azure SDKs do the same, so files in the working directory cannot change the outcome).
//! It gets a bounded time and is killed when late, or when the acquisition is dropped.
//!
//! The rest reads what a CLI said: the AADSTS code in its stderr, and lines safe to quote — a
//! quoted line is cut where anything that looks like a token starts. Stdout (which holds the
//! token) is never quoted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{CredentialError, ErrorClass};
use crate::env::Environment;

/// How long a CLI may take: the Azure SDKs' value.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// More stdout than a token answer ever needs; the rest is drained and dropped.
const STDOUT_CAP: usize = 1 << 20;
/// Enough stderr to find the error in.
const STDERR_CAP: usize = 64 << 10;
/// The longest stderr excerpt put in a message.
const QUOTE_CAP: usize = 300;

/// "Text file busy" (the same number on Linux and the BSDs).
const ETXTBSY: i32 = 26;

/// AADSTS codes after which a person must sign in again.
const INTERACTION_CODES: [u32; 5] = [50076, 53003, 700082, 70008, 50173];

/// How a CLI ended.
pub(crate) struct Finished {
    /// The exit code (`None` when a signal ended it).
    pub code: Option<i32>,
    /// Stdout, capped. Holds the token: never log or quote it.
    pub stdout: Vec<u8>,
    /// Stderr, capped, lossily decoded.
    pub stderr: String,
}

/// Why a CLI gave no answer.
pub(crate) enum RunError {
    /// The program vanished between the `PATH` lookup and the start.
    NotFound,
    /// No answer in time; the process was killed.
    Timeout,
    /// It could not be started or waited for.
    Io(std::io::Error),
}

/// The first executable `name` in the `PATH` of `env`. Relative and empty entries are skipped:
/// they would depend on the working directory.
pub(crate) fn find_program(env: &dyn Environment, name: &str) -> Option<PathBuf> {
    let path = env.var("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .flat_map(|dir| candidates(&dir, name, env))
        .find(|file| is_executable(file))
}

#[cfg(not(windows))]
fn candidates(dir: &Path, name: &str, _env: &dyn Environment) -> Vec<PathBuf> {
    vec![dir.join(name)]
}

#[cfg(windows)]
fn candidates(dir: &Path, name: &str, env: &dyn Environment) -> Vec<PathBuf> {
    // `az` is `az.cmd` on Windows, `azd` is `azd.exe`.
    let exts = env
        .var("PATHEXT")
        .unwrap_or_else(|| ".COM;.EXE;.BAT;.CMD".to_string());
    exts.split(';')
        .filter(|e| !e.is_empty())
        .map(|e| dir.join(format!("{name}{}", e.to_ascii_lowercase())))
        .collect()
}

#[cfg(unix)]
fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(file: &Path) -> bool {
    std::fs::metadata(file).is_ok_and(|m| m.is_file())
}

/// Runs `program` with `args` and the environment `env` (nothing else of patless's own), within
/// `timeout`.
pub(crate) async fn run(
    program: &Path,
    args: &[&str],
    env: &dyn Environment,
    timeout: Duration,
) -> Result<Finished, RunError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.vars())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    {
        cmd.current_dir("/").process_group(0);
    }
    #[cfg(windows)]
    {
        const CREATE_NO_WINDOW: u32 = 0x0800_0000;
        cmd.creation_flags(CREATE_NO_WINDOW);
    }
    let mut attempt = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(child) => break child,
            // ETXTBSY: the program is being written (an upgrade in progress, say); it passes.
            Err(e) if cfg!(unix) && e.raw_os_error() == Some(ETXTBSY) && attempt < 3 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RunError::NotFound),
            Err(e) => return Err(RunError::Io(e)),
        }
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let finished = tokio::time::timeout(timeout, async {
        tokio::join!(
            read_capped(stdout, STDOUT_CAP),
            read_capped(stderr, STDERR_CAP),
            child.wait()
        )
    })
    .await;
    match finished {
        Ok((stdout, stderr, Ok(status))) => Ok(Finished {
            code: status.code(),
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }),
        Ok((_, _, Err(e))) => Err(RunError::Io(e)),
        Err(_) => {
            // Kill and reap. A grandchild that the CLI's launcher script did not `exec` keeps
            // running until it next writes to the closed pipes.
            let _ = child.kill().await;
            Err(RunError::Timeout)
        }
    }
}

/// Reads all of `reader`, keeping the first `cap` bytes (the rest is drained so the child never
/// blocks on a full pipe).
async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut reader) = reader else {
        return kept;
    };
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// What patless needs to explain a CLI's failures.
pub(crate) struct Cli<'a> {
    /// `az`, `azd`.
    pub program: &'static str,
    /// `Azure CLI`, `Azure Developer CLI`.
    pub product: &'static str,
    /// Where to install it.
    pub install: &'static str,
    /// The sign-in command to suggest, tenant included (`az login --tenant T`).
    pub login: &'a str,
}

impl Cli<'_> {
    /// Runs the program, found on the `PATH` of `env`, with `args` within `timeout`: what it
    /// printed, whatever its exit code.
    pub(crate) async fn fetch(
        &self,
        args: &[&str],
        env: &dyn Environment,
        timeout: Duration,
    ) -> Result<Finished, CredentialError> {
        let Some(path) = find_program(env, self.program) else {
            return Err(self.not_installed(&format!("no `{}` on PATH", self.program)));
        };
        tracing::debug!(program = %path.display(), ?args, "asking the {} for a token", self.product);
        run(&path, args, env, timeout)
            .await
            .map_err(|e| self.run_error(&path, e, timeout))
    }

    /// The failures every CLI shares: it could not start, or Entra refused it (an AADSTS line).
    pub(crate) fn common_failure(&self, out: &Finished, scope: &str) -> Option<CredentialError> {
        if says_not_installed(out) {
            return Some(self.not_installed(&format!(
                "`{}` could not start: {}",
                self.program,
                first_line(&out.stderr)
                    .map(quotable)
                    .unwrap_or_else(|| "exit 127".to_string())
            )));
        }
        find_aadsts(&out.stderr).map(|(code, line)| self.aadsts(code, line, scope))
    }

    /// Not on `PATH` (or its launcher could not find its interpreter).
    pub(crate) fn not_installed(&self, detail: &str) -> CredentialError {
        CredentialError::new(
            ErrorClass::NotConfigured,
            format!(
                "{} is not installed ({detail}): install it ({}) and run `{}`",
                self.product, self.install, self.login
            ),
        )
    }

    /// Installed, but nobody is signed in.
    pub(crate) fn not_logged_in(&self, stderr: &str) -> CredentialError {
        let mut message = format!("{} is not logged in: run `{}`", self.product, self.login);
        if let Some(line) = first_line(stderr) {
            message.push_str(&format!(" ({} said: {})", self.program, quotable(line)));
        }
        CredentialError::new(ErrorClass::NotConfigured, message)
    }

    /// The run itself failed.
    pub(crate) fn run_error(
        &self,
        program: &Path,
        err: RunError,
        timeout: Duration,
    ) -> CredentialError {
        match err {
            RunError::NotFound => self.not_installed(&format!("{} vanished", program.display())),
            RunError::Timeout => CredentialError::new(
                ErrorClass::Timeout,
                format!(
                    "{} did not answer within {}; it was stopped",
                    self.program,
                    human(timeout)
                ),
            ),
            RunError::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                CredentialError::new(
                    ErrorClass::NotConfigured,
                    format!("cannot run {}: {e}", program.display()),
                )
            }
            RunError::Io(e) => CredentialError::new(
                ErrorClass::ServerError,
                format!("cannot run {}: {e}", program.display()),
            ),
        }
    }

    /// Entra refused the CLI's request: the AADSTS line and a hint; a fresh sign-in (with the
    /// scope, for MFA and Conditional Access) when that is the fix.
    pub(crate) fn aadsts(&self, code: u32, line: &str, scope: &str) -> CredentialError {
        let hint = match code {
            70008 | 700082 | 50173 => {
                format!("the {}'s sign-in expired or was revoked: run `{}` again", self.product, self.login)
            }
            50076 | 53003 => format!(
                "MFA or Conditional Access requires an interactive sign-in: run `{} --scope {scope}`",
                self.login
            ),
            _ => super::entra::hint_for(code)
                .map(str::to_string)
                .unwrap_or_else(|| format!("see https://login.microsoftonline.com/error?code={code}")),
        };
        let class = if INTERACTION_CODES.contains(&code) {
            ErrorClass::InteractionRequired
        } else {
            ErrorClass::InvalidGrant
        };
        let mut err = CredentialError::new(
            class,
            format!(
                "{} could not get a token: {} — hint: {hint}",
                self.program,
                quotable(line)
            ),
        );
        err.codes = vec![code];
        err
    }

    /// Any other failure: the exit code and the first line of stderr.
    pub(crate) fn failed(&self, out: &Finished) -> CredentialError {
        let code = out
            .code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "a signal".to_string());
        let said = first_line(&out.stderr)
            .map(quotable)
            .unwrap_or_else(|| "no error message".to_string());
        CredentialError::new(
            ErrorClass::ServerError,
            format!("{} failed (exit {code}): {said}", self.program),
        )
    }

    /// An exit 0 whose stdout is not a token answer (`what` says which part is missing).
    pub(crate) fn not_a_token(&self, what: &str) -> CredentialError {
        CredentialError::new(
            ErrorClass::BadResponse,
            format!(
                "{} printed something that is not a token ({what})",
                self.program
            ),
        )
    }
}

/// Whether the shell or Windows said the program (or its interpreter) is missing.
pub(crate) fn says_not_installed(out: &Finished) -> bool {
    matches!(out.code, Some(127 | 9009))
        || out
            .stderr
            .contains("is not recognized as an internal or external command")
}

/// The first AADSTS code in `text`, with the line that holds it.
pub(crate) fn find_aadsts(text: &str) -> Option<(u32, &str)> {
    text.lines().find_map(|line| {
        let at = line.find("AADSTS")?;
        let digits: String = line[at + 6..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some((digits.parse().ok()?, line))
    })
}

/// The first line with text in it.
pub(crate) fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// A line of CLI output made safe to quote: terminal escapes and an `ERROR:` prefix removed, cut
/// where anything that looks like a token begins, and shortened.
pub(crate) fn quotable(line: &str) -> String {
    let plain = strip_escapes(line);
    let mut text = plain.trim();
    text = text.strip_prefix("ERROR:").unwrap_or(text).trim_start();
    // Entra's trace and correlation ids are noise here.
    text = text
        .split(" Trace ID:")
        .next()
        .unwrap_or_default()
        .trim_end();
    let lower = text.to_ascii_lowercase();
    let cut = [
        "accesstoken",
        "access_token",
        "refreshtoken",
        "refresh_token",
        "\"token\"",
        "bearer ",
    ]
    .iter()
    .filter_map(|m| lower.find(m))
    .chain(text.find("eyJ"))
    .min();
    let (mut out, mut cut_short) = match cut {
        Some(at) => (
            text[..at]
                .trim_end_matches(|c: char| c == '"' || c == '\'' || c.is_whitespace())
                .to_string(),
            true,
        ),
        None => (text.to_string(), false),
    };
    if out.chars().count() > QUOTE_CAP {
        out = out.chars().take(QUOTE_CAP).collect();
        cut_short = true;
    }
    if cut_short {
        out.push_str(" […]");
    }
    out
}

/// Removes ANSI escape sequences (`ESC [ … letter`) and other control characters.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip `[`, parameters, and the final letter.
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// `10 s`, `300 ms`.
pub(crate) fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// The lifetime left until `expires_at` (Unix seconds), or a `BadResponse` when it is over.
pub(crate) fn lifetime_until(cli: &Cli<'_>, expires_at: i64) -> Result<Duration, CredentialError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let left = expires_at as f64 - now;
    if left <= 0.0 {
        return Err(CredentialError::new(
            ErrorClass::BadResponse,
            format!(
                "{} returned a token that expired {:.0} s ago (check the machine's clock)",
                cli.program, -left
            ),
        ));
    }
    Ok(Duration::from_secs_f64(left))
}

/// A value that goes on the command line after an option: not empty, not option-like, no control
/// characters (no shell is involved, but a leading `-` would be read as another option).
pub(crate) fn check_arg(cli: &Cli<'_>, what: &str, value: &str) -> Result<(), CredentialError> {
    if value.is_empty() || value.starts_with('-') || value.chars().any(char::is_control) {
        return Err(CredentialError::new(
            ErrorClass::NotConfigured,
            format!(
                "{what} `{}` cannot be passed to {}",
                value.escape_debug(),
                cli.program
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aadsts_line_and_code() {
        let err =
            "WARNING: x\nERROR: AADSTS700082: The refresh token has expired. Trace ID: 1\nmore";
        let (code, line) = find_aadsts(err).expect("found");
        assert_eq!(code, 700082);
        assert_eq!(
            quotable(line),
            "AADSTS700082: The refresh token has expired."
        );
        assert!(find_aadsts("AADSTS: nothing").is_none());
    }

    #[test]
    fn quoting_cuts_token_looking_text() {
        let q = quotable(r#"ERROR: bad answer {"accessToken": "eyJhbGciOi.x.y"}"#);
        assert_eq!(q, "bad answer { […]");
        let q = quotable("got eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.payload.sig here");
        assert_eq!(q, "got […]");
        let q = quotable("\u{1b}[31mERROR: plain\u{1b}[0m");
        assert_eq!(q, "plain");
        let long = "x".repeat(1000);
        assert!(quotable(&long).chars().count() < QUOTE_CAP + 10);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(10)), "10 s");
        assert_eq!(human(Duration::from_millis(300)), "300 ms");
    }
}
