//! Azure Arc-enabled servers: the Arc agent (himds) serves tokens for the machine's
//! system-assigned identity only. It is the source when `IDENTITY_ENDPOINT` and `IMDS_ENDPOINT`
//! are set, or when the agent is installed (then at its default address). A token takes two
//! requests, both `GET {endpoint}?api-version=2019-11-01&resource=R` with `Metadata: true`:
//!
//! 1. the first is refused with 401 and `WWW-Authenticate: Basic realm=<path>`, naming a key file
//!    the agent just wrote into its key directory, readable only by root and the `himds` group;
//! 2. the second carries that file's content as `Authorization: Basic <key>`.
//!
//! Reading the file proves patless runs on the machine with the right rights. Whatever listens at
//! the endpoint chooses the path, so the path is checked before anything is read (see
//! `read_arc_key`): a process squatting on the agent's port must not get patless to send it
//! another file.

use std::path::{Component, Path, PathBuf};

use url::Url;

use super::answer::Failure;
use super::{endpoint_url, id_key, metadata, sensitive, with_query, Source, METADATA};
use crate::config::ManagedIdentityId;
use crate::credentials::{AccessToken, CredentialError, ErrorClass};
use crate::secret::Secret;

/// The Azure Identity SDKs send this version to the Arc agent.
const ARC_API: &str = "2019-11-01";
/// Where the Arc agent listens when only its binary gives it away.
const ARC_DEFAULT_ENDPOINT: &str = "http://localhost:40342/metadata/identity/oauth2/token";
/// The agent's binary, whose presence says the agent is installed.
const HIMDS_BINARY: &str = "/opt/azcmagent/bin/himds";
/// The only directory the Arc agent's key files may be read from.
const ARC_KEY_DIR: &str = "/var/opt/azcmagent/tokens";
const ARC_KEY_MAX_BYTES: u64 = 4096;

/// Where the Azure Arc agent (himds) is installed: its binary and the directory of its key files.
/// It reaches the credential through [`CredentialContext`](crate::credentials::CredentialContext),
/// so that tests need neither root nor an installed agent; [`ArcAgent::default`] is the agent's
/// real layout, which is what patless uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArcAgent {
    /// The agent's binary: when it exists, Azure Arc is the source even without
    /// `IDENTITY_ENDPOINT` and `IMDS_ENDPOINT` (default `/opt/azcmagent/bin/himds`).
    pub binary: PathBuf,
    /// The only directory a key file named by the agent's challenge is read from: an absolute path
    /// (default `/var/opt/azcmagent/tokens`).
    pub key_dir: PathBuf,
}

impl Default for ArcAgent {
    fn default() -> Self {
        ArcAgent {
            binary: PathBuf::from(HIMDS_BINARY),
            key_dir: PathBuf::from(ARC_KEY_DIR),
        }
    }
}

impl ArcAgent {
    /// Whether the agent is installed (its binary exists).
    pub fn installed(&self) -> bool {
        self.binary.exists()
    }
}

/// The Arc source at `IDENTITY_ENDPOINT` (else the agent's default address), or why it cannot
/// serve identity `id`.
pub(super) fn source(
    identity_endpoint: Option<&str>,
    id: Option<&ManagedIdentityId>,
    agent: &ArcAgent,
) -> Source {
    let url = match identity_endpoint {
        Some(ep) => endpoint_url("IDENTITY_ENDPOINT", ep),
        None => endpoint_url("the Azure Arc default endpoint", ARC_DEFAULT_ENDPOINT),
    };
    match (url, id) {
        (Err(message), _) => Source::Unavailable { message },
        (Ok(url), None) => Source::Arc {
            url,
            key_dir: agent.key_dir.clone(),
        },
        (Ok(_), Some(other)) => Source::Unavailable {
            message: format!(
                "managed identity: Azure Arc supports only the machine's system-assigned \
                 identity: remove {} from the profile",
                id_key(other)
            ),
        },
    }
}

