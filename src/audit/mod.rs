//! The endpoint's tamper-evident audit trail (45 CFR 164.312(b)).
//!
//! Every transfer at an endpoint leaves records in `HOME/audit/`: who the peer was, what
//! was offered and decided, each file completed with its size and BLAKE3, the receipt, a
//! failure and why. Records are chained by HMAC-SHA256 under a key derived from the
//! endpoint's identity secret ([`record`]), appended under a file lock, fsynced (the records
//! that transfers write at the same time share one write and fsync), rotated
//! by size ([`log`]), and checked by `conduit audit verify` ([`verify`]). A transfer whose
//! record cannot be written fails: nothing moves without its record.
//!
//! The schema is documented in docs/HIPAA.md ("Audit records").

mod group;
pub mod limit;
pub mod log;
pub mod names;
pub mod record;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use crate::crypto::identity::{Identity, PublicKey};
use crate::home::Home;
use crate::peers::AddressBook;
use names::Names;
use record::{ChainKey, Record, event};

/// HKDF label of the chain key.
const CHAIN_LABEL: &[u8] = b"phi-conduit v1 audit chain";
/// HKDF label of the file-name key (`--audit-names hash`).
const NAMES_LABEL: &[u8] = b"phi-conduit v1 audit names";

/// Errors of the audit trail.
#[derive(Debug, Error)]
pub enum AuditError {
    /// Reading or writing the log failed (a full disk, permissions).
    #[error("audit log: {0}")]
    Io(#[from] std::io::Error),
    /// The end of the log is damaged; no record is chained to it.
    #[error("audit log {file} is damaged ({why}); run `conduit audit verify`")]
    Damaged {
        /// The file.
        file: String,
        /// What is wrong.
        why: String,
    },
    /// `conduit audit verify` found the chain broken.
    #[error("audit chain broken at {0}")]
    Broken(verify::Broken),
    /// `conduit audit verify --expect-head/--expect-records`: the chain is valid but does
    /// not reach the record that was expected (its tail was cut off, or a whole log
    /// replaced by an older copy).
    #[error("audit log cut short: {0}")]
    CutShort(String),
}

/// Options of an endpoint's audit trail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// How file names appear in records.
    pub names: NameMode,
    /// Rotate a log file at this size (default [`log::DEFAULT_ROTATE_BYTES`]; the
    /// binary sets it from `CONDUIT_AUDIT_ROTATE_BYTES`, else conduit.toml).
    pub rotate_bytes: Option<u64>,
}

/// How file names appear in records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NameMode {
    /// The relative path as sent.
    #[default]
    Plain,
    /// A keyed hash of the relative path (HMAC-SHA256 under a key of this endpoint), for
    /// sites that keep names out of logs.
    Hash,
}

struct Inner {
    /// The log, and the group commit of the records of this endpoint's transfers.
    group: Arc<group::GroupCommit>,
    names_key: Arc<ChainKey>,
    /// The bound on records of parties that never authenticated.
    unauthenticated: limit::Limiter,
    names: NameMode,
    local: String,
    peer_names: std::collections::HashMap<PublicKey, String>,
}

/// The audit trail of one endpoint, shared by its transfers (cheap to clone). Writes
/// happen on a blocking thread; the records of transfers written at the same time are
/// committed together (group commit: one lock, write and fsync for them).
#[derive(Clone, Default)]
pub struct Audit(Option<Arc<Inner>>);

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(i) => write!(f, "Audit({})", i.group.log().dir().display()),
            None => f.write_str("Audit(off)"),
        }
    }
}

/// The directory of the audit log in `home`.
pub fn dir(home: &Home) -> PathBuf {
    home.path().join("audit")
}

/// Cuts a torn last record off `home`'s log and records the repair (see
/// [`log::AuditLog::repair`]).
pub fn repair(home: &Home, identity: &Identity) -> Result<Option<(String, u64)>, AuditError> {
    let log = log::AuditLog::new(dir(home), chain_key(identity), None);
    log.repair(&identity.public().fingerprint().to_string())
}

