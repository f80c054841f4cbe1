//! Fake `az` and `azd` executables: small `#!/bin/sh` scripts written into a temp dir, to be put
//! on the `PATH` of the environment patless gets.
//!
//! Every run appends its argv to a log (one line per run, arguments separated by tabs; read it
//! with [`FakeCli::calls`]), records its exported environment and working directory
//! ([`FakeCli::last_env`], [`FakeCli::last_cwd`]), then behaves per [`Mode`]. `PATH` holds only
//! the fake's dir, so the scripts use sh builtins (and `sleep` by absolute path). In the success
//! modes the token printed is the test user's, as signed in to the CLI (`appid` = the CLI's
//! public client, [`AZ_CLIENT_ID`] or [`AZD_CLIENT_ID`]; [`FakeCli::identity`]), for the audience
//! asked for (`--resource R` for az, `--scope S` minus `/.default` for azd), minted when the fake
//! is made for each of [`FakeCli::AUDIENCES`]; any other audience gets an error and exit 1.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, SecondsFormat};
use patless::env::MapEnv;
use tempfile::TempDir;

use super::entra::{mint_user_token, ADO_AUDIENCE, DEFENDER_AUDIENCE};
use super::upstream::Identity;

/// The Azure CLI's public client id (the `appid` of the tokens `az` prints).
pub const AZ_CLIENT_ID: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";
/// The public client id the fake `azd` signs in with (the `appid` of the tokens it prints).
pub const AZD_CLIENT_ID: &str = "99999999-9999-9999-9999-999999999999";

/// Lifetime of the tokens the fakes print.
pub const LIFETIME_SECS: u64 = 3600;

/// How a fake CLI behaves.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Prints the token (az: `accessToken`, `expires_on`, `expiresOn`, …; azd: `token`,
    /// `expiresOn` in RFC 3339).
    Success,
    /// az only: prints the token with `expiresOn` (naive local time) and no `expires_on`, as az
    /// before 2.54 did.
    ExpiresOnLocalOnly,
    /// What each CLI says when nobody is signed in (exit 1).
    NotLoggedIn,
    /// An expired refresh token: `AADSTS700082: The refresh token has expired…` (exit 1).
    Aadsts700082,
    /// Writes `text` to stderr and exits with `code`.
    Fail { stderr: String, code: i32 },
    /// Never answers (`exec sleep 30`); writes its pid to `pid` in the fake's dir first.
    Hang,
    /// Prints this to stdout and exits 0.
    Stdout(String),
}

/// Which CLI the fake plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The Azure CLI, `az`.
    Az,
    /// The Azure Developer CLI, `azd`.
    Azd,
}

/// A fake CLI in its own temp dir (deleted on drop). The dir also serves as `HOME`.
pub struct FakeCli {
    dir: TempDir,
    which: Which,
    tokens: Vec<(String, String)>,
}

impl FakeCli {
    /// The audiences the fakes have tokens for.
    pub const AUDIENCES: [&'static str; 2] = [ADO_AUDIENCE, DEFENDER_AUDIENCE];

    /// A fake `az`.
    pub fn az(mode: Mode) -> FakeCli {
        FakeCli::new(Which::Az, mode)
    }

    /// A fake `azd`.
    pub fn azd(mode: Mode) -> FakeCli {
        FakeCli::new(Which::Azd, mode)
    }

    fn new(which: Which, mode: Mode) -> FakeCli {
        let dir = TempDir::new().expect("temp dir");
        let client_id = match which {
            Which::Az => AZ_CLIENT_ID,
            Which::Azd => AZD_CLIENT_ID,
        };
        let tokens: Vec<(String, String)> = Self::AUDIENCES
            .iter()
            .map(|a| (a.to_string(), mint_user_token(a, LIFETIME_SECS, client_id)))
            .collect();
        let fake = FakeCli { dir, which, tokens };
        fake.set_mode(mode);
        fake
    }

    /// Rewrites the script to behave per `mode` from the next run on.
    pub fn set_mode(&self, mode: Mode) {
        let script = self.script(&mode);
        let path = self.program();
        // Write beside and rename: a run in flight keeps the old file.
        let tmp = self.dir.path().join(".script.tmp");
        std::fs::write(&tmp, script).expect("write fake CLI");
        set_mode_755(&tmp);
        std::fs::rename(&tmp, &path).expect("install fake CLI");
    }

    fn name(&self) -> &'static str {
        match self.which {
            Which::Az => "az",
            Which::Azd => "azd",
        }
    }

    /// The fake's path.
    pub fn program(&self) -> PathBuf {
        self.dir.path().join(self.name())
    }

