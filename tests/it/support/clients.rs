//! Real clients (git, curl, Python and Node packages) that the end-to-end tests drive through
//! patless. `.ci/run` installs them (APT_PACKAGES, PIP_PACKAGES, NPM_PACKAGES). On a runner with
//! `CI=true` a missing client fails the test; on a developer's machine the test says what to
//! install and returns, so that `cargo test` still runs everything else.

use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Whether this run is CI, where every client must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `true` when `probe` runs and exits 0. Otherwise panics in CI and, elsewhere, prints why the
/// test is not run (with `install`, the command that would install the client) and returns
/// `false`.
pub fn require(what: &str, probe: &mut Command, install: &str) -> bool {
    let ok = probe
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    if in_ci() {
        panic!("{what} is missing on this CI runner: .ci/run should have installed it ({install})");
    }
    eprintln!("NOT RUN: {what} is not installed here. `.ci/run` installs it; by hand: {install}");
    false
}

/// The command-line tool `bin` (probed with `--version`).
pub fn require_tool(bin: &str, install: &str) -> bool {
    require(bin, Command::new(bin).arg("--version"), install)
}

/// The Python module `module` importable by `python3`.
pub fn require_python_module(module: &str, install: &str) -> bool {
    require(
        &format!("Python module `{module}`"),
        Command::new("python3").args(["-c", &format!("import {module}")]),
        install,
    )
}

/// The npm package `package` loadable by `node` from the global modules ([`node_path`]).
pub fn require_node_module(package: &str, install: &str) -> bool {
    require(
        &format!("npm package `{package}`"),
        Command::new("node")
            .env("NODE_PATH", node_path())
            .args(["-e", &format!("require({package:?})")]),
        install,
    )
}

/// `NODE_PATH` for scripts that `require` the globally installed packages (`npm root -g`).
pub fn node_path() -> String {
    static ROOT: OnceLock<String> = OnceLock::new();
    ROOT.get_or_init(|| {
        Command::new("npm")
            .args(["root", "-g"])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    })
    .clone()
}
