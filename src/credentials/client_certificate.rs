//! `client_certificate`: the client credentials grant with a certificate-signed client assertion
//! (see docs/credentials.md, client_certificate).
//!
//! The certificate file is read at every acquisition, so a renewed certificate is used as soon as
//! it is on disk. It is either PEM (certificates and the private key in one file; the key may be
//! an encrypted PKCS#8 `ENCRYPTED PRIVATE KEY`, opened with `certificate_password`) or PFX/P12
//! (chosen by the `.pfx`/`.p12` extension, or by content when the file is not PEM). The leaf is
//! the certificate whose public key matches the private key, whatever the order in the file.
//!
//! The assertion is a PS256 JWT: header `x5t#S256` (the leaf's SHA-256 thumbprint) and, with
//! `send_certificate_chain`, `x5c` (leaf first); claims `aud` = the token URL, `iss` = `sub` = the
//! client id, a random `jti`, `nbf` = `iat` = now, `exp` = now + 10 min. Only RSA keys: Entra
//! signs nothing else for client assertions.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair, RsaSubjectPublicKey, RSA_PSS_SHA256};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use url::Url;

use super::{AccessToken, BoxFuture, Credential, CredentialError, EntraClient, ErrorClass};
use crate::config::SecretSource;
use crate::env::Env;
use crate::secret::Secret;

/// How long an assertion is valid (`exp` − `nbf`): 10 min, as the Microsoft authentication
/// libraries do; Entra wants a short-lived assertion (5 to 10 min), and a leaked one is usable only
/// that long.
const ASSERTION_LIFETIME_SECS: u64 = 600;

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_RSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_ED448: &str = "1.3.101.113";

/// A service principal with a certificate.
pub struct ClientCertificateCredential {
    key_file: Option<PathBuf>,
    entra: EntraClient,
    token_url: String,
    tenant_id: String,
    client_id: String,
    certificate: PathBuf,
    password: Option<SecretSource>,
    send_chain: bool,
    env: Env,
}

impl std::fmt::Debug for ClientCertificateCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificateCredential")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("certificate", &self.certificate)
            .field("password", &self.password)
            .field("send_chain", &self.send_chain)
            .finish()
    }
}

impl ClientCertificateCredential {
    /// A credential for `client_id` in `tenant_id` signing with the certificate in `certificate`
    /// (PEM or PFX, read at each acquisition); `password` opens a PFX or an encrypted PEM key;
    /// `send_chain` adds `x5c` (needed for subject name + issuer registration).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        entra: EntraClient,
        authority: Url,
        tenant_id: String,
        client_id: String,
        certificate: PathBuf,
        password: Option<SecretSource>,
        send_chain: bool,
        env: Env,
    ) -> Self {
        ClientCertificateCredential {
            token_url: EntraClient::token_url(&authority, &tenant_id),
            entra,
            tenant_id,
            client_id,
            certificate,
            password,
            send_chain,
            env,
            key_file: None,
        }
    }

    /// The private key lives in a separate PEM file (`certificate_key`), read with the certificate
    /// at each acquisition.
    pub fn with_key_file(mut self, key_file: Option<PathBuf>) -> Self {
        self.key_file = key_file;
        self
    }

    fn not_configured(&self, problem: impl std::fmt::Display) -> CredentialError {
        CredentialError::new(
            ErrorClass::NotConfigured,
            format!(
                "client certificate {} (app {}): {problem}",
                self.certificate.display(),
                self.client_id
            ),
        )
    }

    /// The configured password, read now; `None` when none is configured.
    fn password(&self) -> Result<Option<Secret>, String> {
        match &self.password {
            None => Ok(None),
            Some(source) => source
                .resolve(self.env.as_ref())
                .map(Some)
                .map_err(|why| format!("certificate_password: {why}")),
        }
    }
}

impl ClientCertificateCredential {
    /// The certificate file, for descriptions.
    pub(crate) fn certificate_path(&self) -> String {
        self.certificate.display().to_string()
    }

    /// Reads the certificate (and its key) now and signs a fresh client assertion for the token
    /// URL. Also returns the leaf as the Entra portal lists it, for [`name_refused_certificate`].
    pub(crate) async fn sign_assertion(&self) -> Result<(Secret, String), CredentialError> {
        let mut bytes = tokio::fs::read(&self.certificate)
            .await
            .map_err(|e| self.not_configured(format_args!("cannot read the file: {e}")))?;
        if let Some(key_file) = &self.key_file {
            if is_pfx(&self.certificate, &bytes) {
                return Err(self.not_configured(
                    "certificate_key is for a PEM certificate; a PFX file holds its own key",
                ));
            }
            let key = tokio::fs::read(key_file).await.map_err(|e| {
                self.not_configured(format_args!(
                    "cannot read the key file {}: {e}",
                    key_file.display()
                ))
            })?;
            bytes.push(b'\n');
            bytes.extend_from_slice(&key);
        }
        let signer = Signer::load(&self.certificate, &bytes, &|| self.password())
            .map_err(|problem| self.not_configured(problem))?;
        let assertion = signer
            .assertion(&self.token_url, &self.client_id, self.send_chain)
            .map_err(|problem| self.not_configured(problem))?;
        Ok((Secret::new(assertion), signer.describe_leaf()))
    }
}

