//! Resuming interrupted transfers.
//!
//! The receiver keeps, next to each partial file `.conduit-<random>.part`, a sidecar
//! `.conduit-<hash>.resume` (mode 0600, replaced atomically) whose name is a keyed hash of
//! the sender's public key and the relative path ([`Sidecar::name_for`]): the receiver
//! finds it again from the offer alone, without listing the directory, and a 255-byte
//! final name still fits. It binds the partial file (by its temporary name) to the
//! sender's key, the relative path, the size and mtime from the offer, the chunk size, and
//! the number of chunks known to be on disk (fsynced before the sidecar says so). When
//! the same sender offers the same file again, the receiver checks the sidecar and the
//! partial file it names ([`crate::transfer::dest::private_file`]), re-hashes that prefix
//! and offers to continue after it; the sender hashes the same prefix of its own file and
//! continues only if the hashes agree (otherwise it starts the file over). Both bind the
//! resume point and the prefix hash into the file key, and the whole file's BLAKE3 is
//! checked in the receipt as always.
//!
//! The sidecar is first written at the first checkpoint ([`Checkpoint`]): a file that
//! ends before it (most small files) costs no sidecar at all.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, OFlags};
use serde::{Deserialize, Serialize};

use crate::crypto::file_hash::{FileHasher, HashAlg, Hasher};
use crate::crypto::identity::PublicKey;
use crate::crypto::stream::{ChunkLayout, ChunkSize};
use crate::fsutil::open_beneath;
use crate::transfer::dest::{TEMP_PREFIX, private_file, temp_name};
use crate::transfer::paths::RelPath;
use crate::transfer::protocol::Entry;

