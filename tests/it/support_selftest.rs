//! Proves the in-process fakes in `tests/it/support` behave as documented.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support;
use crate::support::ado_git::AdoGit;
use crate::support::ado_rest::{Credential, FakeAdo};
use crate::support::entra::{
    self, FakeEntra, Fault, ADO_AUDIENCE, ADO_SCOPE, CLIENT_ID, CLIENT_SECRET, DEFENDER_AUDIENCE,
    DEFENDER_SCOPE, TENANT,
};
use crate::support::now_secs;
use crate::support::upstream::{FakeUpstream, Identity};
use crate::support::{fnv1a, http_client, pattern_byte, FNV_OFFSET};

fn form<'a>(scope: &'a str, secret: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("client_secret", secret),
        ("scope", scope),
    ]
}

async fn post_token(entra: &FakeEntra, fields: &[(&str, &str)]) -> reqwest::Response {
    http_client()
        .post(entra.token_url())
        .header("accept", "application/json")
        .form(fields)
        .send()
        .await
        .expect("token request")
}

async fn get_token(entra: &FakeEntra, scope: &str) -> String {
    let resp = post_token(entra, &form(scope, CLIENT_SECRET)).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[test]
fn checksum_helpers() {
    // Known FNV-1a 64 vectors.
    assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    // Chunked hashing equals one-shot hashing.
    assert_eq!(
        fnv1a(fnv1a(FNV_OFFSET, b"foo"), b"bar"),
        fnv1a(FNV_OFFSET, b"foobar")
    );
    assert_eq!(pattern_byte(0), 0);
    assert_eq!(pattern_byte(250), 250);
    assert_eq!(pattern_byte(251), 0);
    assert_eq!(pattern_byte(1000), (1000 % 251) as u8);
}

#[tokio::test]
async fn issues_signed_tokens_with_entra_shape() {
    let entra = FakeEntra::start().await;
    assert!(entra.authority().starts_with("http://127.0.0.1:"));
    let before = now_secs();
    let resp = post_token(&entra, &form(ADO_SCOPE, CLIENT_SECRET)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], json!(3599));
    assert_eq!(body["ext_expires_in"], json!(3599));
    assert!(body.get("refresh_in").is_none());
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(entra.issued_tokens(), vec![token.to_string()]);

    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some("test-key"));
    let claims = claims_of(token);
    assert_eq!(claims["aud"], ADO_AUDIENCE);
    assert_eq!(claims["iss"], format!("https://sts.windows.net/{TENANT}/"));
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(claims["appid"], CLIENT_ID);
    assert_eq!(claims["azp"], CLIENT_ID);
    assert_eq!(claims["roles"], json!(["Machine.Read.All"]));
    assert!(claims["oid"].as_str().unwrap().len() == 36);
    let exp = claims["exp"].as_u64().unwrap();
    assert!(
        exp >= before + 3599 && exp <= now_secs() + 3599 + 1,
        "exp {exp}"
    );
    assert!(claims["nbf"].as_u64().unwrap() < before);
    assert!(claims["iat"].as_u64().unwrap() < before);

    // Signature verifies with the public key.
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[ADO_AUDIENCE]);
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(support::TEST_PUB_PEM.as_bytes()).unwrap();
    jsonwebtoken::decode::<Value>(token, &key, &validation).expect("valid signature");

    // Defender scope with a URL audience; tokens are unique.
    let second = get_token(&entra, DEFENDER_SCOPE).await;
    assert_eq!(claims_of(&second)["aud"], DEFENDER_AUDIENCE);
    assert_ne!(claims_of(&second)["uti"], claims["uti"]);
    assert_eq!(entra.issued_tokens().len(), 2);

    // The request was recorded as sent.
    assert_eq!(entra.token_requests(), 2);
    let records = entra.requests();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].path, format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(records[0].form["grant_type"], "client_credentials");
    assert_eq!(records[0].form["client_id"], CLIENT_ID);
    assert_eq!(records[0].form["client_secret"], CLIENT_SECRET);
    assert_eq!(records[0].form["scope"], ADO_SCOPE);
    assert_eq!(records[1].form["scope"], DEFENDER_SCOPE);
    assert_eq!(
        records[0].headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(records[0].headers["accept"], "application/json");
}