impl super::ManagedIdentityCredential {
    /// The challenge, the key file it names, and the request with the key.
    pub(super) async fn arc_attempt(
        &self,
        url: &Url,
        key_dir: &Path,
        resource: &str,
    ) -> Result<AccessToken, Failure> {
        let url = with_query(url, &[("api-version", ARC_API), ("resource", resource)]);
        let challenge = self
            .send(self.http.get(url.clone()).header(&METADATA, metadata()))
            .await?;
        let realm = self.challenge_realm(challenge).await?;
        let key = read_arc_key(&realm, key_dir).await?;
        let authorization = sensitive(&format!("Basic {}", key.expose()))?;
        let request = self
            .http
            .get(url)
            .header(&METADATA, metadata())
            .header(reqwest::header::AUTHORIZATION, authorization);
        let response = self.send(request).await?;
        if response.status() == 401 {
            return Err(CredentialError::new(
                ErrorClass::InvalidClient,
                format!(
                    "{} refused the key read from {realm} (401): the key rotates with each \
                     challenge; if this repeats, restart the agent (azcmagent) and check its \
                     status with `azcmagent show`",
                    self.source.label()
                ),
            )
            .into());
        }
        self.answer(response).await
    }

    /// The key file path the agent's 401 names; any other answer is an error.
    async fn challenge_realm(&self, challenge: reqwest::Response) -> Result<String, Failure> {
        let status = challenge.status().as_u16();
        if status != 401 {
            if challenge.status().is_success() {
                return Err(CredentialError::new(
                    ErrorClass::BadResponse,
                    format!(
                        "{} answered {status} without asking for its key file: is the Azure Arc \
                         agent (himds) what listens there?",
                        self.source.label()
                    ),
                )
                .into());
            }
            return Err(self.refusal(challenge).await);
        }
        let realm = challenge
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(realm_of)
            .map(str::to_string)
            .ok_or_else(|| {
                CredentialError::new(
                    ErrorClass::BadResponse,
                    format!(
                        "{} answered 401 without `WWW-Authenticate: Basic realm=<key file>`: is \
                         the Azure Arc agent (himds) what listens there?",
                        self.source.label()
                    ),
                )
            })?;
        Ok(realm)
    }
}

/// The key file path of an Arc challenge: `Basic realm=/var/opt/azcmagent/tokens/….key`.
fn realm_of(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let (name, value) = rest.trim().split_once('=')?;
    if !name.trim().eq_ignore_ascii_case("realm") {
        return None;
    }
    let value = value.trim().trim_matches('"');
    (!value.is_empty()).then_some(value)
}

/// `.` and `..` resolved without touching the filesystem (`..` never climbs above the root).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Reads the key file an Arc challenge names, after checking that it is a `*.key` file of at most
/// 4096 bytes directly inside `dir` — lexically (`..` resolved) before touching the file, and
/// again once links are resolved. Anything else is refused: a process squatting on the agent's port
/// must not get patless to send it another file.
async fn read_arc_key(realm: &str, dir: &Path) -> Result<Secret, CredentialError> {
    let file = KeyFile { realm, dir };
    let normal = file.lexical_path()?;
    let canonical = file.resolved_path(&normal).await?;
    file.read(&canonical).await
}

/// A key file named by a challenge (`realm`), and the directory it must be in.
struct KeyFile<'a> {
    realm: &'a str,
    dir: &'a Path,
}

