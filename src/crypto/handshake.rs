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
//! Post-quantum (see [`crate::crypto::hybrid`]): the initiator's first Noise payload
//! also carries a fresh ML-KEM-768 encapsulation key, the responder's reply the
//! ciphertext, and the session keys (and the salt of the file keys) are derived from the
//! Noise result *and* the ML-KEM shared secret, not taken from Noise's `Split()` alone.
//! A path that strips or rewrites either share breaks the transcript (authentication
//! error on both sides); a peer that does not take part is refused under
//! [`PqPolicy::Required`], the default.
//!
//! The prologue binds the protocol version, the ALPN, the mode, the pattern name, the
//! rendezvous id and, in code mode, both PAKE messages. The first frame carries the
//! version and mode in clear so that a peer of another version gets a clear error.
//! Byte layouts: docs/PROTOCOL.md, "Handshake".

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::hybrid::{
    self, CIPHERTEXT_LEN, ENCAPSULATION_KEY_LEN, KEM_ML_KEM_768, KEM_NONE, KemError, KemKeyPair,
    PqPolicy,
};
use crate::crypto::identity::{Fingerprint, Identity, IdentityError, PublicKey};
use crate::crypto::pake::{Code, Pake, PakeError};
use crate::crypto::suite::{self, Suite, SuitePolicy};
use crate::wire::frame::MAX_FRAME;

/// Protocol version spoken here (2: the code mode moved from XXpsk3 to XXpsk0; 3: the
/// cipher suite is negotiated in the handshake payloads; 4: the hybrid ML-KEM-768
/// exchange and the session key schedule of [`crate::crypto::hybrid`]).
pub const VERSION: u8 = 5;
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
    /// FIPS mode: each pinned the other's P-256 key (the connection's TLS 1.3).
    FipsKey = 3,
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
    /// One side requires the post-quantum exchange and the other did not take part.
    PostQuantumRequired = 7,
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
            Self::PostQuantumRequired => "post-quantum key exchange required",
        })
    }
}

