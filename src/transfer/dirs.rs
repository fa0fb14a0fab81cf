//! The directories of an offer at the receiver: empty directories of the source are
//! recreated (mode 0700, inside the destination, no link followed at any component), and
//! an offer that fails or is cancelled leaves behind none of the directories it created
//! that are still empty (partial files kept for a resume keep theirs).

use std::collections::BTreeSet;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use rustix::io::Errno;

use crate::transfer::dest::DestError;
use crate::transfer::paths::{RelPath, escape};

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the directory `name` in `dir`, never through a link.
fn open_beneath(dir: &OwnedFd, name: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Creates the directory `rel` and its parents under `root` with mode 0700 (the umask
/// can only narrow it); an existing directory is used as it is, an existing symlink or
/// non-directory at any component is refused. Each new directory's parent is fsynced, so
/// the directory outlives a crash.
pub fn create(root: &Path, rel: &RelPath) -> Result<(), DestError> {
    let io_err = |source: io::Error| DestError::Io {
        path: rel.to_string(),
        source,
    };
    let mut dir = open_root(root).map_err(io_err)?;
    let mut walked = root.to_path_buf();
    for c in rel.components() {
        walked.push(c);
        let made = match rustix::fs::mkdirat(&dir, c, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(io_err(e.into())),
        };
        let next = open_beneath(&dir, c).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR | Errno::MLINK => {
                DestError::NotADirectory(rel.to_string(), escape(&walked.to_string_lossy()))
            }
            e => io_err(e.into()),
        })?;
        if made {
            rustix::fs::fsync(&dir).map_err(|e| io_err(e.into()))?;
        }
        dir = next;
    }
    Ok(())
}

/// The directories an offer may create: every directory of its files' paths and every
/// empty directory it holds that does not exist yet. Dropping it without
/// [`CreatedDirs::keep`] removes those that exist and are empty, deepest first.
#[derive(Debug)]
pub struct CreatedDirs {
    root: std::path::PathBuf,
    /// Missing directories, deepest first.
    missing: Vec<String>,
    armed: bool,
}

impl CreatedDirs {
    /// Notes which directories of `files` (their parents) and `dirs` are missing under
    /// `root` now, before anything of the offer is written.
    pub fn note<'a>(
        root: &Path,
        files: impl IntoIterator<Item = &'a RelPath>,
        dirs: impl IntoIterator<Item = &'a RelPath>,
    ) -> Self {
        let mut all: BTreeSet<&str> = BTreeSet::new();
        let mut add_prefixes = |p: &'a str, include_self: bool| {
            for (i, b) in p.bytes().enumerate() {
                if b == b'/' {
                    all.insert(&p[..i]);
                }
            }
            if include_self {
                all.insert(p);
            }
        };
        for f in files {
            add_prefixes(f.as_str(), false);
        }
        for d in dirs {
            add_prefixes(d.as_str(), true);
        }
        let root_fd = open_root(root).ok();
        let mut missing: Vec<String> = all
            .into_iter()
            .filter(|d| {
                root_fd.as_ref().is_some_and(|fd| {
                    matches!(
                        rustix::fs::statat(fd, *d, AtFlags::SYMLINK_NOFOLLOW),
                        Err(Errno::NOENT)
                    )
                })
            })
            .map(str::to_string)
            .collect();
        missing.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
        Self {
            root: root.to_path_buf(),
            missing,
            armed: true,
        }
    }

    /// The offer succeeded: its directories stay.
    pub fn keep(mut self) {
        self.armed = false;
    }

    /// Removes each noted directory that exists now and is empty (deepest first; never
    /// through a link).
    fn remove_empty(&self) {
        let Ok(root) = open_root(&self.root) else {
            return;
        };
        for d in &self.missing {
            let (parents, name) = match d.rsplit_once('/') {
                Some((p, n)) => (Some(p), n),
                None => (None, d.as_str()),
            };
            let parent = match parents {
                None => None,
                Some(p) => {
                    let mut fd: Option<OwnedFd> = None;
                    let mut ok = true;
                    for c in p.split('/') {
                        let from = fd.as_ref().unwrap_or(&root);
                        match open_beneath(from, c) {
                            Ok(next) => fd = Some(next),
                            Err(_) => {
                                ok = false;
                                break;
                            }
                        }
                    }
                    if !ok {
                        continue;
                    }
                    fd
                }
            };
            let parent = parent.as_ref().unwrap_or(&root);
            if rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR).is_ok() {
                let _ = rustix::fs::fsync(parent);
            }
        }
    }
}

impl Drop for CreatedDirs {
    fn drop(&mut self) {
        if self.armed {
            self.remove_empty();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn empty_directories_are_created_private_and_links_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("in");
        std::fs::create_dir(&root).unwrap();
        create(&root, &rel("a/b/c")).unwrap();
        create(&root, &rel("a/b/c")).unwrap(); // existing: fine
        let m = std::fs::metadata(root.join("a/b/c")).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o077, 0);
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        assert!(matches!(
            create(&root, &rel("link/x")),
            Err(DestError::NotADirectory(..))
        ));
        std::fs::write(root.join("file"), b"x").unwrap();
        assert!(create(&root, &rel("file/x")).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn a_failed_offer_removes_the_empty_directories_it_created_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("in");
        std::fs::create_dir_all(root.join("old")).unwrap();
        let files = [rel("old/new/f"), rel("x/y/z/g"), rel("keep/h")];
        let dirs = [rel("e/mpty")];
        let noted = CreatedDirs::note(&root, &files, &dirs);
        create(&root, &rel("old/new")).unwrap();
        create(&root, &rel("x/y/z")).unwrap();
        create(&root, &rel("e/mpty")).unwrap();
        create(&root, &rel("keep")).unwrap();
        // A partial file kept for a resume keeps its directory.
        std::fs::write(root.join("keep/.h.part"), b"x").unwrap();
        drop(noted);
        let mut left: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["keep", "old"]);
        assert_eq!(std::fs::read_dir(root.join("old")).unwrap().count(), 0);

        let kept = CreatedDirs::note(&root, &[rel("n/f")], &[]);
        create(&root, &rel("n")).unwrap();
        kept.keep();
        assert!(root.join("n").is_dir());
    }
}
