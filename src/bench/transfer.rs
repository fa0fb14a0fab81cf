//! `conduit bench transfer`: the whole stack against raw-QUIC baselines, in one run on
//! loopback, each party a process of its own (this binary), so that CPU time and memory
//! are measured per party:
//!
//! - (a) raw QUIC: plain bytes on one stream, the product's transport configuration, no
//!   end-to-end layer (`bench raw-peer`): the transport's ceiling;
//! - (b) direct: `conduit send` to `conduit receive --listen`, source in the page cache,
//!   files written and fsynced at the destination;
//! - (c) relayed: the same through `conduit relay`;
//! - (d) raw QUIC through the relay's datagram switch (one end-to-end connection): the relay's own ceiling;
//! - (e) raw QUIC moving the files: (a) reading the source files and writing and
//!   fsyncing the received bytes as the product does, still without the E2E layer;
//! - with `--files N` (N > 1), also (b) with the same bytes in one file, so that the
//!   many-files rate is compared with the single-file rate of the same run.
//!
//! The STREAM seal and BLAKE3 speeds on one thread are measured in the same run, giving
//! the CPU-bound ideal of a direct transfer: one cipher pass and one hash pass per byte
//! added on each side to what QUIC already costs, `1 / (1/raw + 1/seal_1t + 1/blake3_1t)`
//! (issue #5's formula), and the same with (e) in place of (a): the ideal of a transfer
//! that also reads and writes the files.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::Serialize;
use serde_json::Value;

use crate::bench::proc::{cpu_seconds, peak_rss_bytes};
use crate::bench::{BenchError, CipherBenchConfig};
use crate::crypto::identity::Identity;
use crate::crypto::stream::DEFAULT_CHUNK_SIZE;
use crate::crypto::suite::Suite;
use crate::home::Home;
use crate::peers::AddressBook;

/// Default bytes moved per measurement.
pub const DEFAULT_TRANSFER_BYTES: u64 = 1 << 30;
/// Most files a measurement may be split into.
pub const MAX_FILES: u64 = 100_000;

/// Options of `bench transfer`.
#[derive(Debug, Clone)]
pub struct TransferBenchConfig {
    /// Bytes moved per measurement.
    pub size: u64,
    /// Files the bytes are split into (1 to [`MAX_FILES`]).
    pub files: u64,
    /// Where source and received files go (default: /dev/shm when present, so that the
    /// storage device is not what is measured; else the temporary directory).
    pub dir: Option<PathBuf>,
    /// The `conduit` binary to run the parties with.
    pub exe: PathBuf,
    /// Rounds of measurements; each figure is the fastest of its rounds.
    pub runs: u32,
    /// The STREAM suite both parties are configured with (`[transfer] suite`).
    pub suite: Suite,
}

