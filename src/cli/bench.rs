//! `conduit bench ...` handlers.

use clap::{Args, Subcommand};

use crate::bench::transfer::{DEFAULT_TRANSFER_BYTES, TransferBenchConfig, TransferReport};
use crate::bench::{self, CipherBenchConfig, CipherReport, DEFAULT_CIPHER_BYTES};
use crate::crypto::stream::{ChunkSize, DEFAULT_CHUNK_SIZE};
use crate::crypto::suite::{Suite, SuitePolicy};

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// AEAD and STREAM seal/open throughput against the bare AEAD call, and BLAKE3.
    Cipher(CipherArgs),
    /// Transfer throughput on loopback (direct and relayed) against raw QUIC, with CPU
    /// per party and the relay's memory.
    Transfer(TransferArgs),
    /// The relay's datagram switch alone: wrapped datagrams through a relay process with
    /// no endpoints (packets/s, GiB/s, the relay's CPU per GiB and per core).
    Relay(RelayArgs),
    /// One side of the raw-QUIC baseline (run by `bench transfer`).
    #[command(hide = true, subcommand)]
    RawPeer(RawPeer),
}

/// Options of `bench transfer`.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Bytes per measurement.
    #[arg(long, default_value_t = DEFAULT_TRANSFER_BYTES)]
    size: u64,
    /// Files the bytes are split into (a tree of equal files; the raw runs move the same
    /// bytes on one stream).
    #[arg(long, default_value_t = 1)]
    files: u64,
    /// Directory for the source and received files [default: /dev/shm if present].
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
    /// Rounds of the five measurements, interleaved; each figure is the fastest of its
    /// rounds (other work on the machine only slows a run down).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
    /// STREAM suite of the conduit runs: aes-256-gcm or chacha20-poly1305 [default: the
    /// one a transfer on this machine chooses].
    #[arg(long, value_name = "SUITE")]
    suite: Option<SuitePolicy>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Options of `bench relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Bytes of wrapped datagrams to push.
    #[arg(long, default_value_t = crate::bench::relay::DEFAULT_RELAY_BYTES,
          value_parser = crate::cli::at_least_one::<u64>)]
    size: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// The raw-QUIC peers.
#[derive(Debug, Subcommand)]
pub enum RawPeer {
    /// Receive one stream and report.
    Recv(RawPeerArgs),
    /// Send `--size` bytes on one stream and report.
    Send(RawPeerArgs),
}

/// Where a raw peer meets the other.
#[derive(Debug, Args)]
pub struct RawPeerArgs {
    /// Listen here (receiver, direct).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Connect here (sender, direct).
    #[arg(long)]
    direct: Option<std::net::SocketAddr>,
    /// Meet at this relay.
    #[arg(long)]
    relay: Option<String>,
    /// The relay's certificate SHA-256.
    #[arg(long)]
    relay_pin: Option<String>,
    /// The rendezvous id at the relay (64 hex digits).
    #[arg(long)]
    rendezvous: Option<String>,
    /// Bytes to send (from memory).
    #[arg(long, default_value_t = 0, conflicts_with = "file")]
    size: u64,
    /// Send these files' contents instead, one after the other; a directory stands for
    /// its files, by name (sender).
    #[arg(long)]
    file: Vec<std::path::PathBuf>,
    /// Write what arrives to this new file, fsynced (receiver).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// Options of `bench cipher`.
#[derive(Debug, Args)]
pub struct CipherArgs {
    /// Bytes per measurement.
    #[arg(long, default_value_t = DEFAULT_CIPHER_BYTES,
          value_parser = crate::cli::at_least_one::<u64>)]
    size: u64,
    /// STREAM chunk size in bytes (a power of two from 16384 to 4194304).
    #[arg(long, default_value_t = u64::from(DEFAULT_CHUNK_SIZE.get()),
          value_parser = crate::cli::chunk_size)]
    chunk_size: u64,
    /// Worker threads for the N-thread runs (default: all cores).
    #[arg(long, value_parser = crate::cli::at_least_one::<usize>)]
    threads: Option<usize>,
    /// STREAM suite to measure: aes-256-gcm, chacha20-poly1305, or auto (the one a
    /// transfer on this machine chooses); repeat it to measure several, one table (or
    /// JSON line) each [default: auto].
    #[arg(long, value_name = "SUITE")]
    suite: Vec<SuitePolicy>,
    /// Print one JSON object (per suite) instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Cipher(args) => cipher(args),
        BenchCommand::Transfer(args) => transfer(args),
        BenchCommand::Relay(args) => relay(args),
        BenchCommand::RawPeer(peer) => raw_peer(peer),
    }
}

fn cipher(args: CipherArgs) -> anyhow::Result<()> {
    // --chunk-size, --size and --threads were checked as they were parsed (exit code 2).
    let chunk_size = ChunkSize::new(args.chunk_size)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let suites: Vec<Suite> = if args.suite.is_empty() {
        vec![SuitePolicy::Auto.local_choice()]
    } else {
        args.suite.iter().map(|p| p.local_choice()).collect()
    };
    for (i, suite) in suites.into_iter().enumerate() {
        let report = bench::cipher(CipherBenchConfig {
            size: args.size,
            chunk_size,
            threads,
            suite,
        })?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            if i > 0 {
                println!();
            }
            print_table(&report);
        }
    }
    Ok(())
}

fn print_table(r: &CipherReport) {
    println!(
        "bench cipher: {} ({}), {} MiB per run, chunk {} KiB, best of {}",
        r.suite,
        r.aead_backend,
        r.size_bytes >> 20,
        r.chunk_size >> 10,
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

fn relay(args: RelayArgs) -> anyhow::Result<()> {
    let r = crate::bench::relay::relay(&std::env::current_exe()?, args.size)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "bench relay: {} datagrams of {} bytes pushed through the switch on loopback",
        r.sent_packets, r.datagram_bytes
    );
    println!(
        "forwarded {} ({:.1} %) in {:.2} s: {:.0} packets/s, {:.2} GiB/s",
        r.forwarded_packets,
        100.0 * r.forwarded_packets as f64 / (r.sent_packets.max(1)) as f64,
        r.seconds,
        r.packets_per_s,
        r.gib_per_s
    );
    println!(
        "relay CPU {:.2} s: {:.2} s per GiB; per core {:.2} GiB/s, {:.0} packets/s; peak RSS {} MiB",
        r.relay_cpu_s,
        r.relay_cpu_s_per_gib,
        r.gib_per_core_s,
        r.packets_per_core_s,
        r.relay_peak_rss_bytes >> 20
    );
    Ok(())
}

fn transfer(args: TransferArgs) -> anyhow::Result<()> {
    let report = bench::transfer::transfer(&TransferBenchConfig {
        size: args.size,
        files: args.files,
        dir: args.dir,
        exe: std::env::current_exe()?,
        runs: args.runs,
        suite: args.suite.unwrap_or_default().local_choice(),
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_transfer(&report);
    }
    Ok(())
}

fn print_transfer(r: &TransferReport) {
    println!(
        "bench transfer: {} bytes in {} file(s) per run on loopback, suite {}, files in {}, fastest of {} run(s) each",
        r.size_bytes, r.files, r.suite, r.dir, r.runs
    );
    println!(
        "{:<34} {:>10} {:>12} {:>12} {:>12}",
        "", "MB/s", "sender s/GB", "receiver s/GB", "relay s/GB"
    );
    println!(
        "{:<34} {:>10.0} {:>12.2} {:>12.2} {:>12}",
        "(a) raw QUIC, direct",
        r.raw_quinn_mbps,
        r.raw_sender_cpu_s_per_gb,
        r.raw_receiver_cpu_s_per_gb,
        "-"
    );
    println!(
        "{:<34} {:>10.0} {:>12.2} {:>12.2} {:>12}",
        "(b) conduit, direct", r.direct_mbps, r.sender_cpu_s_per_gb, r.receiver_cpu_s_per_gb, "-"
    );
    if let Some(one) = r.direct_single_file_mbps {
        println!(
            "{:<34} {:>10.0}   ({} files / one file: {:.2})",
            "(b) conduit, direct, one file",
            one,
            r.files,
            r.files_vs_single_file.unwrap_or_default()
        );
    }
    println!(
        "{:<34} {:>10.0} {:>12} {:>12} {:>12.2}",
        "(c) conduit, through the relay", r.relayed_mbps, "", "", r.relay_cpu_s_per_gb
    );
    println!(
        "{:<34} {:>10.0} {:>12} {:>12} {:>12.2}",
        "(d) raw QUIC, through the relay", r.raw_relay_mbps, "", "", r.raw_relay_cpu_s_per_gb
    );
    println!(
        "{:<34} {:>10.0} {:>12.2} {:>12.2} {:>12}",
        "(e) raw QUIC moving the files",
        r.raw_files_mbps,
        r.raw_files_sender_cpu_s_per_gb,
        r.raw_files_receiver_cpu_s_per_gb,
        "-"
    );
    println!(
        "STREAM seal 1 thread {:.0} MB/s, BLAKE3 1 thread {:.0} MB/s: ideal direct {:.0} MB/s from (a), {:.0} MB/s from (e)",
        r.stream_seal_1t_mbps,
        r.blake3_1t_mbps,
        r.ideal_direct_mbps,
        r.ideal_direct_with_files_mbps
    );
    println!(
        "direct / ideal {:.2} (with files {:.2})   direct / raw {:.2}   relayed / direct {:.2}   relay CPU / raw legs {:.2}   relay peak RSS {:.1} MiB",
        r.direct_vs_ideal,
        r.direct_vs_ideal_with_files,
        r.direct_vs_raw,
        r.relayed_vs_direct,
        r.relay_cpu_vs_raw_legs,
        r.relay_peak_rss_bytes as f64 / (1u64 << 20) as f64
    );
}

fn raw_peer(peer: RawPeer) -> anyhow::Result<()> {
    use crate::bench::raw;
    use crate::relay::client::RelayOptions;
    use crate::relay::hello::Role;
    use serde_json::json;
    let (send, a) = match peer {
        RawPeer::Send(a) => (true, a),
        RawPeer::Recv(a) => (false, a),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let relay = match (&a.relay, &a.relay_pin, &a.rendezvous) {
            (Some(r), Some(pin), Some(rv)) => Some((
                RelayOptions {
                    relays: RelayOptions::parse_list(r)?,
                    trust: crate::transport::RelayTrust::Pin(
                        crate::relay::tokens::parse_sha256(pin)
                            .ok_or_else(|| anyhow::anyhow!("bad pin"))?,
                    ),
                    token: vec![],
                    wait: std::time::Duration::from_secs(30),
                    switch: true,
                    // Raw QUIC through the relay measures the relay.
                    punch: false,
                    idle: crate::transport::IDLE_TIMEOUT,
                },
                crate::relay::tokens::parse_sha256(rv)
                    .ok_or_else(|| anyhow::anyhow!("bad rendezvous"))?,
            )),
            _ => None,
        };
        let (endpoint, conn) = match (send, relay, a.listen, a.direct) {
            (_, Some((opts, rv)), _, _) => {
                if !send {
                    println!("{}", json!({"event": "joining"}));
                }
                let role = if send { Role::Connect } else { Role::Listen };
                raw::join_relay(&opts, role, rv).await?
            }
            (false, None, Some(listen), _) => {
                let ep = crate::transport::direct_server(listen)?;
                println!(
                    "{}",
                    json!({"event": "listening", "addr": ep.local_addr()?.to_string()})
                );
                let conn = ep
                    .accept()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("closed"))?
                    .await?;
                (ep, conn)
            }
            (true, None, _, Some(addr)) => raw::connect_direct(addr).await?,
            _ => anyhow::bail!(
                "raw-peer: --listen/--direct or --relay with --relay-pin and --rendezvous"
            ),
        };
        let report = match (send, &a.out) {
            (true, _) if !a.file.is_empty() => raw::send_files(conn, &a.file).await?,
            (true, _) => raw::send(conn, a.size).await?,
            (false, Some(out)) => raw::receive_to_file(conn, out).await?,
            (false, None) => raw::receive(conn).await?,
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
        anyhow::Ok(report)
    })?;
    let mut v = serde_json::to_value(&report)?;
    v["event"] = "done".into();
    println!("{v}");
    Ok(())
}