/// The chain key of `identity`.
pub fn chain_key(identity: &Identity) -> ChainKey {
    ChainKey::derive(&identity.secret_bytes(), CHAIN_LABEL)
}

impl Audit {
    /// No audit trail (library use, benchmarks): records are dropped.
    pub fn off() -> Self {
        Self(None)
    }

    /// The audit trail in `home`, keyed by `identity`; peers are named from `book`.
    ///
    /// ```
    /// use phi_conduit::audit::{self, Audit, AuthMethod, Side};
    /// use phi_conduit::crypto::file_hash::FileHash;
    /// use phi_conduit::crypto::identity::Identity;
    /// use phi_conduit::home::Home;
    /// use phi_conduit::peers::AddressBook;
    ///
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// let dir = tempfile::tempdir()?;
    /// let home = Home::at(dir.path());
    /// let (me, peer) = (Identity::generate()?, Identity::generate()?);
    /// let log = Audit::open(&home, &me, &AddressBook::load(&home)?, audit::Options::default());
    /// let session = log.session(Side::Receive);
    /// session.opened(&peer.public(), AuthMethod::PinnedKey, None).await?;
    /// session.file_completed("referral.pdf", 5, &FileHash::blake3(b"hello")).await?;
    ///
    /// let valid = audit::verify::verify(&audit::dir(&home), &audit::chain_key(&me))?;
    /// assert_eq!(valid.map(|v| v.records).ok(), Some(3));
    /// // Another key cannot verify (or extend) the chain.
    /// let other = audit::chain_key(&Identity::generate()?);
    /// assert!(audit::verify::verify(&audit::dir(&home), &other)?.is_err());
    /// # Ok(()) }
    /// ```
    pub fn open(home: &Home, identity: &Identity, book: &AddressBook, options: Options) -> Self {
        let secret = identity.secret_bytes();
        let names = options.names;
        Self(Some(Arc::new(Inner {
            group: group::GroupCommit::new(Arc::new(log::AuditLog::new(
                dir(home),
                ChainKey::derive(&secret, CHAIN_LABEL),
                options.rotate_bytes,
            ))),
            names_key: Arc::new(ChainKey::derive(&secret, NAMES_LABEL)),
            unauthenticated: limit::Limiter::default(),
            names,
            local: identity.public().fingerprint().to_string(),
            peer_names: book
                .peers()
                .iter()
                .map(|p| (p.key, p.name.clone()))
                .collect(),
        })))
    }

    /// How one transfer shows file names in its outputs: as they are, or (names mode
    /// `hash`) as the keyed hash its records carry.
    pub fn names(&self) -> Names {
        match &self.0 {
            Some(i) if i.names == NameMode::Hash => Names::hashed(Arc::clone(&i.names_key)),
            _ => Names::plain(),
        }
    }

    /// The chain's head: the last record's number and MAC (hex), `None` for an empty
    /// log or no audit. Printed by the daemon when it starts and stops, as an anchor
    /// kept outside the log (the journal) for `conduit audit verify --expect-head`.
    pub async fn head(&self) -> Result<Option<(u64, String)>, AuditError> {
        let Some(inner) = self.0.clone() else {
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || inner.group.log().head())
            .await
            .map_err(|e| AuditError::Io(std::io::Error::other(e)))?
    }

    /// Writes the summary of records of unauthenticated parties that the rate limit
    /// dropped (see [`limit`]), if any: when the daemon stops.
    pub async fn flush_suppressed(&self) -> Result<(), AuditError> {
        let Some(inner) = self.0.clone() else {
            return Ok(());
        };
        let Some((count, since)) = inner.unauthenticated.take() else {
            return Ok(());
        };
        let written = inner
            .group
            .append(vec![suppressed_record(&inner.local, count, since.clone())])
            .await;
        if written.is_err() {
            inner.unauthenticated.restore(count, since);
        }
        written.map(|_| ())
    }

