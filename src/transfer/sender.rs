//! The sending side of a transfer: a [`Sender`], configured once, sends files over a QUIC
//! connection to a [`Recipient`] (docs/PROTOCOL.md, "Transfer").

use std::sync::Arc;
use std::time::Instant;

use crate::audit::{Audit, AuthMethod, SessionAudit, Side};
use crate::crypto::file_hash::{FileHash, FileHasher, Hasher};
use crate::crypto::fips::NotApproved;
use crate::crypto::fips_identity::FipsPin;
use crate::crypto::handshake::Policy as HandshakePolicy;
use crate::crypto::handshake::{HandshakeError, Initiator, TRANSFER_ID_LEN};
use crate::crypto::hybrid::PqPolicy;
use crate::crypto::identity::{Identity, PublicKey};
use crate::crypto::pake::Code;
use crate::crypto::pipeline::CipherPool;
use crate::crypto::stream::{
    ChunkLayout, ChunkSize, DEFAULT_CHUNK_SIZE, FileKeyContext, TransferKey,
};
use crate::crypto::suite::SuitePolicy;
use crate::session::{self, SessionError, Stage, Timeouts};
use crate::transfer::data::{self, DataError, FileData};
use crate::transfer::error::{CLOSE_DONE, TransferError, Violation};
use crate::transfer::events::{Emit, Event, Events, Summary};
use crate::transfer::paths::RelPath;
use crate::transfer::protocol::{
    Entry, MANIFEST_BYTES_PER_MESSAGE, OFFER_ITEM_VERSION, OfferDirs, OfferEntries, OfferItem,
    OfferStart, ReceiptHashes, ReceiptStart, Refusal, Reply, ResumePoint, ResumePoints,
};
use crate::transfer::resume;
use crate::transfer::source::{Collected, OpenError, OpenSource, SourceFile};
use crate::transfer::teardown;
use crate::wire::stream_header::StreamHeader;

/// How the sender authenticates the receiver.
#[derive(Debug, Clone)]
pub enum Recipient {
    /// A pinned key from the address book (Noise IK).
    Known(PublicKey),
    /// A one-time code phrase shared out of band (SPAKE2 + Noise XXpsk0).
    Code(Code),
    /// FIPS mode (a FIPS build only): the receiver's P-256 key pinned in the address book
    /// (`pin`), checked on the end-to-end connection's TLS 1.3; `key` names it (and meets
    /// it at a relay) as [`Recipient::Known`] does.
    Fips {
        /// The receiver's key in the address book.
        key: PublicKey,
        /// Its FIPS pin.
        pin: FipsPin,
    },
}

impl Recipient {
    /// How the peer is authenticated.
    pub fn method(&self) -> AuthMethod {
        match self {
            Recipient::Known(_) => AuthMethod::PinnedKey,
            Recipient::Fips { .. } => AuthMethod::FipsKey,
            Recipient::Code(_) => AuthMethod::CodePhrase,
        }
    }

    /// The rendezvous id the two sides meet at (a relay pairs them by it).
    pub fn rendezvous(&self) -> [u8; 32] {
        match self {
            Recipient::Known(key) | Recipient::Fips { key, .. } => rendezvous_for(key),
            Recipient::Code(code) => rendezvous_for_code(code),
        }
    }

    /// The recipient for the address book's `peer`: [`Recipient::Known`], or in a FIPS
    /// build [`Recipient::Fips`], refused when the book has no FIPS pin for it.
    pub fn for_peer(peer: &crate::peers::Peer) -> Result<Self, NotApproved> {
        if !crate::crypto::fips::ENABLED {
            return Ok(Recipient::Known(peer.key));
        }
        match peer.fips {
            Some(pin) => Ok(Recipient::Fips { key: peer.key, pin }),
            None => Err(NotApproved(format!(
                "the address book has no FIPS pin for {}: add the one its `conduit id` prints with `conduit peers fips {} PIN`",
                peer.name, peer.name
            ))),
        }
    }
}