/// Refused signature (AADSTS700027): says which certificate (`leaf`, from
/// [`ClientCertificateCredential::sign_assertion`]) was used, as the portal shows it.
pub(crate) fn name_refused_certificate(e: &mut CredentialError, leaf: &str) {
    if e.codes.contains(&700027) {
        e.message.push_str(&format!(
            " (patless signed with the certificate {leaf}; compare with the app's Certificates & \
             secrets)"
        ));
    }
}

impl Credential for ClientCertificateCredential {
    fn acquire<'a>(
        &'a self,
        scope: &'a str,
        claims: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, CredentialError>> {
        Box::pin(async move {
            let (assertion, leaf) = self.sign_assertion().await?;
            self.entra
                .exchange_assertion(
                    &self.token_url,
                    &self.client_id,
                    scope,
                    assertion.expose(),
                    claims,
                )
                .await
                .map_err(|mut e| {
                    name_refused_certificate(&mut e, &leaf);
                    e
                })
        })
    }
}

/// A private key and its certificate chain, leaf first.
struct Signer {
    key: RsaKeyPair,
    chain: Vec<Vec<u8>>,
}

/// A private key as found in the file, before it is known to be RSA.
enum KeyDer {
    /// PKCS#8 `PrivateKeyInfo` (`PRIVATE KEY`, decrypted `ENCRYPTED PRIVATE KEY`, PFX key bags).
    Pkcs8(Vec<u8>),
    /// PKCS#1 `RSAPrivateKey` (`RSA PRIVATE KEY`).
    Pkcs1(Vec<u8>),
    /// SEC1 `ECPrivateKey` (`EC PRIVATE KEY`).
    Sec1,
}

impl Signer {
    /// Reads a PEM or PFX file's contents; `password` is asked for only when the file needs one.
    /// The error is the problem, for a message that already names the file.
    fn load(
        path: &Path,
        bytes: &[u8],
        password: &dyn Fn() -> Result<Option<Secret>, String>,
    ) -> Result<Signer, String> {
        let (certs, keys) = if is_pfx(path, bytes) {
            read_pfx(bytes, password)?
        } else {
            read_pem(bytes, password)?
        };
        if certs.is_empty() {
            return Err("it contains no certificate (expected PEM `CERTIFICATE` blocks beside the private key, or a PFX/P12 file)".into());
        }
        if keys.is_empty() {
            return Err("it contains no private key (the certificate and its private key must be in the same PEM file, or use a PFX/P12 file)".into());
        }
        let keys = keys
            .into_iter()
            .map(rsa_key)
            .collect::<Result<Vec<_>, _>>()?;
        for key in keys {
            let public = key.public_key().as_ref().to_vec();
            if let Some(leaf) = certs
                .iter()
                .position(|c| cert_rsa_key(c).as_deref() == Some(&public))
            {
                return Ok(Signer {
                    key,
                    chain: order_chain(certs, leaf),
                });
            }
        }
        let rsa_certs = certs.iter().filter(|c| cert_rsa_key(c).is_some()).count();
        if rsa_certs == 0 {
            return Err(format!(
                "{}; only RSA certificates are supported",
                not_rsa_certificates(&certs)
            ));
        }
        Err(format!(
            "the private key does not match {} in the file",
            if certs.len() == 1 {
                "the certificate".to_string()
            } else {
                format!("any of the {} certificates", certs.len())
            }
        ))
    }

