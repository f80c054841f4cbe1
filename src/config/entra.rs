//! `[entra]`: where tokens come from (the authority host, the default tenant), the extra trust
//! roots and the timeout of one token request.

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::check::{authority, duration, tenant, Errors};
use super::defaults;
use super::effective::duration_text;
use super::raw::RawEntra;
use crate::env::Environment;
use crate::hosts;

/// `[entra]`, validated.
#[derive(Debug, Clone)]
pub struct EntraConfig {
    /// Authority host (`https://login.microsoftonline.com`).
    pub authority_host: Url,
    /// Default tenant.
    pub tenant_id: Option<String>,
    /// Extra trust roots.
    pub ca_file: Option<PathBuf>,
    /// Timeout of one token request.
    pub request_timeout: Duration,
}

/// Validates `[entra]`. The authority host defaults to `AZURE_AUTHORITY_HOST`, else the public
/// cloud ([`hosts::PUBLIC_AUTHORITY`]).
pub(super) fn validate(errs: &mut Errors, raw: &RawEntra, env: &dyn Environment) -> EntraConfig {
    let authority_text = raw
        .authority_host
        .clone()
        .or_else(|| crate::env::non_empty(env, "AZURE_AUTHORITY_HOST"))
        .unwrap_or_else(|| hosts::PUBLIC_AUTHORITY.to_string());
    let authority_host = authority(errs, "entra.authority_host", &authority_text)
        .unwrap_or_else(|| Url::parse(hosts::PUBLIC_AUTHORITY).expect("constant URL"));
    if let Some(t) = &raw.tenant_id {
        tenant(errs, "entra.tenant_id", t);
    }
    if let Some(ca) = &raw.ca_file {
        if !ca.is_file() {
            errs.add(
                "entra.ca_file",
                format!(
                    "{} does not exist; expected a PEM file of CA certificates",
                    ca.display()
                ),
            );
        }
    }
    EntraConfig {
        authority_host,
        tenant_id: raw.tenant_id.clone(),
        ca_file: raw.ca_file.clone(),
        request_timeout: duration(
            errs,
            "entra.request_timeout",
            &raw.request_timeout,
            defaults::ENTRA_REQUEST_TIMEOUT,
        ),
    }
}

impl EntraConfig {
    /// `[entra]` as `patless config` prints it.
    pub(super) fn to_raw(&self) -> RawEntra {
        RawEntra {
            authority_host: Some(
                self.authority_host
                    .as_str()
                    .trim_end_matches('/')
                    .to_string(),
            ),
            tenant_id: self.tenant_id.clone(),
            ca_file: self.ca_file.clone(),
            request_timeout: Some(duration_text(self.request_timeout)),
        }
    }
}
