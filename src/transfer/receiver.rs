//! The receiving side of a transfer: a [`Receiver`], configured once, authenticates the
//! sender on a QUIC connection and reads its offer; the caller gets an [`IncomingOffer`]
//! to [`accept`](IncomingOffer::accept) into a destination or to
//! [`refuse`](IncomingOffer::refuse) (docs/PROTOCOL.md, "Transfer").
//!
//! Whatever the outcome, the connection ends here: its close code, the abort or refusal
//! let through first, the receipt waited for, the interruption recorded on cancellation
//! (partial files stay for a resume).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crate::audit::names::Names;
use crate::audit::{Audit, AuditError, AuthMethod, SessionAudit, Side};
use crate::crypto::file_hash::FileHash;
use crate::crypto::handshake::{Established, Responder};
use crate::crypto::identity::{Identity, PublicKey};
use crate::crypto::pake::Code;
use crate::crypto::pipeline::CipherPool;
use crate::crypto::stream::ChunkSize;
use crate::peers::AddressBook;
use crate::session::{self, SessionError, Stage, Timeouts};
use crate::transfer::dest::Destination;
use crate::transfer::error::{TransferError, Violation};
use crate::transfer::events::{Emit, Event, Events, Summary, TOP_LEVEL_SHOWN};
use crate::transfer::manifest::{ManifestReader, Next, OfferError, Policy, ValidOffer};
use crate::transfer::protocol::{OfferStart, Refusal, RefusalCode, Reply, decode_offer_start};
use crate::transfer::sender::{rendezvous_for, rendezvous_for_code};
use crate::transfer::teardown;
use crate::transport::path::{PathKind, PathPolicy};

/// Most partial files one offer continues (each is held open from the offer to its
/// stream); further ones are received from the start.
pub const MAX_HELD_PARTS: usize = 256;

/// How the receiver decides what it lets in.
#[derive(Debug, Clone, Default)]
pub struct ReceivePolicy {
    /// Complete the handshake with senders not in the address book.
    pub accept_unknown: bool,
    /// Read an unknown sender's offer and hand it to the caller like any other. Without
    /// it, an offer from a sender not in the address book is refused before its manifest
    /// is read. (A sender that proved the code phrase is expected, never unknown.)
    pub unknown_sender_offers: bool,
    /// Replace existing files.
    pub overwrite: bool,
    /// Keep the owner's execute bit of the sender's files; otherwise every received file
    /// is 0600.
    pub keep_modes: bool,
    /// Authenticate with this code phrase instead of the address book.
    pub code: Option<Code>,
    /// How long to wait for the sender at each step.
    pub timeouts: Timeouts,
    /// Transfers at once, for a receiver that authenticates several connections at once:
    /// an authenticated sender takes a permit for its whole transfer, and is refused
    /// ("busy") when there is none. Connections still in their handshake take none.
    pub sessions: Option<Arc<tokio::sync::Semaphore>>,
    /// What one offer may hold.
    pub offers: Policy,
    /// The STREAM cipher suites accepted (`[transfer] suite`).
    pub suites: crate::crypto::suite::SuitePolicy,
    /// Whether a sender without the post-quantum exchange is accepted (`[transfer]
    /// post_quantum`).
    pub post_quantum: crate::crypto::hybrid::PqPolicy,
    /// Which paths this endpoint's transfers take (`[transfer] path`): a sender's own
    /// entry in the address book replaces it, unless `path_from_flag`.
    pub path: PathPolicy,
    /// `path` was given on the command line: it wins over the address book's entries.
    pub path_from_flag: bool,
}

/// The receiving side, configured once: this endpoint's identity and address book, its
/// [`ReceivePolicy`], the cipher workers, the audit trail (off unless set) and the event
/// sink (quiet unless set). Each [`Receiver::receive`] is one connection's transfer.
#[derive(Clone)]
pub struct Receiver {
    identity: Identity,
    book: AddressBook,
    policy: ReceivePolicy,
    pool: Arc<CipherPool>,
    audit: Audit,
    events: Events,
    bind_channel: bool,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("key", &self.identity.public())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A cancellation future, kept for the whole transfer.
type Cancel<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

impl Receiver {
    /// A receiver with `identity`, knowing the peers of `book`, opening on `pool`; the
    /// default policy (known senders only), no audit trail, no events.
    pub fn new(identity: Identity, book: AddressBook, pool: Arc<CipherPool>) -> Self {
        Receiver {
            identity,
            book,
            policy: ReceivePolicy::default(),
            pool,
            audit: Audit::off(),
            events: crate::transfer::events::quiet(),
            bind_channel: true,
        }
    }

