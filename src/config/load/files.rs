//! Which config file: `--config`, `$PATLESS_CONFIG`, else the first directory of the working
//! directory, `$XDG_CONFIG_HOME/patless/` and `/etc/patless/` that holds a `patless.toml`,
//! `patless.yaml`, `patless.yml` or `patless.json` (docs/configuration.md#where-the-configuration-comes-from).

use std::path::{Path, PathBuf};

use crate::config::ConfigError;
use crate::env::Environment;

/// The names looked for in each directory, in the order `patless config` and errors list them.
pub const FILE_NAMES: [&str; 4] = [
    "patless.toml",
    "patless.yaml",
    "patless.yml",
    "patless.json",
];

/// The config file to use: `explicit` (`--config`, which must exist), else `$PATLESS_CONFIG`
/// (likewise), else one of [`FILE_NAMES`] in the working directory, in
/// `$XDG_CONFIG_HOME/patless/` (else `$HOME/.config/patless/`) or in `/etc/patless/`, the first
/// directory that holds one winning. Two in the same directory are an error naming both (which
/// one is meant cannot be told). `None` means the embedded default.
pub fn find_config_file(
    explicit: Option<&Path>,
    env: &dyn Environment,
) -> Result<Option<PathBuf>, ConfigError> {
    let must_exist = explicit
        .map(Path::to_path_buf)
        .or_else(|| crate::env::non_empty(env, "PATLESS_CONFIG").map(PathBuf::from));
    if let Some(path) = must_exist {
        if !path.is_file() {
            return Err(ConfigError::File {
                path,
                reason: "no such file (named by --config or $PATLESS_CONFIG)".into(),
            });
        }
        return Ok(Some(path));
    }
    // The working directory's names stay relative (`patless.toml`), as a person would say them.
    let mut dirs = vec![PathBuf::new()];
    let xdg = crate::env::non_empty(env, "XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| crate::env::non_empty(env, "HOME").map(|h| Path::new(&h).join(".config")));
    if let Some(xdg) = xdg {
        dirs.push(xdg.join("patless"));
    }
    dirs.push(PathBuf::from("/etc/patless"));
    for dir in dirs {
        if let Some(path) = in_dir(&dir)? {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The one config file in `dir`, if any.
fn in_dir(dir: &Path) -> Result<Option<PathBuf>, ConfigError> {
    let mut found: Vec<PathBuf> = FILE_NAMES
        .iter()
        .map(|name| dir.join(name))
        .filter(|p| p.is_file())
        .collect();
    if found.len() > 1 {
        return Err(ConfigError::Ambiguous { paths: found });
    }
    Ok(found.pop())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MapEnv;

    #[test]
    fn each_name_is_found_and_two_in_one_directory_are_an_error() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let patless = dir.path().join("patless");
        std::fs::create_dir_all(&patless).expect("dir");
        let env = MapEnv::new([("XDG_CONFIG_HOME", dir.path().to_str().expect("UTF-8"))]);
        for name in FILE_NAMES {
            std::fs::write(patless.join(name), "").expect("write");
            assert_eq!(
                find_config_file(None, &env).expect("one file"),
                Some(patless.join(name))
            );
            std::fs::remove_file(patless.join(name)).expect("remove");
        }
        for name in ["patless.yml", "patless.json"] {
            std::fs::write(patless.join(name), "").expect("write");
        }
        let err = find_config_file(None, &env).expect_err("two files");
        let text = err.to_string();
        assert!(
            text.contains("patless.yml") && text.contains("patless.json"),
            "{text}"
        );
        // A file named by --config is used whatever sits beside it.
        let explicit = patless.join("patless.json");
        assert_eq!(
            find_config_file(Some(&explicit), &env).expect("explicit"),
            Some(explicit)
        );
    }
}
