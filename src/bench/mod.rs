//! `conduit bench`: throughput measured against raw baselines in the same run.
//!
//! Machines are shared and noisy, so every figure is reported next to a baseline
//! measured in the same invocation, and each measurement is the best of
//! [`REPEATS`] runs (the least disturbed one). GB/s are decimal (10^9 bytes per second).
//!
//! `bench cipher` measures one STREAM suite (`--suite`; by default the one a transfer on
//! this machine would choose), over the same bytes:
//!
//! - **bare seal**: one `AeadKey::seal_in_place` call per chunk (of the same suite and
//!   backend), in place, on one
//!   thread, walking a region as large as the pipeline's buffer pool (the ceiling);
//! - **STREAM seal** on 1 and on N worker threads: the [`SealPipeline`] with its real
//!   per-chunk work (position nonce, in-order delivery, buffer reclaim, `Bytes` out),
//!   whose source only stamps the chunk index (file IO is excluded here; `bench
//!   transfer` includes it);
//! - **bare open** and **STREAM open**: each chunk's ciphertext is copied from a
//!   pre-sealed file image into the working buffer (as a receiver copies it out of the
//!   network stack) and opened in place; in the pipeline the worker that opens the
//!   chunk also does its copy, so both sides do the same work per chunk;
//! - **BLAKE3** on one thread over the same bytes (the other per-byte pass of the data
//!   path).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

pub mod proc;
pub mod raw;
pub mod relay;
pub mod transfer;

use crate::crypto::aead::{self, AeadKey, NONCE_LEN, RandomIvKey, TAG_LEN};
use crate::crypto::pipeline::{CipherPool, OpenPipeline, PipelineError, SealPipeline};
use crate::crypto::stream::{ChunkLayout, ChunkSize, FileKey, chunk_nonce};
use crate::crypto::suite::Suite;

/// Runs per measurement; the fastest counts.
pub const REPEATS: usize = 5;
/// Default bytes per measurement for `bench cipher`.
pub const DEFAULT_CIPHER_BYTES: u64 = 256 << 20;
/// Pool buffers per pipeline in the benchmark (and the bare baseline's region, in chunks).
pub const BENCH_BUFFERS: usize = 16;

/// Errors of the benchmarks.
#[derive(Debug, Error)]
pub enum BenchError {
    /// The pipeline failed (it should not on self-made data).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// IO failed (starting workers, files, child processes).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A party of `bench transfer` failed.
    #[error("bench transfer: {0}")]
    Transfer(String),
    /// A size that does not fit this machine's address space.
    #[error("benchmark size {0} is too large")]
    TooLarge(u64),
}

/// Parameters of `bench cipher`.
#[derive(Debug, Clone, Copy)]
pub struct CipherBenchConfig {
    /// Bytes per measurement.
    pub size: u64,
    /// STREAM chunk size.
    pub chunk_size: ChunkSize,
    /// Worker threads of the N-thread measurements.
    pub threads: usize,
    /// The STREAM suite measured.
    pub suite: Suite,
}

/// Results of `bench cipher` (also its `--json` object).
#[derive(Debug, Clone, Serialize)]
pub struct CipherReport {
    /// Bytes per measurement.
    pub size_bytes: u64,
    /// STREAM chunk size in bytes.
    pub chunk_size: u32,
    /// Worker threads of the N-thread measurements.
    pub threads: usize,
    /// The STREAM suite measured (`aes-256-gcm` or `chacha20-poly1305`).
    pub suite: &'static str,
    /// AEAD backend of that suite compiled in (`aws-lc-rs`, `ring` or `rustcrypto`).
    pub aead_backend: &'static str,
    /// Bare AEAD seal in place, one thread.
    pub bare_seal_gbps: f64,
    /// STREAM seal pipeline, one worker.
    pub stream_seal_1t_gbps: f64,
    /// STREAM seal pipeline, `threads` workers.
    pub stream_seal_nt_gbps: f64,
    /// Bare AEAD open in place (after the copy in), one thread.
    pub bare_open_gbps: f64,
    /// STREAM open pipeline, one worker.
    pub stream_open_1t_gbps: f64,
    /// STREAM open pipeline, `threads` workers.
    pub stream_open_nt_gbps: f64,
    /// BLAKE3, one thread.
    pub blake3_1t_gbps: f64,
    /// `stream_seal_1t / bare_seal`.
    pub seal_1t_vs_bare: f64,
    /// `stream_open_1t / bare_open`.
    pub open_1t_vs_bare: f64,
    /// `stream_seal_nt / stream_seal_1t`.
    pub seal_nt_vs_1t: f64,
    /// `stream_open_nt / stream_open_1t`.
    pub open_nt_vs_1t: f64,
}

