//! The durable refresh-token store of `device_code` and `interactive_browser` profiles
//! (docs/credentials.md, "Signing people in").
//!
//! One JSON file per profile, `<dir>/<profile>.json`, holding the newest refresh token and what it
//! is bound to (client, tenant, authority, account). The directory is created with mode 0700 and
//! the files with 0600; every write goes to a temporary file in the same directory, is fsynced and
//! renamed over the old file, so a reader sees the old login or the new one, never half of either.
//! A file or directory that group or others may read or write is refused, with the `chmod` that
//! fixes it. No error, log line or `Debug` output holds the refresh token.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The file format's version; a file with another one is refused (written by a newer patless).
const VERSION: u32 = 1;

/// The durable refresh-token store: a directory of `<profile>.json` files.
#[derive(Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("dir", &self.dir)
            .finish()
    }
}

/// A person's login, as stored: the newest refresh token and what it is bound to.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredLogin {
    /// The newest refresh token.
    pub refresh_token: Secret,
    /// The public client's application id the token was issued to.
    pub client_id: String,
    /// The tenant it was issued in.
    pub tenant_id: String,
    /// The authority host (`https://login.microsoftonline.com`).
    pub authority: String,
    /// Who signed in (`upn`/`preferred_username` of the id token), if known.
    pub account: Option<String>,
    /// When it was saved (RFC 3339, UTC).
    pub saved_at: String,
}

impl fmt::Debug for StoredLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredLogin")
            .field("refresh_token", &self.refresh_token)
            .field("client_id", &self.client_id)
            .field("tenant_id", &self.tenant_id)
            .field("authority", &self.authority)
            .field("account", &self.account)
            .field("saved_at", &self.saved_at)
            .finish()
    }
}

impl StoredLogin {
    /// A login saved now.
    pub fn new(
        refresh_token: Secret,
        client_id: impl Into<String>,
        tenant_id: impl Into<String>,
        authority: impl Into<String>,
        account: Option<String>,
    ) -> Self {
        StoredLogin {
            refresh_token,
            client_id: client_id.into(),
            tenant_id: tenant_id.into(),
            authority: authority.into(),
            account,
            saved_at: now_rfc3339(),
        }
    }
}

/// What [`TokenStore::save_if_unchanged`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveOutcome {
    /// The new login was written.
    Saved,
    /// The stored login changed since it was read (another process logged in or refreshed): it
    /// was left alone, so a newer login is never replaced by an older one.
    Superseded,
}

/// Why the store could not be read or written. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A profile name that cannot be a file name.
    #[error("profile name `{0}` cannot name a token file (no `/`, `\\`, `..`, leading `.` or control characters)")]
    InvalidProfile(String),
    /// A file or directory that others may read or write.
    #[error("{path} is accessible to other users (mode {mode:03o}): refusing to use it; fix with `chmod {fix} {path}`", path = .path.display())]
    Permissions {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The mode that fixes it (`600` or `700`).
        fix: &'static str,
    },
    /// Not a regular file (a symlink, say) or not a directory.
    #[error("{path} is not a {expected}: refusing to use it", path = .path.display())]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// "regular file" or "directory".
        expected: &'static str,
    },
    /// A file that is not a stored login (the parser's position only, never its content).
    #[error("{path} is not a patless token file ({reason}): remove it and run `patless login` again", path = .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where parsing failed.
        reason: String,
    },
    /// An I/O error.
    #[error("{what} {path}: {source}", path = .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The file's shape. `Debug` is not derived: it holds the token.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    version: u32,
    profile: String,
    authority: String,
    tenant_id: String,
    client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    saved_at: String,
    refresh_token: String,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The person an id token names (`upn`, else `preferred_username`, else `email`), decoded
/// without verification: for display only.
pub fn account_from_id_token(id_token: &Secret) -> Option<String> {
    crate::jwt::first_string(id_token.expose(), &["upn", "preferred_username", "email"])
}

/// Whether `name` can be used as a file name stem.
fn valid_profile(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && !name.contains("..")
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

/// Refuses a mode that gives group or others any access.
fn check_mode(path: &Path, meta: &fs::Metadata, fix: &'static str) -> Result<(), StoreError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreError::Permissions {
            path: path.to_path_buf(),
            mode,
            fix,
        });
    }
    Ok(())
}

