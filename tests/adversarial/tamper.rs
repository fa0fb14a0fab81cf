//! A tampering relay: the real relay server and splice with a test tap that flips,
//! drops, duplicates, reorders or truncates the bytes it forwards, injects a stream, or
//! replays one session's stream into another. Every case must end with an error at both
//! endpoints and no file under its final name; the sender never reports success.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::inproc::{Clinics, clinics, final_files, relay, relayed, relayed_binding};
use phi_conduit::relay::splice::{Direction, Tap};
use quinn::{Connection, Dir, StreamId};

/// Bytes of a stream forwarded before a tap starts tampering (past the file header and
/// the first chunks).
const AFTER: u64 = 300_000;

/// What a tap does to one chunk of a tampered stream once past [`AFTER`].
#[derive(Clone, Copy)]
enum Action {
    FlipBit,
    Drop,
    Duplicate,
    Reorder,
    Truncate,
}

/// Per stream: bytes seen, whether the tampering happened, a chunk held back.
type StreamState = (u64, bool, Option<Bytes>);

/// Tampers with the sender's data streams (unidirectional, from the connector).
struct Tamper {
    action: Action,
    control: bool,
    state: Mutex<HashMap<StreamId, StreamState>>,
}

impl Tamper {
    fn new(action: Action) -> Arc<Self> {
        Arc::new(Tamper {
            action,
            control: false,
            state: Mutex::default(),
        })
    }

    /// Tampers with the control stream (bidirectional) instead.
    fn on_control(action: Action) -> Arc<Self> {
        Arc::new(Tamper {
            action,
            control: true,
            state: Mutex::default(),
        })
    }
}

impl Tap for Tamper {
    fn forward(&self, dir: Direction, stream: StreamId, chunk: Bytes) -> Vec<Bytes> {
        let wanted = if self.control { Dir::Bi } else { Dir::Uni };
        if dir != Direction::BToA || stream.dir() != wanted {
            return vec![chunk];
        }
        let mut st = self.state.lock().unwrap();
        let (offset, done, held) = st.entry(stream).or_insert((0, false, None));
        let at = *offset;
        *offset += chunk.len() as u64;
        // The control stream: the first chunk is handshake message 1 (the initiator then
        // waits for message 2), so the offer is in a later one.
        let threshold = if self.control { 1 } else { AFTER };
        if let Some(h) = held.take() {
            // The chunk held back by `Reorder` goes after this one.
            return vec![chunk, h];
        }
        if at < threshold || (*done && !matches!(self.action, Action::Truncate)) {
            return vec![chunk];
        }
        *done = true;
        match self.action {
            Action::FlipBit => {
                let mut v = chunk.to_vec();
                let mid = v.len() / 2;
                v[mid] ^= 0x10;
                vec![Bytes::from(v)]
            }
            Action::Drop | Action::Truncate => vec![],
            Action::Duplicate => vec![chunk.clone(), chunk],
            Action::Reorder => {
                *held = Some(chunk);
                vec![]
            }
        }
    }
}

fn payload(c: &Clinics) -> PathBuf {
    let p = c.dir.path().join("record.bin");
    let mut xof = blake3::Hasher::new().update(b"tamper").finalize_xof();
    let mut buf = vec![0u8; 2_000_000];
    xof.fill(&mut buf);
    std::fs::write(&p, buf).unwrap();
    p
}