/// Runs `bench cipher`.
pub fn cipher(cfg: CipherBenchConfig) -> Result<CipherReport, BenchError> {
    let chunk = cfg.chunk_size;
    let size = cfg.size.max(u64::from(chunk.get()));
    let len = usize::try_from(size).map_err(|_| BenchError::TooLarge(size))?;
    let layout = ChunkLayout::for_suite(size, chunk, cfg.suite);
    let key = Arc::new(FileKey::with_suite(cfg.suite, &[0x42; 32], chunk));
    let raw = Bare::new(cfg.suite, &[0x42; 32]);
    let pool1 = CipherPool::new(1)?;
    let pool_n = CipherPool::new(cfg.threads.max(1))?;

    // The sealed file image the open measurements read from.
    let sealed = Arc::new(seal_image(&pool_n, &key, layout)?);

    let mut best = [Duration::MAX; 7];
    for _ in 0..REPEATS {
        let runs = [
            time(|| bare_seal(&raw, layout)),
            time(|| stream_seal(&pool1, &key, layout)),
            time(|| stream_seal(&pool_n, &key, layout)),
            time(|| bare_open(&raw, layout, &sealed)),
            time(|| stream_open(&pool1, &key, layout, &sealed)),
            time(|| stream_open(&pool_n, &key, layout, &sealed)),
            time(|| {
                let mut h = blake3::Hasher::new();
                h.update(&sealed[..len]);
                std::hint::black_box(h.finalize());
                Ok(())
            }),
        ];
        for (b, r) in best.iter_mut().zip(runs) {
            *b = (*b).min(r?);
        }
    }
    let gbps = |d: Duration| size as f64 / d.as_secs_f64() / 1e9;
    let [bs, s1, sn, bo, o1, on, b3] = best.map(gbps);
    Ok(CipherReport {
        size_bytes: size,
        chunk_size: chunk.get(),
        threads: pool_n.threads(),
        suite: cfg.suite.name(),
        aead_backend: aead::backend_name(cfg.suite),
        bare_seal_gbps: bs,
        stream_seal_1t_gbps: s1,
        stream_seal_nt_gbps: sn,
        bare_open_gbps: bo,
        stream_open_1t_gbps: o1,
        stream_open_nt_gbps: on,
        blake3_1t_gbps: b3,
        seal_1t_vs_bare: s1 / bs,
        open_1t_vs_bare: o1 / bo,
        seal_nt_vs_1t: sn / s1,
        open_nt_vs_1t: on / o1,
    })
}

fn time(f: impl FnOnce() -> Result<(), BenchError>) -> Result<Duration, BenchError> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

/// Seals every chunk of `layout` into one contiguous wire image.
fn seal_image(
    pool: &Arc<CipherPool>,
    key: &Arc<FileKey>,
    layout: ChunkLayout,
) -> Result<Vec<u8>, BenchError> {
    let total = usize::try_from(layout.sealed_total())
        .map_err(|_| BenchError::TooLarge(layout.sealed_total()))?;
    let mut image = Vec::with_capacity(total);
    let pipeline = stamped_sealer(pool, key, layout);
    for chunk in pipeline {
        image.extend_from_slice(&chunk?);
    }
    Ok(image)
}

/// The benchmark's plaintext source: stamps the chunk index into the buffer.
fn stamp(index: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&index.to_le_bytes()[..n]);
    Ok(())
}

/// The bare AEAD call of a suite: with the position as nonce, or with a module IV (the
/// position then being the associated data).
enum Bare {
    Position(AeadKey),
    RandomIv(RandomIvKey),
}

impl Bare {
    fn new(suite: Suite, key: &[u8; 32]) -> Self {
        match suite {
            Suite::Aes256GcmRandomIv => Bare::RandomIv(RandomIvKey::new(key)),
            Suite::ChaCha20Poly1305 | Suite::Aes256Gcm => {
                Bare::Position(AeadKey::with_suite(suite, key))
            }
        }
    }
}