    /// The leaf as the Entra portal lists it: subject and SHA-1 thumbprint.
    fn describe_leaf(&self) -> String {
        let leaf = &self.chain[0];
        let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, leaf);
        let thumbprint: String = sha1.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        let subject = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_default();
        format!("`{subject}` with thumbprint {thumbprint}")
    }

    /// The signed client assertion for `token_url`.
    fn assertion(
        &self,
        token_url: &str,
        client_id: &str,
        send_chain: bool,
    ) -> Result<String, String> {
        let leaf = &self.chain[0];
        let thumbprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf);
        let mut header = json!({
            "alg": "PS256",
            "typ": "JWT",
            "x5t#S256": URL_SAFE_NO_PAD.encode(thumbprint.as_ref()),
        });
        if send_chain {
            header["x5c"] = self.chain.iter().map(|c| STANDARD.encode(c)).collect();
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let claims = json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": random_uuid(),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PSS_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "signing the client assertion with its private key failed".to_string())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// PFX by extension, or by content: DER (a SEQUENCE) rather than PEM text.
fn is_pfx(path: &Path, bytes: &[u8]) -> bool {
    let by_extension = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("pfx") || e.eq_ignore_ascii_case("p12"));
    by_extension || (!contains(bytes, b"-----BEGIN ") && bytes.first() == Some(&0x30))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

type Contents = (Vec<Vec<u8>>, Vec<KeyDer>);

fn read_pem(
    bytes: &[u8],
    password: &dyn Fn() -> Result<Option<Secret>, String>,
) -> Result<Contents, String> {
    if !contains(bytes, b"-----BEGIN ") {
        return Err("it is neither PEM (no `-----BEGIN` line) nor a PFX/P12 archive".into());
    }
    if contains(bytes, b"Proc-Type: 4,ENCRYPTED") {
        return Err("its private key is encrypted in the legacy OpenSSL format, which is not supported: convert it to PKCS#8 (`openssl pkcs8 -topk8 -v2 aes-256-cbc`) or use a PFX file".into());
    }
    let certs = CertificateDer::pem_slice_iter(bytes)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("it is not valid PEM ({})", pem_problem(&e)))?;
    let mut keys = PrivateKeyDer::pem_slice_iter(bytes)
        .map(|k| {
            k.map(|k| match k {
                PrivateKeyDer::Pkcs8(k) => KeyDer::Pkcs8(k.secret_pkcs8_der().to_vec()),
                PrivateKeyDer::Pkcs1(k) => KeyDer::Pkcs1(k.secret_pkcs1_der().to_vec()),
                _ => KeyDer::Sec1,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("it is not valid PEM ({})", pem_problem(&e)))?;
    for encrypted in pem_blocks(bytes, "ENCRYPTED PRIVATE KEY")? {
        let Some(password) = password()? else {
            return Err("its private key is encrypted: set certificate_password".into());
        };
        let info =
            pkcs8::EncryptedPrivateKeyInfoRef::try_from(encrypted.as_slice()).map_err(|_| {
                "its ENCRYPTED PRIVATE KEY block is not a PKCS#8 encrypted key".to_string()
            })?;
        let decrypted = info.decrypt(password.expose()).map_err(|_| {
            "cannot decrypt its private key: wrong certificate_password, or an unsupported encryption scheme (PBES2 with AES is supported)".to_string()
        })?;
        keys.push(KeyDer::Pkcs8(decrypted.as_bytes().to_vec()));
    }
    Ok((certs, keys))
}

/// The PEM parser's error, without the bytes it choked on (they may be key material).
fn pem_problem(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a block has no `-----END` line",
        Error::IllegalSectionStart { .. } => "a `-----BEGIN` line is malformed",
        Error::Base64Decode(_) => "a block is not valid base64",
        _ => "unreadable",
    }
}

/// The base64 bodies of the PEM blocks labelled `label` (those the PEM parser above skips).
fn pem_blocks(bytes: &[u8], label: &str) -> Result<Vec<Vec<u8>>, String> {
    let text = String::from_utf8_lossy(bytes);
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let Some(stop) = after.find(&end) else {
            return Err(format!("its `{begin}` block has no `{end}` line"));
        };
        let body: String = after[..stop]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        blocks.push(
            STANDARD
                .decode(body)
                .map_err(|_| format!("its {label} block is not valid base64"))?,
        );
        rest = &after[stop + end.len()..];
    }
    Ok(blocks)
}

fn read_pfx(
    bytes: &[u8],
    password: &dyn Fn() -> Result<Option<Secret>, String>,
) -> Result<Contents, String> {
    use p12_keystore::error::Error;
    let password = password()?;
    let archive = p12_keystore::Pkcs12Archive::from_pkcs12(
        bytes,
        password.as_ref().map(Secret::expose).unwrap_or_default(),
    )
    .map_err(|e| match (&e, &password) {
        (Error::MacError(_) | Error::UnpadError | Error::Pkcs5Error(_), None) => {
            "the PFX is password-protected: set certificate_password".to_string()
        }
        (Error::MacError(_) | Error::UnpadError | Error::Pkcs5Error(_), Some(_)) => {
            "wrong certificate_password for this PFX (its integrity check or decryption failed)".to_string()
        }
        (Error::UnsupportedEncryptionScheme | Error::UnsupportedMacAlgorithm, _) => format!(
            "the PFX uses a scheme this build cannot open ({e}): re-export it with AES-256 (`openssl pkcs12 -export`, OpenSSL 3's default)"
        ),
        _ => format!("it is not a readable PFX/P12 archive ({e})"),
    })?;
    let certs = archive
        .certs
        .iter()
        .map(|c| c.cert.as_der().to_vec())
        .collect();
    let keys = archive
        .keys
        .iter()
        .map(|k| KeyDer::Pkcs8(k.key.as_der().to_vec()))
        .collect();
    Ok((certs, keys))
}

/// The key as an RSA signing key, or why it is not one.
fn rsa_key(key: KeyDer) -> Result<RsaKeyPair, String> {
    let unusable = |e: aws_lc_rs::error::KeyRejected| {
        format!(
            "its RSA private key cannot be used ({e}; RSA keys of 2048 to 8192 bits are supported)"
        )
    };
    match key {
        KeyDer::Pkcs1(der) => RsaKeyPair::from_der(&der).map_err(unusable),
        KeyDer::Sec1 => Err(not_rsa("an EC")),
        KeyDer::Pkcs8(der) => {
            let oid = pkcs8::PrivateKeyInfoRef::try_from(der.as_slice())
                .map(|info| info.algorithm.oid.to_string())
                .map_err(|_| "its private key is not a valid PKCS#8 key".to_string())?;
            match oid.as_str() {
                OID_RSA => RsaKeyPair::from_pkcs8(&der).map_err(unusable),
                OID_RSA_PSS => Err("its private key is an RSASSA-PSS-only key: export it as a plain RSA key (rsaEncryption)".into()),
                OID_EC => Err(not_rsa("an EC")),
                OID_ED25519 | OID_ED448 => Err(not_rsa("an EdDSA")),
                other => Err(not_rsa(&format!("a non-RSA ({other})"))),
            }
        }
    }
}

fn not_rsa(what: &str) -> String {
    format!("its private key is {what} key; only RSA certificates are supported for client assertions (create the certificate with an RSA key of 2048 bits or more)")
}

fn not_rsa_certificates(certs: &[Vec<u8>]) -> String {
    let algorithm = certs
        .iter()
        .filter_map(|c| x509_parser::parse_x509_certificate(c).ok())
        .map(|(_, c)| c.public_key().algorithm.algorithm.to_id_string())
        .next();
    match algorithm.as_deref() {
        Some(OID_EC) => "its certificate has an EC key".into(),
        Some(OID_ED25519 | OID_ED448) => "its certificate has an EdDSA key".into(),
        Some(other) => format!("its certificate's key is not RSA (algorithm {other})"),
        None => "its certificates cannot be parsed".into(),
    }
}

/// The certificate's RSA public key as aws-lc-rs encodes a key pair's public key (PKCS#1), or
/// `None` when it is not an RSA certificate (or not a certificate at all).
fn cert_rsa_key(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != OID_RSA {
        return None;
    }
    let key = RsaSubjectPublicKey::from_der(&spki.subject_public_key.data).ok()?;
    Some(key.as_ref().to_vec())
}

/// The chain in `x5c` order: the leaf, then each certificate's issuer as found in the file, then
/// whatever else the file holds, in file order.
fn order_chain(mut certs: Vec<Vec<u8>>, leaf: usize) -> Vec<Vec<u8>> {
    let names = |der: &[u8]| -> Option<(Vec<u8>, Vec<u8>)> {
        let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
        Some((c.subject().as_raw().to_vec(), c.issuer().as_raw().to_vec()))
    };
    let mut chain = vec![certs.remove(leaf)];
    while let Some((subject, issuer)) = chain.last().and_then(|c| names(c)) {
        if subject == issuer {
            break;
        }
        let Some(next) = certs
            .iter()
            .position(|c| names(c).is_some_and(|(s, _)| s == issuer))
        else {
            break;
        };
        chain.push(certs.remove(next));
    }
    chain.extend(certs);
    chain
}

/// A random (version 4) UUID for `jti`.
fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, random_uuid());
    }

    #[test]
    fn pfx_detection() {
        assert!(is_pfx(Path::new("/x/cert.PFX"), b"anything"));
        assert!(is_pfx(Path::new("/x/cert.p12"), b""));
        assert!(is_pfx(Path::new("/x/cert"), &[0x30, 0x82, 0x01]));
        assert!(!is_pfx(
            Path::new("/x/cert.pem"),
            b"-----BEGIN CERTIFICATE-----"
        ));
    }

    #[test]
    fn pem_blocks_decode() {
        let pem = b"x\n-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAEC\nAw==\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(
            pem_blocks(pem, "ENCRYPTED PRIVATE KEY").unwrap(),
            vec![vec![0, 1, 2, 3]]
        );
        assert!(pem_blocks(
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA",
            "ENCRYPTED PRIVATE KEY"
        )
        .is_err());
    }
}
