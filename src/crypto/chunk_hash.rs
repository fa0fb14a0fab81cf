//! Whole-file BLAKE3 computed chunk by chunk, in parallel.
//!
//! BLAKE3 is a tree hash. STREAM chunks are powers of two of at least 16 KiB and start at
//! multiples of their size, so each chunk is a complete subtree of the file's BLAKE3
//! tree: a worker thread hashes its chunk to a chaining value where the chunk is, and
//! [`TreeHash`] merges the chaining values in order into exactly `blake3::hash(file)`.
//! A one-chunk file is the root itself and is hashed as a whole.
//!
//! This lets the data path compute the receipt hash on all cores, in the same pass that
//! seals or opens the chunk, and lets a receiver hash a resumable prefix chunk by chunk.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::crypto::stream::ChunkLayout;

/// Deepest possible merge stack: one entry per bit of the chunk count.
const MAX_STACK: usize = 64;

/// The hash of one chunk's plaintext, as [`TreeHash`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkDigest {
    /// A chaining value (the file has more than one chunk).
    Subtree(ChainingValue),
    /// The root hash (the file is this single chunk).
    Root(blake3::Hash),
}

/// Hashes chunk `index` of a file with `layout`; `plaintext` is the whole chunk.
pub fn chunk_digest(layout: &ChunkLayout, index: u64, plaintext: &[u8]) -> ChunkDigest {
    if layout.count() == 1 {
        return ChunkDigest::Root(blake3::hash(plaintext));
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(layout.offset(index));
    h.update(plaintext);
    ChunkDigest::Subtree(h.finalize_non_root())
}

/// Errors of [`TreeHash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TreeHashError {
    /// A digest arrived for a file shape it was not made for, or after the last chunk.
    #[error("chunk digest does not fit the file layout")]
    Shape,
}

/// Merges chunk digests, pushed in order, into the file's BLAKE3 hash.
#[derive(Debug, Clone)]
pub struct TreeHash {
    count: u64,
    pushed: u64,
    stack: Vec<ChainingValue>,
    root: Option<blake3::Hash>,
}

impl TreeHash {
    /// A tree hash for a file with `layout`.
    pub fn new(layout: &ChunkLayout) -> Self {
        Self {
            count: layout.count(),
            pushed: 0,
            stack: Vec::with_capacity(MAX_STACK),
            root: None,
        }
    }

    /// Chunks pushed so far.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Adds the digest of the next chunk.
    pub fn push(&mut self, digest: ChunkDigest) -> Result<(), TreeHashError> {
        if self.pushed >= self.count {
            return Err(TreeHashError::Shape);
        }
        match digest {
            ChunkDigest::Root(h) if self.count == 1 => self.root = Some(h),
            ChunkDigest::Subtree(cv) if self.count > 1 => {
                // Merge lazily, as BLAKE3's own hasher does: never merge the rightmost
                // subtrees until it is known whether more input follows (the last merge
                // is the root and is finalized differently).
                let keep = self.pushed.count_ones() as usize;
                while self.stack.len() > keep {
                    let (Some(right), Some(left)) = (self.stack.pop(), self.stack.pop()) else {
                        return Err(TreeHashError::Shape);
                    };
                    self.stack
                        .push(merge_subtrees_non_root(&left, &right, Mode::Hash));
                }
                self.stack.push(cv);
            }
            _ => return Err(TreeHashError::Shape),
        }
        self.pushed += 1;
        Ok(())
    }

    /// The file's BLAKE3 hash once every chunk was pushed, `None` before.
    pub fn finalize(&self) -> Option<blake3::Hash> {
        if self.pushed != self.count {
            return None;
        }
        if let Some(root) = self.root {
            return Some(root);
        }
        let mut stack = self.stack.clone();
        let mut right = stack.pop()?;
        while let Some(left) = stack.pop() {
            if stack.is_empty() {
                return Some(merge_subtrees_root(&left, &right, Mode::Hash));
            }
            right = merge_subtrees_non_root(&left, &right, Mode::Hash);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::stream::ChunkSize;
    use proptest::prelude::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i * 13 % 256) as u8 ^ (i >> 10) as u8)
            .collect()
    }

    fn tree_hash(bytes: &[u8], chunk: ChunkSize) -> blake3::Hash {
        let layout = ChunkLayout::new(bytes.len() as u64, chunk);
        let mut t = TreeHash::new(&layout);
        for i in 0..layout.count() {
            let start = layout.offset(i) as usize;
            let d = chunk_digest(&layout, i, &bytes[start..start + layout.plaintext_len(i)]);
            t.push(d).unwrap();
        }
        t.finalize().unwrap()
    }

    #[test]
    fn matches_blake3_on_edge_sizes() {
        let c = ChunkSize::new(16 << 10).unwrap();
        let k = 16 << 10;
        for size in [
            0,
            1,
            1023,
            1024,
            k - 1,
            k,
            k + 1,
            2 * k,
            3 * k,
            3 * k + 5,
            7 * k,
            8 * k,
            8 * k + 1,
            33 * k + 77,
        ] {
            let d = data(size);
            assert_eq!(tree_hash(&d, c), blake3::hash(&d), "size {size}");
        }
    }

    #[test]
    fn unfinished_or_overfull_tree_is_refused() {
        let c = ChunkSize::new(16 << 10).unwrap();
        let layout = ChunkLayout::new(40 << 10, c);
        let mut t = TreeHash::new(&layout);
        t.push(chunk_digest(&layout, 0, &data(16 << 10))).unwrap();
        assert_eq!(t.finalize(), None);
        t.push(ChunkDigest::Subtree([0; 32])).unwrap();
        t.push(ChunkDigest::Subtree([0; 32])).unwrap();
        assert_eq!(
            t.push(ChunkDigest::Subtree([0; 32])),
            Err(TreeHashError::Shape)
        );
        let one = ChunkLayout::new(5, c);
        assert_eq!(
            TreeHash::new(&one).push(ChunkDigest::Subtree([0; 32])),
            Err(TreeHashError::Shape)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn equals_blake3_of_the_whole_file(size in 0usize..300_000, cs in 0usize..3) {
            let c = ChunkSize::new([16u64 << 10, 32 << 10, 64 << 10][cs]).unwrap();
            let d = data(size);
            prop_assert_eq!(tree_hash(&d, c), blake3::hash(&d));
        }
    }
}
