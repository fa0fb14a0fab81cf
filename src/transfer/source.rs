//! The sending side's view of the files: walking the paths given on the command line,
//! and reading each file once through the descriptor opened for it.
//!
//! A file may change while it is being sent (appended to, overwritten in place,
//! truncated, replaced by a rename). The sender then must not deliver a mix of old and
//! new bytes as "verified". So each file's [`Stamp`] (device, inode, size, mtime, ctime)
//! is taken when the files are collected, compared on the descriptor when the file is
//! opened ([`OpenSource::open`]), and compared again, on the descriptor and on the path,
//! after the last byte is read and before the last chunk leaves
//! ([`OpenSource::check_unchanged`], called by [`crate::transfer::data::send_file`]); a
//! read that ends before the collected size is a change too. Any difference is a
//! [`Changed`] error that names what changed: the file is not delivered (as tar's "file
//! changed as we read it", or rsync's re-check).
//!
//! What this cannot see: a write that leaves size, mtime and ctime as they were — within
//! one tick of the file system's timestamp clock of the stamp taken at collect time (a
//! few milliseconds on Linux without fine-grained timestamps), or by a process that
//! resets the times afterwards (which also changes the ctime, except for root changing
//! the clock). docs/SECURITY.md says what holds.

use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::crypto::pipeline::ChunkSource;
use crate::transfer::paths::{RelPath, escape};

/// Errors collecting the files to send.
#[derive(Debug, Error)]
pub enum SourceError {
    /// A device, FIFO or socket.
    #[error("{0} is not a regular file or directory (devices, FIFOs and sockets are refused)")]
    NotRegular(String),
    /// A name that the receiver would refuse.
    #[error("{0} cannot be sent: {1}")]
    BadName(String, crate::transfer::paths::PathError),
    /// Nothing to send.
    #[error("no files to send")]
    Empty,
    /// IO.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// One file to send.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its name at the receiver.
    pub rel: RelPath,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: i64,
    /// What identified its content when it was collected.
    pub stamp: Stamp,
}

/// What identifies a file's content without reading it: device, inode, size, and the
/// modification and status-change times to the nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Status-change time (seconds, nanoseconds).
    pub ctime: (i64, i64),
}

impl Stamp {
    /// The stamp of a file's metadata.
    pub fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether `self` (the stamp taken at collect time) still holds for `now`; otherwise
    /// what differs.
    pub fn compare(&self, now: &Stamp) -> Result<(), Changed> {
        let what = if (now.dev, now.ino) != (self.dev, self.ino) {
            "replaced by another file (device or inode differs)".to_string()
        } else if now.size != self.size {
            format!("size {} bytes, now {}", self.size, now.size)
        } else if now.mtime != self.mtime {
            "modification time differs".to_string()
        } else if now.ctime != self.ctime {
            "status-change time differs".to_string()
        } else {
            return Ok(());
        };
        Err(Changed { what })
    }
}

/// A file changed between collect time and the end of its reading: it is not delivered.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("file changed as we read it ({what}); it was not delivered")]
pub struct Changed {
    /// What differs (no file name: the caller names the file).
    pub what: String,
}

/// Errors opening a collected file for sending.
#[derive(Debug, Error)]
pub enum OpenError {
    /// It is no longer the file that was collected.
    #[error(transparent)]
    Changed(#[from] Changed),
    /// It could not be opened.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A collected file, opened once for sending: every chunk is read through this
/// descriptor, and its stamp is checked at open and after the last read.
#[derive(Debug)]
pub struct OpenSource {
    file: fs::File,
    path: PathBuf,
    stamp: Stamp,
    chunk_size: u64,
}

impl OpenSource {
    /// Opens `f` (without following a symlink put in its place, without blocking on a
    /// FIFO) for reading in chunks of `chunk_size` bytes, and checks that it is still the
    /// regular file that was collected.
    pub fn open(f: &SourceFile, chunk_size: u64) -> Result<Self, OpenError> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = rustix::fs::open(&f.path, flags, Mode::empty()).map_err(|e| {
            if e == rustix::io::Errno::LOOP {
                OpenError::Changed(Changed {
                    what: "replaced by a symbolic link".into(),
                })
            } else {
                OpenError::Io(e.into())
            }
        })?;
        let file = fs::File::from(fd);
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(Changed {
                what: "no longer a regular file".into(),
            }
            .into());
        }
        f.stamp.compare(&Stamp::of(&meta))?;
        Ok(Self {
            file,
            path: f.path.clone(),
            stamp: f.stamp,
            chunk_size: chunk_size.max(1),
        })
    }

    /// The open file (to hash a prefix for a resume: read through this descriptor too).
    pub fn file(&self) -> &fs::File {
        &self.file
    }