fn bare_seal(key: &Bare, layout: ChunkLayout) -> Result<(), BenchError> {
    let c = layout.chunk_size().bytes();
    let mut region = vec![0u8; BENCH_BUFFERS * c];
    for i in 0..layout.count() {
        let slot = (i as usize % BENCH_BUFFERS) * c;
        let buf = &mut region[slot..slot + layout.plaintext_len(i)];
        let position: [u8; NONCE_LEN] = chunk_nonce(i, layout.is_last(i));
        match key {
            Bare::Position(k) => {
                std::hint::black_box(k.seal_in_place(&position, &[], buf));
            }
            Bare::RandomIv(k) => {
                let sealed = k.seal_in_place(&position, buf).map_err(|source| {
                    PipelineError::Stream(crate::crypto::stream::StreamError::Iv {
                        index: i,
                        source,
                    })
                })?;
                std::hint::black_box(sealed);
            }
        }
    }
    std::hint::black_box(&region);
    Ok(())
}

/// A seal pipeline over the benchmark's stamped source.
fn stamped_sealer(pool: &Arc<CipherPool>, key: &Arc<FileKey>, layout: ChunkLayout) -> SealPipeline {
    SealPipeline::new(
        pool.clone(),
        key.clone(),
        layout,
        0,
        BENCH_BUFFERS,
        Arc::new(stamp),
    )
}

fn stream_seal(
    pool: &Arc<CipherPool>,
    key: &Arc<FileKey>,
    layout: ChunkLayout,
) -> Result<(), BenchError> {
    for chunk in stamped_sealer(pool, key, layout) {
        std::hint::black_box(chunk?);
    }
    Ok(())
}

fn bare_open(key: &Bare, layout: ChunkLayout, image: &[u8]) -> Result<(), BenchError> {
    let c = layout.sealed_chunk_len();
    let mut region = vec![0u8; BENCH_BUFFERS * c];
    let mut at = 0usize;
    for i in 0..layout.count() {
        let n = layout.sealed_len(i);
        let slot = (i as usize % BENCH_BUFFERS) * c;
        let buf = &mut region[slot..slot + n];
        buf.copy_from_slice(&image[at..at + n]);
        at += n;
        let position = chunk_nonce(i, layout.is_last(i));
        let opened = match key {
            Bare::Position(k) => {
                let (body, tag) = buf.split_at_mut(n - TAG_LEN);
                let mut t = [0u8; TAG_LEN];
                t.copy_from_slice(tag);
                k.open_in_place(&position, &[], body, &t)
            }
            Bare::RandomIv(k) => {
                let (sealed, iv) = buf.split_at_mut(n - NONCE_LEN);
                let mut v = [0u8; NONCE_LEN];
                v.copy_from_slice(iv);
                k.open_in_place(&v, &position, sealed)
            }
        };
        opened.map_err(|_| {
            PipelineError::Stream(crate::crypto::stream::StreamError::Tampered { index: i })
        })?;
    }
    std::hint::black_box(&region);
    Ok(())
}

fn stream_open(
    pool: &Arc<CipherPool>,
    key: &Arc<FileKey>,
    layout: ChunkLayout,
    image: &Arc<Vec<u8>>,
) -> Result<(), BenchError> {
    let image = Arc::clone(image);
    let sealed_chunk = layout.sealed_chunk_len() as u64;
    let source = Arc::new(move |index: u64, buf: &mut [u8]| {
        let at = (index * sealed_chunk) as usize;
        buf.copy_from_slice(&image[at..at + buf.len()]);
        Ok(())
    });
    let pipeline =
        OpenPipeline::positional(pool.clone(), key.clone(), layout, 0, BENCH_BUFFERS, source);
    for chunk in pipeline {
        std::hint::black_box(chunk?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_bench_runs_and_reports_consistent_numbers() {
        let r = cipher(CipherBenchConfig {
            size: 4 << 20,
            chunk_size: ChunkSize::new(64 << 10).unwrap(),
            threads: 2,
            suite: Suite::ChaCha20Poly1305,
        })
        .unwrap();
        assert_eq!(r.suite, "chacha20-poly1305");
        assert_eq!(r.size_bytes, 4 << 20);
        assert_eq!(r.chunk_size, 64 << 10);
        assert_eq!(r.threads, 2);
        for v in [
            r.bare_seal_gbps,
            r.stream_seal_1t_gbps,
            r.stream_open_nt_gbps,
            r.blake3_1t_gbps,
        ] {
            assert!(v.is_finite() && v > 0.0);
        }
        assert!((r.seal_1t_vs_bare - r.stream_seal_1t_gbps / r.bare_seal_gbps).abs() < 1e-9);
    }
}
