//! The end-to-end handshake, as sans-IO state machines over frame bodies.
//!
//! Known recipient: `Noise_IK_25519_ChaChaPoly_BLAKE2s`, the sender as initiator with the
//! recipient's pinned key. The responder learns the initiator's static key from message
//! 1 and asks its policy (the address book, or an explicit accept) *before* it writes
//! message 2. Message 1 can be replayed by anyone who saw it, so its payload carries only
//! the version and the transfer id, and the responder counts the session established
//! only when the initiator's first transport message decrypts.
//!
//! Code phrase: SPAKE2 first (see [`crate::crypto::pake`]), then
//! `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s` with the PAKE-derived PSK. The PSK is mixed in
//! before the first Noise message, so both static keys travel under it: a wrong code
//! makes message 1 fail at the responder, which reports "code mismatch" to both sides
//! before either static key has left (key confirmation before identities).
//!
//! Cipher suite (see [`crate::crypto::suite`]): the initiator lists the STREAM suites it
//! accepts in the payload of its first Noise message, the responder names its choice in
//! the payload of its reply. Noise hashes both payloads into the transcript, so the
//! handshake fails if either is altered on the way, and the handshake hash (the salt of
//! the STREAM key schedule) commits to them.
//!
//! The prologue binds the protocol version, the ALPN, the mode, the pattern name, the
//! rendezvous id and, in code mode, both PAKE messages. The first frame carries the
//! version and mode in clear so that a peer of another version gets a clear error.
//! Byte layouts: docs/PROTOCOL.md, "Handshake".

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::identity::{Fingerprint, Identity, IdentityError, PublicKey};
use crate::crypto::pake::{Code, Pake, PakeError};
use crate::crypto::suite::{self, Suite, SuitePolicy};
use crate::wire::frame::MAX_FRAME;

/// Protocol version spoken here (2: the code mode moved from XXpsk3 to XXpsk0; 3: the
/// cipher suite is negotiated in the handshake payloads).
pub const VERSION: u8 = 3;
/// ALPN of the direct QUIC connection, bound into the prologue.
pub const ALPN: &[u8] = b"phi-conduit/1";
/// Noise pattern of the known-recipient mode.
pub const IK_PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Noise pattern of the code-phrase mode.
pub const XXPSK0_PATTERN: &str = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";
/// Where the PSK goes in [`XXPSK0_PATTERN`].
const PSK_SLOT: u8 = 0;
/// Transfer id length.
pub const TRANSFER_ID_LEN: usize = crate::crypto::stream::TRANSFER_ID_LEN;
/// Largest plaintext of one session message: a frame, less the kind byte and the tag.
pub const MAX_MESSAGE: usize = MAX_FRAME - 1 - TAG_LEN;

const TAG_LEN: usize = 16;
const PROLOGUE_LABEL: &[u8] = b"phi-conduit handshake";
const KIND_HELLO: u8 = 0x01;
const KIND_HANDSHAKE: u8 = 0x02;
const KIND_ABORT: u8 = 0x03;
const KIND_TRANSPORT: u8 = 0x04;

/// How the two endpoints authenticate each other (the handshake's mode byte; the audit
/// records it as `known_key` or `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AuthMethod {
    /// The sender knows the recipient's key, pinned in its address book (Noise IK).
    PinnedKey = 1,
    /// Both share a one-time code phrase (SPAKE2 + Noise XXpsk0).
    CodePhrase = 2,
}

/// Why a side aborted the handshake or session (sent in an abort frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AbortReason {
    /// The initiator's key is not accepted by the responder.
    UnknownPeer = 1,
    /// The code phrases differ.
    CodeMismatch = 2,
    /// The version is not supported.
    UnsupportedVersion = 3,
    /// Malformed or unexpected message.
    Protocol = 4,
    /// A handshake message did not authenticate (altered on the way, or the wrong key).
    Authentication = 5,
    /// The two sides accept no common cipher suite.
    NoCommonSuite = 6,
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::UnknownPeer => "unknown sender",
            Self::CodeMismatch => "code mismatch",
            Self::UnsupportedVersion => "unsupported protocol version",
            Self::Protocol => "protocol error",
            Self::Authentication => "authentication failed",
            Self::NoCommonSuite => "no common cipher suite",
        })
    }
}

