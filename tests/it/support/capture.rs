//! TRACE logging captured for a whole test binary, and the secret-hygiene check built on it.
//!
//! [`init`] installs, once per process, a global `tracing` subscriber at TRACE that writes into a
//! shared buffer ([`logs`] reads it). Tests of one binary run in parallel and share that buffer,
//! so each test registers its secrets with a [`Hygiene`] and, at its end, [`Hygiene::finish`]
//! checks the whole buffer against every secret any test of the binary has registered so far
//! (plus its own outputs against its own secrets): whichever test ends last has checked every
//! log line against every secret, whatever the order.
//!
//! The subscriber is global, so it also holds what patless logs on the threads it starts itself:
//! the proxy's worker threads (`patless-proxy-N`), where every request is served. Each line
//! names its thread (a test's own is named after the test, a multi-threaded test runtime's
//! `tokio-runtime-worker`), so a check can tell them apart.
//!
//! (`log`-crate records of dependencies are not bridged: patless itself logs through `tracing`.)

use std::sync::{Mutex, OnceLock};

use super::{lock, SharedBuf};

static CAPTURED: OnceLock<SharedBuf> = OnceLock::new();

/// The TRACE event [`init`] logs, to prove the capture holds TRACE.
const INSTALLED: &str = "secret hygiene: TRACE capture installed";

/// Every secret registered by a test of this binary: (label, value).
static FORBIDDEN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Installs the TRACE subscriber for the whole binary (idempotent).
pub fn init() -> &'static SharedBuf {
    CAPTURED.get_or_init(|| {
        let captured = SharedBuf::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_thread_names(true)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("no other global subscriber in this test binary");
        tracing::trace!("{INSTALLED}");
        captured
    })
}

/// Everything logged so far by this process.
pub fn logs() -> String {
    init().text()
}

/// What to look for besides the secret itself: each `.`-separated segment longer than 20
/// characters (a JWT's payload and signature, the random part of a refresh token or device
/// code). A token's signature alone is as good as a leak.
pub fn variants(value: &str) -> Vec<String> {
    let mut out = vec![value.to_string()];
    if value.contains('.') {
        out.extend(
            value
                .split('.')
                .filter(|s| s.len() > 20)
                .map(str::to_string),
        );
    }
    out
}

/// One test's secrets and the outputs that must not hold them.
pub struct Hygiene {
    kind: String,
    forbidden: Vec<(String, String)>,
    outputs: Vec<(String, String)>,
}

impl Hygiene {
    /// Starts the check for one credential kind (installs the capture).
    pub fn new(kind: &str) -> Hygiene {
        init();
        Hygiene {
            kind: kind.to_string(),
            forbidden: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Registers a secret (and its [`variants`]) under `what`.
    pub fn forbid(&mut self, what: &str, value: impl AsRef<str>) {
        let value = value.as_ref().trim();
        assert!(
            value.len() >= 8,
            "{}: {what} is too short to be searched for reliably",
            self.kind
        );
        let label = format!("{}: {what}", self.kind);
        let mut global = lock(&FORBIDDEN);
        for v in variants(value) {
            if !self.forbidden.iter().any(|(_, f)| *f == v) {
                self.forbidden.push((label.clone(), v.clone()));
            }
            if !global.iter().any(|(_, f)| *f == v) {
                global.push((label.clone(), v));
            }
        }
    }

    /// Registers every secret of `values` under `what`; returns how many there were.
    pub fn forbid_all<S: AsRef<str>>(
        &mut self,
        what: &str,
        values: impl IntoIterator<Item = S>,
    ) -> usize {
        let mut n = 0;
        for v in values {
            self.forbid(what, v);
            n += 1;
        }
        n
    }

    /// Registers a PEM private key: the whole text and each line of its base64 body.
    pub fn forbid_pem_key(&mut self, what: &str, pem: &str) {
        self.forbid(what, pem);
        for line in pem.lines().map(str::trim) {
            if line.len() >= 16 && !line.starts_with("-----") && !line.contains(':') {
                self.forbid(&format!("{what} (a line of it)"), line);
            }
        }
    }

    /// An output (error body, /metrics, /readyz, `Debug`, `patless config`) to check.
    pub fn output(&mut self, what: &str, text: impl Into<String>) {
        self.outputs.push((what.to_string(), text.into()));
    }

    /// Asserts that the capture holds a line with every one of `needles` (so the check is not
    /// vacuous: this test's flow was really logged).
    pub fn expect_logged(&self, needles: &[&str]) {
        let logs = logs();
        assert!(
            logs.lines().any(|l| needles.iter().all(|n| l.contains(n))),
            "{}: no log line with all of {needles:?}; the TRACE capture or the flow is not what \
             this test thinks",
            self.kind
        );
    }

    /// Checks the logs against every registered secret (this test's and every other test's so
    /// far) and this test's outputs against this test's secrets; panics listing every leak, with
    /// the secrets masked.
    pub fn finish(self) {
        assert!(
            !self.forbidden.is_empty(),
            "{}: nothing to look for",
            self.kind
        );
        assert!(!self.outputs.is_empty(), "{}: no output checked", self.kind);
        let logs = logs();
        let installed = format!("{}: {INSTALLED}", module_path!());
        assert!(
            logs.lines()
                .any(|l| l.contains(" TRACE ") && l.ends_with(&installed)),
            "the capture does not hold TRACE events"
        );
        let all: Vec<(String, String)> = lock(&FORBIDDEN).clone();
        let mut leaks = Vec::new();
        // One search of the whole capture per secret (it holds every test's logs, megabytes);
        // the lines only when there is a leak to show.
        for (label, secret) in all.iter().filter(|(_, s)| logs.contains(s.as_str())) {
            for line in logs.lines().filter(|l| l.contains(secret.as_str())) {
                leaks.push(format!("[{label}] in the logs: {}", mask(line, &all, 400)));
            }
        }
        for (label, secret) in &self.forbidden {
            for (what, text) in &self.outputs {
                if let Some(at) = text.find(secret.as_str()) {
                    let start = floor_char(text, at.saturating_sub(160));
                    let end = floor_char(text, (at + secret.len() + 160).min(text.len()));
                    leaks.push(format!(
                        "[{label}] in {what}: …{}…",
                        mask(&text[start..end], &all, 600)
                    ));
                }
            }
        }
        assert!(
            leaks.is_empty(),
            "{}: {} secret leak(s):\n{}",
            self.kind,
            leaks.len(),
            leaks.join("\n")
        );
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// `text` with every registered secret replaced by `<label>`, cut to `max` characters.
fn mask(text: &str, all: &[(String, String)], max: usize) -> String {
    let mut sorted: Vec<&(String, String)> = all.iter().collect();
    sorted.sort_by_key(|(_, s)| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for (label, secret) in sorted {
        out = out.replace(secret.as_str(), &format!("<{label}>"));
    }
    if out.chars().count() > max {
        out = out.chars().take(max).collect::<String>() + "…";
    }
    out
}
