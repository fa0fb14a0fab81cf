//! The STREAM construction: per-file keys, chunk nonces, in-place seal and open.
//!
//! A file of `size` bytes is cut into `max(1, ceil(size / chunk_size))` chunks. Every
//! chunk is full except the last; an empty file is one empty last chunk. Chunk `i` is
//! sealed with ChaCha20-Poly1305 under the file's key and the nonce
//! `counter(i) || last_flag`: an 11-byte big-endian chunk counter followed by one byte,
//! `0x01` for the last chunk and `0x00` otherwise (the nonce layout of age's STREAM). A
//! sealed chunk is the ciphertext followed by its 16-byte tag; there is no length field
//! on the wire, because both sides know every chunk's length from the file size. (The
//! suite is that of the session: ChaCha20-Poly1305 or AES-256-GCM.)
//!
//! The suite [`Suite::Aes256GcmRandomIv`] differs in one place: the module generates a
//! random 96-bit IV for every chunk, the sealed chunk is `ciphertext || tag || IV`
//! (28 bytes of overhead), and the 12 bytes `counter(i) || last_flag` are the
//! associated data instead of the nonce, so the position binding is the same.
//!
//! Chunk `i` only opens at position `i`, and the last chunk only opens as the last one,
//! so reordering, dropping, truncating, extending and splicing chunks across files or
//! transfers all fail. The counter always comes from the chunk's position, never from
//! the wire.
//!
//! Keys (normative text in `docs/PROTOCOL.md`, "STREAM"):
//!
//! ```text
//! prk      = HKDF-Extract(salt = handshake hash, ikm = session secret)
//! file key = HKDF-Expand(prk, "phi-conduit v1 file" || transfer id (16) || file index (u64 BE)
//!                             || chunk size (u32 BE) || resume-from chunk (u64 BE)
//!                             || resume prefix hash (32), 32)
//! ```
//!
//! [`Sealer`] and [`Opener`] are sans-IO state machines over caller-owned buffers;
//! [`crate::crypto::pipeline`] runs the same primitive on several threads.
//!
//! ```
//! use phi_conduit::crypto::stream::{
//!     CHUNK_OVERHEAD, ChunkLayout, ChunkSize, FileKeyContext, Opener, Sealer, StreamError,
//!     TransferKey,
//! };
//!
//! let chunk = ChunkSize::new(16 * 1024)?;
//! let keys = TransferKey::derive(b"noise handshake hash", &[7u8; 32]);
//! let key = keys.file_key(&FileKeyContext::fresh([1u8; 16], 0, chunk));
//! let layout = ChunkLayout::new(5, chunk); // a 5-byte file: one (last) chunk
//!
//! // Seal in place: plaintext followed by room for the tag.
//! let mut wire = b"hello".to_vec();
//! wire.extend_from_slice(&[0; CHUNK_OVERHEAD]);
//! Sealer::new(&key, layout).finish(&mut wire)?;
//!
//! // Open in place at the position the receiver expects.
//! let mut opener = Opener::new(&key, layout);
//! assert_eq!(opener.open_next(&mut wire.clone())?, b"hello");
//! opener.finish()?;
//!
//! // A flipped bit fails authentication.
//! wire[0] ^= 1;
//! let mut opener = Opener::new(&key, layout);
//! assert_eq!(opener.open_next(&mut wire), Err(StreamError::Tampered { index: 0 }));
//! # Ok::<(), StreamError>(())
//! ```

use aws_lc_rs::hkdf;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::aead::{AeadKey, NONCE_LEN, RandomIvKey, TAG_LEN};
use crate::crypto::suite::{Suite, UsageLimits};

/// Length of the session secret the sender chooses for each session.
pub const SESSION_SECRET_LEN: usize = 32;
/// Length of a transfer id.
pub const TRANSFER_ID_LEN: usize = 16;
/// Length of a resume prefix hash (BLAKE3).
pub const PREFIX_HASH_LEN: usize = 32;
/// Bytes a sealed chunk adds to its plaintext in the suites with position nonces (the
/// tag); see [`Suite::chunk_overhead`] for each suite's.
pub const CHUNK_OVERHEAD: usize = TAG_LEN;
/// The most bytes any suite adds to a chunk (tag and IV of
/// [`Suite::Aes256GcmRandomIv`]).
pub const MAX_CHUNK_OVERHEAD: usize = TAG_LEN + NONCE_LEN;
/// Length of the chunk counter in the nonce.
pub const COUNTER_LEN: usize = NONCE_LEN - 1;
/// HKDF info label of per-file keys.
pub const FILE_KEY_LABEL: &[u8] = b"phi-conduit v1 file";
/// The allowed chunk sizes: powers of two from 16 KiB to 4 MiB.
pub const ALLOWED_CHUNK_SIZES: [u32; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];
/// The default chunk size, chosen with `benches/cipher.rs` (see `docs/BENCHMARKS.md`).
pub const DEFAULT_CHUNK_SIZE: ChunkSize = ChunkSize(256 << 10);
/// The largest sealed chunk a receiver ever has to buffer.
pub const MAX_SEALED_CHUNK: usize = (4 << 20) + MAX_CHUNK_OVERHEAD;