impl AbortReason {
    fn from_byte(b: u8) -> Self {
        match b {
            1 => Self::UnknownPeer,
            2 => Self::CodeMismatch,
            3 => Self::UnsupportedVersion,
            5 => Self::Authentication,
            6 => Self::NoCommonSuite,
            _ => Self::Protocol,
        }
    }
}

/// Handshake and session errors.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {0} (this build speaks version {VERSION})")]
    UnsupportedVersion(u8),
    /// The peer asked for an unknown mode.
    #[error("unsupported handshake mode {0}")]
    UnsupportedMode(u8),
    /// The initiator's key is not in the address book and was not accepted.
    #[error("unknown sender {0}: not in the address book")]
    UnknownPeer(Fingerprint),
    /// The code phrases differ (detected by the responder).
    #[error(
        "code mismatch: the code phrases differ (check the code word by word with the sender; it is used up now, so the sender starts again for a new one)"
    )]
    CodeMismatch,
    /// The peer aborted. Before the handshake completes an abort frame travels in clear
    /// and is not authenticated: anyone on the path could have sent it.
    #[error("{0}: the peer aborted the handshake (an unauthenticated abort frame)")]
    PeerAborted(AbortReason),
    /// A message did not decrypt: the wrong key, or tampering on the way.
    #[error(
        "authentication failed: the peer does not hold the expected key, or the message was altered"
    )]
    Authentication,
    /// A message that does not fit the protocol.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The peer accepts none of the cipher suites this side accepts.
    #[error("no common cipher suite: the peer offers {offered}, this side accepts {accepted}")]
    NoCommonSuite {
        /// The peer's list (empty when this side is the initiator).
        offered: String,
        /// This side's policy.
        accepted: SuitePolicy,
    },
    /// A session message larger than a frame allows.
    #[error("session message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// A session message that does not decode.
    #[error("malformed session message: {0}")]
    Decode(String),
    /// The peer's static key is invalid.
    #[error(transparent)]
    Key(#[from] IdentityError),
    /// The PAKE failed.
    #[error(transparent)]
    Pake(#[from] PakeError),
    /// The Noise library refused an operation.
    #[error("noise: {0}")]
    Noise(String),
}

impl HandshakeError {
    /// True for failures that mean "not who we expected" (exit code 3).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            Self::UnknownPeer(_)
                | Self::CodeMismatch
                | Self::Authentication
                | Self::PeerAborted(
                    AbortReason::UnknownPeer
                        | AbortReason::CodeMismatch
                        | AbortReason::Authentication
                )
        )
    }

    /// The abort reason to send to the peer for this error.
    pub fn abort_reason(&self) -> AbortReason {
        match self {
            Self::UnknownPeer(_) => AbortReason::UnknownPeer,
            Self::CodeMismatch => AbortReason::CodeMismatch,
            Self::UnsupportedVersion(_) => AbortReason::UnsupportedVersion,
            Self::Authentication => AbortReason::Authentication,
            Self::NoCommonSuite { .. } => AbortReason::NoCommonSuite,
            _ => AbortReason::Protocol,
        }
    }
}

fn noise(e: snow::Error) -> HandshakeError {
    match e {
        snow::Error::Decrypt => HandshakeError::Authentication,
        other => HandshakeError::Noise(other.to_string()),
    }
}

/// The body of an abort frame.
pub fn abort_frame(reason: AbortReason) -> Vec<u8> {
    vec![KIND_ABORT, reason as u8]
}

