//! `patless serve`: bind, run, reload on SIGHUP, stop on SIGTERM/SIGINT, and stop at once on a
//! second one.

use std::path::PathBuf;
use std::process::ExitCode;

use super::out::errln;
use super::EXIT_CONFIG;
use crate::app::{App, Listeners};
use crate::config::LoadedConfig;
use crate::env::Env;

/// What the first SIGTERM/SIGINT's log line says about the second.
const STOP_NOW_HINT: &str = "press Ctrl-C again (or send another SIGTERM) to stop now";

pub(super) async fn serve(loaded: LoadedConfig, env: Env, explicit: Option<PathBuf>) -> ExitCode {
    tracing::info!(config = %loaded.source, "patless {} starting", env!("CARGO_PKG_VERSION"));
    // First, so a SIGHUP from now on reloads rather than ends the process.
    let Some(signals) = Signals::install() else {
        errln!("patless: cannot install the signal handlers");
        return ExitCode::FAILURE;
    };
    let source = loaded.source.clone();
    let app = match App::new(loaded.config, env, prometheus::Registry::new()) {
        Ok(a) => a,
        Err(e) => {
            errln!("patless: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let listeners = match Listeners::bind(&app.config).await {
        Ok(l) => l,
        Err(e) => {
            errln!("patless: {e}");
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
            let _ = stops.wait_for(|s| !s.is_empty()).await;
        },
        stop_now_hint: Some(STOP_NOW_HINT),
        reload: Some(crate::app::reload::Reloader::new(
            explicit, source, requests,
        )),
        worker_threads: true,
    };
    tokio::select! {
        () = crate::app::run_with(listeners, app, options) => ExitCode::SUCCESS,
        // The second stops everything now: the delay, the drain, the requests in flight. The
        // caller ends the process, and with it the worker threads and their connections.
        stop = async move {
            match second.wait_for(|s| s.len() >= 2).await {
                Ok(s) => s[1],
                Err(_) => std::future::pending().await,
            }
        } => {
            tracing::warn!(
                "{} again: stopping now, without waiting for requests in flight",
                stop.name()
            );
            ExitCode::from(stop.exit_code())
        }
    }
}

/// A signal that stops `serve`.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Term,
    Int,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Term => "SIGTERM",
            Stop::Int => "SIGINT",
        }
    }

    /// 128 + the signal's number, as a shell reports a process the signal ended.
    fn exit_code(self) -> u8 {
        match self {
            Stop::Term => 128 + 15,
            Stop::Int => 128 + 2,
        }
    }
}

/// The signals `serve` acts on: SIGTERM/SIGINT in the order they came (the first starts the
/// shutdown, a second ends the process at once), SIGHUP caught (reload).
struct Signals {
    stops: tokio::sync::watch::Receiver<Vec<Stop>>,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok()?;
        let mut int = signal(SignalKind::interrupt()).ok()?;
        let hup = signal(SignalKind::hangup()).ok()?;
        let (stop_tx, stops) = tokio::sync::watch::channel(Vec::new());
        tokio::spawn(async move {
            loop {
                let stop = tokio::select! {
                    _ = term.recv() => Stop::Term,
                    _ = int.recv() => Stop::Int,
                };
                // The first starts the shutdown, whose log line follows; a second says itself.
                if stop_tx.borrow().is_empty() {
                    tracing::info!("{}", stop.name());
                }
                stop_tx.send_modify(|s| s.push(stop));
            }
        });
        Some(Signals { stops, hup })
    }
}