impl AbortReason {
    pub(crate) fn from_byte(b: u8) -> Self {
        match b {
            1 => Self::UnknownPeer,
            2 => Self::CodeMismatch,
            3 => Self::UnsupportedVersion,
            5 => Self::Authentication,
            6 => Self::NoCommonSuite,
            7 => Self::PostQuantumRequired,
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
    /// FIPS mode: the peer's TLS key is not a FIPS pin of the address book.
    #[error(
        "unknown sender: its FIPS key {0} is not in the address book (add it with `conduit peers fips NAME PIN`)"
    )]
    UnknownFipsPeer(String),
    /// FIPS mode: the receiver's TLS key is not the pin the address book has for it.
    #[error(
        "authentication failed: the receiver's FIPS key {got} is not the one the address book pins for it ({expected})"
    )]
    FipsPinMismatch {
        /// The pin of the key the receiver presented.
        got: String,
        /// The pin in the address book.
        expected: String,
    },
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
    /// The peer did not take part in the ML-KEM-768 exchange and this side requires it.
    #[error(
        "post-quantum key exchange required: the peer did not take part in ML-KEM-768, and this side's post_quantum setting is \"required\""
    )]
    PostQuantumRequired,
    /// An ML-KEM-768 share that does not fit (wrong length, refused by the KEM).
    #[error(transparent)]
    Kem(#[from] KemError),
    /// The session's message counter is used up (2^64 - 1 messages).
    #[error("session message counter exhausted")]
    NonceExhausted,
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
                | Self::UnknownFipsPeer(_)
                | Self::FipsPinMismatch { .. }
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
            Self::UnknownPeer(_) | Self::UnknownFipsPeer(_) => AbortReason::UnknownPeer,
            Self::FipsPinMismatch { .. } => AbortReason::Authentication,
            Self::CodeMismatch => AbortReason::CodeMismatch,
            Self::UnsupportedVersion(_) => AbortReason::UnsupportedVersion,
            Self::Authentication => AbortReason::Authentication,
            Self::NoCommonSuite { .. } => AbortReason::NoCommonSuite,
            Self::PostQuantumRequired => AbortReason::PostQuantumRequired,
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
pub fn prologue(
    mode: AuthMethod,
    rendezvous: &[u8; 32],
    pake: Option<(&[u8], &[u8])>,
    channel: Option<&[u8; 32]>,
) -> Vec<u8> {
    let pattern = match mode {
        // FipsKey is never a Noise mode (FIPS mode runs no Noise); it names IK's pattern
        // only to keep this total.
        AuthMethod::PinnedKey | AuthMethod::FipsKey => IK_PATTERN,
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
    match channel {
        Some(c) => {
            p.push(1);
            p.extend_from_slice(c);
        }
        None => p.push(0),
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

/// What each side offers and insists on in the handshake: the STREAM suites and the
/// post-quantum exchange. `From<SuitePolicy>` keeps the default post-quantum policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// The STREAM cipher suites accepted (`[transfer] suite`).
    pub suites: SuitePolicy,
    /// The post-quantum exchange (`[transfer] post_quantum`).
    pub post_quantum: PqPolicy,
    /// The channel binding: a value of the QUIC connection the handshake runs on (its
    /// TLS exporter, [`channel_binding`]), bound into the prologue, so that the session
    /// only completes when both sides are on the one end-to-end connection (a relay
    /// that terminates QUIC on each side cannot sit between them). `None` only where a
    /// relay splices two connections by design (both sides must agree).
    pub channel: Option<[u8; 32]>,
}

impl From<SuitePolicy> for Policy {
    fn from(suites: SuitePolicy) -> Self {
        Self {
            suites,
            ..Self::default()
        }
    }
}

impl From<PqPolicy> for Policy {
    fn from(post_quantum: PqPolicy) -> Self {
        Self {
            post_quantum,
            ..Self::default()
        }
    }
}

/// The TLS exporter label of the channel binding (RFC 8446 section 7.5).
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-phi-conduit end-to-end connection";

/// The channel binding of `conn` ([`Policy::channel`]): 32 bytes of its TLS exporter
/// under [`CHANNEL_BINDING_LABEL`], empty context. `None` if the connection cannot
/// export (its handshake is not complete).
pub fn channel_binding(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, CHANNEL_BINDING_LABEL, b"")
        .ok()?;
    Some(out)
}

/// One direction of the session: ChaCha20-Poly1305 under a key of the session key
/// schedule, with Noise's nonce layout (4 zero bytes, then the message counter as a
/// 64-bit little-endian integer) and empty associated data.
struct Direction {
    key: aws_lc_rs::aead::LessSafeKey,
    counter: u64,
}

impl Direction {
    fn new(key: &[u8; hybrid::KEY_LEN]) -> Result<Self, HandshakeError> {
        use aws_lc_rs::aead::{CHACHA20_POLY1305, LessSafeKey, UnboundKey};
        let key = UnboundKey::new(&CHACHA20_POLY1305, key)
            .map_err(|_| HandshakeError::Protocol("session key rejected"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            counter: 0,
        })
    }

    fn nonce(&self) -> Result<aws_lc_rs::aead::Nonce, HandshakeError> {
        // Noise reserves 2^64 - 1; a session never gets near either.
        if self.counter == u64::MAX {
            return Err(HandshakeError::NonceExhausted);
        }
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_le_bytes());
        Ok(aws_lc_rs::aead::Nonce::assume_unique_for_key(n))
    }

    /// Seals `buf` in place and appends the tag.
    fn seal(&mut self, buf: &mut Vec<u8>) -> Result<(), HandshakeError> {
        let nonce = self.nonce()?;
        self.key
            .seal_in_place_append_tag(nonce, aws_lc_rs::aead::Aad::empty(), buf)
            .map_err(|_| HandshakeError::Protocol("seal failed"))?;
        self.counter += 1;
        Ok(())
    }

    /// Opens `ct` (ciphertext and tag); the counter advances only on success.
    fn open(&mut self, ct: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let nonce = self.nonce()?;
        let mut buf = ct.to_vec();
        let n = self
            .key
            .open_in_place(nonce, aws_lc_rs::aead::Aad::empty(), &mut buf)
            .map_err(|_| HandshakeError::Authentication)?
            .len();
        buf.truncate(n);
        self.counter += 1;
        Ok(buf)
    }
}

/// How the messages of an established session are protected.
enum Transport {
    /// Noise's two directions, each its own key and counter.
    Noise { send: Direction, recv: Direction },
    /// FIPS mode: the end-to-end connection's TLS 1.3 protects them; a message is its
    /// kind byte and its bytes.
    Tls,
}

impl Transport {
    fn noise(send: Direction, recv: Direction) -> Self {
        Transport::Noise { send, recv }
    }

    fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let mut body = Vec::with_capacity(plaintext.len() + TAG_LEN);
        body.extend_from_slice(plaintext);
        if let Transport::Noise { send, .. } = self {
            send.seal(&mut body)?;
        }
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(KIND_TRANSPORT);
        out.append(&mut body);
        Ok(out)
    }

    fn open(&mut self, body: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        match (self, body) {
            (Transport::Noise { recv, .. }, [KIND_TRANSPORT, ct @ ..]) if ct.len() >= TAG_LEN => {
                recv.open(ct)
            }
            (Transport::Tls, [KIND_TRANSPORT, pt @ ..]) => Ok(pt.to_vec()),
            (_, [KIND_ABORT, reason, ..]) => {
                Err(HandshakeError::PeerAborted(AbortReason::from_byte(*reason)))
            }
            _ => Err(HandshakeError::Protocol("expected a transport message")),
        }
    }
}