/// The prologue both sides feed to Noise.
pub fn prologue(mode: AuthMethod, rendezvous: &[u8; 32], pake: Option<(&[u8], &[u8])>) -> Vec<u8> {
    let pattern = match mode {
        AuthMethod::PinnedKey => IK_PATTERN,
        AuthMethod::CodePhrase => XXPSK0_PATTERN,
    };
    let mut p = Vec::with_capacity(128);
    p.extend_from_slice(PROLOGUE_LABEL);
    p.push(VERSION);
    p.push(ALPN.len() as u8);
    p.extend_from_slice(ALPN);
    p.push(mode as u8);
    p.push(pattern.len() as u8);
    p.extend_from_slice(pattern.as_bytes());
    p.extend_from_slice(rendezvous);
    if let Some((a, b)) = pake {
        for m in [a, b] {
            p.extend_from_slice(&(m.len() as u16).to_be_bytes());
            p.extend_from_slice(m);
        }
    }
    p
}

/// What a state machine wants done after a step.
#[derive(Debug)]
pub enum Step {
    /// Send this frame body and wait for the next one.
    Send(Vec<u8>),
    /// The handshake is complete.
    Done(Box<Established>),
    /// Send this frame body; then the handshake is complete.
    SendThenDone(Vec<u8>, Box<Established>),
}

/// An authenticated session.
pub struct Established {
    transport: snow::TransportState,
    handshake_hash: [u8; 32],
    remote: PublicKey,
    first_message: Option<Vec<u8>>,
    transfer_id: Option<[u8; TRANSFER_ID_LEN]>,
    suite: Suite,
}

impl Established {
    fn new(
        hs: snow::HandshakeState,
        first_message: Option<Vec<u8>>,
        suite: Suite,
    ) -> Result<Self, HandshakeError> {
        let mut handshake_hash = [0u8; 32];
        let h = hs.get_handshake_hash();
        if h.len() != 32 {
            return Err(HandshakeError::Protocol("unexpected handshake hash length"));
        }
        handshake_hash.copy_from_slice(h);
        let remote_bytes: [u8; 32] = hs
            .get_remote_static()
            .and_then(|r| r.try_into().ok())
            .ok_or(HandshakeError::Protocol("no remote static key"))?;
        let remote = PublicKey::from_bytes(remote_bytes)?;
        let transport = hs.into_transport_mode().map_err(noise)?;
        Ok(Self {
            transport,
            handshake_hash,
            remote,
            first_message,
            transfer_id: None,
            suite,
        })
    }

    /// The STREAM cipher suite both sides agreed on in the handshake.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The Noise handshake hash (salt of the STREAM key schedule).
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.handshake_hash
    }

    /// The peer's static public key.
    pub fn remote_static(&self) -> PublicKey {
        self.remote
    }

    /// The transfer id of message 1 (known-recipient mode).
    pub fn transfer_id(&self) -> Option<[u8; TRANSFER_ID_LEN]> {
        self.transfer_id
    }

    /// The responder's copy of the initiator's first transport message.
    pub fn take_first_message(&mut self) -> Option<Vec<u8>> {
        self.first_message.take()
    }

    /// Encrypts `plaintext` into a frame body.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        if plaintext.len() > MAX_MESSAGE {
            return Err(HandshakeError::TooLarge(plaintext.len()));
        }
        let mut out = vec![0u8; 1 + plaintext.len() + TAG_LEN];
        out[0] = KIND_TRANSPORT;
        let n = self
            .transport
            .write_message(plaintext, &mut out[1..])
            .map_err(noise)?;
        out.truncate(1 + n);
        Ok(out)
    }

    /// Decrypts a frame body; an abort frame becomes [`HandshakeError::PeerAborted`].
    pub fn open(&mut self, body: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        open_transport(&mut self.transport, body)
    }

    /// Encodes and encrypts a typed message (postcard).
    pub fn seal_message<T: Serialize>(&mut self, msg: &T) -> Result<Vec<u8>, HandshakeError> {
        let bytes = Zeroizing::new(
            postcard::to_allocvec(msg).map_err(|e| HandshakeError::Decode(e.to_string()))?,
        );
        self.seal(&bytes)
    }

    /// Decrypts and decodes a typed message.
    pub fn open_message<T: DeserializeOwned>(&mut self, body: &[u8]) -> Result<T, HandshakeError> {
        let bytes = Zeroizing::new(self.open(body)?);
        postcard::from_bytes(&bytes).map_err(|e| HandshakeError::Decode(e.to_string()))
    }
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("remote", &self.remote)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

