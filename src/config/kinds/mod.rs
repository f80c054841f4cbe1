//! The credential kinds, declared once. Each entry of [`KINDS`] says what `kind = "…"` is called,
//! which keys the kind requires and which it accepts, whether it may declare client capabilities
//! and whether a person signs in for it, how its keys become a [`ProfileKind`] (`parse`) and print
//! back for `patless config` (`print`), and which constructor builds its credential (`build`, in
//! `credentials/factory.rs`). Profile validation, `patless config`, `patless check`,
//! `patless login` and the credential factory all read it; docs/credentials.md describes each kind
//! for users.
//!
//! Adding a kind: its credential module and constructor, a [`ProfileKind`] variant for its
//! settings, an entry here with its `parse` and `print`, and the arm of [`ProfileKind::spec`] that
//! leads to the entry (the compiler asks for that one). The `parse` and `print` functions are in
//! `kinds/keys.rs`, in the order of this table.

mod keys;

use std::fmt;

pub(in crate::config) use keys::Settings;

use super::raw::RawProfile;
use super::{Profile, ProfileKind};
use crate::credentials::{factory, Built, CredentialContext};

/// One credential kind: its keys, and the functions that read, print and build it.
pub struct KindSpec {
    /// The name written as `kind = "…"`.
    pub name: &'static str,
    /// The keys it cannot do without, each with what the error says was expected when it is
    /// missing. `tenant_id` may come from `[entra] tenant_id`.
    pub required: &'static [(&'static str, &'static str)],
    /// The other keys it takes. Every kind also takes `tenant_id` and `authority_host`.
    pub optional: &'static [&'static str],
    /// Whether its token requests can carry a claims request, so that it may declare client
    /// capabilities (`cp1`, for continuous access evaluation).
    pub sends_claims: bool,
    /// Whether a person signs in for it, once, with `patless login`.
    pub signs_in: bool,
    /// Its keys → its settings. The required keys are known to be present; problems go to
    /// [`Settings::error`].
    pub(super) parse: fn(&mut Settings<'_>) -> Option<ProfileKind>,
    /// Its settings → its keys (secrets redacted), for `patless config`.
    pub(super) print: fn(&ProfileKind, &mut RawProfile),
    /// Its credential, with where the tokens come from; `None` for another kind's settings.
    pub(crate) build: fn(&Profile, &CredentialContext) -> Option<Built>,
}

impl KindSpec {
    /// Every key it takes besides `tenant_id` and `authority_host`, required ones first.
    pub fn keys(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.required
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| *k != "tenant_id")
            .chain(self.optional.iter().copied())
    }
}

impl fmt::Debug for KindSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KindSpec({})", self.name)
    }
}

/// Every kind, in the order error messages list them.
pub static KINDS: [&KindSpec; 10] = [
    &CLIENT_SECRET,
    &CLIENT_CERTIFICATE,
    &MANAGED_IDENTITY,
    &WORKLOAD_IDENTITY,
    &AZURE_PIPELINES,
    &AZURE_CLI,
    &AZURE_DEVELOPER_CLI,
    &DEVICE_CODE,
    &INTERACTIVE_BROWSER,
    &AUTO,
];

/// The kind called `name`, if there is one.
pub fn lookup(name: &str) -> Option<&'static KindSpec> {
    KINDS.iter().copied().find(|k| k.name == name)
}

/// Every kind's name, comma-separated (`expected one of …`).
pub fn names() -> String {
    KINDS.map(|k| k.name).join(", ")
}

/// The kinds a person signs in for, as a phrase: `sign_in_names("and")` is
/// `device_code and interactive_browser`.
pub fn sign_in_names(conjunction: &str) -> String {
    let names: Vec<&str> = KINDS
        .iter()
        .filter(|k| k.signs_in)
        .map(|k| k.name)
        .collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => {
            format!("{} {conjunction} {last}", rest.join(", "))
        }
        _ => names.join(""),
    }
}

const TENANT: (&str, &str) = ("tenant_id", "the tenant GUID (or set [entra] tenant_id)");
const APP: (&str, &str) = ("client_id", "the application (client) id");
const SIGN_IN_TENANT: (&str, &str) = (
    "tenant_id",
    "the tenant GUID, or \"organizations\" for any work account",
);
const PUBLIC_APP: (&str, &str) = (
    "client_id",
    "the public client's application id (see the README: app registration for login)",
);
const SIGN_IN_APP: (&str, &str) = (
    "client_id",
    "the application id people sign in to: a public client, or a web app with client_secret or certificate",
);

pub(super) static CLIENT_SECRET: KindSpec = KindSpec {
    name: "client_secret",
    required: &[
        TENANT,
        APP,
        (
            "client_secret",
            "a literal, { env = \"NAME\" } or { file = \"PATH\" }",
        ),
    ],
    optional: &[],
    sends_claims: true,
    signs_in: false,
    parse: keys::parse_client_secret,
    print: keys::print_client_secret,
    build: factory::client_secret,
};