/// The rendezvous id of a known recipient in direct mode.
pub fn rendezvous_for(recipient: &PublicKey) -> [u8; 32] {
    blake3::derive_key("phi-conduit v1 rendezvous", recipient.as_bytes())
}

/// The rendezvous id of a code's nameplate.
pub fn rendezvous_for_code(code: &Code) -> [u8; 32] {
    blake3::derive_key(
        "phi-conduit v1 nameplate",
        code.nameplate().to_string().as_bytes(),
    )
}

/// `N` random bytes from the cryptographic module's generator (the FIPS module's DRBG
/// in a FIPS build): session secrets and transfer ids.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], TransferError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| {
        TransferError::Io(std::io::Error::other(
            "the cryptographic module's random generator failed",
        ))
    })?;
    Ok(b)
}

/// The sending side, configured once: this endpoint's identity, the cipher workers, the
/// chunk size, the timeouts, the audit trail (off unless set) and the event sink (quiet
/// unless set). Each [`Sender::send`] is one transfer. A clone shares the cipher workers
/// and the audit trail (the agent gives each delivery its own event sink).
#[derive(Clone)]
pub struct Sender {
    identity: Identity,
    pool: Arc<CipherPool>,
    chunk: ChunkSize,
    suites: SuitePolicy,
    post_quantum: PqPolicy,
    bind_channel: bool,
    timeouts: Timeouts,
    audit: Audit,
    events: Events,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("key", &self.identity.public())
            .field("chunk", &self.chunk)
            .field("suites", &self.suites)
            .field("post_quantum", &self.post_quantum)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender with `identity`, sealing on `pool`; default chunk size and timeouts, no
    /// audit trail, no events.
    pub fn new(identity: Identity, pool: Arc<CipherPool>) -> Self {
        Sender {
            identity,
            pool,
            chunk: DEFAULT_CHUNK_SIZE,
            suites: SuitePolicy::Auto,
            post_quantum: PqPolicy::default(),
            bind_channel: true,
            timeouts: Timeouts::default(),
            audit: Audit::off(),
            events: crate::transfer::events::quiet(),
        }
    }

    /// Binds the handshake to the QUIC connection it runs on (on by default: a direct
    /// connection, or one through the relay's datagram switch, is end to end). Off only
    /// on a relay's splice, where each side has its own connection to the relay; the
    /// receiver must be set alike (docs/PROTOCOL.md, "Channel binding").
    pub fn channel_binding(mut self, on: bool) -> Self {
        self.bind_channel = on;
        self
    }

    /// The STREAM chunk size of every file.
    pub fn chunk_size(mut self, chunk: ChunkSize) -> Self {
        self.chunk = chunk;
        self
    }

    /// The STREAM cipher suites offered (default: [`SuitePolicy::Auto`]).
    pub fn suites(mut self, suites: SuitePolicy) -> Self {
        self.suites = suites;
        self
    }

    /// Whether the post-quantum (ML-KEM-768) exchange is offered and required (default:
    /// [`PqPolicy::Required`]).
    pub fn post_quantum(mut self, post_quantum: PqPolicy) -> Self {
        self.post_quantum = post_quantum;
        self
    }