/// An authenticated session.
pub struct Established {
    transport: Transport,
    handshake_hash: [u8; 32],
    file_salt: Zeroizing<[u8; 32]>,
    post_quantum: bool,
    remote: PublicKey,
    first_message: Option<Vec<u8>>,
    transfer_id: Option<[u8; TRANSFER_ID_LEN]>,
    suite: Suite,
}

impl Established {
    /// The session of a finished handshake: the key schedule of
    /// [`hybrid::derive_session_keys`] over Noise's handshake hash and split keys and
    /// the ML-KEM-768 shared secret, if the two sides ran the exchange.
    fn new(
        mut hs: snow::HandshakeState,
        kem_secret: Option<&[u8; hybrid::SHARED_SECRET_LEN]>,
        suite: Suite,
    ) -> Result<Self, HandshakeError> {
        if !hs.is_handshake_finished() {
            return Err(HandshakeError::Protocol("handshake not finished"));
        }
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
        let (k1, k2) = hs.dangerously_get_raw_split();
        let (k1, k2) = (Zeroizing::new(k1), Zeroizing::new(k2));
        let keys = hybrid::derive_session_keys(&handshake_hash, (&k1, &k2), kem_secret);
        let (i2r, r2i) = (
            Direction::new(&keys.initiator_to_responder)?,
            Direction::new(&keys.responder_to_initiator)?,
        );
        let transport = if hs.is_initiator() {
            Transport::noise(i2r, r2i)
        } else {
            Transport::noise(r2i, i2r)
        };
        Ok(Self {
            transport,
            handshake_hash,
            file_salt: keys.file_salt.clone(),
            post_quantum: kem_secret.is_some(),
            remote,
            first_message: None,
            transfer_id: None,
            suite,
        })
    }

