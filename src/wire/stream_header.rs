//! The header of a file stream (docs/PROTOCOL.md, "Transfer"): every unidirectional
//! stream the sender opens for a file starts with these [`LEN`] bytes, then the file's
//! STREAM chunks.
//!
//! ```text
//! file index u64 (big-endian, the file's position in the offer)
//! | first chunk u64 (big-endian: 0, or the resume point the receiver offered)
//! ```
//!
//! The header has a fixed length, so the receiver reads exactly [`LEN`] bytes and
//! allocates nothing. Whether the index names a file of the offer not started yet, and
//! whether a non-zero first chunk is the resume point offered for that file, are the
//! receiver's checks against its offer ([`StreamHeader::slot`] does the first).

use thiserror::Error;

/// Bytes of a file stream's header.
pub const LEN: usize = 16;

/// A decoded file stream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    /// The file's index in the offer.
    pub index: u64,
    /// The first chunk on this stream (0 unless the file is resumed).
    pub first: u64,
}

/// Why a header names no file the receiver can take.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum StreamHeaderError {
    /// Fewer than [`LEN`] bytes.
    #[error("file stream header of {0} bytes (expected 16)")]
    Short(usize),
    /// The index is past the offer, or its file already has a stream.
    #[error("file stream for unknown or repeated file {0}")]
    UnknownFile(u64),
}

impl StreamHeader {
    /// The header as sent.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..8].copy_from_slice(&self.index.to_be_bytes());
        out[8..].copy_from_slice(&self.first.to_be_bytes());
        out
    }

    /// Decodes a header read in full. Every 16 bytes are a header.
    pub fn decode(bytes: &[u8; LEN]) -> Self {
        let (index, first) = bytes.split_at(8);
        let word = |x: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(x);
            u64::from_be_bytes(w)
        };
        StreamHeader {
            index: word(index),
            first: word(first),
        }
    }

    /// Decodes the first [`LEN`] bytes of `bytes` (the rest is the stream's data).
    pub fn decode_prefix(bytes: &[u8]) -> Result<Self, StreamHeaderError> {
        bytes
            .first_chunk::<LEN>()
            .map(Self::decode)
            .ok_or(StreamHeaderError::Short(bytes.len()))
    }

    /// The offer slot the index names, if it is one of the `started.len()` files and
    /// `started` says its stream has not come yet.
    pub fn slot(&self, started: &[bool]) -> Result<usize, StreamHeaderError> {
        usize::try_from(self.index)
            .ok()
            .filter(|&i| started.get(i) == Some(&false))
            .ok_or(StreamHeaderError::UnknownFile(self.index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_layout_is_two_big_endian_words() {
        let h = StreamHeader {
            index: 0x0102,
            first: 7,
        };
        assert_eq!(h.encode(), [0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(StreamHeader::decode(&h.encode()), h);
        assert_eq!(
            StreamHeader::decode_prefix(&h.encode()[..15]),
            Err(StreamHeaderError::Short(15))
        );
    }

    #[test]
    fn only_an_offered_file_not_started_has_a_slot() {
        let started = [false, true, false];
        let at = |index| StreamHeader { index, first: 0 }.slot(&started);
        assert_eq!(at(0), Ok(0));
        assert_eq!(at(2), Ok(2));
        assert_eq!(at(1), Err(StreamHeaderError::UnknownFile(1)));
        assert_eq!(at(3), Err(StreamHeaderError::UnknownFile(3)));
        assert_eq!(at(u64::MAX), Err(StreamHeaderError::UnknownFile(u64::MAX)));
    }

    proptest! {
        #[test]
        fn every_header_round_trips(index in any::<u64>(), first in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..20)) {
            let h = StreamHeader { index, first };
            let mut wire = h.encode().to_vec();
            wire.extend(tail);
            prop_assert_eq!(StreamHeader::decode_prefix(&wire), Ok(h));
        }
    }
}