    /// Binds the handshake to the QUIC connection it runs on: see
    /// [`Sender::channel_binding`](crate::transfer::Sender::channel_binding); the sender
    /// must be set alike.
    pub fn channel_binding(mut self, on: bool) -> Self {
        self.bind_channel = on;
        self
    }

    /// What this receiver lets in.
    pub fn policy(mut self, policy: ReceivePolicy) -> Self {
        self.policy = policy;
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

    /// The policy in force.
    pub fn receive_policy(&self) -> &ReceivePolicy {
        &self.policy
    }

    /// The audit trail.
    pub fn audit_trail(&self) -> &Audit {
        &self.audit
    }

    /// The rendezvous id senders meet this receiver at: its key's, or its code's.
    pub fn rendezvous(&self) -> [u8; 32] {
        match &self.policy.code {
            Some(code) => rendezvous_for_code(code),
            None => rendezvous_for(&self.identity.public()),
        }
    }

    /// Authenticates the sender on `conn` and reads its offer, until then or until
    /// `cancel` resolves (which stays in force for the rest of the transfer).
    ///
    /// An offer this receiver's policy refuses (too many entries, an unknown sender) is
    /// refused here, before its manifest is read, and comes back as
    /// [`TransferError::Refused`]. On every error the connection is already closed.
    ///
    /// A whole transfer on loopback, both sides auditing:
    ///
    /// ```
    /// use phi_conduit::audit::{self, Audit};
    /// use phi_conduit::crypto::{identity::Identity, pipeline::CipherPool};
    /// use phi_conduit::home::Home;
    /// use phi_conduit::peers::AddressBook;
    /// use phi_conduit::transfer::{Receiver, Recipient, Sender, dest::Destination, source};
    /// use phi_conduit::transport;
    /// use std::future::pending;
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
    /// let lab_chain = audit::chain_key(&lab);
    /// let to = Recipient::Known(lab.public());
    /// let pool = CipherPool::with_all_cores()?;
    /// let sender = Sender::new(clinic, pool.clone()).audit(clinic_audit);
    /// let receiver = Receiver::new(lab, lab_book, pool).audit(lab_audit);
    ///
    /// let note = dir.path().join("note.txt");
    /// std::fs::write(&note, "synthetic visit note")?;
    /// let files = source::collect_with_dirs(std::slice::from_ref(&note))?;
    /// let dest = Destination::open(&dir.path().join("inbox"))?;
    /// let server = transport::direct_server(([127, 0, 0, 1], 0).into())?;
    /// let addr = server.local_addr()?;
    /// let receiving = async {
    ///     let conn = server.accept().await.ok_or_else(|| anyhow::anyhow!("closed"))?.await?;
    ///     let offer = receiver.receive(&conn, pending()).await?;
    ///     assert!(offer.known());
    ///     anyhow::Ok(offer.accept(&dest).await?)
    /// };
    /// let sending = async {
    ///     let client = transport::direct_client(addr)?;
    ///     let conn = client.connect(addr, "phi-conduit")?.await?;
    ///     let sent = sender.send(&conn, &to, &files, pending()).await?;
    ///     client.wait_idle().await;
    ///     anyhow::Ok(sent)
    /// };
    /// let (sent, got) = tokio::try_join!(sending, receiving)?;
    /// assert_eq!(sent.files[0].2, got.files[0].2); // the same BLAKE3 at both ends
    /// assert_eq!(std::fs::read(dir.path().join("inbox/note.txt"))?, b"synthetic visit note");
    /// let valid = audit::verify::verify(&audit::dir(&lab_home), &lab_chain)?;
    /// assert!(valid.is_ok_and(|v| v.records == 5)); // created, opened, offer, file, receipt
    /// # Ok(()) }
    /// ```
    pub async fn receive<'a>(
        &'a self,
        conn: &quinn::Connection,
        cancel: impl Future<Output = ()> + Send + 'a,
    ) -> Result<IncomingOffer<'a>, TransferError> {
        let refused = crate::crypto::fips::refuse_code(self.policy.code.is_some())
            .and_then(|()| crate::crypto::fips::refuse_suite(self.policy.suites));
        if let Err(e) = refused {
            conn.close(
                super::error::CLOSE_ERROR.into(),
                b"not allowed in FIPS mode",
            );
            return Err(e.into());
        }
        let rec = Arc::new(self.audit.session(Side::Receive));
        let emit = Emit {
            sink: Arc::clone(&self.events),
            names: rec.names().clone(),
        };
        let mut cancel: Cancel<'a> = Box::pin(cancel);
        let read = self.read_offer(conn, &rec, &emit);
        let result = tokio::select! {
            r = read => r,
            () = &mut cancel => return Err(teardown::cancelled(conn, &rec).await),
        };
        match result {
            Ok(mut offer) => {
                offer.cancel = Some(cancel);
                Ok(offer)
            }
            Err(e) => Err(fail(conn, &rec, e).await),
        }
    }

