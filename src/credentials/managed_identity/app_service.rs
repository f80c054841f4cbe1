//! App Service, Functions and Container Apps: the platform sets `IDENTITY_ENDPOINT` (a loopback
//! URL) and `IDENTITY_HEADER` (a secret it rotates when the app restarts). The request is
//! `GET {endpoint}?api-version=2019-08-01&resource=R` with the secret in `X-IDENTITY-HEADER`; a
//! user-assigned identity is chosen by `client_id`, `principal_id` (its object id) or `mi_res_id`.

use url::Url;

use super::answer::Failure;
use super::{endpoint_url, id_param, sensitive, with_query, Source};
use crate::config::ManagedIdentityId;
use crate::header_names::IDENTITY_HEADER;
use crate::secret::Secret;

const APP_SERVICE_API: &str = "2019-08-01";

/// The source `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` describe.
pub(super) fn source(endpoint: &str, header: String) -> Source {
    match endpoint_url("IDENTITY_ENDPOINT", endpoint) {
        Ok(url) => Source::AppService {
            url,
            header: Secret::new(header),
        },
        Err(message) => Source::Unavailable { message },
    }
}

/// The token request for `resource`, the secret header marked sensitive.
pub(super) fn request(
    http: &reqwest::Client,
    url: &Url,
    header: &Secret,
    resource: &str,
    id: Option<&ManagedIdentityId>,
) -> Result<reqwest::RequestBuilder, Failure> {
    let mut pairs = vec![("api-version", APP_SERVICE_API), ("resource", resource)];
    pairs.extend(id_param(id, ["client_id", "principal_id", "mi_res_id"]));
    Ok(http
        .get(with_query(url, &pairs))
        .header(&IDENTITY_HEADER, sensitive(header.expose())?))
}
