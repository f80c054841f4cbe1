//! Unix manners (docs/commands.md), with the real binary and the configs a new user writes: a
//! reader that closes the pipe (`patless config | head -1`) ends any command quietly, `token`
//! and `git-credential` write nothing on stderr but their one error line, an address in use says
//! what may hold it and which key moves it, and each command's `--help` ends with examples that
//! docs/commands.md shows too. The second Ctrl-C is in shutdown.rs.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, ExitStatus, Stdio};

use crate::support::entra::{FakeEntra, Fault, ADO_AUDIENCE, ADO_SCOPE};
use crate::support::sandbox::Sandbox;
use crate::support::upstream::FakeUpstream;
use crate::support::ClosedPort;

/// What a new user writes first: the README's `client_secret` profile and one route, with Entra
/// and the upstream the test's fakes.
fn readme_config(entra: &FakeEntra, upstream: &str) -> String {
    format!(
        "[entra]\nauthority_host = \"{authority}\"\n\n\
         [profiles.ado-bot]\nkind = \"client_secret\"\ntenant_id = \"{tenant}\"\n\
         client_id = \"{client}\"\nclient_secret = {{ env = \"ADO_BOT_SECRET\" }}\n\n\
         [[routes]]\nprefix = \"/ado\"\nupstream = \"{upstream}\"\nprofile = \"ado-bot\"\n\
         scope = \"{ADO_SCOPE}\"\n",
        authority = entra.authority(),
        tenant = crate::support::entra::TENANT,
        client = crate::support::entra::CLIENT_ID,
    )
}

/// The sandbox's `patless ARGS` with the README config's secret in the environment.
fn command(sb: &Sandbox, args: &[&str]) -> Command {
    sb.command(
        args,
        &[("ADO_BOT_SECRET", crate::support::entra::CLIENT_SECRET)],
    )
}

/// Runs `cmd` with `input` on stdin and its stdout a pipe whose reader goes away after reading
/// `lines` lines (0: at once, before patless has written anything, as `| true` does); the
/// status and stderr. Off the async runtime, so the in-process fakes keep serving.
async fn reader_leaves_after(mut cmd: Command, lines: usize, input: &str) -> (ExitStatus, String) {
    let input = input.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn patless");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        for _ in 0..lines {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read a line");
        }
        drop(reader);
        let mut stdin = child.stdin.take().expect("stdin");
        // patless may be gone already, or may not read stdin at all.
        let _ = stdin.write_all(input.as_bytes());
        drop(stdin);
        let out = child.wait_with_output().expect("wait");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

