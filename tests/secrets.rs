//! Secret hygiene: with TRACE logging on, run the client-secret happy path, Entra's rejection, an
//! inbound PAT, `Debug` of every structure, and prove that no token, secret or PAT appears in the
//! logs, error bodies, metrics or `Debug` output.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use patless::config::{load_from_str, ConfigSource, Format};
use patless::env::MapEnv;
use support::entra::{FakeEntra, Fault, ADO_AUDIENCE, CLIENT_SECRET};
use support::patless::{config, Patless, ADO};
use support::upstream::FakeUpstream;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const PAT: &str = "ghp-like-stale-PAT-0123456789abcdef";
const ENV_SECRET: &str = "env-provided-secret-XYZ-987";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_in_trace_logs_errors_metrics_or_debug() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let client = support::http_client();
    let mut outputs = Vec::new();

    // Happy path, with a PAT the client still sends.
    let toml = config(&entra, &[("/ado", &up.url(), ADO)], "", "");
    let p = Patless::start(&toml).await;
    let r = client
        .get(p.url("/ado/org/_apis/projects"))
        .basic_auth("", Some(PAT))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    // (The body is the fake upstream's echo of what it received, token included: not patless output.)
    outputs.push(p.metrics().await);
    outputs.push(
        client
            .get(p.admin_url("/readyz"))
            .send()
            .await
            .expect("r")
            .text()
            .await
            .expect("t"),
    );
    p.stop().await;

    // Entra refuses the secret; the secret comes from the environment this time.
    entra.set_fault(Some(Fault::InvalidClient));
    let env_toml = toml.replace(
        &format!("client_secret = \"{CLIENT_SECRET}\""),
        "client_secret = { env = \"BOT_SECRET\" }",
    );
    let env = MapEnv::new([("BOT_SECRET", ENV_SECRET)]);
    let p = Patless::start_with_env(&env_toml, env.clone()).await;
    let r = client
        .get(p.url("/ado/x"))
        .bearer_auth(PAT)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 503);
    outputs.push(r.text().await.expect("body"));
    outputs.push(
        client
            .get(p.admin_url("/readyz"))
            .send()
            .await
            .expect("r")
            .text()
            .await
            .expect("t"),
    );
    p.stop().await;

    // Debug of the loaded config (literal and env secrets) and of the redacted raw form.
    let loaded = load_from_str(&toml, Format::Toml, ConfigSource::Embedded, &env).expect("config");
    outputs.push(format!("{loaded:?}"));
    outputs.push(toml::to_string(&loaded.raw.redacted()).expect("toml"));
    let loaded =
        load_from_str(&env_toml, Format::Toml, ConfigSource::Embedded, &env).expect("config");
    outputs.push(format!("{loaded:?}"));

    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        logs.contains("token acquired"),
        "TRACE capture is not working:\n{logs}"
    );
    assert!(
        logs.contains("AADSTS7000215"),
        "the failure is logged, explained"
    );
    let tokens = entra.issued_tokens();
    assert!(!tokens.is_empty());
    let mut forbidden: Vec<String> = vec![CLIENT_SECRET.into(), ENV_SECRET.into(), PAT.into()];
    forbidden.extend(tokens);
    // A token's signature alone is as good as a leak: check the last segment too.
    let sigs: Vec<String> = forbidden
        .iter()
        .filter_map(|t| {
            t.rsplit('.')
                .next()
                .filter(|s| s.len() > 20)
                .map(str::to_string)
        })
        .collect();
    forbidden.extend(sigs);
    for secret in &forbidden {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret leaked into the logs"
        );
        for (i, out) in outputs.iter().enumerate() {
            assert!(
                !out.contains(secret.as_str()),
                "a secret leaked into output #{i}"
            );
        }
    }
    // The upstream did get the token: the check above is not vacuous.
    assert_eq!(up.accepted(), 1);
}
