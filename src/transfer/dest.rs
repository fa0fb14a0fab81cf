//! The receiving side's writes: every file lands inside the destination directory, as a
//! `.<name>.part` temporary file first, and gets its final name only when complete and
//! verified.
//!
//! - Parent directories are created component by component; an existing component that
//!   is a symlink or not a directory is refused, so nothing is written outside the
//!   destination through a link.
//! - The temporary file is created with `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600.
//! - Finalizing fsyncs the file, links it to its final name (which fails if that name
//!   exists: no replace) or, with `overwrite`, renames over it, removes the temporary
//!   name, and fsyncs the directory.
//!
//! Residual risk (docs/SECURITY.md): a local user who can write inside the destination
//! could swap a checked directory for a link between the check and the use; the
//! destination should not be writable by others.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::transfer::paths::{RelPath, escape};
use crate::transfer::reserve::Reservation;
use crate::transfer::resume::Sidecar;

/// Errors writing received files.
#[derive(Debug, Error)]
pub enum DestError {
    /// The final name exists and `overwrite` is off.
    #[error("{0} already exists (use --overwrite to replace it)")]
    Exists(String),
    /// A partial file of that name is in the way.
    #[error("a partial file for {0} exists from an interrupted transfer ({1})")]
    PartExists(String, String),
    /// A path component in the destination is a symlink or not a directory.
    #[error("refusing to write {0}: {1} is a symlink or not a directory")]
    NotADirectory(String, String),
    /// Another transfer is writing that partial file right now.
    #[error("{0} is being received by another transfer right now")]
    PartInUse(String),
    /// The disk is full.
    #[error("receiver storage full while writing {0}")]
    StorageFull(String),
    /// Any other IO failure.
    #[error("{path}: {source}")]
    Io {
        /// What was being written.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> DestError + '_ {
    move |source| {
        let shown = escape(&path.to_string_lossy());
        if source.raw_os_error() == Some(libc::ENOSPC) {
            DestError::StorageFull(shown)
        } else {
            DestError::Io {
                path: shown,
                source,
            }
        }
    }
}

/// Free space at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
    /// The file system is mounted read-only.
    pub read_only: bool,
}

/// The destination directory.
#[derive(Debug, Clone)]
pub struct Destination {
    root: PathBuf,
}

