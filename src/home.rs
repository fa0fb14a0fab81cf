//! The endpoint's home directory: identity, address book, audit log.
//!
//! Chosen in this order: the `--home DIR` flag, the `CONDUIT_HOME` environment variable,
//! then the OS convention (`$XDG_DATA_HOME/conduit` or `~/.local/share/conduit` on Linux,
//! via the `directories` crate).

use std::path::{Path, PathBuf};

use thiserror::Error;

/// The environment variable that overrides the home directory.
pub const HOME_ENV: &str = "CONDUIT_HOME";

/// Errors locating the home directory.
#[derive(Debug, Error)]
pub enum HomeError {
    /// No flag, no variable, and the OS gives no data directory.
    #[error("cannot find a home directory for conduit: pass --home DIR or set CONDUIT_HOME")]
    NotFound,
}

/// The endpoint's home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    path: PathBuf,
}

impl Home {
    /// Resolves the home: `flag`, else `CONDUIT_HOME`, else the OS data directory.
    pub fn resolve(flag: Option<PathBuf>) -> Result<Self, HomeError> {
        if let Some(path) = flag {
            return Ok(Self { path });
        }
        if let Some(path) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
            return Ok(Self {
                path: PathBuf::from(path),
            });
        }
        directories::ProjectDirs::from("org", "phi-conduit", "conduit")
            .map(|d| Self {
                path: d.data_dir().to_path_buf(),
            })
            .ok_or(HomeError::NotFound)
    }

    /// A home at an explicit path.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins() {
        let h = Home::resolve(Some(PathBuf::from("/x/y"))).unwrap();
        assert_eq!(h.path(), Path::new("/x/y"));
    }
}
