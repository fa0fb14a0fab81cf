//! A malicious sender, built from the library's session layer with hand-crafted offers,
//! against the real receiver (`transfer::Receiver` in process, and the `conduit
//! receive` binary for what reaches the terminal). Every case is refused with a clear
//! error, with bounded memory, and nothing is written outside (or inside) the
//! destination.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use common::inproc::{Clinics, clinics};
use phi_conduit::crypto::handshake::Initiator;
use phi_conduit::crypto::pipeline::PositionalFile;
use phi_conduit::crypto::stream::{ChunkSize, DEFAULT_CHUNK_SIZE, TransferKey};
use phi_conduit::session;
use phi_conduit::transfer::data::{self, FileData};
use phi_conduit::transfer::dest::Destination;
use phi_conduit::transfer::protocol::{Entry, OfferEntries, OfferStart, Reply};
use phi_conduit::transfer::{self as transfer, Receiver, TransferError};
use phi_conduit::transport;

fn entry(path: &str, size: u64) -> Entry {
    Entry {
        path: path.to_string(),
        size,
        mode: 0o644,
        mtime: 0,
    }
}

/// What the crafted sender sends after its offer is accepted: one file stream for file
/// 0 sealed for `actual` bytes.
struct Data {
    actual: u64,
}

/// Runs a crafted offer against the real receiver; returns the receiver's result and the
/// reply the sender saw (if any).
async fn offer_with(
    c: &Clinics,
    out: &Path,
    entries: Vec<Entry>,
    tweak: impl FnOnce(&mut OfferStart),
    data: Option<Data>,
) -> (Result<transfer::Summary, TransferError>, Option<Reply>) {
    let server = transport::direct_server(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = server.local_addr().unwrap();
    let dest = Destination::open(out).unwrap();
    let receiver = async {
        let conn = server.accept().await.unwrap().await.unwrap();
        let receiver = Receiver::new(c.b.clone(), c.book_b.clone(), Arc::clone(&c.pool));
        let r = match receiver.receive(&conn, std::future::pending()).await {
            Ok(offer) => offer.accept(&dest).await,
            Err(e) => Err(e),
        };
        conn.close(1u32.into(), b"done");
        r
    };
    let sender = async {
        let client = transport::direct_client(addr).unwrap();
        let conn = client.connect(addr, "phi-conduit").unwrap().await.unwrap();
        let (tx, rx) = conn.open_bi().await.unwrap();
        let mut ctl = tokio::io::join(rx, tx);
        let tid = [9u8; 16];
        let b = c.b.public();
        // A well-behaved handshake (bound to this connection, as every peer's is); the
        // malice comes after it.
        let policy = phi_conduit::crypto::handshake::Policy {
            channel: phi_conduit::crypto::handshake::channel_binding(&conn),
            ..Default::default()
        };
        let (machine, first) =
            Initiator::known_peer_with(&c.a, &b, &transfer::rendezvous_for(&b), &tid, policy)
                .unwrap();
        let mut est = session::initiate(&mut ctl, machine, first).await.unwrap();
        let secret = [7u8; 32];
        let mut start = OfferStart {
            transfer_id: tid,
            session_secret: secret,
            chunk_size: DEFAULT_CHUNK_SIZE.get(),
            count: entries.len() as u64,
            dirs: 0,
            total_size: entries.iter().map(|e| e.size).fold(0u64, u64::wrapping_add),
            audit_head: None,
        };
        tweak(&mut start);
        if session::send(&mut ctl, &mut est, &start).await.is_err() {
            return None;
        }
        for batch in entries.chunks(12) {
            if session::send(&mut ctl, &mut est, &OfferEntries(batch.to_vec()))
                .await
                .is_err()
            {
                return None;
            }
        }
        // A receiver that neither accepts nor refuses within 5 s is left: the connection
        // closes when this side ends.
        let reply = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            session::recv::<_, Reply>(&mut ctl, &mut est),
        )
        .await;
        let Ok(Ok(reply)) = reply else {
            conn.close(1u32.into(), b"gave up");
            return None;
        };
        if let (Reply::Accept { .. }, Some(d)) = (&reply, data) {
            let keys =
                TransferKey::derive(est.file_salt().as_slice(), &secret).with_suite(est.suite());
            let chunk = ChunkSize::new(u64::from(start.chunk_size)).unwrap();
            let path = c.dir.path().join("actual.bin");
            std::fs::write(&path, vec![0x41; d.actual as usize]).unwrap();
            let source = Arc::new(PositionalFile::new(
                std::fs::File::open(&path).unwrap(),
                u64::from(chunk.get()),
            ));
            let fd = FileData::fresh(&keys, tid, 0, d.actual, chunk, 1 << 20, 2);
            let mut s = conn.open_uni().await.unwrap();
            // File index 0, from chunk 0.
            s.write_all(&[0u8; 16]).await.unwrap();
            let _ = data::send_file(&conn, &mut s, &c.pool, fd, source, Arc::new(|_| {})).await;
            let _ = session::recv::<_, phi_conduit::transfer::protocol::ReceiptStart>(
                &mut ctl, &mut est,
            )
            .await;
        }
        Some(reply)
    };
    let run = async { tokio::join!(receiver, sender) };
    tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("the receiver neither refused nor finished")
}

