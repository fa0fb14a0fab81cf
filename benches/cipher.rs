//! Criterion benches of the cipher path over chunk sizes 16 KiB to 4 MiB: the bare AEAD
//! call, the STREAM pipeline on one worker and on all cores, and BLAKE3.
//! `cargo bench --bench cipher`; results and the default chunk size choice are in
//! docs/BENCHMARKS.md.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use phi_conduit::crypto::aead::AeadKey;
use phi_conduit::crypto::pipeline::{CipherPool, SealPipeline};
use phi_conduit::crypto::stream::{
    ALLOWED_CHUNK_SIZES, ChunkLayout, ChunkSize, FileKey, chunk_nonce,
};

/// Bytes per iteration.
const BYTES: u64 = 32 << 20;

fn stamp(index: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&index.to_le_bytes()[..n]);
    Ok(())
}

fn cipher(c: &mut Criterion) {
    let key = Arc::new(FileKey::from_bytes(&[7; 32]));
    let raw = AeadKey::new(&[7; 32]);
    let pool1 = CipherPool::new(1).unwrap();
    let pool_n = CipherPool::with_all_cores().unwrap();
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Bytes(BYTES));
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    for &size in &ALLOWED_CHUNK_SIZES {
        let chunk = ChunkSize::new(u64::from(size)).unwrap();
        let layout = ChunkLayout::new(BYTES, chunk);
        let label = format!("{}KiB", size >> 10);
        g.bench_with_input(
            BenchmarkId::new("bare_aead", &label),
            &layout,
            |b, layout| {
                let mut region = vec![0u8; 16 * chunk.bytes()];
                b.iter(|| {
                    for i in 0..layout.count() {
                        let at = (i as usize % 16) * chunk.bytes();
                        let buf = &mut region[at..at + layout.plaintext_len(i)];
                        std::hint::black_box(raw.seal_in_place(
                            &chunk_nonce(i, layout.is_last(i)),
                            &[],
                            buf,
                        ));
                    }
                })
            },
        );
        for (name, pool) in [("stream_1t", &pool1), ("stream_nt", &pool_n)] {
            g.bench_with_input(BenchmarkId::new(name, &label), &layout, |b, layout| {
                b.iter(|| {
                    let p = SealPipeline::new(
                        pool.clone(),
                        key.clone(),
                        *layout,
                        0,
                        16,
                        Arc::new(stamp),
                    );
                    for chunk in p {
                        std::hint::black_box(chunk.unwrap());
                    }
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("blake3");
    g.throughput(Throughput::Bytes(BYTES));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(2));
    let data = vec![0x5a_u8; BYTES as usize];
    g.bench_function("1t", |b| {
        b.iter(|| std::hint::black_box(blake3::hash(&data)))
    });
    g.finish();
}

criterion_group!(benches, cipher);
criterion_main!(benches);
