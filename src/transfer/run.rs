//! One transfer over an established QUIC connection: the sender's and the receiver's
//! side of docs/PROTOCOL.md, "Transfer".

use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;

use crate::audit::{Audit, AuditError, AuthMode, Role, SessionAudit};
use crate::crypto::chunk_hash::TreeHash;
use crate::crypto::handshake::{HandshakeError, Initiator, Responder, TRANSFER_ID_LEN};
use crate::crypto::identity::{Identity, PublicKey};
use crate::crypto::pake::Code;
use crate::crypto::pipeline::CipherPool;
use crate::crypto::stream::{ChunkLayout, ChunkSize, FileKeyContext, StreamError, TransferKey};
use crate::peers::AddressBook;
use crate::session::{self, SessionError, Stage, Timeouts};
use crate::transfer::data::{self, DataError, FileData};
use crate::transfer::dest::{DestError, Destination, FoundPart};
use crate::transfer::dirs::CreatedDirs;
use crate::transfer::paths::{PathError, RelPath, check_collisions};
use crate::transfer::protocol::{
    DEFAULT_MAX_ENTRIES, Entry, FILE_STREAM_HEADER, HASHES_PER_MESSAGE, MANIFEST_BYTES_PER_MESSAGE,
    MAX_ENTRIES, OfferDirs, OfferEntries, OfferStart, POINTS_PER_MESSAGE, ReceiptHashes,
    ReceiptStart, Refusal, RefusalCode, Reply, ResumePoint, ResumePoints,
};
use crate::transfer::resume::{self, Sidecar};
use crate::transfer::source::{OpenError, OpenSource, SourceFile};
use crate::wire::stream_header::StreamHeader;

/// QUIC application close code: transfer finished.
pub const CLOSE_DONE: u32 = 0;
/// QUIC application close code: a protocol, integrity or authentication failure.
pub const CLOSE_ERROR: u32 = 1;
/// QUIC application close code: the user stopped the transfer (it can be resumed).
pub const CLOSE_CANCELLED: u32 = 2;
/// QUIC application close code: the peer said nothing for too long at one step
/// ([`Timeouts`]).
pub const CLOSE_TIMEOUT: u32 = 3;
/// QUIC application close code: the receiver has no room for this connection (too many
/// sessions at once, or from this address).
pub const CLOSE_BUSY: u32 = 4;

/// Errors of a transfer.
#[derive(Debug, Error)]
pub enum TransferError {
    /// The session (control messages after the handshake) failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The peer was never authenticated: the handshake failed, timed out or was aborted.
    /// Nothing of the transfer happened (a one-shot receiver keeps waiting).
    #[error(transparent)]
    Unauthenticated(SessionError),
    /// Another sender already has this one-shot receiver.
    #[error("the receiver is busy with another sender")]
    Busy,
    /// A file's data failed.
    #[error("{file}: {source}")]
    Data {
        /// The file (escaped).
        file: String,
        /// What failed.
        #[source]
        source: DataError,
    },
    /// Writing at the receiver failed.
    #[error(transparent)]
    Dest(#[from] DestError),
    /// The offer contains a path the receiver refuses.
    #[error("offer refused: {0}")]
    BadPath(#[from] PathError),
    /// The offer was refused (by the peer, or by this receiver), with the reason code.
    #[error("offer refused: {0}")]
    Refused(Refusal),
    /// Malformed or inconsistent offer or stream.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The receipt does not match what was sent.
    #[error("receipt mismatch for {0}: the receiver's BLAKE3 differs from the sender's")]
    ReceiptMismatch(String),
    /// The connection failed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Other IO.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The audit record could not be written: nothing moves without its record.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl TransferError {
    /// Whether the peer failed to authenticate (wrong key, wrong code, unknown sender).
    pub fn is_auth(&self) -> bool {
        self.handshake_error().is_some_and(HandshakeError::is_auth)
    }

    /// The handshake error inside, if any.
    pub fn handshake_error(&self) -> Option<&HandshakeError> {
        match self {
            TransferError::Session(SessionError::Handshake(h))
            | TransferError::Unauthenticated(SessionError::Handshake(h)) => Some(h),
            _ => None,
        }
    }

    /// Whether the connection ended before its peer was authenticated, without spending
    /// the code phrase: a one-shot receiver keeps waiting for its real sender. (A code
    /// mismatch spends the code, as the relay burns its nameplate: one guess per code.)
    pub fn before_authentication(&self) -> bool {
        match self {
            TransferError::Unauthenticated(SessionError::Handshake(
                HandshakeError::CodeMismatch,
            )) => false,
            TransferError::Unauthenticated(_) | TransferError::Busy => true,
            _ => false,
        }
    }

    /// Whether a peer's silence at some step ended the transfer.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            TransferError::Session(SessionError::Timeout { .. })
                | TransferError::Unauthenticated(SessionError::Timeout { .. })
        )
    }

    /// Whether this is an abort frame received before the peer was authenticated (it
    /// travels in clear: anyone on the path could have sent it).
    pub fn is_unauthenticated_abort(&self) -> bool {
        matches!(
            self,
            TransferError::Unauthenticated(SessionError::Handshake(HandshakeError::PeerAborted(_)))
        )
    }

    /// The QUIC application close code for a connection that ended with this error.
    pub fn close_code(&self) -> u32 {
        if self.is_timeout() {
            CLOSE_TIMEOUT
        } else if matches!(self, TransferError::Busy) {
            CLOSE_BUSY
        } else {
            CLOSE_ERROR
        }
    }

    /// The reason written in the audit record. With `hide_names`, errors whose message can
    /// hold a file name are recorded by their kind only.
    pub fn audit_reason(&self, hide_names: bool) -> String {
        let kind = match self {
            TransferError::Session(_)
            | TransferError::Unauthenticated(_)
            | TransferError::Busy
            | TransferError::Connection(_)
            | TransferError::Protocol(_) => {
                return self.to_string();
            }
            TransferError::Data { source, .. } => return format!("file data: {source}"),
            TransferError::Dest(_) => "writing at the receiver failed",
            TransferError::BadPath(_) => "the offer holds a path the receiver refuses",
            TransferError::Refused(_) => "refused",
            TransferError::ReceiptMismatch(_) => "receipt mismatch",
            TransferError::Io(_) => "IO error",
            TransferError::Audit(_) => "audit record not written",
        };
        if hide_names {
            kind.to_string()
        } else {
            self.to_string()
        }
    }
}

/// Records how a transfer ended: an authentication failure or a failure with its reason.
/// A failure to write that record does not replace the transfer's own error.
async fn audited(
    rec: &SessionAudit,
    result: Result<Summary, TransferError>,
) -> Result<Summary, TransferError> {
    let err = match result {
        Ok(s) => return Ok(s),
        Err(e @ TransferError::Audit(_)) => return Err(e),
        Err(e) => e,
    };
    let reason = err.audit_reason(rec.hides_names());
    let written = if err.is_unauthenticated_abort() {
        // Not an authentication failure of a named peer: a clear-text frame that anyone
        // on the path could have sent.
        rec.failed(&reason).await
    } else if err.is_auth() {
        rec.auth_failed(&reason).await
    } else {
        rec.failed(&reason).await
    };
    if let Err(a) = written {
        eprintln!("warning: {a}");
    }
    Err(err)
}

