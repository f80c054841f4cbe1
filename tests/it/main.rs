//! The integration tests: one binary, one module per capability, and `support/` (fake Entra,
//! fake upstreams, fake CLIs and managed-identity endpoints, config builders) linked once.
//! `cargo test --test it NAME` runs the tests whose path holds NAME (`it proxy::`, `it refresh`).
//!
//! Every test of every module runs in this one process, in parallel, so no test may change what
//! the process shares:
//! - the environment: patless reads it through an injected `patless::env::MapEnv`, so a test
//!   hands it one instead of calling `std::env::set_var`; child processes get theirs with
//!   `Command::env_clear()` and `.env(…)`, and their working directory with `.current_dir(…)`;
//! - the global `tracing` subscriber: [`support::capture::init`] installs the one TRACE capture
//!   for the whole binary (it holds what the proxy's worker threads log too), and tests read it
//!   with [`support::capture::logs`];
//! - the rustls default crypto provider: [`support::install_crypto_provider`] (idempotent);
//! - Prometheus: every `App` gets a `Registry` of its own;
//! - ports: every listener binds `127.0.0.1:0`, the real binary's too (`PatlessProcess` reads
//!   the addresses from its log); the fixed addresses in configs are never bound.
//!
//! patless runs as `patless serve` runs it: [`support::patless::Patless`] serves the proxy on
//! worker threads of its own (the config's `server.workers`; 2 when a config given as text sets
//! none), with their own runtimes on the real clock. Only a test on tokio's paused clock
//! (`start_paused = true`, `time::pause()`) starts it with `Patless::start_on_test_clock`, which
//! serves the proxy on the test's runtime so that `advance()` moves the proxy's time too.
//!
//! A test that drives a real client (git, curl, the Azure SDKs for Python and Node) fails when the
//! client is missing, unless `PATLESS_SKIP_CLIENTS` names it ([`support::clients`]); `bash
//! .ci/setup` installs them all.
//!
//! `tests/soak.rs` is its own binary (it counts the process's allocations) and reuses `support/`.

mod support;

// The proxy's road: routing, injection, answers, refusals, faults.
mod egress_proxy;
mod host_routes;
mod idle_connections;
mod paging;
mod path_props;
mod proxy;
mod replay;
mod request_edges;
mod security;
mod upstream_faults;
mod upstream_http2;
mod workers;

// Tokens: the cache, refresh, Entra failing (and what the log says), the refresh-token store.
mod entra_faults;
mod quiet_failures;
mod refresh;
mod token_store;

// Credential kinds, one module each.
mod auto;
mod azure_cli;
mod azure_developer_cli;
mod azure_pipelines;
mod client_certificate;
mod device_code;
mod interactive_browser;
mod managed_identity;
mod web_app_login;
mod workload_identity;

// The process: CLI, config, reload, shutdown, admin, the identity endpoint (App Service's
// protocol, and IMDS's).
mod admin;
mod cli;
mod config;
mod first_minutes;
mod identity_endpoint;
mod imds_endpoint;
mod logs;
mod manners;
mod reload;
mod shutdown;

// Across everything: secret hygiene, real clients and tools, deploy/ against a live scrape.
mod deploy_metrics;
mod git;
mod package_feeds;
mod rest_clients;
mod secrets;

// The fakes themselves.
mod artifacts_selftest;
mod support_selftest;