    /// The handshake and the whole offer, checked.
    async fn read_offer<'a>(
        &'a self,
        conn: &quinn::Connection,
        rec: &Arc<SessionAudit>,
        emit: &Emit,
    ) -> Result<IncomingOffer<'a>, TransferError> {
        let policy = &self.policy;
        let timeouts = &policy.timeouts;
        let machine = Responder::new(&self.identity, &self.rendezvous(), policy.code.clone())
            .with_suites(policy.suites)
            .with_post_quantum(policy.post_quantum)
            .with_channel(crate::transfer::sender::channel_of(
                conn,
                self.bind_channel,
            )?);
        let accept_unknown = policy.accept_unknown;
        let book = &self.book;
        let mut accept = |k: &PublicKey| accept_unknown || book.find_by_key(k).is_some();
        // FIPS mode: the sender is the address book's peer whose FIPS pin signed the
        // connection's TLS handshake (no unknown senders, no code phrases).
        let by_pin =
            |pin: &crate::crypto::fips_identity::FipsPin| book.find_by_fips(pin).map(|p| p.key);
        // A peer that connects and says nothing is dropped after the handshake timeout.
        let handshake = async {
            let (tx, rx) = conn
                .accept_bi()
                .await
                .map_err(|e| SessionError::Io(e.into()))?;
            let mut ctl = tokio::io::join(rx, tx);
            let est = if crate::crypto::fips::ENABLED {
                let keys = crate::crypto::fips_session::TlsKeys::of(conn)?;
                let peer = crate::transport::fips_tls::peer_pin(conn);
                session::respond_fips(&mut ctl, peer, &by_pin, &keys, policy.suites).await?
            } else {
                session::respond(&mut ctl, machine, &mut accept).await?
            };
            Ok::<_, SessionError>((ctl, est))
        };
        let (ctl, mut est) = timeouts
            .within(Stage::Handshake, handshake)
            .await
            .map_err(TransferError::Unauthenticated)?;
        let (mut rx, mut tx) = ctl.into_inner();
        let permit = match &policy.sessions {
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
        let method = match policy.code {
            Some(_) => AuthMethod::CodePhrase,
            None if crate::crypto::fips::ENABLED => AuthMethod::FipsKey,
            None => AuthMethod::PinnedKey,
        };
        // Without a record nothing is accepted; the sender hears why at the offer.
        let opened = rec
            .opened(&peer, method, Some(crate::transport::path::path_of(conn)))
            .await;
        // A sender that proved the code the user typed here is expected.
        let known = book.find_by_key(&peer).is_some() || policy.code.is_some();
        // Known-recipient mode: the offer was the first transport message, which completed
        // the handshake. Code mode: it is the next message.
        let offer_deadline = tokio::time::Instant::now() + timeouts.offer;
        // The path policy for this peer (its own entry in our address book, unless the
        // command line said otherwise), and the path it came by.
        let peer_path = match book.find_by_key(&peer).and_then(|p| p.path) {
            Some(own) if !policy.path_from_flag => own,
            _ => policy.path,
        };
        let relayed = crate::transport::path::path_of(conn) == PathKind::Relayed;
        let first = match est.take_first_message() {
            Some(first) => first,
            None => {
                let next = async {
                    let body = session::read_frame(&mut rx).await?;
                    Ok::<_, SessionError>(est.open(&body)?)
                };
                offer_part(offer_deadline, timeouts, next).await?
            }
        };
        // An agent's offer carries its delivery item (an optional trailing extension).
        let (start, item): (OfferStart, _) =
            decode_offer_start(&first).map_err(|e| Violation::MalformedOffer(e.to_string()))?;
        let started = Instant::now();
        let chunk = ChunkSize::new(u64::from(start.chunk_size))
            .map_err(|e| Violation::ChunkSize(e.to_string()))?;
        let mut session = Session {
            conn: conn.clone(),
            rec: Arc::clone(rec),
            emit: emit.clone(),
            rx,
            tx,
            est,
            opened,
            known,
            peer,
            // A sender we know (or that proved the code) may learn our addresses: the
            // connection looks for a direct path while the offer is read and answered
            // (unless our address book keeps this peer on the relay).
            path: if known && peer_path == PathPolicy::Auto {
                emit.follow_path(conn)
            } else {
                None
            },
            keep_relayed: peer_path != PathPolicy::Auto,
            _permit: permit,
        };
        // Refusals that need no manifest come before it is read: an offer too large is
        // never held in memory, and an unknown sender's paths are not looked at.
        let early = match ManifestReader::new(start.clone(), &policy.offers) {
            Ok(_) if peer_path == PathPolicy::Direct && relayed => Err(Refusal::new(
                RefusalCode::Policy,
                "this receiver takes transfers from you only directly, not through a relay (its address book says path = direct)",
            )),
            Ok(reader) if known || policy.unknown_sender_offers => Ok(reader),
            Ok(_) => Err(Refusal::new(
                RefusalCode::UnknownSender,
                format!("sender {} is not in the address book", peer.fingerprint()),
            )),
            Err(OfferError::Refused(r)) => Err(r),
            Err(e) => return Err(e.into()),
        };
        let mut reader = match early {
            Ok(reader) => reader,
            Err(refusal) => {
                return match session.decide(&start, Some(refusal)).await {
                    Ok(()) => Err(TransferError::Io(std::io::Error::other(
                        "a refusal was not sent",
                    ))),
                    Err(e) => Err(e),
                };
            }
        };
        loop {
            let (rx, est) = (&mut session.rx, &mut session.est);
            match reader.next() {
                Next::Entries => reader
                    .entries(offer_part(offer_deadline, timeouts, session::recv(rx, est)).await?)?,
                Next::Dirs => reader
                    .dirs(offer_part(offer_deadline, timeouts, session::recv(rx, est)).await?)?,
                Next::Done => break,
            }
        }
        // Names mode hash: what this side prints shows these names hashed.
        rec.names().learn(reader.paths().map(|p| p.as_str()));
        let offer = reader.finish()?;
        let (top_level, top_level_count) = offer.top_level(TOP_LEVEL_SHOWN);
        emit.emit(Event::Offer {
            peer,
            files: offer.start.count,
            dirs: offer.start.dirs,
            total: offer.start.total_size,
            top_level,
            top_level_count,
        });
        Ok(IncomingOffer {
            receiver: self,
            session,
            offer,
            item,
            chunk,
            started,
            cancel: None,
        })
    }
}