/// What a finished transfer reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The peer.
    pub peer: PublicKey,
    /// Files and their BLAKE3.
    pub files: Vec<(RelPath, u64, blake3::Hash)>,
    /// Plaintext bytes of the files (including resumed ones).
    pub bytes: u64,
    /// Bytes not sent again because the receiver held them from an interrupted transfer.
    pub resumed: u64,
    /// Wall time from the first offer byte to the receipt.
    pub seconds: f64,
}

/// What a transfer reports while it runs.
#[derive(Debug, Clone)]
pub enum Event {
    /// The receiver got a valid offer (sent before it replies).
    Offer {
        /// The sender.
        peer: PublicKey,
        /// Number of files.
        files: u64,
        /// Number of empty directories.
        dirs: u64,
        /// Sum of the files' sizes.
        total: u64,
        /// The first [`TOP_LEVEL_SHOWN`] distinct top-level names, sorted and escaped.
        top_level: Vec<String>,
        /// How many distinct top-level names the offer has.
        top_level_count: u64,
    },
    /// Plaintext bytes moved so far, of `total`.
    Progress {
        /// Bytes so far.
        bytes: u64,
        /// Bytes in all.
        total: u64,
    },
    /// Something the user should know that does not stop the transfer (a partial file
    /// in the destination that is not adopted for a resume, and why).
    Warning {
        /// The file it is about (escaped), if any: shown apart from the message, so that
        /// an output in names mode hash can show it hashed.
        path: Option<String>,
        /// What happened, without the file's name.
        message: String,
    },
    /// One file is complete and verified.
    FileDone {
        /// Its path (escaped).
        path: String,
        /// Its size.
        size: u64,
        /// Its BLAKE3.
        blake3: blake3::Hash,
    },
}

/// Receives [`Event`]s; called from any thread.
pub type Events = Arc<dyn Fn(Event) + Send + Sync>;

/// Turns per-chunk byte counts into [`Event::Progress`] events, at most every
/// `PROGRESS_INTERVAL`.
fn progress_reporter(
    events: &Events,
    total: u64,
    done: &Arc<std::sync::atomic::AtomicU64>,
) -> data::Progress {
    let events = Arc::clone(events);
    let done = Arc::clone(done);
    let last = Arc::new(std::sync::Mutex::new(Instant::now()));
    Arc::new(move |n| {
        let bytes = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        let mut at = last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if at.elapsed() >= PROGRESS_INTERVAL || bytes == total {
            *at = Instant::now();
            events(Event::Progress { bytes, total });
        }
    })
}

/// Top-level names an [`Event::Offer`] lists (it counts them all).
pub const TOP_LEVEL_SHOWN: usize = 100;
/// Most bytes of paths one offer may hold (with at most [`MAX_ENTRIES`] entries, this
/// bounds the receiver's memory for the manifest).
pub const MAX_MANIFEST_PATH_BYTES: usize = 64 << 20;

/// Shortest interval between two progress events (at most 4 per second).
pub const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// The rendezvous id of a known recipient in direct mode.
pub fn rendezvous_for(recipient: &PublicKey) -> [u8; 32] {
    blake3::derive_key("phi-conduit v1 rendezvous", recipient.as_bytes())
}

fn random<const N: usize>() -> Result<[u8; N], TransferError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| TransferError::Io(std::io::Error::other(e)))?;
    Ok(b)
}

fn protocol(msg: impl Into<String>) -> TransferError {
    TransferError::Protocol(msg.into())
}

/// How the sender authenticates the receiver.
#[derive(Debug, Clone)]
pub enum Recipient {
    /// A pinned key from the address book (Noise IK).
    Known(PublicKey),
    /// A one-time code phrase shared out of band (SPAKE2 + Noise XXpsk3).
    Code(Code),
}

/// The rendezvous id of a code's nameplate.
pub fn rendezvous_for_code(code: &Code) -> [u8; 32] {
    blake3::derive_key(
        "phi-conduit v1 nameplate",
        code.nameplate().to_string().as_bytes(),
    )
}

/// Sends `files` to `recipient` over `conn`, leaving records in `audit`.
///
/// The receiving side runs [`receive`] on the other end of the connection. A whole
/// transfer on loopback, both sides auditing:
///
/// ```
/// use std::sync::Arc;
/// use phi_conduit::audit::{self, Audit};
/// use phi_conduit::crypto::{identity::Identity, pipeline::CipherPool, stream::DEFAULT_CHUNK_SIZE};
/// use phi_conduit::home::Home;
/// use phi_conduit::peers::AddressBook;
/// use phi_conduit::transfer::{dest::Destination, run, source};
/// use phi_conduit::transport;
///
/// # #[tokio::main] async fn main() -> anyhow::Result<()> {
/// let dir = tempfile::tempdir()?;
/// let (clinic, lab) = (Identity::generate()?, Identity::generate()?);
/// let (clinic_home, lab_home) = (Home::at(dir.path().join("clinic")), Home::at(dir.path().join("lab")));
/// let mut lab_book = AddressBook::load(&lab_home)?;
/// lab_book.add("clinic", clinic.public())?;
/// let clinic_book = AddressBook::load(&clinic_home)?;
/// let options = audit::Options::default();
/// let (clinic_audit, lab_audit) = (
///     Audit::open(&clinic_home, &clinic, &clinic_book, options),
///     Audit::open(&lab_home, &lab, &lab_book, options),
/// );
///
/// let note = dir.path().join("note.txt");
/// std::fs::write(&note, "synthetic visit note")?;
/// let (files, _skipped) = source::collect(std::slice::from_ref(&note))?;
/// let dest = Destination::open(&dir.path().join("inbox"))?;
/// let pool = CipherPool::with_all_cores()?;
/// let quiet: run::Events = Arc::new(|_| {});
///
/// let server = transport::direct_server(([127, 0, 0, 1], 0).into())?;
/// let addr = server.local_addr()?;
/// let receiving = async {
///     let conn = server.accept().await.ok_or_else(|| anyhow::anyhow!("closed"))?.await?;
///     let policy = run::ReceivePolicy::default();
///     let got = run::receive(&conn, &lab, &lab_book, &dest, &policy, &pool, &quiet, &lab_audit).await?;
///     run::wait_for_sender_close(&conn).await;
///     anyhow::Ok(got)
/// };
/// let sending = async {
///     let client = transport::direct_client(addr)?;
///     let conn = client.connect(addr, "phi-conduit")?.await?;
///     let to = run::Recipient::Known(lab.public());
///     let sent = run::send(&conn, &clinic, &to, &files, DEFAULT_CHUNK_SIZE, &pool, &quiet, &clinic_audit).await?;
///     client.wait_idle().await;
///     anyhow::Ok(sent)
/// };
/// let (sent, got) = tokio::try_join!(sending, receiving)?;
/// assert_eq!(sent.files[0].2, got.files[0].2); // the same BLAKE3 at both ends
/// assert_eq!(std::fs::read(dir.path().join("inbox/note.txt"))?, b"synthetic visit note");
/// let valid = audit::verify::verify(&audit::dir(&lab_home), &audit::chain_key(&lab))?;
/// assert!(valid.is_ok_and(|v| v.records == 5)); // created, opened, offer, file, receipt
/// # Ok(()) }
/// ```
#[allow(clippy::too_many_arguments)]
pub async fn send(
    conn: &quinn::Connection,
    local: &Identity,
    recipient: &Recipient,
    files: &[SourceFile],
    chunk: ChunkSize,
    pool: &Arc<CipherPool>,
    events: &Events,
    audit: &Audit,
) -> Result<Summary, TransferError> {
    let rec = audit.session(Role::Send);
    let timeouts = Timeouts::default();
    send_recorded(
        conn, local, recipient, files, chunk, pool, events, &rec, &timeouts,
    )
    .await
}

