//! The whole-file hash of receipts and resumes, in one of two algorithms.
//!
//! A session hashes every file with one algorithm ([`HashAlg`]): BLAKE3 in the default
//! session, SHA-256 in the FIPS session (docs/FIPS.md: BLAKE3 is not an approved hash).
//! Both sides know which from the kind of session, so nothing is negotiated.
//!
//! - [`FileHash`]: a file's hash with its algorithm, as receipts, the audit log and the
//!   agent's queue carry it.
//! - [`Hasher`]: an incremental hash of a byte string (a prefix, a file read once).
//! - [`FileHasher`]: the whole-file hash of a transfer, fed chunk by chunk. BLAKE3's is a
//!   tree ([`crate::crypto::chunk_hash`]) whose chunk digests the cipher workers compute
//!   in parallel; SHA-256 is sequential, so its chunks are fed in order by whoever holds
//!   the plaintext in order (see [`FileHasher::parallel`]).

use std::io::Read;

use aws_lc_rs::digest;

use crate::crypto::chunk_hash::{ChunkDigest, TreeHash, TreeHashError, chunk_digest};
use crate::crypto::stream::ChunkLayout;

/// The hash algorithm of a session's file hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// BLAKE3 (the default session).
    Blake3,
    /// SHA-256, computed in the cryptographic module (the FIPS session).
    Sha256,
}

impl HashAlg {
    /// The algorithm of this build's sessions: SHA-256 in a FIPS build (its only session
    /// is the FIPS session), BLAKE3 in a default build (which has no FIPS session).
    pub fn of_this_build() -> Self {
        if crate::crypto::fips::ENABLED {
            HashAlg::Sha256
        } else {
            HashAlg::Blake3
        }
    }

    /// Its name as the JSON output and the audit log spell it (`blake3`, `sha256`).
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Blake3 => "blake3",
            HashAlg::Sha256 => "sha256",
        }
    }
}

/// A file's 32-byte hash and the algorithm that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileHash {
    alg: HashAlg,
    bytes: [u8; 32],
}

impl FileHash {
    /// A hash of `alg` with these bytes.
    pub fn new(alg: HashAlg, bytes: [u8; 32]) -> Self {
        Self { alg, bytes }
    }

    /// The BLAKE3 hash of `data`.
    pub fn blake3(data: &[u8]) -> Self {
        Self::new(HashAlg::Blake3, *blake3::hash(data).as_bytes())
    }

    /// The hash of `data` with `alg`.
    pub fn of(alg: HashAlg, data: &[u8]) -> Self {
        let mut h = Hasher::new(alg);
        h.update(data);
        h.finalize()
    }

    /// Its algorithm.
    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    /// Its 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Its bytes in lowercase hex.
    pub fn to_hex(&self) -> String {
        crate::audit::record::hex(&self.bytes)
    }

    /// The form stored in the agent's queue and in the audit log's receipt records:
    /// bare hex for BLAKE3 (the form from before SHA-256 existed), `sha256:` and hex
    /// for SHA-256.
    pub fn to_tagged(&self) -> String {
        match self.alg {
            HashAlg::Blake3 => self.to_hex(),
            HashAlg::Sha256 => format!("sha256:{}", self.to_hex()),
        }
    }

    /// Reads the form of [`FileHash::to_tagged`]; `None` for anything else.
    pub fn parse_tagged(s: &str) -> Option<Self> {
        let (alg, hex) = match s.strip_prefix("sha256:") {
            Some(hex) => (HashAlg::Sha256, hex),
            None => (HashAlg::Blake3, s),
        };
        let h = blake3::Hash::from_hex(hex).ok()?;
        Some(Self::new(alg, *h.as_bytes()))
    }
}

impl std::fmt::Display for FileHash {
    /// `blake3 HEX` or `sha256 HEX`, as people read it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.alg.name(), self.to_hex())
    }
}

