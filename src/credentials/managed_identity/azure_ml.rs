//! Azure Machine Learning compute: the platform sets `MSI_ENDPOINT` and `MSI_SECRET`. The request
//! is `GET {endpoint}?api-version=2017-09-01&resource=R` with `Metadata: true` and the secret in a
//! `secret` header. Only a client id can choose a user-assigned identity (`clientid=`); without
//! one, the compute's `DEFAULT_IDENTITY_CLIENT_ID` is sent when the platform set it.

use http::HeaderName;
use url::Url;

use super::answer::Failure;
use super::{endpoint_url, id_key, metadata, sensitive, with_query, Source, METADATA};
use crate::config::ManagedIdentityId;
use crate::secret::Secret;

const AZURE_ML_API: &str = "2017-09-01";
static ML_SECRET: HeaderName = HeaderName::from_static("secret");

/// The source `MSI_ENDPOINT` and `MSI_SECRET` describe, or why it cannot serve identity `id`.
pub(super) fn source(
    endpoint: &str,
    secret: String,
    id: Option<&ManagedIdentityId>,
    default_client_id: Option<String>,
) -> Source {
    let url = match endpoint_url("MSI_ENDPOINT", endpoint) {
        Ok(url) => url,
        Err(message) => return Source::Unavailable { message },
    };
    match id {
        None | Some(ManagedIdentityId::ClientId(_)) => Source::AzureMl {
            url,
            secret: Secret::new(secret),
            default_client_id,
        },
        Some(other) => Source::Unavailable {
            message: format!(
                "managed identity: Azure Machine Learning (MSI_ENDPOINT and MSI_SECRET are set) \
                 selects a user-assigned identity by client_id only, not by {}: set client_id in \
                 the profile instead",
                id_key(other)
            ),
        },
    }
}

/// The token request for `resource`, the secret header marked sensitive.
pub(super) fn request(
    http: &reqwest::Client,
    url: &Url,
    secret: &Secret,
    default_client_id: &Option<String>,
    resource: &str,
    id: Option<&ManagedIdentityId>,
) -> Result<reqwest::RequestBuilder, Failure> {
    let mut pairs = vec![("api-version", AZURE_ML_API), ("resource", resource)];
    let client_id = match id {
        Some(ManagedIdentityId::ClientId(c)) => Some(c),
        _ => default_client_id.as_ref(),
    };
    if let Some(c) = client_id {
        pairs.push(("clientid", c.as_str()));
    }
    Ok(http
        .get(with_query(url, &pairs))
        .header(&METADATA, metadata())
        .header(&ML_SECRET, sensitive(secret.expose())?))
}