/// Results (also the `--json` object).
#[derive(Debug, Clone, Serialize)]
pub struct TransferReport {
    /// Bytes per measurement.
    pub size_bytes: u64,
    /// Files per measurement (the raw runs move the same bytes on one stream).
    pub files: u64,
    /// Rounds run; each figure (with its CPU times) is from the fastest run of its kind.
    pub runs: u32,
    /// The STREAM suite of the conduit runs (and of the seal rate below).
    pub suite: &'static str,
    /// Directory of the files.
    pub dir: String,
    /// (a) raw QUIC, direct.
    pub raw_quinn_mbps: f64,
    /// (b) whole stack, direct.
    pub direct_mbps: f64,
    /// (b) with the same bytes in one file (only when `files` > 1).
    pub direct_single_file_mbps: Option<f64>,
    /// `direct / direct_single_file` (only when `files` > 1).
    pub files_vs_single_file: Option<f64>,
    /// (c) whole stack through the relay.
    pub relayed_mbps: f64,
    /// (d) raw QUIC through the relay.
    pub raw_relay_mbps: f64,
    /// STREAM seal pipeline, one worker, same run.
    pub stream_seal_1t_mbps: f64,
    /// BLAKE3, one thread, same run.
    pub blake3_1t_mbps: f64,
    /// `1 / (1/raw_quinn + 1/stream_seal_1t + 1/blake3_1t)`.
    pub ideal_direct_mbps: f64,
    /// `direct / ideal_direct`.
    pub direct_vs_ideal: f64,
    /// (e) raw QUIC moving the files (read at the sender, written and fsynced at the
    /// receiver), no E2E layer.
    pub raw_files_mbps: f64,
    /// Same as [`Self::raw_sender_cpu_s_per_gb`], for (e).
    pub raw_files_sender_cpu_s_per_gb: f64,
    /// Same as [`Self::raw_receiver_cpu_s_per_gb`], for (e).
    pub raw_files_receiver_cpu_s_per_gb: f64,
    /// `1 / (1/raw_files + 1/stream_seal_1t + 1/blake3_1t)`.
    pub ideal_direct_with_files_mbps: f64,
    /// `direct / ideal_direct_with_files`.
    pub direct_vs_ideal_with_files: f64,
    /// `direct / raw_quinn`.
    pub direct_vs_raw: f64,
    /// `relayed / direct`.
    pub relayed_vs_direct: f64,
    /// CPU seconds per 10^9 bytes of the direct sender process.
    pub sender_cpu_s_per_gb: f64,
    /// Same, direct receiver.
    pub receiver_cpu_s_per_gb: f64,
    /// Same, the relay during (c).
    pub relay_cpu_s_per_gb: f64,
    /// Same, the relay during (d).
    pub raw_relay_cpu_s_per_gb: f64,
    /// Same, raw sender (a).
    pub raw_sender_cpu_s_per_gb: f64,
    /// Same, raw receiver (a).
    pub raw_receiver_cpu_s_per_gb: f64,
    /// `relay_cpu_s_per_gb / (raw_sender + raw_receiver)`.
    pub relay_cpu_vs_raw_legs: f64,
    /// The relay's peak resident memory over (c) and (d).
    pub relay_peak_rss_bytes: u64,
}

fn err(msg: impl Into<String>) -> BenchError {
    BenchError::Transfer(msg.into())
}

/// A party: a child process whose JSON lines are collected (killed when dropped).
pub(crate) struct Party {
    child: Child,
    lines: std::sync::mpsc::Receiver<Value>,
    what: &'static str,
}

