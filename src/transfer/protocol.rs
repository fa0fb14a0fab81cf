//! Control messages of a transfer (docs/PROTOCOL.md, "Transfer"), sent as session
//! messages on the control stream after the handshake. Every list that grows with the
//! offer travels in as many messages as it needs, so an offer of any size fits the
//! session message limit:
//!
//! 1. sender → receiver: [`OfferStart`] (the first transport message: it carries the
//!    session secret), then [`OfferEntries`] batches until `count` entries arrived, then
//!    [`OfferDirs`] batches until `dirs` empty directories arrived;
//! 2. receiver → sender: [`Reply`]: a [`Refusal`] (possibly before the entries were
//!    read), or an acceptance announcing `resume_points`, followed by [`ResumePoints`]
//!    batches until that many arrived;
//! 3. sender → receiver: each accepted file's chunks on its own unidirectional stream,
//!    which starts with the file's index and the first chunk sent (two big-endian u64,
//!    [`FILE_STREAM_HEADER`] bytes, [`crate::wire::stream_header`]);
//! 4. receiver → sender: [`ReceiptStart`] (with the receiver's audit chain head), then
//!    [`ReceiptHashes`] batches with every file's BLAKE3 in offer order.

use serde::{Deserialize, Serialize};

/// Most entries (files and directories) one offer may announce, whatever a receiver
/// allows.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Entries a receiver accepts in one offer unless configured otherwise
/// (`receive --max-entries`, `transfer.max_entries`): its memory for the manifest is
/// about 100 bytes plus the path's length per entry.
pub const DEFAULT_MAX_ENTRIES: u64 = 250_000;
/// Bytes of encoded entries (or directory names) the sender packs into one message: the
/// longest allowed entry (a 4,096-byte path) still fits with room to spare.
pub const MANIFEST_BYTES_PER_MESSAGE: usize = 48 * 1024;
/// Most resume points in one [`ResumePoints`] message (each at most 52 bytes encoded).
pub const POINTS_PER_MESSAGE: usize = 1_000;
/// Most hashes in one [`ReceiptHashes`] message (32 bytes each).
pub const HASHES_PER_MESSAGE: usize = 1_500;
/// Bytes of the header of a file stream: the file's index, then the first chunk sent
/// (0, or the resume point the receiver offered); its codec is
/// [`crate::wire::stream_header`].
pub const FILE_STREAM_HEADER: usize = crate::wire::stream_header::LEN;
/// Longest refusal detail a receiver sends (and a sender shows).
pub const MAX_DETAIL: usize = 512;

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
    /// Number of file entries that follow.
    pub count: u64,
    /// Number of empty directories that follow the files.
    pub dirs: u64,
    /// Sum of the sizes of all entries.
    pub total_size: u64,
    /// The sender's audit chain head (MAC of its last record) when it made the offer;
    /// `None` without an audit trail. The receiver records it with its receipt.
    pub audit_head: Option<[u8; 32]>,
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

impl Entry {
    /// An upper bound of this entry's postcard encoding, in bytes.
    pub fn encoded_len(&self) -> usize {
        // varint length (≤ 5) + path, size (≤ 10), mode (≤ 5), mtime (≤ 10).
        self.path.len() + 30
    }
}

/// A batch of file entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferEntries(pub Vec<Entry>);

/// A batch of empty directories to recreate (relative `/`-separated paths, validated
/// like file paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferDirs(pub Vec<String>);

/// The receiver's answer to an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Accepted. The receiver holds the first chunks of `resume_points` files from an
    /// interrupted transfer and offers to continue them: that many points follow in
    /// [`ResumePoints`] batches (at most one per file, in file order); every other file
    /// is sent from chunk 0.
    Accept {
        /// Number of resume points that follow.
        resume_points: u64,
    },
    /// Refused, with a reason code.
    Refuse(Refusal),
    /// Only in answer to an offer that carries an [`OfferItem`]: the receiver delivered
    /// this item before (same sender, same item id) and sends no second copy; the
    /// original receipt follows ([`ReceiptStart`], [`ReceiptHashes`]) and no file stream
    /// is opened. A sender checks those hashes against its files.
    Delivered,
}

/// Version of the [`OfferItem`] extension written here.
pub const OFFER_ITEM_VERSION: u8 = 1;