impl TokenStore {
    /// A store in `dir` (created on the first save).
    pub fn new(dir: PathBuf) -> Self {
        TokenStore { dir }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `profile`.
    pub fn path(&self, profile: &str) -> Result<PathBuf, StoreError> {
        if !valid_profile(profile) {
            return Err(StoreError::InvalidProfile(profile.to_string()));
        }
        Ok(self.dir.join(format!("{profile}.json")))
    }

    /// Checks the directory: absent is fine (`Ok(false)`), present must be a directory of mode
    /// 0700 or stricter (`Ok(true)`).
    fn check_dir(&self) -> Result<bool, StoreError> {
        match fs::metadata(&self.dir) {
            Ok(meta) if meta.is_dir() => {
                check_mode(&self.dir, &meta, "700")?;
                Ok(true)
            }
            Ok(_) => Err(StoreError::NotRegular {
                path: self.dir.clone(),
                expected: "directory",
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("cannot read", &self.dir)(e)),
        }
    }

    /// Creates the directory (mode 0700) if needed and checks it: call before an interactive
    /// sign-in, so a bad store is reported before the person signs in, not after.
    pub fn ensure_dir(&self) -> Result<(), StoreError> {
        if self.check_dir()? {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err("cannot create directory", &self.dir))?;
        // `recursive` leaves an existing directory as it is, and the umask may have widened
        // nothing but could have narrowed: check what is there now.
        self.check_dir().map(|_| ())
    }

    /// The stored login of `profile`, if any.
    pub fn load(&self, profile: &str) -> Result<Option<StoredLogin>, StoreError> {
        let path = self.path(profile)?;
        if !self.check_dir()? {
            return Ok(None);
        }
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        };
        if !meta.file_type().is_file() {
            return Err(StoreError::NotRegular {
                path,
                expected: "regular file",
            });
        }
        check_mode(&path, &meta, "600")?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        };
        // serde_json's messages may quote the content; keep only the position and category.
        let file: FileV1 = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: format!(
                "{} at line {} column {}",
                match e.classify() {
                    serde_json::error::Category::Io => "read error",
                    serde_json::error::Category::Syntax => "not JSON",
                    serde_json::error::Category::Data => "unexpected fields or values",
                    serde_json::error::Category::Eof => "truncated",
                },
                e.line(),
                e.column()
            ),
        })?;
        if file.version != VERSION {
            return Err(StoreError::Corrupt {
                path,
                reason: format!(
                    "format version {}, this patless reads {VERSION}",
                    file.version
                ),
            });
        }
        if file.refresh_token.is_empty() {
            return Err(StoreError::Corrupt {
                path,
                reason: "empty refresh_token".into(),
            });
        }
        Ok(Some(StoredLogin {
            refresh_token: Secret::new(file.refresh_token),
            client_id: file.client_id,
            tenant_id: file.tenant_id,
            authority: file.authority,
            account: file.account,
            saved_at: file.saved_at,
        }))
    }

    /// Saves `login` as the login of `profile`, replacing any other, atomically. Returns the
    /// file's path.
    pub fn save(&self, profile: &str, login: &StoredLogin) -> Result<PathBuf, StoreError> {
        let path = self.path(profile)?;
        self.ensure_dir()?;
        let file = FileV1 {
            version: VERSION,
            profile: profile.to_string(),
            authority: login.authority.clone(),
            tenant_id: login.tenant_id.clone(),
            client_id: login.client_id.clone(),
            account: login.account.clone(),
            saved_at: login.saved_at.clone(),
            refresh_token: login.refresh_token.expose().to_string(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(|_| StoreError::Corrupt {
            path: path.clone(),
            reason: "cannot serialise".into(),
        })?;
        bytes.push(b'\n');
        self.write_atomically(profile, &path, &bytes)?;
        Ok(path)
    }

    /// Saves `login` only if the stored refresh token is still `expected` (the one this process
    /// read and redeemed): after a rotation, so a login written meanwhile by another process is
    /// not replaced by this older one. Missing file: saved only if nothing was expected.
    pub fn save_if_unchanged(
        &self,
        profile: &str,
        expected: &Secret,
        login: &StoredLogin,
    ) -> Result<SaveOutcome, StoreError> {
        match self.load(profile)? {
            Some(current) if current.refresh_token == *expected => {
                self.save(profile, login)?;
                Ok(SaveOutcome::Saved)
            }
            // Changed underneath, or deleted (`patless logout`): leave it.
            _ => Ok(SaveOutcome::Superseded),
        }
    }

    /// Forgets the login of `profile`: whether there was one.
    pub fn delete(&self, profile: &str) -> Result<bool, StoreError> {
        let path = self.path(profile)?;
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("cannot remove", &path)(e)),
        }
    }

    fn write_atomically(&self, profile: &str, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let suffix: u64 = rand::random();
        let tmp = self.dir.join(format!(".{profile}.json.{suffix:016x}.tmp"));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("cannot create", &tmp))?;
            // The umask can only narrow 0600; make sure of it anyway (the file is new and ours).
            let meta = f.metadata().map_err(io_err("cannot read", &tmp))?;
            if meta.mode() & 0o077 != 0 {
                f.set_permissions(fs::Permissions::from_mode(0o600))
                    .map_err(io_err("cannot chmod", &tmp))?;
            }
            f.write_all(bytes).map_err(io_err("cannot write", &tmp))?;
            f.sync_all().map_err(io_err("cannot sync", &tmp))?;
            drop(f);
            fs::rename(&tmp, path).map_err(io_err("cannot replace", path))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        } else {
            sync_dir(&self.dir);
        }
        result
    }
}

/// Makes a rename or removal durable (best effort: not every file system allows it).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_from_unsigned_id_token() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"none"}"#),
            b64(r#"{"preferred_username":"bob@contoso.example","name":"Bob"}"#)
        );
        assert_eq!(
            account_from_id_token(&Secret::new(jwt)).as_deref(),
            Some("bob@contoso.example")
        );
        assert_eq!(account_from_id_token(&Secret::new("opaque")), None);
    }

    #[test]
    fn profile_names_that_escape_are_refused() {
        let s = TokenStore::new(PathBuf::from("/nonexistent"));
        for bad in ["", "../x", "a/b", "..", ".hidden", "a\\b", "a\nb", "x..y"] {
            assert!(
                matches!(s.path(bad), Err(StoreError::InvalidProfile(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            s.path("team-1_a.b").expect("valid"),
            PathBuf::from("/nonexistent/team-1_a.b.json")
        );
    }
}