/// [`send`] with the session's records made by the caller, which can then record an
/// interruption (the transfer future dropped) under the same session id, and with the
/// caller's [`Timeouts`] (handshake, answer and receipt).
#[allow(clippy::too_many_arguments)]
pub async fn send_recorded(
    conn: &quinn::Connection,
    local: &Identity,
    recipient: &Recipient,
    files: &[SourceFile],
    chunk: ChunkSize,
    pool: &Arc<CipherPool>,
    events: &Events,
    rec: &SessionAudit,
    timeouts: &Timeouts,
) -> Result<Summary, TransferError> {
    send_tree_recorded(
        conn,
        local,
        recipient,
        files,
        &[],
        chunk,
        pool,
        events,
        rec,
        timeouts,
    )
    .await
}

/// [`send_recorded`] with empty directories to recreate at the receiver (see
/// [`crate::transfer::source::collect_with_dirs`]).
#[allow(clippy::too_many_arguments)]
pub async fn send_tree_recorded(
    conn: &quinn::Connection,
    local: &Identity,
    recipient: &Recipient,
    files: &[SourceFile],
    dirs: &[RelPath],
    chunk: ChunkSize,
    pool: &Arc<CipherPool>,
    events: &Events,
    rec: &SessionAudit,
    timeouts: &Timeouts,
) -> Result<Summary, TransferError> {
    let result = send_audited(
        conn, local, recipient, files, dirs, chunk, pool, events, rec, timeouts,
    )
    .await;
    audited(rec, result).await
}

#[allow(clippy::too_many_arguments)]
async fn send_audited(
    conn: &quinn::Connection,
    local: &Identity,
    recipient: &Recipient,
    files: &[SourceFile],
    dirs: &[RelPath],
    chunk: ChunkSize,
    pool: &Arc<CipherPool>,
    events: &Events,
    rec: &SessionAudit,
    timeouts: &Timeouts,
) -> Result<Summary, TransferError> {
    let (tx, rx) = conn.open_bi().await?;
    let mut ctl = tokio::io::join(rx, tx);
    let transfer_id: [u8; TRANSFER_ID_LEN] = random()?;
    let (machine, first) = match recipient {
        Recipient::Known(key) => {
            Initiator::known_peer(local, key, &rendezvous_for(key), &transfer_id)
                .map_err(SessionError::from)?
        }
        Recipient::Code(code) => Initiator::code(local, code, &rendezvous_for_code(code)),
    };
    let mut est = timeouts
        .within(
            Stage::Handshake,
            session::initiate(&mut ctl, machine, first),
        )
        .await
        .map_err(TransferError::Unauthenticated)?;
    let (mut rx, mut tx) = ctl.into_inner();
    let auth = match recipient {
        Recipient::Known(_) => AuthMode::KnownKey,
        Recipient::Code(_) => AuthMode::Code,
    };
    rec.opened(&est.remote_static(), auth).await?;
    let secret: [u8; 32] = random()?;
    let start = Instant::now();
    let total: u64 = files.iter().map(|f| f.size).sum();
    let offer = OfferStart {
        transfer_id,
        session_secret: secret,
        chunk_size: chunk.get(),
        count: files.len() as u64,
        dirs: dirs.len() as u64,
        total_size: total,
        audit_head: rec.head().await?,
    };
    let answer = timeouts
        .within(
            Stage::Answer,
            offer_and_answer(&mut rx, &mut tx, &mut est, &offer, files, dirs),
        )
        .await?;
    let points = match answer {
        Ok(points) => points,
        Err(refusal) => {
            let reason = refusal.to_string();
            rec.offer(&transfer_id, offer.count, total, Some(&reason))
                .await?;
            return Err(TransferError::Refused(refusal));
        }
    };
    rec.offer(&transfer_id, offer.count, total, None).await?;
    let mut resume_at = std::collections::HashMap::new();
    for p in points {
        let ok = usize::try_from(p.file).is_ok_and(|i| i < files.len())
            && resume_at
                .insert(p.file, (p.from_chunk, p.prefix_blake3))
                .is_none();
        if !ok {
            return Err(protocol("resume point for an unknown or repeated file"));
        }
    }
    let keys = TransferKey::derive(&est.handshake_hash(), &secret);
    let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut sent: Vec<Option<blake3::Hash>> = vec![None; files.len()];
    let mut resumed = 0u64;
    // Small files go several at a time (each on its own stream); a large one alone.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(FLIGHT_UNITS as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, f) in files.iter().enumerate() {
        // Opened once; every read of this file goes through this descriptor, and it is
        // still the file that was collected (see transfer::source).
        let source = OpenSource::open(f, u64::from(chunk.get())).map_err(|e| match e {
            OpenError::Changed(c) => TransferError::Data {
                file: f.rel.to_string(),
                source: DataError::SourceChanged(c),
            },
            OpenError::Io(e) => {
                TransferError::Io(std::io::Error::new(e.kind(), format!("{}: {e}", f.rel)))
            }
        })?;
        let layout = ChunkLayout::new(f.size, chunk);
        let mut ctx = FileKeyContext::fresh(transfer_id, i as u64, chunk);
        let mut tree = TreeHash::new(&layout);
        if let Some(&(from, theirs)) = resume_at.get(&(i as u64)) {
            if from == 0 || from >= layout.count() {
                return Err(protocol("resume point outside the file"));
            }
            // Continue only over the very same bytes; otherwise send the file again.
            let (ours, prefix_tree) = resume::hash_prefix(source.file(), &layout, from)?;
            if ours == theirs {
                rec.resumed(f.rel.as_str(), f.size, layout.offset(from))
                    .await?;
                ctx.resume_from = from;
                ctx.resume_prefix_hash = ours;
                tree = prefix_tree;
                resumed += layout.offset(from);
                moved.fetch_add(layout.offset(from), std::sync::atomic::Ordering::Relaxed);
            }
        }
        let first = ctx.resume_from;
        let source = Arc::new(source);
        let fd = FileData::new(
            &keys,
            &ctx,
            f.size,
            tree,
            (crate::transport::SEND_WINDOW, pool.threads()),
        );
        let share = flight_weight(f.size);
        let permit = loop {
            // Collect finished files while waiting for room.
            tokio::select! {
                p = Arc::clone(&in_flight).acquire_many_owned(share) => {
                    break p.map_err(|_| protocol("file window closed"))?;
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    sent_one(done, files, &mut sent, events, rec).await?;
                }
            }
        };
        // Streams are opened in file order.
        let mut s = conn.open_uni().await?;
        let header = StreamHeader {
            index: i as u64,
            first,
        }
        .encode();
        let progress = progress_reporter(events, total, &moved);
        let (pool, conn) = (Arc::clone(pool), conn.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let sent = async {
                s.write_all(&header).await.map_err(DataError::from)?;
                data::send_file(&conn, &mut s, &pool, fd, source, progress).await
            };
            sent.await.map(|hash| (i, hash)).map_err(|e| (i, e))
        });
    }
    while let Some(done) = tasks.join_next().await {
        sent_one(done, files, &mut sent, events, rec).await?;
    }
    let sent: Vec<(RelPath, u64, blake3::Hash)> = files
        .iter()
        .zip(sent)
        .map(|(f, h)| h.map(|h| (f.rel.clone(), f.size, h)))
        .collect::<Option<_>>()
        .ok_or_else(|| protocol("a file was not sent"))?;
    let (hashes, receiver_head) = timeouts
        .within(Stage::Receipt, read_receipt(&mut rx, &mut est, sent.len()))
        .await?;
    for ((rel, _, h), theirs) in sent.iter().zip(&hashes) {
        if h.as_bytes() != theirs {
            return Err(TransferError::ReceiptMismatch(rel.to_string()));
        }
    }
    let ours: Vec<blake3::Hash> = sent.iter().map(|(_, _, h)| *h).collect();
    rec.receipt(&ours, total, receiver_head.as_ref()).await?;
    // Only now, confirmed by the receipt, is each file done.
    for (rel, size, hash) in &sent {
        events(Event::FileDone {
            path: rel.to_string(),
            size: *size,
            blake3: *hash,
        });
    }
    let seconds = start.elapsed().as_secs_f64();
    conn.close(CLOSE_DONE.into(), b"done");
    Ok(Summary {
        peer: est.remote_static(),
        files: sent,
        bytes: total,
        resumed,
        seconds,
    })
}

