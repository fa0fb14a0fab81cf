//! The harness of the real-process tests: every test that runs the `conduit` binary makes
//! its command here, so none runs in the checkout or touches the user's home.
//!
//! - [`conduit`]: the binary with `--home HOME`, run in the directory above that home.
//! - [`scratch`]: a temporary directory that is the cwd and `HOME` of commands that need no
//!   endpoint (bench, demo, certs, completions, a relay).
//! - [`pair_knowing`]: two endpoint homes with keys, each optionally knowing the other.
//! - [`Running`]: a spawned process whose first JSON line (its ready event) has been read;
//!   killed on drop. [`start_relay`] (at the debug level: a line per refusal),
//!   [`start_relay_summarising`] (the default level) and [`direct_receiver`] wait for theirs.
//! - [`Relay::cmd`], [`receiver_via`], [`send_via`]: the commands of a relayed transfer.
//!
//! The in-process harness (library API, no process) is [`inproc`]; the NAT lab (network
//! namespaces, NAT routers, nftables counters; root only) is [`natlab`].
#![allow(dead_code)]

pub mod inproc;
pub mod natlab;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

/// The `conduit` binary with `--home home`.
pub fn conduit(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_conduit"));
    c.arg("--home").arg(home).env_remove("CONDUIT_HOME");
    // Run inside the test's temporary directory: a default `--out .` or any stray write
    // then lands there, never in the checkout (.ci/run fails on a dirty checkout).
    if let Some(dir) = home.ancestors().find(|d| d.is_dir()) {
        c.current_dir(dir);
    }
    c
}

/// A temporary directory that is the working directory and `HOME` of the commands made from
/// it: for commands that need no endpoint home. Removed on drop.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

