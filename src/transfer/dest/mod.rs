//! The receiving side's writes: every file lands inside the destination directory, under
//! a short random temporary name first, and gets its final name only when complete and
//! verified.
//!
//! - Every operation is made relative to a directory descriptor: the destination's,
//!   opened once, and each directory below it opened one component at a time from its
//!   parent's descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or
//!   `openat(O_NOFOLLOW | O_DIRECTORY)` where the kernel lacks `openat2`). A symlink is
//!   never followed at any component; a directory swapped for a symlink at any moment
//!   makes the walk fail, and a descriptor already open keeps naming the directory it was
//!   opened on (docs/SECURITY.md, "The destination", says exactly what holds).
//! - Directories are created with `mkdirat` (0700), files as `.conduit-<32 hex>.part`
//!   with `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600 (the umask can only narrow both). The
//!   short name leaves room for a 255-byte final name; the real name is in the sidecar
//!   ([`crate::transfer::resume`]).
//! - The destination, and each existing directory a transfer walks through, must be
//!   writable by this user only (or sticky) and owned by this user or root
//!   ([`check_dir_private`], as ssh's `StrictModes`): nobody else can rename entries there.
//! - Finalizing fsyncs the file, sets its mode (0600, or 0700 with `--keep-modes` and an
//!   executable source), checks that the temporary name still names the open file
//!   (device and inode), renames it with `renameat2(RENAME_NOREPLACE)` (no replace; with
//!   `overwrite`, a plain rename), checks that the final name now names it, then fsyncs
//!   its directory and every directory the transfer created on the way, up to the
//!   destination. The receiver fsyncs a directory once for the files renamed in it at
//!   about the same time ([`NameSyncs`]) and reports and records each file only once
//!   that fsync, begun after its rename, has returned.
//! - A partial file is adopted for a resume only if it, and its sidecar, are regular
//!   files owned by this user, with one link and mode 0600, opened without following a
//!   link ([`private_file`]); otherwise it is left alone and the file starts over under a
//!   new temporary name. An adopted file is held open and locked from the offer, and the
//!   resume continues through that descriptor.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use thiserror::Error;

use crate::fsutil::{open_beneath, open_dir_beneath, stat_nofollow};
use crate::transfer::paths::{RelPath, escape};
use crate::transfer::reserve::Reservation;
use crate::transfer::resume::Sidecar;

mod part;
mod stale;

pub use part::{NameSyncs, PartFile, Renamed};
use part::{names_ours, open_part_file};
pub use stale::Removed;

/// Prefix of every temporary name the receiver makes.
pub const TEMP_PREFIX: &str = ".conduit-";
/// Suffix of a partial file.
pub const PART_SUFFIX: &str = ".part";
/// Longest path, in bytes, of a received file (destination included): Linux's `PATH_MAX`
/// less the terminating NUL.
pub const MAX_FULL_PATH: usize = 4095;
/// Default age after which a leftover partial file is removed.
pub const DEFAULT_PART_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Errors writing received files.
#[derive(Debug, Error)]
pub enum DestError {
    /// The final name exists and `overwrite` is off.
    #[error("{0} already exists")]
    Exists(String),
    /// The final name is a directory.
    #[error("{0} is a directory at the receiver")]
    IsADirectory(String),
    /// A path component in the destination is a symlink or not a directory.
    #[error("refusing to write {0}: {1} is a symlink or not a directory")]
    NotADirectory(String, String),
    /// Another transfer is writing that partial file right now.
    #[error("{0} is being received by another transfer right now")]
    PartInUse(String),
    /// The partial file offered for a resume changed before it was reopened, or the
    /// temporary name no longer names the file written when it was to be renamed.
    #[error("the partial file of {0} changed since the offer")]
    PartChanged(String),
    /// Right after the rename, the final name did not name the file received: someone
    /// else writes in that directory. The file is not reported as received.
    #[error(
        "{0}: the final name does not hold the received file after the rename (another user \
         or process writes in that directory); the file is not reported as received"
    )]
    Replaced(String),
    /// The destination, or a directory below it that the transfer uses, can be written by
    /// someone other than this user (as ssh's `StrictModes` refuses such a home).
    #[error(
        "refusing to receive into {dir}: it is {why}, so another user could replace a \
         received file there; {fix}"
    )]
    SharedDirectory {
        /// The directory (escaped).
        dir: String,
        /// What is wrong with it.
        why: String,
        /// What to do about it.
        fix: String,
    },
    /// This user cannot create files in the destination (a read-only file system, or no
    /// write permission).
    #[error("cannot write into {dir}: {why}")]
    NotWritable {
        /// The destination (escaped).
        dir: String,
        /// Why, as the system says it.
        why: String,
    },
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

