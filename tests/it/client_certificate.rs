//! `client_certificate`: PEM and PFX files, the signed assertion Entra receives (PS256, `x5t#S256`,
//! `x5c` leaf first, claims), Entra's refusal of an unregistered certificate, the file problems a
//! user meets, and the file being read again at each acquisition.

use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use patless::config::SecretSource;
use patless::credentials::{ClientCertificateCredential, Credential, CredentialError, ErrorClass};
use patless::env::MapEnv;
use patless::secret::Secret;
use serde_json::Value;
use tempfile::TempDir;

use crate::support;
use crate::support::certs::{
    cert_der_from_pem, jwt_claims, jwt_header, pfx, pki, thumbprint_s256, verifier_for,
    verifier_for_any, Pki, FIXTURE_PASSWORD,
};
use crate::support::entra::{FakeEntra, ADO_AUDIENCE, CLIENT_ID, TENANT};
use crate::support::patless::{profile_config, Patless, ADO};
use crate::support::upstream::FakeUpstream;
use crate::support::write_file;

const PFX_PASSWORD: &str = "pfx-Password-not-to-be-shown-77";

/// A config with one `client_certificate` profile `cert` behind the route `/ado`.
fn cert_config(entra: &FakeEntra, up: &FakeUpstream, file: &Path, extra: &str) -> String {
    let body = format!(
        "kind = \"client_certificate\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\n\
         certificate = \"{}\"\n{extra}",
        file.display()
    );
    profile_config(Some(&entra.authority()), &up.url(), "cert", &body, "")
}

/// The test PKI, a fake Entra on which only its leaf certificate is registered for the app, and
/// a directory for the files.
async fn leaf_registered() -> (&'static Pki, FakeEntra, TempDir) {
    let pki = pki();
    let entra = FakeEntra::start().await;
    entra.set_assertion_verifier(verifier_for(&pki.leaf.der, CLIENT_ID));
    (pki, entra, TempDir::new().expect("tempdir"))
}

fn credential(
    entra: &FakeEntra,
    file: &Path,
    password: Option<SecretSource>,
    send_chain: bool,
) -> ClientCertificateCredential {
    ClientCertificateCredential::new(
        entra.client(),
        entra.authority_url(),
        TENANT.into(),
        CLIENT_ID.into(),
        file.to_path_buf(),
        password,
        send_chain,
        Arc::new(MapEnv::default()),
    )
}

fn literal(password: &str) -> Option<SecretSource> {
    Some(SecretSource::Literal(Secret::new(password)))
}

/// Acquires once with a fresh credential on `file`.
async fn acquire(
    entra: &FakeEntra,
    file: &Path,
    password: Option<SecretSource>,
) -> Result<(), CredentialError> {
    credential(entra, file, password, false)
        .acquire(ADO, None)
        .await
        .map(|_| ())
}

