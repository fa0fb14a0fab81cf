//! FIPS mode's end-to-end session, sans IO: the end-to-end QUIC connection's own TLS 1.3
//! handshake, between the two endpoints' pinned P-256 identities, is the session
//! (docs/FIPS.md, "The FIPS session"; docs/PROTOCOL.md, "FIPS session"). No Noise, no
//! SPAKE2: after the TLS handshake, the sender checks the receiver's key against its pin,
//! then one hello each way over the control stream fixes the version, the transfer id
//! and the STREAM suite, all inside TLS.
//!
//! ```text
//! hello  (sender)   = 0x05 || version (1) || transfer id (16) || suite offer (1 + n)
//! answer (receiver) = 0x05 || version (1) || chosen suite (1)
//! ```
//!
//! Keys come from the TLS exporter (RFC 8446 section 7.5, run by the TLS stack on the
//! module's HKDF): the file salt under `EXPORTER-phi-conduit fips file salt`, the session
//! id (the audit's and the receipt's handshake hash) under `EXPORTER-phi-conduit fips
//! session`, both 32 bytes with an empty context.

use zeroize::Zeroizing;

use crate::crypto::handshake::{HandshakeError, TRANSFER_ID_LEN, VERSION};
use crate::crypto::suite::{self, Suite, SuitePolicy};

/// Kind byte of the FIPS hello and answer.
pub const KIND_FIPS_HELLO: u8 = 0x05;
/// Exporter label of the file salt.
pub const FILE_SALT_LABEL: &[u8] = b"EXPORTER-phi-conduit fips file salt";
/// Exporter label of the session id.
pub const SESSION_LABEL: &[u8] = b"EXPORTER-phi-conduit fips session";

/// What the session takes from the TLS exporter.
pub struct TlsKeys {
    /// Salt of every file key of the session.
    pub file_salt: Zeroizing<[u8; 32]>,
    /// Names the session (not secret): where Noise's handshake hash goes.
    pub session_id: [u8; 32],
}

impl TlsKeys {
    /// The keys of `conn`, whose TLS handshake has completed.
    pub fn of(conn: &quinn::Connection) -> Result<Self, HandshakeError> {
        let mut file_salt = Zeroizing::new([0u8; 32]);
        let mut session_id = [0u8; 32];
        conn.export_keying_material(file_salt.as_mut_slice(), FILE_SALT_LABEL, b"")
            .and_then(|()| conn.export_keying_material(&mut session_id, SESSION_LABEL, b""))
            .map_err(|_| HandshakeError::Protocol("the connection gave no TLS exporter"))?;
        Ok(Self {
            file_salt,
            session_id,
        })
    }
}

impl std::fmt::Debug for TlsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsKeys(..)")
    }
}

/// The sender's hello.
pub fn hello(transfer_id: &[u8; TRANSFER_ID_LEN], suites: SuitePolicy) -> Vec<u8> {
    let mut out = vec![KIND_FIPS_HELLO, VERSION];
    out.extend_from_slice(transfer_id);
    out.extend_from_slice(&suite::encode_offer(&suites.offer()));
    out
}

/// The receiver's reading of a hello: the transfer id and the suite it chooses under
/// `policy`, or why it aborts.
pub fn read_hello(
    body: &[u8],
    policy: SuitePolicy,
) -> Result<([u8; TRANSFER_ID_LEN], Suite), HandshakeError> {
    let rest = version_checked(body)?;
    if rest.len() < TRANSFER_ID_LEN {
        return Err(HandshakeError::Protocol("short FIPS hello"));
    }
    let (id, offer) = rest.split_at(TRANSFER_ID_LEN);
    let offer = suite::decode_offer(offer).ok_or(HandshakeError::Protocol("bad suite offer"))?;
    let chosen = suite::choose(&offer, policy).ok_or_else(|| HandshakeError::NoCommonSuite {
        offered: offer
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        accepted: policy,
    })?;
    let mut transfer_id = [0u8; TRANSFER_ID_LEN];
    transfer_id.copy_from_slice(id);
    Ok((transfer_id, chosen))
}

/// The receiver's answer naming `suite`.
pub fn answer(suite: Suite) -> Vec<u8> {
    vec![KIND_FIPS_HELLO, VERSION, suite.code()]
}

/// The sender's reading of the answer: the suite, which it must have offered.
pub fn read_answer(body: &[u8], offered: SuitePolicy) -> Result<Suite, HandshakeError> {
    match version_checked(body)? {
        [code] => Suite::from_code(*code)
            .filter(|s| offered.offer().contains(s))
            .ok_or(HandshakeError::Protocol(
                "the receiver chose a suite not offered",
            )),
        _ => Err(HandshakeError::Protocol("malformed FIPS answer")),
    }
}

/// The bytes after kind and version; an abort frame becomes the peer's abort.
fn version_checked(body: &[u8]) -> Result<&[u8], HandshakeError> {
    match body {
        [KIND_FIPS_HELLO, v, rest @ ..] if *v == VERSION => Ok(rest),
        [KIND_FIPS_HELLO, v, ..] => Err(HandshakeError::UnsupportedVersion(*v)),
        [3, reason, ..] => Err(HandshakeError::PeerAborted(
            crate::crypto::handshake::AbortReason::from_byte(*reason),
        )),
        _ => Err(HandshakeError::Protocol(
            "expected a FIPS hello (is the peer a FIPS build?)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_answer_round_trip_and_refuse_what_was_not_offered() {
        let only = SuitePolicy::Only(Suite::Aes256GcmRandomIv);
        let h = hello(&[7; 16], only);
        assert_eq!(h[..2], [KIND_FIPS_HELLO, VERSION]);
        let (id, suite) = read_hello(&h, SuitePolicy::Auto).unwrap();
        assert_eq!((id, suite), ([7; 16], Suite::Aes256GcmRandomIv));
        assert_eq!(read_answer(&answer(suite), only).unwrap(), suite);
        // A choice the sender did not offer, another version, a truncated hello, a
        // policy with nothing in common, a Noise hello.
        assert!(read_answer(&answer(Suite::ChaCha20Poly1305), only).is_err());
        let mut v = h.clone();
        v[1] = VERSION + 1;
        assert!(matches!(
            read_hello(&v, SuitePolicy::Auto),
            Err(HandshakeError::UnsupportedVersion(_))
        ));
        assert!(read_hello(&h[..10], SuitePolicy::Auto).is_err());
        assert!(matches!(
            read_hello(&h, SuitePolicy::Only(Suite::ChaCha20Poly1305)),
            Err(HandshakeError::NoCommonSuite { .. })
        ));
        assert!(read_hello(&[0x01, VERSION, 1], SuitePolicy::Auto).is_err());
        assert!(matches!(
            read_answer(&[3, 5], only),
            Err(HandshakeError::PeerAborted(_))
        ));
    }
}