fn assert_quiet_end(what: &str, status: ExitStatus, stderr: &str) {
    let quiet = matches!(status.code(), Some(0) | Some(141)) || status.signal() == Some(13);
    assert!(quiet, "{what}: ended with {status:?}; stderr:\n{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{what}: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_every_command_quietly() {
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let sb = Sandbox::new();
    let path = sb.write("work/patless.toml", readme_config(&entra, &up.url()));
    let path = path.to_str().expect("UTF-8 path");
    let git_get = format!(
        "protocol=http\nhost={}\n\n",
        up.url().trim_start_matches("http://")
    );
    // (what, arguments, lines read before the reader leaves, stdin)
    let cases: [(&str, Vec<&str>, usize, &str); 8] = [
        ("config | head -1", vec!["config"], 1, ""),
        ("config | true", vec!["config", "--config", path], 0, ""),
        // (check's first two lines, the config and the default profile, come before it asks
        // Entra: the reader leaves after them, so the token's line meets the closed pipe.)
        ("check | head -2", vec!["check"], 2, ""),
        ("token | true", vec!["token", "--profile", "ado-bot"], 0, ""),
        (
            "git-credential get | true",
            vec!["git-credential", "get"],
            0,
            &git_get,
        ),
        ("--version | true", vec!["--version"], 0, ""),
        ("--help | true", vec!["--help"], 0, ""),
        ("help token | true", vec!["help", "token"], 0, ""),
    ];
    for (what, args, lines, input) in cases {
        let (status, stderr) = reader_leaves_after(command(&sb, &args), lines, input).await;
        assert_quiet_end(what, status, &stderr);
    }
    // The commands that ask Entra did.
    assert!(entra.token_requests() >= 3, "{}", entra.token_requests());
}

/// git shows a helper's stderr to the user: for a host no route names (Azure DevOps, so the
/// default profile `auto` answers) and nothing to sign in with, that is one line, the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_credential_without_a_credential_says_one_line() {
    let sb = Sandbox::new();
    // No config file: the embedded default. No az or azd on the PATH, and no IMDS.
    let imds = ClosedPort::new();
    let bin = sb.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let cmd = sb.command(
        &["git-credential", "get"],
        &[
            ("PATH", bin.to_str().expect("UTF-8 path")),
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds.url()),
        ],
    );
    let input = "protocol=https\nhost=contoso.visualstudio.com\npath=contoso/p/_git/r\n\n";
    let run = crate::support::sandbox::run_with_input(cmd, input).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{run:?}");
    assert!(
        lines[0].starts_with("patless git-credential: no token for the default profile `auto`")
            && lines[0].contains("no credential found"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_that_entra_refuses_says_one_line() {
    let entra = FakeEntra::start().await;
    entra.set_fault(Some(Fault::InvalidClient));
    let sb = Sandbox::new();
    sb.write(
        "work/patless.toml",
        readme_config(&entra, "https://dev.azure.com"),
    );
    let token = ["token", "--profile", "ado-bot"];
    let run = crate::support::sandbox::run(command(&sb, &token)).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{run:?}");
    assert!(
        lines[0].starts_with("patless: ") && lines[0].contains("AADSTS7000215"),
        "{run:?}"
    );
    assert!(entra.token_requests() >= 1);
    // Asked for, the logs are there.
    let run = crate::support::sandbox::run(command(&sb, &[&token[..], &["-v"]].concat())).await;
    assert!(run.stderr.lines().count() > 1, "{run:?}");
}

/// A second patless on the same address (the first still draining after Ctrl-C, say): the error
/// says what may hold the address, how long a drain lasts, and which key moves this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_use_says_who_may_hold_it() {
    let entra = FakeEntra::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let sb = Sandbox::new();
    let text = format!(
        "[server]\nlisten = \"{addr}\"\nadmin_listen = \"127.0.0.1:0\"\n\n{}",
        readme_config(&entra, "https://dev.azure.com")
    );
    sb.write("work/patless.toml", text);
    let run = crate::support::sandbox::run(command(&sb, &["serve"])).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    let error = run
        .stderr
        .lines()
        .find(|l| l.starts_with("patless: "))
        .unwrap_or_else(|| panic!("no error line: {run:?}"));
    for needle in [
        &format!("cannot listen on {addr} (server.listen)"),
        "in use",
        "still draining",
        "35s (server.shutdown_delay 5s + server.shutdown_grace 30s)",
        "a second Ctrl-C",
        "set server.listen (or PATLESS_SERVER__LISTEN)",
    ] {
        assert!(error.contains(needle), "lacks `{needle}`: {error}");
    }
}

/// Every command's `--help` ends with examples, and docs/commands.md shows the same ones.
#[test]
fn every_help_ends_with_examples_that_the_docs_show() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/commands.md"))
        .expect("docs/commands.md");
    let sb = Sandbox::new();
    let commands = [
        "serve",
        "config",
        "token",
        "login",
        "logout",
        "check",
        "git-credential",
    ];
    let mut helps = vec![vec!["--help"]];
    helps.extend(commands.iter().map(|c| vec![*c, "--help"]));
    for args in helps {
        let run = sb.run(&args, &[]);
        assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
        let (_, examples) = run
            .stdout
            .split_once("\nExamples:\n")
            .unwrap_or_else(|| panic!("{args:?}: no examples:\n{}", run.stdout));
        let examples: Vec<&str> = examples.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!((2..=3).contains(&examples.len()), "{args:?}: {examples:?}");
        for line in examples {
            assert!(line.starts_with("  "), "{args:?}: not an example: {line}");
            assert!(
                docs.contains(line.trim()),
                "{args:?}: docs/commands.md lacks the example `{}`",
                line.trim()
            );
        }
    }
}
