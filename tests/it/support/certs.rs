//! Test certificates and the client-assertion verifier that makes [`super::entra::FakeEntra`] act
//! as an app with registered certificates.
//!
//! Certificates are made at test time with rcgen on aws-lc-rs (RSA-2048 keys): a CA, a leaf it
//! signed, a second self-signed leaf (for rotation and "not registered"), and an EC one (for "only
//! RSA"). PFX files are written with p12-keystore. For interoperability with files made
//! elsewhere, `certs/` holds fixtures made once with the OpenSSL 3 CLI (password
//! [`FIXTURE_PASSWORD`]), which tests only read:
//!
//! ```text
//! openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out openssl-cert.pem -days 36500 -subj "/CN=patless openssl fixture"
//! openssl pkcs12 -export -inkey key.pem -in openssl-cert.pem -out openssl-aes.pfx -passout pass:fixture-password
//! openssl pkcs12 -export -legacy -inkey key.pem -in openssl-cert.pem -out openssl-legacy.pfx -passout pass:fixture-password
//! openssl pkcs8 -topk8 -v2 aes-256-cbc -in key.pem -passout pass:fixture-password -out enc.pem
//! cat openssl-cert.pem enc.pem > openssl-encrypted-key.pem
//! ```

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;

use super::entra::AssertionVerifier;

/// Password of the OpenSSL-made PFX fixtures and of the encrypted PEM key fixture.
pub const FIXTURE_PASSWORD: &str = "fixture-password";
/// The OpenSSL fixture's certificate (PEM).
pub const OPENSSL_CERT_PEM: &str = include_str!("certs/openssl-cert.pem");
/// The OpenSSL fixture as a PFX, AES-256-CBC + PBKDF2 + HMAC-SHA256 (OpenSSL 3's default).
pub const OPENSSL_AES_PFX: &[u8] = include_bytes!("certs/openssl-aes.pfx");
/// The OpenSSL fixture as a legacy PFX (RC2-40 certificates, 3DES key, SHA-1 MAC), as older
/// tools and Windows export them.
pub const OPENSSL_LEGACY_PFX: &[u8] = include_bytes!("certs/openssl-legacy.pfx");
/// The OpenSSL fixture's certificate and its key as `ENCRYPTED PRIVATE KEY` (PBES2, AES-256).
pub const OPENSSL_ENCRYPTED_KEY_PEM: &str = include_str!("certs/openssl-encrypted-key.pem");

/// A certificate and its private key.
pub struct TestCert {
    /// Certificate, DER.
    pub der: Vec<u8>,
    /// Certificate, PEM.
    pub pem: String,
    /// Private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// Private key, PKCS#8 PEM (`PRIVATE KEY`).
    pub key_pem: String,
}

/// The certificates a test binary shares (RSA key generation takes a moment).
pub struct Pki {
    /// A test CA (RSA).
    pub ca: TestCert,
    /// An RSA leaf signed by `ca`.
    pub leaf: TestCert,
    /// A self-signed RSA leaf (a renewed certificate, or one not registered).
    pub other: TestCert,
    /// A self-signed EC (P-256) leaf.
    pub ec: TestCert,
    /// Signs [`Pki::server`].
    issuer: Issuer<'static, KeyPair>,
    server: OnceLock<TestCert>,
}

impl Pki {
    /// A TLS server certificate (EC P-256) for `localhost` and `127.0.0.1`, signed by `ca`; made
    /// on first use. Clients trust it with `ca.pem` as their CA file.
    pub fn server(&self) -> &TestCert {
        self.server.get_or_init(|| {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("server key");
            let mut params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .expect("server params");
            params
                .distinguished_name
                .push(DnType::CommonName, "patless test server");
            let cert = params.signed_by(&key, &self.issuer).expect("server cert");
            test_cert(cert.der().to_vec(), cert.pem(), &key)
        })
    }

    /// Key, leaf and CA in one PEM file: the usual bundle.
    pub fn bundle_pem(&self) -> String {
        format!("{}{}{}", self.leaf.key_pem, self.leaf.pem, self.ca.pem)
    }

    /// The same bundle listed CA first and key last.
    pub fn bundle_pem_ca_first(&self) -> String {
        format!("{}{}{}", self.ca.pem, self.leaf.pem, self.leaf.key_pem)
    }
}

/// The shared certificates, made on first use.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "patless test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let ca = test_cert(ca_cert.der().to_vec(), ca_cert.pem(), &ca_key);
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = leaf(
            "patless test client",
            &rcgen::PKCS_RSA_SHA256,
            Some(&issuer),
        );
        let other = leaf_self_signed("patless renewed client", &rcgen::PKCS_RSA_SHA256);
        let ec = leaf_self_signed("patless EC client", &rcgen::PKCS_ECDSA_P256_SHA256);
        Pki {
            ca,
            leaf,
            other,
            ec,
            issuer,
            server: OnceLock::new(),
        }
    })
}

fn test_cert(der: Vec<u8>, pem: String, key: &KeyPair) -> TestCert {
    TestCert {
        der,
        pem,
        key_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
    }
}