pub(super) static CLIENT_CERTIFICATE: KindSpec = KindSpec {
    name: "client_certificate",
    required: &[
        TENANT,
        APP,
        (
            "certificate",
            "the path of a PEM (certificate and private key) or PFX file",
        ),
    ],
    optional: &[
        "certificate_key",
        "certificate_password",
        "send_certificate_chain",
    ],
    sends_claims: true,
    signs_in: false,
    parse: keys::parse_client_certificate,
    print: keys::print_client_certificate,
    build: factory::client_certificate,
};

pub(super) static MANAGED_IDENTITY: KindSpec = KindSpec {
    name: "managed_identity",
    required: &[],
    optional: &["client_id", "object_id", "resource_id", "endpoint"],
    sends_claims: false,
    signs_in: false,
    parse: keys::parse_managed_identity,
    print: keys::print_managed_identity,
    build: factory::managed_identity,
};

pub(super) static WORKLOAD_IDENTITY: KindSpec = KindSpec {
    name: "workload_identity",
    required: &[],
    optional: &["client_id", "token_file"],
    sends_claims: true,
    signs_in: false,
    parse: keys::parse_workload_identity,
    print: keys::print_workload_identity,
    build: factory::workload_identity,
};

pub(super) static AZURE_PIPELINES: KindSpec = KindSpec {
    name: "azure_pipelines",
    required: &[],
    optional: &["client_id", "service_connection_id", "system_access_token"],
    sends_claims: true,
    signs_in: false,
    parse: keys::parse_azure_pipelines,
    print: keys::print_azure_pipelines,
    build: factory::azure_pipelines,
};

pub(super) static AZURE_CLI: KindSpec = KindSpec {
    name: "azure_cli",
    required: &[],
    optional: &["subscription"],
    sends_claims: false,
    signs_in: false,
    parse: keys::parse_azure_cli,
    print: keys::print_azure_cli,
    build: factory::azure_cli,
};

pub(super) static AZURE_DEVELOPER_CLI: KindSpec = KindSpec {
    name: "azure_developer_cli",
    required: &[],
    optional: &[],
    sends_claims: false,
    signs_in: false,
    parse: keys::parse_azure_developer_cli,
    print: keys::print_azure_developer_cli,
    build: factory::azure_developer_cli,
};

pub(super) static DEVICE_CODE: KindSpec = KindSpec {
    name: "device_code",
    required: &[SIGN_IN_TENANT, PUBLIC_APP],
    optional: &[],
    sends_claims: true,
    signs_in: true,
    parse: keys::parse_device_code,
    print: keys::print_device_code,
    build: factory::stored_login,
};

pub(super) static INTERACTIVE_BROWSER: KindSpec = KindSpec {
    name: "interactive_browser",
    required: &[SIGN_IN_TENANT, SIGN_IN_APP],
    // A web (confidential) app adds its secret or certificate, as the client_secret and
    // client_certificate kinds take them, and the redirect URI registered on it.
    optional: &[
        "redirect_port",
        "redirect_uri",
        "client_secret",
        "certificate",
        "certificate_key",
        "certificate_password",
        "send_certificate_chain",
    ],
    sends_claims: true,
    signs_in: true,
    parse: keys::parse_interactive_browser,
    print: keys::print_interactive_browser,
    build: factory::stored_login,
};

pub(super) static AUTO: KindSpec = KindSpec {
    name: "auto",
    required: &[],
    optional: &["client_id"],
    sends_claims: true,
    signs_in: false,
    parse: keys::parse_auto,
    print: keys::print_auto,
    build: factory::auto,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_from_str, ConfigSource, Format};
    use crate::env::MapEnv;

    #[test]
    fn every_key_the_table_names_is_a_profile_key() {
        let known: Vec<&str> = RawProfile::default()
            .kind_keys()
            .iter()
            .map(|(k, _)| *k)
            .chain(["tenant_id"])
            .collect();
        for kind in KINDS {
            for key in kind.required.iter().map(|(k, _)| *k).chain(kind.keys()) {
                assert!(known.contains(&key), "{}: {key}", kind.name);
            }
            assert_eq!(lookup(kind.name).map(|k| k.name), Some(kind.name));
        }
    }

    #[test]
    fn each_kind_parses_prints_and_leads_back_to_its_entry() {
        for kind in KINDS {
            let mut toml = format!(
                "[entra]\ntenant_id = \"t\"\n[profiles.p]\nkind = \"{}\"\n",
                kind.name
            );
            for (key, _) in kind.required.iter().filter(|(k, _)| *k != "tenant_id") {
                toml.push_str(&format!("{key} = \"x\"\n"));
            }
            let loaded = load_from_str(
                &toml,
                Format::Toml,
                ConfigSource::Embedded,
                &MapEnv::default(),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", kind.name));
            let profile = &loaded.config.profiles["p"];
            assert_eq!(profile.kind.spec().name, kind.name);
            let printed = loaded.config.effective(&loaded.raw);
            assert_eq!(printed.profiles["p"].kind.as_deref(), Some(kind.name));
        }
    }

    #[test]
    fn sign_in_kinds_read_as_a_sentence() {
        assert_eq!(sign_in_names("and"), "device_code and interactive_browser");
    }
}
