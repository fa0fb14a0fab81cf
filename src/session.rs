//! The end-to-end session over an async byte stream (a QUIC bidirectional stream in
//! practice): frames in and out, the handshake driven to completion, typed messages.
//!
//! This is the thin IO wrapper around the sans-IO [`crate::crypto::handshake`] machines
//! and the [`crate::wire::frame`] codec. A failed handshake sends the matching abort
//! frame to the peer before returning the error.
//!
//! [`Timeouts`] bounds every wait on a peer (docs/PROTOCOL.md, "Timeouts"): a peer that
//! stops talking costs its counterpart at most the timeout of the step it stalls in, and
//! the wait ends in [`SessionError::Timeout`] naming the step.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::crypto::fips_identity::FipsPin;
use crate::crypto::fips_session;
use crate::crypto::handshake::{
    Established, HandshakeError, Initiator, Responder, Step, TRANSFER_ID_LEN, abort_frame,
};
use crate::crypto::identity::PublicKey;
use crate::crypto::suite::SuitePolicy;
use crate::wire::frame::{self, FrameDecoder, FrameError, LEN_PREFIX};

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
    #[error("control stream: {}", crate::transfer::sentences::io(.0))]
    Io(#[from] std::io::Error),
    /// The peer said nothing for too long at one step.
    #[error("timed out after {} s waiting for the peer's {stage}", after.as_secs_f64())]
    Timeout {
        /// Where the wait was.
        stage: Stage,
        /// How long it waited.
        after: Duration,
    },
}

/// A step at which one side waits for the other (see [`Timeouts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// From the connection to the established session: the control stream and the
    /// handshake messages.
    Handshake,
    /// The whole offer (its start and all its entries), after the handshake.
    Offer,
    /// The receiver's answer to the offer (a person may be asked).
    Answer,
    /// The 16-byte header of a file stream, from the stream's opening.
    StreamHeader,
    /// The receipt, after the last file was sent.
    Receipt,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Handshake => "handshake",
            Stage::Offer => "offer",
            Stage::Answer => "answer to the offer",
            Stage::StreamHeader => "file stream header",
            Stage::Receipt => "receipt",
        })
    }
}

/// Default of [`Timeouts::handshake`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`Timeouts::offer`].
pub const DEFAULT_OFFER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`Timeouts::answer`]: long, because a person at the receiver may be asked.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// Default of [`Timeouts::header`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`Timeouts::idle`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = crate::transport::IDLE_TIMEOUT;

/// How long each side waits for its peer at each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connection to established session ([`Stage::Handshake`]).
    pub handshake: Duration,
    /// Established session to the complete offer, at the receiver ([`Stage::Offer`]).
    pub offer: Duration,
    /// Offer sent to the receiver's answer, at the sender ([`Stage::Answer`]); also the
    /// wait for the receipt after the last file ([`Stage::Receipt`]).
    pub answer: Duration,
    /// A file stream's opening to its header, at the receiver ([`Stage::StreamHeader`]).
    pub header: Duration,
    /// No packet at all from the peer for this long closes the connection (the QUIC idle
    /// timeout of the endpoint; keep-alives go out at a third of it). This bounds the
    /// wait for file data.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: DEFAULT_HANDSHAKE_TIMEOUT,
            offer: DEFAULT_OFFER_TIMEOUT,
            answer: DEFAULT_ANSWER_TIMEOUT,
            header: DEFAULT_HEADER_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl Timeouts {
    /// The timeout of `stage`.
    pub fn of(&self, stage: Stage) -> Duration {
        match stage {
            Stage::Handshake => self.handshake,
            Stage::Offer => self.offer,
            Stage::Answer | Stage::Receipt => self.answer,
            Stage::StreamHeader => self.header,
        }
    }

    /// Runs `fut` for at most the timeout of `stage`.
    pub async fn within<T, E: From<SessionError>>(
        &self,
        stage: Stage,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let after = self.of(stage);
        match tokio::time::timeout(after, fut).await {
            Ok(r) => r,
            Err(_) => Err(SessionError::Timeout { stage, after }.into()),
        }
    }
}

/// Reads one frame body of up to [`frame::MAX_FRAME`] bytes (see [`read_frame_within`]).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, SessionError> {
    read_frame_within(r, frame::MAX_FRAME).await
}

/// Bytes read from the stream at a time while a frame is assembled.
const READ_PIECE: usize = 4096;

