//! patless: a reverse proxy that injects Microsoft Entra credentials.
//!
//! [`run`] is the one entry point; `main` and the integration tests both call it with listeners
//! they bound themselves and an [`App`] built from a validated config. [`run_with`] adds config
//! reloads (SIGHUP, `server.watch_config`) and a hint on how to stop at once. [`layer::TokenLayer`]
//! is the token layer for other tower stacks. The modules, from the bottom up: `env`, `secret`,
//! `hosts`, `jwt`; `config`; `egress`, `tls`, `store`; `credentials`, `login`; `token`; `proxy`,
//! `layer`; `server` (serving HTTP); `app` (the running patless); `cli`.

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod app;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod egress;
pub mod env;
pub mod error_chain;
pub mod git_credential;
pub mod header_names;
pub mod hosts;
pub mod jwt;
pub mod layer;
pub mod login;
pub mod metrics;
pub mod permissions;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod store;
pub mod tls;
pub mod token;

pub use app::{run, run_with, App, Listeners, ProfileChanges, RunOptions, StartError};