    /// Compares the stamp now, on the descriptor and on the path (a file renamed over it
    /// or away is a change), with the stamp taken at collect time.
    pub fn check_unchanged(&self) -> Result<(), Changed> {
        let now = self.file.metadata().map_err(|e| Changed {
            what: format!("cannot read its metadata again: {e}"),
        })?;
        self.stamp.compare(&Stamp::of(&now))?;
        match fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == (self.stamp.dev, self.stamp.ino) => Ok(()),
            Ok(_) => Err(Changed {
                what: "another file was put in its place".into(),
            }),
            Err(e) => Err(Changed {
                what: format!("no longer at its path: {e}"),
            }),
        }
    }
}

impl ChunkSource for OpenSource {
    fn read_chunk(&self, index: u64, buf: &mut [u8]) -> io::Result<()> {
        let offset = index
            .checked_mul(self.chunk_size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "chunk offset overflows"))?;
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                // Shorter than collected: truncated while being sent. Never zeros.
                io::Error::other(Changed {
                    what: format!(
                        "it ended before byte {} of the {} collected",
                        offset.saturating_add(buf.len() as u64),
                        self.stamp.size
                    ),
                })
            } else {
                e
            }
        })
    }

    fn after_last_read(&self) -> io::Result<()> {
        self.check_unchanged().map_err(io::Error::other)
    }
}

impl Changed {
    /// The [`Changed`] inside an IO error made by an [`OpenSource`], if that is what it is.
    pub fn from_io(e: &io::Error) -> Option<&Changed> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Changed>())
    }
}

/// The files under `paths` (files as themselves, directories recursively, names relative
/// to each argument's parent, sorted), and the symlinks that were skipped.
pub fn collect(paths: &[PathBuf]) -> Result<(Vec<SourceFile>, Vec<PathBuf>), SourceError> {
    let c = collect_with_dirs(paths)?;
    if c.files.is_empty() {
        return Err(SourceError::Empty);
    }
    Ok((c.files, c.skipped))
}

/// What [`collect_with_dirs`] found.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// The files, sorted by name.
    pub files: Vec<SourceFile>,
    /// The directories with no file anywhere beneath them (recreated by the receiver),
    /// sorted.
    pub dirs: Vec<RelPath>,
    /// The symlinks that were skipped.
    pub skipped: Vec<PathBuf>,
}

/// [`collect`], and the empty directories: an offer may hold only those.
pub fn collect_with_dirs(paths: &[PathBuf]) -> Result<Collected, SourceError> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut dirs = Vec::new();
    for p in paths {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| {
                fs::canonicalize(p)
                    .ok()
                    .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
            })
            .unwrap_or_default();
        walk(p, &name, &mut files, &mut dirs, &mut skipped)?;
    }
    if files.is_empty() && dirs.is_empty() {
        return Err(SourceError::Empty);
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    dirs.sort();
    Ok(Collected {
        files,
        dirs,
        skipped,
    })
}