/// An optional extension of the first offer message, right after the [`OfferStart`]
/// bytes: the delivery item the offer carries (the agent's outbox), whose id is stable
/// across retries so that the receiver can answer a repeat with the original receipt.
/// A receiver that does not know it ignores the trailing bytes (postcard reads the
/// [`OfferStart`] and stops), so old peers still work; a receiver that knows it ignores
/// a version it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferItem {
    /// [`OFFER_ITEM_VERSION`].
    pub version: u8,
    /// The item id.
    pub item: [u8; 16],
}

/// Decodes the first offer message: the [`OfferStart`], then the item id of an
/// [`OfferItem`] of a known version if one follows.
pub fn decode_offer_start(bytes: &[u8]) -> Result<(OfferStart, Option<[u8; 16]>), postcard::Error> {
    let (start, rest) = postcard::take_from_bytes::<OfferStart>(bytes)?;
    if rest.is_empty() {
        return Ok((start, None));
    }
    let ext: OfferItem = postcard::from_bytes(rest)?;
    Ok((
        start,
        (ext.version == OFFER_ITEM_VERSION).then_some(ext.item),
    ))
}

/// Why a receiver refused an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The reason.
    pub code: RefusalCode,
    /// Details for a known sender (a path, bytes needed); always `None` for a sender the
    /// receiver does not know, so that it learns nothing about paths or free space.
    pub detail: Option<String>,
}

/// The reason codes of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    /// The receiving user declined.
    Declined,
    /// The sender is not in the receiver's address book and the receiver does not accept
    /// unknown senders' offers without asking.
    UnknownSender,
    /// A file of the offer already exists at the receiver (detail: its path).
    Exists,
    /// Not enough free space (detail: bytes needed and available).
    NoSpace,
    /// More entries than the receiver accepts in one offer (detail: how many were offered).
    TooManyEntries {
        /// The receiver's limit.
        max: u64,
    },
    /// Any other policy of the receiver (a read-only destination, a partial file in the
    /// way, its audit trail not writable; detail: which).
    Policy,
}

impl Refusal {
    /// A refusal with a detail for a known sender.
    pub fn new(code: RefusalCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: Some(detail.into()),
        }
    }

    /// This refusal as a sender the receiver does not know may see it: no detail, and
    /// the codes that would tell something about the destination folded into
    /// [`RefusalCode::Policy`].
    pub fn for_unknown_sender(&self) -> Self {
        let code = match self.code {
            RefusalCode::Exists | RefusalCode::NoSpace => RefusalCode::Policy,
            c => c,
        };
        Self { code, detail: None }
    }

    /// What the receiver said, for a person: one sentence fragment (no next step), with
    /// the peer's text escaped and bounded.
    pub fn explain(&self) -> String {
        let detail = self.detail.as_deref().map(|d| {
            // A long detail keeps its start and its end (a long path's reason comes last).
            let n = d.chars().count();
            let d: String = if n > MAX_DETAIL {
                let head: String = d.chars().take(MAX_DETAIL / 2).collect();
                let tail: String = d.chars().skip(n - MAX_DETAIL / 2).collect();
                format!("{head}...{tail}")
            } else {
                d.to_string()
            };
            crate::transfer::paths::escape(&d)
        });
        match (self.code, detail) {
            (RefusalCode::Declined, _) => "the receiving user declined the offer".into(),
            (RefusalCode::UnknownSender, _) => {
                "this sender is not in its address book and it does not accept offers from unknown senders".into()
            }
            (RefusalCode::Exists, Some(d)) => format!("{d} already exists there"),
            (RefusalCode::Exists, None) => "a file of this offer already exists there".into(),
            (RefusalCode::NoSpace, Some(d)) => format!("not enough free space there ({d})"),
            (RefusalCode::NoSpace, None) => "not enough free space there".into(),
            (RefusalCode::TooManyEntries { max }, None) => {
                format!("the offer has more entries than the {max} it accepts at once")
            }
            (RefusalCode::TooManyEntries { max }, Some(d)) => {
                format!("the offer has more entries than the {max} it accepts at once ({d})")
            }
            (RefusalCode::Policy, Some(d)) => d,
            (RefusalCode::Policy, None) => "its policy does not allow this offer".into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.explain())
    }
}

/// A batch of resume points (after [`Reply::Accept`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoints(pub Vec<ResumePoint>);

/// Where the receiver offers to continue one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// The file's index in the offer.
    pub file: u64,
    /// Chunks the receiver holds (the first chunk to send), at least 1 and below the
    /// file's chunk count.
    pub from_chunk: u64,
    /// The hash of those chunks' plaintext as one byte string, with the session's file
    /// hash (BLAKE3, or SHA-256 in the FIPS session).
    pub prefix_hash: [u8; 32],
}

