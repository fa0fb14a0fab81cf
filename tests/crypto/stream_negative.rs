//! STREAM negative cases, one test each, and property tests.

use phi_conduit::crypto::stream::{
    CHUNK_OVERHEAD, ChunkLayout, ChunkSize, FileKey, FileKeyContext, Opener, Sealer, StreamError,
    TransferKey,
};
use proptest::prelude::*;

const CHUNK: u64 = 16 << 10;

fn chunk_size() -> ChunkSize {
    ChunkSize::new(CHUNK).unwrap()
}

fn keys() -> (FileKey, FileKey) {
    let tk = TransferKey::derive(b"handshake hash", &[9u8; 32]);
    let tid = [1u8; 16];
    (
        tk.file_key(&FileKeyContext::fresh(tid, 0, chunk_size())),
        tk.file_key(&FileKeyContext::fresh(tid, 1, chunk_size())),
    )
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8).collect()
}

/// Seals `pt` into its wire chunks.
fn seal_all(key: &FileKey, pt: &[u8], chunk: ChunkSize) -> Vec<Vec<u8>> {
    let layout = ChunkLayout::new(pt.len() as u64, chunk);
    let mut sealer = Sealer::new(key, layout);
    let mut out = Vec::new();
    for i in 0..layout.count() {
        let start = layout.offset(i) as usize;
        let mut buf = pt[start..start + layout.plaintext_len(i)].to_vec();
        buf.extend_from_slice(&[0; CHUNK_OVERHEAD]);
        if layout.is_last(i) {
            let s = std::mem::replace(&mut sealer, Sealer::new(key, layout));
            s.finish(&mut buf).unwrap();
        } else {
            sealer.seal_next(&mut buf).unwrap();
        }
        out.push(buf);
    }
    out
}

/// Opens `chunks` as a file of `size` bytes; returns the plaintext or the first error.
fn open_all(
    key: &FileKey,
    size: u64,
    chunk: ChunkSize,
    chunks: &[Vec<u8>],
) -> Result<Vec<u8>, StreamError> {
    let mut opener = Opener::new(key, ChunkLayout::new(size, chunk));
    let mut out = Vec::new();
    for c in chunks {
        let mut c = c.clone();
        out.extend_from_slice(opener.open_next(&mut c)?);
    }
    opener.finish()?;
    Ok(out)
}

const SIZE: usize = 3 * CHUNK as usize + 500;

fn sample() -> (FileKey, Vec<u8>, Vec<Vec<u8>>) {
    let (k, _) = keys();
    let pt = data(SIZE);
    let chunks = seal_all(&k, &pt, chunk_size());
    assert_eq!(chunks.len(), 4);
    (k, pt, chunks)
}

#[test]
fn intact_stream_opens() {
    let (k, pt, chunks) = sample();
    assert_eq!(
        open_all(&k, SIZE as u64, chunk_size(), &chunks).unwrap(),
        pt
    );
}

#[test]
fn flipped_bit_in_ciphertext_fails_at_that_chunk() {
    let (k, _, mut chunks) = sample();
    chunks[1][100] ^= 0x01;
    assert_eq!(
        open_all(&k, SIZE as u64, chunk_size(), &chunks),
        Err(StreamError::Tampered { index: 1 })
    );
}

#[test]
fn flipped_bit_in_tag_fails_at_that_chunk() {
    let (k, _, mut chunks) = sample();
    let n = chunks[2].len();
    chunks[2][n - 1] ^= 0x80;
    assert_eq!(
        open_all(&k, SIZE as u64, chunk_size(), &chunks),
        Err(StreamError::Tampered { index: 2 })
    );
}

#[test]
fn two_chunks_swapped_fail() {
    let (k, _, mut chunks) = sample();
    chunks.swap(0, 1);
    assert_eq!(
        open_all(&k, SIZE as u64, chunk_size(), &chunks),
        Err(StreamError::Tampered { index: 0 })
    );
}

#[test]
fn last_chunk_dropped_is_truncation() {
    let (k, _, mut chunks) = sample();
    chunks.pop();
    assert_eq!(
        open_all(&k, SIZE as u64, chunk_size(), &chunks),
        Err(StreamError::Truncated {
            received: 3,
            expected: 4
        })
    );
}