fn io_err(shown: &str) -> impl Fn(io::Error) -> DestError + '_ {
    move |source| {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            DestError::StorageFull(shown.to_string())
        } else {
            DestError::Io {
                path: shown.to_string(),
                source,
            }
        }
    }
}

fn errno(shown: &str) -> impl Fn(Errno) -> DestError + '_ {
    move |e| io_err(shown)(io::Error::from(e))
}

/// Free space at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
    /// The file system is mounted read-only.
    pub read_only: bool,
}

/// This process's effective user id (asked once: two checks per received file use it).
fn euid() -> u32 {
    static EUID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *EUID.get_or_init(|| rustix::process::geteuid().as_raw())
}

/// Whether an opened file may be trusted as this receiver's own temporary file: a
/// regular file, owned by this user, with one link and mode 0600. Otherwise, why not.
pub fn private_file(fd: impl AsFd) -> Result<rustix::fs::Stat, &'static str> {
    let st = rustix::fs::fstat(fd).map_err(|_| "cannot be examined")?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err("not a regular file");
    }
    if st.st_uid != euid() {
        return Err("owned by another user");
    }
    if st.st_nlink != 1 {
        return Err("has more than one link");
    }
    if st.st_mode & 0o7777 != 0o600 {
        return Err("mode is not 0600");
    }
    Ok(st)
}

/// Refuses a directory someone other than this user could write entries in: one owned by
/// another user (root excepted), or writable by group or others without the sticky bit
/// (with it, others cannot rename or remove what is ours, as in `/tmp`). `shown` is how
/// the directory is named in the error.
pub fn check_dir_private(fd: impl AsFd, shown: &str) -> Result<(), DestError> {
    let st = rustix::fs::fstat(fd).map_err(errno(shown))?;
    let me = euid();
    let mode = st.st_mode & 0o7777;
    let refuse = |why: String, fix: String| DestError::SharedDirectory {
        dir: shown.to_string(),
        why,
        fix,
    };
    if st.st_uid != me && st.st_uid != 0 {
        return Err(refuse(
            format!("owned by uid {}, not by this user (uid {me})", st.st_uid),
            format!(
                "receive into a directory of your own, or have it given to you (chown {me} {shown})"
            ),
        ));
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(refuse(
            format!("writable by group or others (mode {mode:04o}) without the sticky bit"),
            format!("run chmod go-w {shown} (or chmod +t {shown} if others must write there)"),
        ));
    }
    Ok(())
}

/// A new random temporary name: `.conduit-<32 hex><suffix>`.
pub(crate) fn temp_name(suffix: &str) -> io::Result<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(io::Error::other)?;
    Ok(format!("{TEMP_PREFIX}{}{suffix}", hex(&b)))
}

/// Lowercase hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    crate::audit::record::hex(b)
}

/// Whether `name` is a partial-file name this receiver makes.
pub fn is_part_name(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX)
        .and_then(|r| r.strip_suffix(PART_SUFFIX))
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// The destination directory.
#[derive(Debug, Clone)]
pub struct Destination {
    root: PathBuf,
    fd: Arc<OwnedFd>,
    /// Permission bits new files and directories may have at most (0o777 & !umask).
    allowed: u32,
    /// The longest name the destination's file system allows.
    name_max: u64,
    /// Directories this process created whose entry is not yet known durable (relative
    /// paths): the next file finalized below one fsyncs its parent.
    unsynced: Arc<Mutex<HashSet<String>>>,
    /// The last walk that created nothing, by its parents (see [`Self::for_offer`]).
    walked: Option<Arc<Mutex<LastWalk>>>,
}