/// Ends a connection that failed with `e`: the failure on record, the connection closed
/// with its code. Returns `e`.
async fn fail(conn: &quinn::Connection, rec: &SessionAudit, e: TransferError) -> TransferError {
    let e = match teardown::recorded::<()>(rec, Err(e)).await {
        Err(e) => e,
        Ok(_) => TransferError::Io(std::io::Error::other("recorded a success as a failure")),
    };
    teardown::close_after_error(conn, &e).await;
    e
}

/// One authenticated session of the receiver: the control stream and its records.
pub(crate) struct Session {
    pub(crate) conn: quinn::Connection,
    pub(crate) rec: Arc<SessionAudit>,
    pub(crate) emit: Emit,
    pub(crate) rx: quinn::RecvStream,
    pub(crate) tx: quinn::SendStream,
    pub(crate) est: Established,
    /// Whether the session's opening was recorded (without a record nothing is accepted).
    pub(crate) opened: Result<(), AuditError>,
    /// Whether the sender is in the address book, or proved the code.
    pub(crate) known: bool,
    pub(crate) peer: PublicKey,
    /// Follows the connection's path once the sender may learn our addresses.
    path: Option<crate::transfer::events::PathFollower>,
    /// This peer's transfers stay on the relay (its path policy is not `auto`).
    keep_relayed: bool,
    /// A place among the transfers at once, held for the whole transfer.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Session {
    /// Puts the receiver's decision on record, then tells the sender: a refusal (without
    /// its details to a sender this receiver does not know), or nothing yet for an
    /// acceptance. Without a record nothing is accepted. Returns the refusal as an error.
    pub(crate) async fn decide(
        &mut self,
        offer: &OfferStart,
        refusal: Option<Refusal>,
    ) -> Result<(), TransferError> {
        let opened = std::mem::replace(&mut self.opened, Ok(()));
        let recorded = match opened {
            Ok(()) => {
                let reason = refusal.as_ref().map(Refusal::explain);
                self.rec
                    .offer(
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
        let told = if self.known {
            refusal.clone()
        } else {
            refusal.for_unknown_sender()
        };
        session::send(&mut self.tx, &mut self.est, &Reply::Refuse(told)).await?;
        recorded?;
        Err(TransferError::Refused(refusal))
    }
}

/// An authenticated sender's offer, checked and waiting for the caller's decision:
/// [`accept`](Self::accept) it into a destination, or [`refuse`](Self::refuse) it. (A
/// person can be asked in between; the sender waits up to its answer timeout.)
pub struct IncomingOffer<'a> {
    receiver: &'a Receiver,
    session: Session,
    offer: ValidOffer,
    /// The delivery item the offer carries (an agent's), if any.
    item: Option<[u8; 16]>,
    chunk: ChunkSize,
    started: Instant,
    cancel: Option<Cancel<'a>>,
}

impl std::fmt::Debug for IncomingOffer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingOffer")
            .field("peer", &self.session.peer)
            .field("files", &self.offer.start.count)
            .field("dirs", &self.offer.start.dirs)
            .field("bytes", &self.offer.start.total_size)
            .finish_non_exhaustive()
    }
}