const LAST_FLAG: u8 = 0x01;
const NOT_LAST_FLAG: u8 = 0x00;

/// Errors of the STREAM layer. Each failure mode has its own variant.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// A chunk did not authenticate at the position where it was expected: its bytes were
    /// changed, it was moved, it came from another file or session, or it carries the
    /// wrong last-chunk flag.
    #[error("chunk {index} failed authentication (tampered, reordered or from another stream)")]
    Tampered {
        /// Position at which the chunk was opened.
        index: u64,
    },
    /// The stream ended before its last chunk.
    #[error("stream truncated: ended after {received} of {expected} chunks")]
    Truncated {
        /// Chunks received and opened.
        received: u64,
        /// Chunks the file size implies.
        expected: u64,
    },
    /// More data arrived after the last chunk.
    #[error("data after the last chunk")]
    DataAfterLast,
    /// The chunk counter would overflow.
    #[error("chunk counter overflow")]
    CounterOverflow,
    /// A chunk of the wrong length: a short non-final chunk, an over-long chunk, or a
    /// buffer of the wrong size handed in by the caller.
    #[error("chunk {index} has length {actual}, expected {expected}")]
    ChunkLength {
        /// Position of the chunk.
        index: u64,
        /// Sealed length the layout requires.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// A chunk size outside [`ALLOWED_CHUNK_SIZES`].
    #[error("chunk size {0} is not allowed (allowed: powers of two from 16 KiB to 4 MiB)")]
    ChunkSizeNotAllowed(u64),
    /// `seal_next` was called for the last chunk, which only [`Sealer::finish`] seals.
    #[error("the last chunk must be sealed with finish()")]
    LastChunkNeedsFinish,
    /// The chunk lies beyond what one key of the suite may seal (see
    /// [`crate::crypto::suite::UsageLimits`]); nothing was sealed or opened.
    #[error(
        "chunk {index} exceeds the usage limit of one {suite} key \
         (at most {max_bytes} bytes in {max_chunks} chunks); use chacha20-poly1305 for this file"
    )]
    KeyUsageLimit {
        /// Position of the refused chunk.
        index: u64,
        /// The key's suite.
        suite: Suite,
        /// The suite's byte limit per key.
        max_bytes: u64,
        /// The suite's chunk limit per key.
        max_chunks: u64,
    },
    /// The cryptographic module could not generate a chunk's IV; nothing was sealed.
    #[error("chunk {index}: {source}")]
    Iv {
        /// Position of the chunk.
        index: u64,
        /// What failed.
        source: crate::crypto::aead::IvError,
    },
}

impl StreamError {
    /// True when the error means the data did not verify (exit code 4), as opposed to a
    /// usage error.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            Self::Tampered { .. }
                | Self::Truncated { .. }
                | Self::DataAfterLast
                | Self::ChunkLength { .. }
        )
    }
}

/// A chunk size from the allowed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkSize(u32);

impl ChunkSize {
    /// Validates a chunk size against [`ALLOWED_CHUNK_SIZES`].
    pub fn new(bytes: u64) -> Result<Self, StreamError> {
        ALLOWED_CHUNK_SIZES
            .iter()
            .find(|&&s| u64::from(s) == bytes)
            .map(|&s| Self(s))
            .ok_or(StreamError::ChunkSizeNotAllowed(bytes))
    }

    /// The size in bytes.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The size in bytes, as `usize`.
    pub fn bytes(self) -> usize {
        self.0 as usize
    }
}

impl Default for ChunkSize {
    fn default() -> Self {
        DEFAULT_CHUNK_SIZE
    }
}