    /// Records that a leftover partial file of `path` (`bytes` long) was removed, with
    /// why; outside any session. Blocking (call it from a blocking thread in async code).
    pub fn partial_removed(&self, path: &str, bytes: u64, reason: &str) -> Result<(), AuditError> {
        let Some(inner) = &self.0 else {
            return Ok(());
        };
        let mut r = Record {
            v: record::SCHEMA_VERSION,
            ts: record::now(),
            event: event::PARTIAL_REMOVED.into(),
            local: inner.local.clone(),
            role: Some("receive".into()),
            size: Some(bytes),
            reason: Some(record::bounded(reason)),
            ..Record::default()
        };
        match inner.names {
            NameMode::Plain => r.path = Some(path.to_string()),
            NameMode::Hash => r.path_hash = Some(inner.names_key.name_hash(path)),
        }
        inner.group.log().append(r).map(|_| ())
    }

    /// Records an agent's item event (`event`: one of [`record::event`]'s `ITEM_*`)
    /// about file `path`, outside any session: the item id and `detail` (a reason) in
    /// `reason`, the receipt's file hash for a delivery (as the queue stores it,
    /// [`crate::crypto::file_hash::FileHash::to_tagged`]). `path` is the file's name, or (names mode
    /// hash) already its keyed hash when it starts with `#` (as the queue stores it).
    /// Blocking (a short append).
    pub fn agent_item(
        &self,
        event: &str,
        path: &str,
        size: u64,
        peer: Option<&PublicKey>,
        item: &str,
        detail: Option<&str>,
    ) -> Result<(), AuditError> {
        let Some(inner) = &self.0 else {
            return Ok(());
        };
        let delivered = event == event::ITEM_DELIVERED;
        let mut r = Record {
            v: record::SCHEMA_VERSION,
            ts: record::now(),
            event: event.into(),
            local: inner.local.clone(),
            role: Some("send".into()),
            peer: peer.map(|p| p.fingerprint().to_string()),
            size: Some(size),
            reason: Some(record::bounded(&match detail.filter(|_| !delivered) {
                Some(d) => format!("item {item}: {d}"),
                None => format!("item {item}"),
            })),
            ..Record::default()
        };
        if let Some(h) = detail.filter(|_| delivered) {
            match crate::crypto::file_hash::FileHash::parse_tagged(h) {
                Some(h) => r.set_file_hash(&h),
                None => r.blake3 = Some(h.to_string()),
            }
        }
        match (inner.names, path.strip_prefix('#')) {
            (NameMode::Plain, _) => r.path = Some(path.to_string()),
            (NameMode::Hash, Some(hashed)) => r.path_hash = Some(hashed.to_string()),
            (NameMode::Hash, None) => r.path_hash = Some(inner.names_key.name_hash(path)),
        }
        inner.group.log().append(r).map(|_| ())
    }

    /// Records that an inbox's `on_receive` program ran for file `path`: how it ended
    /// and how long it took. Blocking (a short append).
    pub fn hook_ran(&self, path: &str, status: &str, millis: u64) -> Result<(), AuditError> {
        let Some(inner) = &self.0 else {
            return Ok(());
        };
        let mut r = Record {
            v: record::SCHEMA_VERSION,
            ts: record::now(),
            event: event::HOOK_RAN.into(),
            local: inner.local.clone(),
            role: Some("receive".into()),
            reason: Some(record::bounded(&format!(
                "on_receive {status} after {millis} ms"
            ))),
            ..Record::default()
        };
        match inner.names {
            NameMode::Plain => r.path = Some(path.to_string()),
            NameMode::Hash => r.path_hash = Some(inner.names_key.name_hash(path)),
        }
        inner.group.log().append(r).map(|_| ())
    }

    /// Something done in the web console: a login, a refused login, a logout, an
    /// action on a queue item (`what`, in `reason`). Blocking (a short append).
    pub fn console(&self, what: &str) -> Result<(), AuditError> {
        let Some(inner) = &self.0 else {
            return Ok(());
        };
        let r = Record {
            v: record::SCHEMA_VERSION,
            ts: record::now(),
            event: event::CONSOLE.into(),
            local: inner.local.clone(),
            role: Some("console".into()),
            reason: Some(record::bounded(what)),
            ..Record::default()
        };
        inner.group.log().append(r).map(|_| ())
    }