    /// The directory to put on `PATH` (and to use as `HOME`).
    pub fn dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// `PATH` = the fake's dir, `HOME` = the same dir: all a fake needs.
    pub fn env(&self) -> MapEnv {
        MapEnv::new([("PATH", self.dir()), ("HOME", self.dir())])
    }

    /// Who the printed tokens are for: the test user, signed in to this CLI.
    pub fn identity(&self) -> Identity {
        Identity::user(match self.which {
            Which::Az => AZ_CLIENT_ID,
            Which::Azd => AZD_CLIENT_ID,
        })
    }

    /// The token the fake prints for `audience`.
    pub fn token_for(&self, audience: &str) -> String {
        self.tokens
            .iter()
            .find(|(a, _)| a == audience)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("the fake has no token for {audience}"))
    }

    /// The argv of every run so far, oldest first.
    pub fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    /// The exported environment of the last run, as `NAME=value` lines.
    pub fn last_env(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("env.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let l = l.strip_prefix("export ")?;
                let (name, value) = l.split_once('=')?;
                let value = value
                    .strip_prefix(['\'', '"'])
                    .and_then(|v| v.strip_suffix(['\'', '"']))
                    .unwrap_or(value);
                Some(format!("{name}={value}"))
            })
            .collect()
    }

    /// The working directory of the last run.
    pub fn last_cwd(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cwd.log"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// The pid [`Mode::Hang`] wrote, once it ran.
    pub fn hung_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("argv.log")
    }

    fn script(&self, mode: &Mode) -> String {
        let log = sh_quote(&self.log());
        let (option, strip) = match self.which {
            Which::Az => ("--resource", ""),
            Which::Azd => ("--scope", "/.default"),
        };
        let mut s = format!(
            "#!/bin/sh\n\
             # A fake {name} for patless's tests.\n\
             (IFS=\"$(printf '\\t')\"; printf '%s\\n' \"$*\") >> {log}\n\
             export -p > {envlog}\n\
             pwd > {cwdlog}\n\
             want=''\n\
             prev=''\n\
             for a in \"$@\"; do\n  \
               if [ \"$prev\" = '{option}' ]; then want=\"$a\"; fi\n  \
               prev=\"$a\"\n\
             done\n\
             aud=\"${{want%{strip}}}\"\n",
            name = self.name(),
            envlog = sh_quote(&self.dir.path().join("env.log")),
            cwdlog = sh_quote(&self.dir.path().join("cwd.log")),
        );
        match mode {
            Mode::Success | Mode::ExpiresOnLocalOnly => {
                s.push_str("case \"$aud\" in\n");
                for (aud, token) in &self.tokens {
                    s.push_str(&format!(
                        "{})\nprintf '%s\\n' {}\n;;\n",
                        sh_lit(aud),
                        sh_lit(&self.answer(token, matches!(mode, Mode::ExpiresOnLocalOnly)))
                    ));
                }
                s.push_str(
                    "*)\necho \"ERROR: the fake has no token for '$want'\" >&2\nexit 1\n;;\nesac\n",
                );
            }
            Mode::NotLoggedIn => {
                let text = match self.which {
                    Which::Az => "ERROR: Please run 'az login' to setup account.",
                    Which::Azd => "ERROR: not logged in, run `azd auth login` to login",
                };
                s.push_str(&stderr_exit(text, 1));
            }
            Mode::Aadsts700082 => {
                let text = "ERROR: AADSTS700082: The refresh token has expired due to inactivity. \
                            The token was issued on 2024-01-01T00:00:00.0000000Z and was inactive for 90.00:00:00.\n\
                            Trace ID: 0b9e6f0a-0000-0000-0000-000000000000\n\
                            Correlation ID: 1c2d3e4f-0000-0000-0000-000000000000\n\
                            Interactive authentication is needed. Please run:\n\
                            az login --scope 499b84ac-1321-427f-aa17-267ca6975798/.default";
                s.push_str(&stderr_exit(text, 1));
            }
            Mode::Fail { stderr, code } => s.push_str(&stderr_exit(stderr, *code)),
            Mode::Hang => {
                let pid = sh_quote(&self.dir.path().join("pid"));
                let sleep = ["/bin/sleep", "/usr/bin/sleep"]
                    .into_iter()
                    .find(|p| Path::new(p).exists())
                    .expect("a sleep program");
                s.push_str(&format!("echo $$ > {pid}\nexec {sleep} 30\n"));
            }
            Mode::Stdout(text) => {
                s.push_str(&format!("printf '%s\\n' {}\nexit 0\n", sh_lit(text)));
            }
        }
        s
    }

    fn answer(&self, token: &str, local_only: bool) -> String {
        let expires = (super::now_secs() + LIFETIME_SECS) as i64;
        let local = DateTime::from_timestamp(expires, 0)
            .expect("valid time")
            .with_timezone(&Local)
            .format("%Y-%m-%d %H:%M:%S%.6f")
            .to_string();
        match (self.which, local_only) {
            (Which::Az, false) => format!(
                r#"{{
  "accessToken": "{token}",
  "expiresOn": "{local}",
  "expires_on": {expires},
  "subscription": "6b1c2d3e-0000-4000-8000-000000000000",
  "tenant": "{tenant}",
  "tokenType": "Bearer"
}}"#,
                tenant = super::entra::TENANT
            ),
            (Which::Az, true) => format!(
                r#"{{
  "accessToken": "{token}",
  "expiresOn": "{local}",
  "subscription": "6b1c2d3e-0000-4000-8000-000000000000",
  "tenant": "{tenant}",
  "tokenType": "Bearer"
}}"#,
                tenant = super::entra::TENANT
            ),
            (Which::Azd, _) => format!(
                r#"{{"token":"{token}","expiresOn":"{}"}}"#,
                DateTime::from_timestamp(expires, 0)
                    .expect("valid time")
                    .to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
        }
    }
}