/// A new [`Scratch`] directory.
pub fn scratch() -> Scratch {
    Scratch {
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Scratch {
    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The `conduit` binary run in this directory, with it as `HOME` and no `CONDUIT_HOME`.
    pub fn conduit(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_conduit"));
        c.current_dir(self.path())
            .env("HOME", self.path())
            .env_remove("CONDUIT_HOME");
        c
    }
}

/// The public key of the identity in `home`.
pub fn key_of(home: &Path) -> String {
    let out = conduit(home).args(["id", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["public_key"].as_str().unwrap().to_string()
}

/// Lossy UTF-8.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Two endpoint homes in a temporary directory.
pub struct Pair {
    pub _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub sender: PathBuf,
    pub receiver: PathBuf,
}

/// Two endpoints; `sender_knows`: the sender has the receiver as "lab"; `receiver_knows`:
/// the receiver has the sender as "clinic".
pub fn pair_knowing(sender_knows: bool, receiver_knows: bool) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (sender, receiver) = (root.join("home-s"), root.join("home-r"));
    for h in [&sender, &receiver] {
        assert!(conduit(h).arg("keygen").output().unwrap().status.success());
    }
    let add = |home: &Path, name: &str, key: &str| {
        let out = conduit(home)
            .args(["peers", "add", name, key])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    if sender_knows {
        add(&sender, "lab", &key_of(&receiver));
    }
    if receiver_knows {
        add(&receiver, "clinic", &key_of(&sender));
    }
    Pair {
        _dir: dir,
        root,
        sender,
        receiver,
    }
}

/// A child process whose stdout after the first line is drained on a thread (a transfer
/// prints many JSON lines; an undrained pipe would block it).
pub struct Running {
    pub child: Child,
    pub first: serde_json::Value,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// Spawns `cmd` with piped output and reads its first stdout line as JSON.
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let first: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("first line: {line:?}; stderr: {err}")
        });
        let stdout = std::thread::spawn(move || {
            let mut rest = String::new();
            reader.read_to_string(&mut rest).unwrap();
            rest
        });
        Running {
            child,
            first,
            stdout: Some(stdout),
        }
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Waits; returns the exit status, the rest of stdout and stderr.
    pub fn finish(&mut self) -> (ExitStatus, String, String) {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err).unwrap();
        }
        let status = self.child.wait().unwrap();
        let out = self
            .stdout
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        // Whatever the test checks, no output names a Rust type (issue #20).
        assert_no_rust_names("stderr", &err);
        assert_no_rust_names("stdout", &out);
        (status, out, err)
    }

    /// Waits at most `secs` for the process to exit by itself.
    pub fn wait_timeout(&mut self, secs: u64) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Writes `n` bytes of deterministic, incompressible-looking data.
pub fn write_data(path: &Path, n: usize) {
    let mut xof = blake3::Hasher::new().update(b"test data").finalize_xof();
    let mut buf = vec![0u8; n];
    xof.fill(&mut buf);
    std::fs::write(path, buf).unwrap();
}

/// Whether two files have the same bytes.
pub fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// A running relay: its address and certificate pin from the `listening` event.
pub struct Relay {
    pub run: Running,
    pub addr: String,
    pub pin: String,
    /// The relay's working directory and home: it must stay empty.
    pub cwd: Scratch,
}

/// A relay at the debug level (`--verbose`): each refusal is a log line of its own, which
/// the tests look for (the default level counts them in `summary` lines: see
/// [`start_relay_summarising`]).
pub fn start_relay(extra: &[&str]) -> Relay {
    start_relay_at("127.0.0.1:0", extra)
}

/// A relay on a given address (e.g. to restart one where it was), at the debug level.
pub fn start_relay_at(addr: &str, extra: &[&str]) -> Relay {
    let mut args = vec!["--verbose"];
    args.extend_from_slice(extra);
    spawn_relay(addr, &args)
}

/// A relay at the default log level: refusals only counted in `summary` lines.
pub fn start_relay_summarising(extra: &[&str]) -> Relay {
    spawn_relay("127.0.0.1:0", extra)
}

fn spawn_relay(addr: &str, extra: &[&str]) -> Relay {
    let cwd = scratch();
    let mut cmd = cwd.conduit();
    cmd.args(["relay", "--listen", addr, "--dev-self-signed", "--json"])
        .args(extra);
    Relay::spawned(cmd, cwd)
}

impl Relay {
    /// Starts `cmd` (a `conduit relay ... --json` in `cwd`) and reads where it listens and
    /// its certificate's pin from its first line.
    pub fn spawned(cmd: std::process::Command, cwd: Scratch) -> Relay {
        let run = Running::spawn(cmd);
        assert_eq!(run.first["event"], "listening", "{}", run.first);
        let addr = run.first["addr"].as_str().unwrap().to_string();
        let pin = run.first["cert_sha256"].as_str().unwrap().to_string();
        Relay {
            run,
            addr,
            pin,
            cwd,
        }
    }

    /// SIGTERM, then the exit status and the log lines.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<serde_json::Value>, String) {
        self.run.signal(libc::SIGTERM);
        let (status, out, err) = self.run.finish();
        let log = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect();
        let leftovers: Vec<_> = std::fs::read_dir(self.cwd.path()).unwrap().collect();
        assert!(
            leftovers.is_empty(),
            "the relay wrote to disk: {leftovers:?}"
        );
        (status, log, err)
    }
}

impl Relay {
    /// `conduit --home HOME VERB --json --relay ADDR --relay-pin PIN --path relay`, more
    /// to add: every packet through this relay (on one host the endpoints would otherwise
    /// find their direct path; the NAT lab tests that).
    pub fn cmd(&self, home: &Path, verb: &str) -> Command {
        let mut c = conduit(home);
        c.args([
            verb,
            "--json",
            "--relay",
            &self.addr,
            "--relay-pin",
            &self.pin,
            "--path",
            "relay",
        ]);
        c
    }
}

pub fn receiver_via(p: &Pair, relay: &Relay, out: &Path, extra: &[&str]) -> Running {
    let mut cmd = relay.cmd(&p.receiver, "receive");
    cmd.arg("--out").arg(out).args(extra);
    let r = Running::spawn(cmd);
    assert_eq!(r.first["event"], "joining", "{}", r.first);
    r
}