/// Runs one transfer through a relay with `tap` and checks the outcome.
async fn must_fail(tap: Arc<dyn Tap>) -> (String, String) {
    let c = clinics();
    let src = payload(&c);
    let r = relay(Some(tap)).await;
    let out = c.dir.path().join("out");
    let (sent, received) = relayed(&c, &r, &[src], &out).await;
    r.stop().await;
    let sent = sent.expect_err("the sender reported success over a tampering relay");
    let received = received.expect_err("the receiver accepted tampered data");
    assert!(
        final_files(&out).is_empty(),
        "a file got its final name: {:?}",
        final_files(&out)
    );
    (sent.to_string(), received.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_relay_delivers() {
    // The baseline: the same harness without tampering succeeds.
    let c = clinics();
    let src = payload(&c);
    let r = relay(Some(Arc::new(Passthrough))).await;
    let out = c.dir.path().join("out");
    let (sent, received) = relayed(&c, &r, std::slice::from_ref(&src), &out).await;
    r.stop().await;
    assert_eq!(sent.unwrap().files[0].2, received.unwrap().files[0].2);
    assert_eq!(
        std::fs::read(out.join("record.bin")).unwrap(),
        std::fs::read(src).unwrap()
    );
}

struct Passthrough;
impl Tap for Passthrough {}

/// The session is bound to its QUIC connection (a TLS exporter value in the Noise
/// prologue): a relay that terminates QUIC on each side, here the splice with a tap that
/// changes nothing, cannot carry a bound session between the two, although it forwards
/// every byte faithfully. Both sides fail the handshake's authentication; nothing lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_terminates_quic_cannot_carry_a_bound_session() {
    let c = clinics();
    let src = payload(&c);
    let r = relay(Some(Arc::new(Passthrough))).await;
    let out = c.dir.path().join("out");
    let (sent, received) = relayed_binding(&c, &r, &[src], &out, true).await;
    r.stop().await;
    use phi_conduit::transfer::ErrorKind;
    for (side, result) in [("sender", sent), ("receiver", received)] {
        let e = result.expect_err("a session bound to another connection completed");
        assert_eq!(e.kind(), ErrorKind::Authentication, "{side}: {e}");
    }
    assert!(final_files(&out).is_empty(), "{:?}", final_files(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_file_data_is_detected() {
    let (_, rx) = must_fail(Tamper::new(Action::FlipBit)).await;
    assert!(rx.contains("tamper") || rx.contains("authentic"), "{rx}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_bytes_are_detected() {
    must_fail(Tamper::new(Action::Drop)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_bytes_are_detected() {
    must_fail(Tamper::new(Action::Duplicate)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_bytes_are_detected() {
    must_fail(Tamper::new(Action::Reorder)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_file_stream_is_detected() {
    must_fail(Tamper::new(Action::Truncate)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_on_the_control_stream_is_detected() {
    must_fail(Tamper::on_control(Action::FlipBit)).await;
}

/// Opens an extra unidirectional stream towards the receiver carrying `bytes`.
struct Inject(Vec<u8>);

impl Tap for Inject {
    fn paired(&self, a: &Connection, _b: &Connection) {
        let (a, bytes) = (a.clone(), self.0.clone());
        tokio::spawn(async move {
            // Opened at once, so it is the receiver's first unidirectional stream, ahead of
            // the sender's real one. (A stream injected after every file arrived is never
            // read: the receiver accepts exactly as many streams as it accepted files.)
            if let Ok(mut s) = a.open_uni().await {
                let _ = s.write_all(&bytes).await;
                let _ = s.finish();
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_stream_is_refused() {
    // File index 0 from chunk 0, then garbage.
    let mut forged = [0u8; 16].to_vec();
    forged.extend(std::iter::repeat_n(0xab, 400_000));
    must_fail(Arc::new(Inject(forged))).await;
}

/// Records the sender's file stream bytes.
#[derive(Default)]
struct Record(Mutex<Vec<u8>>);

impl Tap for Record {
    fn forward(&self, dir: Direction, stream: StreamId, chunk: Bytes) -> Vec<Bytes> {
        if dir == Direction::BToA && stream.dir() == Dir::Uni {
            self.0.lock().unwrap().extend_from_slice(&chunk);
        }
        vec![chunk]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_replayed_from_another_session_is_refused() {
    // Session 1 goes through untouched while the relay records its file stream...
    let c = clinics();
    let src = payload(&c);
    let rec = Arc::new(Record::default());
    let r = relay(Some(rec.clone())).await;
    let (sent, _) = relayed(&c, &r, &[src], &c.dir.path().join("out1")).await;
    sent.unwrap();
    r.stop().await;
    let recorded = rec.0.lock().unwrap().clone();
    assert!(recorded.len() > 2_000_000);
    // ...and replays it into session 2 (same peers, same file), as an extra stream.
    must_fail(Arc::new(Inject(recorded))).await;
}

/// A change to a frame body.
type Edit = dyn Fn(&mut Vec<u8>) + Send + Sync;

/// Rewrites the first handshake frame one way on the control stream: the sender's
/// message 1 (`BToA`) or the receiver's message 2 (`AToB`). It holds the stream's bytes
/// back until the whole frame is in (message 1 with its ML-KEM-768 key is larger than a
/// QUIC packet, so it may come in pieces), hands the body to `edit`, and forwards the
/// edited frame with its length field fixed, then everything else unchanged.
struct RewriteFrame {
    dir: Direction,
    edit: Box<Edit>,
    /// Bytes held back so far, and whether the frame was already rewritten.
    state: Mutex<(Vec<u8>, bool)>,
}

impl RewriteFrame {
    fn new(dir: Direction, edit: impl Fn(&mut Vec<u8>) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(RewriteFrame {
            dir,
            edit: Box::new(edit),
            state: Mutex::default(),
        })
    }
}

impl Tap for RewriteFrame {
    fn forward(&self, dir: Direction, stream: StreamId, chunk: Bytes) -> Vec<Bytes> {
        let mut st = self.state.lock().unwrap();
        let (held, done) = &mut *st;
        if dir != self.dir || stream.dir() != Dir::Bi || *done {
            return vec![chunk];
        }
        held.extend_from_slice(&chunk);
        if held.len() < 2 {
            return vec![];
        }
        // A 2-byte length, then the body.
        let len = usize::from(u16::from_be_bytes([held[0], held[1]]));
        if held.len() < 2 + len {
            return vec![];
        }
        let mut body = held[2..2 + len].to_vec();
        (self.edit)(&mut body);
        let mut out = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&held[2 + len..]);
        *done = true;
        held.clear();
        vec![Bytes::from(out)]
    }
}

/// XORs `delta` into the byte `from_end` bytes before the end of a frame body (the Noise
/// payload is encrypted but malleable: a path that knows the layout flips exactly the
/// bits it wants, and only the tag stops it).
fn xor_from_end(from_end: usize, delta: u8) -> impl Fn(&mut Vec<u8>) + Send + Sync + 'static {
    move |body: &mut Vec<u8>| {
        let at = body.len() - from_end;
        body[at] ^= delta;
    }
}

/// Removes the post-quantum share that ends a handshake payload (`share_len` bytes after
/// its code byte, before the 16-byte tag) and turns the code into "none" (1 to 0), as a
/// path that wants a classical-only session would.
fn strip_share(share_len: usize) -> impl Fn(&mut Vec<u8>) + Send + Sync + 'static {
    move |body: &mut Vec<u8>| {
        let end = body.len() - TAG;
        body.drain(end - share_len..end);
        body[end - share_len - 1] ^= 0x01;
    }
}

/// The Noise tag after every encrypted payload.
const TAG: usize = 16;
/// The post-quantum share of message 1 (code byte, ML-KEM-768 encapsulation key).
const SHARE_1: usize = 1 + phi_conduit::crypto::hybrid::ENCAPSULATION_KEY_LEN;
/// The post-quantum share of message 2 (code byte, ML-KEM-768 ciphertext).
const SHARE_2: usize = 1 + phi_conduit::crypto::hybrid::CIPHERTEXT_LEN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_strips_aes_from_the_offer_fails_authentication_on_both_sides() {
    // The automatic offer is [2, first, second], then the post-quantum share and the
    // tag; AES is first with hardware AES, second without. Turning it into ChaCha leaves
    // [ChaCha, ChaCha].
    let from_end = if phi_conduit::crypto::suite::hardware_aes() {
        TAG + SHARE_1 + 2
    } else {
        TAG + SHARE_1 + 1
    };
    let tap = RewriteFrame::new(Direction::BToA, xor_from_end(from_end, 0x02 ^ 0x01));
    both_fail_authentication(tap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_rewrites_the_chosen_suite_fails_authentication_on_both_sides() {
    // The receiver's reply: its ephemeral key, then the one-byte choice, the
    // post-quantum share and the tag.
    let tap = RewriteFrame::new(
        Direction::AToB,
        xor_from_end(TAG + SHARE_2 + 1, 0x02 ^ 0x01),
    );
    both_fail_authentication(tap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_removes_the_ml_kem_key_from_message_1_fails_authentication_on_both_sides() {
    both_fail_authentication(RewriteFrame::new(Direction::BToA, strip_share(SHARE_1 - 1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_rewrites_the_ml_kem_key_fails_authentication_on_both_sides() {
    // A bit in the middle of the encapsulation key.
    both_fail_authentication(RewriteFrame::new(
        Direction::BToA,
        xor_from_end(TAG + SHARE_1 / 2, 0x10),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_removes_the_ml_kem_ciphertext_fails_authentication_on_both_sides() {
    both_fail_authentication(RewriteFrame::new(Direction::AToB, strip_share(SHARE_2 - 1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_rewrites_the_ml_kem_ciphertext_fails_authentication_on_both_sides() {
    both_fail_authentication(RewriteFrame::new(
        Direction::AToB,
        xor_from_end(TAG + SHARE_2 / 2, 0x10),
    ))
    .await;
}

async fn both_fail_authentication(tap: Arc<dyn Tap>) {
    use phi_conduit::transfer::ErrorKind;
    let c = clinics();
    let src = payload(&c);
    let r = relay(Some(tap)).await;
    let out = c.dir.path().join("out");
    let (sent, received) = relayed(&c, &r, &[src], &out).await;
    r.stop().await;
    let (sent, received) = (
        sent.expect_err("the sender went on after a rewritten handshake"),
        received.expect_err("the receiver went on after a rewritten handshake"),
    );
    for (side, e) in [("sender", &sent), ("receiver", &received)] {
        assert_eq!(e.kind(), ErrorKind::Authentication, "{side}: {e}");
        assert!(
            e.to_string().contains("authentication failed"),
            "{side}: {e}"
        );
    }
    assert!(final_files(&out).is_empty());
}