fn open_transport(t: &mut snow::TransportState, body: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    match body {
        [KIND_TRANSPORT, ct @ ..] if ct.len() >= TAG_LEN => {
            let mut out = vec![0u8; ct.len()];
            let n = t.read_message(ct, &mut out).map_err(noise)?;
            out.truncate(n);
            Ok(out)
        }
        [KIND_ABORT, reason, ..] => {
            Err(HandshakeError::PeerAborted(AbortReason::from_byte(*reason)))
        }
        _ => Err(HandshakeError::Protocol("expected a transport message")),
    }
}

fn builder(pattern: &str) -> Result<snow::Builder<'static>, HandshakeError> {
    let params = pattern.parse().map_err(noise)?;
    Ok(snow::Builder::new(params))
}

fn write_hs(
    hs: &mut snow::HandshakeState,
    payload: &[u8],
    kind: u8,
) -> Result<Vec<u8>, HandshakeError> {
    let mut out = vec![0u8; MAX_FRAME];
    out[0] = kind;
    let n = hs.write_message(payload, &mut out[1..]).map_err(noise)?;
    out.truncate(1 + n);
    Ok(out)
}

fn read_hs(hs: &mut snow::HandshakeState, msg: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let mut out = vec![0u8; msg.len()];
    let n = hs.read_message(msg, &mut out).map_err(noise)?;
    out.truncate(n);
    Ok(out)
}

/// The responder's choice from the initiator's offer (a payload tail).
fn choose_from(offer: &[u8], policy: SuitePolicy) -> Result<Suite, HandshakeError> {
    let offered = suite::decode_offer(offer).ok_or(HandshakeError::Protocol("bad suite offer"))?;
    suite::choose(&offered, policy).ok_or_else(|| HandshakeError::NoCommonSuite {
        offered: if offered.is_empty() {
            "no suite this build knows".to_string()
        } else {
            offered
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        },
        accepted: policy,
    })
}

/// Checks the responder's choice (the payload of its reply) against the offer.
fn check_choice(payload: &[u8], offered: &[Suite]) -> Result<Suite, HandshakeError> {
    match payload {
        [code] => Suite::from_code(*code)
            .filter(|s| offered.contains(s))
            .ok_or(HandshakeError::Protocol(
                "the peer chose a suite that was not offered",
            )),
        _ => Err(HandshakeError::Protocol("bad suite choice")),
    }
}

/// Splits a handshake-phase frame body, turning an abort into an error.
fn expect(kind: u8, body: &[u8]) -> Result<&[u8], HandshakeError> {
    match body {
        [KIND_ABORT, reason, ..] => {
            Err(HandshakeError::PeerAborted(AbortReason::from_byte(*reason)))
        }
        [k, rest @ ..] if *k == kind && !rest.is_empty() => Ok(rest),
        _ => Err(HandshakeError::Protocol("unexpected handshake frame")),
    }
}

enum InitState {
    IkSent(snow::HandshakeState, [u8; TRANSFER_ID_LEN], Vec<Suite>),
    PakeSent {
        pake: Pake,
        hello: Vec<u8>,
        rendezvous: [u8; 32],
        secret: Zeroizing<[u8; 32]>,
        offer: Vec<Suite>,
    },
    XxSent1(snow::HandshakeState, Vec<Suite>),
    Finished,
}