/// Files sent (or received) at once, each on its own stream, when they are up to
/// [`SMALL_FILE`] bytes.
pub const FILES_IN_FLIGHT: usize = 4;
/// Files up to this size share the window; a larger one is sent alone.
pub const SMALL_FILE: u64 = 4 << 20;
/// Files up to this size go [`TINY_FILES_IN_FLIGHT`] at once: many small files are
/// bound by per-file latency (open, fsync, rename, audit record), not bytes.
pub const TINY_FILE: u64 = 1 << 20;
/// Tiny files in flight at once.
pub const TINY_FILES_IN_FLIGHT: usize = 32;
/// The units of the files in flight on each side (see [`flight_weight`]).
pub const FLIGHT_UNITS: u32 = 32;

/// A file's share of [`FLIGHT_UNITS`]: 1 up to [`TINY_FILE`] bytes, 4 up to
/// [`SMALL_FILE`], all of them above. The sender waits for a file's share before it
/// opens its stream; the receiver accepts no new stream while the files it holds weigh
/// [`FLIGHT_UNITS`] (so its buffers stay within about 32 MiB of tiny files plus one
/// stream window).
pub fn flight_weight(size: u64) -> u32 {
    if size <= TINY_FILE {
        1
    } else if size <= SMALL_FILE {
        FLIGHT_UNITS / FILES_IN_FLIGHT as u32
    } else {
        FLIGHT_UNITS
    }
}

/// What a sender's file task ends with: the file's index and its hash, or the index and
/// what failed.
type FileOutcome = Result<(usize, blake3::Hash), (usize, DataError)>;

/// Records one finished file task of the sender.
async fn sent_one(
    done: Result<FileOutcome, tokio::task::JoinError>,
    files: &[SourceFile],
    sent: &mut [Option<blake3::Hash>],
    events: &Events,
    rec: &SessionAudit,
) -> Result<(), TransferError> {
    let (i, hash) = match done {
        Ok(Ok(x)) => x,
        Ok(Err((i, source))) => {
            return Err(TransferError::Data {
                file: files[i].rel.to_string(),
                source,
            });
        }
        Err(e) => return Err(TransferError::Io(std::io::Error::other(e))),
    };
    let f = &files[i];
    rec.file_completed(f.rel.as_str(), f.size, &hash).await?;
    sent[i] = Some(hash);
    // `file_done` waits for the receipt that confirms it.
    let _ = events;
    Ok(())
}

/// Groups `lens` (each item's encoded size) into consecutive batches of at most
/// [`MANIFEST_BYTES_PER_MESSAGE`] bytes (a batch holds at least one item).
fn pack(lens: impl Iterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut from, mut bytes, mut end) = (0usize, 0usize, 0usize);
    for (i, n) in lens.enumerate() {
        if i > from && bytes + n > MANIFEST_BYTES_PER_MESSAGE {
            out.push(from..i);
            (from, bytes) = (i, 0);
        }
        bytes += n;
        end = i + 1;
    }
    if end > from {
        out.push(from..end);
    }
    out
}

/// The entry of a file to send.
fn entry_of(f: &SourceFile) -> Entry {
    Entry {
        path: f.rel.as_str().to_string(),
        size: f.size,
        mode: f.mode,
        mtime: f.mtime,
    }
}

