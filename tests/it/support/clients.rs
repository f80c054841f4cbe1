//! Real clients (git, curl, package managers, Python and Node packages) that the end-to-end tests drive through
//! patless. `bash .ci/setup` installs them, at the versions CI pins (APT_PACKAGES, PIP_PACKAGES,
//! NPM_PACKAGES); `.ci/run` runs it first.
//!
//! A missing client fails its test, with the command that installs it, unless
//! `PATLESS_SKIP_CLIENTS` names it: then the test prints `SKIPPED: … (PATLESS_SKIP_CLIENTS)` and
//! returns. The variable is a comma-separated list of these names:
//! - a command-line tool by its binary: `git`, `curl`, `python3`, `node`, `npm`, `mvn` (Maven and
//!   its Debian plugins);
//! - a Python module by its module name (`azure.identity`, `azure.devops`, `pip`, `twine`), or
//!   all of them and `python3` by the group name `python`;
//! - an npm package by its package name (`@azure/identity`, `azure-devops-node-api`), or all of
//!   them, `node` and `npm` by the group name `node`;
//! - `all`: every client.
//!
//! A client that is installed is used whatever the list says: the list excuses a missing client,
//! it does not turn off one that is there. (`CI` plays no part.)

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The variable that names the clients whose absence skips a test instead of failing it.
pub const SKIP_VAR: &str = "PATLESS_SKIP_CLIENTS";

/// The names in a `PATLESS_SKIP_CLIENTS` value: comma-separated, trimmed, empty ones dropped.
pub fn skip_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether `list` skips a client known by `names` (its own name and its group's): it holds one
/// of them, or `all`.
pub fn skips(list: &[String], names: &[&str]) -> bool {
    list.iter()
        .any(|n| n == "all" || names.iter().any(|name| n == name))
}

/// `true` when `probe` runs and exits 0. Otherwise, when `PATLESS_SKIP_CLIENTS` holds one of
/// `names` (the client's name first, then its group), prints why the test is skipped and returns
/// `false`; else panics with `install`, the command that installs the client.
pub fn require(what: &str, names: &[&str], probe: &mut Command, install: &str) -> bool {
    let ok = probe
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let list = skip_list(&std::env::var(SKIP_VAR).unwrap_or_default());
    if skips(&list, names) {
        eprintln!("SKIPPED: {what} is not installed, and the test is skipped ({SKIP_VAR})");
        return false;
    }
    panic!(
        "{what} is not installed: `bash .ci/setup` installs every client the tests drive (this \
         one by hand: {install}); or skip the tests that need it with {SKIP_VAR}={}",
        names[0]
    );
}

/// The command-line tool `bin` (probed with `--version`); skipped by its name, `python3` also by
/// `python`, `node` and `npm` also by `node`.
pub fn require_tool(bin: &str, install: &str) -> bool {
    let group = match bin {
        "python3" => Some("python"),
        "node" | "npm" => Some("node"),
        _ => None,
    };
    let names: Vec<&str> = std::iter::once(bin).chain(group).collect();
    require(bin, &names, Command::new(bin).arg("--version"), install)
}

/// The Python module `module` importable by `python3`; skipped by its name or `python`.
pub fn require_python_module(module: &str, install: &str) -> bool {
    require(
        &format!("Python module `{module}`"),
        &[module, "python"],
        Command::new("python3").args(["-c", &format!("import {module}")]),
        install,
    )
}

/// The npm package `package` loadable by `node` from the global modules ([`node_path`]); skipped
/// by its name or `node`.
pub fn require_node_module(package: &str, install: &str) -> bool {
    require(
        &format!("npm package `{package}`"),
        &[package, "node"],
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

/// Environment variables that would send an SDK elsewhere (another managed-identity source, a
/// proxy, workload identity): removed from the client's environment.
pub const DIVERTING: &[&str] = &[
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "AZUREPS_HOST_ENVIRONMENT",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// Runs `program args` (an SDK's script) without the [`DIVERTING`] variables, with `env` and no
/// proxy for loopback (tokio::process, so the in-process fakes keep serving); its stdout as JSON.
pub async fn run_json(program: &str, args: &[&str], env: &[(&str, String)]) -> serde_json::Value {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for var in DIVERTING {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("the SDK finished within 90 s")
        .expect("run the SDK");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} failed:\n{stderr}\n{stdout}"
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{program} printed no JSON ({e}): {stdout}"))
}

#[cfg(test)]
mod tests {
    use super::{skip_list, skips};

    #[test]
    fn the_skip_list_names_clients_groups_or_all() {
        assert!(skip_list("").is_empty());
        assert!(skip_list(" , ,").is_empty());
        assert_eq!(
            skip_list(" git,curl ,, @azure/identity "),
            ["git", "curl", "@azure/identity"]
        );
        let list = skip_list("git, azure.devops, node");
        assert!(skips(&list, &["git"]));
        assert!(!skips(&list, &["curl"]), "only what it names");
        assert!(
            skips(&list, &["azure.devops", "python"]),
            "a module by name"
        );
        assert!(
            !skips(&list, &["azure.identity", "python"]),
            "not its neighbour"
        );
        assert!(
            skips(&list, &["@azure/identity", "node"]),
            "a package by group"
        );
        assert!(skips(&list, &["npm", "node"]), "a tool by group");
        assert!(!skips(&skip_list("python"), &["node"]));
        assert!(
            !skips(&skip_list("gi,git2,Git"), &["git"]),
            "whole names only"
        );
        for names in [
            &["git"][..],
            &["azure.identity", "python"],
            &["npm", "node"],
        ] {
            assert!(skips(&skip_list("all"), names), "{names:?}");
        }
        assert!(!skips(&[], &["git"]), "nothing skipped by default");
    }
}
