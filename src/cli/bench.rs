//! `conduit bench ...` handlers.

use clap::{Args, Subcommand};

use crate::bench::{self, CipherBenchConfig, CipherReport, DEFAULT_CIPHER_BYTES};
use crate::crypto::stream::{ChunkSize, DEFAULT_CHUNK_SIZE};

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// AEAD and STREAM seal/open throughput against the bare AEAD call, and BLAKE3.
    Cipher(CipherArgs),
}

/// Options of `bench cipher`.
#[derive(Debug, Args)]
pub struct CipherArgs {
    /// Bytes per measurement.
    #[arg(long, default_value_t = DEFAULT_CIPHER_BYTES)]
    size: u64,
    /// STREAM chunk size in bytes (a power of two from 16384 to 4194304).
    #[arg(long, default_value_t = u64::from(DEFAULT_CHUNK_SIZE.get()))]
    chunk_size: u64,
    /// Worker threads for the N-thread runs (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Cipher(args) => cipher(args),
    }
}

fn cipher(args: CipherArgs) -> anyhow::Result<()> {
    let chunk_size = ChunkSize::new(args.chunk_size)?;
    if args.size == 0 {
        anyhow::bail!("--size must be at least one byte");
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    let report = bench::cipher(CipherBenchConfig {
        size: args.size,
        chunk_size,
        threads,
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &CipherReport) {
    println!(
        "bench cipher: {} MiB per run, chunk {} KiB, backend {}, best of {}",
        r.size_bytes >> 20,
        r.chunk_size >> 10,
        r.aead_backend,
        bench::REPEATS
    );
    println!("{:<28} {:>8} {:>10}", "", "GB/s", "ratio");
    let rows = [
        (
            "bare AEAD seal (ceiling)",
            r.bare_seal_gbps,
            String::from("1.00"),
        ),
        (
            "STREAM seal, 1 thread",
            r.stream_seal_1t_gbps,
            format!("{:.2} x bare", r.seal_1t_vs_bare),
        ),
        (
            &*format!("STREAM seal, {} threads", r.threads),
            r.stream_seal_nt_gbps,
            format!("{:.2} x 1t", r.seal_nt_vs_1t),
        ),
        (
            "bare AEAD open (ceiling)",
            r.bare_open_gbps,
            String::from("1.00"),
        ),
        (
            "STREAM open, 1 thread",
            r.stream_open_1t_gbps,
            format!("{:.2} x bare", r.open_1t_vs_bare),
        ),
        (
            &*format!("STREAM open, {} threads", r.threads),
            r.stream_open_nt_gbps,
            format!("{:.2} x 1t", r.open_nt_vs_1t),
        ),
        ("BLAKE3, 1 thread", r.blake3_1t_gbps, String::new()),
    ];
    for (name, gbps, ratio) in rows {
        println!("{name:<28} {gbps:>8.2} {ratio:>10}");
    }
}
