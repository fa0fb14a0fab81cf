//! A file being received: its writes, and how it gets its final name.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use tokio::sync::oneshot;

use super::{DestError, Walk, errno, io_err, is_part_name, private_file};
use crate::fsutil::{open_beneath, stat_nofollow};
use crate::transfer::reserve::Reservation;
use crate::transfer::resume::{Checkpoint, Sidecar};

/// Whether `name` in `dir` (not following a link) is the file `ours` is open on: the same
/// device and inode.
pub(super) fn names_ours(dir: impl AsFd, name: &str, ours: &File) -> bool {
    match (stat_nofollow(dir, name), rustix::fs::fstat(ours)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

/// Opens the temporary file `name` in `dir` without following a link (and without
/// blocking on a FIFO), and checks it with [`private_file`]. `Err(None)`: absent;
/// `Err(Some(why))`: there but not ours.
pub(super) fn open_part_file(
    dir: impl AsFd,
    name: &str,
    mode: OFlags,
) -> Result<File, Option<String>> {
    let fd = match open_beneath(dir, name, mode | OFlags::NONBLOCK, 0) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Err(None),
        Err(Errno::LOOP) => return Err(Some("is a symlink".into())),
        Err(e) => return Err(Some(format!("cannot be opened ({e})"))),
    };
    private_file(&fd).map_err(|why| Some(why.to_string()))?;
    // Back to blocking IO for the writes.
    rustix::fs::fcntl_setfl(&fd, mode).map_err(|e| Some(e.to_string()))?;
    Ok(File::from(fd))
}

/// A file being received.
#[derive(Debug)]
pub struct PartFile {
    /// The open file; its writer and checkpoint share this one descriptor.
    pub(super) file: Arc<File>,
    pub(super) part: String,
    pub(super) final_name: String,
    pub(super) dir: Arc<OwnedFd>,
    pub(super) walk: Walk,
    pub(super) sidecar: Option<String>,
    /// Whether the sidecar may hold a record of this file: it was adopted with one, or a
    /// checkpoint wrote one. A file that never had one (every small file) is not looked
    /// for at the end.
    pub(super) sidecar_stored: Arc<AtomicBool>,
    pub(super) shown: String,
    pub(super) reservation: Option<Reservation>,
    pub(super) allowed: u32,
    pub(super) unsynced: Arc<Mutex<HashSet<String>>>,
}

impl PartFile {
    /// Writes `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DestError> {
        self.file
            .write_all_at(buf, offset)
            .map_err(io_err(&self.shown))
    }

    /// The reservation of the rest of the file, for its writer to keep ahead of itself
    /// (`None` once taken, or where nothing is left to reserve).
    pub fn take_reservation(&mut self) -> Option<Reservation> {
        self.reservation.take()
    }

    /// A handle for positional writes from another thread (the same descriptor, shared).
    pub fn writer(&self) -> Result<Arc<File>, DestError> {
        Ok(Arc::clone(&self.file))
    }

    /// Records the durable progress of this file in its sidecar as `sidecar` (see
    /// [`Checkpoint`]), from chunk `first` on, through this file's descriptor.
    pub fn checkpoint(&self, sidecar: Sidecar, first: u64) -> Checkpoint {
        Checkpoint::new(
            Arc::clone(&self.file),
            self.dir(),
            self.sidecar.clone().unwrap_or_default(),
            sidecar,
            first,
        )
        .noting_stored(Arc::clone(&self.sidecar_stored))
    }

    /// Removes the sidecar if one may hold a record of this file (see
    /// [`Sidecar::remove_if_for`]).
    fn remove_sidecar(&self) {
        if let Some(s) = &self.sidecar {
            if self.sidecar_stored.load(Ordering::Acquire) {
                Sidecar::remove_if_for(self.dir.as_fd(), s, &self.part);
            }
        }
    }

    /// The directory the file is in (for its sidecar).
    pub fn dir(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.dir)
    }

    /// The temporary file's name in its directory.
    pub fn part_name(&self) -> &str {
        &self.part
    }

    /// The name of its resume sidecar in the same directory (`None` for a file made by
    /// [`Destination::create_part`], which has none).
    pub fn sidecar_name(&self) -> Option<&str> {
        self.sidecar.as_deref()
    }

    /// Makes the file durable and gives it its final name: mode 0600, or 0700 when
    /// `keep_exec` (the source was executable by its owner and `--keep-modes` is on),
    /// less what the umask takes; never setuid, setgid or sticky. Then the directory, and
    /// every directory created for it and not yet synced, are fsynced.
    ///
    /// The temporary name must still name this file (device and inode) right before the
    /// rename, and the final name must name it right after; otherwise someone else writes
    /// in the directory and the file is not reported as received
    /// ([`DestError::PartChanged`], [`DestError::Replaced`]). When the file does not get
    /// its final name, its temporary file (if that name is still ours) and sidecar are
    /// removed.
    ///
    /// [`Self::rename`] and [`NameSyncs::durable`] do the same in two steps, so that the
    /// directory of many files renamed at about the same time is fsynced once for them.
    pub fn finalize(self, overwrite: bool, keep_exec: bool) -> Result<(), DestError> {
        let renamed = self.rename(overwrite, keep_exec)?;
        let (mut synced, _) = sync_group(std::slice::from_ref(&renamed));
        synced.pop().unwrap_or(Ok(()))
    }

    /// [`Self::finalize`] without the fsync of the directories: the file is durable and
    /// has its final name, but the name is durable only once [`NameSyncs::durable`] (or
    /// a later fsync of the directory) returns. Until then the file must not be reported
    /// or recorded as received.
    pub fn rename(self, overwrite: bool, keep_exec: bool) -> Result<Renamed, DestError> {
        match self.rename_into_place(overwrite, keep_exec) {
            Ok(()) => {}
            Err(e @ DestError::Replaced(_)) => return Err(e),
            Err(e) => {
                self.discard();
                return Err(e);
            }
        }
        self.remove_sidecar();
        let PartFile {
            dir,
            walk,
            unsynced,
            shown,
            ..
        } = self;
        Ok(Renamed {
            dir,
            walk,
            unsynced,
            shown,
        })
    }

    /// [`Self::finalize`] up to and including the rename and the check after it.
    fn rename_into_place(&self, overwrite: bool, keep_exec: bool) -> Result<(), DestError> {
        let shown = self.shown.clone();
        self.file.sync_all().map_err(io_err(&shown))?;
        let mode = if keep_exec { 0o700 } else { 0o600 } & self.allowed;
        let st = rustix::fs::fstat(&*self.file).map_err(errno(&shown))?;
        // A file this receiver created has its mode already (0600 less the umask).
        if st.st_mode & 0o7777 != mode {
            rustix::fs::fchmod(&*self.file, Mode::from_raw_mode(mode)).map_err(errno(&shown))?;
        }
        let d = self.dir.as_fd();
        let (from, to) = (self.part.as_str(), self.final_name.as_str());
        let is_ours = |name: &str| {
            stat_nofollow(d, name).is_ok_and(|a| (a.st_dev, a.st_ino) == (st.st_dev, st.st_ino))
        };
        // Someone who can write in the directory could have put another file at the
        // temporary name: that one must not get the final name.
        if !is_ours(from) {
            return Err(DestError::PartChanged(shown));
        }
        let renamed = if overwrite {
            rustix::fs::renameat(d, from, d, to)
        } else {
            match rustix::fs::renameat_with(d, from, d, to, RenameFlags::NOREPLACE) {
                // A file system without RENAME_NOREPLACE: link (fails if the name is
                // taken), then drop the temporary name.
                Err(Errno::INVAL | Errno::NOSYS) => {
                    rustix::fs::linkat(d, from, d, to, AtFlags::empty())
                        .and_then(|()| rustix::fs::unlinkat(d, from, AtFlags::empty()))
                }
                r => r,
            }
        };
        renamed.map_err(|e| match e {
            Errno::EXIST => DestError::Exists(shown.clone()),
            Errno::ISDIR | Errno::NOTEMPTY => DestError::IsADirectory(shown.clone()),
            e => errno(&shown)(e),
        })?;
        // And between that check and the rename: whatever the final name holds now is
        // not ours to remove, and not reported as received.
        if !is_ours(to) {
            return Err(DestError::Replaced(shown));
        }
        Ok(())
    }

    /// Removes the partial file `name` an earlier, superseded transfer of the same file
    /// left in this directory (its resume record now describes this one), if it is still
    /// this receiver's (checked as for adoption) and no other transfer holds it.
    pub fn remove_superseded(&self, name: &str) {
        if name == self.part || !is_part_name(name) {
            return;
        }
        let d = self.dir.as_fd();
        if let Ok(f) = open_part_file(d, name, OFlags::RDONLY) {
            if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
                let _ = rustix::fs::unlinkat(d, name, AtFlags::empty());
            }
        }
    }

    /// Gives up on the file: the temporary file (if its name still names this file) and
    /// its sidecar are removed.
    pub fn discard(self) {
        let d = self.dir.as_fd();
        if names_ours(d, &self.part, &self.file) {
            let _ = rustix::fs::unlinkat(d, self.part.as_str(), AtFlags::empty());
        }
        self.remove_sidecar();
    }
}