#[tokio::test]
async fn lifetime_refresh_in_and_numbers_as_strings() {
    let entra = FakeEntra::start().await;
    entra.set_lifetime(600);
    entra.set_refresh_in(Some(300));
    let body: Value = post_token(&entra, &form(ADO_SCOPE, CLIENT_SECRET))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["expires_in"], json!(600));
    assert_eq!(body["ext_expires_in"], json!(600));
    assert_eq!(body["refresh_in"], json!(300));
    let exp = claims_of(body["access_token"].as_str().unwrap())["exp"]
        .as_u64()
        .unwrap();
    assert!(exp <= now_secs() + 600 + 1 && exp + 5 >= now_secs() + 600);

    entra.set_numbers_as_strings(true);
    let body: Value = post_token(&entra, &form(ADO_SCOPE, CLIENT_SECRET))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["expires_in"], json!("600"));
    assert_eq!(body["ext_expires_in"], json!("600"));
    assert_eq!(body["refresh_in"], json!("300"));
    assert_eq!(body["token_type"], "Bearer");

    entra.set_refresh_in(None);
    entra.set_numbers_as_strings(false);
    let body: Value = post_token(&entra, &form(ADO_SCOPE, CLIENT_SECRET))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["expires_in"], json!(600));
    assert!(body.get("refresh_in").is_none());
}

fn assert_entra_error(body: &Value, error: &str, code: u64) {
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"], json!([code]), "{body}");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .starts_with(&format!("AADSTS{code}:")));
    for field in ["timestamp", "trace_id", "correlation_id"] {
        assert!(
            body[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field} in {body}"
        );
    }
}

#[tokio::test]
async fn validates_the_request() {
    let entra = FakeEntra::start().await;

    let resp = post_token(&entra, &form(ADO_SCOPE, "wrong-secret")).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_entra_error(&body, "invalid_client", 7_000_215);
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("Invalid client secret provided"));

    let mut fields = form(ADO_SCOPE, CLIENT_SECRET);
    fields.retain(|(k, _)| *k != "client_secret");
    let resp = post_token(&entra, &fields).await;
    assert_eq!(resp.status(), 401);
    assert_entra_error(&resp.json().await.unwrap(), "invalid_client", 7_000_215);

    let mut fields = form(ADO_SCOPE, CLIENT_SECRET);
    fields[1].1 = "99999999-9999-9999-9999-999999999999";
    let resp = post_token(&entra, &fields).await;
    assert_eq!(resp.status(), 400);
    assert_entra_error(&resp.json().await.unwrap(), "unauthorized_client", 700_016);

    let resp = post_token(&entra, &form(ADO_AUDIENCE, CLIENT_SECRET)).await;
    assert_eq!(resp.status(), 400);
    assert_entra_error(&resp.json().await.unwrap(), "invalid_scope", 70_011);

    let mut fields = form(ADO_SCOPE, CLIENT_SECRET);
    fields.retain(|(k, _)| *k != "scope");
    let resp = post_token(&entra, &fields).await;
    assert_eq!(resp.status(), 400);
    assert_entra_error(&resp.json().await.unwrap(), "invalid_scope", 70_011);

    let resp = http_client()
        .post(format!(
            "{}/00000000-0000-0000-0000-000000000000/oauth2/v2.0/token",
            entra.authority()
        ))
        .form(&form(ADO_SCOPE, CLIENT_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_entra_error(&resp.json().await.unwrap(), "invalid_request", 90_002);

    let mut fields = form(ADO_SCOPE, CLIENT_SECRET);
    fields[0].1 = "password";
    let resp = post_token(&entra, &fields).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );

    // Other paths: 404 JSON, not counted.
    let resp = http_client()
        .get(format!(
            "{}/{TENANT}/v2.0/.well-known/openid-configuration",
            entra.authority()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());

    assert_eq!(entra.token_requests(), 7);
    assert_eq!(entra.requests().len(), 7);
    assert!(entra.issued_tokens().is_empty());

    // The correlation id echoes client-request-id, as Entra does.
    let resp = http_client()
        .post(entra.token_url())
        .header("client-request-id", "abcdef01-2345-6789-abcd-ef0123456789")
        .form(&form(ADO_SCOPE, "nope"))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["correlation_id"],
        "abcdef01-2345-6789-abcd-ef0123456789"
    );
}