impl Destination {
    /// Uses `root`, creating it (mode 0700) if missing; it must be a real directory.
    pub fn open(root: &Path) -> Result<Self, DestError> {
        if fs::symlink_metadata(root).is_err() {
            fs::DirBuilder::new()
                .recursive(true)
                .create(root)
                .map_err(io_err(root))?;
            fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io_err(root))?;
        }
        let meta = fs::metadata(root).map_err(io_err(root))?;
        if !meta.is_dir() {
            let shown = escape(&root.to_string_lossy());
            return Err(DestError::NotADirectory(shown.clone(), shown));
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The destination directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The final path of `rel` (inside the destination by construction of [`RelPath`]).
    pub fn final_path(&self, rel: &RelPath) -> PathBuf {
        self.root.join(rel.as_str())
    }

    /// Whether the final name of `rel` is taken (without following a link).
    pub fn exists(&self, rel: &RelPath) -> bool {
        fs::symlink_metadata(self.final_path(rel)).is_ok()
    }

    /// Free space and whether the destination's file system is mounted read-only.
    pub fn space(&self) -> Result<Space, DestError> {
        let st =
            rustix::fs::statvfs(&self.root).map_err(|e| io_err(&self.root)(io::Error::from(e)))?;
        Ok(Space {
            available: st.f_bavail.saturating_mul(st.f_frsize),
            read_only: st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
        })
    }

    /// The temporary file of `rel` if one exists (opened for reading, never through a
    /// link, parents not created), with its path.
    pub fn existing_part(&self, rel: &RelPath) -> Option<(File, PathBuf)> {
        let comps: Vec<&str> = rel.components().collect();
        let (name, parents) = comps.split_last()?;
        let mut dir = self.root.clone();
        for c in parents {
            dir.push(c);
            if !fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_dir()) {
                return None;
            }
        }
        let part = dir.join(format!(".{name}.part"));
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&part)
            .ok()?;
        f.metadata().ok()?.is_file().then_some((f, part))
    }

    /// Creates the parent directories of `rel` and its temporary file, or takes over the
    /// temporary file an interrupted transfer left (it must have its resume sidecar, and
    /// no other transfer may hold it), keeping its first `keep` bytes. The space for the
    /// rest, up to `size`, is reserved where the file system can: the first segment now
    /// (a full disk shows at once), the rest now or ahead of the writes (see
    /// [`crate::transfer::reserve`] and [`PartFile::take_reservation`]).
    pub fn open_part(&self, rel: &RelPath, keep: u64, size: u64) -> Result<PartFile, DestError> {
        let mut part = self.create_part_inner(rel, true)?;
        part.file.set_len(keep).map_err(io_err(&part.part))?;
        match Reservation::start(&part.file, keep, size) {
            Ok(r) => part.reservation = Some(r),
            Err(e) if e.kind() == io::ErrorKind::StorageFull => {
                return Err(DestError::StorageFull(part.shown.clone()));
            }
            Err(e) => return Err(io_err(&part.part)(e)),
        }
        Ok(part)
    }

    /// Creates the parent directories of `rel` and its temporary file, which must not
    /// exist.
    pub fn create_part(&self, rel: &RelPath) -> Result<PartFile, DestError> {
        self.create_part_inner(rel, false)
    }

    fn create_part_inner(&self, rel: &RelPath, take_over: bool) -> Result<PartFile, DestError> {
        let comps: Vec<&str> = rel.components().collect();
        let (name, parents) = comps
            .split_last()
            .ok_or_else(|| DestError::Exists(rel.to_string()))?;
        let mut dir = self.root.clone();
        for c in parents {
            dir.push(c);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(DestError::NotADirectory(
                        rel.to_string(),
                        escape(&dir.to_string_lossy()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new().create(&dir).map_err(io_err(&dir))?;
                }
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        let part = dir.join(format!(".{name}.part"));
        let sidecar = Sidecar::path_for(&part);
        let in_the_way = || DestError::PartExists(rel.to_string(), escape(&part.to_string_lossy()));
        let open = |create: bool| {
            let mut o = OpenOptions::new();
            o.write(true)
                .read(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
            if create {
                o.create_new(true);
            }
            o.open(&part)
        };
        let file = match open(true) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && take_over => {
                // Ours only if it has a sidecar; a regular file; nobody else's right now.
                if Sidecar::load(&sidecar).is_none() {
                    return Err(in_the_way());
                }
                let f = open(false).map_err(io_err(&part))?;
                if !f.metadata().map_err(io_err(&part))?.is_file() {
                    return Err(in_the_way());
                }
                f
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(in_the_way()),
            Err(e) => return Err(io_err(&part)(e)),
        };
        // One transfer per partial file, across processes (released when the file closes
        // or the process dies).
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| DestError::PartInUse(rel.to_string()))?;
        Ok(PartFile {
            file,
            part,
            sidecar,
            final_path: dir.join(name),
            dir,
            shown: rel.to_string(),
            reservation: None,
        })
    }
}

/// A file being received.
#[derive(Debug)]
pub struct PartFile {
    file: File,
    part: PathBuf,
    sidecar: PathBuf,
    final_path: PathBuf,
    dir: PathBuf,
    shown: String,
    reservation: Option<Reservation>,
}

impl PartFile {
    /// Writes `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DestError> {
        self.file
            .write_all_at(buf, offset)
            .map_err(io_err(&self.part))
    }

    /// The reservation of the rest of the file, for its writer to keep ahead of itself
    /// (`None` once taken, or where nothing is left to reserve).
    pub fn take_reservation(&mut self) -> Option<Reservation> {
        self.reservation.take()
    }

    /// A handle for positional writes from another thread.
    pub fn writer(&self) -> Result<File, DestError> {
        self.file.try_clone().map_err(io_err(&self.part))
    }

    /// Makes the file durable and gives it its final name; `mode` (permission bits only)
    /// is applied once complete.
    pub fn finalize(self, overwrite: bool, mode: u32) -> Result<PathBuf, DestError> {
        self.file.sync_all().map_err(io_err(&self.part))?;
        let perm = fs::Permissions::from_mode((mode & 0o777) | 0o600);
        self.file
            .set_permissions(perm)
            .map_err(io_err(&self.part))?;
        if overwrite {
            if fs::symlink_metadata(&self.final_path).is_ok_and(|m| m.is_dir()) {
                return Err(DestError::Exists(self.shown.clone()));
            }
            fs::rename(&self.part, &self.final_path).map_err(io_err(&self.final_path))?;
        } else {
            fs::hard_link(&self.part, &self.final_path).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    DestError::Exists(self.shown.clone())
                } else {
                    io_err(&self.final_path)(e)
                }
            })?;
            fs::remove_file(&self.part).map_err(io_err(&self.part))?;
        }
        let _ = fs::remove_file(&self.sidecar);
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(self.final_path)
    }

    /// Gives up on the file: the temporary file and its sidecar are removed.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.part);
        let _ = fs::remove_file(&self.sidecar);
    }

    /// The resume sidecar's path.
    pub fn sidecar_path(&self) -> &Path {
        &self.sidecar
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn part_then_final_without_replace() {
        let d = tempfile::tempdir().unwrap();
        let dest = Destination::open(d.path()).unwrap();
        let p = dest.create_part(&rel("a/b/c.txt")).unwrap();
        let mode = fs::metadata(d.path().join("a/b/.c.txt.part"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        p.write_at(b"hello", 0).unwrap();
        assert!(
            !d.path().join("a/b/c.txt").exists(),
            "no final name before finalize"
        );
        p.finalize(false, 0o644).unwrap();
        assert_eq!(fs::read(d.path().join("a/b/c.txt")).unwrap(), b"hello");
        assert!(!d.path().join("a/b/.c.txt.part").exists());
        // Same name again: refused without overwrite, and the old content survives.
        let p = dest.create_part(&rel("a/b/c.txt")).unwrap();
        p.write_at(b"other", 0).unwrap();
        assert!(matches!(
            p.finalize(false, 0o644),
            Err(DestError::Exists(_))
        ));
        assert_eq!(fs::read(d.path().join("a/b/c.txt")).unwrap(), b"hello");
        fs::remove_file(d.path().join("a/b/.c.txt.part")).unwrap();
        let p = dest.create_part(&rel("a/b/c.txt")).unwrap();
        p.write_at(b"other", 0).unwrap();
        p.finalize(true, 0o644).unwrap();
        assert_eq!(fs::read(d.path().join("a/b/c.txt")).unwrap(), b"other");
    }

    #[test]
    fn a_symlink_in_the_destination_is_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        let dest = Destination::open(d.path()).unwrap();
        assert!(matches!(
            dest.create_part(&rel("link/x")),
            Err(DestError::NotADirectory(..))
        ));
        // A symlink planted at the temporary name is not followed either.
        std::os::unix::fs::symlink(outside.path().join("victim"), d.path().join(".y.part"))
            .unwrap();
        assert!(dest.create_part(&rel("y")).is_err());
        assert_eq!(
            fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing written outside"
        );
    }
}