pub fn send_via(p: &Pair, relay: &Relay, paths: &[&Path], extra: &[&str]) -> Output {
    let out = conduit(&p.sender)
        .arg("send")
        .args(paths)
        .args(["--json", "--relay", &relay.addr, "--relay-pin", &relay.pin])
        .args(["--path", "relay"])
        .args(extra)
        .output()
        .unwrap();
    assert_no_rust_names("the sender's stderr", &text(&out.stderr));
    assert_no_rust_names("the sender's stdout", &text(&out.stdout));
    out
}

pub fn events(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Writes `n` bytes of generated data without holding them in memory.
pub fn write_large(path: &Path, n: u64) {
    use std::io::Write;
    let mut xof = blake3::Hasher::new().update(b"large").finalize_xof();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..k]);
        f.write_all(&buf[..k]).unwrap();
        left -= k as u64;
    }
    f.flush().unwrap();
}

pub fn blake3_file(path: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut h).unwrap();
    h.finalize()
}

/// The receiver's resume sidecars (`.conduit-*.resume`) in `dir`, parsed, with their paths.
pub fn sidecars(dir: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(".conduit-") && n.ends_with(".resume")
        })
        .filter_map(|p| {
            let t = std::fs::read_to_string(&p).ok()?;
            Some((p, serde_json::from_str(&t).ok()?))
        })
        .collect()
}

/// The receiver's partial files (`.conduit-*.part`) in `dir`.
pub fn parts(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(".conduit-") && n.ends_with(".part")
        })
        .collect()
}