/// A map of one entry, `{"blake3": HEX}` or `{"sha256": HEX}`: flattened into JSON
/// events, it gives them the field their consumers already read for BLAKE3 and a field of
/// its own name for SHA-256.
impl serde::Serialize for FileHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(self.alg.name(), &self.to_hex())?;
        m.end()
    }
}

/// An incremental hash of a byte string with one [`HashAlg`].
#[derive(Clone)]
pub struct Hasher(Inner);

#[derive(Clone)]
enum Inner {
    Blake3(Box<blake3::Hasher>),
    Sha256(digest::Context),
}

impl Hasher {
    /// An empty hash of `alg`.
    pub fn new(alg: HashAlg) -> Self {
        Self(match alg {
            HashAlg::Blake3 => Inner::Blake3(Box::new(blake3::Hasher::new())),
            HashAlg::Sha256 => Inner::Sha256(digest::Context::new(&digest::SHA256)),
        })
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            Inner::Blake3(h) => {
                h.update(data);
            }
            Inner::Sha256(c) => c.update(data),
        }
    }

    /// Adds everything `reader` yields until its end.
    pub fn update_reader(&mut self, mut reader: impl Read) -> std::io::Result<()> {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The hash of everything added.
    pub fn finalize(self) -> FileHash {
        match self.0 {
            Inner::Blake3(h) => FileHash::new(HashAlg::Blake3, *h.finalize().as_bytes()),
            Inner::Sha256(c) => {
                let d = c.finish();
                let mut bytes = [0u8; 32];
                bytes.copy_from_slice(d.as_ref());
                FileHash::new(HashAlg::Sha256, bytes)
            }
        }
    }
}

/// The whole-file hash of one transfer, fed the file's chunks in order (or, for BLAKE3,
/// their digests from the workers).
#[derive(Clone)]
pub struct FileHasher {
    count: u64,
    pushed: u64,
    state: State,
}

#[derive(Clone)]
enum State {
    Tree(TreeHash),
    Flat(Hasher),
}

impl std::fmt::Debug for FileHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileHasher")
            .field("alg", &self.alg())
            .field("pushed", &self.pushed)
            .field("count", &self.count)
            .finish()
    }
}

impl FileHasher {
    /// The hash of a file with `layout`, before its first chunk.
    pub fn new(alg: HashAlg, layout: &ChunkLayout) -> Self {
        let state = match alg {
            HashAlg::Blake3 => State::Tree(TreeHash::new(layout)),
            HashAlg::Sha256 => State::Flat(Hasher::new(HashAlg::Sha256)),
        };
        Self {
            count: layout.count(),
            pushed: 0,
            state,
        }
    }

    /// Its algorithm.
    pub fn alg(&self) -> HashAlg {
        match self.state {
            State::Tree(_) => HashAlg::Blake3,
            State::Flat(_) => HashAlg::Sha256,
        }
    }

    /// Chunks fed so far.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Whether each chunk's digest can be computed apart, on any thread, and merged in
    /// order ([`FileHasher::push_digest`]); otherwise the plaintext itself must be fed in
    /// order ([`FileHasher::push_chunk`]).
    pub fn parallel(&self) -> bool {
        matches!(self.state, State::Tree(_))
    }

    /// Feeds chunk `index` (the next one) of a file with `layout`.
    pub fn push_chunk(
        &mut self,
        layout: &ChunkLayout,
        index: u64,
        plaintext: &[u8],
    ) -> Result<(), TreeHashError> {
        if index != self.pushed || self.pushed >= self.count {
            return Err(TreeHashError::Shape);
        }
        match &mut self.state {
            State::Tree(t) => t.push(chunk_digest(layout, index, plaintext))?,
            State::Flat(h) => h.update(plaintext),
        }
        self.pushed += 1;
        Ok(())
    }