/// The start of the receipt: what the receiver got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptStart {
    /// Number of hashes that follow (the number of files offered).
    pub count: u64,
    /// The receiver's audit chain head: the MAC of its receipt record (which holds the
    /// sender's head from the offer); `None` without an audit trail.
    pub audit_head: Option<[u8; 32]>,
}

/// A batch of the receipt: the BLAKE3 of each file, in offer order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptHashes(pub Vec<[u8; 32]>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_batches_fit_one_session_message() {
        let limit = crate::crypto::handshake::MAX_MESSAGE;
        let long = Entry {
            path: "a".repeat(crate::transfer::paths::MAX_PATH_BYTES),
            size: u64::MAX,
            mode: u32::MAX,
            mtime: i64::MIN,
        };
        assert!(postcard::to_allocvec(&long).unwrap().len() <= long.encoded_len());
        // The sender stops adding entries once the batch reaches the budget, so a batch is
        // at most the budget plus one longest entry.
        assert!(MANIFEST_BYTES_PER_MESSAGE + long.encoded_len() + 8 < limit);
        let points = ResumePoints(vec![
            ResumePoint {
                file: u64::MAX,
                from_chunk: u64::MAX,
                prefix_hash: [0xff; 32],
            };
            POINTS_PER_MESSAGE
        ]);
        assert!(postcard::to_allocvec(&points).unwrap().len() < limit);
        let hashes = ReceiptHashes(vec![[0xff; 32]; HASHES_PER_MESSAGE]);
        assert!(postcard::to_allocvec(&hashes).unwrap().len() < limit);
    }

    #[test]
    fn an_offer_item_is_an_optional_trailing_extension() {
        let start = OfferStart {
            transfer_id: [1; 16],
            session_secret: [2; 32],
            chunk_size: 1 << 20,
            count: 1,
            dirs: 0,
            total_size: 5,
            audit_head: None,
        };
        let ext = OfferItem {
            version: OFFER_ITEM_VERSION,
            item: [9; 16],
        };
        let with = postcard::to_allocvec(&(start.clone(), ext)).unwrap();
        // An old receiver reads the start and ignores the rest.
        assert_eq!(postcard::from_bytes::<OfferStart>(&with).unwrap(), start);
        assert_eq!(
            decode_offer_start(&with).unwrap(),
            (start.clone(), Some([9; 16]))
        );
        // An old sender's offer has none.
        let without = postcard::to_allocvec(&start).unwrap();
        assert_eq!(decode_offer_start(&without).unwrap(), (start.clone(), None));
        // A later version is ignored; a torn one is an error.
        let later =
            postcard::to_allocvec(&(start.clone(), OfferItem { version: 2, ..ext })).unwrap();
        assert_eq!(decode_offer_start(&later).unwrap().1, None);
        assert!(decode_offer_start(&with[..with.len() - 3]).is_err());
        // The new answer decodes as itself; the old ones keep their encoding.
        let d = postcard::to_allocvec(&Reply::Delivered).unwrap();
        assert_eq!(postcard::from_bytes::<Reply>(&d).unwrap(), Reply::Delivered);
        assert_eq!(
            postcard::to_allocvec(&Reply::Accept { resume_points: 0 }).unwrap(),
            [0, 0]
        );
    }

    #[test]
    fn an_unknown_sender_learns_nothing_about_paths_or_space() {
        for code in [
            RefusalCode::Exists,
            RefusalCode::NoSpace,
            RefusalCode::Policy,
        ] {
            let r = Refusal::new(code, "Doe, Jane.pdf: 12 bytes needed, 3 available")
                .for_unknown_sender();
            assert_eq!(r.code, RefusalCode::Policy);
            assert!(r.detail.is_none());
            assert!(!r.to_string().contains("Doe"));
        }
        let r = Refusal::new(RefusalCode::TooManyEntries { max: 7 }, "x").for_unknown_sender();
        assert_eq!(r.code, RefusalCode::TooManyEntries { max: 7 });
    }

    #[test]
    fn a_peers_detail_is_escaped_and_bounded() {
        let r = Refusal::new(
            RefusalCode::Exists,
            format!("\u{1b}[31m{}", "x".repeat(9000)),
        );
        let shown = r.to_string();
        assert!(!shown.contains('\u{1b}'));
        assert!(shown.len() < MAX_DETAIL + 200);
        assert!(shown.ends_with("already exists there"), "{shown}");
    }
}