/// Sends the offer (its start, the files' entries, the empty directories) and reads the
/// receiver's answer, which can come before the whole manifest went out (a receiver
/// refuses an offer too large, or from an unknown sender, without reading it). Returns
/// the resume points of an acceptance, or the refusal.
async fn offer_and_answer(
    rx: &mut quinn::RecvStream,
    tx: &mut quinn::SendStream,
    est: &mut crate::crypto::handshake::Established,
    start: &OfferStart,
    files: &[SourceFile],
    dirs: &[RelPath],
) -> Result<Result<Vec<ResumePoint>, Refusal>, TransferError> {
    let entry_batches = pack(files.iter().map(|f| entry_of(f).encoded_len()));
    let dir_batches = pack(dirs.iter().map(|d| d.as_str().len() + 5));
    let body = {
        let answer = session::read_frame(rx);
        tokio::pin!(answer);
        let mut early = None;
        let mut write_failed = None;
        let messages = 1 + entry_batches.len() + dir_batches.len();
        for m in 0..messages {
            let body = if m == 0 {
                est.seal_message(start)
            } else if let Some(r) = entry_batches.get(m - 1) {
                est.seal_message(&OfferEntries(
                    files[r.clone()].iter().map(entry_of).collect(),
                ))
            } else {
                let r = dir_batches[m - 1 - entry_batches.len()].clone();
                est.seal_message(&OfferDirs(
                    dirs[r].iter().map(|d| d.as_str().to_string()).collect(),
                ))
            }
            .map_err(SessionError::from)?;
            tokio::select! {
                biased;
                a = &mut answer => {
                    early = Some(a);
                    break;
                }
                w = session::write_frame(tx, &body) => {
                    if let Err(e) = w {
                        write_failed = Some(e);
                        break;
                    }
                }
            }
        }
        match (early, write_failed) {
            (Some(a), _) => a?,
            // The receiver stopped reading: its answer (a refusal, an abort) may be there.
            (None, Some(e)) => {
                match tokio::time::timeout(std::time::Duration::from_secs(1), answer).await {
                    Ok(Ok(body)) => body,
                    _ => return Err(e.into()),
                }
            }
            (None, None) => answer.await?,
        }
    };
    let reply: Reply = est.open_message(&body).map_err(SessionError::from)?;
    let n = match reply {
        Reply::Refuse(r) => return Ok(Err(r)),
        Reply::Accept { resume_points } => resume_points,
    };
    if n > files.len() as u64 {
        return Err(protocol("more resume points than files"));
    }
    let mut points = Vec::with_capacity(n as usize);
    while (points.len() as u64) < n {
        let ResumePoints(batch) = session::recv(rx, est).await?;
        if batch.is_empty() || points.len() as u64 + batch.len() as u64 > n {
            return Err(protocol("resume points do not match the announced count"));
        }
        points.extend(batch);
    }
    Ok(Ok(points))
}

/// Reads the receipt of `files` files: their hashes in offer order, and the receiver's
/// audit chain head.
async fn read_receipt(
    rx: &mut quinn::RecvStream,
    est: &mut crate::crypto::handshake::Established,
    files: usize,
) -> Result<(Vec<[u8; 32]>, Option<[u8; 32]>), TransferError> {
    let ReceiptStart { count, audit_head } = session::recv(rx, est).await?;
    if count != files as u64 {
        return Err(protocol("receipt lists a different number of files"));
    }
    let mut hashes = Vec::with_capacity(files);
    while hashes.len() < files {
        let ReceiptHashes(batch) = session::recv(rx, est).await?;
        if batch.is_empty() || hashes.len() + batch.len() > files {
            return Err(protocol("receipt hashes do not match the announced count"));
        }
        hashes.extend(batch);
    }
    Ok((hashes, audit_head))
}

/// Sends the receipt: the start with this receiver's audit chain head, then the hashes
/// in batches.
async fn send_receipt(
    tx: &mut quinn::SendStream,
    est: &mut crate::crypto::handshake::Established,
    hashes: &[blake3::Hash],
    head: Option<[u8; 32]>,
) -> Result<(), TransferError> {
    let start = ReceiptStart {
        count: hashes.len() as u64,
        audit_head: head,
    };
    session::send(tx, est, &start).await?;
    for batch in hashes.chunks(HASHES_PER_MESSAGE) {
        let batch = ReceiptHashes(batch.iter().map(|h| *h.as_bytes()).collect());
        session::send(tx, est, &batch).await?;
    }
    Ok(())
}

/// How the receiver decides.
#[derive(Debug, Clone, Default)]
pub struct ReceivePolicy {
    /// Complete the handshake with senders not in the address book.
    pub accept_unknown: bool,
    /// Accept offers without asking (otherwise only known peers' offers are accepted).
    pub yes: bool,
    /// Replace existing files.
    pub overwrite: bool,
    /// Keep the owner's execute bit of the sender's files (`--keep-modes`); otherwise
    /// every received file is 0600.
    pub keep_modes: bool,
    /// Authenticate with this code phrase instead of the address book.
    pub code: Option<Code>,
    /// Ask someone about each offer (a person at a terminal); without `yes`, the offer is
    /// accepted only if this says so.
    pub confirm: Option<Confirm>,
    /// How long to wait for the sender at each step.
    pub timeouts: Timeouts,
    /// Transfers at once, for a receiver that authenticates several connections at once:
    /// an authenticated sender takes a permit for its whole transfer, and is refused
    /// ("busy") when there is none. Connections still in their handshake take none.
    pub sessions: Option<Arc<tokio::sync::Semaphore>>,
    /// Most entries (files and empty directories) accepted in one offer; `None`:
    /// [`DEFAULT_MAX_ENTRIES`]. Larger offers are refused before their manifest is read.
    /// At most [`MAX_ENTRIES`].
    pub max_entries: Option<u64>,
}

impl ReceivePolicy {
    /// The entry limit in force.
    pub fn max_entries(&self) -> u64 {
        self.max_entries
            .unwrap_or(DEFAULT_MAX_ENTRIES)
            .clamp(1, MAX_ENTRIES)
    }
}

/// Puts the receiver's decision on record, then tells the sender: a refusal (without its
/// details to a sender this receiver does not know), or nothing yet for an acceptance.
/// Without a record nothing is accepted. Returns the refusal as an error.
async fn decide(
    rec: &SessionAudit,
    opened: Result<(), AuditError>,
    tx: &mut quinn::SendStream,
    est: &mut crate::crypto::handshake::Established,
    offer: &OfferStart,
    known: bool,
    refusal: Option<Refusal>,
) -> Result<(), TransferError> {
    let recorded = match opened {
        Ok(()) => {
            let reason = refusal.as_ref().map(Refusal::explain);
            rec.offer(
                &offer.transfer_id,
                offer.count,
                offer.total_size,
                reason.as_deref(),
            )
            .await
        }
        Err(e) => Err(e),
    };
    let refusal = match (&recorded, refusal) {
        (Err(_), _) => Some(Refusal::new(
            RefusalCode::Policy,
            "the receiver could not write its audit record",
        )),
        (Ok(()), r) => r,
    };
    let Some(refusal) = refusal else {
        return Ok(());
    };
    let told = if known {
        refusal.clone()
    } else {
        refusal.for_unknown_sender()
    };
    session::send(tx, est, &Reply::Refuse(told)).await?;
    recorded?;
    Err(TransferError::Refused(refusal))
}

/// Asks whether to accept an offer (given as its [`Event::Offer`]); may block (it runs
/// on a blocking thread).
#[derive(Clone)]
pub struct Confirm(pub Arc<dyn Fn(&Event) -> bool + Send + Sync>);

impl std::fmt::Debug for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Confirm(..)")
    }
}

/// After a successful [`receive`]: waits (at most 10 s) for the sender to close the
/// connection, which it does once it has read the receipt.
pub async fn wait_for_sender_close(conn: &quinn::Connection) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), conn.closed()).await;
}

