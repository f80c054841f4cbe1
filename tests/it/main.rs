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
//!   for the whole binary, and tests read it with [`support::capture::logs`];
//! - the rustls default crypto provider: [`support::install_crypto_provider`] (idempotent);
//! - Prometheus: every `App` gets a `Registry` of its own;
//! - ports: every listener binds `127.0.0.1:0`, the real binary's too (`PatlessProcess` reads
//!   the addresses from its log); the fixed addresses in configs are never bound.
//!
//! `tests/soak.rs` is its own binary (it counts the process's allocations) and reuses `support/`.

mod support;

// The proxy's road: routing, injection, answers, refusals, faults.
mod egress_proxy;
mod host_routes;
mod paging;
mod path_props;
mod proxy;
mod replay;
mod request_edges;
mod security;
mod upstream_faults;
mod workers;

// Tokens: the cache, refresh, Entra failing, the refresh-token store.
mod entra_faults;
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
mod workload_identity;

// The process: CLI, config, reload, shutdown, admin, the identity endpoint.
mod admin;
mod cli;
mod config;
mod identity_endpoint;
mod logs;
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
