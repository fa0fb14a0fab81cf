//! Reserving a received file's space ahead of its writes.
//!
//! The rest of a partial file is reserved with `fallocate(FALLOC_FL_KEEP_SIZE)`, so that
//! a full disk shows at the start of a file rather than midway, and the writes find
//! their blocks ready. On some file systems reserving costs as much as writing: tmpfs
//! allocates and charges every page (0.27 CPU seconds per GiB measured here), and done
//! at once, before the first chunk, that held up a 1 GiB transfer by a quarter of a
//! second while the sender waited on flow control. So only the first
//! [`FIRST_SEGMENT`] is reserved before the first write; the rest is reserved segment
//! by segment on a thread of its own while the data arrives, and a full disk found there
//! fails the file's next write ([`SpaceWatch::check`]).
//!
//! A file system without `fallocate` is not an error: the writes allocate as they go.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

/// Reserved before the first write (a small file is reserved whole, at once).
pub const FIRST_SEGMENT: u64 = 8 << 20;
/// Reserved per call afterwards (each call holds the file's lock, which its writes wait
/// for: on tmpfs 32 MiB take about 8 ms).
const SEGMENT: u64 = 32 << 20;

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    full: AtomicBool,
    /// How far the writer has got (the offset of its latest write).
    written: AtomicU64,
}

/// The space of a file being reserved; dropping it stops the reservation (and waits for
/// the call in progress).
#[derive(Debug)]
pub struct Reservation {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Tells the writer of a file whether the reservation ran out of space.
#[derive(Debug, Clone)]
pub struct SpaceWatch(Arc<Shared>);

impl SpaceWatch {
    /// Called before writing at `offset`: an error of kind [`io::ErrorKind::StorageFull`]
    /// if the storage cannot hold the rest of the file.
    pub fn check(&self, offset: u64) -> io::Result<()> {
        self.0.written.fetch_max(offset, Ordering::Relaxed);
        if self.0.full.load(Ordering::Acquire) {
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "receiver storage full: no room for the rest of the file",
            ))
        } else {
            Ok(())
        }
    }
}

fn reserve(file: &File, from: u64, to: u64) -> rustix::io::Result<()> {
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, from, to - from)
}

/// The background half: `from..to` segment by segment, until done, stopped or full.
///
/// A file system may refuse a range for the size of the whole range even where some of
/// it is allocated already (tmpfs does), so when the writer has got ahead of the
/// reservation, a refused segment is tried once more from the writer's position before
/// the storage counts as full.
fn reserve_rest(file: &File, shared: &Shared, from: u64, to: u64) {
    let mut at = from;
    let mut retried = false;
    while at < to && !shared.stop.load(Ordering::Relaxed) {
        let end = to.min(at.saturating_add(SEGMENT));
        match reserve(file, at, end) {
            Ok(()) => {
                at = end;
                retried = false;
            }
            Err(rustix::io::Errno::NOSPC) => {
                let written = shared.written.load(Ordering::Relaxed);
                if !retried && written > at {
                    at = written.min(to);
                    retried = true;
                    continue;
                }
                shared.full.store(true, Ordering::Release);
                return;
            }
            // Not supported, or failing otherwise: the writes allocate as they go (and
            // report their own errors).
            Err(_) => return,
        }
    }
}

impl Reservation {
    /// Reserves bytes `from..to` of `file`: the first [`FIRST_SEGMENT`] now (an error of
    /// kind `StorageFull` if it does not fit), the rest on a background thread.
    pub fn start(file: &File, from: u64, to: u64) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let first_end = to.min(from.saturating_add(FIRST_SEGMENT));
        let mut this = Self {
            shared,
            thread: None,
        };
        if from >= to {
            return Ok(this);
        }
        match reserve(file, from, first_end) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOSPC) => {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "receiver storage full",
                ));
            }
            // Not supported here: the writes allocate as they go.
            Err(_) => return Ok(this),
        }
        if first_end == to {
            return Ok(this);
        }
        // Without a thread (or a second handle) the writes allocate as they go.
        let Ok(file) = file.try_clone() else {
            return Ok(this);
        };
        let shared = Arc::clone(&this.shared);
        this.thread = std::thread::Builder::new()
            .name("conduit-reserve".into())
            .spawn(move || reserve_rest(&file, &shared, first_end, to))
            .ok();
        Ok(this)
    }

    /// The handle the file's writer checks before each write.
    pub fn watch(&self) -> SpaceWatch {
        SpaceWatch(Arc::clone(&self.shared))
    }

    /// Waits until the whole range is reserved (or the reservation failed) and says
    /// which.
    pub fn wait(mut self) -> io::Result<()> {
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| io::Error::other("reservation thread panicked"))?;
        }
        self.watch().check(0)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_whole_range_is_reserved_and_the_size_kept() {
        let d = tempfile::tempdir().unwrap();
        let f = File::create(d.path().join("f")).unwrap();
        let size = FIRST_SEGMENT + 2 * SEGMENT + 12_345;
        let r = Reservation::start(&f, 0, size).unwrap();
        r.wait().unwrap();
        let m = f.metadata().unwrap();
        assert_eq!(m.len(), 0, "the size is kept");
        // Where the file system reserves at all, all of it is reserved.
        if m.blocks() > 0 {
            assert!(m.blocks() * 512 >= size, "{} blocks", m.blocks());
        }
    }

    #[test]
    fn dropping_stops_the_reservation() {
        let d = tempfile::tempdir().unwrap();
        let f = File::create(d.path().join("f")).unwrap();
        let r = Reservation::start(&f, 0, 1 << 40).unwrap();
        let watch = r.watch();
        drop(r);
        // Stopped after the call in progress: far from the terabyte asked for (and not by
        // running out of space).
        let m = f.metadata().unwrap();
        assert_eq!(m.len(), 0);
        assert!(
            m.blocks() * 512 <= FIRST_SEGMENT + 4 * SEGMENT,
            "{}",
            m.blocks()
        );
        watch.check(0).unwrap();
    }
}