/// The sender's side.
pub struct Initiator {
    state: InitState,
}

impl Initiator {
    /// Starts a known-recipient handshake offering the automatic suite list; returns
    /// the first frame body to send.
    pub fn known_peer(
        local: &Identity,
        remote: &PublicKey,
        rendezvous: &[u8; 32],
        transfer_id: &[u8; TRANSFER_ID_LEN],
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        Self::known_peer_with(local, remote, rendezvous, transfer_id, SuitePolicy::Auto)
    }

    /// [`Initiator::known_peer`] offering the suites of `suites`.
    pub fn known_peer_with(
        local: &Identity,
        remote: &PublicKey,
        rendezvous: &[u8; 32],
        transfer_id: &[u8; TRANSFER_ID_LEN],
        suites: SuitePolicy,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let offer = suites.offer();
        let secret = local.secret_bytes();
        let mut hs = builder(IK_PATTERN)?
            .local_private_key(secret.as_slice())
            .remote_public_key(remote.as_bytes())
            .prologue(&prologue(AuthMethod::PinnedKey, rendezvous, None))
            .build_initiator()
            .map_err(noise)?;
        let mut payload = vec![VERSION];
        payload.extend_from_slice(transfer_id);
        payload.extend_from_slice(&suite::encode_offer(&offer));
        let msg = write_hs(&mut hs, &payload, KIND_HELLO)?;
        let mut frame = vec![KIND_HELLO, VERSION, AuthMethod::PinnedKey as u8];
        frame.extend_from_slice(&msg[1..]);
        Ok((
            Self {
                state: InitState::IkSent(hs, *transfer_id, offer),
            },
            frame,
        ))
    }

    /// Starts a code-phrase handshake offering the automatic suite list; returns the
    /// first frame body to send.
    pub fn code(local: &Identity, code: &Code, rendezvous: &[u8; 32]) -> (Self, Vec<u8>) {
        Self::code_with(local, code, rendezvous, SuitePolicy::Auto)
    }

    /// [`Initiator::code`] offering the suites of `suites`.
    pub fn code_with(
        local: &Identity,
        code: &Code,
        rendezvous: &[u8; 32],
        suites: SuitePolicy,
    ) -> (Self, Vec<u8>) {
        let (pake, msg) = Pake::start(code, *rendezvous);
        let mut frame = vec![KIND_HELLO, VERSION, AuthMethod::CodePhrase as u8];
        frame.extend_from_slice(&msg);
        let state = InitState::PakeSent {
            pake,
            hello: msg,
            rendezvous: *rendezvous,
            secret: local.secret_bytes(),
            offer: suites.offer(),
        };
        (Self { state }, frame)
    }

    /// Takes the responder's next frame body.
    pub fn read(&mut self, body: &[u8]) -> Result<Step, HandshakeError> {
        match std::mem::replace(&mut self.state, InitState::Finished) {
            InitState::IkSent(mut hs, transfer_id, offer) => {
                let msg = expect(KIND_HANDSHAKE, body)?;
                let payload = read_hs(&mut hs, msg)?;
                let chosen = check_choice(&payload, &offer)?;
                let mut est = Established::new(hs, None, chosen)?;
                est.transfer_id = Some(transfer_id);
                Ok(Step::Done(Box::new(est)))
            }
            InitState::PakeSent {
                pake,
                hello,
                rendezvous,
                secret,
                offer,
            } => {
                let their = expect(KIND_HANDSHAKE, body)?;
                let psk = pake.finish(their)?;
                let mut hs = builder(XXPSK0_PATTERN)?
                    .local_private_key(secret.as_slice())
                    .psk(PSK_SLOT, psk.as_slice())
                    .prologue(&prologue(
                        AuthMethod::CodePhrase,
                        &rendezvous,
                        Some((&hello, their)),
                    ))
                    .build_initiator()
                    .map_err(noise)?;
                let m1 = write_hs(&mut hs, &suite::encode_offer(&offer), KIND_HANDSHAKE)?;
                self.state = InitState::XxSent1(hs, offer);
                Ok(Step::Send(m1))
            }
            InitState::XxSent1(mut hs, offer) => {
                let msg = expect(KIND_HANDSHAKE, body)?;
                let payload = read_hs(&mut hs, msg)?;
                let chosen = check_choice(&payload, &offer)?;
                let m3 = write_hs(&mut hs, &[], KIND_HANDSHAKE)?;
                Ok(Step::SendThenDone(
                    m3,
                    Box::new(Established::new(hs, None, chosen)?),
                ))
            }
            InitState::Finished => Err(HandshakeError::Protocol("handshake already finished")),
        }
    }
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Initiator(..)")
    }
}

