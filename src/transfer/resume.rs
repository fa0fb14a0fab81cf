//! Resuming interrupted transfers.
//!
//! The receiver keeps, next to each `.<name>.part`, a sidecar `.<name>.part.resume`
//! (mode 0600, replaced atomically) that binds the partial file to the sender's public
//! key, the relative path, the size and mtime from the offer, the chunk size, and the
//! number of chunks known to be on disk (fsynced before the sidecar says so). When the
//! same sender offers the same file again, the receiver re-hashes that prefix and offers
//! to continue after it; the sender hashes the same prefix of its own file and continues
//! only if the hashes agree (otherwise it starts the file over). Both bind the resume
//! point and the prefix hash into the file key, and the whole file's BLAKE3 is checked in
//! the receipt as always.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::crypto::chunk_hash::{TreeHash, chunk_digest};
use crate::crypto::identity::PublicKey;
use crate::crypto::stream::{ChunkLayout, ChunkSize};
use crate::transfer::paths::RelPath;
use crate::transfer::protocol::Entry;

/// Sidecar schema version.
pub const SIDECAR_VERSION: u32 = 1;
/// Largest sidecar read.
const MAX_SIDECAR: u64 = 16 << 10;
/// A checkpoint (fsync, then sidecar) after at least this many bytes...
pub const CHECKPOINT_BYTES: u64 = 8 << 20;
/// ...or this much time, whichever comes first.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// What the receiver records about a partial file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// Schema version.
    pub v: u32,
    /// The sender's public key (`cpk1...`).
    pub sender: String,
    /// The relative path offered.
    pub path: String,
    /// The size offered.
    pub size: u64,
    /// The mtime offered.
    pub mtime: i64,
    /// The chunk size of the transfer.
    pub chunk_size: u32,
    /// Chunks on disk (fsynced).
    pub durable_chunks: u64,
}

impl Sidecar {
    /// A sidecar for a file just started.
    pub fn new(sender: &PublicKey, rel: &RelPath, entry: &Entry, chunk: ChunkSize) -> Self {
        Sidecar {
            v: SIDECAR_VERSION,
            sender: sender.to_string(),
            path: rel.as_str().to_string(),
            size: entry.size,
            mtime: entry.mtime,
            chunk_size: chunk.get(),
            durable_chunks: 0,
        }
    }

    /// The sidecar's path for a `.part` path.
    pub fn path_for(part: &Path) -> PathBuf {
        let mut s = part.as_os_str().to_owned();
        s.push(".resume");
        PathBuf::from(s)
    }

    /// Reads a sidecar (never through a symlink); `None` if absent or unreadable.
    pub fn load(path: &Path) -> Option<Self> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .ok()?;
        if f.metadata().ok()?.len() > MAX_SIDECAR {
            return None;
        }
        let mut text = String::new();
        f.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the sidecar atomically (mode 0600).
    pub fn store(&self, path: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        crate::fsutil::write_atomic(path, &bytes, 0o600)
    }

    /// Whether it describes this offer of this file from this sender.
    pub fn matches(
        &self,
        sender: &PublicKey,
        rel: &RelPath,
        entry: &Entry,
        chunk: ChunkSize,
    ) -> bool {
        self.v == SIDECAR_VERSION
            && self.sender == sender.to_string()
            && self.path == rel.as_str()
            && self.size == entry.size
            && self.mtime == entry.mtime
            && self.chunk_size == chunk.get()
    }
}

/// BLAKE3 of the first `chunks` chunks of `file` as one byte string, and the file-hash
/// state holding those chunks' digests (to continue the whole-file hash after them).
pub fn hash_prefix(
    file: &File,
    layout: &ChunkLayout,
    chunks: u64,
) -> io::Result<([u8; 32], TreeHash)> {
    let mut flat = blake3::Hasher::new();
    let mut tree = TreeHash::new(layout);
    let chunk = u64::from(layout.chunk_size().get());
    let mut buf = vec![0u8; usize::try_from(chunk).map_err(io::Error::other)?];
    for i in 0..chunks {
        let b = &mut buf[..layout.plaintext_len(i)];
        file.read_exact_at(b, layout.offset(i))?;
        flat.update(b);
        tree.push(chunk_digest(layout, i, b))
            .map_err(io::Error::other)?;
    }
    Ok((*flat.finalize().as_bytes(), tree))
}