/// Offers `entries` and expects a refusal naming `why`; nothing may be written.
async fn refused(entries: Vec<Entry>, why: &str) {
    let c = clinics();
    let out = c.dir.path().join("out");
    let (received, reply) = offer_with(&c, &out, entries, |_| {}, None).await;
    let err = received
        .expect_err("the receiver accepted a malicious offer")
        .to_string();
    assert!(err.contains(why), "error {err:?} should mention {why:?}");
    assert!(
        !matches!(reply, Some(Reply::Accept { .. })),
        "the sender was told to go ahead"
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "something was written to the destination"
    );
    // Nothing outside it either: the temp dir holds only what the test made.
    let mut names: Vec<String> = std::fs::read_dir(c.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["out".to_string()],
        "a file landed outside the destination"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_dot_paths_are_refused() {
    refused(vec![entry("../escape.txt", 1)], "..").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_dot_dot_paths_are_refused() {
    refused(vec![entry("a/../../escape.txt", 1)], "..").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_paths_are_refused() {
    refused(vec![entry("/etc/passwd", 1)], "absolute").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_drive_paths_are_refused() {
    refused(vec![entry("C:\\Windows\\evil.dll", 1)], "offer refused").await;
    refused(vec![entry("C:/evil.txt", 1)], "offer refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unc_paths_are_refused() {
    refused(vec![entry("\\\\server\\share\\x", 1)], "offer refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_refused() {
    refused(vec![entry("a\0b.txt", 1)], "offer refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_are_refused() {
    refused(vec![entry("bell\x07.txt", 1)], "offer refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ansi_escape_sequences_are_refused_and_shown_escaped() {
    let c = clinics();
    let out = c.dir.path().join("out");
    let (received, _) = offer_with(
        &c,
        &out,
        vec![entry("\x1b[31mred\x1b[0m.txt", 1)],
        |_| {},
        None,
    )
    .await;
    let err = received.unwrap_err().to_string();
    assert!(
        !err.contains('\x1b'),
        "a raw escape character in the message: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_to_left_overrides_are_refused() {
    refused(vec![entry("invoice\u{202E}fdp.exe", 1)], "offer refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4096_byte_name_is_refused() {
    refused(vec![entry(&"n".repeat(4096), 1)], "offer refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_colliding_after_unicode_normalization_are_refused() {
    refused(
        vec![entry("caf\u{e9}.txt", 1), entry("cafe\u{301}.txt", 1)],
        "offer refused",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_colliding_after_case_folding_are_refused() {
    refused(
        vec![entry("Report.txt", 1), entry("report.TXT", 1)],
        "offer refused",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_entries_are_refused() {
    refused(vec![entry("a.txt", 1), entry("a.txt", 1)], "offer refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_versus_directory_collision_is_refused() {
    refused(vec![entry("a", 1), entry("a/b.txt", 1)], "offer refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_not_adding_up_to_the_total_are_refused() {
    let c = clinics();
    let out = c.dir.path().join("out");
    let (received, _) = offer_with(
        &c,
        &out,
        vec![entry("a.txt", 10)],
        |s| s.total_size = 5,
        None,
    )
    .await;
    assert!(received.unwrap_err().to_string().contains("do not add up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_a_million_entries_are_refused_before_any_arrive() {
    let c = clinics();
    let out = c.dir.path().join("out");
    let (received, _) = offer_with(
        &c,
        &out,
        vec![entry("a.txt", 1)],
        |s| s.count = 1_000_001,
        None,
    )
    .await;
    assert!(received.unwrap_err().to_string().contains("1000000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_larger_than_the_entries_sent_does_not_accept() {
    // The offer announces more entries than follow: the receiver waits for the rest and
    // never replies; the sender's close ends it.
    let c = clinics();
    let out = c.dir.path().join("out");
    let (received, reply) =
        offer_with(&c, &out, vec![entry("a.txt", 1)], |s| s.count = 2, None).await;
    assert!(received.is_err());
    assert!(reply.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_larger_than_declared_is_refused_and_never_finalized() {
    let c = clinics();
    let out = c.dir.path().join("out");
    let (received, reply) = offer_with(
        &c,
        &out,
        vec![entry("short.bin", 100)],
        |_| {},
        Some(Data { actual: 5000 }),
    )
    .await;
    assert!(matches!(reply, Some(Reply::Accept { .. })));
    assert!(received.is_err());
    assert!(!out.join("short.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_smaller_than_declared_is_refused_and_never_finalized() {
    let c = clinics();
    let out = c.dir.path().join("out");
    let (received, _) = offer_with(
        &c,
        &out,
        vec![entry("long.bin", 5000)],
        |_| {},
        Some(Data { actual: 100 }),
    )
    .await;
    assert!(received.is_err());
    assert!(!out.join("long.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_of_two_to_the_63_is_refused() {
    let c = clinics();
    let out = c.dir.path().join("out");
    let (received, reply) =
        offer_with(&c, &out, vec![entry("huge.bin", 1 << 63)], |_| {}, None).await;
    assert!(received.is_err());
    assert!(
        !matches!(reply, Some(Reply::Accept { .. })),
        "a 2^63-byte file was accepted"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_entries_are_handled_with_bounded_memory() {
    // Exactly the protocol's maximum, in valid batches, each name distinct: above the
    // receiver's default entry limit, so it refuses from the announced count alone,
    // before reading (or allocating for) any entry.
    let c = clinics();
    let out = c.dir.path().join("out");
    let entries: Vec<Entry> = (0..1_000_000u32)
        .map(|i| entry(&format!("d/{i}"), 0))
        .collect();
    let (received, reply) = offer_with(&c, &out, entries, |s| s.total_size = 1, None).await;
    let err = received.unwrap_err();
    assert!(
        matches!(&err, TransferError::Refused(r) if matches!(r.code, phi_conduit::transfer::protocol::RefusalCode::TooManyEntries { max: 250_000 })),
        "{err}"
    );
    assert!(!matches!(reply, Some(Reply::Accept { .. })));
}