/// Reads one frame body of at most `limit` bytes through the fuzzed
/// [`FrameDecoder`]: never more than the decoder wants, so no byte after the frame is
/// consumed, and a length field above `limit` is refused before any of the body is read
/// or allocated. The stream ending before a frame starts (or inside its length field) is
/// [`SessionError::Io`] (`UnexpectedEof`); ending inside the body is
/// [`FrameError::Truncated`].
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Vec<u8>, SessionError> {
    let mut d = FrameDecoder::with_limit(limit);
    let mut piece = [0u8; READ_PIECE];
    loop {
        if let Some(body) = d.next_frame()? {
            return Ok(body);
        }
        let want = d.wanted().min(READ_PIECE);
        let n = r.read(&mut piece[..want]).await?;
        if n == 0 {
            return Err(match d.buffered() {
                b if b < LEN_PREFIX => {
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "early eof").into()
                }
                b => FrameError::Truncated(b).into(),
            });
        }
        // At most `wanted()` bytes were read, so the decoder takes them all.
        d.push(&piece[..n]);
    }
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
        match machine.read(&body) {
            Ok(Step::Send(f)) => write_frame(io, &f).await?,
            Ok(Step::Done(est)) => return Ok(*est),
            Ok(Step::SendThenDone(f, est)) => {
                write_frame(io, &f).await?;
                return Ok(*est);
            }
            Err(e) => {
                // Best effort, as the responder does: the peer learns why (an abort from
                // the peer is not answered with another).
                if !matches!(e, HandshakeError::PeerAborted(_)) {
                    let _ = write_frame(io, &abort_frame(e.abort_reason())).await;
                }
                return Err(e.into());
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

/// FIPS mode, the sender's side (docs/FIPS.md, "The FIPS session"): the receiver's TLS
/// key (`peer`, from the finished end-to-end connection) must be the one `pin` names;
/// then the hello goes out and the answer names the suite. `keys` come from the
/// connection's exporter; `recipient` is the address book's name for the receiver.
pub async fn initiate_fips<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    peer: Option<FipsPin>,
    pin: &FipsPin,
    keys: &fips_session::TlsKeys,
    (recipient, transfer_id, suites): (PublicKey, &[u8; TRANSFER_ID_LEN], SuitePolicy),
) -> Result<Established, SessionError> {
    let checked = match peer {
        Some(got) if got.matches(pin) => Ok(()),
        got => Err(HandshakeError::FipsPinMismatch {
            got: got.map_or_else(|| "(none)".to_string(), |g| g.to_string()),
            expected: pin.to_string(),
        }),
    };
    let result = async {
        checked?;
        write_frame(io, &fips_session::hello(transfer_id, suites)).await?;
        let body = read_frame(io).await?;
        Ok::<_, SessionError>(fips_session::read_answer(&body, suites)?)
    }
    .await;
    match result {
        Ok(suite) => Ok(Established::over_tls(
            keys,
            recipient,
            suite,
            Some(*transfer_id),
        )),
        Err(e) => {
            if let SessionError::Handshake(h) = &e
                && !matches!(h, HandshakeError::PeerAborted(_))
            {
                let _ = write_frame(io, &abort_frame(h.abort_reason())).await;
            }
            Err(e)
        }
    }
}

/// FIPS mode, the receiver's side: the sender's TLS key (`peer`) must be a pin of the
/// address book (`lookup` gives the peer's name key), then its hello is answered with
/// the suite chosen under `suites`.
pub async fn respond_fips<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    peer: Option<FipsPin>,
    lookup: &(dyn Fn(&FipsPin) -> Option<PublicKey> + Send + Sync),
    keys: &fips_session::TlsKeys,
    suites: SuitePolicy,
) -> Result<Established, SessionError> {
    // The key first: a sender the address book does not pin is not read at all.
    let known = match peer {
        None => Err(HandshakeError::Protocol("the sender presented no FIPS key")),
        Some(pin) => lookup(&pin).ok_or_else(|| HandshakeError::UnknownFipsPeer(pin.to_string())),
    };
    let result = match known {
        Ok(remote) => {
            let body = read_frame(io).await?;
            fips_session::read_hello(&body, suites).map(|h| (remote, h))
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((remote, (transfer_id, suite))) => {
            write_frame(io, &fips_session::answer(suite)).await?;
            Ok(Established::over_tls(
                keys,
                remote,
                suite,
                Some(transfer_id),
            ))
        }
        Err(e) => {
            if !matches!(e, HandshakeError::PeerAborted(_)) {
                let _ = write_frame(io, &abort_frame(e.abort_reason())).await;
            }
            Err(e.into())
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
        // XXpsk0: the responder refuses message 1, before either static key is sent.
        let err = initiate(&mut a, m, first).await.unwrap_err();
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
    async fn a_silent_peer_times_out_with_the_stage_named() {
        let (_a, mut b) = tokio::io::duplex(64);
        let t = Timeouts {
            handshake: std::time::Duration::from_millis(50),
            ..Timeouts::default()
        };
        let err = t
            .within(Stage::Handshake, read_frame(&mut b))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            SessionError::Timeout {
                stage: Stage::Handshake,
                after
            } if after == std::time::Duration::from_millis(50)
        ));
        assert!(err.to_string().contains("handshake"), "{err}");
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
            Err(SessionError::Frame(FrameError::Truncated(3)))
        ));
    }

    #[tokio::test]
    async fn frames_are_read_one_at_a_time_and_limits_hold_before_the_body() {
        let (mut a, mut b) = tokio::io::duplex(1 << 17);
        let mut wire = frame::to_frame(&[5u8; frame::MAX_FRAME]).unwrap();
        wire.extend(frame::to_frame(b"next").unwrap());
        wire.extend_from_slice(b"after");
        // A frame over the limit below, then half a length field and the end.
        wire.extend_from_slice(&[0, 9, 1, 2, 0]);
        a.write_all(&wire).await.unwrap();
        drop(a);
        assert_eq!(read_frame(&mut b).await.unwrap().len(), frame::MAX_FRAME);
        assert_eq!(read_frame(&mut b).await.unwrap(), b"next");
        // The bytes after the last frame were not consumed.
        let mut rest = [0u8; 5];
        b.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"after");
        // Over the limit: refused after the length field alone.
        assert!(matches!(
            read_frame_within(&mut b, 8).await,
            Err(SessionError::Frame(FrameError::OverLimit {
                len: 9,
                limit: 8
            }))
        ));
        let mut two = [0u8; 2];
        b.read_exact(&mut two).await.unwrap();
        assert_eq!(two, [1, 2]);
        // The end of the stream inside a length field.
        let err = read_frame(&mut b).await.unwrap_err();
        assert!(
            matches!(&err, SessionError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{err}"
        );
    }
}
