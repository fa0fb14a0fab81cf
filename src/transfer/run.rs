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
use crate::crypto::pipeline::{CipherPool, PositionalFile};
use crate::crypto::stream::{ChunkLayout, ChunkSize, FileKeyContext, StreamError, TransferKey};
use crate::peers::AddressBook;
use crate::session::{self, SessionError, Stage, Timeouts};
use crate::transfer::data::{self, DataError, FileData};
use crate::transfer::dest::{DestError, Destination};
use crate::transfer::paths::{PathError, RelPath, check_collisions};
use crate::transfer::protocol::{
    ENTRIES_PER_MESSAGE, Entry, FILE_STREAM_HEADER, MAX_ENTRIES, OfferEntries, OfferStart, Receipt,
    Reply, ResumePoint,
};
use crate::transfer::resume::{self, Checkpoint, Sidecar};
use crate::transfer::source::SourceFile;

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
    /// The peer refused the offer.
    #[error("the receiver refused: {0}")]
    Refused(String),
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
        /// Sum of their sizes.
        total: u64,
        /// Distinct top-level names, escaped.
        top_level: Vec<String>,
    },
    /// Plaintext bytes moved so far, of `total`.
    Progress {
        /// Bytes so far.
        bytes: u64,
        /// Bytes in all.
        total: u64,
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
    let result = send_audited(
        conn, local, recipient, files, chunk, pool, events, rec, timeouts,
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
        total_size: total,
    };
    if let Err(e) = session::send(&mut ctl, &mut est, &offer).await {
        return Err(peer_reason(&mut ctl, &mut est, e).await);
    }
    for batch in files.chunks(ENTRIES_PER_MESSAGE) {
        let entries = batch
            .iter()
            .map(|f| Entry {
                path: f.rel.as_str().to_string(),
                size: f.size,
                mode: f.mode,
                mtime: f.mtime,
            })
            .collect();
        if let Err(e) = session::send(&mut ctl, &mut est, &OfferEntries(entries)).await {
            return Err(peer_reason(&mut ctl, &mut est, e).await);
        }
    }
    let answer = session::recv::<_, Reply>(&mut ctl, &mut est);
    let points = match timeouts.within(Stage::Answer, answer).await? {
        Reply::Accept => Vec::new(),
        Reply::AcceptResume(points) => points,
        Reply::Refuse(reason) => {
            let reason = crate::transfer::paths::escape(&reason);
            rec.offer(&transfer_id, offer.count, total, Some(&reason))
                .await?;
            return Err(TransferError::Refused(reason));
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
    let in_flight = Arc::new(tokio::sync::Semaphore::new(FILES_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, f) in files.iter().enumerate() {
        let file = std::fs::File::open(&f.path)?;
        let layout = ChunkLayout::new(f.size, chunk);
        let mut ctx = FileKeyContext::fresh(transfer_id, i as u64, chunk);
        let mut tree = TreeHash::new(&layout);
        if let Some(&(from, theirs)) = resume_at.get(&(i as u64)) {
            if from == 0 || from >= layout.count() {
                return Err(protocol("resume point outside the file"));
            }
            // Continue only over the very same bytes; otherwise send the file again.
            let (ours, prefix_tree) = resume::hash_prefix(&file, &layout, from)?;
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
        let source = Arc::new(PositionalFile::new(file, u64::from(chunk.get())));
        let fd = FileData::new(
            &keys,
            &ctx,
            f.size,
            tree,
            (crate::transport::SEND_WINDOW, pool.threads()),
        );
        let share = if f.size > SMALL_FILE {
            FILES_IN_FLIGHT as u32
        } else {
            1
        };
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
        let mut header = [0u8; FILE_STREAM_HEADER];
        header[..8].copy_from_slice(&(i as u64).to_be_bytes());
        header[8..].copy_from_slice(&first.to_be_bytes());
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
    let Receipt(hashes) = timeouts
        .within(Stage::Receipt, session::recv(&mut ctl, &mut est))
        .await?;
    if hashes.len() != sent.len() {
        return Err(protocol("receipt lists a different number of files"));
    }
    for ((rel, _, h), theirs) in sent.iter().zip(&hashes) {
        if h.as_bytes() != theirs {
            return Err(TransferError::ReceiptMismatch(rel.to_string()));
        }
    }
    let ours: Vec<blake3::Hash> = sent.iter().map(|(_, _, h)| *h).collect();
    rec.receipt(&ours, total).await?;
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

/// Files sent (or received) at once, each on its own stream.
pub const FILES_IN_FLIGHT: usize = 4;
/// Files up to this size share the window; a larger one is sent alone.
pub const SMALL_FILE: u64 = 4 << 20;

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
    events(Event::FileDone {
        path: f.rel.to_string(),
        size: f.size,
        blake3: hash,
    });
    Ok(())
}

/// A failed control write usually means the peer stopped reading after it sent its
/// reason (an abort frame after a failed handshake, a refusal): report that reason when it
/// is there to read.
async fn peer_reason<S: tokio::io::AsyncRead + Unpin>(
    ctl: &mut S,
    est: &mut crate::crypto::handshake::Established,
    err: SessionError,
) -> TransferError {
    let read = session::recv::<_, Reply>(ctl, est);
    match tokio::time::timeout(std::time::Duration::from_secs(1), read).await {
        Ok(Err(SessionError::Handshake(
            h @ crate::crypto::handshake::HandshakeError::PeerAborted(_),
        ))) => TransferError::Session(SessionError::Handshake(h)),
        Ok(Ok(Reply::Refuse(reason))) => {
            TransferError::Refused(crate::transfer::paths::escape(&reason))
        }
        _ => err.into(),
    }
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
    let (mut ctl, mut est) = timeouts
        .within(Stage::Handshake, handshake)
        .await
        .map_err(TransferError::Unauthenticated)?;
    let _permit = match &policy.sessions {
        Some(limit) => match Arc::clone(limit).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                // The sender hears why (at its offer, or here in known-recipient mode).
                let busy = Reply::Refuse(TransferError::Busy.to_string());
                let _ = session::send(&mut ctl, &mut est, &busy).await;
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
        None => offer_part(offer_deadline, timeouts, session::recv(&mut ctl, &mut est)).await?,
    };
    let start = Instant::now();
    let chunk = ChunkSize::new(u64::from(offer.chunk_size)).map_err(|e| protocol(e.to_string()))?;
    if offer.count == 0 || offer.count > MAX_ENTRIES {
        return Err(protocol(format!(
            "offer of {} entries (1 to {MAX_ENTRIES} allowed)",
            offer.count
        )));
    }
    let mut entries: Vec<(RelPath, Entry)> = Vec::with_capacity(offer.count.min(1024) as usize);
    while (entries.len() as u64) < offer.count {
        let OfferEntries(batch) =
            offer_part(offer_deadline, timeouts, session::recv(&mut ctl, &mut est)).await?;
        if batch.is_empty() || entries.len() as u64 + batch.len() as u64 > offer.count {
            return Err(protocol("offer entries do not match the announced count"));
        }
        for e in batch {
            let rel = RelPath::parse(&e.path)?;
            entries.push((rel, e));
        }
    }
    check_collisions(entries.iter().map(|(r, _)| r))?;
    let sum = entries
        .iter()
        .try_fold(0u64, |acc, (_, e)| acc.checked_add(e.size));
    if sum != Some(offer.total_size) {
        return Err(protocol(
            "offered sizes do not add up to the announced total",
        ));
    }
    let mut top_level: Vec<String> = entries
        .iter()
        .filter_map(|(r, _)| r.components().next().map(crate::transfer::paths::escape))
        .collect();
    top_level.dedup();
    let shown = Event::Offer {
        peer,
        files: offer.count,
        total: offer.total_size,
        top_level,
    };
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
    let refusal = if asked == Some(false) {
        Some("declined by the receiving user".to_string())
    } else if asked.is_none() && !known && !policy.yes {
        Some(format!(
            "offer from unknown sender {} needs --yes",
            peer.fingerprint()
        ))
    } else if let Some((rel, _)) = entries
        .iter()
        .find(|(r, _)| !policy.overwrite && dest.exists(r))
    {
        Some(format!("{rel} already exists at the receiver"))
    } else {
        None
    };
    let (plan, refusal) = match refusal {
        Some(r) => (ResumePlan::default(), Some(r)),
        None => plan_resume(dest, &peer, &entries, chunk, offer.total_size)?,
    };
    // The decision is on record before the sender hears it; without a record, nothing
    // is accepted.
    let recorded = match opened {
        Ok(()) => {
            let reason = refusal.as_deref();
            rec.offer(&offer.transfer_id, offer.count, offer.total_size, reason)
                .await
        }
        Err(e) => Err(e),
    };
    let refusal = match (&recorded, refusal) {
        (Err(_), _) => Some("the receiver could not write its audit record".to_string()),
        (Ok(()), r) => r,
    };
    if let Some(reason) = refusal {
        session::send(&mut ctl, &mut est, &Reply::Refuse(reason.clone())).await?;
        recorded?;
        return Err(TransferError::Refused(reason));
    }
    let reply = if plan.points.is_empty() {
        Reply::Accept
    } else {
        Reply::AcceptResume(plan.points.clone())
    };
    session::send(&mut ctl, &mut est, &reply).await?;
    let mut held = plan.held;

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
    // Up to FILES_IN_FLIGHT files at once, each on its own stream.
    let mut started = vec![false; entries.len()];
    let mut accepted = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    while accepted < entries.len() || !tasks.is_empty() {
        tokio::select! {
            s = conn.accept_uni(), if accepted < entries.len() && tasks.len() < FILES_IN_FLIGHT => {
                let mut s = s?;
                accepted += 1;
                let mut header = [0u8; FILE_STREAM_HEADER];
                let read = async {
                    s.read_exact(&mut header)
                        .await
                        .map_err(|e| protocol(format!("file stream header: {e}")))
                };
                timeouts.within(Stage::StreamHeader, read).await?;
                let (index, first) = split_header(&header);
                let slot = usize::try_from(index)
                    .ok()
                    .filter(|&i| i < entries.len() && !started[i])
                    .ok_or_else(|| protocol(format!("file stream for unknown or repeated file {index}")))?;
                started[slot] = true;
                let (rel, e) = &entries[slot];
                let layout = ChunkLayout::new(e.size, chunk);
                let mut ctx = FileKeyContext::fresh(transfer_id, index, chunk);
                let mut tree = TreeHash::new(&layout);
                if first != 0 {
                    // Only where this receiver offered to continue, and only from that chunk.
                    let (from, prefix, prefix_tree) = held
                        .remove(&slot)
                        .filter(|(from, _, _)| *from == first)
                        .ok_or_else(|| protocol(format!("file {index} resumed at a chunk not offered")))?;
                    rec.resumed(rel.as_str(), e.size, layout.offset(from)).await?;
                    ctx.resume_from = from;
                    ctx.resume_prefix_hash = prefix;
                    tree = prefix_tree;
                    resumed += layout.offset(from);
                    moved.fetch_add(layout.offset(from), std::sync::atomic::Ordering::Relaxed);
                }
                let mut part = dest.open_part(rel, layout.offset(first), e.size)?;
                let writer = part.writer()?;
                let mut reservation = part.take_reservation();
                let mut checkpoint = Checkpoint::new(
                    part.writer()?,
                    part.sidecar_path().to_path_buf(),
                    Sidecar::new(&peer, rel, e, chunk),
                    first,
                )
                .map_err(|source| TransferError::Data {
                    file: rel.to_string(),
                    source: DataError::Sink(source),
                })?;
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
                    std::os::unix::fs::FileExt::write_all_at(&writer, buf, off)?;
                    checkpoint.wrote(off / chunk_bytes, buf.len() as u64)
                });
                let progress = progress_reporter(events, offer.total_size, &moved);
                let (pool, overwrite, mode, shown, size) =
                    (Arc::clone(pool), policy.overwrite, e.mode, rel.to_string(), e.size);
                let rec = Arc::clone(rec);
                let name = rel.as_str().to_string();
                tasks.spawn(async move {
                    let r = match data::receive_file(s, &pool, fd, sink, progress).await {
                        // Verified; on record before it gets its name.
                        Ok(hash) => match rec.file_completed(&name, size, &hash).await {
                            Ok(()) => part
                                .finalize(overwrite, mode)
                                .map(|_| hash)
                                .map_err(TransferError::from),
                            Err(a) => Err(TransferError::Audit(a)),
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
    rec.receipt(&hashes, offer.total_size).await?;
    session::send(
        &mut ctl,
        &mut est,
        &Receipt(hashes.iter().map(|h| *h.as_bytes()).collect()),
    )
    .await?;
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

/// The file index and first chunk of a file stream's header.
fn split_header(h: &[u8; FILE_STREAM_HEADER]) -> (u64, u64) {
    let (a, b) = h.split_at(8);
    let word = |x: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(x);
        u64::from_be_bytes(w)
    };
    (word(a), word(b))
}

/// What the receiver offers to continue: the points sent, and per file slot the chunk,
/// prefix hash and hash state to continue from.
#[derive(Default)]
struct ResumePlan {
    points: Vec<ResumePoint>,
    held: std::collections::HashMap<usize, (u64, [u8; 32], TreeHash)>,
}

/// Finds the files this receiver holds in part from an interrupted transfer of the same
/// sender, and checks that what is left to receive fits (and that the destination is
/// writable). Returns the plan, or a refusal.
fn plan_resume(
    dest: &Destination,
    peer: &PublicKey,
    entries: &[(RelPath, Entry)],
    chunk: ChunkSize,
    total: u64,
) -> Result<(ResumePlan, Option<String>), TransferError> {
    let mut plan = ResumePlan::default();
    let mut have = 0u64;
    for (i, (rel, e)) in entries.iter().enumerate() {
        let Some((file, part)) = dest.existing_part(rel) else {
            continue;
        };
        let Some(sidecar) = Sidecar::load(&Sidecar::path_for(&part)) else {
            let shown = crate::transfer::paths::escape(&part.to_string_lossy());
            return Ok((
                plan,
                Some(format!(
                    "{rel}: a partial file without a resume record is in the way ({shown})"
                )),
            ));
        };
        if !sidecar.matches(peer, rel, e, chunk) {
            continue; // Another transfer's leftover: it is started over.
        }
        let layout = ChunkLayout::new(e.size, chunk);
        // At least the last chunk is always sent again.
        let from = sidecar.durable_chunks.min(layout.count() - 1);
        let on_disk = file.metadata().map(|m| m.len()).unwrap_or(0);
        if from == 0 || on_disk < layout.offset(from) {
            continue;
        }
        let (prefix, tree) = resume::hash_prefix(&file, &layout, from)?;
        plan.points.push(ResumePoint {
            file: i as u64,
            from_chunk: from,
            prefix_blake3: prefix,
        });
        plan.held.insert(i, (from, prefix, tree));
        have += layout.offset(from);
    }
    let space = dest.space()?;
    if space.read_only {
        return Ok((plan, Some("the destination is read-only".into())));
    }
    let needed = total.saturating_sub(have);
    if needed > space.available {
        return Ok((
            plan,
            Some(format!(
                "not enough free space at the destination: {needed} bytes needed, {} available",
                space.available
            )),
        ));
    }
    Ok((plan, None))
}