impl<'a> IncomingOffer<'a> {
    /// The sender's key.
    pub fn peer(&self) -> PublicKey {
        self.session.peer
    }

    /// Whether the sender is in the address book (or proved the code phrase).
    pub fn known(&self) -> bool {
        self.session.known
    }

    /// The offer: its start, files and empty directories.
    pub fn offer(&self) -> &ValidOffer {
        &self.offer
    }

    /// How this transfer shows file names (it has learnt the offer's names).
    pub fn names(&self) -> &Names {
        self.session.rec.names()
    }

    /// The delivery item this offer carries (a transfer agent's outbox item, stable across
    /// its retries), if any. A receiver that delivered it before answers with
    /// [`already_delivered`](Self::already_delivered).
    pub fn item(&self) -> Option<[u8; 16]> {
        self.item
    }

    /// The hash algorithm of this session's files, the one a receipt given to
    /// [`already_delivered`](Self::already_delivered) must use: SHA-256 in the FIPS
    /// session, BLAKE3 otherwise.
    pub fn file_hash(&self) -> crate::crypto::file_hash::HashAlg {
        self.session.est.file_hash()
    }

    /// Answers an offer whose [`item`](Self::item) this receiver delivered before: the
    /// original receipt (`hashes`, one per offered file, in offer order) instead of a
    /// second copy. The sender checks the hashes against its files. On record as an
    /// accepted offer and its receipt. Refused when the offer carries no item, or the
    /// hashes do not match its files in number.
    pub async fn already_delivered(self, hashes: &[FileHash]) -> Result<Summary, TransferError> {
        let IncomingOffer {
            mut session,
            offer,
            item,
            started,
            cancel,
            ..
        } = self;
        let (conn, rec) = (session.conn.clone(), Arc::clone(&session.rec));
        let alg = session.est.file_hash();
        let why = if item.is_none() || hashes.len() as u64 != offer.start.count {
            Some("not a repeated delivery item")
        } else if hashes.iter().any(|h| h.alg() != alg) {
            // Delivered in the other kind of session (FIPS or not): its receipt's hashes
            // are not the ones this session can check.
            Some("this item was delivered before under another file hash algorithm")
        } else {
            None
        };
        if let Some(why) = why {
            let refusal = Refusal::new(RefusalCode::Policy, why);
            let e = match session.decide(&offer.start, Some(refusal)).await {
                Ok(()) => TransferError::Io(std::io::Error::other("a refusal was not sent")),
                Err(e) => e,
            };
            return Err(fail(&conn, &rec, e).await);
        }
        let mut cancel: Cancel<'a> = cancel.unwrap_or_else(|| Box::pin(std::future::pending()));
        let answer = async {
            session.decide(&offer.start, None).await?;
            session::send(&mut session.tx, &mut session.est, &Reply::Delivered).await?;
            let head = session
                .rec
                .receipt(
                    hashes,
                    alg,
                    offer.start.total_size,
                    offer.start.audit_head.as_ref(),
                    Some(crate::transport::path::path_of(&session.conn)),
                )
                .await?;
            crate::transfer::receive_files::send_receipt(
                &mut session.tx,
                &mut session.est,
                hashes,
                head,
            )
            .await?;
            Ok::<_, TransferError>(())
        };
        let result = tokio::select! {
            r = answer => r,
            () = &mut cancel => return Err(teardown::cancelled(&conn, &rec).await),
        };
        let (peer, suite) = (session.peer, session.est.suite());
        drop(session);
        match result {
            Ok(()) => {
                teardown::wait_for_sender_close(&conn).await;
                Ok(Summary {
                    peer,
                    files: offer
                        .entries
                        .into_iter()
                        .zip(hashes)
                        .map(|((rel, e), h)| (rel, e.size, *h))
                        .collect(),
                    bytes: offer.start.total_size,
                    resumed: offer.start.total_size,
                    seconds: started.elapsed().as_secs_f64(),
                    suite,
                    path: crate::transport::path::path_of(&conn),
                })
            }
            Err(e) => Err(fail(&conn, &rec, e).await),
        }
    }