fn leaf(
    name: &str,
    alg: &'static rcgen::SignatureAlgorithm,
    issuer: Option<&Issuer<'static, KeyPair>>,
) -> TestCert {
    let key = KeyPair::generate_for(alg).expect("leaf key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = match issuer {
        Some(issuer) => params.signed_by(&key, issuer),
        None => params.self_signed(&key),
    }
    .expect("leaf cert");
    test_cert(cert.der().to_vec(), cert.pem(), &key)
}

fn leaf_self_signed(name: &str, alg: &'static rcgen::SignatureAlgorithm) -> TestCert {
    leaf(name, alg, None)
}

/// A PFX holding `key_of`'s key and `certs` (first is the leaf), encrypted with `password`
/// (p12-keystore's defaults: AES-256, HMAC-SHA256).
pub fn pfx(key_of: &TestCert, certs: &[&TestCert], password: &str) -> Vec<u8> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let key = PrivateKey::from_der(&key_of.key_der).expect("PKCS#8 key");
    let certs: Vec<Certificate> = certs
        .iter()
        .map(|c| Certificate::from_der(&c.der).expect("cert"))
        .collect();
    let chain = PrivateKeyChain::new(b"patless-test".to_vec(), key, certs);
    let mut store = KeyStore::new();
    store.add_entry("patless-test", KeyStoreEntry::PrivateKeyChain(chain));
    store.writer(password).write().expect("write PFX")
}

/// The DER of the first certificate in `pem`.
pub fn cert_der_from_pem(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a certificate")
        .as_ref()
        .to_vec()
}

/// `base64url(SHA-256(der))`: the `x5t#S256` of a certificate.
pub fn thumbprint_s256(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

fn segment(jwt: &str, i: usize) -> Value {
    let part = jwt.split('.').nth(i).expect("a JWT segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

/// A JWT's header, unverified.
pub fn jwt_header(jwt: &str) -> Value {
    segment(jwt, 0)
}

/// A JWT's claims, unverified.
pub fn jwt_claims(jwt: &str) -> Value {
    segment(jwt, 1)
}

/// The PKCS#1 RSA public key of a certificate (what `DecodingKey::from_rsa_der` takes).
fn rsa_public_key(cert_der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).expect("certificate");
    cert.public_key().subject_public_key.data.to_vec()
}

/// A verifier accepting assertions signed with `cert_der`'s key for `client_id`.
pub fn verifier_for(cert_der: &[u8], client_id: &str) -> AssertionVerifier {
    verifier_for_any(&[cert_der], client_id)
}

/// A verifier accepting assertions signed by any of `certs` (an app with several registered
/// certificates), checked as Entra does: the `x5t#S256` names a registered certificate, the PS256
/// (or RS256) signature verifies with its key, `aud` is the token URL, `iss` = `sub` = the client
/// id, `nbf` is not in the future and `exp` is in the future but at most ten minutes (and some
/// slack) away. Unknown certificate or bad signature → AADSTS700027; time → AADSTS700024;
/// wrong claims → AADSTS700027 too, with a message saying which.
pub fn verifier_for_any(certs: &[&[u8]], client_id: &str) -> AssertionVerifier {
    let registered: Vec<(String, Vec<u8>)> = certs
        .iter()
        .map(|c| (thumbprint_s256(c), rsa_public_key(c)))
        .collect();
    let client_id = client_id.to_string();
    Arc::new(move |assertion: &str, token_url: &str| {
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|e| (700_027, format!("Client assertion is not a valid JWT: {e}")))?;
        let x5t = jwt_header(assertion)["x5t#S256"]
            .as_str()
            .map(str::to_string)
            .ok_or((700_027, "Client assertion has no x5t#S256.".to_string()))?;
        let Some((_, key)) = registered.iter().find(|(t, _)| *t == x5t) else {
            return Err((
                700_027,
                format!(
                    "Client assertion failed signature validation. Key was not found: \
                     x5t#S256 {x5t} is not registered on app '{client_id}'."
                ),
            ));
        };
        if !matches!(header.alg, Algorithm::PS256 | Algorithm::RS256) {
            return Err((700_027, format!("Unsupported algorithm {:?}.", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[token_url]);
        validation.set_issuer(&[&client_id]);
        validation.sub = Some(client_id.clone());
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        let data =
            jsonwebtoken::decode::<Value>(assertion, &DecodingKey::from_rsa_der(key), &validation)
                .map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind;
                    match e.kind() {
                        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => (
                            700_024,
                            format!("Client assertion is not within its valid time range ({e})."),
                        ),
                        ErrorKind::InvalidSignature => (
                            700_027,
                            "Client assertion failed signature validation.".into(),
                        ),
                        _ => (700_027, format!("Client assertion is invalid: {e}.")),
                    }
                })?;
        let now = super::now_secs();
        let exp = data.claims["exp"].as_u64().unwrap_or_default();
        if exp > now + 600 + 30 {
            return Err((
                700_024,
                format!("Client assertion lives too long (exp {exp}, now {now})."),
            ));
        }
        if data.claims["jti"].as_str().unwrap_or_default().is_empty() {
            return Err((700_027, "Client assertion has no jti.".into()));
        }
        Ok(())
    })
}