fn stderr_exit(text: &str, code: i32) -> String {
    format!("printf '%s\\n' {} >&2\nexit {code}\n", sh_lit(text))
}

/// `text` as one sh word, in single quotes.
fn sh_lit(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// `'path'` for sh (temp paths hold no `'`).
fn sh_quote(p: &Path) -> String {
    let s = p.display().to_string();
    assert!(!s.contains('\''), "temp path with a quote: {s}");
    format!("'{s}'")
}

fn set_mode_755(p: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
}

/// A config with one profile `me` of `kind` (plus `profile_extra` keys) and one route `/ado` →
/// `upstream` with the Azure DevOps scope.
pub fn proxy_config(kind: &str, upstream: &str, profile_extra: &str) -> String {
    let body = format!("kind = \"{kind}\"\n{profile_extra}");
    super::patless::profile_config(None, upstream, "me", &body, "shutdown_grace = \"5s\"")
}

/// Sends `GET /ado/org/_apis/projects` through `p`, expects `503 token_unavailable` for profile
/// `me`, and returns the message.
pub async fn expect_503(p: &super::patless::Patless) -> String {
    let r = super::http_client()
        .get(p.url("/ado/org/_apis/projects"))
        .send()
        .await
        .expect("request through the proxy");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"), "no Retry-After");
    let body: serde_json::Value = r.json().await.expect("JSON error body");
    assert_eq!(body["error"], "token_unavailable", "{body}");
    assert_eq!(body["profile"], "me", "{body}");
    body["message"].as_str().expect("message").to_string()
}

/// Starts patless with [`proxy_config`] for this fake's kind (`azure_cli` or
/// `azure_developer_cli`) and `profile_extra`, in the fake's environment (`up`, the route's
/// upstream, should expect [`FakeCli::identity`]).
pub async fn start_proxy(
    fake: &FakeCli,
    up: &super::upstream::FakeUpstream,
    profile_extra: &str,
) -> super::patless::Patless {
    let kind = match fake.which {
        Which::Az => "azure_cli",
        Which::Azd => "azure_developer_cli",
    };
    super::patless::Patless::start_with_env(
        &proxy_config(kind, &up.url(), profile_extra),
        fake.env(),
    )
    .await
}

/// Sends `GET /ado/org/_apis/projects` through `p` and asserts it was answered 200, and that the
/// upstream got (and accepted) the token the fake printed.
pub async fn request_succeeds(
    p: &super::patless::Patless,
    up: &super::upstream::FakeUpstream,
    fake: &FakeCli,
) {
    let r = p.get("/ado/org/_apis/projects").await;
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "proxy answered {status}: {body}");
    let rec = up.requests().pop().expect("upstream saw the request");
    assert!(rec.token_valid, "upstream refused: {:?}", rec.token_error);
    assert_eq!(
        rec.headers["authorization"],
        format!("Bearer {}", fake.token_for(ADO_AUDIENCE)).as_str()
    );
}

/// Asserts `/metrics` counted one refresh of profile `me` with `result`.
pub async fn assert_refresh_result(p: &super::patless::Patless, result: &str) {
    let m = p.metrics().await;
    let want = format!(r#"patless_token_refreshes_total{{profile="me",result="{result}"}}"#);
    assert!(m.contains(&want), "no {want} in:\n{m}");
}