/// How a file of known size is cut into chunks, and how long each is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    size: u64,
    chunk: ChunkSize,
    count: u64,
    overhead: usize,
}

impl ChunkLayout {
    /// The layout of a file of `size` bytes, sealed with a suite whose chunks carry
    /// [`CHUNK_OVERHEAD`] bytes (ChaCha20-Poly1305, AES-256-GCM).
    pub fn new(size: u64, chunk: ChunkSize) -> Self {
        let c = u64::from(chunk.get());
        // size / c + (remainder != 0) cannot overflow; chunk sizes are >= 16 KiB, so
        // count < 2^50 and every index fits the 88-bit counter.
        let count = (size / c + u64::from(size % c != 0)).max(1);
        Self {
            size,
            chunk,
            count,
            overhead: CHUNK_OVERHEAD,
        }
    }

    /// The layout of a file of `size` bytes sealed with `suite`.
    pub fn for_suite(size: u64, chunk: ChunkSize, suite: Suite) -> Self {
        Self::new(size, chunk).sealed_with(suite)
    }

    /// The same layout, sealed with `suite`.
    pub fn sealed_with(self, suite: Suite) -> Self {
        Self {
            overhead: suite.chunk_overhead(),
            ..self
        }
    }

    /// Bytes each sealed chunk adds to its plaintext.
    pub fn overhead(&self) -> usize {
        self.overhead
    }

    /// Sealed length of a whole (not last) chunk: the size of a pipeline buffer.
    pub fn sealed_chunk_len(&self) -> usize {
        self.chunk.bytes() + self.overhead
    }

    /// File size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chunk size.
    pub fn chunk_size(&self) -> ChunkSize {
        self.chunk
    }

    /// Number of chunks, at least 1.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Index of the last chunk.
    pub fn last_index(&self) -> u64 {
        self.count - 1
    }

    /// True for the last chunk.
    pub fn is_last(&self, index: u64) -> bool {
        index == self.last_index()
    }

    /// Plaintext length of chunk `index` (0 for an index past the end).
    pub fn plaintext_len(&self, index: u64) -> usize {
        let c = u64::from(self.chunk.get());
        match index.cmp(&self.last_index()) {
            std::cmp::Ordering::Less => c as usize,
            std::cmp::Ordering::Equal => (self.size - index * c) as usize,
            std::cmp::Ordering::Greater => 0,
        }
    }

    /// Sealed (wire) length of chunk `index`.
    pub fn sealed_len(&self, index: u64) -> usize {
        self.plaintext_len(index) + self.overhead
    }

    /// Byte offset of chunk `index` in the plaintext file.
    pub fn offset(&self, index: u64) -> u64 {
        index.saturating_mul(u64::from(self.chunk.get()))
    }

    /// Total bytes on the wire for the whole file.
    pub fn sealed_total(&self) -> u64 {
        self.size + self.count * self.overhead as u64
    }
}

/// The 12-byte nonce of chunk `index`: 11-byte big-endian counter, then the last flag.
pub fn chunk_nonce(index: u64, last: bool) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[COUNTER_LEN - 8..COUNTER_LEN].copy_from_slice(&index.to_be_bytes());
    nonce[COUNTER_LEN] = if last { LAST_FLAG } else { NOT_LAST_FLAG };
    nonce
}

/// The pseudo-random key of one session, from which every file key is expanded. HKDF
/// runs in the cryptographic module (aws-lc-rs; the FIPS module in a FIPS build), which
/// keeps the PRK and cleanses it when dropped.
pub struct TransferKey {
    prk: hkdf::Prk,
    suite: Suite,
    file_hash: crate::crypto::file_hash::HashAlg,
}

