//! `patless serve`: bind, run, reload on SIGHUP, stop on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use super::EXIT_CONFIG;
use crate::app::{App, Listeners};
use crate::config::LoadedConfig;
use crate::env::Env;

pub(super) async fn serve(loaded: LoadedConfig, env: Env, explicit: Option<PathBuf>) -> ExitCode {
    tracing::info!(config = %loaded.source, "patless {} starting", env!("CARGO_PKG_VERSION"));
    // First, so a SIGHUP from now on reloads rather than ends the process.
    let Some(signals) = Signals::install() else {
        eprintln!("patless: cannot install the signal handlers");
        return ExitCode::FAILURE;
    };
    let source = loaded.source.clone();
    let app = match App::new(loaded.config, env, prometheus::Registry::new()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("patless: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let listeners = match Listeners::bind(&app.config).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("patless: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (handle, requests) = crate::app::reload::channel();
    let Signals { mut stops, mut hup } = signals;
    let mut second = stops.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            // One pending reload is enough: SIGHUPs that arrive meanwhile merge into it.
            handle.request();
        }
    });
    let options = crate::app::RunOptions {
        shutdown: async move {
            let _ = stops.wait_for(|n| *n >= 1).await;
        },
        hurry: Some(Box::pin(async move {
            let _ = second.wait_for(|n| *n >= 2).await;
        })),
        reload: Some(crate::app::reload::Reloader::new(
            explicit, source, requests,
        )),
        worker_threads: true,
    };
    crate::app::run_with(listeners, app, options).await;
    ExitCode::SUCCESS
}

/// The signals `serve` acts on: SIGTERM/SIGINT counted (the first stops patless, a second skips
/// the shutdown delay), SIGHUP caught (reload).
struct Signals {
    stops: tokio::sync::watch::Receiver<u32>,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok()?;
        let mut int = signal(SignalKind::interrupt()).ok()?;
        let hup = signal(SignalKind::hangup()).ok()?;
        let (stop_tx, stops) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM"),
                    _ = int.recv() => tracing::info!("SIGINT"),
                }
                stop_tx.send_modify(|n| *n += 1);
            }
        });
        Some(Signals { stops, hup })
    }
}
