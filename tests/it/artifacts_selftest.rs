//! The Azure Artifacts stand-in (`support/artifacts.rs`) driven directly with reqwest and tokens
//! minted as the fake Entra would issue them: which credentials it takes and refuses, the
//! absolute URLs and digests of its answers, uploads served back, and the `303` to blob storage
//! that works without a credential and fails with one.

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::artifacts::{
    archive, cargo_index, maven_repo, npm_registry, nuget_index, pypi_simple, pypi_upload,
    AuthForm, FakeArtifacts, ADO_AUDIENCE, BASIC_CHALLENGE,
};
use crate::support::entra::{mint_token, DEFENDER_AUDIENCE, OBJECT_ID};
use crate::support::http_client;

fn token() -> String {
    mint_token(ADO_AUDIENCE, 3600)
}

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// `GET url` with `authorization` (when given).
async fn get(url: &str, authorization: Option<&str>) -> reqwest::Response {
    let mut req = http_client().get(url);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// `GET url` with a valid Bearer token; panics unless `200`; the body.
async fn get_ok(url: &str) -> String {
    let resp = get(url, Some(&format!("Bearer {}", token()))).await;
    let status = resp.status();
    let body = resp.text().await.expect("body");
    assert_eq!(status, StatusCode::OK, "GET {url}: {body}");
    body
}

/// Follows a `303` to blob storage without a credential; the bytes.
async fn via_blob(feed: &FakeArtifacts, url: &str) -> Vec<u8> {
    let resp = get(url, Some(&format!("Bearer {}", token()))).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "GET {url}");
    let location = resp.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(location.starts_with(&feed.blob_url()), "{location}");
    let blob = get(&location, None).await;
    assert_eq!(blob.status(), StatusCode::OK, "GET {location}");
    blob.bytes().await.expect("body").to_vec()
}

