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
    let server = server::validate(&mut errs, &raw.server, raw.profiles.keys(), env);
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

    fn loaded(toml: &str) -> crate::config::Config {
        load_from_str(
            toml,
            Format::Toml,
            ConfigSource::Embedded,
            &MapEnv::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .config
    }

    const PROFILE: &str = "kind = \"azure_cli\"\n";

    #[test]
    fn the_default_profile_is_the_key_else_the_only_profile_else_auto() {
        use crate::config::DefaultProfileChoice as Choice;
        let none = loaded("");
        assert_eq!(none.server.default_profile, "auto");
        assert_eq!(none.server.default_profile_choice, Choice::NoProfiles);
        assert!(none.profiles.contains_key("auto"), "host routes need it");

        let one = loaded(&format!("[profiles.ado-bot]\n{PROFILE}"));
        assert_eq!(one.server.default_profile, "ado-bot");
        assert_eq!(one.server.default_profile_choice, Choice::OnlyProfile);
        assert_eq!(one.profiles.keys().collect::<Vec<_>>(), ["ado-bot"]);
        assert_eq!(
            one.server.default_profile_hint(true).as_deref(),
            Some(
                "the default profile is `ado-bot`, the only profile defined under [profiles]; \
                 name another with --profile NAME, or set server.default_profile"
            )
        );

        let two = loaded(&format!("[profiles.a]\n{PROFILE}[profiles.b]\n{PROFILE}"));
        assert_eq!(two.server.default_profile, "auto");
        assert_eq!(
            two.server.default_profile_choice,
            Choice::SeveralProfiles(2)
        );
        assert!(two.profiles.contains_key("auto"), "host routes are on");
        let hint = two.server.default_profile_hint(false).expect("a hint");
        assert!(hint.contains("2 profiles"), "{hint}");
        assert!(
            hint.ends_with("set server.default_profile to pick another"),
            "{hint}"
        );

        let set = loaded(&format!(
            "[server]\ndefault_profile = \"b\"\n[profiles.a]\n{PROFILE}[profiles.b]\n{PROFILE}"
        ));
        assert_eq!(set.server.default_profile, "b");
        assert_eq!(set.server.default_profile_choice, Choice::Configured);
        assert_eq!(set.server.default_profile_hint(true), None);
        assert!(!set.profiles.contains_key("auto"));
    }

    #[test]
    fn a_route_may_name_the_implicit_auto_beside_another_profile() {
        let c = loaded(&format!(
            "[server]\nhost_routes = false\n[profiles.ado-bot]\n{PROFILE}\
             [[routes]]\nprefix = \"/me\"\nupstream = \"https://dev.azure.com\"\nprofile = \"auto\"\n"
        ));
        assert_eq!(c.server.default_profile, "ado-bot");
        assert_eq!(c.profiles.keys().collect::<Vec<_>>(), ["ado-bot", "auto"]);
        assert_eq!(c.routes[0].profile, "auto");
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
