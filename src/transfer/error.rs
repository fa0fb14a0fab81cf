//! What can go wrong in a transfer, typed: [`TransferError`], the protocol violations a
//! peer can commit ([`Violation`]), the category of each ([`ErrorKind`], which the
//! binary maps to its exit codes) and the QUIC close code a failed connection ends with.

use thiserror::Error;

use crate::audit::AuditError;
use crate::crypto::handshake::HandshakeError;
use crate::crypto::stream::StreamError;
use crate::session::SessionError;
use crate::transfer::data::DataError;
use crate::transfer::dest::DestError;
use crate::transfer::manifest::OfferError;
use crate::transfer::paths::PathError;
use crate::transfer::protocol::Refusal;

/// QUIC application close code: transfer finished.
pub const CLOSE_DONE: u32 = 0;
/// QUIC application close code: a protocol, integrity or authentication failure.
pub const CLOSE_ERROR: u32 = 1;
/// QUIC application close code: the user stopped the transfer (it can be resumed).
pub const CLOSE_CANCELLED: u32 = 2;
/// QUIC application close code: the peer said nothing for too long at one step
/// ([`crate::session::Timeouts`]).
pub const CLOSE_TIMEOUT: u32 = 3;
/// QUIC application close code: the receiver has no room for this connection (too many
/// sessions at once, or from this address).
pub const CLOSE_BUSY: u32 = 4;

/// The category of an error: what happened, for a caller that acts on it (the binary
/// maps each to an exit code in one table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The peer is not who was expected: wrong key, wrong code, unknown peer.
    Authentication,
    /// Data or a record did not verify: a tampered or truncated chunk, a receipt that
    /// differs, a broken audit chain.
    Integrity,
    /// The offer was refused (by the peer, or by this receiver).
    Refused,
    /// The audit chain is valid but ends before the record expected (cut short).
    AuditCutShort,
    /// The transfer was cancelled by this side (its cancellation future resolved).
    Cancelled,
    /// The peer said nothing for too long at one step.
    Timeout,
    /// The receiver has no room for another transfer now.
    Busy,
    /// The peer broke the protocol (a malformed or inconsistent message or stream).
    Protocol,
    /// FIPS mode does not allow what was asked (a code phrase, a suite, a session).
    NotApproved,
    /// Anything else: IO, the connection, the audit log not writable.
    Other,
}

impl ErrorKind {
    /// The kind of `err` if it is one of this library's error types (else `None`): a
    /// caller walks an error's chain with this and takes the first kind found.
    pub fn of(err: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
        if let Some(e) = err.downcast_ref::<TransferError>() {
            return Some(e.kind());
        }
        if let Some(e) = err.downcast_ref::<SessionError>() {
            return Some(session_kind(e));
        }
        if let Some(e) = err.downcast_ref::<HandshakeError>() {
            return Some(handshake_kind(e));
        }
        if let Some(e) = err.downcast_ref::<StreamError>() {
            return Some(stream_kind(e));
        }
        if let Some(e) = err.downcast_ref::<AuditError>() {
            return Some(audit_kind(e));
        }
        None
    }
}

fn session_kind(e: &SessionError) -> ErrorKind {
    match e {
        SessionError::Handshake(h) => handshake_kind(h),
        SessionError::Timeout { .. } => ErrorKind::Timeout,
        SessionError::Frame(_) => ErrorKind::Protocol,
        SessionError::Io(_) => ErrorKind::Other,
    }
}

fn handshake_kind(e: &HandshakeError) -> ErrorKind {
    use crate::crypto::handshake::AbortReason;
    if e.is_auth() {
        ErrorKind::Authentication
    } else if matches!(
        e,
        HandshakeError::NoCommonSuite { .. }
            | HandshakeError::PeerAborted(AbortReason::NoCommonSuite)
            | HandshakeError::PostQuantumRequired
            | HandshakeError::PeerAborted(AbortReason::PostQuantumRequired)
    ) {
        // The two sides' `[transfer] suite` (or `post_quantum`) settings exclude each
        // other.
        ErrorKind::Refused
    } else {
        ErrorKind::Other
    }
}

fn stream_kind(e: &StreamError) -> ErrorKind {
    if e.is_integrity() {
        ErrorKind::Integrity
    } else {
        ErrorKind::Other
    }
}

fn audit_kind(e: &AuditError) -> ErrorKind {
    match e {
        AuditError::Broken(_) => ErrorKind::Integrity,
        AuditError::CutShort(_) => ErrorKind::AuditCutShort,
        AuditError::Io(_) | AuditError::Damaged { .. } => ErrorKind::Other,
    }
}

