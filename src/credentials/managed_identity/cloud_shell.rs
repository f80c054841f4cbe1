//! Azure Cloud Shell: the platform sets `MSI_ENDPOINT` alone. The request is `POST {endpoint}` with
//! the form `resource=R` and `Metadata: true`; the token is the signed-in user's, so no identity
//! can be chosen.

use url::Url;

use super::{endpoint_url, id_key, metadata, Source, METADATA};
use crate::config::ManagedIdentityId;

/// The source `MSI_ENDPOINT` describes, or why it cannot serve identity `id`.
pub(super) fn source(endpoint: &str, id: Option<&ManagedIdentityId>) -> Source {
    let url = match endpoint_url("MSI_ENDPOINT", endpoint) {
        Ok(url) => url,
        Err(message) => return Source::Unavailable { message },
    };
    match id {
        None => Source::CloudShell { url },
        Some(other) => Source::Unavailable {
            message: format!(
                "managed identity: Cloud Shell (MSI_ENDPOINT is set) gives only the signed-in \
                 user's identity: remove {} from the profile",
                id_key(other)
            ),
        },
    }
}

/// The token request for `resource`.
pub(super) fn request(
    http: &reqwest::Client,
    url: &Url,
    resource: &str,
) -> reqwest::RequestBuilder {
    http.post(url.clone())
        .header(&METADATA, metadata())
        .form(&[("resource", resource)])
}