#[tokio::test]
async fn feeds_take_a_token_as_bearer_or_as_a_basic_password() {
    let feed = FakeArtifacts::start().await;
    feed.add_npm("left-pad", "1.0.0");
    let url = format!("{}left-pad", npm_registry(&feed.feed_url()));
    let t = token();
    for authorization in [format!("Bearer {t}"), basic("anything", &t), basic("", &t)] {
        let resp = get(&url, Some(&authorization)).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let forms: Vec<AuthForm> = feed.requests().into_iter().map(|r| r.auth).collect();
    assert_eq!(
        forms,
        [
            AuthForm::Bearer,
            AuthForm::Basic {
                user: "anything".into()
            },
            AuthForm::Basic { user: "".into() },
        ]
    );
    assert!(feed.feed_url().starts_with(&feed.base_url()));
    let served = feed.assert_only_valid_credentials();
    assert!(served
        .iter()
        .all(|r| r.identity.as_deref() == Some(OBJECT_ID)));
    // The project-scoped feed too.
    let project = pypi_simple(&feed.project_feed_url());
    assert_eq!(
        get(&project, Some(&basic("x", &t))).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn feeds_refuse_everything_else_as_azure_devops_does() {
    let feed = FakeArtifacts::start().await;
    feed.add_npm("left-pad", "1.0.0");
    let url = format!("{}left-pad", npm_registry(&feed.feed_url()));
    let pat = "stalepat0000000000000000000000000000000000000000000";
    let wrong_audience = mint_token(DEFENDER_AUDIENCE, 3600);
    let mut forged = token();
    forged.push('x');
    let cases = [
        None,
        Some(basic("user", pat)),
        Some(format!("Bearer {pat}")),
        Some(basic("user", &wrong_audience)),
        Some(format!("Bearer {wrong_audience}")),
        Some(format!("Bearer {forged}")),
        Some(format!("Basic {}", token())),
        Some(format!("Token {}", token())),
    ];
    for authorization in &cases {
        let resp = get(&url, authorization.as_deref()).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{authorization:?}");
        let challenges: Vec<&str> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect();
        assert!(challenges.contains(&BASIC_CHALLENGE), "{challenges:?}");
        assert!(
            challenges.iter().any(|c| c.starts_with("Bearer ")),
            "{challenges:?}"
        );
    }
    let requests = feed.requests();
    assert_eq!(requests.len(), cases.len());
    assert!(requests
        .iter()
        .all(|r| r.identity.is_none() && r.refused.is_some()));
    // Nothing recorded holds a credential.
    assert!(!format!("{requests:?}").contains(pat));
}

#[tokio::test]
async fn answers_name_the_feed_by_absolute_urls_with_real_digests() {
    let feed = FakeArtifacts::start().await;
    let base = feed.feed_url();
    feed.add_npm("@contoso/widget", "2.1.0");
    feed.add_wheel("contoso_tools", "1.0");
    feed.add_crate("seeded", "1.0.0");
    feed.add_nuget("Contoso.Lib", "3.0.0");

    let packument: Value =
        serde_json::from_str(&get_ok(&format!("{}@contoso%2fwidget", npm_registry(&base))).await)
            .expect("json");
    let dist = &packument["versions"]["2.1.0"]["dist"];
    let tarball_url = dist["tarball"].as_str().expect("tarball");
    assert_eq!(
        tarball_url,
        format!("{base}/npm/registry/@contoso/widget/-/widget-2.1.0.tgz")
    );
    let tarball = via_blob(&feed, tarball_url).await;
    assert_eq!(dist["shasum"], archive::sha1_hex(&tarball));
    assert_eq!(dist["integrity"], archive::npm_integrity(&tarball));

    let page = get_ok(&format!("{}contoso-tools/", pypi_simple(&base))).await;
    let href = page
        .split("href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a link");
    let (file_url, digest) = href.split_once("#sha256=").expect("#sha256=");
    assert_eq!(
        file_url,
        format!("{base}/pypi/download/contoso-tools/1.0/contoso_tools-1.0-py3-none-any.whl")
    );
    assert_eq!(
        digest,
        archive::sha256_hex(&via_blob(&feed, file_url).await)
    );

    let config: Value =
        serde_json::from_str(&get_ok(&format!("{}config.json", cargo_index(&base))).await)
            .expect("json");
    assert_eq!(
        config,
        json!({"dl": format!("{base}/Cargo/api/v1/crates"), "api": format!("{base}/Cargo"), "auth-required": true})
    );
    let line: Value = serde_json::from_str(
        get_ok(&format!("{}se/ed/seeded", cargo_index(&base)))
            .await
            .trim(),
    )
    .expect("json");
    let krate = via_blob(
        &feed,
        &format!("{base}/Cargo/api/v1/crates/seeded/1.0.0/download"),
    )
    .await;
    assert_eq!(line["cksum"], archive::sha256_hex(&krate));

    let index: Value = serde_json::from_str(&get_ok(&nuget_index(&base)).await).expect("json");
    let resources = index["resources"].as_array().expect("resources");
    assert!(resources
        .iter()
        .all(|r| r["@id"].as_str().expect("@id").starts_with(&base)));
    let flat = resources
        .iter()
        .find(|r| r["@type"] == "PackageBaseAddress/3.0.0")
        .and_then(|r| r["@id"].as_str())
        .expect("flat container");
    let versions: Value =
        serde_json::from_str(&get_ok(&format!("{flat}contoso.lib/index.json")).await)
            .expect("json");
    assert_eq!(versions, json!({"versions": ["3.0.0"]}));
    let nupkg = via_blob(
        &feed,
        &format!("{flat}contoso.lib/3.0.0/contoso.lib.3.0.0.nupkg"),
    )
    .await;
    assert_eq!(nupkg, archive::nupkg("Contoso.Lib", "3.0.0"));
    feed.assert_blob_saw_no_credential();
}

#[tokio::test]
async fn blob_storage_serves_the_signed_url_only_without_a_credential() {
    let feed = FakeArtifacts::start().await;
    feed.add_npm("left-pad", "1.0.0");
    let url = format!(
        "{}left-pad/-/left-pad-1.0.0.tgz",
        npm_registry(&feed.feed_url())
    );
    let resp = get(&url, Some(&format!("Bearer {}", token()))).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let location = resp.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        location.contains("sig=") && location.contains("se="),
        "{location}"
    );

    let ok = get(&location, None).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        ok.bytes().await.expect("body").to_vec(),
        archive::npm_tarball("left-pad", "1.0.0")
    );
    for authorization in [format!("Bearer {}", token()), basic("u", &token())] {
        let refused = get(&location, Some(&authorization)).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
    let tampered = location.replace("sig=", "sig=0");
    assert_eq!(get(&tampered, None).await.status(), StatusCode::FORBIDDEN);
    let unsigned = location.split('?').next().expect("path").to_string();
    assert_eq!(get(&unsigned, None).await.status(), StatusCode::NOT_FOUND);
    let seen: Vec<(bool, u16)> = feed
        .blob_requests()
        .iter()
        .map(|r| (r.had_authorization, r.status.as_u16()))
        .collect();
    assert_eq!(
        seen,
        [
            (false, 200),
            (true, 403),
            (true, 403),
            (false, 403),
            (false, 404)
        ]
    );
    assert!(feed
        .blob_requests()
        .iter()
        .all(|r| r.method == "GET" && r.path.starts_with("/vsblob/")));

    // Served directly when redirects are off.
    feed.set_blob_redirects(false);
    let direct = get(&url, Some(&format!("Bearer {}", token()))).await;
    assert_eq!(direct.status(), StatusCode::OK);
}

#[tokio::test]
async fn uploads_are_served_back() {
    let feed = FakeArtifacts::start().await;
    feed.set_blob_redirects(false);
    let base = feed.project_feed_url();
    let client = http_client();
    let bearer = format!("Bearer {}", token());

    // npm publish: the packument with the tarball attached.
    let tarball = archive::npm_tarball("pub", "1.0.0");
    let doc = json!({
        "_id": "pub", "name": "pub", "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"name": "pub", "version": "1.0.0", "dist": {
            "shasum": archive::sha1_hex(&tarball),
            "integrity": archive::npm_integrity(&tarball),
            "tarball": "http://elsewhere/pub-1.0.0.tgz"}}},
        "_attachments": {"pub-1.0.0.tgz": {"content_type": "application/octet-stream",
            "data": base64::engine::general_purpose::STANDARD.encode(&tarball),
            "length": tarball.len()}},
    });
    let url = format!("{}pub", npm_registry(&base));
    let put = client.put(&url).header("authorization", &bearer).json(&doc);
    assert_eq!(put.send().await.expect("PUT").status(), StatusCode::OK);
    let again = client.put(&url).header("authorization", &bearer).json(&doc);
    assert_eq!(
        again.send().await.expect("PUT").status(),
        StatusCode::CONFLICT
    );
    assert_eq!(feed.npm_versions(&base, "pub"), ["1.0.0"]);
    let packument: Value = serde_json::from_str(&get_ok(&url).await).expect("json");
    assert_eq!(
        packument["versions"]["1.0.0"]["dist"]["tarball"],
        format!("{base}/npm/registry/pub/-/pub-1.0.0.tgz")
    );

    // twine upload: multipart form.
    let (file, wheel) = archive::wheel("uploaded", "0.1");
    let boundary = "----patless-boundary";
    let mut form = Vec::new();
    for (name, value) in [
        (":action", "file_upload".to_string()),
        ("protocol_version", "1".to_string()),
        ("name", "uploaded".to_string()),
        ("version", "0.1".to_string()),
        ("sha256_digest", archive::sha256_hex(&wheel)),
    ] {
        form.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    form.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
            .as_bytes(),
    );
    form.extend_from_slice(&wheel);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let post = client
        .post(pypi_upload(&base))
        .header("authorization", basic("u", &token()))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form);
    assert_eq!(post.send().await.expect("POST").status(), StatusCode::OK);
    assert_eq!(feed.pypi_files(&base, "Uploaded"), [file]);

    // Maven PUT, then the checksum the feed computes.
    let jar_url = format!("{}/com/contoso/app/1.0/app-1.0.jar", maven_repo(&base));
    let jar = archive::jar("app", "1.0");
    let put = client
        .put(&jar_url)
        .header("authorization", &bearer)
        .body(jar.clone());
    assert_eq!(put.send().await.expect("PUT").status(), StatusCode::CREATED);
    assert_eq!(
        get_ok(&format!("{jar_url}.sha1")).await,
        archive::sha1_hex(&jar)
    );
    assert_eq!(
        get_ok(&format!("{jar_url}.md5")).await,
        archive::md5_hex(&jar)
    );

    // cargo publish: length-prefixed metadata and crate.
    let krate = archive::crate_file("shiny", "0.2.0");
    let meta = json!({"name": "shiny", "vers": "0.2.0", "deps": [], "features": {}}).to_string();
    let mut body = Vec::new();
    body.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    body.extend_from_slice(meta.as_bytes());
    body.extend_from_slice(&(krate.len() as u32).to_le_bytes());
    body.extend_from_slice(&krate);
    let put = client
        .put(format!("{base}/Cargo/api/v1/crates/new"))
        .header("authorization", basic("cargo", &token()))
        .body(body);
    assert_eq!(put.send().await.expect("PUT").status(), StatusCode::OK);
    assert_eq!(feed.crate_versions(&base, "shiny"), ["0.2.0"]);
    let line = get_ok(&format!("{}sh/in/shiny", cargo_index(&base))).await;
    assert!(line.contains(&archive::sha256_hex(&krate)), "{line}");
    feed.assert_only_valid_credentials();
}

#[test]
fn digests_and_archives_are_the_standard_ones() {
    assert_eq!(archive::md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(
        archive::md5_hex(b"The quick brown fox jumps over the lazy dog"),
        "9e107d9d372bb6826bd81d3542a419d6"
    );
    assert_eq!(
        archive::sha1_hex(b"abc"),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
    assert_eq!(archive::sha256_hex(b"").len(), 64);
    // gzip: header, a final stored block, CRC-32 ("abc" → 0x352441c2), size.
    let gz = archive::gzip(b"abc");
    assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
    assert_eq!(&gz[gz.len() - 8..], &[0xc2, 0x41, 0x24, 0x35, 3, 0, 0, 0]);
    let tar = archive::tar(&[("a.txt", b"hi")]);
    assert_eq!(tar.len(), 512 * 4);
    assert_eq!(&tar[257..263], b"ustar\0");
}