/// Records progress of a file being received: after every [`CHECKPOINT_BYTES`] or
/// [`CHECKPOINT_INTERVAL`], fsyncs the data and then updates the sidecar; on drop (the
/// transfer ended, well or not) records the chunks written so far the same way.
pub struct Checkpoint {
    file: File,
    sidecar_path: PathBuf,
    sidecar: Sidecar,
    written: u64,
    since: u64,
    last: Instant,
}

impl Checkpoint {
    /// Starts recording for `file` (a handle of the `.part`), whose first `first` chunks
    /// are on disk already.
    pub fn new(
        file: File,
        sidecar_path: PathBuf,
        mut sidecar: Sidecar,
        first: u64,
    ) -> io::Result<Self> {
        sidecar.durable_chunks = first;
        sidecar.store(&sidecar_path)?;
        Ok(Checkpoint {
            file,
            sidecar_path,
            sidecar,
            written: first,
            since: 0,
            last: Instant::now(),
        })
    }

    /// Chunk `index` of `len` bytes was written.
    pub fn wrote(&mut self, index: u64, len: u64) -> io::Result<()> {
        self.written = index + 1;
        self.since += len;
        if self.since >= CHECKPOINT_BYTES || self.last.elapsed() >= CHECKPOINT_INTERVAL {
            self.save()?;
        }
        Ok(())
    }

    fn save(&mut self) -> io::Result<()> {
        if self.written == self.sidecar.durable_chunks {
            return Ok(());
        }
        self.file.sync_data()?;
        self.sidecar.durable_chunks = self.written;
        self.sidecar.store(&self.sidecar_path)?;
        self.since = 0;
        self.last = Instant::now();
        Ok(())
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        let _ = self.save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            path: "a/b.bin".into(),
            size: 100_000,
            mode: 0o644,
            mtime: 42,
        }
    }

    #[test]
    fn sidecar_round_trip_and_matching() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::crypto::identity::Identity::generate()
            .unwrap()
            .public();
        let other = crate::crypto::identity::Identity::generate()
            .unwrap()
            .public();
        let rel = RelPath::parse("a/b.bin").unwrap();
        let chunk = ChunkSize::new(16384).unwrap();
        let s = Sidecar::new(&key, &rel, &entry(), chunk);
        let p = Sidecar::path_for(&dir.path().join(".b.bin.part"));
        assert!(p.to_string_lossy().ends_with(".b.bin.part.resume"));
        s.store(&p).unwrap();
        let loaded = Sidecar::load(&p).unwrap();
        assert_eq!(loaded, s);
        assert!(loaded.matches(&key, &rel, &entry(), chunk));
        assert!(!loaded.matches(&other, &rel, &entry(), chunk));
        let changed = Entry {
            mtime: 43,
            ..entry()
        };
        assert!(!loaded.matches(&key, &rel, &changed, chunk));
        assert!(!loaded.matches(&key, &rel, &entry(), ChunkSize::new(32768).unwrap()));
        std::fs::write(&p, b"not json").unwrap();
        assert!(Sidecar::load(&p).is_none());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(
            Sidecar::load(&link).is_none(),
            "a sidecar is never read through a link"
        );
    }

    #[test]
    fn prefix_hash_is_the_hash_of_the_prefix_and_the_tree_continues() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let layout = ChunkLayout::new(data.len() as u64, ChunkSize::new(16384).unwrap());
        let f = File::open(&p).unwrap();
        let (flat, mut tree) = hash_prefix(&f, &layout, 3).unwrap();
        assert_eq!(&flat, blake3::hash(&data[..3 * 16384]).as_bytes());
        for i in 3..layout.count() {
            let start = layout.offset(i) as usize;
            let end = start + layout.plaintext_len(i);
            tree.push(chunk_digest(&layout, i, &data[start..end]))
                .unwrap();
        }
        assert_eq!(tree.finalize().unwrap(), blake3::hash(&data));
    }
}
