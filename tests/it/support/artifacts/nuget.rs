//! The NuGet v3 side of a feed: the service index (absolute `@id`s) and the flat container
//! (`PackageBaseAddress/3.0.0`): version lists, `.nupkg` downloads and `.nuspec`s.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::json;

use super::archive::nuspec;
use super::{error, json_response, not_found, ok, Call};
use crate::support::Body;

/// `nuget/v3/{rest}`.
pub(super) fn handle(
    packages: &BTreeMap<String, BTreeMap<String, Bytes>>,
    call: &Call,
    rest: &str,
    download: &dyn Fn(Bytes, &str) -> Response<Body>,
) -> Response<Body> {
    if call.method != Method::GET && call.method != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Pushing NuGet packages is not modelled here.",
        );
    }
    let v3 = format!("{}/nuget/v3", call.feed_url);
    if rest == "index.json" {
        let resource = |id: String, kind: &str| json!({"@id": id, "@type": kind});
        return json_response(
            StatusCode::OK,
            &json!({
                "version": "3.0.0",
                "resources": [
                    resource(format!("{v3}/flat2/"), "PackageBaseAddress/3.0.0"),
                    resource(format!("{v3}/query2/"), "SearchQueryService"),
                    resource(format!("{v3}/registrations2/"), "RegistrationsBaseUrl"),
                    resource(format!("{}/nuget/v2/", call.feed_url), "PackagePublish/2.0.0"),
                ],
            }),
        );
    }
    let Some(path) = rest.strip_prefix("flat2/") else {
        return not_found("Only the service index and the flat container are modelled.");
    };
    let parts: Vec<String> = path.split('/').map(str::to_ascii_lowercase).collect();
    let Some(versions) = parts.first().and_then(|id| packages.get(id)) else {
        return not_found("The package does not exist in this feed.");
    };
    match &parts[..] {
        [_, index] if index == "index.json" => json_response(
            StatusCode::OK,
            &json!({"versions": versions.keys().collect::<Vec<_>>()}),
        ),
        [id, version, file] => match versions.get(version) {
            Some(bytes) if *file == format!("{id}.{version}.nupkg") => {
                download(bytes.clone(), "application/octet-stream")
            }
            Some(_) if *file == format!("{id}.nuspec") => {
                ok("application/xml", nuspec(id, version))
            }
            _ => not_found("The package version does not exist in this feed."),
        },
        _ => not_found("No such flat container path."),
    }
}
