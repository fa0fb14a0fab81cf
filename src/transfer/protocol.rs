//! Control messages of a transfer (docs/PROTOCOL.md, "Transfer"), sent as session
//! messages on the control stream after the handshake.
//!
//! 1. sender → receiver: [`OfferStart`] (the first transport message: it carries the
//!    session secret), then [`OfferEntries`] batches until `count` entries arrived;
//! 2. receiver → sender: [`Reply`], with resume points for files it holds in part;
//! 3. sender → receiver: each accepted file's chunks on its own unidirectional stream,
//!    which starts with the file's index and the first chunk sent (two big-endian u64,
//!    [`FILE_STREAM_HEADER`] bytes);
//! 4. receiver → sender: [`Receipt`] with every file's BLAKE3.

use serde::{Deserialize, Serialize};

/// Most entries one offer may announce.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Entries per [`OfferEntries`] message: twelve entries with the longest allowed path
/// (4,096 bytes) still fit one session message.
pub const ENTRIES_PER_MESSAGE: usize = 12;
/// Bytes of the header of a file stream: the file's index, then the first chunk sent
/// (0, or the resume point the receiver offered).
pub const FILE_STREAM_HEADER: usize = 16;

/// The start of an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferStart {
    /// Transfer id (input of the file keys; in known-recipient mode equal to the id in
    /// handshake message 1).
    pub transfer_id: [u8; 16],
    /// Fresh random secret of this session (input of the STREAM key schedule).
    pub session_secret: [u8; 32],
    /// STREAM chunk size for every file.
    pub chunk_size: u32,
    /// Number of entries that follow.
    pub count: u64,
    /// Sum of the sizes of all entries.
    pub total_size: u64,
}

/// One offered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative `/`-separated path (validated by the receiver).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`0o777` at most; the receiver drops anything else).
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
}

/// A batch of entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferEntries(pub Vec<Entry>);

/// The receiver's answer to an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Accepted: send every file from chunk 0.
    Accept,
    /// Refused, with a reason to show.
    Refuse(String),
    /// Accepted; the receiver holds the first chunks of some files from an interrupted
    /// transfer and offers to continue them (at most one point per file, in file order).
    AcceptResume(Vec<ResumePoint>),
}

/// Where the receiver offers to continue one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// The file's index in the offer.
    pub file: u64,
    /// Chunks the receiver holds (the first chunk to send), at least 1 and below the
    /// file's chunk count.
    pub from_chunk: u64,
    /// BLAKE3 of those chunks' plaintext, as one byte string.
    pub prefix_blake3: [u8; 32],
}

/// What the receiver got: the BLAKE3 of each file, in offer order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt(pub Vec<[u8; 32]>);