    /// FIPS mode's session over a finished TLS 1.3 end-to-end connection
    /// ([`crate::crypto::fips_session`]): messages ride the connection's TLS, the file
    /// salt and the session id come from its exporter, the peer is the address book's
    /// entry for the key that signed the TLS handshake. Always post-quantum (the
    /// connection's only key exchange is X25519MLKEM768).
    pub fn over_tls(
        keys: &crate::crypto::fips_session::TlsKeys,
        remote: PublicKey,
        suite: Suite,
        transfer_id: Option<[u8; TRANSFER_ID_LEN]>,
    ) -> Self {
        Self {
            transport: Transport::Tls,
            handshake_hash: keys.session_id,
            file_salt: keys.file_salt.clone(),
            post_quantum: true,
            remote,
            first_message: None,
            transfer_id,
            suite,
        }
    }

    /// The STREAM cipher suite both sides agreed on in the handshake.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The hash of the session's files: SHA-256 in the FIPS session (its TLS), BLAKE3
    /// otherwise.
    pub fn file_hash(&self) -> crate::crypto::file_hash::HashAlg {
        match self.transport {
            Transport::Tls => crate::crypto::file_hash::HashAlg::Sha256,
            Transport::Noise { .. } => crate::crypto::file_hash::HashAlg::Blake3,
        }
    }