    /// Merges the next chunk's digest computed apart (BLAKE3 only: a sequential hash has
    /// no such digest, and gets [`TreeHashError::Shape`]).
    pub fn push_digest(&mut self, digest: ChunkDigest) -> Result<(), TreeHashError> {
        match &mut self.state {
            State::Tree(t) => t.push(digest)?,
            State::Flat(_) => return Err(TreeHashError::Shape),
        }
        self.pushed += 1;
        Ok(())
    }

    /// The file's hash once every chunk was fed, `None` before.
    pub fn finalize(&self) -> Option<FileHash> {
        if self.pushed != self.count {
            return None;
        }
        match &self.state {
            State::Tree(t) => t
                .finalize()
                .map(|h| FileHash::new(HashAlg::Blake3, *h.as_bytes())),
            State::Flat(h) => Some(h.clone().finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::stream::ChunkSize;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn fed(alg: HashAlg, bytes: &[u8]) -> FileHash {
        let layout = ChunkLayout::new(bytes.len() as u64, ChunkSize::new(16 << 10).unwrap());
        let mut h = FileHasher::new(alg, &layout);
        for i in 0..layout.count() {
            let start = layout.offset(i) as usize;
            h.push_chunk(&layout, i, &bytes[start..start + layout.plaintext_len(i)])
                .unwrap();
        }
        h.finalize().unwrap()
    }

    /// SHA-256 of "abc" (FIPS 180-4, appendix B.1) and of the empty string.
    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            FileHash::of(HashAlg::Sha256, b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            FileHash::of(HashAlg::Sha256, b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn chunk_by_chunk_equals_the_whole_file_in_both_algorithms() {
        for size in [0, 1, 16 << 10, (16 << 10) + 1, 5 * (16 << 10) + 77] {
            let d = data(size);
            for alg in [HashAlg::Blake3, HashAlg::Sha256] {
                assert_eq!(fed(alg, &d), FileHash::of(alg, &d), "{alg:?} size {size}");
            }
            assert_eq!(
                fed(HashAlg::Blake3, &d).as_bytes(),
                blake3::hash(&d).as_bytes()
            );
        }
    }

    #[test]
    fn chunks_out_of_order_or_too_many_are_refused() {
        let layout = ChunkLayout::new(40 << 10, ChunkSize::new(16 << 10).unwrap());
        for alg in [HashAlg::Blake3, HashAlg::Sha256] {
            let mut h = FileHasher::new(alg, &layout);
            assert_eq!(
                h.push_chunk(&layout, 1, &[0; 16 << 10]),
                Err(TreeHashError::Shape)
            );
            h.push_chunk(&layout, 0, &[0; 16 << 10]).unwrap();
            assert_eq!(h.finalize(), None);
            h.push_chunk(&layout, 1, &[0; 16 << 10]).unwrap();
            h.push_chunk(&layout, 2, &[0; 8 << 10]).unwrap();
            assert!(h.finalize().is_some());
            assert_eq!(h.push_chunk(&layout, 3, &[0; 1]), Err(TreeHashError::Shape));
        }
        let mut sha = FileHasher::new(HashAlg::Sha256, &layout);
        assert_eq!(
            sha.push_digest(ChunkDigest::Subtree([0; 32])),
            Err(TreeHashError::Shape)
        );
    }

    #[test]
    fn tagged_form_round_trips_and_keeps_bare_hex_as_blake3() {
        for alg in [HashAlg::Blake3, HashAlg::Sha256] {
            let h = FileHash::of(alg, b"x");
            assert_eq!(FileHash::parse_tagged(&h.to_tagged()), Some(h));
        }
        let b = FileHash::blake3(b"x");
        assert_eq!(b.to_tagged(), b.to_hex());
        assert!(
            FileHash::of(HashAlg::Sha256, b"x")
                .to_tagged()
                .starts_with("sha256:")
        );
        assert_eq!(FileHash::parse_tagged("sha256:zz"), None);
        assert_eq!(FileHash::parse_tagged("md5:00"), None);
    }
}