    /// How long to wait for the receiver at each step.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The audit trail each transfer leaves its records in.
    pub fn audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    /// Where each transfer reports its [`Event`]s.
    pub fn events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    /// This endpoint's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Sends `files` (and their empty directories) to `to` over `conn`, until done or
    /// until `cancel` resolves.
    ///
    /// The connection is closed here, with the close code of the outcome: done, the
    /// error's ([`TransferError::close_code`]), or cancelled (then the interruption is
    /// recorded and the result is [`TransferError::Cancelled`]; the receiver keeps what
    /// it has for a resume). The caller keeps the endpoint until it is idle.
    pub async fn send(
        &self,
        conn: &quinn::Connection,
        to: &Recipient,
        files: &Collected,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<Summary, TransferError> {
        self.send_maybe_item(conn, to, files, None, cancel)
            .await
            .map(|s| s.summary)
    }

    /// Sends `files` as the delivery item `item` (a transfer agent's outbox item; the id
    /// stays the same across retries), as [`Sender::send`] does. A receiver that
    /// delivered this item before answers with its original receipt and no data moves:
    /// the hashes are checked against the files here, and the result says
    /// [`ItemSent::repeat`]. A receiver that does not know items receives the files as
    /// any offer.
    pub async fn send_item(
        &self,
        conn: &quinn::Connection,
        to: &Recipient,
        files: &Collected,
        item: [u8; 16],
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<ItemSent, TransferError> {
        self.send_maybe_item(conn, to, files, Some(item), cancel)
            .await
    }

    async fn send_maybe_item(
        &self,
        conn: &quinn::Connection,
        to: &Recipient,
        files: &Collected,
        item: Option<[u8; 16]>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<ItemSent, TransferError> {
        if let Err(e) = crate::crypto::fips::refuse_session(to, self.suites) {
            conn.close(
                super::error::CLOSE_ERROR.into(),
                b"not allowed in FIPS mode",
            );
            return Err(e.into());
        }
        let rec = Arc::new(self.audit.session(Side::Send));
        rec.names().learn(
            files
                .files
                .iter()
                .map(|f| f.rel.as_str())
                .chain(files.dirs.iter().map(RelPath::as_str)),
        );
        let emit = Emit {
            sink: Arc::clone(&self.events),
            names: rec.names().clone(),
        };
        let transfer = self.run(conn, to, files, item, &emit, &rec);
        tokio::pin!(transfer);
        let result = tokio::select! {
            r = &mut transfer => r,
            // The connection is closed (as cancelled) while the transfer still lives:
            // dropped first, its file streams would be finished, and the receiver would
            // read a truncated file (an integrity failure) instead of the cancellation.
            () = cancel => return Err(teardown::cancelled(conn, &rec).await),
        };
        match teardown::recorded(&rec, result).await {
            Ok(s) => Ok(s),
            Err(e) => {
                if e.handshake_error()
                    .is_some_and(|h| !matches!(h, HandshakeError::PeerAborted(_)))
                {
                    // This side failed the handshake and queued an abort frame: let it
                    // reach the receiver (it closes once it has read it).
                    teardown::close_after_error(conn, &e).await;
                } else {
                    conn.close(e.close_code().into(), b"error");
                }
                Err(e)
            }
        }
    }

    async fn run(
        &self,
        conn: &quinn::Connection,
        recipient: &Recipient,
        collected: &Collected,
        item: Option<[u8; 16]>,
        events: &Emit,
        rec: &Arc<SessionAudit>,
    ) -> Result<ItemSent, TransferError> {
        let (files, dirs) = (&collected.files[..], &collected.dirs[..]);
        let (local, timeouts, chunk, pool) =
            (&self.identity, &self.timeouts, self.chunk, &self.pool);
        let (tx, rx) = conn.open_bi().await?;
        let mut ctl = tokio::io::join(rx, tx);
        let transfer_id: [u8; TRANSFER_ID_LEN] = random()?;
        let policy = HandshakePolicy {
            suites: self.suites,
            post_quantum: self.post_quantum,
            channel: channel_of(conn, self.bind_channel)?,
        };
        let mut est = match recipient {
            Recipient::Fips { key, pin } => {
                let keys = crate::crypto::fips_session::TlsKeys::of(conn)
                    .map_err(|e| TransferError::Unauthenticated(e.into()))?;
                let peer = crate::transport::fips_tls::peer_pin(conn);
                let hello = (*key, &transfer_id, self.suites);
                timeouts
                    .within(
                        Stage::Handshake,
                        session::initiate_fips(&mut ctl, peer, pin, &keys, hello),
                    )
                    .await
            }
            Recipient::Known(key) => {
                let (machine, first) = Initiator::known_peer_with(
                    local,
                    key,
                    &rendezvous_for(key),
                    &transfer_id,
                    policy,
                )
                .map_err(|e| TransferError::Unauthenticated(e.into()))?;
                timeouts
                    .within(
                        Stage::Handshake,
                        session::initiate(&mut ctl, machine, first),
                    )
                    .await
            }
            Recipient::Code(code) => {
                let (machine, first) =
                    Initiator::code_with(local, code, &rendezvous_for_code(code), policy);
                timeouts
                    .within(
                        Stage::Handshake,
                        session::initiate(&mut ctl, machine, first),
                    )
                    .await
            }
        }
        .map_err(TransferError::Unauthenticated)?;
        // Authenticated: candidates may be told and probes sent (a connection through
        // the relay's switch), and each change of path is an event.
        let _path = events.follow_path(conn);
        let (mut rx, mut tx) = ctl.into_inner();
        rec.opened(
            &est.remote_static(),
            recipient.method(),
            Some(crate::transport::path::path_of(conn)),
        )
        .await?;
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
                offer_and_answer(&mut rx, &mut tx, &mut est, &offer, item, files, dirs),
            )
            .await?;
        let points = match answer {
            Answer::Accept(points) => points,
            Answer::Delivered => {
                rec.offer(&transfer_id, offer.count, total, None).await?;
                let summary = self
                    .repeat(&mut rx, &mut est, files, (total, start), conn, rec)
                    .await?;
                conn.close(CLOSE_DONE.into(), b"done");
                return Ok(ItemSent {
                    summary,
                    repeat: true,
                });
            }
            Answer::Refuse(refusal) => {
                let reason = refusal.explain();
                rec.offer(&transfer_id, offer.count, total, Some(&reason))
                    .await?;
                return Err(TransferError::Refused(refusal));
            }
        };
        // Accepted: give a direct path a moment to be found before the data moves, so
        // that a transfer that can go direct hardly touches the relay.
        crate::transport::path::settle(conn, crate::transport::punch::SETTLE).await;
        rec.offer(&transfer_id, offer.count, total, None).await?;
        let mut resume_at = std::collections::HashMap::new();
        for p in points {
            let ok = usize::try_from(p.file).is_ok_and(|i| i < files.len())
                && resume_at
                    .insert(p.file, (p.from_chunk, p.prefix_hash))
                    .is_none();
            if !ok {
                return Err(Violation::UnknownResumePoint.into());
            }
        }
        let keys = TransferKey::derive(est.file_salt().as_slice(), &secret)
            .with_suite(est.suite())
            .with_file_hash(est.file_hash());
        let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut sent: Vec<Option<FileHash>> = vec![None; files.len()];
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
            let mut tree = FileHasher::new(keys.file_hash(), &layout);
            if let Some(&(from, theirs)) = resume_at.get(&(i as u64)) {
                if from == 0 || from >= layout.count() {
                    return Err(Violation::ResumeOutsideFile.into());
                }
                // Continue only over the very same bytes; otherwise send the file again.
                let (ours, prefix_tree) =
                    resume::hash_prefix(source.file(), &layout, from, keys.file_hash())?;
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
                        break p.map_err(|_| TransferError::Io(std::io::Error::other("file window closed")))?;
                    }
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                        sent_one(done, files, &mut sent)?;
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
            let progress = events.progress(total, &moved);
            let (pool, conn, rec) = (Arc::clone(pool), conn.clone(), Arc::clone(rec));
            let (name, size) = (f.rel.as_str().to_string(), f.size);
            tasks.spawn(async move {
                let sent = async {
                    s.write_all(&header).await.map_err(DataError::from)?;
                    data::send_file(&conn, &mut s, &pool, fd, source, progress).await
                };
                let hash = sent.await.map_err(|e| (i, FileFailure::Data(e)))?;
                // Its bytes have left: the next file may start while this one is put on
                // record.
                drop(permit);
                // On record here, on the file's task, so that the records of the files
                // finishing together are committed together (group commit).
                rec.file_completed(&name, size, &hash)
                    .await
                    .map_err(|e| (i, FileFailure::Audit(e)))?;
                Ok((i, hash))
            });
        }
        while let Some(done) = tasks.join_next().await {
            sent_one(done, files, &mut sent)?;
        }
        let sent: Vec<(RelPath, u64, FileHash)> = files
            .iter()
            .zip(sent)
            .map(|(f, h)| h.map(|h| (f.rel.clone(), f.size, h)))
            .collect::<Option<_>>()
            .ok_or_else(|| TransferError::Io(std::io::Error::other("a file was not sent")))?;
        let (hashes, receiver_head) = timeouts
            .within(Stage::Receipt, read_receipt(&mut rx, &mut est, sent.len()))
            .await?;
        for ((rel, _, h), theirs) in sent.iter().zip(&hashes) {
            if h.as_bytes() != theirs {
                return Err(TransferError::ReceiptMismatch(rel.to_string()));
            }
        }
        let ours: Vec<FileHash> = sent.iter().map(|(_, _, h)| *h).collect();
        rec.receipt(
            &ours,
            est.file_hash(),
            total,
            receiver_head.as_ref(),
            Some(crate::transport::path::path_of(conn)),
        )
        .await?;
        // Only now, confirmed by the receipt, is each file done.
        for (rel, size, hash) in &sent {
            events.emit(Event::FileDone {
                path: rel.to_string(),
                size: *size,
                hash: *hash,
            });
        }
        let seconds = start.elapsed().as_secs_f64();
        conn.close(CLOSE_DONE.into(), b"done");
        Ok(ItemSent {
            summary: Summary {
                peer: est.remote_static(),
                files: sent,
                bytes: total,
                resumed,
                seconds,
                suite: est.suite(),
                path: crate::transport::path::path_of(conn),
            },
            repeat: false,
        })
    }

    /// The receiver delivered this item before: its original receipt, checked against
    /// the BLAKE3 of each file here (read once, through the descriptor opened for it).
    async fn repeat(
        &self,
        rx: &mut quinn::RecvStream,
        est: &mut crate::crypto::handshake::Established,
        files: &[SourceFile],
        (total, start): (u64, Instant),
        conn: &quinn::Connection,
        rec: &SessionAudit,
    ) -> Result<Summary, TransferError> {
        let (hashes, receiver_head) = self
            .timeouts
            .within(Stage::Receipt, read_receipt(rx, est, files.len()))
            .await?;
        let mut ours = Vec::with_capacity(files.len());
        for (f, theirs) in files.iter().zip(&hashes) {
            let source = OpenSource::open(f, u64::from(self.chunk.get())).map_err(|e| match e {
                OpenError::Changed(c) => TransferError::Data {
                    file: f.rel.to_string(),
                    source: DataError::SourceChanged(c),
                },
                OpenError::Io(e) => TransferError::Io(e),
            })?;
            let fd = source.file().try_clone()?;
            let alg = est.file_hash();
            let hash = tokio::task::spawn_blocking(move || {
                let mut h = Hasher::new(alg);
                h.update_reader(&fd)?;
                Ok::<_, std::io::Error>(h.finalize())
            })
            .await
            .map_err(|e| TransferError::Io(std::io::Error::other(e)))??;
            source.check_unchanged().map_err(|c| TransferError::Data {
                file: f.rel.to_string(),
                source: DataError::SourceChanged(c),
            })?;
            if hash.as_bytes() != theirs {
                return Err(TransferError::ReceiptMismatch(f.rel.to_string()));
            }
            ours.push(hash);
        }
        rec.receipt(
            &ours,
            est.file_hash(),
            total,
            receiver_head.as_ref(),
            Some(crate::transport::path::path_of(conn)),
        )
        .await?;
        Ok(Summary {
            peer: est.remote_static(),
            files: files
                .iter()
                .zip(ours)
                .map(|(f, h)| (f.rel.clone(), f.size, h))
                .collect(),
            bytes: total,
            resumed: total,
            seconds: start.elapsed().as_secs_f64(),
            suite: est.suite(),
            path: crate::transport::path::path_of(conn),
        })
    }
}

/// What [`Sender::send_item`] ends with.
#[derive(Debug, Clone)]
pub struct ItemSent {
    /// The files and their hashes, as the receipt confirmed them.
    pub summary: Summary,
    /// The receiver had delivered this item before and answered with its original
    /// receipt: no second copy was written, no data moved.
    pub repeat: bool,
}

/// The receiver's answer to an offer.
enum Answer {
    /// Accepted, with the resume points.
    Accept(Vec<ResumePoint>),
    /// Refused.
    Refuse(Refusal),
    /// The item was delivered before; the original receipt follows.
    Delivered,
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
type FileOutcome = Result<(usize, FileHash), (usize, FileFailure)>;

/// Why a file's task failed.
enum FileFailure {
    /// Sending it.
    Data(DataError),
    /// Its record.
    Audit(crate::audit::AuditError),
}

/// Notes a file's task that finished: sent and on record, or the transfer's error.
fn sent_one(
    done: Result<FileOutcome, tokio::task::JoinError>,
    files: &[SourceFile],
    sent: &mut [Option<FileHash>],
) -> Result<(), TransferError> {
    let (i, hash) = match done {
        Ok(Ok(x)) => x,
        Ok(Err((i, FileFailure::Data(source)))) => {
            return Err(TransferError::Data {
                file: files[i].rel.to_string(),
                source,
            });
        }
        Ok(Err((_, FileFailure::Audit(e)))) => return Err(TransferError::Audit(e)),
        Err(e) => return Err(TransferError::Io(std::io::Error::other(e))),
    };
    // `file_done` waits for the receipt that confirms it.
    sent[i] = Some(hash);
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

/// The channel binding of `conn` when `bind` ([`HandshakePolicy::channel`]).
pub(crate) fn channel_of(
    conn: &quinn::Connection,
    bind: bool,
) -> Result<Option<[u8; 32]>, TransferError> {
    if !bind {
        return Ok(None);
    }
    crate::crypto::handshake::channel_binding(conn)
        .map(Some)
        .ok_or_else(|| {
            TransferError::Io(std::io::Error::other(
                "the QUIC connection gave no channel binding (its handshake is not complete)",
            ))
        })
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
    item: Option<[u8; 16]>,
    files: &[SourceFile],
    dirs: &[RelPath],
) -> Result<Answer, TransferError> {
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
                match item {
                    // The item travels as a trailing extension of the first message.
                    Some(item) => est.seal_message(&(
                        start,
                        OfferItem {
                            version: OFFER_ITEM_VERSION,
                            item,
                        },
                    )),
                    None => est.seal_message(start),
                }
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
        Reply::Refuse(r) => return Ok(Answer::Refuse(r)),
        Reply::Delivered if item.is_some() => return Ok(Answer::Delivered),
        Reply::Delivered => {
            return Err(Violation::MalformedOffer(
                "a repeat answer to an offer without an item".into(),
            )
            .into());
        }
        Reply::Accept { resume_points } => resume_points,
    };
    if n > files.len() as u64 {
        return Err(Violation::TooManyResumePoints.into());
    }
    let mut points = Vec::with_capacity(n as usize);
    while (points.len() as u64) < n {
        let ResumePoints(batch) = session::recv(rx, est).await?;
        if batch.is_empty() || points.len() as u64 + batch.len() as u64 > n {
            return Err(Violation::ResumePointCount.into());
        }
        points.extend(batch);
    }
    Ok(Answer::Accept(points))
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
        return Err(Violation::ReceiptCount.into());
    }
    let mut hashes = Vec::with_capacity(files);
    while hashes.len() < files {
        let ReceiptHashes(batch) = session::recv(rx, est).await?;
        if batch.is_empty() || hashes.len() + batch.len() > files {
            return Err(Violation::ReceiptHashCount.into());
        }
        hashes.extend(batch);
    }
    Ok((hashes, audit_head))
}