enum RespState {
    Start,
    IkAwaitFirst(snow::TransportState, [u8; 32], PublicKey, Suite),
    XxAwait1(snow::HandshakeState),
    XxAwait3(snow::HandshakeState, Suite),
    Finished,
}

/// The receiver's side.
pub struct Responder {
    state: RespState,
    secret: Zeroizing<[u8; 32]>,
    rendezvous: [u8; 32],
    code: Option<Code>,
    transfer_id: Option<[u8; TRANSFER_ID_LEN]>,
    suites: SuitePolicy,
}

impl Responder {
    /// A responder for `rendezvous`; with `code` it accepts only the code-phrase mode,
    /// without it only the known-recipient mode.
    pub fn new(local: &Identity, rendezvous: &[u8; 32], code: Option<Code>) -> Self {
        Self {
            state: RespState::Start,
            secret: local.secret_bytes(),
            rendezvous: *rendezvous,
            code,
            transfer_id: None,
            suites: SuitePolicy::Auto,
        }
    }

    /// Chooses the cipher suite under `suites` (default: [`SuitePolicy::Auto`]).
    pub fn with_suites(mut self, suites: SuitePolicy) -> Self {
        self.suites = suites;
        self
    }

    /// The transfer id from message 1 (known-recipient mode).
    pub fn transfer_id(&self) -> Option<[u8; TRANSFER_ID_LEN]> {
        self.transfer_id
    }

    /// Takes the initiator's next frame body. `accept` is asked about the initiator's
    /// static key before anything is sent back (known-recipient mode).
    pub fn read(
        &mut self,
        body: &[u8],
        accept: &mut dyn FnMut(&PublicKey) -> bool,
    ) -> Result<Step, HandshakeError> {
        match std::mem::replace(&mut self.state, RespState::Finished) {
            RespState::Start => self.hello(body, accept),
            RespState::IkAwaitFirst(mut t, hash, remote, suite) => {
                let first = open_transport(&mut t, body)?;
                Ok(Step::Done(Box::new(Established {
                    transport: t,
                    handshake_hash: hash,
                    remote,
                    first_message: Some(first),
                    transfer_id: self.transfer_id,
                    suite,
                })))
            }
            RespState::XxAwait1(mut hs) => {
                // Message 1 is sealed under the PSK: if it does not open, the codes differ
                // (or it was altered), and nothing of ours has been sent yet but the PAKE.
                let offer = match read_hs(&mut hs, expect(KIND_HANDSHAKE, body)?) {
                    Ok(payload) => payload,
                    Err(HandshakeError::Authentication) => {
                        return Err(HandshakeError::CodeMismatch);
                    }
                    Err(e) => return Err(e),
                };
                let chosen = choose_from(&offer, self.suites)?;
                let m2 = write_hs(&mut hs, &[chosen.code()], KIND_HANDSHAKE)?;
                self.state = RespState::XxAwait3(hs, chosen);
                Ok(Step::Send(m2))
            }
            RespState::XxAwait3(mut hs, chosen) => {
                // The code was confirmed by message 1: a failure here is tampering.
                read_hs(&mut hs, expect(KIND_HANDSHAKE, body)?)?;
                Ok(Step::Done(Box::new(Established::new(hs, None, chosen)?)))
            }
            RespState::Finished => Err(HandshakeError::Protocol("handshake already finished")),
        }
    }

