//! The pipeline allocates nothing per chunk in steady state, proved with a counting
//! global allocator. This file is its own test binary, so the allocator sees only this
//! test's threads.
//!
//! Pool buffers are made lazily, when the pipeline first needs one more, so a buffer may
//! still be born during the measured window: at most two allocations per buffer over the
//! pipeline's life (the buffer and its shared header). The bound below is therefore
//! `2 * BUFFERS`, independent of the 2,000 chunks measured: anything per chunk would
//! exceed it a hundredfold.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use phi_conduit::crypto::file_hash::{FileHasher, HashAlg};
use phi_conduit::crypto::pipeline::{CipherPool, OpenPipeline, SealPipeline};
use phi_conduit::crypto::stream::{ChunkLayout, ChunkSize, FileKey};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The two tests run one at a time so neither counts the other's allocations.
static SERIAL: Mutex<()> = Mutex::new(());

const WARM_UP: usize = 64;
const BUFFERS: usize = 8;
const BOUND: u64 = 2 * BUFFERS as u64;
const MEASURED: usize = 2_000;

#[test]
fn seal_allocates_nothing_per_chunk_in_steady_state() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let chunk = ChunkSize::new(16 << 10).unwrap();
    let key = Arc::new(FileKey::from_bytes(&[1u8; 32]));
    let pool = CipherPool::new(2).unwrap();
    let count = (WARM_UP + MEASURED) as u64;
    let layout = ChunkLayout::new(count * (16 << 10), chunk);

    // Seal: the source writes the chunk index into the buffer; the consumer hashes each
    // chunk and drops it (as quinn drops a chunk once it is acknowledged).
    let mut seal = SealPipeline::new(
        pool.clone(),
        key.clone(),
        layout,
        0,
        BUFFERS,
        Arc::new(|i: u64, buf: &mut [u8]| {
            buf[..8].copy_from_slice(&i.to_le_bytes());
            Ok(())
        }),
    )
    // With the whole-file BLAKE3 computed on the workers, as the sender does.
    .with_file_hash(FileHasher::new(HashAlg::Blake3, &layout));
    let mut sink = 0u64;
    for _ in 0..WARM_UP {
        sink ^= u64::from(seal.next().unwrap().unwrap()[0]);
    }
    let before = ALLOCS.load(Ordering::SeqCst);
    for _ in 0..MEASURED {
        sink ^= u64::from(seal.next().unwrap().unwrap()[0]);
    }
    let seal_allocs = ALLOCS.load(Ordering::SeqCst) - before;
    assert!(seal.next().is_none());
    assert!(seal.file_hash().is_some());
    drop(seal);

    assert!(
        seal_allocs <= BOUND,
        "{seal_allocs} allocations while sealing {MEASURED} chunks (sink {sink})"
    );
}

#[test]
fn open_allocates_nothing_per_chunk_in_steady_state() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let chunk = ChunkSize::new(16 << 10).unwrap();
    let key = Arc::new(FileKey::from_bytes(&[2u8; 32]));
    let pool = CipherPool::new(2).unwrap();
    let count = (WARM_UP + MEASURED) as u64;
    let layout = ChunkLayout::new(count * (16 << 10), chunk);
    // Pre-seal all chunks (outside the measurement) into one wire buffer.
    let mut wire = Vec::with_capacity(layout.sealed_total() as usize);
    for c in SealPipeline::new(
        pool.clone(),
        key.clone(),
        layout,
        0,
        BUFFERS,
        Arc::new(|_: u64, _: &mut [u8]| Ok(())),
    ) {
        wire.extend_from_slice(&c.unwrap());
    }
    let mut at = 0usize;
    let mut open = OpenPipeline::new(
        pool.clone(),
        key,
        layout,
        0,
        BUFFERS,
        |_, buf: &mut [u8]| {
            buf.copy_from_slice(&wire[at..at + buf.len()]);
            at += buf.len();
            Ok(())
        },
    );
    let mut sink = 0u64;
    for _ in 0..WARM_UP {
        sink ^= u64::from(open.next().unwrap().unwrap()[0]);
    }
    let before = ALLOCS.load(Ordering::SeqCst);
    for _ in 0..MEASURED {
        sink ^= u64::from(open.next().unwrap().unwrap()[0]);
    }
    let allocs = ALLOCS.load(Ordering::SeqCst) - before;
    assert!(open.next().is_none());
    assert!(
        allocs <= BOUND,
        "{allocs} allocations while opening {MEASURED} chunks (sink {sink})"
    );
}