/// 32 bytes of HKDF output.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl TransferKey {
    /// `prk = HKDF-Extract(salt = handshake_hash, ikm = session_secret)`, for file keys
    /// of the ChaCha20-Poly1305 suite (see [`TransferKey::with_suite`]).
    pub fn derive(handshake_hash: &[u8], session_secret: &[u8; SESSION_SECRET_LEN]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, handshake_hash).extract(session_secret);
        Self {
            prk,
            suite: Suite::ChaCha20Poly1305,
            file_hash: crate::crypto::file_hash::HashAlg::Blake3,
        }
    }

    /// The same key schedule for file keys of `suite` (the one the handshake agreed on).
    /// The key bytes do not depend on the suite: the handshake hash, their salt,
    /// already commits to it.
    pub fn with_suite(mut self, suite: Suite) -> Self {
        self.suite = suite;
        self
    }

    /// The suite of the file keys this expands.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The same keys, for a session whose files are hashed with `alg` (BLAKE3 unless
    /// set; SHA-256 in the FIPS session).
    pub fn with_file_hash(mut self, alg: crate::crypto::file_hash::HashAlg) -> Self {
        self.file_hash = alg;
        self
    }

    /// The hash of the session's files (receipts, resume prefixes).
    pub fn file_hash(&self) -> crate::crypto::file_hash::HashAlg {
        self.file_hash
    }

    /// Expands the key of one file (see the module docs for the exact info string).
    pub fn file_key(&self, ctx: &FileKeyContext) -> FileKey {
        let mut key = Zeroizing::new([0u8; 32]);
        let info: [&[u8]; 6] = [
            FILE_KEY_LABEL,
            &ctx.transfer_id,
            &ctx.file_index.to_be_bytes(),
            &ctx.chunk_size.get().to_be_bytes(),
            &ctx.resume_from.to_be_bytes(),
            &ctx.resume_prefix_hash,
        ];
        let filled = self
            .prk
            .expand(&info, Len32)
            .and_then(|okm| okm.fill(key.as_mut_slice()));
        if filled.is_err() {
            unreachable!("32 bytes is a valid HKDF-SHA256 output length");
        }
        FileKey::with_suite(self.suite, &key, ctx.chunk_size)
    }
}

impl std::fmt::Debug for TransferKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransferKey(..)")
    }
}

/// What a file key is bound to besides the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKeyContext {
    /// The transfer id from the offer.
    pub transfer_id: [u8; TRANSFER_ID_LEN],
    /// The file's index in the manifest.
    pub file_index: u64,
    /// The transfer's chunk size.
    pub chunk_size: ChunkSize,
    /// The chunk the transfer resumes from (0 for a fresh transfer).
    pub resume_from: u64,
    /// BLAKE3 of the first `resume_from` chunks of plaintext (BLAKE3 of nothing for 0).
    pub resume_prefix_hash: [u8; PREFIX_HASH_LEN],
}

impl FileKeyContext {
    /// The context of a file sent from its start.
    pub fn fresh(
        transfer_id: [u8; TRANSFER_ID_LEN],
        file_index: u64,
        chunk_size: ChunkSize,
    ) -> Self {
        Self {
            transfer_id,
            file_index,
            chunk_size,
            resume_from: 0,
            resume_prefix_hash: *blake3::hash(&[]).as_bytes(),
        }
    }
}

/// The key of one file. Zeroized on drop (the project's copy; see [`crate::crypto::aead`]).
pub struct FileKey {
    bytes: Zeroizing<[u8; 32]>,
    suite: Suite,
    aead: ChunkCipher,
    /// Chunk positions this key may seal or open (`None`: no limit below the counter).
    positions: Option<u64>,
    limits: UsageLimits,
}