/// Durable bytes the receiver recorded for the file `name` in `out` (0 without a sidecar).
pub fn durable_bytes(out: &Path, name: &str) -> u64 {
    sidecars(out)
        .iter()
        .filter(|(_, v)| v["path"] == name)
        .map(|(_, v)| {
            v["durable_chunks"].as_u64().unwrap_or(0) * v["chunk_size"].as_u64().unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

/// Waits until the receiver has recorded at least `min` durable bytes of `name` in `out`.
pub fn wait_for_durable(out: &Path, name: &str, min: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while durable_bytes(out, name) < min {
        assert!(
            std::time::Instant::now() < deadline,
            "the transfer never got going"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits (at most 30 s) until `home`'s audit log holds `needle`; returns the log's text.
pub fn wait_for_audit(home: &Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = audit_text(home);
        if text.contains(needle) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} never reached the audit log: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// All of `home`'s audit log files, concatenated.
pub fn audit_text(home: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(home.join("audit"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect()
}

/// Starts a direct receiver; returns it and its address.
pub fn direct_receiver(p: &Pair, out: &Path, extra: &[&str]) -> (Running, String) {
    let mut cmd = conduit(&p.receiver);
    cmd.args(["receive", "--json", "--listen", "127.0.0.1:0", "--out"])
        .arg(out)
        .args(extra);
    let r = Running::spawn(cmd);
    assert_eq!(r.first["event"], "listening", "{}", r.first);
    let addr = r.first["addr"].as_str().unwrap().to_string();
    (r, addr)
}

/// Mounts a tmpfs of `size` at `dir` with extra `opts`; `false` (with a message) where
/// this machine does not allow it.
pub fn mount_tmpfs(dir: &Path, size: &str, opts: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}{opts}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP: cannot mount a tmpfs here (needs root); fault not made");
    }
    ok
}

/// Unmounts `dir` (best effort).
pub fn umount(dir: &Path) {
    let _ = Command::new("umount").arg(dir).status();
}

/// Names of Rust types and enum variants (the public error enums of this crate, quinn's
/// and std's) written in CamelCase: none may appear in what a command prints.
const RUST_NAMES: &[&str] = &[
    // TransferError, Violation
    "BadPath",
    "ReceiptMismatch",
    "MalformedOffer",
    "ChunkSize",
    "TransferIdMismatch",
    "StreamHeader",
    "FileStream",
    "ResumeNotOffered",
    "MissingFile",
    "UnknownResumePoint",
    "ResumeOutsideFile",
    "TooManyResumePoints",
    "ResumePointCount",
    "ReceiptCount",
    "ReceiptHashCount",
    "TransferError",
    "SessionError",
    "HandshakeError",
    "DataError",
    "DestError",
    "JoinError",
    "StreamError",
    "AuditError",
    "PipelineError",
    "ErrorKind",
    // HandshakeError, AbortReason
    "UnsupportedVersion",
    "UnsupportedMode",
    "UnknownPeer",
    "CodeMismatch",
    "PeerAborted",
    "TooLarge",
    "AbortReason",
    // DestError, DataError
    "IsADirectory",
    "NotADirectory",
    "PartInUse",
    "PartChanged",
    "SharedDirectory",
    "NotWritable",
    "StorageFull",
    "SourceChanged",
    // RefusalCode, relay Refusal, JoinError
    "UnknownSender",
    "NoSpace",
    "TooManyEntries",
    "BadHello",
    "HelloTimeout",
    "TooManyWaiting",
    "RendezvousTaken",
    "PairingTimeout",
    "ShuttingDown",
    "PeerLost",
    "NoListener",
    "RateLimited",
    "BadProof",
    "NeedsKey",
    "RefusalCode",
    // quinn
    "ApplicationClosed",
    "ApplicationClose",
    "ConnectionClosed",
    "ConnectionClose",
    "TimedOut",
    "LocallyClosed",
    "VersionMismatch",
    "TransportError",
    "CidsExhausted",
    "ConnectionLost",
    "ClosedStream",
    "ZeroRttRejected",
    "ConnectionError",
    "ReadError",
    "WriteError",
    "VarInt",
    // std::io::ErrorKind
    "UnexpectedEof",
    "NotFound",
    "PermissionDenied",
    "ConnectionReset",
    "ConnectionRefused",
    "NotConnected",
    "BrokenPipe",
    "WouldBlock",
    "InvalidData",
    "InvalidInput",
    "ReadOnlyFilesystem",
    "AlreadyExists",
];

/// One-word variant names: only suspicious as a debug format (`Io(`, `Busy {`) or as the
/// whole text after a colon ("peer aborted: Protocol").
const RUST_WORDS: &[&str] = &[
    "Session",
    "Unauthenticated",
    "Busy",
    "Data",
    "Dest",
    "Refused",
    "Offer",
    "Protocol",
    "Connection",
    "Cancelled",
    "Io",
    "Audit",
    "Handshake",
    "Frame",
    "Timeout",
    "Authentication",
    "Decode",
    "Key",
    "Pake",
    "Noise",
    "Exists",
    "Replaced",
    "Pipeline",
    "Send",
    "Receive",
    "Closed",
    "Sink",
    "Task",
    "Declined",
    "Policy",
    "Token",
    "Address",
    "Resolve",
    "Transport",
    "Connect",
    "Lost",
    "Stopped",
    "Reset",
    "Some",
    "None",
    "Ok",
    "Err",
    "Os",
    "Custom",
    "Simple",
    "SimpleMessage",
    "Broken",
    "Damaged",
    "CutShort",
];

/// The Rust type or variant names and debug formats in `text` (see [`RUST_NAMES`] and
/// [`RUST_WORDS`]), and "early eof" and the like.
pub fn rust_names(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for phrase in [
        "early eof",
        "error_code:",
        "kind: ",
        "{ code:",
        "reason: b\"",
    ] {
        if text.contains(phrase) {
            found.push(phrase.to_string());
        }
    }
    let bytes = text.as_bytes();
    let mut start = None;
    for i in 0..=bytes.len() {
        let word_char = i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_');
        match (start, word_char) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                start = None;
                let word = &text[s..i];
                let after = &text[i..];
                let before = &text[..s];
                let debug_like = RUST_WORDS.contains(&word)
                    && (after.starts_with('(')
                        || after.starts_with(" {")
                        || after.starts_with("::")
                        || before.ends_with("::")
                        || (before.ends_with(": ")
                            && after
                                .chars()
                                .next()
                                .is_none_or(|c| !c.is_alphanumeric() && c != ' ')));
                if RUST_NAMES.contains(&word) || debug_like {
                    found.push(word.to_string());
                }
            }
            _ => {}
        }
    }
    found
}

/// Fails when `text` (what a command printed) holds a Rust type or variant name.
pub fn assert_no_rust_names(what: &str, text: &str) {
    let found = rust_names(text);
    assert!(
        found.is_empty(),
        "{what} shows Rust names {found:?}:\n{text}"
    );
}