    /// The records of one transfer, under a new random session id.
    pub fn session(&self, side: Side) -> SessionAudit {
        let mut id = [0u8; 8];
        let _ = getrandom::getrandom(&mut id);
        SessionAudit {
            names: self.names(),
            audit: self.clone(),
            session: record::hex(&id),
            side,
            peer: std::sync::Mutex::new(None),
            transfer: std::sync::Mutex::new(None),
        }
    }
}

/// The summary of `count` dropped records of unauthenticated parties, the first at `since`.
fn suppressed_record(local: &str, count: u64, since: Option<String>) -> Record {
    Record {
        v: record::SCHEMA_VERSION,
        ts: record::now(),
        event: event::UNAUTHENTICATED_SUPPRESSED.into(),
        local: local.to_string(),
        count: Some(count),
        reason: Some(format!(
            "{count} records of parties that never authenticated (failed handshakes, aborts before authentication) were not written, the first at {}; limit {} at once, then one per {} s",
            since.as_deref().unwrap_or("?"),
            limit::BURST,
            limit::REFILL.as_secs()
        )),
        ..Record::default()
    }
}

/// Which side of a transfer this endpoint is. (A relay client's pairing role, listen
/// or connect, is [`crate::relay::hello::Role`]: a receiver listens for a key, a
/// code-phrase sender listens for its code.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The sender.
    Send,
    /// The receiver.
    Receive,
}

pub use crate::crypto::handshake::AuthMethod;

/// The records of one transfer: each call appends one record (or does nothing when the
/// audit is off) and fails if it cannot be made durable.
#[derive(Debug)]
pub struct SessionAudit {
    audit: Audit,
    names: Names,
    session: String,
    side: Side,
    peer: std::sync::Mutex<Option<PublicKey>>,
    transfer: std::sync::Mutex<Option<String>>,
}

impl SessionAudit {
    /// Whether file names are kept out of the records (`--audit-names hash`).
    pub fn hides_names(&self) -> bool {
        self.audit
            .0
            .as_ref()
            .is_some_and(|i| i.names == NameMode::Hash)
    }

