//! A transfer of many small files: the next file's pipeline takes the chunk buffers the
//! last one finished with (kept by the cipher pool) instead of allocating and zeroing
//! fresh ones. Counted with a global allocator, so this test is a binary of its own (the
//! test harness's own allocations would blur any other test's count).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use phi_conduit::crypto::pipeline::{CipherPool, SealPipeline};
use phi_conduit::crypto::stream::{ChunkLayout, ChunkSize, FileKey};

/// Counts allocations of a chunk buffer's size or more.
struct CountingBig;

static BIG_ALLOCS: AtomicU64 = AtomicU64::new(0);
const BIG: usize = 16 << 10;

unsafe impl GlobalAlloc for CountingBig {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= BIG {
            BIG_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= BIG {
            BIG_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc_zeroed(layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingBig = CountingBig;

/// Many small files: the next file's pipeline takes the buffers the last one finished
/// with (from the pool), instead of allocating and zeroing fresh ones.
#[test]
fn the_next_pipeline_reuses_the_buffers_of_the_last() {
    let chunk = ChunkSize::new(16 << 10).unwrap();
    let key = Arc::new(FileKey::from_bytes(&[3u8; 32]));
    let pool = CipherPool::new(2).unwrap();
    let layout = ChunkLayout::new(6 * (16 << 10) + 100, chunk);
    let file = || {
        SealPipeline::new(
            pool.clone(),
            key.clone(),
            layout,
            0,
            4,
            Arc::new(|i: u64, buf: &mut [u8]| {
                buf[..8].copy_from_slice(&i.to_le_bytes());
                Ok(())
            }),
        )
        .map(|c| c.unwrap().len())
        .sum::<usize>()
    };
    let before = BIG_ALLOCS.load(Ordering::SeqCst);
    let first = file();
    let first_big = BIG_ALLOCS.load(Ordering::SeqCst) - before;
    let before = BIG_ALLOCS.load(Ordering::SeqCst);
    let second = file();
    let second_big = BIG_ALLOCS.load(Ordering::SeqCst) - before;
    assert_eq!(first, second);
    assert!(first_big >= 1, "the first file made its buffers");
    assert_eq!(
        second_big, 0,
        "the second file allocated {second_big} chunk buffers"
    );
}
