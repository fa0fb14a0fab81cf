//! How a transfer ends, the same for every caller: its outcome on record, the
//! connection closed with the outcome's code, the receipt or the abort let through to
//! the peer first.

use std::time::Duration;

use crate::audit::SessionAudit;
use crate::crypto::handshake::HandshakeError;
use crate::transfer::error::{CLOSE_CANCELLED, TransferError};

/// Longest wait, after a receipt, for the sender to close the connection (which it does
/// once it has read the receipt).
pub const SENDER_CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Longest wait, after an error, for an abort or refusal already queued to reach the
/// peer (it closes when it has read it).
pub const ABORT_DELIVERY_WAIT: Duration = Duration::from_secs(2);

/// Records how a transfer ended: an authentication failure or a failure with its reason.
/// A failure to write that record does not replace the transfer's own error.
pub(crate) async fn recorded<T>(
    rec: &SessionAudit,
    result: Result<T, TransferError>,
) -> Result<T, TransferError> {
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

/// The transfer was cancelled: the connection is closed as cancelled (the receiver's
/// partial files and resume records stay), and the interruption is recorded.
pub(crate) async fn cancelled(conn: &quinn::Connection, rec: &SessionAudit) -> TransferError {
    conn.close(CLOSE_CANCELLED.into(), b"cancelled");
    if let Err(e) = rec.interrupted().await {
        eprintln!("warning: {e}");
    }
    TransferError::Cancelled
}

/// Closes a connection that ended with `e`, with `e`'s close code. Unless the peer
/// timed out or aborted itself (then it waits for this side to close), it first lets
/// the abort or refusal already queued reach the peer, for at most
/// [`ABORT_DELIVERY_WAIT`].
pub(crate) async fn close_after_error(conn: &quinn::Connection, e: &TransferError) {
    let peer_aborted = matches!(e.handshake_error(), Some(HandshakeError::PeerAborted(_)));
    if !e.is_timeout() && !peer_aborted {
        let _ = tokio::time::timeout(ABORT_DELIVERY_WAIT, conn.closed()).await;
    }
    conn.close(e.close_code().into(), b"error");
}

/// After the receipt: waits (at most [`SENDER_CLOSE_WAIT`]) for the sender to close the
/// connection, so the receipt is not cut off.
pub(crate) async fn wait_for_sender_close(conn: &quinn::Connection) {
    let _ = tokio::time::timeout(SENDER_CLOSE_WAIT, conn.closed()).await;
}
