//! The real binaries (patless, git, the SDKs' scripts) run to completion in a scratch directory:
//! [`Sandbox`] gives patless a scrubbed environment of its own, [`run`] runs any command off the
//! async runtime (so the in-process fakes keep serving while it runs) and returns a [`Run`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

/// A scratch directory with `home/`, `xdg/` and `work/` in it (and `state/` once patless makes
/// it): patless run here finds no config and no refresh tokens of the developer's.
pub struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    /// Makes the directory and its subdirectories.
    pub fn new() -> Sandbox {
        let dir = TempDir::new().expect("tempdir");
        for d in ["home", "xdg", "work"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("sandbox dir");
        }
        Sandbox { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` to `name` in the sandbox (see [`super::write_file`]).
    pub fn write(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        super::write_file(self.path(), name, text)
    }

    /// `patless ARGS` in a scrubbed environment: only `PATH` is kept; `HOME`, `XDG_CONFIG_HOME`
    /// and `XDG_STATE_HOME` are the sandbox's `home/`, `xdg/` and `state/`; `TZ=UTC`,
    /// `NO_COLOR=1`, then `env`; run from `work/` with stdin closed.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patless"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path().join("home"))
            .env("XDG_CONFIG_HOME", self.path().join("xdg"))
            .env("XDG_STATE_HOME", self.path().join("state"))
            .env("TZ", "UTC")
            .env("NO_COLOR", "1")
            .current_dir(self.path().join("work"))
            .stdin(Stdio::null());
        cmd.envs(env.iter().copied());
        cmd
    }

    /// Runs [`Sandbox::command`] to completion, on this thread (no fake is needed).
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.command(args, env)
            .output()
            .expect("run the patless binary")
            .into()
    }

    /// Runs [`Sandbox::command`] to completion off the async runtime (see [`run`]).
    pub async fn run_async(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        run(self.command(args, env)).await
    }

    /// [`Sandbox::run_async`] of `patless ARGS --config CONFIG`.
    pub async fn run_with_config(&self, args: &[&str], config: &Path) -> Run {
        let config = config.to_str().expect("UTF-8 path");
        let args: Vec<&str> = args.iter().copied().chain(["--config", config]).collect();
        self.run_async(&args, &[]).await
    }
}

/// What a finished run produced.
pub struct Run {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Whether it exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Its stdout, then its stderr.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

// By hand: a git credential helper's answer holds a token, which no panic message shows.
impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stdout: Vec<&str> = self
            .stdout
            .lines()
            .map(|l| {
                if l.starts_with("password=") {
                    "password=<redacted>"
                } else {
                    l
                }
            })
            .collect();
        f.debug_struct("Run")
            .field("code", &self.code)
            .field("stdout", &stdout)
            .field("stderr", &self.stderr)
            .finish()
    }
}

/// Runs `cmd` to completion on a blocking thread, so the in-process fakes keep serving while
/// it runs; its stdin is what `cmd` says (see [`run_with_input`]).
pub async fn run(mut cmd: Command) -> Run {
    tokio::task::spawn_blocking(move || {
        cmd.output()
            .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
            .into()
    })
    .await
    .expect("join blocking run")
}

/// [`run`] with `input` written to its stdin, which is then closed.
pub async fn run_with_input(mut cmd: Command, input: &str) -> Run {
    let input = input.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        // Dropped at the end of the block: the child sees EOF.
        if let Some(mut stdin) = child.stdin.take() {
            // A child that exits without reading (a usage error) closes the pipe first.
            if let Err(e) = stdin.write_all(input.as_bytes()) {
                assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
            }
        }
        child.wait_with_output().expect("wait").into()
    })
    .await
    .expect("join blocking run")
}