async fn expect_not_configured(
    entra: &FakeEntra,
    file: &Path,
    password: Option<SecretSource>,
    wanted: &str,
) -> String {
    let err = acquire(entra, file, password)
        .await
        .expect_err("the file cannot be used");
    assert_eq!(err.class, ErrorClass::NotConfigured, "{}", err.message);
    assert!(
        err.message.contains(&file.display().to_string()),
        "the message names the file: {}",
        err.message
    );
    assert!(
        err.message.contains(wanted),
        "expected `{wanted}` in: {}",
        err.message
    );
    err.message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pem_bundle_signs_a_ps256_assertion_that_entra_accepts() {
    let (pki, entra, dir) = leaf_registered().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let file = write_file(dir.path(), "client.pem", pki.bundle_pem());
    let p = Patless::start(&cert_config(&entra, &up, &file, "")).await;

    let r = p.get("/ado/org/_apis/projects").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(up.accepted(), 1, "the upstream verified the token");

    let requests = entra.requests();
    assert_eq!(requests.len(), 1);
    let form = &requests[0].form;
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(
        form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert_eq!(form["scope"], ADO);
    assert!(!form.contains_key("client_secret"));
    let assertion = &form["client_assertion"];
    let header = jwt_header(assertion);
    assert_eq!(header["alg"], "PS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["x5t#S256"], thumbprint_s256(&pki.leaf.der));
    assert!(
        header.get("x5c").is_none(),
        "no chain unless asked: {header}"
    );
    let claims = jwt_claims(assertion);
    assert_eq!(claims["aud"], entra.token_url());
    assert_eq!(claims["iss"], CLIENT_ID);
    assert_eq!(claims["sub"], CLIENT_ID);
    assert!(
        claims["jti"].as_str().is_some_and(|j| j.len() == 36),
        "{claims}"
    );
    let (nbf, iat, exp) = (
        claims["nbf"].as_u64().expect("nbf"),
        claims["iat"].as_u64().expect("iat"),
        claims["exp"].as_u64().expect("exp"),
    );
    assert_eq!(nbf, iat);
    assert_eq!(exp - nbf, 600);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pfx_with_its_password_from_the_environment_works() {
    let (pki, entra, dir) = leaf_registered().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let file = write_file(
        dir.path(),
        "client.pfx",
        pfx(&pki.leaf, &[&pki.leaf, &pki.ca], PFX_PASSWORD),
    );
    let toml = cert_config(
        &entra,
        &up,
        &file,
        r#"certificate_password = { env = "CERT_PASSWORD" }"#,
    );
    let p = Patless::start_with_env(&toml, MapEnv::new([("CERT_PASSWORD", PFX_PASSWORD)])).await;
    let r = p.get("/ado/x").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(up.accepted(), 1);
    let assertion = &entra.client_assertions()[0];
    assert_eq!(
        jwt_header(assertion)["x5t#S256"],
        thumbprint_s256(&pki.leaf.der)
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pfx_is_recognised_by_its_content_whatever_its_name() {
    let (pki, entra, dir) = leaf_registered().await;
    let file = write_file(
        dir.path(),
        "client.cert",
        pfx(&pki.leaf, &[&pki.leaf], PFX_PASSWORD),
    );
    acquire(&entra, &file, literal(PFX_PASSWORD))
        .await
        .expect("a PFX named .cert is still read as PFX");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_certificate_chain_puts_x5c_leaf_first_whatever_the_file_order() {
    let (pki, entra, dir) = leaf_registered().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    // CA first, key last: the leaf is the certificate whose key is in the file.
    let file = write_file(dir.path(), "client.pem", pki.bundle_pem_ca_first());
    let p = Patless::start(&cert_config(
        &entra,
        &up,
        &file,
        "send_certificate_chain = true",
    ))
    .await;
    let r = p.get("/ado/x").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let header = jwt_header(&entra.client_assertions()[0]);
    assert_eq!(header["alg"], "PS256");
    assert_eq!(header["x5t#S256"], thumbprint_s256(&pki.leaf.der));
    assert_eq!(
        header["x5c"],
        Value::from(vec![
            STANDARD.encode(&pki.leaf.der),
            STANDARD.encode(&pki.ca.der)
        ]),
        "x5c is standard base64 DER, leaf first"
    );
    p.stop().await;

    // From a PFX listing the CA first, too.
    let file = write_file(
        dir.path(),
        "chain.pfx",
        pfx(&pki.leaf, &[&pki.ca, &pki.leaf], PFX_PASSWORD),
    );
    credential(&entra, &file, literal(PFX_PASSWORD), true)
        .acquire(ADO, None)
        .await
        .expect("token");
    let header = jwt_header(entra.client_assertions().last().expect("assertion"));
    assert_eq!(
        header["x5c"],
        Value::from(vec![
            STANDARD.encode(&pki.leaf.der),
            STANDARD.encode(&pki.ca.der)
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_certificate_is_a_503_with_aadsts700027_and_its_hint() {
    let (pki, entra, dir) = leaf_registered().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let file = write_file(
        dir.path(),
        "other.pem",
        format!("{}{}", pki.other.pem, pki.other.key_pem),
    );
    let p = Patless::start(&cert_config(&entra, &up, &file, "")).await;
    let r = p.get("/ado/x").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "token_unavailable");
    assert_eq!(body["profile"], "cert");
    let msg = body["message"].as_str().expect("message");
    assert!(msg.contains("AADSTS700027"), "{msg}");
    assert!(
        msg.contains("is the certificate registered on the app?"),
        "{msg}"
    );
    assert!(
        msg.contains("CN=patless renewed client"),
        "names the certificate used: {msg}"
    );
    assert!(up.requests().is_empty());
    let metrics = p.metrics().await;
    assert!(
        metrics
            .contains(r#"patless_token_refreshes_total{profile="cert",result="invalid_client"}"#),
        "{metrics}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pfx_password_names_the_file_and_never_the_password() {
    let (pki, entra, dir) = leaf_registered().await;
    let file = write_file(
        dir.path(),
        "client.pfx",
        pfx(&pki.leaf, &[&pki.leaf], PFX_PASSWORD),
    );
    let wrong = "Wrong-Password-Also-Secret-31";
    let msg =
        expect_not_configured(&entra, &file, literal(wrong), "wrong certificate_password").await;
    assert!(!msg.contains(wrong) && !msg.contains(PFX_PASSWORD), "{msg}");
    expect_not_configured(&entra, &file, None, "set certificate_password").await;
    let msg = expect_not_configured(
        &entra,
        &file,
        Some(SecretSource::Env("NOT_SET_ANYWHERE".into())),
        "NOT_SET_ANYWHERE",
    )
    .await;
    assert!(msg.contains("certificate_password"), "{msg}");
    assert_eq!(entra.token_requests(), 0, "nothing is sent to Entra");

    // Through the proxy: a 503 with the same explanation, and no password in the body.
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let toml = cert_config(
        &entra,
        &up,
        &file,
        &format!("certificate_password = \"{wrong}\""),
    );
    let p = Patless::start(&toml).await;
    let r = p.get("/ado/x").await;
    assert_eq!(r.status(), 503);
    let text = r.text().await.expect("body");
    assert!(text.contains("wrong certificate_password"), "{text}");
    assert!(text.contains("client.pfx"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_problems_are_explained_and_name_the_file() {
    let (pki, entra, dir) = leaf_registered().await;

    let missing = dir.path().join("missing.pem");
    expect_not_configured(&entra, &missing, None, "cannot read the file").await;

    let cert_only = write_file(dir.path(), "cert-only.pem", &pki.leaf.pem);
    expect_not_configured(&entra, &cert_only, None, "contains no private key").await;

    let key_only = write_file(dir.path(), "key-only.pem", &pki.leaf.key_pem);
    expect_not_configured(&entra, &key_only, None, "contains no certificate").await;

    let ec = write_file(
        dir.path(),
        "ec.pem",
        format!("{}{}", pki.ec.pem, pki.ec.key_pem),
    );
    let msg = expect_not_configured(&entra, &ec, None, "only RSA certificates are supported").await;
    assert!(msg.contains("EC"), "{msg}");

    let ec_pfx = write_file(dir.path(), "ec.pfx", pfx(&pki.ec, &[&pki.ec], PFX_PASSWORD));
    expect_not_configured(
        &entra,
        &ec_pfx,
        literal(PFX_PASSWORD),
        "only RSA certificates are supported",
    )
    .await;

    let mismatch = write_file(
        dir.path(),
        "mismatch.pem",
        format!("{}{}", pki.leaf.pem, pki.other.key_pem),
    );
    expect_not_configured(&entra, &mismatch, None, "does not match the certificate").await;

    let garbage = write_file(dir.path(), "garbage.pem", "this is not a certificate\n");
    expect_not_configured(&entra, &garbage, None, "neither PEM").await;

    let not_pfx = write_file(dir.path(), "broken.pfx", b"\x30\x03\x02\x01\x03");
    expect_not_configured(
        &entra,
        &not_pfx,
        literal(PFX_PASSWORD),
        "not a readable PFX",
    )
    .await;

    assert_eq!(entra.token_requests(), 0, "nothing is sent to Entra");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_read_again_at_each_acquisition() {
    let pki = pki();
    let entra = FakeEntra::start().await;
    // The app has both certificates registered, as during a renewal.
    entra.set_assertion_verifier(verifier_for_any(
        &[&pki.leaf.der, &pki.other.der],
        CLIENT_ID,
    ));
    let dir = TempDir::new().expect("tempdir");
    let file = write_file(dir.path(), "client.pem", pki.bundle_pem());
    let cred = credential(&entra, &file, None, false);

    cred.acquire(ADO, None).await.expect("first token");
    // The renewed certificate replaces the file (as cert-manager or a Key Vault sync does).
    write_file(
        dir.path(),
        "client.pem",
        format!("{}{}", pki.other.key_pem, pki.other.pem),
    );
    cred.acquire(ADO, None).await.expect("second token");

    let sent: Vec<String> = entra
        .client_assertions()
        .iter()
        .map(|a| {
            jwt_header(a)["x5t#S256"]
                .as_str()
                .expect("x5t#S256")
                .to_string()
        })
        .collect();
    assert_eq!(
        sent,
        vec![
            thumbprint_s256(&pki.leaf.der),
            thumbprint_s256(&pki.other.der)
        ]
    );
    let jtis: Vec<Value> = entra
        .client_assertions()
        .iter()
        .map(|a| jwt_claims(a)["jti"].clone())
        .collect();
    assert_ne!(jtis[0], jtis[1], "every assertion has its own jti");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_made_by_openssl_work() {
    let cert = cert_der_from_pem(support::certs::OPENSSL_CERT_PEM);
    let entra = FakeEntra::start().await;
    entra.set_assertion_verifier(verifier_for(&cert, CLIENT_ID));
    let dir = TempDir::new().expect("tempdir");

    let aes = write_file(dir.path(), "aes.pfx", support::certs::OPENSSL_AES_PFX);
    acquire(&entra, &aes, literal(FIXTURE_PASSWORD))
        .await
        .expect("OpenSSL 3 default PFX");

    let legacy = write_file(dir.path(), "legacy.p12", support::certs::OPENSSL_LEGACY_PFX);
    acquire(&entra, &legacy, literal(FIXTURE_PASSWORD))
        .await
        .expect("legacy 3DES/RC2 PFX");

    let encrypted = write_file(
        dir.path(),
        "encrypted.pem",
        support::certs::OPENSSL_ENCRYPTED_KEY_PEM,
    );
    acquire(&entra, &encrypted, literal(FIXTURE_PASSWORD))
        .await
        .expect("encrypted PKCS#8 PEM key");
    expect_not_configured(
        &entra,
        &encrypted,
        None,
        "its private key is encrypted: set certificate_password",
    )
    .await;
    let msg = expect_not_configured(
        &entra,
        &encrypted,
        literal("nope-nope"),
        "cannot decrypt its private key",
    )
    .await;
    assert!(!msg.contains("nope-nope"));

    for a in entra.client_assertions() {
        assert_eq!(jwt_header(&a)["x5t#S256"], thumbprint_s256(&cert));
    }
    assert_eq!(entra.issued_tokens().len(), 3);
}

#[tokio::test]
async fn debug_shows_where_the_password_comes_from_never_the_password() {
    let entra = FakeEntra::start().await;
    let cred = credential(
        &entra,
        Path::new("/etc/patless/client.pfx"),
        literal(PFX_PASSWORD),
        true,
    );
    let debug = format!("{cred:?}");
    assert!(debug.contains("client.pfx"), "{debug}");
    assert!(!debug.contains(PFX_PASSWORD), "{debug}");
}

#[test]
fn the_verifier_refuses_what_entra_would() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let pki = pki();
    let url = "http://127.0.0.1:1/t/oauth2/v2.0/token";
    let verify = verifier_for(&pki.leaf.der, CLIENT_ID);
    let now = support::now_secs();
    let sign = |key_pem: &str, x5t: &str, aud: &str, nbf: u64, exp: u64| {
        let mut header = Header::new(Algorithm::PS256);
        header.x5t_s256 = Some(x5t.to_string());
        let claims = serde_json::json!({
            "aud": aud, "iss": CLIENT_ID, "sub": CLIENT_ID, "jti": "j", "nbf": nbf, "iat": nbf, "exp": exp,
        });
        encode(
            &header,
            &claims,
            &EncodingKey::from_rsa_pem(key_pem.as_bytes()).expect("key"),
        )
        .expect("sign")
    };
    let leaf_x5t = thumbprint_s256(&pki.leaf.der);
    assert_eq!(
        verify(
            &sign(&pki.leaf.key_pem, &leaf_x5t, url, now, now + 600),
            url
        ),
        Ok(())
    );
    // Someone else's key claiming the registered certificate.
    assert_eq!(
        verify(
            &sign(&pki.other.key_pem, &leaf_x5t, url, now, now + 600),
            url
        )
        .unwrap_err()
        .0,
        700_027
    );
    // A certificate that is not registered.
    let other_x5t = thumbprint_s256(&pki.other.der);
    assert_eq!(
        verify(
            &sign(&pki.other.key_pem, &other_x5t, url, now, now + 600),
            url
        )
        .unwrap_err()
        .0,
        700_027
    );
    // Wrong audience, expired, not yet valid, too long-lived.
    assert!(verify(
        &sign(
            &pki.leaf.key_pem,
            &leaf_x5t,
            "http://elsewhere/token",
            now,
            now + 600
        ),
        url
    )
    .is_err());
    assert_eq!(
        verify(
            &sign(&pki.leaf.key_pem, &leaf_x5t, url, now - 900, now - 300),
            url
        )
        .unwrap_err()
        .0,
        700_024
    );
    assert_eq!(
        verify(
            &sign(&pki.leaf.key_pem, &leaf_x5t, url, now + 300, now + 900),
            url
        )
        .unwrap_err()
        .0,
        700_024
    );
    assert_eq!(
        verify(
            &sign(&pki.leaf.key_pem, &leaf_x5t, url, now, now + 7200),
            url
        )
        .unwrap_err()
        .0,
        700_024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_may_live_in_a_second_pem_file() {
    let (pki, entra, dir) = leaf_registered().await;
    let up = FakeUpstream::start(ADO_AUDIENCE).await;
    let cert = write_file(
        dir.path(),
        "client.crt",
        format!("{}{}", pki.leaf.pem, pki.ca.pem),
    );
    let key = write_file(dir.path(), "client.key", pki.leaf.key_pem.clone());
    let extra = format!("certificate_key = \"{}\"", key.display());
    let p = Patless::start(&cert_config(&entra, &up, &cert, &extra)).await;
    let r = p.get("/ado/org/_apis/projects").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(up.accepted(), 1);
    let header = jwt_header(&entra.requests()[0].form["client_assertion"]);
    assert_eq!(header["x5t#S256"], thumbprint_s256(&pki.leaf.der));

    // Without the key file, the certificate alone cannot sign: the error names the file.
    let p = Patless::start(&cert_config(&entra, &up, &cert, "")).await;
    let r = p.get("/ado/x").await;
    assert_eq!(r.status(), 503);
    let body = r.text().await.expect("body");
    assert!(body.contains("client.crt"), "{body}");
}