fn walk(
    path: &Path,
    rel: &str,
    files: &mut Vec<SourceFile>,
    dirs: &mut Vec<RelPath>,
    skipped: &mut Vec<PathBuf>,
) -> Result<(), SourceError> {
    let shown = || escape(&path.to_string_lossy());
    let io = |source| SourceError::Io {
        path: shown(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(io)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        skipped.push(path.to_path_buf());
        return Ok(());
    }
    if ft.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(path)
            .map_err(io)?
            .collect::<Result<_, _>>()
            .map_err(io)?;
        entries.sort_by_key(|e| e.file_name());
        let before = (files.len(), dirs.len());
        for e in entries {
            let child = format!("{rel}/{}", e.file_name().to_string_lossy());
            walk(&e.path(), &child, files, dirs, skipped)?;
        }
        if (files.len(), dirs.len()) == before {
            // Nothing beneath it travels as a file: the directory itself does.
            let rel = RelPath::parse(rel).map_err(|e| SourceError::BadName(shown(), e))?;
            dirs.push(rel);
        }
        return Ok(());
    }
    if !ft.is_file() {
        return Err(SourceError::NotRegular(shown()));
    }
    let rel = RelPath::parse(rel).map_err(|e| SourceError::BadName(shown(), e))?;
    files.push(SourceFile {
        path: path.to_path_buf(),
        rel,
        size: meta.len(),
        mode: meta.permissions().mode() & 0o777,
        mtime: meta.mtime(),
        stamp: Stamp::of(&meta),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn stamp() -> Stamp {
        Stamp {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: (4, 5),
            ctime: (6, 7),
        }
    }

    #[test]
    fn every_field_of_the_stamp_is_compared() {
        let was = stamp();
        assert_eq!(was.compare(&was), Ok(()));
        let changes: [fn(&mut Stamp); 8] = [
            |s| s.dev += 1,
            |s| s.ino += 1,
            |s| s.size += 1,
            |s| s.size -= 1,
            |s| s.mtime.0 += 1,
            |s| s.mtime.1 += 1,
            |s| s.ctime.0 += 1,
            |s| s.ctime.1 += 1,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut now = was;
            change(&mut now);
            assert!(was.compare(&now).is_err(), "change {i} not seen");
        }
        let mut grown = was;
        grown.size = 10;
        assert_eq!(
            was.compare(&grown).unwrap_err().what,
            "size 3 bytes, now 10"
        );
    }

    fn one(dir: &Path, name: &str, data: &[u8]) -> SourceFile {
        let path = dir.join(name);
        fs::write(&path, data).unwrap();
        let (mut files, _) = collect(&[path]).unwrap();
        files.remove(0)
    }

    fn later() {
        // Past one tick of a coarse file system clock.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    #[test]
    fn an_unchanged_file_opens_reads_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let f = one(dir.path(), "a", b"0123456789");
        let src = OpenSource::open(&f, 4).unwrap();
        let mut buf = [0u8; 4];
        src.read_chunk(1, &mut buf).unwrap();
        assert_eq!(&buf, b"4567");
        let mut last = [0u8; 2];
        src.read_chunk(2, &mut last).unwrap();
        assert_eq!(&last, b"89");
        src.check_unchanged().unwrap();
        src.after_last_read().unwrap();
    }

    #[test]
    fn a_change_between_collect_and_open_is_seen_at_open() {
        let dir = tempfile::tempdir().unwrap();
        // Overwritten in place, same size.
        let f = one(dir.path(), "a", b"0123456789");
        later();
        fs::OpenOptions::new()
            .write(true)
            .open(&f.path)
            .unwrap()
            .write_all_at(b"X", 3)
            .unwrap();
        assert!(matches!(
            OpenSource::open(&f, 4),
            Err(OpenError::Changed(_))
        ));
        // Replaced by a rename.
        let g = one(dir.path(), "b", b"0123456789");
        fs::write(dir.path().join("new"), b"0123456789").unwrap();
        fs::rename(dir.path().join("new"), &g.path).unwrap();
        let e = OpenSource::open(&g, 4).unwrap_err();
        assert!(matches!(e, OpenError::Changed(_)), "{e}");
        // Replaced by a symlink to the same bytes.
        let h = one(dir.path(), "c", b"0123456789");
        fs::remove_file(&h.path).unwrap();
        std::os::unix::fs::symlink(&g.path, &h.path).unwrap();
        let e = OpenSource::open(&h, 4).unwrap_err();
        assert!(matches!(e, OpenError::Changed(_)), "{e}");
    }

    #[test]
    fn a_change_after_open_is_seen_after_the_last_read() {
        let dir = tempfile::tempdir().unwrap();
        type Case = (&'static str, fn(&Path));
        let cases: [Case; 4] = [
            ("appended", |p| {
                let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
                f.write_all(b"more").unwrap();
            }),
            ("overwritten", |p| {
                let f = fs::OpenOptions::new().write(true).open(p).unwrap();
                f.write_all_at(b"X", 0).unwrap();
            }),
            ("truncated", |p| {
                let f = fs::OpenOptions::new().write(true).open(p).unwrap();
                f.set_len(5).unwrap();
            }),
            ("renamed over", |p| {
                let new = p.with_extension("new");
                fs::write(&new, b"0123456789").unwrap();
                fs::rename(&new, p).unwrap();
            }),
        ];
        for (name, change) in cases {
            let f = one(dir.path(), name, b"0123456789");
            let src = OpenSource::open(&f, 4).unwrap();
            later();
            change(&f.path);
            let e = src.check_unchanged().unwrap_err();
            assert!(!e.what.is_empty(), "{name}");
            let io = src.after_last_read().unwrap_err();
            assert!(Changed::from_io(&io).is_some(), "{name}: {io}");
        }
    }

    #[test]
    fn a_directory_renamed_away_with_another_file_put_at_the_path_is_a_change() {
        // The inode itself is untouched (its ctime too): only the path check sees this.
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("study");
        fs::create_dir(&sub).unwrap();
        let f = one(&sub, "a", b"0123456789");
        let src = OpenSource::open(&f, 4).unwrap();
        fs::rename(&sub, dir.path().join("study.old")).unwrap();
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("a"), b"0123456789").unwrap();
        let e = src.check_unchanged().unwrap_err();
        assert!(e.what.contains("put in its place"), "{}", e.what);
        fs::remove_file(sub.join("a")).unwrap();
        let e = src.check_unchanged().unwrap_err();
        assert!(e.what.contains("no longer at its path"), "{}", e.what);
    }

    #[test]
    fn a_short_read_is_a_change_not_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let f = one(dir.path(), "a", b"0123456789");
        let src = OpenSource::open(&f, 4).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&f.path)
            .unwrap()
            .set_len(6)
            .unwrap();
        let mut buf = [0u8; 4];
        let e = src.read_chunk(1, &mut buf).unwrap_err();
        let c = Changed::from_io(&e).expect("a Changed error");
        assert!(c.what.contains("ended before byte 8"), "{}", c.what);
    }
}
