//! Log lines (docs/configuration.md, "Logs"): text by default, colour only on a terminal and never
//! with `NO_COLOR`; `[logging] format = "json"` (or `PATLESS_LOGGING__FORMAT=json`) writes one
//! JSON object per line with `timestamp`, `level`, `message` and the event's fields at the top,
//! for log pipelines. Run as the real binary (`serve`), its stderr in a file or on a terminal.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;
use crate::support::entra::{FakeEntra, ADO_SCOPE, CLIENT_SECRET};
use crate::support::sandbox::Sandbox;

/// `patless serve --config CONFIG` with `env`, its stderr in a file, until it says it listens;
/// what it logged by then.
fn serve_log(sb: &Sandbox, config: &Path, env: &[(&str, &str)]) -> String {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = sb.path().join(format!("serve-{n}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = sb
        .command(&["serve", "--config", config.to_str().expect("UTF-8")], env)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("patless starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("admin listening") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("admin listening"), "never listened:\n{text}");
    text
}

fn config(sb: &Sandbox, entra: &FakeEntra, logging: &str) -> std::path::PathBuf {
    let mut text =
        support::patless::config(entra, &[("/ado", "http://127.0.0.1:9", ADO_SCOPE)], "", "");
    text.push_str(logging);
    sb.write("patless.toml", text)
}

/// Every line is one JSON object with the fields a log pipeline indexes.
fn assert_json_lines(text: &str) -> Vec<Value> {
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 2, "{text}");
    for l in &lines {
        assert!(
            l["timestamp"].as_str().is_some_and(|t| t.contains('T')),
            "{l}"
        );
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .contains(&l["level"].as_str().unwrap_or("")),
            "{l}"
        );
        assert!(l["message"].as_str().is_some_and(|m| !m.is_empty()), "{l}");
    }
    lines
}

#[tokio::test]
async fn json_logs_from_the_environment_or_the_file() {
    let entra = FakeEntra::start().await;
    let sb = Sandbox::new();
    let plain = config(&sb, &entra, "");
    let text = serve_log(&sb, &plain, &[("PATLESS_LOGGING__FORMAT", "json")]);
    let lines = assert_json_lines(&text);
    let listening = lines
        .iter()
        .find(|l| l["message"] == "proxy listening")
        .unwrap_or_else(|| panic!("no proxy listening line:\n{text}"));
    assert!(
        listening["listen"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "the event's fields sit at the top level: {listening}"
    );
    assert!(!text.contains('\u{1b}'), "no colour codes in JSON");
    assert!(!text.contains(CLIENT_SECRET));

    let from_file = config(&sb, &entra, "\n[logging]\nformat = \"json\"\n");
    assert_json_lines(&serve_log(&sb, &from_file, &[]));
}

#[tokio::test]
async fn text_logs_have_colour_only_on_a_terminal_without_no_color() {
    let entra = FakeEntra::start().await;
    let sb = Sandbox::new();
    let path = config(&sb, &entra, "");
    // A file, NO_COLOR unset (empty counts as unset): text, no colour codes.
    let text = serve_log(&sb, &path, &[("NO_COLOR", "")]);
    assert!(text.contains("proxy listening"), "{text}");
    assert!(serde_json::from_str::<Value>(text.lines().next().unwrap_or("")).is_err());
    assert!(!text.contains('\u{1b}'), "colour in a file:\n{text}");

    // A terminal (`script` gives it one): colour, unless NO_COLOR is set.
    let on_tty = |no_color: &str| {
        let cmd = format!(
            "timeout -s KILL 3 {} serve --config {}",
            env!("CARGO_BIN_EXE_patless"),
            path.display()
        );
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", sb.path().join("home"))
            .env("XDG_CONFIG_HOME", sb.path().join("xdg"))
            .env("XDG_STATE_HOME", sb.path().join("state"))
            .env("TERM", "xterm")
            .env("NO_COLOR", no_color)
            .stdin(Stdio::null());
        let out = c.output().expect("script runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    if !support::clients::require_tool("script", "apt-get install bsdutils") {
        return;
    }
    let coloured = on_tty("");
    assert!(coloured.contains("proxy listening"), "{coloured}");
    assert!(
        coloured.contains('\u{1b}'),
        "no colour on a terminal:\n{coloured}"
    );
    let plain = on_tty("1");
    assert!(plain.contains("proxy listening"), "{plain}");
    assert!(
        !plain.contains('\u{1b}'),
        "colour despite NO_COLOR:\n{plain}"
    );
}
