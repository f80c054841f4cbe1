//! IMDS, the Instance Metadata Service of Azure VMs, scale sets and AKS nodes (and what AKS pod
//! identity puts in its place): `GET {base}/metadata/identity/oauth2/token` with
//! `api-version=2018-02-01`, `resource=R` and `Metadata: true`. A user-assigned identity is chosen
//! by `client_id`, `object_id` or `msi_res_id`. IMDS answers only on the VM itself, at a
//! link-local address, and refuses requests relayed by a proxy; it answers 404 while it is being
//! updated and 410 while a starting VM's identity is not ready (both worth retrying).

use url::Url;

use super::{endpoint_url, id_param, metadata, with_query, Source, METADATA};
use crate::config::ManagedIdentityId;

/// IMDS's address when neither the profile's `endpoint` nor `AZURE_POD_IDENTITY_AUTHORITY_HOST`
/// names another.
pub const IMDS_DEFAULT: &str = "http://169.254.169.254";
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
const IMDS_API: &str = "2018-02-01";

/// IMDS at the profile's `endpoint`, else at `AZURE_POD_IDENTITY_AUTHORITY_HOST` (`pod_host`),
/// else at its default address.
pub(super) fn source(endpoint: Option<&Url>, pod_host: Option<String>) -> Source {
    let (base, origin) = match (endpoint, pod_host) {
        (Some(e), _) => (Ok(e.clone()), "the profile's endpoint"),
        (None, Some(host)) => (
            endpoint_url("AZURE_POD_IDENTITY_AUTHORITY_HOST", &host),
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        ),
        (None, None) => (endpoint_url("the IMDS default", IMDS_DEFAULT), "default"),
    };
    match base {
        Ok(base) => Source::Imds {
            url: imds_token_url(&base),
            origin,
        },
        Err(message) => Source::Unavailable { message },
    }
}

/// The token request for `resource`.
pub(super) fn request(
    http: &reqwest::Client,
    url: &Url,
    resource: &str,
    id: Option<&ManagedIdentityId>,
) -> reqwest::RequestBuilder {
    let mut pairs = vec![("api-version", IMDS_API), ("resource", resource)];
    pairs.extend(id_param(id, ["client_id", "object_id", "msi_res_id"]));
    http.get(with_query(url, &pairs))
        .header(&METADATA, metadata())
}

/// `{base}/metadata/identity/oauth2/token` (a base that already ends so is kept).
fn imds_token_url(base: &Url) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/').to_string();
    if !path.ends_with(IMDS_PATH) {
        url.set_path(&format!("{path}{IMDS_PATH}"));
    }
    url
}

/// `http://host:port` of a URL, for messages and `describe`.
pub(super) fn base_of(url: &Url) -> String {
    let path = url.path().strip_suffix(IMDS_PATH).unwrap_or(url.path());
    format!(
        "{}{}",
        url.origin().ascii_serialization(),
        path.trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imds_urls() {
        let u = |s: &str| Url::parse(s).expect("url");
        assert_eq!(
            imds_token_url(&u("http://169.254.169.254")).as_str(),
            "http://169.254.169.254/metadata/identity/oauth2/token"
        );
        assert_eq!(
            imds_token_url(&u("http://127.0.0.1:8080/prefix/")).as_str(),
            "http://127.0.0.1:8080/prefix/metadata/identity/oauth2/token"
        );
        assert_eq!(
            imds_token_url(&u("http://h/metadata/identity/oauth2/token")).as_str(),
            "http://h/metadata/identity/oauth2/token"
        );
        assert_eq!(
            base_of(&imds_token_url(&u("http://169.254.169.254"))),
            "http://169.254.169.254"
        );
    }
}
