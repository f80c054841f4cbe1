//! Raw → validated, section by section, in the order of the file: `[server]`, `[entra]`,
//! `[profiles]`, `[[routes]]`, `[identity_endpoint]`, `[logging]`. Every problem is collected (not just the
//! first), each naming its key and what was expected; the later sections cross-check the earlier
//! ones (every route's profile exists, every scope is known or given, listeners do not collide).

use super::check::Errors;
use super::raw::RawConfig;
use super::{entra, identity_endpoint, logging, profiles, routes, server, Config, KeyError};
use crate::env::Environment;

pub(super) fn validate(raw: &RawConfig, env: &dyn Environment) -> Result<Config, Vec<KeyError>> {
    let mut errs = Errors::default();
    let server = server::validate(&mut errs, &raw.server, env);
    let entra = entra::validate(&mut errs, &raw.entra, env);
    let profiles = profiles::validate(&mut errs, raw, &server, &entra);
    let routes = routes::validate(&mut errs, &raw.routes, &profiles, &raw.profiles);
    let identity_endpoint = raw.identity_endpoint.as_ref().and_then(|ie| {
        let cx = identity_endpoint::Context {
            server: &server,
            profiles: &profiles,
            raw_profiles: &raw.profiles,
            routes: &routes,
        };
        identity_endpoint::validate(&mut errs, ie, &cx)
    });
    let logging = logging::validate(&mut errs, &raw.logging);
    errs.or(Config {
        server,
        entra,
        profiles,
        routes,
        identity_endpoint,
        logging,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{load_from_str, ConfigError, ConfigSource, Format};
    use crate::env::MapEnv;

    fn errors(toml: &str) -> Vec<String> {
        match load_from_str(
            toml,
            Format::Toml,
            ConfigSource::Embedded,
            &MapEnv::default(),
        ) {
            Err(ConfigError::Invalid { errors, .. }) => {
                errors.iter().map(|e| e.to_string()).collect()
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn non_loopback_listen_needs_an_explicit_opt_in() {
        let errs = errors("[server]\nlisten = \"0.0.0.0:7070\"\n");
        assert!(
            errs.iter()
                .any(|e| e.starts_with("server.listen:") && e.contains("not a loopback")),
            "{errs:?}"
        );
        let ok = load_from_str(
            "[server]\nlisten = \"0.0.0.0:7070\"\nallow_unauthenticated_clients = true\n",
            Format::Toml,
            ConfigSource::Embedded,
            &MapEnv::default(),
        );
        assert!(ok.is_ok(), "{ok:?}");
        for loopback in ["127.0.0.1:7070", "[::1]:7070", "unix:/run/patless.sock"] {
            let toml = format!("[server]\nlisten = \"{loopback}\"\n");
            assert!(
                load_from_str(
                    &toml,
                    Format::Toml,
                    ConfigSource::Embedded,
                    &MapEnv::default()
                )
                .is_ok(),
                "{loopback}"
            );
        }
    }
}