impl FileKey {
    /// Wraps raw ChaCha20-Poly1305 key bytes (used by known-answer tests and benches).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self::with_suite(Suite::ChaCha20Poly1305, bytes, ChunkSize(4 << 20))
    }

    /// Wraps raw key bytes of `suite` for chunks of `chunk_size`, under the suite's
    /// usage limits.
    pub fn with_suite(suite: Suite, bytes: &[u8; 32], chunk_size: ChunkSize) -> Self {
        Self::with_limits(suite, bytes, chunk_size, suite.limits())
    }

    /// As [`FileKey::with_suite`] under explicit `limits` (tests lower them to watch the
    /// limit bite).
    pub fn with_limits(
        suite: Suite,
        bytes: &[u8; 32],
        chunk_size: ChunkSize,
        limits: UsageLimits,
    ) -> Self {
        let unlimited = limits.max_bytes == u64::MAX && limits.max_chunks == u64::MAX;
        let aead = match suite {
            Suite::Aes256GcmRandomIv => ChunkCipher::RandomIv(RandomIvKey::new(bytes)),
            Suite::ChaCha20Poly1305 | Suite::Aes256Gcm => {
                ChunkCipher::Position(AeadKey::with_suite(suite, bytes))
            }
        };
        Self {
            bytes: Zeroizing::new(*bytes),
            suite,
            aead,
            positions: (!unlimited).then(|| limits.chunk_positions(u64::from(chunk_size.get()))),
            limits,
        }
    }

    /// The key's suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Bytes each sealed chunk of this key's suite adds to its plaintext.
    pub fn overhead(&self) -> usize {
        self.suite.chunk_overhead()
    }

    /// Refuses chunk positions beyond the key's usage limits.
    #[inline]
    fn check_usage(&self, index: u64) -> Result<(), StreamError> {
        match self.positions {
            Some(n) if index >= n => Err(StreamError::KeyUsageLimit {
                index,
                suite: self.suite(),
                max_bytes: self.limits.max_bytes,
                max_chunks: self.limits.max_chunks,
            }),
            _ => Ok(()),
        }
    }

    /// The raw key bytes (for known-answer vectors).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Seals chunk `index` in place: `chunk` holds the plaintext followed by
    /// [`FileKey::overhead`] bytes of room (the tag, and the IV for
    /// [`Suite::Aes256GcmRandomIv`]). The caller guarantees the position; [`Sealer`] and
    /// the pipeline are the safe ways to call this. A position beyond the key's usage
    /// limits is refused before anything is sealed.
    #[inline]
    pub fn seal_chunk(&self, index: u64, last: bool, chunk: &mut [u8]) -> Result<(), StreamError> {
        self.check_usage(index)?;
        if chunk.len() < self.overhead() {
            return Err(StreamError::ChunkLength {
                index,
                expected: self.overhead(),
                actual: chunk.len(),
            });
        }
        let position = chunk_nonce(index, last);
        match &self.aead {
            // The length was checked: the room is exactly the overhead.
            ChunkCipher::Position(aead) => {
                let (body, tag_room) = chunk.split_at_mut(chunk.len() - TAG_LEN);
                tag_room.copy_from_slice(&aead.seal_in_place(&position, &[], body));
            }
            ChunkCipher::RandomIv(aead) => {
                let (body, room) = chunk.split_at_mut(chunk.len() - TAG_LEN - NONCE_LEN);
                let (iv, tag) = aead
                    .seal_in_place(&position, body)
                    .map_err(|source| StreamError::Iv { index, source })?;
                let (tag_room, iv_room) = room.split_at_mut(TAG_LEN);
                tag_room.copy_from_slice(&tag);
                iv_room.copy_from_slice(&iv);
            }
        }
        Ok(())
    }

    /// Opens chunk `index` in place; on success the first `chunk.len() -`
    /// [`FileKey::overhead`] bytes hold the plaintext.
    #[inline]
    pub fn open_chunk(&self, index: u64, last: bool, chunk: &mut [u8]) -> Result<(), StreamError> {
        self.check_usage(index)?;
        if chunk.len() < self.overhead() {
            return Err(StreamError::Tampered { index });
        }
        let position = chunk_nonce(index, last);
        match &self.aead {
            ChunkCipher::Position(aead) => {
                let (body, tag) = chunk.split_at_mut(chunk.len() - TAG_LEN);
                let mut t = [0u8; TAG_LEN];
                t.copy_from_slice(tag);
                aead.open_in_place(&position, &[], body, &t)
            }
            ChunkCipher::RandomIv(aead) => {
                let (sealed, iv) = chunk.split_at_mut(chunk.len() - NONCE_LEN);
                let mut v = [0u8; NONCE_LEN];
                v.copy_from_slice(iv);
                aead.open_in_place(&v, &position, sealed)
            }
        }
        .map_err(|_| StreamError::Tampered { index })
    }
}

/// How a [`FileKey`] seals: under the chunk's position as nonce, or under a module IV
/// with the position as associated data.
enum ChunkCipher {
    Position(AeadKey),
    RandomIv(RandomIvKey),
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(..)")
    }
}

/// Seals the chunks of one file in order. Call [`Sealer::seal_next`] for every chunk but
/// the last and [`Sealer::finish`] for the last one.
#[derive(Debug)]
pub struct Sealer<'k> {
    key: &'k FileKey,
    layout: ChunkLayout,
    next: u64,
}

impl<'k> Sealer<'k> {
    /// A sealer positioned at chunk 0.
    pub fn new(key: &'k FileKey, layout: ChunkLayout) -> Self {
        Self::starting_at(key, layout, 0)
    }

    /// A sealer positioned at chunk `first` (a resumed transfer).
    pub fn starting_at(key: &'k FileKey, layout: ChunkLayout, first: u64) -> Self {
        Self {
            key,
            layout: layout.sealed_with(key.suite()),
            next: first,
        }
    }