    fn hello(
        &mut self,
        body: &[u8],
        accept: &mut dyn FnMut(&PublicKey) -> bool,
    ) -> Result<Step, HandshakeError> {
        let [KIND_HELLO, version, mode, rest @ ..] = body else {
            return Err(HandshakeError::Protocol("expected a hello frame"));
        };
        if *version != VERSION {
            return Err(HandshakeError::UnsupportedVersion(*version));
        }
        match (*mode, self.code.clone()) {
            (m, None) if m == AuthMethod::PinnedKey as u8 => {
                let mut hs = builder(IK_PATTERN)?
                    .local_private_key(self.secret.as_slice())
                    .prologue(&prologue(AuthMethod::PinnedKey, &self.rendezvous, None))
                    .build_responder()
                    .map_err(noise)?;
                let payload = read_hs(&mut hs, rest)?;
                let offer = match payload.as_slice() {
                    [v, rest @ ..] if *v == VERSION && rest.len() > TRANSFER_ID_LEN => {
                        let (id, offer) = rest.split_at(TRANSFER_ID_LEN);
                        let mut t = [0u8; TRANSFER_ID_LEN];
                        t.copy_from_slice(id);
                        self.transfer_id = Some(t);
                        offer
                    }
                    [v, ..] if *v != VERSION => return Err(HandshakeError::UnsupportedVersion(*v)),
                    _ => return Err(HandshakeError::Protocol("bad message 1 payload")),
                };
                let remote_bytes: [u8; 32] = hs
                    .get_remote_static()
                    .and_then(|r| r.try_into().ok())
                    .ok_or(HandshakeError::Protocol("no initiator key"))?;
                let remote = PublicKey::from_bytes(remote_bytes)?;
                if !accept(&remote) {
                    return Err(HandshakeError::UnknownPeer(remote.fingerprint()));
                }
                // The key is checked first: an unknown sender learns nothing of our suites.
                let chosen = choose_from(offer, self.suites)?;
                let m2 = write_hs(&mut hs, &[chosen.code()], KIND_HANDSHAKE)?;
                let mut hash = [0u8; 32];
                hash.copy_from_slice(hs.get_handshake_hash());
                let t = hs.into_transport_mode().map_err(noise)?;
                self.state = RespState::IkAwaitFirst(t, hash, remote, chosen);
                Ok(Step::Send(m2))
            }
            (m, Some(code)) if m == AuthMethod::CodePhrase as u8 => {
                let (pake, mine) = Pake::start(&code, self.rendezvous);
                let psk = pake.finish(rest)?;
                let hs = builder(XXPSK0_PATTERN)?
                    .local_private_key(self.secret.as_slice())
                    .psk(PSK_SLOT, psk.as_slice())
                    .prologue(&prologue(
                        AuthMethod::CodePhrase,
                        &self.rendezvous,
                        Some((rest, &mine)),
                    ))
                    .build_responder()
                    .map_err(noise)?;
                self.state = RespState::XxAwait1(hs);
                let mut frame = vec![KIND_HANDSHAKE];
                frame.extend_from_slice(&mine);
                Ok(Step::Send(frame))
            }
            (m, _) if m == AuthMethod::PinnedKey as u8 || m == AuthMethod::CodePhrase as u8 => {
                Err(HandshakeError::Protocol(
                    "the peer uses the other authentication mode (code vs known key)",
                ))
            }
            (m, _) => Err(HandshakeError::UnsupportedMode(m)),
        }
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder(..)")
    }
}