impl Party {
    fn spawn(exe: &Path, what: &'static str, args: &[OsString]) -> Result<Self, BenchError> {
        // The relay's --dev-self-signed warning is expected here; other parties' stderr
        // (errors) stays visible.
        let stderr = if what.starts_with("relay") {
            Stdio::null()
        } else {
            Stdio::inherit()
        };
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()?;
        let out = child.stdout.take().ok_or_else(|| err("no stdout"))?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Party { child, lines, what })
    }

    /// The next line with `event` == `name`.
    fn event(&self, name: &str) -> Result<Value, BenchError> {
        loop {
            let v = self
                .lines
                .recv_timeout(std::time::Duration::from_secs(600))
                .map_err(|_| err(format!("{}: no {name:?} event", self.what)))?;
            if v["event"] == name {
                return Ok(v);
            }
        }
    }

    /// The `done` event, then a successful exit.
    fn done(mut self) -> Result<Value, BenchError> {
        let v = self.event("done");
        let status = self.child.wait()?;
        if !status.success() {
            return Err(err(format!("{} failed: {status}", self.what)));
        }
        v
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Party {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

fn home_args(home: &Path, rest: &[&str]) -> Vec<OsString> {
    let mut a = vec![OsString::from("--home"), home.as_os_str().to_owned()];
    a.extend(rest.iter().map(OsString::from));
    a
}

fn f64_of(v: &Value, key: &str) -> Result<f64, BenchError> {
    v[key]
        .as_f64()
        .ok_or_else(|| err(format!("missing {key} in {v}")))
}

/// One measured transfer: MB/s and the CPU seconds of sender and receiver.
struct Run {
    mbps: f64,
    sender_cpu: f64,
    receiver_cpu: f64,
}

/// Runs `bench transfer`.
pub fn transfer(cfg: &TransferBenchConfig) -> Result<TransferReport, BenchError> {
    if cfg.size == 0 {
        return Err(err("--size must be at least one byte"));
    }
    if cfg.files == 0 || cfg.files > MAX_FILES || cfg.files > cfg.size {
        return Err(err(
            "--files must be between 1 and 100000, and at most --size",
        ));
    }
    let base = match &cfg.dir {
        Some(d) => d.clone(),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    let dir = tempfile::Builder::new()
        .prefix("conduit-bench-")
        .tempdir_in(&base)?;
    let root = dir.path();
    let src = root.join("payload");
    std::fs::create_dir(&src)?;
    let mut xof = blake3::Hasher::new_derive_key("phi-conduit v1 bench payload").finalize_xof();
    for i in 0..cfg.files {
        let share = cfg.size / cfg.files + u64::from(i < cfg.size % cfg.files);
        write_payload(&src.join(format!("part-{i:06}.bin")), share, &mut xof)?;
    }
    // The same bytes in one file, for the single-file rate of the same run.
    let single = (cfg.files > 1)
        .then(|| -> Result<PathBuf, BenchError> {
            let dir = root.join("single");
            std::fs::create_dir(&dir)?;
            write_payload(&dir.join("payload.bin"), cfg.size, &mut xof)?;
            Ok(dir.join("payload.bin"))
        })
        .transpose()?;
    let (tx_home, rx_home) = (root.join("sender"), root.join("receiver"));
    homes(&tx_home, &rx_home)?;
    for home in [&tx_home, &rx_home] {
        std::fs::write(
            home.join(crate::config::FILE_NAME),
            format!("[transfer]\nsuite = \"{}\"\n", cfg.suite.name()),
        )?;
    }

    let cipher = crate::bench::cipher(CipherBenchConfig {
        size: cfg.size.min(256 << 20),
        chunk_size: DEFAULT_CHUNK_SIZE,
        threads: 1,
        suite: cfg.suite,
    })?;
    let seal = cipher.stream_seal_1t_gbps * 1000.0;
    let blake3 = cipher.blake3_1t_gbps * 1000.0;

    let exe = cfg.exe.as_path();
    let size = cfg.size.to_string();
    // Warm-up: on a virtual machine the first write to memory the guest has not touched
    // for a while can cost a fault in the hypervisor per page (seen here: the receiver's
    // copy into the page cache 10x slower, docs/BENCHMARKS.md). Writing and deleting a
    // file as large as the received one first lets the receivers' writes land on pages
    // the host already backs, as they would on a machine in steady use.
    warm_up(&root.join("warm-up"), cfg.size)?;

    // Rounds of (a), (e), (b), (c), (d), interleaved; each figure is the fastest of its
    // runs (other work on a shared host only ever slows a run down).
    let (mut raw, mut raw_files, mut direct) = (None, None, None);
    let mut direct_single = None;
    // The relay's runs, with the relay's CPU seconds.
    let (mut relayed, mut raw_relay) = (None::<(Run, f64)>, None::<(Run, f64)>);
    let mut relay_rss = 0u64;
    let faster = |best: &mut Option<Run>, run: Run| {
        if best.as_ref().is_none_or(|b| run.mbps > b.mbps) {
            *best = Some(run);
        }
    };
    for _ in 0..cfg.runs.max(1) {
        faster(&mut raw, raw_direct_run(exe, &size)?);
        faster(
            &mut raw_files,
            raw_files_run(exe, &src, &root.join("raw-out.bin"), cfg.size)?,
        );
        faster(
            &mut direct,
            direct_run(exe, &tx_home, &rx_home, &src, &root.join("out"))?,
        );
        if let Some(one) = &single {
            faster(
                &mut direct_single,
                direct_run(exe, &tx_home, &rx_home, one, &root.join("out"))?,
            );
        }
        for (slot, raw_quic) in [(&mut relayed, false), (&mut raw_relay, true)] {
            let (run, cpu, rss) = if raw_quic {
                raw_relayed_run(exe, &size)?
            } else {
                relayed_run(exe, &tx_home, &rx_home, &src, &root.join("out"))?
            };
            relay_rss = relay_rss.max(rss);
            if slot.as_ref().is_none_or(|(b, _)| run.mbps > b.mbps) {
                *slot = Some((run, cpu));
            }
        }
    }
    let missing = || err("no run");
    let (raw, raw_files, direct) = (
        raw.ok_or_else(missing)?,
        raw_files.ok_or_else(missing)?,
        direct.ok_or_else(missing)?,
    );
    let ((relayed, relay_cpu), (raw_relay, raw_relay_cpu)) =
        (relayed.ok_or_else(missing)?, raw_relay.ok_or_else(missing)?);

    let gb = cfg.size as f64 / 1e9;
    let ideal = 1.0 / (1.0 / raw.mbps + 1.0 / seal + 1.0 / blake3);
    let ideal_files = 1.0 / (1.0 / raw_files.mbps + 1.0 / seal + 1.0 / blake3);
    let raw_legs = (raw.sender_cpu + raw.receiver_cpu) / gb;
    Ok(TransferReport {
        size_bytes: cfg.size,
        files: cfg.files,
        runs: cfg.runs.max(1),
        suite: cfg.suite.name(),
        dir: base.display().to_string(),
        raw_quinn_mbps: raw.mbps,
        direct_mbps: direct.mbps,
        direct_single_file_mbps: direct_single.as_ref().map(|r| r.mbps),
        files_vs_single_file: direct_single.as_ref().map(|r| direct.mbps / r.mbps),
        relayed_mbps: relayed.mbps,
        raw_relay_mbps: raw_relay.mbps,
        stream_seal_1t_mbps: seal,
        blake3_1t_mbps: blake3,
        ideal_direct_mbps: ideal,
        direct_vs_ideal: direct.mbps / ideal,
        raw_files_mbps: raw_files.mbps,
        raw_files_sender_cpu_s_per_gb: raw_files.sender_cpu / gb,
        raw_files_receiver_cpu_s_per_gb: raw_files.receiver_cpu / gb,
        ideal_direct_with_files_mbps: ideal_files,
        direct_vs_ideal_with_files: direct.mbps / ideal_files,
        direct_vs_raw: direct.mbps / raw.mbps,
        relayed_vs_direct: relayed.mbps / direct.mbps,
        sender_cpu_s_per_gb: direct.sender_cpu / gb,
        receiver_cpu_s_per_gb: direct.receiver_cpu / gb,
        relay_cpu_s_per_gb: relay_cpu / gb,
        raw_relay_cpu_s_per_gb: raw_relay_cpu / gb,
        raw_sender_cpu_s_per_gb: raw.sender_cpu / gb,
        raw_receiver_cpu_s_per_gb: raw.receiver_cpu / gb,
        relay_cpu_vs_raw_legs: (relay_cpu / gb) / raw_legs,
        relay_peak_rss_bytes: relay_rss,
    })
}

/// (a) raw QUIC, direct.
fn raw_direct_run(exe: &Path, size: &str) -> Result<Run, BenchError> {
    let rx = Party::spawn(
        exe,
        "raw receiver",
        &args(&["bench", "raw-peer", "recv", "--listen", "127.0.0.1:0"]),
    )?;
    let addr = listening_addr(&rx)?;
    let tx = Party::spawn(
        exe,
        "raw sender",
        &args(&[
            "bench", "raw-peer", "send", "--direct", &addr, "--size", size,
        ]),
    )?;
    finish(tx, rx)
}

/// (e) raw QUIC moving the files of `src` into one file at `out` (removed afterwards).
fn raw_files_run(exe: &Path, src: &Path, out: &Path, size: u64) -> Result<Run, BenchError> {
    let rx = Party::spawn(exe, "raw file receiver", &{
        let mut a = args(&[
            "bench",
            "raw-peer",
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--out",
        ]);
        a.push(out.as_os_str().to_owned());
        a
    })?;
    let addr = listening_addr(&rx)?;
    // The payload directory stands for its files (a list of 100,000 paths would not fit
    // in a command line).
    let tx = Party::spawn(exe, "raw file sender", &{
        let mut a = args(&["bench", "raw-peer", "send", "--direct", &addr, "--file"]);
        a.push(src.as_os_str().to_owned());
        a
    })?;
    let run = finish(tx, rx)?;
    if std::fs::metadata(out)?.len() != size {
        return Err(err("raw file run: the received file has the wrong size"));
    }
    std::fs::remove_file(out)?;
    Ok(run)
}

/// (b) the whole stack, direct, into `out` (removed afterwards).
fn direct_run(
    exe: &Path,
    tx_home: &Path,
    rx_home: &Path,
    src: &Path,
    out: &Path,
) -> Result<Run, BenchError> {
    let rx = Party::spawn(exe, "receiver", &{
        let mut a = home_args(
            rx_home,
            &["receive", "--json", "--listen", "127.0.0.1:0", "--out"],
        );
        a.push(out.as_os_str().to_owned());
        a
    })?;
    let addr = listening_addr(&rx)?;
    let tx = Party::spawn(exe, "sender", &{
        let mut a = home_args(
            tx_home,
            &["send", "--json", "--to", "receiver", "--direct", &addr],
        );
        a.push(src.as_os_str().to_owned());
        a
    })?;
    let run = finish(tx, rx)?;
    std::fs::remove_dir_all(out)?;
    Ok(run)
}

/// Runs `run` with a relay started for it (address and pin): the run, the relay's CPU
/// seconds during it and its peak RSS.
fn through_relay(
    exe: &Path,
    run: impl FnOnce(&str, &str) -> Result<Run, BenchError>,
) -> Result<(Run, f64, u64), BenchError> {
    let (relay, relay_addr, pin) = start_relay(exe)?;
    let cpu0 = cpu_seconds(Some(relay.pid())).unwrap_or(0.0);
    let run = run(&relay_addr, &pin)?;
    let cpu = cpu_seconds(Some(relay.pid())).unwrap_or(0.0) - cpu0;
    let rss = peak_rss_bytes(Some(relay.pid())).unwrap_or(0);
    Ok((run, cpu, rss))
}

/// (c) the whole stack through a relay started for it, into `out` (removed afterwards).
fn relayed_run(
    exe: &Path,
    tx_home: &Path,
    rx_home: &Path,
    src: &Path,
    out: &Path,
) -> Result<(Run, f64, u64), BenchError> {
    let measured = through_relay(exe, |relay_addr, pin| {
        let via = |home: &Path, cmd: &[&str]| {
            let mut a = home_args(home, cmd);
            // Every packet through the relay: this run measures it (on one host the
            // endpoints would otherwise find their direct path).
            a.extend(args(&[
                "--relay",
                relay_addr,
                "--relay-pin",
                pin,
                "--path",
                "relay",
            ]));
            a
        };
        let rx = Party::spawn(exe, "relayed receiver", &{
            let mut a = via(rx_home, &["receive", "--json"]);
            a.push("--out".into());
            a.push(out.as_os_str().to_owned());
            a
        })?;
        rx.event("joining")?;
        let tx = Party::spawn(exe, "relayed sender", &{
            let mut a = via(tx_home, &["send", "--json", "--to", "receiver"]);
            a.push(src.as_os_str().to_owned());
            a
        })?;
        finish(tx, rx)
    })?;
    std::fs::remove_dir_all(out)?;
    Ok(measured)
}

/// (d) raw QUIC through a relay started for it.
fn raw_relayed_run(exe: &Path, size: &str) -> Result<(Run, f64, u64), BenchError> {
    let mut rendezvous = [0u8; 32];
    getrandom::getrandom(&mut rendezvous).map_err(|e| err(e.to_string()))?;
    let rv: String = rendezvous.iter().map(|b| format!("{b:02x}")).collect();
    through_relay(exe, |relay_addr, pin| {
        let peer = |role: &str| {
            args(&[
                "bench",
                "raw-peer",
                role,
                "--relay",
                relay_addr,
                "--relay-pin",
                pin,
                "--rendezvous",
                &rv,
            ])
        };
        let rx = Party::spawn(exe, "raw relayed receiver", &peer("recv"))?;
        rx.event("joining")?;
        let tx = Party::spawn(exe, "raw relayed sender", &{
            let mut a = peer("send");
            a.extend(args(&["--size", size]));
            a
        })?;
        finish(tx, rx)
    })
}

/// The address in a party's `listening` event.
fn listening_addr(p: &Party) -> Result<String, BenchError> {
    Ok(p.event("listening")?["addr"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Waits for both parties; the sender's `done` gives the rate (it ends when the
/// receiver has everything), each party's `done` its CPU seconds.
fn finish(tx: Party, rx: Party) -> Result<Run, BenchError> {
    let t = tx.done()?;
    let r = rx.done()?;
    let mbps = f64_of(&t, "bytes")? / f64_of(&t, "seconds")?.max(1e-9) / 1e6;
    Ok(Run {
        mbps,
        sender_cpu: f64_of(&t, "cpu_s")?,
        receiver_cpu: f64_of(&r, "cpu_s")?,
    })
}

pub(crate) fn start_relay(exe: &Path) -> Result<(Party, String, String), BenchError> {
    let relay = Party::spawn(
        exe,
        "relay",
        &args(&[
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--dev-self-signed",
            "--json",
        ]),
    )?;
    let l = relay.event("listening")?;
    let addr = l["addr"].as_str().unwrap_or_default().to_string();
    let pin = l["cert_sha256"].as_str().unwrap_or_default().to_string();
    Ok((relay, addr, pin))
}

/// Two homes that know each other ("sender", "receiver").
fn homes(tx: &Path, rx: &Path) -> Result<(), BenchError> {
    let io = |e: &dyn std::fmt::Display| err(e.to_string());
    let (a, b) = (
        Identity::generate().map_err(|e| io(&e))?,
        Identity::generate().map_err(|e| io(&e))?,
    );
    let (ha, hb) = (Home::at(tx), Home::at(rx));
    a.save(&ha, false).map_err(|e| io(&e))?;
    b.save(&hb, false).map_err(|e| io(&e))?;
    let mut book = AddressBook::load(&ha).map_err(|e| io(&e))?;
    book.add("receiver", b.public()).map_err(|e| io(&e))?;
    book.save().map_err(|e| io(&e))?;
    let mut book = AddressBook::load(&hb).map_err(|e| io(&e))?;
    book.add("sender", a.public()).map_err(|e| io(&e))?;
    book.save().map_err(|e| io(&e))?;
    Ok(())
}

/// Writes `size` bytes to `path` and deletes it (see the warm-up in [`transfer`]).
fn warm_up(path: &Path, size: u64) -> Result<(), BenchError> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    drop(f);
    std::fs::remove_file(path)?;
    Ok(())
}

/// Generated, incompressible-looking payload (it lands in the page cache as it is written).
fn write_payload(path: &Path, size: u64, xof: &mut blake3::OutputReader) -> Result<(), BenchError> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        xof.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}
