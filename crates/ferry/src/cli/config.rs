//! Where the CLI finds the server and its token: flags, environment, then the config file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::DEFAULT_URL;

/// The config file written by `ferry login` and `ferry quickstart`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `$FERRY_CONFIG`, else `~/.config/ferry/config.json` (None without a home directory).
pub fn config_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FERRY_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|p| !p.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })?;
    Some(base.join("ferry").join("config.json"))
}

/// Reads the config file; a missing or unreadable file is an empty config (with a warning
/// when it exists but is not valid JSON).
pub fn load() -> ConfigFile {
    let Some(path) = config_path() else {
        return ConfigFile::default();
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            eprintln!(
                "warning: ignoring {}: not a valid config file ({e})",
                path.display()
            );
            ConfigFile::default()
        }),
        Err(_) => ConfigFile::default(),
    }
}

/// Writes the config file with mode 0600 and returns its path.
pub fn save(config: &ConfigFile) -> anyhow::Result<PathBuf> {
    let path = config_path()
        .context("cannot tell where to write the config file: set FERRY_CONFIG or HOME")?;
    write_private(&path, &serde_json::to_vec_pretty(config)?)?;
    Ok(path)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The file may have existed with wider permissions.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.write_all(b"\n")?;
    Ok(())
}

/// The server URL and token a client command uses.
#[derive(Debug, Clone)]
pub struct Connection {
    pub url: String,
    pub token: Option<String>,
}

impl Connection {
    /// Flags and environment (already merged by clap) win over the config file.
    pub fn resolve(url: Option<String>, token: Option<String>) -> Connection {
        let file = if url.is_some() && token.as_deref().is_some_and(|t| !t.trim().is_empty()) {
            ConfigFile::default()
        } else {
            load()
        };
        let url = url.or(file.url).unwrap_or_else(|| DEFAULT_URL.to_string());
        // An empty --token/FERRY_TOKEN does not hide the config file's token.
        let token = token
            .filter(|t| !t.trim().is_empty())
            .or(file.token)
            .filter(|t| !t.trim().is_empty());
        Connection {
            url: url.trim_end_matches('/').to_string(),
            token: token.map(|t| t.trim().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        write_private(&path, b"{}").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
