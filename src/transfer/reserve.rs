//! Reserving a received file's space ahead of its writes.
//!
//! The rest of a partial file is reserved with `fallocate(FALLOC_FL_KEEP_SIZE)`, so that
//! a full disk shows before the data that would not fit is received, and the writes find
//! their blocks ready. How much it costs depends on the file system:
//!
//! - where blocks are reserved as extents (ext4, xfs, btrfs) a whole file takes
//!   microseconds: the first [`FIRST_SEGMENT`] is reserved, and when the rest would take
//!   less than [`FAST`] at the rate that went, the rest at once;
//! - where every page is allocated (tmpfs: 0.27 CPU seconds per GiB measured here),
//!   reserving a large file at once held up its first chunk for a quarter of a second
//!   per GiB, with the sender stalled on flow control. There the writer keeps
//!   [`SEGMENT`] reserved ahead of itself instead ([`Reservation::ahead_of`]), which
//!   costs no more than the writes allocating the pages themselves.
//!
//! Either way, a segment that does not fit is a [`io::ErrorKind::StorageFull`] error
//! before any byte of it is written. A file system without `fallocate` is not an error:
//! the writes allocate as they go.

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

/// Reserved before the first write (a small file is reserved whole, at once).
pub const FIRST_SEGMENT: u64 = 8 << 20;
/// A new file up to this size is not reserved at all: it is written in one write or a
/// few, which report a full disk as early as a reservation would (and a reservation,
/// then the writes filling it, cost more than the writes alone).
pub const UNRESERVED: u64 = 256 << 10;
/// Reserved ahead of the writer when the file system allocates page by page.
pub const SEGMENT: u64 = 16 << 20;
/// The longest the rest of a file may be expected to take to be reserved at once, before
/// its first write.
pub const FAST: Duration = Duration::from_millis(1);

/// The space of a file being received, reserved ahead of its writer.
#[derive(Debug)]
pub struct Reservation {
    file: Option<File>,
    /// Reserved up to here.
    reserved: u64,
    /// The end of the file.
    to: u64,
}

fn reserve(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let call =
        || rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, from, to - from);
    let mut result = call();
    // tmpfs stops a long reservation when a signal arrives: go on.
    while result == Err(rustix::io::Errno::INTR) {
        result = call();
    }
    match result {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::NOSPC) => Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "receiver storage full: no room for the rest of the file",
        )),
        // Not supported, or failing otherwise: the writes allocate as they go (and report
        // their own errors).
        Err(_) => Ok(false),
    }
}

impl Reservation {
    /// Reserves bytes `from..to` of `file`: the first [`FIRST_SEGMENT`] now, and the rest
    /// now as well where that was fast; otherwise the rest is reserved by
    /// [`Self::ahead_of`] as the writes go. An error of kind `StorageFull` if it does not
    /// fit.
    pub fn start(file: &File, from: u64, to: u64) -> io::Result<Self> {
        let done = Self {
            file: None,
            reserved: to,
            to,
        };
        if from >= to {
            return Ok(done);
        }
        let first_end = to.min(from.saturating_add(FIRST_SEGMENT));
        let began = Instant::now();
        if !reserve(file, from, first_end)? || first_end == to {
            return Ok(done);
        }
        // At the rate the first segment went, would the rest take less than FAST? Extents
        // are reserved in about the same time whatever their size, so this errs towards
        // reserving as the writes go, never towards holding up the first write.
        let rest = (to - first_end) as f64 / (first_end - from) as f64;
        if began.elapsed().as_secs_f64() * rest < FAST.as_secs_f64() {
            reserve(file, first_end, to)?;
            return Ok(done);
        }
        Ok(Self {
            // Without a second handle the writes allocate as they go.
            file: file.try_clone().ok(),
            reserved: first_end,
            to,
        })
    }

    /// Called by the writer before writing at `offset`: keeps at least [`SEGMENT`]
    /// reserved ahead of it. An error of kind `StorageFull` if the storage cannot hold
    /// the next segment.
    pub fn ahead_of(&mut self, offset: u64) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let want = self.to.min(offset.saturating_add(SEGMENT));
        if want <= self.reserved {
            return Ok(());
        }
        // From the writer's position: the file system may count a range it is asked for
        // in full even where parts of it are written already (tmpfs does).
        let from = self.reserved.max(offset);
        let end = self.to.min(from.saturating_add(SEGMENT));
        if reserve(file, from, end)? {
            self.reserved = end;
            if end == self.to {
                self.file = None;
            }
        } else {
            self.file = None;
        }
        Ok(())
    }

    /// Reserved up to this offset so far.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_whole_range_is_reserved_as_the_writer_moves_and_the_size_kept() {
        let d = tempfile::tempdir().unwrap();
        let f = File::create(d.path().join("f")).unwrap();
        let size = FIRST_SEGMENT + 2 * SEGMENT + 12_345;
        let mut r = Reservation::start(&f, 0, size).unwrap();
        assert!(r.reserved() >= FIRST_SEGMENT);
        let mut at = 0;
        while at < size {
            r.ahead_of(at).unwrap();
            assert!(
                r.reserved() >= size.min(at + SEGMENT) || r.file.is_none(),
                "{at}: {}",
                r.reserved()
            );
            at += 256 << 10;
        }
        let m = f.metadata().unwrap();
        assert_eq!(m.len(), 0, "the size is kept");
        // Where the file system reserves at all, all of it is reserved.
        if m.blocks() > 0 {
            assert!(m.blocks() * 512 >= size, "{} blocks", m.blocks());
        }
    }

    #[test]
    fn an_empty_rest_reserves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let f = File::create(d.path().join("f")).unwrap();
        let mut r = Reservation::start(&f, 100, 100).unwrap();
        r.ahead_of(100).unwrap();
        assert_eq!(f.metadata().unwrap().blocks(), 0);
    }
}