    /// Runs `fut` (asking a person, say) unless the transfer's cancellation future
    /// resolves first: then the transfer is cancelled as [`Receiver::receive`] says and
    /// this returns [`TransferError::Cancelled`] (drop the offer then).
    pub async fn until_cancelled<T>(
        &mut self,
        fut: impl Future<Output = T>,
    ) -> Result<T, TransferError> {
        let Some(cancel) = self.cancel.as_mut() else {
            return Ok(fut.await);
        };
        tokio::select! {
            t = fut => Ok(t),
            () = cancel => {
                self.cancel = Some(Box::pin(std::future::pending()));
                Err(teardown::cancelled(&self.session.conn, &self.session.rec).await)
            }
        }
    }

    /// Refuses the offer with `refusal`: on record, told to the sender (without details
    /// if it is unknown), the connection closed. Returns the refusal as the error it ends
    /// the transfer with ([`TransferError::Refused`]), or what failed on the way.
    pub async fn refuse(mut self, refusal: Refusal) -> TransferError {
        let e = match self.session.decide(&self.offer.start, Some(refusal)).await {
            Ok(()) => TransferError::Io(std::io::Error::other("a refusal was not sent")),
            Err(e) => e,
        };
        fail(&self.session.conn, &self.session.rec, e).await
    }

    /// Accepts the offer into `dest` and receives it, until the receipt is sent and the
    /// sender closed (or until the cancellation future resolves). The destination can
    /// still refuse: a file that exists (unless the policy overwrites), a name too long,
    /// too little space.
    pub async fn accept(self, dest: &Destination) -> Result<Summary, TransferError> {
        let IncomingOffer {
            receiver,
            mut session,
            offer,
            chunk,
            started,
            cancel,
            ..
        } = self;
        let (conn, rec) = (session.conn.clone(), Arc::clone(&session.rec));
        // Accepted: an unknown sender let in may now learn our addresses too.
        if session.path.is_none() && !session.keep_relayed {
            session.path = session.emit.follow_path(&conn);
        }
        let mut cancel: Cancel<'a> = cancel.unwrap_or_else(|| Box::pin(std::future::pending()));
        let result = {
            let receiving = crate::transfer::receive_files::receive(
                &mut session,
                offer,
                chunk,
                started,
                dest,
                &receiver.policy,
                &receiver.pool,
            );
            tokio::pin!(receiving);
            tokio::select! {
                r = &mut receiving => r,
                // Closed (as cancelled) while the receiving still lives: dropped first,
                // its streams would tell the sender they stopped, not why.
                () = &mut cancel => return Err(teardown::cancelled(&conn, &rec).await),
            }
        };
        drop(session);
        match result {
            Ok(summary) => {
                teardown::wait_for_sender_close(&conn).await;
                Ok(summary)
            }
            Err(e) => Err(fail(&conn, &rec, e).await),
        }
    }
}