/// A rule of the protocol the peer broke (docs/PROTOCOL.md, "Transfer").
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Violation {
    /// The offer did not decode.
    #[error("malformed offer: {0}")]
    MalformedOffer(String),
    /// The offer's chunk size is not one this protocol allows.
    #[error("{0}")]
    ChunkSize(String),
    /// The transfer id of the offer is not the one of the handshake.
    #[error("the offer's transfer id differs from the handshake's")]
    TransferIdMismatch,
    /// A file stream's header could not be read.
    #[error("file stream header: {0}")]
    StreamHeader(String),
    /// A file stream's header names a file that is not in the offer, or one already
    /// started.
    #[error("{0}")]
    FileStream(#[from] crate::wire::stream_header::StreamHeaderError),
    /// A file stream continues at a chunk this receiver did not offer.
    #[error("file {0} resumed at a chunk not offered")]
    ResumeNotOffered(u64),
    /// The connection ended before every file's stream came.
    #[error("missing file")]
    MissingFile,
    /// A resume point names a file not in the offer, or one twice.
    #[error("resume point for an unknown or repeated file")]
    UnknownResumePoint,
    /// A resume point lies outside its file.
    #[error("resume point outside the file")]
    ResumeOutsideFile,
    /// More resume points than files.
    #[error("more resume points than files")]
    TooManyResumePoints,
    /// The resume points do not add up to the announced count.
    #[error("resume points do not match the announced count")]
    ResumePointCount,
    /// The receipt's count is not the number of files.
    #[error("receipt lists a different number of files")]
    ReceiptCount,
    /// The receipt's hashes do not add up to its count.
    #[error("receipt hashes do not match the announced count")]
    ReceiptHashCount,
}

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
    /// Another sender already has this receiver's transfer slots.
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
    #[error("offer refused: {}", .0.explain())]
    Refused(Refusal),
    /// The offer breaks the manifest's rules (counts, sizes, path bytes).
    #[error("protocol error: {0}")]
    Offer(OfferError),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] Violation),
    /// The receipt does not match what was sent.
    #[error("receipt mismatch for {0}: the receiver's BLAKE3 differs from the sender's")]
    ReceiptMismatch(String),
    /// The connection failed.
    #[error("connection: {}", crate::transfer::sentences::connection(.0))]
    Connection(#[from] quinn::ConnectionError),
    /// This side's cancellation future resolved: the connection was closed with
    /// [`CLOSE_CANCELLED`], the interruption recorded, and the receiver's partial files
    /// kept for a resume.
    #[error("interrupted: partial files stay at the receiver for a resume")]
    Cancelled,
    /// Other IO.
    #[error("{}", crate::transfer::sentences::io(.0))]
    Io(#[from] std::io::Error),
    /// The audit record could not be written: nothing moves without its record.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// FIPS mode does not allow this transfer ([`crate::crypto::fips`]).
    #[error(transparent)]
    NotApproved(#[from] crate::crypto::fips::NotApproved),
}

impl From<OfferError> for TransferError {
    fn from(e: OfferError) -> Self {
        match e {
            OfferError::Path(p) => TransferError::BadPath(p),
            OfferError::Refused(r) => TransferError::Refused(r),
            e => TransferError::Offer(e),
        }
    }
}

impl TransferError {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TransferError::Session(e) | TransferError::Unauthenticated(e) => session_kind(e),
            TransferError::Busy => ErrorKind::Busy,
            TransferError::Data { source, .. } => match source.stream_error() {
                Some(s) => stream_kind(s),
                None => ErrorKind::Other,
            },
            TransferError::Refused(_) => ErrorKind::Refused,
            TransferError::BadPath(_) | TransferError::Offer(_) | TransferError::Protocol(_) => {
                ErrorKind::Protocol
            }
            TransferError::ReceiptMismatch(_) => ErrorKind::Integrity,
            TransferError::Cancelled => ErrorKind::Cancelled,
            TransferError::NotApproved(_) => ErrorKind::NotApproved,
            TransferError::Audit(e) => audit_kind(e),
            TransferError::Dest(_) | TransferError::Connection(_) | TransferError::Io(_) => {
                ErrorKind::Other
            }
        }
    }

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
        } else if matches!(self, TransferError::Cancelled) {
            CLOSE_CANCELLED
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
            | TransferError::Offer(_)
            | TransferError::Cancelled
            | TransferError::NotApproved(_)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::handshake::AbortReason;
    use crate::transfer::protocol::RefusalCode;

    #[test]
    fn kinds_say_what_happened() {
        let auth = TransferError::Unauthenticated(SessionError::Handshake(
            HandshakeError::PeerAborted(AbortReason::CodeMismatch),
        ));
        assert_eq!(auth.kind(), ErrorKind::Authentication);
        let refused = TransferError::Refused(Refusal::new(RefusalCode::Exists, "a"));
        assert_eq!(refused.kind(), ErrorKind::Refused);
        assert_eq!(
            TransferError::ReceiptMismatch("a".into()).kind(),
            ErrorKind::Integrity
        );
        assert_eq!(TransferError::Cancelled.kind(), ErrorKind::Cancelled);
        assert_eq!(TransferError::Cancelled.close_code(), CLOSE_CANCELLED);
        assert_eq!(
            TransferError::from(Violation::MissingFile).kind(),
            ErrorKind::Protocol
        );
        let tampered: &(dyn std::error::Error + 'static) = &StreamError::Tampered { index: 1 };
        assert_eq!(ErrorKind::of(tampered), Some(ErrorKind::Integrity));
        let other: &(dyn std::error::Error + 'static) = &std::io::Error::other("x");
        assert_eq!(ErrorKind::of(other), None);
    }

    #[test]
    fn a_refusal_names_no_flag() {
        let e = TransferError::Refused(Refusal::new(RefusalCode::Exists, "report.pdf"));
        let text = e.to_string();
        assert_eq!(text, "offer refused: report.pdf already exists there");
        assert!(!text.contains("--"), "{text}");
    }
}
