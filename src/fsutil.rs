//! Small filesystem helpers: the endpoint's own files (keys, address book), and the
//! directory-descriptor operations the receiver makes inside its destination (never
//! following a symlink, see docs/SECURITY.md, "The destination").

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Creates `dir` (and parents) with mode 0700 if missing, and tightens an existing one to
/// 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", dir.display()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically with mode `mode`: a temporary file in the same
/// directory (created exclusively, never following a link), fsync, rename over `path`,
/// fsync of the directory. A reader sees the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Set once `openat2` turned out to be missing (kernel before 5.6) or filtered (seccomp):
/// from then on, plain `openat` with `O_NOFOLLOW`.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens `name` in `dir` with `flags` (and `O_NOFOLLOW | O_CLOEXEC`), never following a
/// symlink: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` where the kernel has
/// it, otherwise `openat` with `O_NOFOLLOW`. `name` is one path component, so both refuse
/// a symlink at it (`ELOOP`, or `ENOTDIR` with `O_DIRECTORY`).
pub(crate) fn open_beneath(
    dir: impl AsFd,
    name: &str,
    flags: OFlags,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(mode);
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match rustix::fs::openat2(
            dir.as_fd(),
            name,
            flags,
            mode,
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        ) {
            Err(Errno::NOSYS | Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
            // A parallel change could only make it retry: a transient condition.
            Err(Errno::AGAIN) => {}
            r => return r,
        }
    }
    rustix::fs::openat(dir, name, flags, mode)
}

/// Opens the directory `name` in `dir` (read-only, for `*at` calls), never following a
/// symlink; `ENOTDIR` or `ELOOP` when it is not a real directory.
pub(crate) fn open_dir_beneath(dir: impl AsFd, name: &str) -> Result<OwnedFd, Errno> {
    open_beneath(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, 0)
}

/// The status of `name` in `dir`, without following a symlink.
pub(crate) fn stat_nofollow(dir: impl AsFd, name: &str) -> Result<rustix::fs::Stat, Errno> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// The process's umask, read without changing it (`/proc/self/status`); where that is
/// not readable, the strictest umask (`0o077`) so that nothing is ever widened.
pub(crate) fn umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .map_or(0o077, |m| m & 0o777)
}