    /// The Noise handshake hash `h` (an input of the session key schedule; not secret).
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.handshake_hash
    }

    /// The salt of the STREAM file keys (see [`crate::crypto::stream::TransferKey`]),
    /// from the session key schedule: it depends on the Noise result and, when
    /// [`Established::post_quantum`], on the ML-KEM-768 secret.
    pub fn file_salt(&self) -> Zeroizing<[u8; 32]> {
        self.file_salt.clone()
    }

    /// True when the session keys include an ML-KEM-768 shared secret.
    pub fn post_quantum(&self) -> bool {
        self.post_quantum
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
        self.transport.seal(plaintext)
    }

    /// Decrypts a frame body; an abort frame becomes [`HandshakeError::PeerAborted`].
    pub fn open(&mut self, body: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        self.transport.open(body)
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
            .field("post_quantum", &self.post_quantum)
            .finish_non_exhaustive()
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

/// The responder's choice from the initiator's offer.
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

/// Checks the responder's choice code against the offer.
fn check_choice(code: u8, offered: &[Suite]) -> Result<Suite, HandshakeError> {
    Suite::from_code(code)
        .filter(|s| offered.contains(s))
        .ok_or(HandshakeError::Protocol(
            "the peer chose a suite that was not offered",
        ))
}

/// Splits `offer || rest` at the end of the suite offer (`count || codes`).
fn split_offer(bytes: &[u8]) -> Result<(&[u8], &[u8]), HandshakeError> {
    match bytes.first() {
        Some(&n) if bytes.len() > usize::from(n) => Ok(bytes.split_at(1 + usize::from(n))),
        _ => Err(HandshakeError::Protocol("bad suite offer")),
    }
}

/// Appends a post-quantum share: [`KEM_NONE`], or [`KEM_ML_KEM_768`] and `share`.
fn push_share(out: &mut Vec<u8>, share: Option<&[u8]>) {
    match share {
        Some(s) => {
            out.push(KEM_ML_KEM_768);
            out.extend_from_slice(s);
        }
        None => out.push(KEM_NONE),
    }
}

/// Parses a post-quantum share that must fill `bytes` exactly, `len` bytes after the
/// code. A share of the wrong length is refused here, before the KEM sees it.
fn parse_share(bytes: &[u8], len: usize) -> Result<Option<&[u8]>, HandshakeError> {
    match bytes {
        [KEM_NONE] => Ok(None),
        [KEM_ML_KEM_768, share @ ..] if share.len() == len => Ok(Some(share)),
        [KEM_ML_KEM_768, share @ ..] if len == ENCAPSULATION_KEY_LEN => {
            Err(KemError::EncapsulationKeyLength(share.len()).into())
        }
        [KEM_ML_KEM_768, share @ ..] => Err(KemError::CiphertextLength(share.len()).into()),
        _ => Err(HandshakeError::Protocol(
            "bad post-quantum share in the handshake payload",
        )),
    }
}

/// The initiator's first payload tail: `offer || share`, and the key pair it keeps.
fn initiator_offer(policy: Policy) -> Result<(Vec<u8>, Option<KemKeyPair>), HandshakeError> {
    let pair = match policy.post_quantum.takes_part() {
        true => Some(KemKeyPair::generate()?),
        false => None,
    };
    let mut out = suite::encode_offer(&policy.suites.offer());
    push_share(&mut out, pair.as_ref().map(|p| p.encapsulation_key()));
    Ok((out, pair))
}

/// The responder's side of an offer tail (`offer || share`): the suite it chooses,
/// its reply payload (`choice || share`) and the ML-KEM secret, if any.
fn respond_to_offer(
    tail: &[u8],
    policy: Policy,
) -> Result<(Suite, Vec<u8>, Option<KemSecret>), HandshakeError> {
    let (offer, share) = split_offer(tail)?;
    let chosen = choose_from(offer, policy.suites)?;
    let share = parse_share(share, ENCAPSULATION_KEY_LEN)?;
    let mut reply = vec![chosen.code()];
    match (share, policy.post_quantum) {
        (Some(ek), p) if p.takes_part() => {
            let (ct, ss) = hybrid::encapsulate(ek)?;
            push_share(&mut reply, Some(&ct));
            Ok((chosen, reply, Some(ss)))
        }
        (_, PqPolicy::Required) => Err(HandshakeError::PostQuantumRequired),
        _ => {
            push_share(&mut reply, None);
            Ok((chosen, reply, None))
        }
    }
}

/// An ML-KEM-768 shared secret (zeroized on drop).
type KemSecret = Zeroizing<[u8; hybrid::SHARED_SECRET_LEN]>;

/// What the initiator keeps between its offer and the reply.
struct Offered {
    suites: Vec<Suite>,
    kem: Option<KemKeyPair>,
    post_quantum: PqPolicy,
}

impl Offered {
    fn new(policy: Policy, kem: Option<KemKeyPair>) -> Self {
        Self {
            suites: policy.suites.offer(),
            kem,
            post_quantum: policy.post_quantum,
        }
    }

    /// Checks the reply payload (`choice || share`): the suite and the ML-KEM secret.
    fn check_reply(&self, payload: &[u8]) -> Result<(Suite, Option<KemSecret>), HandshakeError> {
        let [code, share @ ..] = payload else {
            return Err(HandshakeError::Protocol("bad suite choice"));
        };
        let chosen = check_choice(*code, &self.suites)?;
        match (parse_share(share, CIPHERTEXT_LEN)?, &self.kem) {
            (Some(ct), Some(pair)) => Ok((chosen, Some(pair.decapsulate(ct)?))),
            (Some(_), None) => Err(HandshakeError::Protocol(
                "the peer answered a post-quantum share that was not offered",
            )),
            (None, _) if self.post_quantum == PqPolicy::Required => {
                Err(HandshakeError::PostQuantumRequired)
            }
            (None, _) => Ok((chosen, None)),
        }
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
    IkSent(snow::HandshakeState, [u8; TRANSFER_ID_LEN], Offered),
    PakeSent {
        pake: Pake,
        hello: Vec<u8>,
        rendezvous: [u8; 32],
        secret: Zeroizing<[u8; 32]>,
        policy: Policy,
    },
    XxSent1(snow::HandshakeState, Offered),
    Finished,
}

/// The sender's side.
pub struct Initiator {
    state: InitState,
}

impl Initiator {
    /// Starts a known-recipient handshake offering the automatic suite list and the
    /// post-quantum exchange; returns the first frame body to send.
    pub fn known_peer(
        local: &Identity,
        remote: &PublicKey,
        rendezvous: &[u8; 32],
        transfer_id: &[u8; TRANSFER_ID_LEN],
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        Self::known_peer_with(local, remote, rendezvous, transfer_id, Policy::default())
    }

    /// [`Initiator::known_peer`] under `policy` (a [`Policy`], or just a
    /// [`SuitePolicy`] with the default post-quantum policy).
    pub fn known_peer_with(
        local: &Identity,
        remote: &PublicKey,
        rendezvous: &[u8; 32],
        transfer_id: &[u8; TRANSFER_ID_LEN],
        policy: impl Into<Policy>,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let policy = policy.into();
        let (tail, kem) = initiator_offer(policy)?;
        let secret = local.secret_bytes();
        let mut hs = builder(IK_PATTERN)?
            .local_private_key(secret.as_slice())
            .remote_public_key(remote.as_bytes())
            .prologue(&prologue(
                AuthMethod::PinnedKey,
                rendezvous,
                None,
                policy.channel.as_ref(),
            ))
            .build_initiator()
            .map_err(noise)?;
        let mut payload = vec![VERSION];
        payload.extend_from_slice(transfer_id);
        payload.extend_from_slice(&tail);
        let msg = write_hs(&mut hs, &payload, KIND_HELLO)?;
        let mut frame = vec![KIND_HELLO, VERSION, AuthMethod::PinnedKey as u8];
        frame.extend_from_slice(&msg[1..]);
        Ok((
            Self {
                state: InitState::IkSent(hs, *transfer_id, Offered::new(policy, kem)),
            },
            frame,
        ))
    }

    /// Starts a code-phrase handshake offering the automatic suite list and the
    /// post-quantum exchange; returns the first frame body to send.
    pub fn code(local: &Identity, code: &Code, rendezvous: &[u8; 32]) -> (Self, Vec<u8>) {
        Self::code_with(local, code, rendezvous, Policy::default())
    }

    /// [`Initiator::code`] under `policy` (a [`Policy`], or just a [`SuitePolicy`]).
    pub fn code_with(
        local: &Identity,
        code: &Code,
        rendezvous: &[u8; 32],
        policy: impl Into<Policy>,
    ) -> (Self, Vec<u8>) {
        let (pake, msg) = Pake::start(code, *rendezvous);
        let mut frame = vec![KIND_HELLO, VERSION, AuthMethod::CodePhrase as u8];
        frame.extend_from_slice(&msg);
        let state = InitState::PakeSent {
            pake,
            hello: msg,
            rendezvous: *rendezvous,
            secret: local.secret_bytes(),
            policy: policy.into(),
        };
        (Self { state }, frame)
    }

    /// Takes the responder's next frame body.
    pub fn read(&mut self, body: &[u8]) -> Result<Step, HandshakeError> {
        match std::mem::replace(&mut self.state, InitState::Finished) {
            InitState::IkSent(mut hs, transfer_id, offered) => {
                let msg = expect(KIND_HANDSHAKE, body)?;
                let payload = read_hs(&mut hs, msg)?;
                let (chosen, ss) = offered.check_reply(&payload)?;
                let mut est = Established::new(hs, ss.as_deref(), chosen)?;
                est.transfer_id = Some(transfer_id);
                Ok(Step::Done(Box::new(est)))
            }
            InitState::PakeSent {
                pake,
                hello,
                rendezvous,
                secret,
                policy,
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
                        policy.channel.as_ref(),
                    ))
                    .build_initiator()
                    .map_err(noise)?;
                let (tail, kem) = initiator_offer(policy)?;
                let m1 = write_hs(&mut hs, &tail, KIND_HANDSHAKE)?;
                self.state = InitState::XxSent1(hs, Offered::new(policy, kem));
                Ok(Step::Send(m1))
            }
            InitState::XxSent1(mut hs, offered) => {
                let msg = expect(KIND_HANDSHAKE, body)?;
                let payload = read_hs(&mut hs, msg)?;
                let (chosen, ss) = offered.check_reply(&payload)?;
                let m3 = write_hs(&mut hs, &[], KIND_HANDSHAKE)?;
                Ok(Step::SendThenDone(
                    m3,
                    Box::new(Established::new(hs, ss.as_deref(), chosen)?),
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
    IkAwaitFirst(Box<Established>),
    XxAwait1(snow::HandshakeState),
    XxAwait3(snow::HandshakeState, Suite, Option<KemSecret>),
    Finished,
}

/// The receiver's side.
pub struct Responder {
    state: RespState,
    secret: Zeroizing<[u8; 32]>,
    rendezvous: [u8; 32],
    code: Option<Code>,
    transfer_id: Option<[u8; TRANSFER_ID_LEN]>,
    policy: Policy,
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
            policy: Policy::default(),
        }
    }

    /// Chooses the cipher suite under `suites` (default: [`SuitePolicy::Auto`]).
    pub fn with_suites(mut self, suites: SuitePolicy) -> Self {
        self.policy.suites = suites;
        self
    }

    /// Answers the post-quantum exchange under `post_quantum` (default:
    /// [`PqPolicy::Required`]).
    pub fn with_post_quantum(mut self, post_quantum: PqPolicy) -> Self {
        self.policy.post_quantum = post_quantum;
        self
    }

    /// Binds the handshake to the connection it runs on ([`Policy::channel`]; default:
    /// none).
    pub fn with_channel(mut self, channel: Option<[u8; 32]>) -> Self {
        self.policy.channel = channel;
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
            RespState::IkAwaitFirst(mut est) => {
                let first = est.open(body)?;
                est.first_message = Some(first);
                est.transfer_id = self.transfer_id;
                Ok(Step::Done(est))
            }
            RespState::XxAwait1(mut hs) => {
                // Message 1 is sealed under the PSK: if it does not open, the codes differ
                // (or it was altered), and nothing of ours has been sent yet but the PAKE.
                let tail = match read_hs(&mut hs, expect(KIND_HANDSHAKE, body)?) {
                    Ok(payload) => payload,
                    Err(HandshakeError::Authentication) => {
                        return Err(HandshakeError::CodeMismatch);
                    }
                    Err(e) => return Err(e),
                };
                let (chosen, reply, ss) = respond_to_offer(&tail, self.policy)?;
                let m2 = write_hs(&mut hs, &reply, KIND_HANDSHAKE)?;
                self.state = RespState::XxAwait3(hs, chosen, ss);
                Ok(Step::Send(m2))
            }
            RespState::XxAwait3(mut hs, chosen, ss) => {
                // The code was confirmed by message 1: a failure here is tampering.
                read_hs(&mut hs, expect(KIND_HANDSHAKE, body)?)?;
                Ok(Step::Done(Box::new(Established::new(
                    hs,
                    ss.as_deref(),
                    chosen,
                )?)))
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
                    .prologue(&prologue(
                        AuthMethod::PinnedKey,
                        &self.rendezvous,
                        None,
                        self.policy.channel.as_ref(),
                    ))
                    .build_responder()
                    .map_err(noise)?;
                let payload = read_hs(&mut hs, rest)?;
                let tail = match payload.as_slice() {
                    [v, rest @ ..] if *v == VERSION && rest.len() > TRANSFER_ID_LEN => {
                        let (id, tail) = rest.split_at(TRANSFER_ID_LEN);
                        let mut t = [0u8; TRANSFER_ID_LEN];
                        t.copy_from_slice(id);
                        self.transfer_id = Some(t);
                        tail
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
                // The key is checked first: an unknown sender learns nothing of our
                // suites, and gets no encapsulation.
                let (chosen, reply, ss) = respond_to_offer(tail, self.policy)?;
                let m2 = write_hs(&mut hs, &reply, KIND_HANDSHAKE)?;
                let est = Established::new(hs, ss.as_deref(), chosen)?;
                self.state = RespState::IkAwaitFirst(Box::new(est));
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
                        self.policy.channel.as_ref(),
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