#[test]
fn middle_chunk_dropped_fails_at_expected_index() {
    let (k, _, mut chunks) = sample();
    chunks.remove(1);
    assert_eq!(
        open_all(&k, SIZE as u64, chunk_size(), &chunks),
        Err(StreamError::Tampered { index: 1 })
    );
}

#[test]
fn chunk_replayed_is_rejected() {
    let (k, _, mut chunks) = sample();
    let dup = chunks[0].clone();
    chunks.insert(1, dup);
    assert_eq!(
        open_all(&k, SIZE as u64, chunk_size(), &chunks),
        Err(StreamError::Tampered { index: 1 })
    );
}

#[test]
fn extra_chunk_after_last_is_data_after_last() {
    let (k, _, mut chunks) = sample();
    let extra = chunks[3].clone();
    chunks.push(extra);
    assert_eq!(
        open_all(&k, SIZE as u64, chunk_size(), &chunks),
        Err(StreamError::DataAfterLast)
    );
}

#[test]
fn last_flag_on_a_middle_chunk_fails() {
    let (k, pt, mut chunks) = sample();
    // Re-seal chunk 1 with the last flag set, as an attacker ending the file early would.
    let mut forged = pt[CHUNK as usize..2 * CHUNK as usize].to_vec();
    forged.extend_from_slice(&[0; CHUNK_OVERHEAD]);
    k.seal_chunk(1, true, &mut forged).unwrap();
    chunks[1] = forged;
    assert_eq!(
        open_all(&k, SIZE as u64, chunk_size(), &chunks),
        Err(StreamError::Tampered { index: 1 })
    );
}

#[test]
fn final_chunk_without_last_flag_fails() {
    let (k, pt, mut chunks) = sample();
    let mut forged = pt[3 * CHUNK as usize..].to_vec();
    forged.extend_from_slice(&[0; CHUNK_OVERHEAD]);
    k.seal_chunk(3, false, &mut forged).unwrap();
    chunks[3] = forged;
    assert_eq!(
        open_all(&k, SIZE as u64, chunk_size(), &chunks),
        Err(StreamError::Tampered { index: 3 })
    );
}

#[test]
fn chunk_sealed_under_another_files_key_fails() {
    let (k, other) = keys();
    let pt = data(SIZE);
    let mut chunks = seal_all(&k, &pt, chunk_size());
    chunks[2] = seal_all(&other, &pt, chunk_size()).swap_remove(2);
    assert_eq!(
        open_all(&k, SIZE as u64, chunk_size(), &chunks),
        Err(StreamError::Tampered { index: 2 })
    );
}

#[test]
fn chunk_from_an_earlier_session_fails() {
    let tid = [1u8; 16];
    let old = TransferKey::derive(b"old handshake", &[9u8; 32]).file_key(&FileKeyContext::fresh(
        tid,
        0,
        chunk_size(),
    ));
    let new = TransferKey::derive(b"new handshake", &[9u8; 32]).file_key(&FileKeyContext::fresh(
        tid,
        0,
        chunk_size(),
    ));
    let pt = data(SIZE);
    let mut chunks = seal_all(&new, &pt, chunk_size());
    chunks[0] = seal_all(&old, &pt, chunk_size()).swap_remove(0);
    assert_eq!(
        open_all(&new, SIZE as u64, chunk_size(), &chunks),
        Err(StreamError::Tampered { index: 0 })
    );
}

#[test]
fn short_non_final_chunk_is_a_length_error() {
    let (k, _, mut chunks) = sample();
    chunks[1].truncate(1000);
    assert!(matches!(
        open_all(&k, SIZE as u64, chunk_size(), &chunks),
        Err(StreamError::ChunkLength {
            index: 1,
            actual: 1000,
            ..
        })
    ));
}