/// A file that has its final name, durably as a file ([`PartFile::rename`]); its name is
/// durable once its directory, and every directory this transfer created on its way, are
/// fsynced ([`NameSyncs::durable`]).
#[derive(Debug)]
pub struct Renamed {
    dir: Arc<OwnedFd>,
    walk: Walk,
    unsynced: Arc<Mutex<HashSet<String>>>,
    shown: String,
}

impl Renamed {
    /// Fsyncs the parent of every directory on this file's way that this process created
    /// and no earlier file synced.
    fn sync_created(&self) -> Result<(), Errno> {
        let mut unsynced = self.unsynced.lock().unwrap_or_else(PoisonError::into_inner);
        if unsynced.is_empty() {
            return Ok(());
        }
        for level in (1..self.walk.fds.len()).rev() {
            if unsynced.remove(&self.walk.rels[level]) {
                rustix::fs::fsync(self.walk.fds[level - 1].as_fd())?;
            }
        }
        Ok(())
    }
}

/// Makes the names of renamed files durable, many at a time: a file waiting for its name
/// queues; if no sync is running, its caller runs one for everything queued, one fsync
/// per distinct directory, and then again for what was queued meanwhile, until nothing
/// is left. The others wait until a sync that began after their rename has finished, so
/// each returns only when its own name is durable. On a disk, where a directory fsync
/// waits for the journal, the files finishing during one fsync share the next.
#[derive(Debug, Default)]
pub struct NameSyncs {
    queue: Mutex<SyncQueue>,
}

