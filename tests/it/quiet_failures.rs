//! A patless left without a credential does not fill a disk (docs/troubleshooting.md): the same
//! failure of a profile — whatever scope, whatever backoff attempt — is one WARN, then a
//! `still failing` summary a minute at most; `auto`'s long "Tried: …" explanation appears once;
//! every attempt is still counted in the metrics; the recovery is one INFO line per profile.
//!
//! On tokio's paused clock (`Patless::start_on_test_clock`), a minute of backoff attempts for
//! two profiles of two routes each, read back from the global log capture. The capture is
//! shared by every test of the binary, so the profiles have names no other test uses.

use std::time::Duration;

use patless::env::MapEnv;
use tokio::time::Instant;

use crate::support::capture;
use crate::support::entra::{FakeEntra, Fault, CLIENT_ID, CLIENT_SECRET, TENANT};
use crate::support::patless::{metric, route_toml, server_toml, Patless, ADO, DEFENDER};
use crate::support::ClosedPort;

/// A `client_secret` profile whose secret Entra refuses (`invalid_client`) until the fault clears.
const SECRET: &str = "quiet-secret";
/// An `auto` profile in an empty environment: no source at all (`not_configured`).
const AUTO: &str = "quiet-auto";

fn config(authority: &str) -> String {
    let mut s = format!(
        "{}\n[entra]\nauthority_host = \"{authority}\"\n\n[profiles.{SECRET}]\nkind = \
         \"client_secret\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret \
         = \"{CLIENT_SECRET}\"\n\n[profiles.{AUTO}]\nkind = \"auto\"\n",
        server_toml("")
    );
    // Two scopes per profile: one refresher each, one failure story per profile.
    for (prefix, profile, scope) in [
        ("/qs-ado", SECRET, ADO),
        ("/qs-defender", SECRET, DEFENDER),
        ("/qa-ado", AUTO, ADO),
        ("/qa-defender", AUTO, DEFENDER),
    ] {
        s.push_str(&route_toml(prefix, "http://127.0.0.1:9", profile, scope));
    }
    s
}

/// The captured lines about `profile` (its `profile=` field, exactly), with their level.
fn lines_of(profile: &str) -> Vec<(String, String)> {
    let field = format!("profile={profile}");
    capture::logs()
        .lines()
        .filter(|l| {
            l.match_indices(&field).any(|(at, _)| {
                l[at + field.len()..]
                    .chars()
                    .next()
                    .is_none_or(char::is_whitespace)
            })
        })
        .map(|l| {
            let level = l.split_whitespace().nth(1).unwrap_or_default().to_string();
            (level, l.to_string())
        })
        .collect()
}

fn at_level<'a>(lines: &'a [(String, String)], level: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|(l, _)| l == level)
        .map(|(_, line)| line.as_str())
        .collect()
}

/// `patless_token_refreshes_total{profile,result}`.
fn refreshes(metrics: &str, profile: &str, result: &str) -> u64 {
    metric(
        metrics,
        &format!(r#"patless_token_refreshes_total{{profile="{profile}",result="{result}"}}"#),
    ) as u64
}

/// Lets `span` of paused time pass in 100-ms steps, so that each backoff's attempt runs when due.
async fn pass(span: Duration) {
    let end = Instant::now() + span;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_profile_without_a_credential_warns_once_a_minute_at_most_and_recovers_in_one_line() {
    capture::init();
    let entra = FakeEntra::start().await;
    entra.set_fault(Some(Fault::InvalidClient));
    // `auto` finds nothing: no variables, no az on a PATH, and IMDS a closed port (answers at
    // once, where the real 169.254.169.254 would be the network's business).
    let imds = ClosedPort::new();
    let env = MapEnv::new([("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url())]);
    let p = Patless::start_on_test_clock_with_env(&config(&entra.authority()), env).await;

    pass(Duration::from_secs(60)).await;

    // An attempt that fell due with the last step may still be on its way: Entra has it, the
    // metrics not yet. Let it land.
    let mut m = p.metrics().await;
    for _ in 0..50 {
        if refreshes(&m, SECRET, "invalid_client") == entra.token_requests() as u64 {
            break;
        }
        tokio::task::yield_now().await;
        m = p.metrics().await;
    }
    let secret_attempts = refreshes(&m, SECRET, "invalid_client");
    let auto_attempts = refreshes(&m, AUTO, "not_configured");
    assert_eq!(
        secret_attempts,
        entra.token_requests() as u64,
        "every attempt is counted"
    );
    for (profile, attempts) in [(SECRET, secret_attempts), (AUTO, auto_attempts)] {
        // Two scopes backing off from 1 s (jittered, capped at 5 min): 6 or 7 attempts each.
        assert!(
            attempts >= 10,
            "{profile}: only {attempts} attempts in a minute: the backoff did not run"
        );
        let lines = lines_of(profile);
        let warns = at_level(&lines, "WARN");
        eprintln!(
            "{profile}: {attempts} attempts, {} WARN lines in a minute",
            warns.len()
        );
        assert!(
            (1..=3).contains(&warns.len()),
            "{profile}: {attempts} attempts gave {} WARN lines:\n{}",
            warns.len(),
            warns.join("\n")
        );
        assert!(
            warns[0].contains("token acquisition failed: "),
            "the first WARN says what failed: {}",
            warns[0]
        );
        // Once for the profile, not once per scope; the rest are summaries.
        let told = warns
            .iter()
            .filter(|l| l.contains("token acquisition failed: "))
            .count();
        assert_eq!(told, 1, "{profile}:\n{}", warns.join("\n"));
        assert!(
            warns[1..].iter().all(|l| l.contains("still failing: ")),
            "{profile}:\n{}",
            warns.join("\n")
        );
        // Every attempt is still there for whoever asks for DEBUG.
        let debug = at_level(&lines, "DEBUG");
        let again = debug
            .iter()
            .filter(|l| l.contains("token acquisition failed again"))
            .count() as u64;
        // (At least: one more may have failed since the metrics were read.)
        assert!(
            again >= attempts - 1,
            "{profile}: {again} DEBUG lines for {attempts} attempts"
        );
    }
    // `auto`'s long explanation of each source it tried: once, in the first WARN (the DEBUG
    // lines carry it per attempt).
    let auto_lines = lines_of(AUTO);
    let tried: Vec<&(String, String)> = auto_lines
        .iter()
        .filter(|(level, l)| level != "DEBUG" && level != "TRACE" && l.contains("Tried:"))
        .collect();
    assert_eq!(tried.len(), 1, "{tried:#?}");
    assert_eq!(tried[0].0, "WARN");

    // Entra takes the secret again: each scope gets a token at its next attempt (the longest
    // backoff so far is about a minute), and the profile says it recovered, once.
    entra.set_fault(None);
    let deadline = Instant::now() + Duration::from_secs(300);
    while refreshes(&p.metrics().await, SECRET, "success") < 2 {
        assert!(Instant::now() < deadline, "no recovery within 5 min");
        pass(Duration::from_secs(1)).await;
    }
    pass(Duration::from_secs(1)).await;
    let failed = refreshes(&p.metrics().await, SECRET, "invalid_client");
    let lines = lines_of(SECRET);
    let recovered: Vec<&str> = at_level(&lines, "INFO")
        .into_iter()
        .filter(|l| l.contains("token acquisition recovered"))
        .collect();
    assert_eq!(recovered.len(), 1, "{recovered:#?}");
    assert!(
        recovered[0].contains(&format!("recovered after {failed} failed attempts")),
        "{}",
        recovered[0]
    );
    assert!(at_level(&lines, "WARN").len() <= 3);
    p.stop().await;
}