#[tokio::test]
async fn one_shot_faults_are_fifo_then_success() {
    let entra = FakeEntra::start().await;
    entra.push_fault(Fault::Throttled {
        retry_after_secs: 7,
    });
    entra.push_fault(Fault::ServerError);
    entra.push_fault(Fault::InvalidClient);
    entra.push_fault(Fault::MalformedJson);
    entra.push_fault(Fault::HtmlPage);

    let resp = post_token(&entra, &form(ADO_SCOPE, CLIENT_SECRET)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_entra_error(
        &resp.json().await.unwrap(),
        "temporarily_unavailable",
        90_033,
    );

    let resp = post_token(&entra, &form(ADO_SCOPE, CLIENT_SECRET)).await;
    assert_eq!(resp.status(), 500);
    assert_entra_error(&resp.json().await.unwrap(), "server_error", 50_000);

    let resp = post_token(&entra, &form(ADO_SCOPE, CLIENT_SECRET)).await;
    assert_eq!(resp.status(), 401);
    assert_entra_error(&resp.json().await.unwrap(), "invalid_client", 7_000_215);

    let resp = post_token(&entra, &form(ADO_SCOPE, CLIENT_SECRET)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert_eq!(text, r#"{"access_token": "#);
    assert!(serde_json::from_str::<Value>(&text).is_err());

    let resp = post_token(&entra, &form(ADO_SCOPE, CLIENT_SECRET)).await;
    assert_eq!(resp.status(), 502);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(resp.text().await.unwrap().contains("<html>"));

    assert!(entra.issued_tokens().is_empty());
    let token = get_token(&entra, ADO_SCOPE).await;
    assert_eq!(entra.issued_tokens(), vec![token]);
    assert_eq!(entra.token_requests(), 6);
}

#[tokio::test]
async fn sticky_fault_applies_until_cleared_and_one_shot_goes_first() {
    let entra = FakeEntra::start().await;
    entra.set_fault(Some(Fault::ServerError));
    entra.push_fault(Fault::Throttled {
        retry_after_secs: 1,
    });
    assert_eq!(
        post_token(&entra, &form(ADO_SCOPE, CLIENT_SECRET))
            .await
            .status(),
        429
    );
    for _ in 0..3 {
        assert_eq!(
            post_token(&entra, &form(ADO_SCOPE, CLIENT_SECRET))
                .await
                .status(),
            500
        );
    }
    entra.set_fault(None);
    assert_eq!(
        post_token(&entra, &form(ADO_SCOPE, CLIENT_SECRET))
            .await
            .status(),
        200
    );
    assert_eq!(entra.token_requests(), 5);
    assert_eq!(entra.issued_tokens().len(), 1);
}

#[tokio::test]
async fn delay_fault_delays_then_answers_and_counts_on_arrival() {
    let entra = FakeEntra::start().await;
    entra.push_fault(Fault::Delay(Duration::from_millis(300)));
    let started = Instant::now();
    let pending = tokio::spawn({
        let client = http_client();
        let url = entra.token_url();
        async move {
            client
                .post(url)
                .form(&form(ADO_SCOPE, CLIENT_SECRET))
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(entra.token_requests(), 1, "counted while still delayed");
    assert!(entra.issued_tokens().is_empty());
    let resp = pending.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(resp.status(), 200);
    assert_eq!(entra.issued_tokens().len(), 1);
}

#[tokio::test]
async fn upstream_accepts_valid_token_for_its_audience() {
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;
    assert_eq!(upstream.url(), format!("http://{}", upstream.addr()));
    let token = get_token(&entra, ADO_SCOPE).await;

    let resp = http_client()
        .post(format!(
            "{}/org/_apis/projects?api-version=7.1&top=2",
            upstream.url()
        ))
        .bearer_auth(&token)
        .header("x-custom", "one")
        .header("x-multi", "a")
        .header("x-multi", "b")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "fake");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/org/_apis/projects?api-version=7.1&top=2");
    assert_eq!(body["body_len"], 5);
    assert_eq!(body["headers"]["x-custom"], "one");
    assert_eq!(body["headers"]["x-multi"], "a, b");
    assert_eq!(body["headers"]["authorization"], format!("Bearer {token}"));
    assert!(body["headers"]["host"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    assert_eq!(upstream.accepted(), 1);
    assert_eq!(upstream.rejected(), 0);
    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].method, http::Method::POST);
    assert_eq!(
        recorded[0].path_and_query,
        "/org/_apis/projects?api-version=7.1&top=2"
    );
    assert_eq!(recorded[0].body_len, 5);
    assert!(recorded[0].token_valid);
    assert!(recorded[0].token_error.is_none());
    assert_eq!(recorded[0].headers["x-custom"], "one");

    // Routes.
    let client = http_client();
    let resp = client
        .get(format!("{}/redirect", upstream.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(
        resp.headers()["location"],
        format!("{}/echo/after-redirect?x=1", upstream.url()).as_str()
    );
    let resp = client
        .get(format!("{}/redirect-relative", upstream.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "/echo/relative");
    for code in [204u16, 404, 418, 503] {
        let resp = client
            .get(format!("{}/status/{code}", upstream.url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), code);
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    assert_eq!(upstream.accepted(), 7);
}

async fn expect_rejected(upstream: &FakeUpstream, token: Option<&str>) -> String {
    let before = upstream.rejected();
    let mut req = http_client()
        .put(format!("{}/upload", upstream.url()))
        .body(vec![7u8; 100_000]);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        r#"Bearer authorization_uri="https://login.microsoftonline.com/common""#
    );
    let body: Value = resp.json().await.unwrap();
    assert!(body.is_object());
    assert_eq!(upstream.rejected(), before + 1);
    assert_eq!(upstream.accepted(), 0);
    let last = upstream.requests().pop().unwrap();
    assert!(!last.token_valid);
    assert_eq!(
        last.body_len, 100_000,
        "rejected request bodies are drained"
    );
    last.token_error.expect("a reason")
}

#[tokio::test]
async fn upstream_rejects_wrong_audience() {
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(DEFENDER_AUDIENCE).await;
    let token = get_token(&entra, ADO_SCOPE).await;
    let reason = expect_rejected(&upstream, Some(&token)).await;
    assert!(reason.contains("udience"), "{reason}");
    assert_eq!(upstream.rejected(), 1);
}

#[tokio::test]
async fn upstream_rejects_garbage_unsigned_and_missing_tokens() {
    use base64::Engine;
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;

    expect_rejected(&upstream, None).await;
    assert_eq!(upstream.rejected(), 1);
    expect_rejected(&upstream, Some("not-a-jwt")).await;
    assert_eq!(upstream.rejected(), 2);

    // alg=none token with the right claims.
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = entra::token_claims(ADO_AUDIENCE, 3600);
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    expect_rejected(&upstream, Some(&unsigned)).await;

    // Right claims, signature of a different payload.
    let genuine = entra::mint_token(ADO_AUDIENCE, 3600);
    let mut parts: Vec<&str> = genuine.split('.').collect();
    let mut tampered_claims = claims.clone();
    tampered_claims["roles"] = json!(["Everything.ReadWrite.All"]);
    let tampered_payload = b64(&tampered_claims);
    parts[1] = &tampered_payload;
    expect_rejected(&upstream, Some(&parts.join("."))).await;

    // Signed correctly but expired a minute ago.
    let mut expired = entra::token_claims(ADO_AUDIENCE, 0);
    expired["exp"] = json!(now_secs() - 60);
    let reason = expect_rejected(&upstream, Some(&entra::sign_token(&expired))).await;
    assert!(reason.contains("xpired"), "{reason}");

    // Not valid yet.
    let mut immature = entra::token_claims(ADO_AUDIENCE, 3600);
    immature["nbf"] = json!(now_secs() + 600);
    expect_rejected(&upstream, Some(&entra::sign_token(&immature))).await;

    // Basic auth is not a bearer token.
    let resp = http_client()
        .get(format!("{}/anything", upstream.url()))
        .basic_auth("user", Some(genuine.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    assert_eq!(upstream.rejected(), 7);
    assert_eq!(upstream.accepted(), 0);

    // And the genuine one passes.
    let resp = http_client()
        .get(format!("{}/anything", upstream.url()))
        .bearer_auth(&genuine)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.accepted(), 1);
}

/// A tenant and an app of it, registered with the fake Entra besides the default ones.
const OTHER_TENANT: &str = "0a0b0c0d-1111-4222-8333-444455556666";
const OTHER_CLIENT_ID: &str = "5e5e5e5e-1111-4222-8333-444455556666";

#[tokio::test]
async fn entra_tokens_say_which_app_and_tenant_asked() {
    let entra = FakeEntra::start().await;
    let other = entra.register_app(OTHER_TENANT, OTHER_CLIENT_ID);
    assert_eq!(other, Identity::app(OTHER_CLIENT_ID, OTHER_TENANT));

    let ask = |tenant: &'static str, client_id: &'static str| {
        let url = entra.token_url_for(tenant);
        async move {
            http_client()
                .post(url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_secret", CLIENT_SECRET),
                    ("scope", ADO_SCOPE),
                ])
                .send()
                .await
                .expect("token request")
        }
    };
    let resp = ask(OTHER_TENANT, OTHER_CLIENT_ID).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], ADO_AUDIENCE);
    assert_eq!(claims["appid"], OTHER_CLIENT_ID);
    assert_eq!(claims["azp"], OTHER_CLIENT_ID);
    assert_eq!(claims["tid"], OTHER_TENANT);
    assert_eq!(
        claims["iss"],
        format!("https://sts.windows.net/{OTHER_TENANT}/")
    );
    let oid = entra::app_object_id(OTHER_TENANT, OTHER_CLIENT_ID);
    assert_eq!(claims["oid"], oid.as_str());
    assert_eq!(claims["sub"], oid.as_str());
    assert!(claims.get("scp").is_none());

    // Object ids are per (tenant, client): the default app keeps OBJECT_ID, others differ.
    let default_token = get_token(&entra, ADO_SCOPE).await;
    assert_eq!(claims_of(&default_token)["oid"], entra::OBJECT_ID);
    let ids = [
        entra::app_object_id(TENANT, CLIENT_ID),
        entra::app_object_id(OTHER_TENANT, CLIENT_ID),
        entra::app_object_id(TENANT, OTHER_CLIENT_ID),
        oid.clone(),
    ];
    for (i, a) in ids.iter().enumerate() {
        assert_eq!(a.len(), 36, "{a}");
        for b in &ids[i + 1..] {
            assert_ne!(a, b);
        }
    }
    assert_eq!(oid, entra::app_object_id(OTHER_TENANT, OTHER_CLIENT_ID));

    // An app is registered in its own tenant only.
    for (tenant, client_id) in [(TENANT, OTHER_CLIENT_ID), (OTHER_TENANT, CLIENT_ID)] {
        let resp = ask(tenant, client_id).await;
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.unwrap();
        assert_entra_error(&body, "unauthorized_client", 700_016);
        assert!(
            body["error_description"].as_str().unwrap().contains(tenant),
            "{body}"
        );
    }
}

/// Sends `token` to `upstream`, expects the 401 of a bad token, and returns the reason, which
/// names the claim but never holds the token.
async fn expect_wrong_identity(upstream: &FakeUpstream, token: &str, claim: &str) -> String {
    let reason = expect_rejected(upstream, Some(token)).await;
    assert!(reason.starts_with("wrong identity: "), "{reason}");
    assert!(reason.contains(claim), "{claim} not in {reason}");
    assert!(!reason.contains(token), "the reason holds the token");
    assert!(
        upstream
            .counts()
            .invalid_reasons
            .lock()
            .unwrap()
            .contains(&reason),
        "not counted: {reason}"
    );
    reason
}

#[tokio::test]
async fn upstream_rejects_a_token_of_the_right_audience_for_someone_else() {
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;
    let sign = |claims: &Value| entra::sign_token(claims);

    // Another tenant, the same client id.
    let other_tenant = sign(&entra::app_token_claims(
        ADO_AUDIENCE,
        3600,
        OTHER_TENANT,
        CLIENT_ID,
    ));
    let reason = expect_wrong_identity(&upstream, &other_tenant, "tid").await;
    assert!(
        reason.contains(OTHER_TENANT) && reason.contains(TENANT),
        "both tenants named: {reason}"
    );

    // Another app, the same tenant.
    let other_app = sign(&entra::app_token_claims(
        ADO_AUDIENCE,
        3600,
        TENANT,
        OTHER_CLIENT_ID,
    ));
    let reason = expect_wrong_identity(&upstream, &other_app, "appid").await;
    assert!(
        reason.contains(OTHER_CLIENT_ID) && reason.contains(CLIENT_ID),
        "both apps named: {reason}"
    );

    // The right app and tenant, another service principal.
    let mut claims = entra::token_claims(ADO_AUDIENCE, 3600);
    claims["oid"] = json!("00000000-0000-0000-0000-00000000dead");
    expect_wrong_identity(&upstream, &sign(&claims), "oid").await;

    // A person's token is not the app's, even with its appid.
    let mut claims = entra::token_claims(ADO_AUDIENCE, 3600);
    claims["scp"] = json!(entra::USER_SCP);
    expect_wrong_identity(&upstream, &sign(&claims), "scp").await;

    // A role the expected identity must hold and the token lacks.
    upstream.expect(Identity::default_app().with_roles(&["Incident.Read.All"]));
    let reason =
        expect_wrong_identity(&upstream, &entra::mint_token(ADO_AUDIENCE, 3600), "roles").await;
    assert!(reason.contains("Incident.Read.All"), "{reason}");
    assert!(reason.contains("Machine.Read.All"), "{reason}");

    // A user expected: an app's token has no scp, another user's has another oid, and one
    // without the delegated permission lacks its scp entry.
    upstream.expect(Identity::user(entra::PUBLIC_CLIENT_ID));
    expect_wrong_identity(&upstream, &entra::mint_token(ADO_AUDIENCE, 3600), "appid").await;
    let mut claims = entra::token_claims(ADO_AUDIENCE, 3600);
    claims["appid"] = json!(entra::PUBLIC_CLIENT_ID);
    claims["oid"] = json!(entra::USER_OID);
    expect_wrong_identity(&upstream, &sign(&claims), "scp is missing").await;
    let mut claims = entra::user_token_claims(ADO_AUDIENCE, 3600, entra::PUBLIC_CLIENT_ID);
    claims["scp"] = json!("vso.code");
    expect_wrong_identity(&upstream, &sign(&claims), "user_impersonation").await;
    let mut claims = entra::user_token_claims(ADO_AUDIENCE, 3600, entra::PUBLIC_CLIENT_ID);
    claims["oid"] = json!("55555555-5555-5555-5555-555555555555");
    expect_wrong_identity(&upstream, &sign(&claims), "oid").await;
    assert_eq!(
        upstream
            .counts()
            .invalid
            .load(std::sync::atomic::Ordering::SeqCst),
        9
    );

    // The user's genuine token passes; so does the app's once the app is expected.
    let user_token = entra::mint_user_token(ADO_AUDIENCE, 3600, entra::PUBLIC_CLIENT_ID);
    let ok = |token: String| {
        let url = format!("{}/anything", upstream.url());
        async move {
            http_client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(ok(user_token.clone()).await, 200);
    upstream.expect(Identity::app(OTHER_CLIENT_ID, TENANT));
    assert_eq!(ok(other_app.clone()).await, 200);
    assert_eq!(ok(user_token.clone()).await, 401);
    let seen = upstream.requests();
    let accepted: Vec<&Value> = seen.iter().filter_map(|r| r.claims.as_ref()).collect();
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[1]["appid"], OTHER_CLIENT_ID);

    // The escape hatch: this upstream deliberately accepts anyone the fake Entra signed for.
    upstream.expect(Identity::any());
    for token in [other_tenant, other_app, user_token] {
        assert_eq!(ok(token).await, 200);
    }
}

#[tokio::test]
async fn ado_stand_ins_reject_a_token_for_someone_else() {
    let other_app = entra::mint_app_token(ADO_AUDIENCE, 3600, OTHER_TENANT, OTHER_CLIENT_ID);

    // REST.
    let ado = FakeAdo::start().await;
    let get = |token: &str| {
        http_client()
            .get(format!("{}/org/_apis/projects", ado.url()))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(get(&other_app).await.unwrap().status(), 401);
    match &ado.rejected()[..] {
        [r] => match &r.credential {
            Credential::InvalidBearer(why) => {
                assert!(why.contains("wrong identity: appid"), "{why}")
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    ado.expect(Identity::app(OTHER_CLIENT_ID, OTHER_TENANT));
    assert_eq!(get(&other_app).await.unwrap().status(), 200);
    assert_eq!(
        get(&entra::mint_token(ADO_AUDIENCE, 3600))
            .await
            .unwrap()
            .status(),
        401
    );

    // Git (the stand-in runs git http-backend).
    if !support::clients::require_tool("git", "apt-get install git") {
        return;
    }
    let git = AdoGit::start().await;
    git.create_repo("org", "proj", "repo");
    let refs = |token: &str| {
        http_client()
            .get(format!(
                "{}/org/proj/_git/repo/info/refs?service=git-upload-pack",
                git.url()
            ))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(refs(&other_app).await.unwrap().status(), 401);
    assert_eq!(git.rejected(), 1, "{}", git.summary());
    assert!(
        git.reasons()
            .iter()
            .any(|r| r.contains("wrong identity: appid")),
        "{}",
        git.summary()
    );
    git.expect(Identity::app(OTHER_CLIENT_ID, OTHER_TENANT));
    assert_eq!(refs(&other_app).await.unwrap().status(), 200);
    assert_eq!(git.accepted(), 1, "{}", git.summary());
}

#[tokio::test]
async fn download_streams_exact_pattern_without_content_length() {
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;
    let token = get_token(&entra, ADO_SCOPE).await;
    let n: u64 = 5 * 1024 * 1024 + 123;
    let mut resp = http_client()
        .get(format!("{}/download/{n}", upstream.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let mut offset = 0u64;
    let mut hash = FNV_OFFSET;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(
                *b,
                pattern_byte(offset + i as u64),
                "byte {}",
                offset + i as u64
            );
        }
        hash = fnv1a(hash, &chunk);
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, n);
    assert_eq!(hash, support::pattern_fnv(n));

    let resp = http_client()
        .get(format!("{}/download/0", upstream.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn upload_reports_length_and_checksum() {
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;
    let token = get_token(&entra, ADO_SCOPE).await;
    let n: u64 = 3 * 1024 * 1024;
    let data: Vec<u8> = (0..n).map(|i| (i.wrapping_mul(31) % 253) as u8).collect();
    let expected = fnv1a(FNV_OFFSET, &data);
    for method in [reqwest::Method::POST, reqwest::Method::PUT] {
        let resp = http_client()
            .request(method, format!("{}/upload", upstream.url()))
            .bearer_auth(&token)
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["len"], json!(n));
        assert_eq!(body["fnv"], format!("{expected:016x}"));
    }
    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 2);
    assert!(recorded.iter().all(|r| r.body_len == n && r.token_valid));
}

#[tokio::test]
async fn servers_stop_when_dropped() {
    let entra = FakeEntra::start().await;
    let upstream = FakeUpstream::start(ADO_AUDIENCE).await;
    let (entra_addr, upstream_addr) = (entra.addr(), upstream.addr());
    drop(entra);
    drop(upstream);
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(entra_addr).await.is_err());
    assert!(tokio::net::TcpStream::connect(upstream_addr).await.is_err());
}

/// The harness's patless serves requests as `serve` does, on worker threads (`patless-proxy-N`),
/// and `Patless::start_on_test_clock` on the test's own thread, as it says. The capture names the
/// thread of each line, and each route's label is this test's own.
#[tokio::test]
async fn patless_serves_on_worker_threads_and_on_the_test_clock_only_when_asked() {
    use crate::support::patless::{config, Patless, ADO};
    support::capture::init();
    let entra = FakeEntra::start().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let answered = |route: &str| -> Vec<String> {
        support::capture::logs()
            .lines()
            .filter(|l| l.contains("answered") && l.contains(&format!("\"{route}\"")))
            .map(str::to_owned)
            .collect()
    };
    for (route, test_clock) in [("/selftest-workers", false), ("/selftest-test-clock", true)] {
        let toml = config(&entra, &[(route, &up.url(), ADO)], "", "");
        let p = if test_clock {
            Patless::start_on_test_clock(&toml).await
        } else {
            Patless::start(&toml).await
        };
        let r = support::get(&http_client(), p.url(&format!("{route}/x"))).await;
        assert_eq!(r.status(), 200);
        p.stop().await;
        let lines = answered(route);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(
            lines[0].contains(" patless-proxy-"),
            !test_clock,
            "{route}: {}",
            lines[0]
        );
    }
}