    /// The index the next chunk will be sealed at.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Seals the next, non-last chunk in place. `chunk` must be exactly `chunk_size`
    /// plus the suite's overhead bytes, the plaintext first.
    pub fn seal_next(&mut self, chunk: &mut [u8]) -> Result<(), StreamError> {
        if self.next >= self.layout.last_index() {
            return Err(if self.next == self.layout.last_index() {
                StreamError::LastChunkNeedsFinish
            } else {
                StreamError::DataAfterLast
            });
        }
        check_len(&self.layout, self.next, chunk.len())?;
        self.key.seal_chunk(self.next, false, chunk)?;
        self.next = advance(self.next)?;
        Ok(())
    }

    /// Seals the last chunk in place and ends the stream.
    pub fn finish(self, chunk: &mut [u8]) -> Result<(), StreamError> {
        let last = self.layout.last_index();
        if self.next != last {
            return Err(if self.next < last {
                StreamError::Truncated {
                    received: self.next,
                    expected: self.layout.count(),
                }
            } else {
                StreamError::DataAfterLast
            });
        }
        check_len(&self.layout, last, chunk.len())?;
        self.key.seal_chunk(last, true, chunk)
    }
}

/// Opens the chunks of one file in order and knows when the stream is complete.
#[derive(Debug)]
pub struct Opener<'k> {
    key: &'k FileKey,
    layout: ChunkLayout,
    next: u64,
    done: bool,
}

impl<'k> Opener<'k> {
    /// An opener expecting chunk 0 first.
    pub fn new(key: &'k FileKey, layout: ChunkLayout) -> Self {
        Self::starting_at(key, layout, 0)
    }

    /// An opener expecting chunk `first` first (a resumed transfer).
    pub fn starting_at(key: &'k FileKey, layout: ChunkLayout, first: u64) -> Self {
        Self {
            key,
            layout: layout.sealed_with(key.suite()),
            next: first,
            done: false,
        }
    }

    /// Sealed length of the next expected chunk, or `None` once the last one is open.
    pub fn expected_len(&self) -> Option<usize> {
        (!self.done).then(|| self.layout.sealed_len(self.next))
    }

    /// True once the last chunk has been opened.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Opens the next chunk in place and returns its plaintext.
    pub fn open_next<'b>(&mut self, chunk: &'b mut [u8]) -> Result<&'b mut [u8], StreamError> {
        if self.done {
            return Err(StreamError::DataAfterLast);
        }
        let index = self.next;
        check_len(&self.layout, index, chunk.len())?;
        let last = self.layout.is_last(index);
        self.key.open_chunk(index, last, chunk)?;
        if last {
            self.done = true;
        } else {
            self.next = advance(index)?;
        }
        let n = chunk.len() - self.layout.overhead();
        Ok(&mut chunk[..n])
    }

    /// Ends the stream: an error unless the last chunk was opened.
    pub fn finish(self) -> Result<(), StreamError> {
        if self.done {
            Ok(())
        } else {
            Err(StreamError::Truncated {
                received: self.next,
                expected: self.layout.count(),
            })
        }
    }
}

/// The position after `index`. No file size reaches 2^64 chunks (chunks are at least
/// 16 KiB), so this never fails for a real layout; the check stands so that a position
/// can never wrap around and reuse a nonce.
fn advance(index: u64) -> Result<u64, StreamError> {
    index.checked_add(1).ok_or(StreamError::CounterOverflow)
}

