//! `conduit demo`: a relay, a receiving clinic and a sending clinic on loopback in one
//! process, each with its own fresh identity and address book in a temporary directory,
//! moving a generated folder (synthetic data, no real PHI) end to end through the relay.
//! Everything runs through the same library code as the real commands.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::Context;

use crate::audit::{Audit, Options};
use crate::crypto::identity::Identity;
use crate::crypto::pipeline::CipherPool;
use crate::home::Home;
use crate::peers::AddressBook;
use crate::relay::client::{self, RelayOptions};
use crate::relay::config::Limits;
use crate::relay::hello::Role;
use crate::relay::server::Relay;
use crate::transfer::dest::Destination;
use crate::transfer::source;
use crate::transfer::{Events, Receiver, Recipient, Sender, Summary};
use crate::transport::{RelayTrust, ServerTls};

/// Default size of the demo's sample set (two large files; the notes are tiny).
pub const DEFAULT_SIZE: u64 = 256 << 20;

/// What the demo did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The relay's address.
    pub relay: String,
    /// SHA-256 of the relay's certificate (the clients pinned it).
    pub relay_pin: String,
    /// The sender's summary.
    pub sent: Summary,
    /// The receiver's summary.
    pub received: Summary,
    /// Ciphertext bytes the relay forwarded.
    pub relay_bytes: u64,
    /// Whether every received file is byte-identical to its source.
    pub identical: bool,
    /// Bytes the relay's threads caused to be written to storage (`write_bytes` of
    /// /proc/self/task/TID/io summed over its threads); `None` where /proc has no IO
    /// accounting.
    pub relay_disk_writes: Option<u64>,
    /// Audit records at the sender and at the receiver, each chain verified.
    pub audit_records: (u64, u64),
}

/// Runs the demo in `dir` (which must exist and be empty) with a sample set of `size`
/// bytes in two files beside a few small notes. The relay runs on a runtime and threads
/// of its own, so that what its threads write to disk can be read from /proc.
pub async fn run(dir: &Path, size: u64, events: Events) -> anyhow::Result<Report> {
    let source_root = dir.join("outbox").join("clinic-a-referral");
    make_files(&source_root, size)?;
    let (a_home, b_home) = (
        Home::at(dir.join("clinic-a")),
        Home::at(dir.join("clinic-b")),
    );
    let (a, b) = (Identity::generate()?, Identity::generate()?);
    let b_public = b.public();
    a.save(&a_home, false)?;
    b.save(&b_home, false)?;
    let mut a_book = AddressBook::load(&a_home)?;
    a_book.add("clinic-b", b.public())?;
    a_book.save()?;
    let mut b_book = AddressBook::load(&b_home)?;
    b_book.add("clinic-a", a.public())?;
    b_book.save()?;
    let a_audit = Audit::open(&a_home, &a, &a_book, Options::default());
    let b_audit = Audit::open(&b_home, &b, &b_book, Options::default());
    let (a_chain, b_chain) = (crate::audit::chain_key(&a), crate::audit::chain_key(&b));

    let tls = ServerTls::self_signed(&["localhost", "127.0.0.1"])?;
    let pin = tls.pin();
    let quiet: crate::relay::server::Logger = Arc::new(|_| {});
    let relay_threads = Arc::new(std::sync::Mutex::new(Vec::<PathBuf>::new()));
    let relay_rt = {
        let threads = Arc::clone(&relay_threads);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("demo-relay")
            .on_thread_start(move || {
                if let Ok(task) = std::fs::read_link("/proc/thread-self") {
                    threads
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(Path::new("/proc").join(task));
                }
            })
            .enable_all()
            .build()?
    };
    let relay = {
        let _in_relay_runtime = relay_rt.enter();
        Relay::bind(
            ([127, 0, 0, 1], 0).into(),
            tls,
            Limits::default(),
            None,
            quiet,
        )?
    };
    let relay_addr = relay.local_addr()?.to_string();
    let metrics = relay.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = relay_rt.spawn(relay.run(async {
        let _ = stopped.await;
    }));
    let opts = RelayOptions {
        relays: vec![relay_addr.clone()],
        trust: RelayTrust::Pin(pin),
        token: Vec::new(),
        wait: std::time::Duration::from_secs(10),
        switch: true,
        // The demo shows the relay: its leg stays on it (no direct path on one host).
        punch: false,
        idle: crate::transport::IDLE_TIMEOUT,
    };

    let pool = CipherPool::with_all_cores()?;
    let inbox = dir.join("inbox");
    let dest = Destination::open(&inbox)?;
    let receiver = {
        // The sender reports progress; the receiver stays quiet.
        let receiver = Receiver::new(b, b_book, Arc::clone(&pool)).audit(b_audit);
        let opts = opts.clone();
        tokio::spawn(async move {
            let j = client::listen(&opts, receiver.identity()).await?;
            let offer = receiver
                .receive(&j.connection, std::future::pending())
                .await?;
            let r = offer.accept(&dest).await;
            j.endpoint.wait_idle().await;
            anyhow::Ok(r?)
        })
    };
    let files = source::collect_with_dirs(std::slice::from_ref(&source_root))?;
    let recipient = Recipient::Known(b_public);
    let j = client::join(&opts, Role::Connect, false, recipient.rendezvous()).await?;
    let sender = Sender::new(a, pool).audit(a_audit).events(events);
    let sent = sender
        .send(&j.connection, &recipient, &files, std::future::pending())
        .await;
    j.endpoint.wait_idle().await;
    let received = receiver.await.context("receiver task")?;
    let sent = sent?;
    let received = received?;
    // Threads start with zero counts, and these threads were made for the relay.
    let relay_disk_writes = disk_writes(&relay_threads);
    let _ = stop.send(());
    let _ = relay_task.await;
    relay_rt.shutdown_background();

    let mut identical = true;
    for f in &files.files {
        let got = inbox.join(f.rel.as_str());
        identical &= blake3_of(&f.path)? == blake3_of(&got)?;
    }
    let audit_records = (audited(&a_home, &a_chain)?, audited(&b_home, &b_chain)?);
    Ok(Report {
        audit_records,
        relay: relay_addr,
        relay_pin: pin.iter().map(|b| format!("{b:02x}")).collect(),
        sent,
        received,
        relay_bytes: metrics.bytes_relayed.load(Relaxed),
        identical,
        relay_disk_writes,
    })
}