    /// How this transfer shows file names in its outputs (the CLI's events, summaries and
    /// error messages); the transfer teaches it the offer's names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    async fn write(&self, event: &str, fill: impl FnOnce(&mut Record)) -> Result<(), AuditError> {
        self.write_head(event, fill).await.map(|_| ())
    }

    /// [`SessionAudit::write`], returning the chain's head after the record (`None` when
    /// the audit is off).
    async fn write_head(
        &self,
        event: &str,
        fill: impl FnOnce(&mut Record),
    ) -> Result<Option<[u8; 32]>, AuditError> {
        let Some(inner) = self.audit.0.clone() else {
            return Ok(None);
        };
        let peer = *self
            .peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Before authentication the other party is nobody we know: its records (a failed
        // handshake, an abort, a failure) pass the rate limit, and what is dropped is
        // counted in a summary record.
        let mut summary = None;
        if peer.is_none() && limit::LIMITED_EVENTS.contains(&event) {
            let now = record::now();
            match inner.unauthenticated.admit(std::time::Instant::now(), &now) {
                limit::Admit::Drop => return Ok(None),
                limit::Admit::Write { suppressed, since } if suppressed > 0 => {
                    summary = Some(suppressed_record(&inner.local, suppressed, since));
                }
                limit::Admit::Write { .. } => {}
            }
        }
        let transfer = self
            .transfer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut r = Record {
            v: record::SCHEMA_VERSION,
            ts: record::now(),
            event: event.into(),
            local: inner.local.clone(),
            session: Some(self.session.clone()),
            role: Some(
                match self.side {
                    Side::Send => "send",
                    Side::Receive => "receive",
                }
                .into(),
            ),
            peer: peer.map(|p| p.fingerprint().to_string()),
            peer_name: peer.and_then(|p| inner.peer_names.get(&p).cloned()),
            transfer,
            ..Record::default()
        };
        fill(&mut r);
        r.reason = r
            .reason
            .as_deref()
            .map(|t| record::bounded(&self.names.redact(t)));
        r.peer_name = r.peer_name.as_deref().map(record::bounded);
        // With the records of other transfers written at the same time (one write and one
        // fsync for them all), and durable when this returns.
        let records = summary.into_iter().chain([r]).collect();
        inner
            .group
            .append(records)
            .await
            .map(|(_, head)| Some(head))
    }

    /// The chain's head now (the MAC of the log's last record); `None` when the audit is
    /// off or the log is empty.
    pub async fn head(&self) -> Result<Option<[u8; 32]>, AuditError> {
        let Some(inner) = self.audit.0.clone() else {
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || inner.group.log().head_mac())
            .await
            .map_err(|e| AuditError::Io(std::io::Error::other(e)))?
    }

    fn name(&self, path: &str, r: &mut Record) {
        if let Some(inner) = &self.audit.0 {
            match inner.names {
                NameMode::Plain => r.path = Some(path.to_string()),
                NameMode::Hash => r.path_hash = Some(inner.names_key.name_hash(path)),
            }
        }
    }

    /// The peer authenticated (`auth`), on a connection that took `path` (when known).
    pub async fn opened(
        &self,
        peer: &PublicKey,
        auth: AuthMethod,
        path: Option<crate::transport::path::PathKind>,
    ) -> Result<(), AuditError> {
        *self
            .peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(*peer);
        self.write(event::SESSION_OPENED, |r| {
            r.network_path = path.map(|p| p.name().to_string());
            r.auth = Some(
                match auth {
                    AuthMethod::PinnedKey => "known_key",
                    AuthMethod::CodePhrase => "code",
                    AuthMethod::FipsKey => "fips_key",
                }
                .into(),
            );
        })
        .await
    }

    /// The handshake failed, with why.
    pub async fn auth_failed(&self, reason: &str) -> Result<(), AuditError> {
        self.write(event::AUTH_FAILED, |r| r.reason = Some(reason.into()))
            .await
    }

    /// The offer's transfer id, files and bytes; `refused` with the reason, or accepted.
    /// With `--audit-names hash` the reason (which may name a file) is recorded as
    /// `refused` only.
    pub async fn offer(
        &self,
        transfer: &[u8],
        files: u64,
        bytes: u64,
        refused: Option<&str>,
    ) -> Result<(), AuditError> {
        *self
            .transfer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(record::hex(transfer));
        let name = match refused {
            Some(_) => event::OFFER_REFUSED,
            None => event::OFFER_ACCEPTED,
        };
        let hide = self.hides_names();
        self.write(name, |r| {
            r.files = Some(files);
            r.bytes = Some(bytes);
            r.reason = refused.map(|why| if hide { "refused" } else { why }.to_string());
        })
        .await
    }

    /// A file continues from byte `from_byte` of an interrupted transfer.
    pub async fn resumed(&self, path: &str, size: u64, from_byte: u64) -> Result<(), AuditError> {
        self.write(event::RESUME, |r| {
            self.name(path, r);
            r.size = Some(size);
            r.from_byte = Some(from_byte);
        })
        .await
    }

    /// A file was sent, or received, verified and named.
    pub async fn file_completed(
        &self,
        path: &str,
        size: u64,
        hash: &crate::crypto::file_hash::FileHash,
    ) -> Result<(), AuditError> {
        self.write(event::FILE_COMPLETED, |r| {
            self.name(path, r);
            r.size = Some(size);
            r.set_file_hash(hash);
        })
        .await
    }

    /// The receipt (sent by the receiver; checked by the sender) over `hashes`, with the
    /// peer's audit chain head from the exchange (`peer_head`) and the path the
    /// connection took at the end (`path`: it may have moved since the session opened).
    /// Returns this log's head after the record (`None` when the audit is off).
    pub async fn receipt(
        &self,
        hashes: &[crate::crypto::file_hash::FileHash],
        alg: crate::crypto::file_hash::HashAlg,
        bytes: u64,
        peer_head: Option<&[u8; 32]>,
        path: Option<crate::transport::path::PathKind>,
    ) -> Result<Option<[u8; 32]>, AuditError> {
        let mut h = crate::crypto::file_hash::Hasher::new(alg);
        for x in hashes {
            h.update(x.as_bytes());
        }
        let digest = h.finalize();
        self.write_head(event::RECEIPT, |r| {
            r.files = Some(hashes.len() as u64);
            r.bytes = Some(bytes);
            r.receipt = Some(digest.to_tagged());
            r.peer_head = peer_head.map(|h| record::hex(h));
            r.network_path = path.map(|p| p.name().to_string());
        })
        .await
    }

    /// The session id (hex) that every record of this session carries.
    pub fn id(&self) -> &str {
        &self.session
    }

    /// The transfer was stopped by the user or the service (Ctrl-C, SIGTERM); what was
    /// received stays as partial files for a resume.
    pub async fn interrupted(&self) -> Result<(), AuditError> {
        self.failed("interrupted (Ctrl-C or SIGTERM); partial files are kept for a resume")
            .await
    }

    /// The transfer failed.
    pub async fn failed(&self, reason: &str) -> Result<(), AuditError> {
        self.write(event::TRANSFER_FAILED, |r| r.reason = Some(reason.into()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_text_from_a_peer_is_bounded_and_the_chain_stays_usable() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        let me = Identity::generate().unwrap();
        let book = AddressBook::load(&home).unwrap();
        let audit = Audit::open(&home, &me, &book, Options::default());
        let s = audit.session(Side::Send);
        // A refusal reason as long as a peer can make one, full of characters JSON escapes.
        let reason = "\u{1b}[31m\"\\".repeat(30_000);
        s.offer(&[1u8; 16], 1, 1, Some(&reason)).await.unwrap();
        s.failed(&reason).await.unwrap();
        s.receipt(
            &[],
            crate::crypto::file_hash::HashAlg::Blake3,
            0,
            None,
            None,
        )
        .await
        .unwrap();
        let valid = verify::verify(&super::dir(&home), &chain_key(&me))
            .unwrap()
            .unwrap();
        assert_eq!(valid.records, 4);
        let records = verify::show(&super::dir(&home), &verify::Filter::default()).unwrap();
        for r in &records {
            assert!(
                r.reason
                    .as_deref()
                    .is_none_or(|t| t.len() <= record::MAX_TEXT)
            );
        }
        assert!(
            records
                .iter()
                .all(|r| r.session.as_deref().is_none_or(|x| x == s.id()))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashed_names_keep_refusal_reasons_and_paths_out() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        let me = Identity::generate().unwrap();
        let book = AddressBook::load(&home).unwrap();
        let options = Options {
            names: NameMode::Hash,
            rotate_bytes: None,
        };
        let s = Audit::open(&home, &me, &book, options).session(Side::Receive);
        s.offer(
            &[2u8; 16],
            1,
            5,
            Some("Doe Jane.pdf already exists at the receiver"),
        )
        .await
        .unwrap();
        s.resumed("Doe Jane.pdf", 5, 1).await.unwrap();
        let records = verify::show(&super::dir(&home), &verify::Filter::default()).unwrap();
        let offer = &records[1];
        assert_eq!(offer.event, event::OFFER_REFUSED);
        assert_eq!(offer.reason.as_deref(), Some("refused"));
        assert_eq!(
            offer.transfer.as_deref(),
            Some(record::hex(&[2u8; 16]).as_str())
        );
        assert!(records[2].path.is_none() && records[2].path_hash.is_some());
        assert_eq!(records[2].transfer, offer.transfer);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_of_unauthenticated_parties_are_bounded_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        let me = Identity::generate().unwrap();
        let book = AddressBook::load(&home).unwrap();
        let audit = Audit::open(&home, &me, &book, Options::default());
        for i in 0..100 {
            let s = audit.session(Side::Receive);
            if i % 2 == 0 {
                s.auth_failed("wrong key").await.unwrap();
            } else {
                s.failed("aborted before authentication").await.unwrap();
            }
        }
        // An authenticated session is not limited.
        let known = Identity::generate().unwrap().public();
        let s = audit.session(Side::Receive);
        s.opened(&known, AuthMethod::PinnedKey, None).await.unwrap();
        s.failed("connection lost").await.unwrap();
        audit.flush_suppressed().await.unwrap();
        let records = verify::show(&super::dir(&home), &verify::Filter::default()).unwrap();
        let limited = records
            .iter()
            .filter(|r| r.peer.is_none() && r.event != event::LOG_CREATED)
            .count();
        // The burst, then the summary of the other 90.
        assert_eq!(limited, limit::BURST as usize + 1);
        let summary = records.last().unwrap();
        assert_eq!(summary.event, event::UNAUTHENTICATED_SUPPRESSED);
        assert_eq!(summary.count, Some(100 - u64::from(limit::BURST)));
        assert_eq!(records.len(), 1 + limit::BURST as usize + 2 + 1);
        let valid = verify::verify(&super::dir(&home), &chain_key(&me))
            .unwrap()
            .unwrap();
        assert_eq!(valid.records, records.len() as u64);
        // Nothing more to summarise.
        audit.flush_suppressed().await.unwrap();
        let again = verify::show(&super::dir(&home), &verify::Filter::default()).unwrap();
        assert_eq!(again.len(), records.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_writers_keep_one_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        let me = Identity::generate().unwrap();
        let audit = Audit::open(
            &home,
            &me,
            &AddressBook::load(&home).unwrap(),
            Options::default(),
        );
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let audit = audit.clone();
            tasks.spawn(async move {
                let s = audit.session(Side::Receive);
                for i in 0..25u64 {
                    s.file_completed(
                        &format!("f{i}"),
                        i,
                        &crate::crypto::file_hash::FileHash::blake3(b"x"),
                    )
                    .await
                    .unwrap();
                }
            });
        }
        while let Some(t) = tasks.join_next().await {
            t.unwrap();
        }
        let valid = verify::verify(&super::dir(&home), &chain_key(&me))
            .unwrap()
            .unwrap();
        assert_eq!(valid.records, 201);
    }

    /// Records queued while a commit waits for the log's lock (another process holds it)
    /// go in one group: one write and one fsync for them all, each caller returns once its
    /// record is durable, and the chain has every record once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_written_during_a_commit_share_the_next_one() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        let me = Identity::generate().unwrap();
        let audit = Audit::open(
            &home,
            &me,
            &AddressBook::load(&home).unwrap(),
            Options::default(),
        );
        let peer = Identity::generate().unwrap().public();
        audit
            .session(Side::Receive)
            .opened(&peer, AuthMethod::PinnedKey, None)
            .await
            .unwrap();
        let group = || audit.0.as_ref().unwrap().group.groups();
        let before = group();
        // Another writer holds the log.
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .open(super::dir(&home).join("lock"))
            .unwrap();
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let s = Arc::new(audit.session(Side::Receive));
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50u64 {
            let (s, done) = (Arc::clone(&s), Arc::clone(&done));
            tasks.spawn(async move {
                s.file_completed(
                    &format!("f{i}"),
                    i,
                    &crate::crypto::file_hash::FileHash::blake3(b"x"),
                )
                .await
                .unwrap();
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // Nobody was told durable while the log could not be written.
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 0);
        drop(lock);
        while let Some(t) = tasks.join_next().await {
            t.unwrap();
        }
        // The first record's commit, then everything queued meanwhile.
        let groups = group() - before;
        assert!(groups <= 2, "{groups} groups for 50 records");
        let valid = verify::verify(&super::dir(&home), &chain_key(&me))
            .unwrap()
            .unwrap();
        assert_eq!(valid.records, 52);
        let records = verify::show(&super::dir(&home), &verify::Filter::default()).unwrap();
        let mut paths: Vec<String> = records.iter().filter_map(|r| r.path.clone()).collect();
        paths.sort();
        let mut want: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
        want.sort();
        assert_eq!(paths, want);
    }
}