fn check_len(layout: &ChunkLayout, index: u64, actual: usize) -> Result<(), StreamError> {
    let expected = layout.sealed_len(index);
    if actual == expected {
        Ok(())
    } else {
        Err(StreamError::ChunkLength {
            index,
            expected,
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FileKey {
        FileKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn nonce_layout() {
        assert_eq!(chunk_nonce(0, false), [0; 12]);
        assert_eq!(chunk_nonce(1, true), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(
            chunk_nonce(0x0102_0304_0506_0708, false),
            [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0]
        );
    }

    #[test]
    fn layout_counts() {
        let c = ChunkSize::new(16 << 10).unwrap();
        assert_eq!(ChunkLayout::new(0, c).count(), 1);
        assert_eq!(ChunkLayout::new(0, c).plaintext_len(0), 0);
        assert_eq!(ChunkLayout::new(16 << 10, c).count(), 1);
        assert_eq!(ChunkLayout::new((16 << 10) + 1, c).count(), 2);
        assert_eq!(ChunkLayout::new((16 << 10) + 1, c).plaintext_len(1), 1);
        assert_eq!(
            ChunkLayout::new(u64::MAX, c).count(),
            u64::MAX / (16 << 10) + 1
        );
    }

    #[test]
    fn chunk_size_outside_set_is_rejected() {
        assert_eq!(
            ChunkSize::new(1000),
            Err(StreamError::ChunkSizeNotAllowed(1000))
        );
        assert_eq!(
            ChunkSize::new(8 << 20),
            Err(StreamError::ChunkSizeNotAllowed(8 << 20))
        );
        assert!(ChunkSize::new(64 << 10).is_ok());
    }

    #[test]
    fn counter_overflow_is_its_own_error() {
        assert_eq!(advance(u64::MAX), Err(StreamError::CounterOverflow));
        assert_eq!(advance(41), Ok(42));
    }

    #[test]
    fn usage_limit_refuses_before_it_is_exceeded() {
        let c = ChunkSize::new(16 << 10).unwrap();
        // A lowered limit: 3 full chunks' worth of bytes, or 2 chunks.
        for (limits, allowed) in [
            (
                UsageLimits {
                    max_bytes: 3 * (16 << 10),
                    max_chunks: 100,
                },
                3,
            ),
            (
                UsageLimits {
                    max_bytes: 1 << 40,
                    max_chunks: 2,
                },
                2,
            ),
        ] {
            let key = FileKey::with_limits(Suite::Aes256Gcm, &[7; 32], c, limits);
            let layout = ChunkLayout::new(10 * (16 << 10), c);
            let mut s = Sealer::new(&key, layout);
            let mut buf = vec![0u8; layout.sealed_len(0)];
            for _ in 0..allowed {
                s.seal_next(&mut buf).unwrap();
            }
            let untouched = buf.clone();
            assert!(matches!(
                s.seal_next(&mut buf),
                Err(StreamError::KeyUsageLimit { index, suite: Suite::Aes256Gcm, .. }) if index == allowed
            ));
            // Refused before sealing: the buffer is as it was.
            assert_eq!(buf, untouched);
            assert!(matches!(
                key.open_chunk(allowed, false, &mut buf),
                Err(StreamError::KeyUsageLimit { .. })
            ));
        }
        // The real limits: AES-256-GCM stops at 2^39 bytes, ChaCha20-Poly1305 never.
        let aes = FileKey::with_suite(Suite::Aes256Gcm, &[7; 32], c);
        let mut one = vec![0u8; CHUNK_OVERHEAD + 1];
        assert!(aes.seal_chunk((1 << 25) - 1, true, &mut one).is_ok());
        assert!(aes.seal_chunk(1 << 25, true, &mut one).is_err());
        let chacha = FileKey::with_suite(Suite::ChaCha20Poly1305, &[7; 32], c);
        assert!(chacha.seal_chunk(u64::MAX, true, &mut one).is_ok());
    }

    #[test]
    fn suites_differ_on_the_wire() {
        let c = ChunkSize::new(16 << 10).unwrap();
        let layout = ChunkLayout::new(5, c);
        let seal = |suite| {
            let key = FileKey::with_suite(suite, &[7; 32], c);
            let mut wire = b"hello".to_vec();
            wire.extend_from_slice(&[0; CHUNK_OVERHEAD]);
            Sealer::new(&key, layout).finish(&mut wire).unwrap();
            wire
        };
        let (a, b) = (seal(Suite::Aes256Gcm), seal(Suite::ChaCha20Poly1305));
        assert_ne!(a, b);
        // A chunk of one suite does not open under the other.
        let key = FileKey::with_suite(Suite::ChaCha20Poly1305, &[7; 32], c);
        let mut wire = a.clone();
        assert_eq!(
            Opener::new(&key, layout)
                .open_next(&mut wire)
                .map(|p| p.to_vec()),
            Err(StreamError::Tampered { index: 0 })
        );
        let key = FileKey::with_suite(Suite::Aes256Gcm, &[7; 32], c);
        let mut wire = a;
        assert_eq!(
            Opener::new(&key, layout).open_next(&mut wire).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn debug_does_not_print_keys() {
        assert_eq!(format!("{:?}", key()), "FileKey(..)");
        let t = TransferKey::derive(b"h", &[1u8; 32]);
        assert_eq!(format!("{t:?}"), "TransferKey(..)");
    }
}
