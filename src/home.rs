//! The endpoint's home directory: identity, address book, audit log.
//!
//! The `conduit` binary chooses it in this order: the `--home DIR` flag, the
//! [`HOME_ENV`] environment variable, then the OS convention (`$XDG_DATA_HOME/conduit` or
//! `~/.local/share/conduit` on Linux); the library takes the result ([`Home::at`]) and
//! reads no environment variable.
//!
//! Files loaded from the home decide whom the endpoint trusts (`peers.toml`), where it
//! connects and what it accepts (`conduit.toml`) and who it is (the secret key, from which
//! the audit key is derived). As ssh's `StrictModes` does, [`check_ours`] refuses such a
//! file when someone else could have written it: owned by another user, writable by group
//! or others, or in a directory (up to the home) that others can write to.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The environment variable that overrides the home directory.
pub const HOME_ENV: &str = "CONDUIT_HOME";

/// A file the endpoint loads could have been written by someone else.
#[derive(Debug, Error)]
pub enum NotOurs {
    /// The file or a directory above it is owned by another user (not us, not root).
    #[error(
        "refusing to load {path}: it is owned by uid {owner}, not by this user (uid {me}) or root; another user could have written it (fix: chown {me} {path})"
    )]
    Owner {
        /// The file or directory.
        path: String,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        me: u32,
    },
    /// The file is writable by group or others.
    #[error(
        "refusing to load {path}: mode {mode:o} lets group or others change it (fix: chmod 600 {path})"
    )]
    FileWritable {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A directory above the file (up to the home) is writable by group or others, who
    /// could replace the file.
    #[error(
        "refusing to load {file}: its directory {dir} has mode {mode:o}, so group or others can replace the file (fix: chmod 700 {dir})"
    )]
    DirWritable {
        /// The file.
        file: String,
        /// The directory.
        dir: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Its metadata could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `file` (which exists) is ours, as ssh's `StrictModes`: owned by this
/// user (or root), not writable by group or others, and that each directory from its
/// parent up to and including `up_to` (just its parent without `up_to`, or when the file
/// is not under it) is owned by this user or root and not writable by group or others.
/// The files of a [`Home`] are checked up to [`Home::check_top`] (the user's home
/// directory when the endpoint's home lies in it). A directory with the sticky bit
/// (`/tmp`) may be writable by others: they cannot rename or remove what is ours in it.
///
/// ```
/// use std::os::unix::fs::PermissionsExt;
///
/// let dir = tempfile::tempdir().unwrap();
/// let file = dir.path().join("peers.toml");
/// std::fs::write(&file, "").unwrap();
/// std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
/// assert!(phi_conduit::home::check_ours(&file, Some(dir.path())).is_ok());
/// std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o620)).unwrap();
/// let err = phi_conduit::home::check_ours(&file, Some(dir.path())).unwrap_err();
/// assert!(err.to_string().contains("chmod 600"));
/// ```
pub fn check_ours(file: &Path, up_to: Option<&Path>) -> Result<(), NotOurs> {
    let me = rustix::process::geteuid().as_raw();
    let shown = |p: &Path| p.display().to_string();
    let meta = |p: &Path| {
        std::fs::metadata(p).map_err(|source| NotOurs::Io {
            path: shown(p),
            source,
        })
    };
    let owned = |p: &Path, m: &std::fs::Metadata| {
        if m.uid() == me || m.uid() == 0 {
            Ok(())
        } else {
            Err(NotOurs::Owner {
                path: shown(p),
                owner: m.uid(),
                me,
            })
        }
    };
    let m = meta(file)?;
    owned(file, &m)?;
    if m.mode() & 0o022 != 0 {
        return Err(NotOurs::FileWritable {
            path: shown(file),
            mode: m.mode() & 0o7777,
        });
    }
    let top = up_to.filter(|top| file.starts_with(top));
    let mut dir = file.parent();
    while let Some(d) = dir {
        let d = if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        };
        let m = meta(d)?;
        owned(d, &m)?;
        if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
            return Err(NotOurs::DirWritable {
                file: shown(file),
                dir: shown(d),
                mode: m.mode() & 0o7777,
            });
        }
        match top {
            Some(top) if d != top && d.starts_with(top) => dir = d.parent(),
            _ => break,
        }
    }
    Ok(())
}

/// The endpoint's home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    path: PathBuf,
    /// The user's home directory (`$HOME`, as the caller read it), if known.
    user_home: Option<PathBuf>,
}

impl Home {
    /// A home at an explicit path.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            user_home: None,
        }
    }

    /// This home, knowing the user's home directory (`$HOME`; ignored unless absolute):
    /// when the endpoint's home lies in it, the files loaded from the home are checked up
    /// to it ([`check_ours`]).
    pub fn with_user_home(mut self, user_home: Option<PathBuf>) -> Self {
        self.user_home = user_home.filter(|u| u.is_absolute());
        self
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory up to which [`check_ours`] checks the files of this home: the user's
    /// home directory when this home lies in it, else this home.
    pub fn check_top(&self) -> &Path {
        match &self.user_home {
            Some(user) if self.path.starts_with(user) => user,
            _ => &self.path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn group_or_world_writable_files_and_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let sub = home.join("identity");
        std::fs::create_dir_all(&sub).unwrap();
        mode(&home, 0o700);
        mode(&sub, 0o700);
        let file = sub.join("secret.key");
        std::fs::write(&file, "x").unwrap();
        mode(&file, 0o600);
        check_ours(&file, Some(&home)).unwrap();
        mode(&file, 0o602);
        let e = check_ours(&file, Some(&home)).unwrap_err().to_string();
        assert!(
            e.contains(&file.display().to_string()) && e.contains("chmod 600"),
            "{e}"
        );
        mode(&file, 0o600);
        // The home, two levels up, is checked too; the temporary directory above it not.
        mode(&home, 0o770);
        let e = check_ours(&file, Some(&home)).unwrap_err().to_string();
        assert!(
            e.contains("chmod 700") && e.contains(&home.display().to_string()),
            "{e}"
        );
        mode(&home, 0o700);
        mode(tmp.path(), 0o777);
        let checked = check_ours(&file, Some(&home));
        // A sticky directory may be writable by all (others cannot replace our entries).
        mode(&home, 0o1777);
        let sticky = check_ours(&file, Some(&home));
        mode(&home, 0o700);
        mode(tmp.path(), 0o700);
        checked.unwrap();
        sticky.unwrap();
    }

    #[test]
    fn files_are_checked_up_to_the_user_home_that_holds_the_home() {
        let h = Home::at("/u/me/.local/share/conduit");
        assert_eq!(h.check_top(), Path::new("/u/me/.local/share/conduit"));
        let h = h.with_user_home(Some(PathBuf::from("/u/me")));
        assert_eq!(h.check_top(), Path::new("/u/me"));
        let h = Home::at("/srv/conduit").with_user_home(Some(PathBuf::from("/u/me")));
        assert_eq!(h.check_top(), Path::new("/srv/conduit"));
        let h = Home::at("rel/conduit").with_user_home(Some(PathBuf::from("rel")));
        assert_eq!(h.check_top(), Path::new("rel/conduit"));
    }
}