/// What [`Destination::find_part`] found for one offered file.
#[derive(Debug)]
pub enum FoundPart {
    /// Nothing to resume from.
    None,
    /// A partial file that passed every check, with its sidecar. The file is open for
    /// reading and writing and locked (`flock`) for this transfer; the prefix to resume
    /// from is hashed through this descriptor and the rest is written through it
    /// ([`Destination::open_part`]), so the bytes hashed and the bytes kept are the same
    /// file whatever happens to the name meanwhile.
    Usable(File, Sidecar),
    /// Something is there but is not adopted (left alone; the file starts over), with why.
    Refused(String),
}

impl std::fmt::Debug for Walk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walk").field("rels", &self.rels).finish()
    }
}

/// The last walk of an offer's checks: its parents, and what it found.
type LastWalk = Option<(String, Option<Walk>)>;

/// The directories from the destination down to a file's directory.
#[derive(Clone)]
struct Walk {
    /// Descriptors: the destination first, the file's directory last.
    fds: Vec<Arc<OwnedFd>>,
    /// The relative path of each level (empty for the destination).
    rels: Vec<String>,
}

impl Destination {
    /// Uses `root`, creating it (mode 0700) if missing; it must be a directory. The path
    /// the user gave is resolved as usual (a symlink to the destination is the user's
    /// choice); everything below it is reached from this descriptor only.
    pub fn open(root: &Path) -> Result<Self, DestError> {
        let shown = escape(&root.to_string_lossy());
        if std::fs::symlink_metadata(root).is_err() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(io_err(&shown))?;
        }
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOTDIR => DestError::NotADirectory(shown.clone(), shown.clone()),
            e => errno(&shown)(e),
        })?;
        // Only this user (or root) may make or replace entries in it.
        check_dir_private(&fd, &shown)?;
        // Absolute, so that the length of a received file's whole path can be checked.
        let root = std::path::absolute(root).map_err(io_err(&shown))?;
        let name_max = rustix::fs::fstatvfs(&fd).map_or(255, |s| s.f_namemax);
        Ok(Self {
            root,
            fd: Arc::new(fd),
            allowed: 0o777 & !crate::fsutil::umask(),
            name_max,
            unsynced: Arc::new(Mutex::new(HashSet::new())),
            walked: None,
        })
    }

    /// Checks that this user can create files in the destination now (write and search
    /// permission, a file system mounted read-write): a receiver checks at start, before
    /// it waits for a sender, and again before it accepts an offer (it can change).
    pub fn check_writable(&self) -> Result<(), DestError> {
        let not_writable = |why: String| DestError::NotWritable {
            dir: escape(&self.root.to_string_lossy()),
            why,
        };
        // The effective ids, as the writes will use them; EROFS even for root.
        rustix::fs::accessat(
            &*self.fd,
            ".",
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
            rustix::fs::AtFlags::EACCESS,
        )
        .map_err(|e| {
            not_writable(match e {
                Errno::ROFS => "it is on a read-only file system".to_string(),
                Errno::ACCESS | Errno::PERM => "no permission to create files there".to_string(),
                e => io::Error::from(e).to_string(),
            })
        })?;
        let vfs = rustix::fs::fstatvfs(&*self.fd).map_err(errno(&self.root.to_string_lossy()))?;
        if vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
            return Err(not_writable("it is on a read-only file system".to_string()));
        }
        Ok(())
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
        let comps: Vec<&str> = rel.components().collect();
        let Some((name, parents)) = comps.split_last() else {
            return false;
        };
        match self.walk(parents, false) {
            Ok(Some(w)) => w
                .fds
                .last()
                .is_some_and(|d| stat_nofollow(d.as_fd(), name).is_ok()),
            _ => false,
        }
    }

    /// Free space and whether the destination's file system is mounted read-only.
    pub fn space(&self) -> Result<Space, DestError> {
        let st = rustix::fs::fstatvfs(self.fd.as_fd()).map_err(errno(&self.shown_root()))?;
        Ok(Space {
            available: st.f_bavail.saturating_mul(st.f_frsize),
            read_only: st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
        })
    }

    fn shown_root(&self) -> String {
        escape(&self.root.to_string_lossy())
    }

    /// Why `rel` cannot be received here, checked before anything is created: a name
    /// longer than the file system allows, a whole path longer than [`MAX_FULL_PATH`], a
    /// directory on the way that is a symlink or a file, a final name that is a directory,
    /// or (without `overwrite`) a final name that exists. `None` when it can be received.
    pub fn check(&self, rel: &RelPath, overwrite: bool) -> Option<String> {
        let name_max = self.name_max;
        if rel.components().any(|c| c.len() as u64 > name_max) {
            return Some(format!(
                "{rel}: a name is longer than the receiver's file system allows ({name_max} bytes)"
            ));
        }
        let full = self.root.as_os_str().len() + 1 + rel.as_str().len();
        if full > MAX_FULL_PATH {
            return Some(format!(
                "{rel}: the path would be {full} bytes long at the receiver (at most {MAX_FULL_PATH})"
            ));
        }
        let comps: Vec<&str> = rel.components().collect();
        let (name, parents) = comps.split_last()?;
        let w = match self.walk(parents, false) {
            Ok(Some(w)) => w,
            // Created when the file starts.
            Ok(None) => return None,
            Err(e) => return Some(e.to_string()),
        };
        let dir = w.fds.last()?;
        match stat_nofollow(dir.as_fd(), name) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                Some(format!("{rel} is a directory at the receiver"))
            }
            Ok(_) if !overwrite => Some(format!("{rel} already exists at the receiver")),
            _ => None,
        }
    }

    /// Opens the directories `parents` below the destination, one component at a time,
    /// never following a symlink; creates missing ones (mode 0700) with `create`, else
    /// returns `None` when one is missing.
    fn walk(&self, parents: &[&str], create: bool) -> Result<Option<Walk>, DestError> {
        let Some(walked) = self.walked.as_ref().filter(|_| !create) else {
            return self.walk_now(parents, create);
        };
        let key = parents.join("/");
        let mut last = walked.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((k, w)) = last.as_ref() {
            if *k == key {
                return Ok(w.clone());
            }
        }
        let w = self.walk_now(parents, false)?;
        *last = Some((key, w.clone()));
        Ok(w)
    }

    /// The same destination, for checking one offer's files before anything is created
    /// ([`Self::exists`], [`Self::check`], [`Self::find_part`]): the walk to a directory is
    /// reused for the next file in the same directory (the offer's files come sorted, so
    /// each directory is walked once per check instead of once per file; a missing one
    /// too). Only the last walk is kept, so no more directories are held open than one.
    /// Creating walks ([`Self::open_part`]) are never reused.
    pub fn for_offer(&self) -> Self {
        Self {
            walked: Some(Arc::new(Mutex::new(None))),
            ..self.clone()
        }
    }

    /// [`Self::walk`], always from the destination's descriptor.
    fn walk_now(&self, parents: &[&str], create: bool) -> Result<Option<Walk>, DestError> {
        // Checked at open, and again here: a daemon runs for long, and the destination's
        // mode or owner may change meanwhile.
        check_dir_private(self.fd.as_fd(), &self.shown_root())?;
        let mut w = Walk {
            fds: vec![Arc::clone(&self.fd)],
            rels: vec![String::new()],
        };
        for (i, c) in parents.iter().enumerate() {
            let rel = parents[..=i].join("/");
            let shown = escape(&rel);
            let not_dir = || DestError::NotADirectory(escape(&parents.join("/")), shown.clone());
            let parent = Arc::clone(w.fds.last().ok_or_else(not_dir)?);
            let existing = |fd: OwnedFd| -> Result<OwnedFd, DestError> {
                // A directory that was there already: only this user may write in it.
                check_dir_private(&fd, &escape(&self.root.join(&rel).to_string_lossy()))?;
                Ok(fd)
            };
            let fd = match open_dir_beneath(parent.as_fd(), c) {
                Ok(fd) => existing(fd)?,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(parent.as_fd(), *c, Mode::from_raw_mode(0o700)) {
                        Ok(()) => {
                            let fd = open_dir_beneath(parent.as_fd(), c).map_err(|e| match e {
                                Errno::NOTDIR | Errno::LOOP => not_dir(),
                                e => errno(&shown)(e),
                            })?;
                            // A directory made in a setgid directory inherits the bit;
                            // ours are 0700 (less what the umask takes), nothing else.
                            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700 & self.allowed))
                                .map_err(errno(&shown))?;
                            self.unsynced
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .insert(rel.clone());
                            fd
                        }
                        // Made by another transfer meanwhile.
                        Err(Errno::EXIST) => {
                            existing(open_dir_beneath(parent.as_fd(), c).map_err(|e| match e {
                                Errno::NOTDIR | Errno::LOOP => not_dir(),
                                e => errno(&shown)(e),
                            })?)?
                        }
                        Err(e) => return Err(errno(&shown)(e)),
                    }
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => return Err(not_dir()),
                Err(e) => return Err(errno(&shown)(e)),
            };
            w.fds.push(Arc::new(fd));
            w.rels.push(rel);
        }
        Ok(Some(w))
    }

    /// Looks for the partial file an interrupted transfer of `rel` from `sender` left:
    /// its sidecar (named from the sender and the path, see [`Sidecar::name_for`]) and the
    /// temporary file it names, both checked with [`private_file`]. Creates nothing.
    pub fn find_part(
        &self,
        sender: &crate::crypto::identity::PublicKey,
        rel: &RelPath,
    ) -> FoundPart {
        let comps: Vec<&str> = rel.components().collect();
        let Some((_, parents)) = comps.split_last() else {
            return FoundPart::None;
        };
        let w = match self.walk(parents, false) {
            Ok(Some(w)) => w,
            _ => return FoundPart::None,
        };
        let Some(dir) = w.fds.last() else {
            return FoundPart::None;
        };
        let sidecar = match Sidecar::load_at(dir.as_fd(), &Sidecar::name_for(sender, rel)) {
            Ok(None) => return FoundPart::None,
            Ok(Some(s)) => s,
            Err(why) => return FoundPart::Refused(format!("its resume record {why}")),
        };
        if sidecar.path != rel.as_str() || !is_part_name(&sidecar.part) {
            return FoundPart::Refused("its resume record names another file".into());
        }
        match open_part_file(dir.as_fd(), &sidecar.part, OFlags::RDWR) {
            Ok(f) => {
                // Held from here on: no other transfer, and no removal of stale files,
                // takes it between the offer and its stream.
                if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                    .is_err()
                {
                    return FoundPart::Refused(
                        "its partial file is being received by another transfer right now".into(),
                    );
                }
                FoundPart::Usable(f, sidecar)
            }
            Err(None) => FoundPart::None,
            Err(Some(why)) => FoundPart::Refused(format!("its partial file {why}")),
        }
    }

    /// Creates the parent directories of `rel` and a new temporary file for it, or, with
    /// `adopt` (the file and sidecar [`Self::find_part`] returned), continues in that very
    /// file, keeping its first `keep` bytes: it must still be a private file of ours and
    /// its temporary name must still name it (same device and inode), else
    /// [`DestError::PartChanged`] (the prefix hashed at the offer was of that file). The space for the rest, up to
    /// `size`, is reserved where the file system can: the first segment now (a full disk
    /// shows at once), the rest now or ahead of the writes (see
    /// [`crate::transfer::reserve`] and [`PartFile::take_reservation`]).
    pub fn open_part(
        &self,
        rel: &RelPath,
        sender: &crate::crypto::identity::PublicKey,
        adopt: Option<(File, &Sidecar)>,
        keep: u64,
        size: u64,
    ) -> Result<PartFile, DestError> {
        let fresh = adopt.is_none();
        let mut part = self.create_part_inner(rel, adopt)?;
        part.sidecar = Some(Sidecar::name_for(sender, rel));
        // A file created here is empty already; a small one is written in a write or a
        // few, which show a full disk as early as a reservation would.
        if fresh && keep == 0 && size <= crate::transfer::reserve::UNRESERVED {
            return Ok(part);
        }
        part.file.set_len(keep).map_err(io_err(&part.shown))?;
        match Reservation::start(&part.file, keep, size) {
            Ok(r) => part.reservation = Some(r),
            Err(e) if e.kind() == io::ErrorKind::StorageFull => {
                return Err(DestError::StorageFull(part.shown.clone()));
            }
            Err(e) => return Err(io_err(&part.shown)(e)),
        }
        Ok(part)
    }

    /// Creates the parent directories of `rel` and a new temporary file for it.
    pub fn create_part(&self, rel: &RelPath) -> Result<PartFile, DestError> {
        self.create_part_inner(rel, None)
    }

    fn create_part_inner(
        &self,
        rel: &RelPath,
        adopt: Option<(File, &Sidecar)>,
    ) -> Result<PartFile, DestError> {
        let shown = rel.to_string();
        let comps: Vec<&str> = rel.components().collect();
        let (name, parents) = comps
            .split_last()
            .ok_or_else(|| DestError::Exists(shown.clone()))?;
        let w = self
            .walk(parents, true)?
            .ok_or_else(|| DestError::NotADirectory(shown.clone(), shown.clone()))?;
        let dir = Arc::clone(
            w.fds
                .last()
                .ok_or_else(|| DestError::Exists(shown.clone()))?,
        );
        let adopted = adopt.is_some();
        let (file, part) = match adopt {
            Some((f, s)) => {
                if private_file(&f).is_err() || !names_ours(dir.as_fd(), &s.part, &f) {
                    return Err(DestError::PartChanged(shown.clone()));
                }
                (f, s.part.clone())
            }
            None => loop {
                let part = temp_name(PART_SUFFIX).map_err(io_err(&shown))?;
                match open_beneath(
                    dir.as_fd(),
                    &part,
                    OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
                    0o600,
                ) {
                    Ok(fd) => break (File::from(fd), part),
                    Err(Errno::EXIST) => continue,
                    Err(e) => return Err(errno(&shown)(e)),
                }
            },
        };
        // One transfer per partial file, across processes (released when the file closes
        // or the process dies).
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| DestError::PartInUse(shown.clone()))?;
        Ok(PartFile {
            file: Arc::new(file),
            part,
            final_name: (*name).to_string(),
            dir,
            walk: w,
            sidecar: None,
            sidecar_stored: Arc::new(AtomicBool::new(adopted)),
            shown,
            reservation: None,
            allowed: self.allowed,
            unsynced: Arc::clone(&self.unsynced),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::time::SystemTime;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    fn parts_in(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| is_part_name(&p.file_name().unwrap().to_string_lossy()))
            .collect()
    }

    #[test]
    fn part_then_final_without_replace() {
        let d = tempfile::tempdir().unwrap();
        let dest = Destination::open(d.path()).unwrap();
        let p = dest.create_part(&rel("a/b/c.txt")).unwrap();
        let parts = parts_in(&d.path().join("a/b"));
        assert_eq!(parts.len(), 1);
        let mode = fs::metadata(&parts[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        for dir in ["a", "a/b"] {
            let m = fs::metadata(d.path().join(dir))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o7777, 0o700 & dest.allowed, "{dir}");
        }
        p.write_at(b"hello", 0).unwrap();
        assert!(
            !d.path().join("a/b/c.txt").exists(),
            "no final name before finalize"
        );
        p.finalize(false, false).unwrap();
        assert_eq!(fs::read(d.path().join("a/b/c.txt")).unwrap(), b"hello");
        assert!(parts_in(&d.path().join("a/b")).is_empty());
        // Same name again: refused without overwrite, and the old content survives.
        let p = dest.create_part(&rel("a/b/c.txt")).unwrap();
        p.write_at(b"other", 0).unwrap();
        assert!(matches!(
            p.finalize(false, false),
            Err(DestError::Exists(_))
        ));
        assert_eq!(fs::read(d.path().join("a/b/c.txt")).unwrap(), b"hello");
        for p in parts_in(&d.path().join("a/b")) {
            fs::remove_file(p).unwrap();
        }
        let p = dest.create_part(&rel("a/b/c.txt")).unwrap();
        p.write_at(b"other", 0).unwrap();
        p.finalize(true, false).unwrap();
        assert_eq!(fs::read(d.path().join("a/b/c.txt")).unwrap(), b"other");
    }

    /// Files renamed together: one fsync per directory (by inode: a directory swapped
    /// for another of the same name between two files is fsynced too), every file's
    /// result, and with [`NameSyncs`] each caller returns once its name is durable.
    #[test]
    fn a_group_of_renames_fsyncs_each_directory_once() {
        let d = tempfile::tempdir().unwrap();
        let dest = Destination::open(d.path()).unwrap();
        let mut renamed = Vec::new();
        let mut named = |dest: &Destination, path: &str| {
            let p = dest.create_part(&rel(path)).unwrap();
            p.write_at(path.as_bytes(), 0).unwrap();
            renamed.push(p.rename(false, false).unwrap());
        };
        for path in ["a/1", "a/2", "b/1", "a/3", "top", "b/2", "d/x"] {
            named(&dest, path);
        }
        fs::rename(d.path().join("d"), d.path().join("d-old")).unwrap();
        named(&dest, "d/y");
        assert_eq!(dest.unsynced.lock().unwrap().len(), 3, "a, b and d made");
        let (results, fsyncs) = part::sync_group(&renamed);
        assert_eq!(results.len(), 8);
        assert!(results.iter().all(Result::is_ok));
        // a, b, the destination, the old d and the new d.
        assert_eq!(fsyncs, 5);
        assert!(dest.unsynced.lock().unwrap().is_empty());
        for path in ["a/1", "a/2", "a/3", "b/1", "b/2", "top", "d-old/x", "d/y"] {
            assert!(d.path().join(path).is_file(), "{path}");
        }

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            let syncs = Arc::new(NameSyncs::default());
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..40 {
                let p = dest.create_part(&rel(&format!("e/{i}"))).unwrap();
                let syncs = Arc::clone(&syncs);
                tasks.spawn(async move {
                    let r = p.rename(false, false).unwrap();
                    syncs.durable(r).await
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap().unwrap();
            }
        });
        assert_eq!(fs::read_dir(d.path().join("e")).unwrap().count(), 40);
        assert!(dest.unsynced.lock().unwrap().is_empty());
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
        assert!(dest.check(&rel("link/x"), false).is_some());
        assert_eq!(
            fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing written outside"
        );
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_after_it_was_opened_keeps_the_writes_inside() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dest = Destination::open(d.path()).unwrap();
        let p = dest.create_part(&rel("sub/f")).unwrap();
        fs::rename(d.path().join("sub"), d.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("sub")).unwrap();
        p.write_at(b"data", 0).unwrap();
        p.finalize(false, false).unwrap();
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(fs::read(d.path().join("moved/f")).unwrap(), b"data");
    }

    #[test]
    fn a_file_put_at_the_temporary_name_does_not_get_the_final_name() {
        let d = tempfile::tempdir().unwrap();
        let dest = Destination::open(d.path()).unwrap();
        let p = dest.create_part(&rel("f.txt")).unwrap();
        p.write_at(b"received", 0).unwrap();
        // A co-writer of the directory renames its own file onto the temporary name.
        let theirs = d.path().join("theirs");
        fs::write(&theirs, b"attacker").unwrap();
        fs::rename(&theirs, d.path().join(p.part_name())).unwrap();
        let part = d.path().join(p.part_name());
        assert!(matches!(
            p.finalize(false, false),
            Err(DestError::PartChanged(_))
        ));
        assert!(!d.path().join("f.txt").exists(), "given the final name");
        // Not ours: left where it is.
        assert_eq!(fs::read(part).unwrap(), b"attacker");
    }

    #[test]
    fn a_directory_others_can_write_in_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = |mode: u32| {
            fs::set_permissions(d.path(), fs::Permissions::from_mode(mode)).unwrap();
            check_dir_private(File::open(d.path()).unwrap(), "DIR")
        };
        for ok in [0o700, 0o755, 0o1777, 0o1770] {
            assert!(dir(ok).is_ok(), "{ok:o}");
        }
        for refused in [0o770, 0o777, 0o702, 0o2770] {
            let e = dir(refused).unwrap_err().to_string();
            assert!(
                e.contains("DIR") && e.contains("chmod go-w DIR"),
                "{refused:o}: {e}"
            );
        }
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        // A directory below the destination, made group-writable by someone: refused
        // before anything is created in it.
        let dest = Destination::open(d.path()).unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::set_permissions(d.path().join("sub"), fs::Permissions::from_mode(0o775)).unwrap();
        assert!(dest.check(&rel("sub/f"), false).is_some());
        assert!(matches!(
            dest.create_part(&rel("sub/f")),
            Err(DestError::SharedDirectory { .. })
        ));
        assert_eq!(fs::read_dir(d.path().join("sub")).unwrap().count(), 0);
        // The destination itself, opened while private and then opened up to others.
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            dest.create_part(&rel("f")),
            Err(DestError::SharedDirectory { .. })
        ));
        assert!(!d.path().join("f").exists() && parts_in(d.path()).is_empty());
    }

    #[test]
    fn only_private_files_are_trusted() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            private_file(File::open(&f).unwrap()).err(),
            Some("mode is not 0600")
        );
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(private_file(File::open(&f).unwrap()).is_ok());
        fs::hard_link(&f, d.path().join("g")).unwrap();
        assert_eq!(
            private_file(File::open(&f).unwrap()).err(),
            Some("has more than one link")
        );
        assert!(private_file(File::open(d.path()).unwrap()).is_err());
    }

    #[test]
    fn stale_parts_are_removed_and_fresh_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let dest = Destination::open(d.path()).unwrap();
        let old = dest.create_part(&rel("x/old.bin")).unwrap();
        let old_name = old.part_name().to_string();
        drop(old);
        let fresh = dest.create_part(&rel("new.bin")).unwrap();
        let fresh_name = fresh.part_name().to_string();
        drop(fresh);
        let past = SystemTime::now() - Duration::from_secs(8 * 24 * 3600);
        File::options()
            .write(true)
            .open(d.path().join("x").join(&old_name))
            .unwrap()
            .set_modified(past)
            .unwrap();
        // Somebody else's file of a similar name, and a plain file: not ours to remove.
        fs::write(d.path().join(".conduit-notours.part"), b"x").unwrap();
        // An old partial file a transfer holds is not removed.
        let held = dest.create_part(&rel("y/held.bin")).unwrap();
        File::options()
            .write(true)
            .open(d.path().join("y").join(held.part_name()))
            .unwrap()
            .set_modified(past)
            .unwrap();
        let removed = dest.remove_stale(DEFAULT_PART_MAX_AGE).unwrap();
        assert!(d.path().join("y").join(held.part_name()).exists());
        drop(held);
        assert_eq!(
            removed,
            vec![Removed {
                path: format!("x/{old_name}"),
                bytes: 0
            }]
        );
        assert!(!d.path().join("x").join(&old_name).exists());
        assert!(d.path().join(&fresh_name).exists());
        assert!(d.path().join(".conduit-notours.part").exists());
    }
}
