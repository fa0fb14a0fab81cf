//! The end-to-end session over an async byte stream (a QUIC bidirectional stream in
//! practice): frames in and out, the handshake driven to completion, typed messages.
//!
//! This is the thin IO wrapper around the sans-IO [`crate::crypto::handshake`] machines
//! and the [`crate::wire::frame`] codec. A failed handshake sends the matching abort
//! frame to the peer before returning the error.

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::crypto::handshake::{
    Established, HandshakeError, Initiator, Responder, Step, abort_frame,
};
use crate::crypto::identity::PublicKey;
use crate::wire::frame::{self, FrameError, LEN_PREFIX};

/// Errors of the session over IO.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The handshake or a session message failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// A frame was malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream failed or ended.
    #[error("control stream: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame body: the 2-byte length first, then exactly that many bytes (at most
/// 65,535, so the allocation is bounded by the length field itself).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, SessionError> {
    let mut len = [0u8; LEN_PREFIX];
    r.read_exact(&mut len).await?;
    let n = usize::from(u16::from_be_bytes(len));
    if n == 0 {
        return Err(FrameError::Empty.into());
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            SessionError::Frame(FrameError::Truncated(LEN_PREFIX))
        } else {
            e.into()
        }
    })?;
    Ok(body)
}

/// Writes one frame body.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: &[u8],
) -> Result<(), SessionError> {
    let framed = frame::to_frame(body)?;
    w.write_all(&framed).await?;
    w.flush().await?;
    Ok(())
}

/// Runs the initiator's side to completion (`first` is the frame from its constructor).
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    mut machine: Initiator,
    first: Vec<u8>,
) -> Result<Established, SessionError> {
    write_frame(io, &first).await?;
    loop {
        let body = read_frame(io).await?;
        match machine.read(&body)? {
            Step::Send(f) => write_frame(io, &f).await?,
            Step::Done(est) => return Ok(*est),
            Step::SendThenDone(f, est) => {
                write_frame(io, &f).await?;
                return Ok(*est);
            }
        }
    }
}

/// Runs the responder's side to completion; `accept` decides on the initiator's key.
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    mut machine: Responder,
    accept: &mut (dyn FnMut(&PublicKey) -> bool + Send),
) -> Result<Established, SessionError> {
    loop {
        let body = read_frame(io).await?;
        match machine.read(&body, accept) {
            Ok(Step::Send(f)) => write_frame(io, &f).await?,
            Ok(Step::Done(est)) | Ok(Step::SendThenDone(_, est)) => return Ok(*est),
            Err(e) => {
                // Best effort: the peer learns why; the error stands either way.
                let _ = write_frame(io, &abort_frame(e.abort_reason())).await;
                return Err(e.into());
            }
        }
    }
}

/// Sends a typed message on an established session.
pub async fn send<S: AsyncWrite + Unpin, T: Serialize>(
    io: &mut S,
    est: &mut Established,
    msg: &T,
) -> Result<(), SessionError> {
    let body = est.seal_message(msg)?;
    write_frame(io, &body).await
}

/// Receives a typed message on an established session.
pub async fn recv<S: AsyncRead + Unpin, T: DeserializeOwned>(
    io: &mut S,
    est: &mut Established,
) -> Result<T, SessionError> {
    let body = read_frame(io).await?;
    Ok(est.open_message(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::handshake::AbortReason;
    use crate::crypto::identity::Identity;
    use crate::crypto::pake::Code;

    #[tokio::test]
    async fn known_peer_session_over_a_duplex_stream() {
        let (alice, bob) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let rv = [1u8; 32];
        let (m, first) = Initiator::known_peer(&alice, &bob.public(), &rv, &[2; 16]).unwrap();
        let bob_key = alice.public();
        let server = tokio::spawn(async move {
            let mut est = respond(&mut b, Responder::new(&bob, &rv, None), &mut |k| {
                *k == bob_key
            })
            .await
            .unwrap();
            let first: Vec<u8> = postcard::from_bytes(&est.take_first_message().unwrap()).unwrap();
            let msg: String = recv(&mut b, &mut est).await.unwrap();
            send(&mut b, &mut est, &(first.len(), msg)).await.unwrap();
        });
        let mut est = initiate(&mut a, m, first).await.unwrap();
        send(&mut a, &mut est, &vec![7u8; 32]).await.unwrap();
        send(&mut a, &mut est, &"offer".to_string()).await.unwrap();
        let reply: (usize, String) = recv(&mut a, &mut est).await.unwrap();
        assert_eq!(reply, (32, "offer".to_string()));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn wrong_code_reaches_both_ends_over_io() {
        let (alice, bob) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let rv = [1u8; 32];
        let (m, first) =
            Initiator::code(&alice, &Code::parse("4-abandon-ability-able").unwrap(), &rv);
        let server = tokio::spawn(async move {
            let r = Responder::new(
                &bob,
                &rv,
                Some(Code::parse("4-abandon-ability-about").unwrap()),
            );
            respond(&mut b, r, &mut |_| true).await
        });
        let mut est = initiate(&mut a, m, first).await.unwrap();
        let err = recv::<_, String>(&mut a, &mut est).await.unwrap_err();
        assert!(matches!(
            err,
            SessionError::Handshake(HandshakeError::PeerAborted(AbortReason::CodeMismatch))
        ));
        let server_err = server.await.unwrap().unwrap_err();
        assert!(matches!(
            server_err,
            SessionError::Handshake(HandshakeError::CodeMismatch)
        ));
    }

    #[tokio::test]
    async fn a_zero_length_frame_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0]).await.unwrap();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(SessionError::Frame(FrameError::Empty))
        ));
        a.write_all(&[0, 9, 1]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b).await,
            Err(SessionError::Frame(FrameError::Truncated(_)))
        ));
    }
}