type Waiting = (Renamed, oneshot::Sender<Result<(), DestError>>);

#[derive(Debug, Default)]
struct SyncQueue {
    waiting: Vec<Waiting>,
    running: bool,
}

impl NameSyncs {
    /// Returns once the final name of `renamed` is durable (its directory, and the
    /// directories created for it, fsynced after its rename).
    pub async fn durable(&self, renamed: Renamed) -> Result<(), DestError> {
        let shown = renamed.shown.clone();
        let (done, wait) = oneshot::channel();
        let lead = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.waiting.push((renamed, done));
            !std::mem::replace(&mut q.running, true)
        };
        if lead {
            self.sync_queued();
        }
        wait.await.unwrap_or_else(|_| {
            Err(io_err(&shown)(std::io::Error::other(
                "the directory was not synced",
            )))
        })
    }

    /// Syncs groups until nothing is queued.
    fn sync_queued(&self) {
        loop {
            let group = {
                let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if q.waiting.is_empty() {
                    q.running = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            let (renamed, replies): (Vec<Renamed>, Vec<_>) = group.into_iter().unzip();
            for (result, reply) in sync_group(&renamed).0.into_iter().zip(replies) {
                let _ = reply.send(result);
            }
        }
    }
}

/// Fsyncs the directory of each file in `group` once (files in the same directory, by
/// device and inode, share the fsync) and the directories created on their way: each
/// file's result, and how many directories were fsynced.
pub(super) fn sync_group(group: &[Renamed]) -> (Vec<Result<(), DestError>>, usize) {
    let mut synced: Vec<((u64, u64), Result<(), Errno>)> = Vec::new();
    let mut fsyncs = 0;
    let results = group
        .iter()
        .map(|r| {
            let d = r.dir.as_fd();
            let dir = if group.len() == 1 {
                fsyncs += 1;
                rustix::fs::fsync(d)
            } else {
                rustix::fs::fstat(d).and_then(|st| {
                    let id = (st.st_dev, st.st_ino);
                    match synced.iter().find(|(i, _)| *i == id) {
                        Some(&(_, done)) => done,
                        None => {
                            fsyncs += 1;
                            let done = rustix::fs::fsync(d);
                            synced.push((id, done));
                            done
                        }
                    }
                })
            };
            dir.and_then(|()| r.sync_created()).map_err(errno(&r.shown))
        })
        .collect();
    (results, fsyncs)
}