/// Receives one transfer on `conn` into `dest`, leaving records in `audit`. Returns once
/// the receipt is sent; then call [`wait_for_sender_close`] before dropping the
/// connection.
#[allow(clippy::too_many_arguments)]
pub async fn receive(
    conn: &quinn::Connection,
    local: &Identity,
    book: &AddressBook,
    dest: &Destination,
    policy: &ReceivePolicy,
    pool: &Arc<CipherPool>,
    events: &Events,
    audit: &Audit,
) -> Result<Summary, TransferError> {
    let rec = Arc::new(audit.session(Role::Receive));
    receive_recorded(conn, local, book, dest, policy, pool, events, &rec).await
}

/// [`receive`] with the session's records made by the caller (see [`send_recorded`]).
#[allow(clippy::too_many_arguments)]
pub async fn receive_recorded(
    conn: &quinn::Connection,
    local: &Identity,
    book: &AddressBook,
    dest: &Destination,
    policy: &ReceivePolicy,
    pool: &Arc<CipherPool>,
    events: &Events,
    rec: &Arc<SessionAudit>,
) -> Result<Summary, TransferError> {
    let result = receive_audited(conn, local, book, dest, policy, pool, events, rec).await;
    audited(rec, result).await
}

#[allow(clippy::too_many_arguments)]
async fn receive_audited(
    conn: &quinn::Connection,
    local: &Identity,
    book: &AddressBook,
    dest: &Destination,
    policy: &ReceivePolicy,
    pool: &Arc<CipherPool>,
    events: &Events,
    rec: &Arc<SessionAudit>,
) -> Result<Summary, TransferError> {
    let timeouts = &policy.timeouts;
    let rendezvous = match &policy.code {
        Some(code) => rendezvous_for_code(code),
        None => rendezvous_for(&local.public()),
    };
    let machine = Responder::new(local, &rendezvous, policy.code.clone());
    let accept_unknown = policy.accept_unknown;
    let mut accept = |k: &PublicKey| accept_unknown || book.find_by_key(k).is_some();
    // A peer that connects and says nothing is dropped after the handshake timeout.
    let handshake = async {
        let (tx, rx) = conn
            .accept_bi()
            .await
            .map_err(|e| SessionError::Io(e.into()))?;
        let mut ctl = tokio::io::join(rx, tx);
        let est = session::respond(&mut ctl, machine, &mut accept).await?;
        Ok::<_, SessionError>((ctl, est))
    };
    let (ctl, mut est) = timeouts
        .within(Stage::Handshake, handshake)
        .await
        .map_err(TransferError::Unauthenticated)?;
    let (mut rx, mut tx) = ctl.into_inner();
    let _permit = match &policy.sessions {
        Some(limit) => match Arc::clone(limit).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                // The sender hears why (at its offer, or here in known-recipient mode).
                let busy = Reply::Refuse(Refusal::new(
                    RefusalCode::Policy,
                    TransferError::Busy.to_string(),
                ));
                let _ = session::send(&mut tx, &mut est, &busy).await;
                return Err(TransferError::Busy);
            }
        },
        None => None,
    };
    let peer = est.remote_static();
    let auth = match policy.code {
        Some(_) => AuthMode::Code,
        None => AuthMode::KnownKey,
    };
    // Without a record nothing is accepted; the sender hears why at the offer.
    let opened = rec.opened(&peer, auth).await;
    // A sender that proved the code the user typed here is expected.
    let known = book.find_by_key(&peer).is_some() || policy.code.is_some();
    // Known-recipient mode: the offer was the first transport message, which completed
    // the handshake. Code mode: it is the next message.
    let offer_deadline = tokio::time::Instant::now() + timeouts.offer;
    let offer: OfferStart = match est.take_first_message() {
        Some(first) => {
            postcard::from_bytes(&first).map_err(|e| protocol(format!("malformed offer: {e}")))?
        }
        None => offer_part(offer_deadline, timeouts, session::recv(&mut rx, &mut est)).await?,
    };
    let start = Instant::now();
    let chunk = ChunkSize::new(u64::from(offer.chunk_size)).map_err(|e| protocol(e.to_string()))?;
    let announced = offer
        .count
        .checked_add(offer.dirs)
        .filter(|&n| n > 0 && n <= MAX_ENTRIES)
        .ok_or_else(|| {
            protocol(format!(
                "offer of {} files and {} directories (1 to {MAX_ENTRIES} entries allowed)",
                offer.count, offer.dirs
            ))
        })?;
    // Refusals that need no manifest come before it is read: an offer too large is never
    // held in memory, and an unknown sender's paths are not looked at.
    let max = policy.max_entries();
    let early = if announced > max {
        Some(Refusal::new(
            RefusalCode::TooManyEntries { max },
            format!("{announced} entries offered"),
        ))
    } else if !known && !policy.yes && policy.confirm.is_none() {
        Some(Refusal::new(
            RefusalCode::UnknownSender,
            format!(
                "offer from unknown sender {} needs --yes",
                peer.fingerprint()
            ),
        ))
    } else {
        None
    };
    if early.is_some() {
        return match decide(rec, opened, &mut tx, &mut est, &offer, known, early).await {
            Ok(()) => Err(protocol("a refusal was not sent")),
            Err(e) => Err(e),
        };
    }
    let mut entries: Vec<(RelPath, Entry)> = Vec::with_capacity(offer.count.min(4096) as usize);
    let mut path_bytes = 0usize;
    let mut count_path = |p: &str| {
        path_bytes = path_bytes.saturating_add(p.len());
        if path_bytes > MAX_MANIFEST_PATH_BYTES {
            Err(protocol(format!(
                "the offer's paths exceed {MAX_MANIFEST_PATH_BYTES} bytes"
            )))
        } else {
            Ok(())
        }
    };
    while (entries.len() as u64) < offer.count {
        let OfferEntries(batch) =
            offer_part(offer_deadline, timeouts, session::recv(&mut rx, &mut est)).await?;
        if batch.is_empty() || entries.len() as u64 + batch.len() as u64 > offer.count {
            return Err(protocol("offer entries do not match the announced count"));
        }
        for e in batch {
            count_path(&e.path)?;
            let rel = RelPath::parse(&e.path)?;
            // The path is kept once, as the validated RelPath.
            entries.push((
                rel,
                Entry {
                    path: String::new(),
                    ..e
                },
            ));
        }
    }
    let mut dirs: Vec<RelPath> = Vec::with_capacity(offer.dirs.min(4096) as usize);
    while (dirs.len() as u64) < offer.dirs {
        let OfferDirs(batch) =
            offer_part(offer_deadline, timeouts, session::recv(&mut rx, &mut est)).await?;
        if batch.is_empty() || dirs.len() as u64 + batch.len() as u64 > offer.dirs {
            return Err(protocol(
                "offer directories do not match the announced count",
            ));
        }
        for d in batch {
            count_path(&d)?;
            dirs.push(RelPath::parse(&d)?);
        }
    }
    // Names mode hash: what this side prints shows these names hashed.
    rec.names().learn(
        entries
            .iter()
            .map(|(r, _)| r.as_str())
            .chain(dirs.iter().map(|d| d.as_str())),
    );
    check_collisions(entries.iter().map(|(r, _)| r).chain(dirs.iter()))?;
    let sum = entries
        .iter()
        .try_fold(0u64, |acc, (_, e)| acc.checked_add(e.size));
    if sum != Some(offer.total_size) {
        return Err(protocol(
            "offered sizes do not add up to the announced total",
        ));
    }
    let distinct: std::collections::BTreeSet<&str> = entries
        .iter()
        .map(|(r, _)| r)
        .chain(dirs.iter())
        .filter_map(|r| r.components().next())
        .collect();
    let shown = Event::Offer {
        peer,
        files: offer.count,
        dirs: offer.dirs,
        total: offer.total_size,
        top_level_count: distinct.len() as u64,
        top_level: distinct
            .iter()
            .take(TOP_LEVEL_SHOWN)
            .map(|n| crate::transfer::paths::escape(n))
            .collect(),
    };
    drop(distinct);
    events(shown.clone());
    let asked = match (&policy.confirm, policy.yes) {
        (Some(Confirm(ask)), false) => {
            let ask = Arc::clone(ask);
            Some(
                tokio::task::spawn_blocking(move || ask(&shown))
                    .await
                    .unwrap_or(false),
            )
        }
        _ => None,
    };
    // The offer's checks walk each directory once, not once per file.
    let checks = dest.for_offer();
    let in_the_way = || {
        entries
            .iter()
            .map(|(r, _)| r)
            .find(|r| !policy.overwrite && checks.exists(r))
            .or_else(|| {
                // An empty directory's place must be free or a directory.
                dirs.iter().find(|d| {
                    std::fs::symlink_metadata(dest.final_path(d)).is_ok_and(|m| !m.is_dir())
                })
            })
    };
    let refusal = if asked == Some(false) {
        Some(Refusal::new(
            RefusalCode::Declined,
            "declined by the receiving user",
        ))
    } else if asked.is_none() && !known && !policy.yes {
        Some(Refusal::new(
            RefusalCode::UnknownSender,
            format!(
                "offer from unknown sender {} needs --yes",
                peer.fingerprint()
            ),
        ))
    } else {
        // An existing file (unless --overwrite), then names too long, a directory in the
        // way: before anything is created.
        in_the_way()
            .map(|rel| Refusal::new(RefusalCode::Exists, rel.to_string()))
            .or_else(|| {
                entries
                    .iter()
                    .find_map(|(r, _)| checks.check(r, policy.overwrite))
                    .map(|why| Refusal::new(RefusalCode::Policy, why))
            })
    };
    let (plan, refusal) = match refusal {
        Some(r) => (ResumePlan::default(), Some(r)),
        None => plan_resume(&checks, &peer, &entries, chunk, offer.total_size, events)?,
    };
    // Nothing of the offer exists yet: what it creates and leaves empty goes if it fails.
    let created = CreatedDirs::note(dest.root(), entries.iter().map(|(r, _)| r), &dirs);
    decide(rec, opened, &mut tx, &mut est, &offer, known, refusal).await?;
    let points = plan.points.len() as u64;
    session::send(
        &mut tx,
        &mut est,
        &Reply::Accept {
            resume_points: points,
        },
    )
    .await?;
    for batch in plan.points.chunks(POINTS_PER_MESSAGE) {
        session::send(&mut tx, &mut est, &ResumePoints(batch.to_vec())).await?;
    }
    let mut held = plan.held;
    let mut superseded = plan.superseded;

    let keys = TransferKey::derive(&est.handshake_hash(), &offer.session_secret);
    // In known-recipient mode the transfer id also travelled in message 1: they must agree.
    let transfer_id = offer.transfer_id;
    if est.transfer_id().is_some_and(|t| t != transfer_id) {
        return Err(protocol(
            "the offer's transfer id differs from the handshake's",
        ));
    }
    let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut got: Vec<Option<blake3::Hash>> = vec![None; entries.len()];
    let mut resumed = 0u64;
    // Files at once (each on its own stream) while they weigh less than FLIGHT_UNITS.
    let mut started = vec![false; entries.len()];
    let mut accepted = 0usize;
    let mut weight = 0u32;
    let mut tasks = tokio::task::JoinSet::new();
    while accepted < entries.len() || !tasks.is_empty() {
        tokio::select! {
            s = conn.accept_uni(), if accepted < entries.len() && tasks.len() < TINY_FILES_IN_FLIGHT && weight < FLIGHT_UNITS => {
                let mut s = s?;
                accepted += 1;
                let mut header = [0u8; FILE_STREAM_HEADER];
                let read = async {
                    s.read_exact(&mut header)
                        .await
                        .map_err(|e| protocol(format!("file stream header: {e}")))
                };
                timeouts.within(Stage::StreamHeader, read).await?;
                let header = StreamHeader::decode(&header);
                let (index, first) = (header.index, header.first);
                let slot = header.slot(&started).map_err(|e| protocol(e.to_string()))?;
                started[slot] = true;
                let (rel, e) = &entries[slot];
                weight += flight_weight(e.size);
                let layout = ChunkLayout::new(e.size, chunk);
                let mut ctx = FileKeyContext::fresh(transfer_id, index, chunk);
                let mut tree = TreeHash::new(&layout);
                // Continued in the partial file the plan checked, or started in a new one
                // (the old one, if the sender started over, is removed once it exists).
                let held_here = held.remove(&slot);
                let (mut adopt, mut old) = (None, None);
                if first != 0 {
                    // Only where this receiver offered to continue, and only from that chunk.
                    let (from, prefix, prefix_tree, sidecar, file) = held_here
                        .filter(|(from, ..)| *from == first)
                        .ok_or_else(|| protocol(format!("file {index} resumed at a chunk not offered")))?;
                    adopt = Some((file, sidecar));
                    rec.resumed(rel.as_str(), e.size, layout.offset(from)).await?;
                    ctx.resume_from = from;
                    ctx.resume_prefix_hash = prefix;
                    tree = prefix_tree;
                    resumed += layout.offset(from);
                    moved.fetch_add(layout.offset(from), std::sync::atomic::Ordering::Relaxed);
                } else {
                    old = held_here.map(|h| h.3.part).or_else(|| superseded.remove(&slot));
                }
                // The file whose prefix was hashed is the one written (no reopening by name).
                let (keep, size) = (layout.offset(first), e.size);
                let mut part = match adopt {
                    Some((file, sidecar)) => dest.open_part(rel, &peer, Some((file, &sidecar)), keep, size)?,
                    None => dest.open_part(rel, &peer, None, keep, size)?,
                };
                if let Some(old) = old {
                    part.remove_superseded(&old);
                }
                let writer = part.writer()?;
                let mut reservation = part.take_reservation();
                let mut checkpoint =
                    part.checkpoint(Sidecar::new(&peer, rel, e, chunk, part.part_name()), first);
                let fd = FileData::new(
                    &keys,
                    &ctx,
                    e.size,
                    tree,
                    (u64::from(crate::transport::STREAM_WINDOW), pool.threads()),
                );
                let chunk_bytes = u64::from(chunk.get());
                let sink = Box::new(move |off: u64, buf: &[u8]| {
                    if let Some(r) = &mut reservation {
                        r.ahead_of(off)?;
                    }
                    std::os::unix::fs::FileExt::write_all_at(&*writer, buf, off)?;
                    checkpoint.wrote(off / chunk_bytes, buf.len() as u64)
                });
                let progress = progress_reporter(events, offer.total_size, &moved);
                let keep_exec = policy.keep_modes && e.mode & 0o100 != 0;
                let (pool, overwrite, shown, size) =
                    (Arc::clone(pool), policy.overwrite, rel.to_string(), e.size);
                let rec = Arc::clone(rec);
                let name = rel.as_str().to_string();
                tasks.spawn(async move {
                    let r = match data::receive_file(s, &pool, fd, sink, progress).await {
                        // Verified: given its name (durably), and then on record as
                        // completed. A file that does not get its name is not recorded as
                        // completed (its temporary file is removed; the transfer's failure
                        // record says why).
                        Ok(hash) => match part.finalize(overwrite, keep_exec) {
                            Ok(()) => rec
                                .file_completed(&name, size, &hash)
                                .await
                                .map(|()| hash)
                                .map_err(TransferError::Audit),
                            Err(e) => Err(TransferError::from(e)),
                        },
                        Err(source) => {
                            // Forged or corrupted data is not kept; an interruption keeps
                            // the verified prefix (and its sidecar) for a later resume.
                            if source.stream_error().is_some_and(StreamError::is_integrity) {
                                part.discard();
                            }
                            Err(TransferError::Data { file: shown, source })
                        }
                    };
                    (slot, r)
                });
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let (slot, r) = done.map_err(|e| TransferError::Io(std::io::Error::other(e)))?;
                weight = weight.saturating_sub(flight_weight(entries[slot].1.size));
                let hash = r?;
                got[slot] = Some(hash);
                let (rel, e) = &entries[slot];
                events(Event::FileDone {
                    path: rel.to_string(),
                    size: e.size,
                    blake3: hash,
                });
            }
        }
    }
    let hashes: Vec<blake3::Hash> = got
        .into_iter()
        .map(|h| h.ok_or_else(|| protocol("missing file")))
        .collect::<Result<_, _>>()?;
    for d in &dirs {
        crate::transfer::dirs::create(dest.root(), d)?;
    }
    let head = rec
        .receipt(&hashes, offer.total_size, offer.audit_head.as_ref())
        .await?;
    send_receipt(&mut tx, &mut est, &hashes, head).await?;
    created.keep();
    // The sender closes once it has the receipt; the caller waits for that close (see
    // [`wait_for_sender_close`]) so the receipt is not cut off.
    let files = entries
        .into_iter()
        .zip(hashes)
        .map(|((rel, e), h)| (rel, e.size, h))
        .collect();
    Ok(Summary {
        peer,
        files,
        bytes: offer.total_size,
        resumed,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One part of the offer, by the deadline of the whole offer ([`Timeouts::offer`]).
async fn offer_part<T>(
    deadline: tokio::time::Instant,
    timeouts: &Timeouts,
    part: impl std::future::Future<Output = Result<T, SessionError>>,
) -> Result<T, TransferError> {
    match tokio::time::timeout_at(deadline, part).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SessionError::Timeout {
            stage: Stage::Offer,
            after: timeouts.offer,
        }
        .into()),
    }
}