/// The number of records in an endpoint's audit chain, once verified.
fn audited(home: &Home, key: &crate::audit::record::ChainKey) -> anyhow::Result<u64> {
    match crate::audit::verify::verify(&crate::audit::dir(home), key)? {
        Ok(valid) => Ok(valid.records),
        Err(broken) => Err(crate::audit::AuditError::Broken(broken).into()),
    }
}

/// Sum of `write_bytes` over the threads' /proc/.../io files.
fn disk_writes(threads: &std::sync::Mutex<Vec<PathBuf>>) -> Option<u64> {
    let threads = threads
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if threads.is_empty() {
        return None;
    }
    let counts: Vec<u64> = threads
        .iter()
        .filter_map(|t| {
            let io = std::fs::read_to_string(t.join("io")).ok()?;
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))?
                .trim()
                .parse()
                .ok()
        })
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// The demo's outgoing folder: one large "imaging" file and a few small notes, all
/// synthetic.
fn make_files(root: &Path, size: u64) -> anyhow::Result<()> {
    let imaging = root.join("imaging");
    let notes = root.join("notes");
    std::fs::create_dir_all(&imaging)?;
    std::fs::create_dir_all(&notes)?;
    let mut xof = blake3::Hasher::new_derive_key("phi-conduit v1 demo data").finalize_xof();
    let first = size / 4 * 3;
    for (name, len) in [
        ("scan-0001.dcm.bin", first),
        ("scan-0002.dcm.bin", size - first),
    ] {
        let mut out =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(imaging.join(name))?);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            xof.fill(&mut buf[..n]);
            std::io::Write::write_all(&mut out, &buf[..n])?;
            left -= n as u64;
        }
        std::io::Write::flush(&mut out)?;
    }
    for i in 1..=3 {
        std::fs::write(
            notes.join(format!("visit-{i:04}.txt")),
            format!("Synthetic visit note {i}. Not a real patient.\n"),
        )?;
    }
    Ok(())
}

fn blake3_of(path: &Path) -> anyhow::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::io::copy(&mut f, &mut h).with_context(|| format!("hashing {}", path.display()))?;
    Ok(h.finalize())
}