/// Sidecar schema version.
pub const SIDECAR_VERSION: u32 = 2;
/// Suffix of a sidecar's name.
pub const SIDECAR_SUFFIX: &str = ".resume";
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
    /// The partial file's temporary name, in the same directory.
    pub part: String,
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
    /// A sidecar for a file just started in the temporary file `part`.
    pub fn new(
        sender: &PublicKey,
        rel: &RelPath,
        entry: &Entry,
        chunk: ChunkSize,
        part: &str,
    ) -> Self {
        Sidecar {
            v: SIDECAR_VERSION,
            sender: sender.to_string(),
            path: rel.as_str().to_string(),
            part: part.to_string(),
            size: entry.size,
            mtime: entry.mtime,
            chunk_size: chunk.get(),
            durable_chunks: 0,
        }
    }

    /// The sidecar's name for `rel` from `sender`, in `rel`'s directory:
    /// `.conduit-<32 hex>.resume`, the hex being the first 16 bytes of BLAKE3 (in
    /// derive-key mode, context `phi-conduit v1 sidecar name`) of the key's 32 bytes,
    /// the path's length (u64 big-endian) and the path.
    pub fn name_for(sender: &PublicKey, rel: &RelPath) -> String {
        let mut h = blake3::Hasher::new_derive_key("phi-conduit v1 sidecar name");
        h.update(sender.as_bytes());
        h.update(&(rel.as_str().len() as u64).to_be_bytes());
        h.update(rel.as_str().as_bytes());
        let hex = crate::transfer::dest::hex(&h.finalize().as_bytes()[..16]);
        format!("{TEMP_PREFIX}{hex}{SIDECAR_SUFFIX}")
    }

    /// Reads the sidecar `name` in `dir`: never through a link, and only if it passes
    /// [`private_file`]. `Ok(None)` if absent; `Err(why)` if there but not trusted or not
    /// readable.
    pub fn load_at(dir: impl AsFd, name: &str) -> Result<Option<Self>, String> {
        let fd = match open_beneath(dir, name, OFlags::RDONLY | OFlags::NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => return Err("is a symlink".into()),
            Err(e) => return Err(format!("cannot be opened ({e})")),
        };
        let st = private_file(&fd).map_err(str::to_string)?;
        if u64::try_from(st.st_size).unwrap_or(u64::MAX) > MAX_SIDECAR {
            return Err("is too large".into());
        }
        let mut text = String::new();
        File::from(fd)
            .take(MAX_SIDECAR)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot be read ({e})"))?;
        Self::parse(&text)
            .map(Some)
            .ok_or_else(|| "is not a resume record of this version".into())
    }

    /// Decodes a sidecar's text: `None` if it is longer than a sidecar can be, or not a
    /// sidecar of this schema (unknown fields are refused). Fuzzed (`fuzz/`, target
    /// `sidecar`).
    pub fn parse(text: &str) -> Option<Self> {
        if u64::try_from(text.len()).unwrap_or(u64::MAX) > MAX_SIDECAR {
            return None;
        }
        serde_json::from_str(text).ok()
    }

    /// Writes the sidecar `name` in `dir` atomically (mode 0600): a new temporary file,
    /// fsync, rename over `name`, fsync of the directory. The rename replaces whatever
    /// entry had that name without opening it.
    pub fn store_at(&self, dir: impl AsFd, name: &str) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        let dir = dir.as_fd();
        let tmp = temp_name(".tmp")?;
        let fd = open_beneath(
            dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            0o600,
        )?;
        let written = (|| {
            let mut f = File::from(fd);
            f.write_all(&bytes)?;
            f.sync_all()?;
            rustix::fs::renameat(dir, tmp.as_str(), dir, name)?;
            rustix::fs::fsync(dir)?;
            Ok(())
        })();
        if written.is_err() {
            let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
        }
        written
    }

    /// Removes the sidecar `name` in `dir` if it is this receiver's and names the
    /// temporary file `part` (another transfer may have replaced it meanwhile).
    pub fn remove_if_for(dir: impl AsFd, name: &str, part: &str) {
        let dir = dir.as_fd();
        if let Ok(Some(s)) = Self::load_at(dir, name) {
            if s.part == part {
                let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
            }
        }
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

/// The hash (`alg`) of the first `chunks` chunks of `file` as one byte string, and the
/// file-hash state holding those chunks (to continue the whole-file hash after them).
pub fn hash_prefix(
    file: &File,
    layout: &ChunkLayout,
    chunks: u64,
    alg: HashAlg,
) -> io::Result<([u8; 32], FileHasher)> {
    let mut flat = Hasher::new(alg);
    let mut tree = FileHasher::new(alg, layout);
    let chunk = u64::from(layout.chunk_size().get());
    let mut buf = vec![0u8; usize::try_from(chunk).map_err(io::Error::other)?];
    for i in 0..chunks {
        let b = &mut buf[..layout.plaintext_len(i)];
        file.read_exact_at(b, layout.offset(i))?;
        flat.update(b);
        tree.push_chunk(layout, i, b).map_err(io::Error::other)?;
    }
    Ok((*flat.finalize().as_bytes(), tree))
}

/// Records progress of a file being received: after every [`CHECKPOINT_BYTES`] or
/// [`CHECKPOINT_INTERVAL`], fsyncs the data and then writes the sidecar; on drop (the
/// transfer ended before the last chunk) records the chunks written so far the same way.
/// Once the last chunk is written nothing more is recorded: the file is about to be
/// verified and named (a small file never gets a sidecar).
pub struct Checkpoint {
    file: Arc<File>,
    /// Set before the sidecar is first written (see [`Checkpoint::noting_stored`]).
    stored: Option<Arc<std::sync::atomic::AtomicBool>>,
    dir: Arc<std::os::fd::OwnedFd>,
    name: String,
    sidecar: Sidecar,
    written: u64,
    /// The file's chunk count.
    chunks: u64,
    since: u64,
    last: Instant,
}

impl Checkpoint {
    /// Starts recording for `file` (a handle of the partial file), whose first `first`
    /// chunks are on disk already (and recorded in the sidecar `name` in `dir` when not
    /// 0). Nothing is written until the first checkpoint.
    pub fn new(
        file: Arc<File>,
        dir: Arc<std::os::fd::OwnedFd>,
        name: String,
        mut sidecar: Sidecar,
        first: u64,
    ) -> Self {
        sidecar.durable_chunks = first;
        let chunks = sidecar
            .size
            .div_ceil(u64::from(sidecar.chunk_size.max(1)))
            .max(1);
        Checkpoint {
            chunks,
            file,
            stored: None,
            dir,
            name,
            sidecar,
            written: first,
            since: 0,
            last: Instant::now(),
        }
    }

    /// Sets `stored` before the sidecar is first written: the file's owner then knows a
    /// sidecar may hold its record and removes it at the end (see
    /// [`crate::transfer::dest::PartFile`]).
    pub fn noting_stored(mut self, stored: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.stored = Some(stored);
        self
    }

    /// Chunk `index` of `len` bytes was written.
    pub fn wrote(&mut self, index: u64, len: u64) -> io::Result<()> {
        self.written = index + 1;
        self.since += len;
        if self.written >= self.chunks {
            return Ok(());
        }
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
        if let Some(stored) = &self.stored {
            stored.store(true, std::sync::atomic::Ordering::Release);
        }
        self.sidecar.durable_chunks = self.written;
        self.sidecar.store_at(self.dir.as_fd(), &self.name)?;
        self.since = 0;
        self.last = Instant::now();
        Ok(())
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        if self.written < self.chunks {
            let _ = self.save();
        }
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
        let s = Sidecar::new(&key, &rel, &entry(), chunk, ".conduit-x.part");
        let name = Sidecar::name_for(&key, &rel);
        assert!(name.starts_with(".conduit-") && name.ends_with(".resume"));
        assert_eq!(name.len(), ".conduit-.resume".len() + 32);
        assert_ne!(name, Sidecar::name_for(&other, &rel));
        let d = File::open(dir.path()).unwrap();
        s.store_at(&d, &name).unwrap();
        let p = dir.path().join(&name);
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&p).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let loaded = Sidecar::load_at(&d, &name).unwrap().unwrap();
        assert_eq!(loaded, s);
        assert!(loaded.matches(&key, &rel, &entry(), chunk));
        assert!(!loaded.matches(&other, &rel, &entry(), chunk));
        let changed = Entry {
            mtime: 43,
            ..entry()
        };
        assert!(!loaded.matches(&key, &rel, &changed, chunk));
        assert!(!loaded.matches(&key, &rel, &entry(), ChunkSize::new(32768).unwrap()));
        assert_eq!(Sidecar::load_at(&d, "absent").unwrap(), None);
        let link = "link";
        std::os::unix::fs::symlink(&p, dir.path().join(link)).unwrap();
        assert!(
            Sidecar::load_at(&d, link).is_err(),
            "a sidecar is never read through a link"
        );
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        assert!(
            Sidecar::load_at(&d, &name).is_err(),
            "only a 0600 sidecar is read"
        );
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        std::fs::write(&p, b"not json").unwrap();
        assert!(Sidecar::load_at(&d, &name).is_err());
    }

    #[test]
    fn sidecar_text_parses_only_as_this_schema_and_within_the_size_limit() {
        let key = crate::crypto::identity::Identity::generate()
            .unwrap()
            .public();
        let rel = RelPath::parse("a/b.bin").unwrap();
        let s = Sidecar::new(&key, &rel, &entry(), ChunkSize::new(16384).unwrap(), "p");
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(Sidecar::parse(&text), Some(s.clone()));
        let extra = text.replacen('{', "{\"x\":1,", 1);
        assert_eq!(Sidecar::parse(&extra), None, "unknown fields are refused");
        let big = Sidecar {
            path: "a".repeat(MAX_SIDECAR as usize),
            ..s
        };
        assert_eq!(
            Sidecar::parse(&serde_json::to_string(&big).unwrap()),
            None,
            "longer than a sidecar can be"
        );
        assert_eq!(Sidecar::parse(""), None);
    }

    #[test]
    fn a_checkpoint_records_an_interrupted_file_and_nothing_for_a_complete_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = Arc::new(std::os::fd::OwnedFd::from(File::open(dir.path()).unwrap()));
        let key = crate::crypto::identity::Identity::generate()
            .unwrap()
            .public();
        let rel = RelPath::parse("a/b.bin").unwrap();
        let chunk = ChunkSize::new(16384).unwrap();
        let file = File::create(dir.path().join("p")).unwrap();
        let sidecar = Sidecar::new(&key, &rel, &entry(), chunk, "p");
        // 100,000 bytes: 7 chunks. Two written, then the transfer ends.
        let mut c = Checkpoint::new(
            Arc::new(file.try_clone().unwrap()),
            Arc::clone(&d),
            "s".into(),
            sidecar.clone(),
            0,
        );
        c.wrote(0, 16384).unwrap();
        c.wrote(1, 16384).unwrap();
        assert!(
            !dir.path().join("s").exists(),
            "nothing before the first checkpoint"
        );
        drop(c);
        let got = Sidecar::load_at(&*d, "s").unwrap().unwrap();
        assert_eq!(got.durable_chunks, 2);
        // Every chunk written: nothing recorded.
        let mut c = Checkpoint::new(Arc::new(file), Arc::clone(&d), "t".into(), sidecar, 0);
        for i in 0..7 {
            c.wrote(i, 16384).unwrap();
        }
        drop(c);
        assert!(!dir.path().join("t").exists());
    }

    #[test]
    fn prefix_hash_is_the_hash_of_the_prefix_and_the_tree_continues() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let layout = ChunkLayout::new(data.len() as u64, ChunkSize::new(16384).unwrap());
        let f = File::open(&p).unwrap();
        for alg in [HashAlg::Blake3, HashAlg::Sha256] {
            let (flat, mut tree) = hash_prefix(&f, &layout, 3, alg).unwrap();
            let prefix = crate::crypto::file_hash::FileHash::of(alg, &data[..3 * 16384]);
            assert_eq!(&flat, prefix.as_bytes());
            for i in 3..layout.count() {
                let start = layout.offset(i) as usize;
                let end = start + layout.plaintext_len(i);
                tree.push_chunk(&layout, i, &data[start..end]).unwrap();
            }
            let whole = crate::crypto::file_hash::FileHash::of(alg, &data);
            assert_eq!(tree.finalize().unwrap(), whole);
        }
    }
}