/// What the receiver offers to continue: the points sent, and per file slot the chunk,
/// prefix hash and hash state to continue from.
#[derive(Default)]
struct ResumePlan {
    points: Vec<ResumePoint>,
    /// Per file slot: the chunk to continue from, the prefix hash and tree state, the
    /// sidecar, and the partial file itself (open and locked; the prefix was hashed
    /// through it and the rest is written through it).
    held: std::collections::HashMap<usize, (u64, [u8; 32], TreeHash, Sidecar, std::fs::File)>,
    /// Per file slot, the partial file of an older offer of the same file from the same
    /// sender (another size or mtime, or nothing durable): removed once the new one
    /// exists.
    superseded: std::collections::HashMap<usize, String>,
}

/// Most partial files one offer continues (each is held open from the offer to its
/// stream); further ones are received from the start.
pub const MAX_HELD_PARTS: usize = 256;

/// Finds the files this receiver holds in part from an interrupted transfer of the same
/// sender, and checks that what is left to receive fits (and that the destination is
/// writable). Returns the plan, or a refusal.
fn plan_resume(
    dest: &Destination,
    peer: &PublicKey,
    entries: &[(RelPath, Entry)],
    chunk: ChunkSize,
    total: u64,
    events: &Events,
) -> Result<(ResumePlan, Option<Refusal>), TransferError> {
    let mut plan = ResumePlan::default();
    let mut have = 0u64;
    for (i, (rel, e)) in entries.iter().enumerate() {
        if plan.held.len() >= MAX_HELD_PARTS {
            // Each held partial file is an open descriptor until its stream: a bound.
            continue;
        }
        let (file, sidecar) = match dest.find_part(peer, rel) {
            FoundPart::None => continue,
            FoundPart::Usable(file, sidecar) => (file, sidecar),
            FoundPart::Refused(why) => {
                // Left alone; the file starts over under a new temporary name.
                events(Event::Warning {
                    path: Some(rel.to_string()),
                    message: format!("partial file not adopted for a resume: {why}"),
                });
                continue;
            }
        };
        if !sidecar.matches(peer, rel, e, chunk) {
            // An older offer of the file (another size or mtime): started over.
            plan.superseded.insert(i, sidecar.part);
            continue;
        }
        let layout = ChunkLayout::new(e.size, chunk);
        // At least the last chunk is always sent again.
        let from = sidecar.durable_chunks.min(layout.count() - 1);
        let on_disk = file.metadata().map(|m| m.len()).unwrap_or(0);
        if from == 0 || on_disk < layout.offset(from) {
            plan.superseded.insert(i, sidecar.part);
            continue;
        }
        let (prefix, tree) = resume::hash_prefix(&file, &layout, from)?;
        plan.points.push(ResumePoint {
            file: i as u64,
            from_chunk: from,
            prefix_blake3: prefix,
        });
        plan.held.insert(i, (from, prefix, tree, sidecar, file));
        have += layout.offset(from);
    }
    let space = dest.space()?;
    if space.read_only {
        return Ok((
            plan,
            Some(Refusal::new(
                RefusalCode::Policy,
                "the destination is read-only",
            )),
        ));
    }
    let needed = total.saturating_sub(have);
    if needed > space.available {
        return Ok((
            plan,
            Some(Refusal::new(
                RefusalCode::NoSpace,
                format!("{needed} bytes needed, {} available", space.available),
            )),
        ));
    }
    Ok((plan, None))
}