#[test]
fn empty_last_chunk_of_non_empty_file_is_rejected() {
    // A file of exactly one chunk has no second, empty chunk: the layout says 1 chunk.
    let (k, _) = keys();
    let pt = data(CHUNK as usize);
    let mut chunks = seal_all(&k, &pt, chunk_size());
    assert_eq!(chunks.len(), 1);
    let mut empty = vec![0u8; CHUNK_OVERHEAD];
    k.seal_chunk(1, true, &mut empty).unwrap();
    chunks.push(empty);
    assert_eq!(
        open_all(&k, CHUNK, chunk_size(), &chunks),
        Err(StreamError::DataAfterLast)
    );
    // And sealing a non-empty file's last chunk empty is a length error.
    let layout = ChunkLayout::new(CHUNK, chunk_size());
    let s = Sealer::new(&k, layout);
    let mut just_tag = vec![0u8; CHUNK_OVERHEAD];
    assert!(matches!(
        s.finish(&mut just_tag),
        Err(StreamError::ChunkLength { .. })
    ));
}

#[test]
fn empty_file_without_its_empty_chunk_is_truncated() {
    let (k, _) = keys();
    assert_eq!(
        open_all(&k, 0, chunk_size(), &[]),
        Err(StreamError::Truncated {
            received: 0,
            expected: 1
        })
    );
    let chunks = seal_all(&k, &[], chunk_size());
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].len(), CHUNK_OVERHEAD);
    assert_eq!(
        open_all(&k, 0, chunk_size(), &chunks).unwrap(),
        Vec::<u8>::new()
    );
}

#[test]
fn resume_with_a_different_prefix_hash_fails() {
    let tk = TransferKey::derive(b"handshake hash", &[9u8; 32]);
    let mut ctx = FileKeyContext::fresh([1u8; 16], 0, chunk_size());
    ctx.resume_from = 2;
    ctx.resume_prefix_hash = [0xaa; 32];
    let sender = tk.file_key(&ctx);
    ctx.resume_prefix_hash = [0xbb; 32];
    let receiver = tk.file_key(&ctx);
    let layout = ChunkLayout::new(SIZE as u64, chunk_size());
    let mut buf = data(CHUNK as usize);
    buf.extend_from_slice(&[0; CHUNK_OVERHEAD]);
    Sealer::starting_at(&sender, layout, 2)
        .seal_next(&mut buf)
        .unwrap();
    let mut o = Opener::starting_at(&receiver, layout, 2);
    assert_eq!(
        o.open_next(&mut buf),
        Err(StreamError::Tampered { index: 2 })
    );
}

#[test]
fn chunk_size_outside_the_allowed_set_is_rejected() {
    for bad in [0u64, 1, 1000, 8 << 10, 100_000, 8 << 20, u64::MAX] {
        assert_eq!(
            ChunkSize::new(bad),
            Err(StreamError::ChunkSizeNotAllowed(bad))
        );
    }
}

#[test]
fn sealer_refuses_to_seal_the_last_chunk_without_finish() {
    let (k, _) = keys();
    let layout = ChunkLayout::new(10, chunk_size());
    let mut s = Sealer::new(&k, layout);
    let mut buf = vec![0u8; 10 + CHUNK_OVERHEAD];
    assert_eq!(
        s.seal_next(&mut buf),
        Err(StreamError::LastChunkNeedsFinish)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn open_of_seal_is_identity(size in 0usize..200_000, cs in 0usize..3) {
        let chunk = ChunkSize::new([16u64 << 10, 32 << 10, 64 << 10][cs]).unwrap();
        let (k, _) = keys();
        let pt = data(size);
        let chunks = seal_all(&k, &pt, chunk);
        prop_assert_eq!(open_all(&k, size as u64, chunk, &chunks).unwrap(), pt);
    }

    #[test]
    fn any_one_byte_change_fails(size in 0usize..70_000, pos in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let chunk = chunk_size();
        let (k, _) = keys();
        let pt = data(size);
        let chunks = seal_all(&k, &pt, chunk);
        let mut wire: Vec<u8> = chunks.concat();
        let at = pos.index(wire.len());
        wire[at] = wire[at].wrapping_add(delta);
        // Re-cut the wire at the same boundaries and open.
        let mut cut = Vec::new();
        let mut off = 0;
        for c in &chunks {
            cut.push(wire[off..off + c.len()].to_vec());
            off += c.len();
        }
        prop_assert!(open_all(&k, size as u64, chunk, &cut).is_err());
    }
}