/// One part of the offer, by the deadline of the whole offer ([`Timeouts::offer`]).
async fn offer_part<T>(
    deadline: tokio::time::Instant,
    timeouts: &Timeouts,
    part: impl Future<Output = Result<T, SessionError>>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::Home;
    use crate::transfer::source;
    use crate::transfer::{Recipient, Sender};

    /// What the receiving caller does with the offer.
    enum Decision {
        Accept,
        Refuse,
        CancelThenAccept,
    }

    /// A sender and a receiver that knows it, on loopback; the receiver's caller does
    /// `decision` once the offer is in. Returns both sides' results and the directory.
    async fn transfer(
        decision: Decision,
    ) -> (
        Result<Summary, TransferError>,
        Result<Summary, TransferError>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (clinic, lab) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let mut book = AddressBook::load(&Home::at(dir.path().join("lab"))).unwrap();
        book.add("clinic", clinic.public()).unwrap();
        let src = dir.path().join("note.txt");
        std::fs::write(&src, vec![5u8; 3 << 20]).unwrap();
        let files = source::collect_with_dirs(std::slice::from_ref(&src)).unwrap();
        let out = dir.path().join("inbox");
        let dest = Destination::open(&out).unwrap();
        let pool = CipherPool::new(2).unwrap();
        let to = Recipient::Known(lab.public());
        let sender = Sender::new(clinic, Arc::clone(&pool));
        let receiver = Receiver::new(lab, book, pool);
        let server = crate::transport::direct_server(([127, 0, 0, 1], 0).into()).unwrap();
        let addr = server.local_addr().unwrap();
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let receiving = async {
            let conn = server.accept().await.unwrap().await.unwrap();
            let stop = async move {
                let _ = cancelled.await;
            };
            let offer = receiver.receive(&conn, stop).await?;
            assert!(offer.known());
            assert_eq!(offer.offer().entries.len(), 1);
            match decision {
                Decision::Accept => offer.accept(&dest).await,
                Decision::Refuse => {
                    let why = Refusal::new(RefusalCode::Declined, "not today");
                    Err(offer.refuse(why).await)
                }
                Decision::CancelThenAccept => {
                    let _ = cancel.send(());
                    offer.accept(&dest).await
                }
            }
        };
        let sending = async {
            let client = crate::transport::direct_client(addr).unwrap();
            let conn = client.connect(addr, "phi-conduit").unwrap().await.unwrap();
            let r = sender
                .send(&conn, &to, &files, std::future::pending())
                .await;
            client.wait_idle().await;
            r
        };
        let (sent, got) = tokio::join!(sending, receiving);
        (sent, got, dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_offer_reaches_the_sender_and_nothing_is_written() {
        let (sent, got, dir) = transfer(Decision::Refuse).await;
        assert!(
            matches!(&got, Err(TransferError::Refused(r)) if r.code == RefusalCode::Declined),
            "{got:?}"
        );
        assert!(
            matches!(&sent, Err(TransferError::Refused(r)) if r.code == RefusalCode::Declined),
            "{sent:?}"
        );
        assert_eq!(
            sent.unwrap_err().kind(),
            crate::transfer::ErrorKind::Refused
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("inbox")).unwrap().count(),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_receiver_closes_the_connection_as_cancelled() {
        let (sent, got, _dir) = transfer(Decision::CancelThenAccept).await;
        assert!(matches!(got, Err(TransferError::Cancelled)), "{got:?}");
        let closed = match &sent {
            Err(TransferError::Connection(quinn::ConnectionError::ApplicationClosed(c))) => {
                Some(c.error_code)
            }
            Err(TransferError::Session(SessionError::Io(e))) => e
                .get_ref()
                .and_then(|i| i.downcast_ref::<quinn::ReadError>())
                .and_then(|r| match r {
                    quinn::ReadError::ConnectionLost(
                        quinn::ConnectionError::ApplicationClosed(c),
                    ) => Some(c.error_code),
                    _ => None,
                }),
            _ => None,
        };
        assert_eq!(
            closed,
            Some(crate::transfer::CLOSE_CANCELLED.into()),
            "{sent:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_accepted_offer_is_received() {
        let (sent, got, dir) = transfer(Decision::Accept).await;
        let (sent, got) = (sent.unwrap(), got.unwrap());
        assert_eq!(sent.files[0].2, got.files[0].2);
        assert_eq!(
            std::fs::read(dir.path().join("inbox/note.txt")).unwrap(),
            vec![5u8; 3 << 20]
        );
    }
}