impl KeyFile<'_> {
    fn refuse(&self, why: &str) -> CredentialError {
        CredentialError::new(
            ErrorClass::BadResponse,
            format!(
                "refused the key file `{}` named by the Azure Arc challenge: {why}. patless \
                 reads only `*.key` files of at most {ARC_KEY_MAX_BYTES} bytes directly inside \
                 {}; is something other than the Arc agent (himds) listening at the identity \
                 endpoint?",
                self.realm,
                self.dir.display()
            ),
        )
    }

    fn no_access(&self, e: &std::io::Error) -> CredentialError {
        CredentialError::new(
            ErrorClass::NotConfigured,
            format!(
                "cannot read the Azure Arc key file {} ({e}): run patless as a member of the \
                 `himds` group (sudo usermod -aG himds <user>) or as root",
                self.realm
            ),
        )
    }

    /// The path with `..` resolved, if it is absolute, directly inside the directory and `*.key`;
    /// the filesystem is not touched yet.
    fn lexical_path(&self) -> Result<PathBuf, CredentialError> {
        let path = Path::new(self.realm);
        if !path.is_absolute() {
            return Err(self.refuse("it is not an absolute path"));
        }
        let normal = lexical(path);
        if normal.parent() != Some(lexical(self.dir).as_path()) {
            return Err(self.refuse(if self.realm.contains("..") {
                "it is not inside the key directory once `..` is resolved"
            } else {
                "it is not inside the key directory"
            }));
        }
        if normal.extension().and_then(|e| e.to_str()) != Some("key") {
            return Err(self.refuse("its name does not end in .key"));
        }
        Ok(normal)
    }

    /// The path with links resolved, if it is still a `*.key` file directly inside the directory.
    async fn resolved_path(&self, normal: &Path) -> Result<PathBuf, CredentialError> {
        let canonical_dir = tokio::fs::canonicalize(self.dir).await.map_err(|e| {
            CredentialError::new(
                ErrorClass::NotConfigured,
                format!(
                    "the Azure Arc key directory {} is unavailable ({e}): is the Azure Arc agent \
                     installed?",
                    self.dir.display()
                ),
            )
        })?;
        let canonical = tokio::fs::canonicalize(normal)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => self.no_access(&e),
                _ => self.refuse(&format!("it cannot be opened ({e})")),
            })?;
        if canonical.parent() != Some(canonical_dir.as_path())
            || canonical.extension().and_then(|e| e.to_str()) != Some("key")
        {
            return Err(self.refuse("it links to a file outside the key directory"));
        }
        Ok(canonical)
    }

    /// The key: a regular file's trimmed text, within the size limit.
    async fn read(&self, canonical: &Path) -> Result<Secret, CredentialError> {
        let meta = tokio::fs::metadata(canonical)
            .await
            .map_err(|e| self.no_access(&e))?;
        if !meta.is_file() {
            return Err(self.refuse("it is not a regular file"));
        }
        if meta.len() > ARC_KEY_MAX_BYTES {
            return Err(self.refuse(&format!(
                "it is {} bytes, over the {ARC_KEY_MAX_BYTES}-byte limit",
                meta.len()
            )));
        }
        let bytes = tokio::fs::read(canonical)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => self.no_access(&e),
                _ => self.refuse(&format!("it cannot be read ({e})")),
            })?;
        if bytes.len() as u64 > ARC_KEY_MAX_BYTES {
            return Err(self.refuse("it grew over the size limit while being read"));
        }
        let key = String::from_utf8(bytes).map_err(|_| self.refuse("it is not text"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(self.refuse("it is empty"));
        }
        Ok(Secret::new(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realm_and_lexical_paths() {
        assert_eq!(
            realm_of("Basic realm=/var/opt/azcmagent/tokens/a.key"),
            Some("/var/opt/azcmagent/tokens/a.key")
        );
        assert_eq!(realm_of("basic realm=\"/x/a.key\""), Some("/x/a.key"));
        assert_eq!(realm_of("Bearer realm=/x/a.key"), None);
        assert_eq!(realm_of("Basic"), None);
        assert_eq!(
            lexical(Path::new("/var/opt/azcmagent/tokens/../../../etc/x.key")),
            PathBuf::from("/var/etc/x.key")
        );
        assert_eq!(
            lexical(Path::new("/a/./b/../c.key")),
            PathBuf::from("/a/c.key")
        );
        assert_eq!(lexical(Path::new("/../../x")), PathBuf::from("/x"));
    }
}
