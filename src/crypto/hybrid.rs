//! The hybrid post-quantum part of the end-to-end session: an ephemeral ML-KEM-768
//! (FIPS 203) exchange carried in the Noise handshake payloads, and the key schedule that
//! mixes its shared secret with the Noise result.
//!
//! The initiator generates a fresh ML-KEM-768 key pair for every handshake and sends the
//! encapsulation key in the payload of its first Noise message; the responder
//! encapsulates to it (fresh randomness every time) and sends the ciphertext in the
//! payload of its reply. Noise encrypts both payloads and hashes them into the
//! transcript, so a path that removes or rewrites either share makes the handshake fail
//! authentication on both sides. After the handshake, [`derive_session_keys`] turns the
//! Noise handshake hash, Noise's two split keys and the ML-KEM shared secret into the
//! session keys and the salt of the file keys (normative text: `docs/PROTOCOL.md`,
//! "Session key schedule"):
//!
//! ```text
//! prk       = HKDF-Extract-SHA256(salt = h, ikm = k1 || k2 || ss)
//! key i->r  = HKDF-Expand-SHA256(prk, "phi-conduit v4 session i2r", 32)
//! key r->i  = HKDF-Expand-SHA256(prk, "phi-conduit v4 session r2i", 32)
//! file salt = HKDF-Expand-SHA256(prk, "phi-conduit v4 file salt", 32)
//! ```
//!
//! So the session keys and every file key stay secret unless both X25519 (the Noise
//! result) and ML-KEM-768 (`ss`) are broken. A replayed message 1 teaches nothing: the
//! responder encapsulates to the replayed key with fresh randomness, and only the holder
//! of that run's decapsulation key (dropped by the initiator after its run) can open it.
//!
//! ```
//! use phi_conduit::crypto::hybrid::{KemKeyPair, encapsulate};
//!
//! let pair = KemKeyPair::generate()?;
//! let (ciphertext, theirs) = encapsulate(pair.encapsulation_key())?;
//! let ours = pair.decapsulate(&ciphertext)?;
//! assert_eq!(*ours, *theirs);
//! // A share of the wrong length is refused before it reaches the KEM.
//! assert!(encapsulate(&[0u8; 100]).is_err());
//! assert!(pair.decapsulate(&ciphertext[1..]).is_err());
//! # Ok::<(), phi_conduit::crypto::hybrid::KemError>(())
//! ```

use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768};
use hkdf::Hkdf;
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

/// Length of an ML-KEM-768 encapsulation key.
pub const ENCAPSULATION_KEY_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext.
pub const CIPHERTEXT_LEN: usize = 1088;
/// Length of an ML-KEM-768 shared secret.
pub const SHARED_SECRET_LEN: usize = 32;
/// Length of each derived key.
pub const KEY_LEN: usize = 32;

/// Key-exchange code in a payload: no post-quantum share.
pub const KEM_NONE: u8 = 0;
/// Key-exchange code in a payload: an ML-KEM-768 share follows.
pub const KEM_ML_KEM_768: u8 = 1;

/// HKDF info of the initiator-to-responder session key.
pub const LABEL_I2R: &[u8] = b"phi-conduit v4 session i2r";
/// HKDF info of the responder-to-initiator session key.
pub const LABEL_R2I: &[u8] = b"phi-conduit v4 session r2i";
/// HKDF info of the file-key salt.
pub const LABEL_FILE_SALT: &[u8] = b"phi-conduit v4 file salt";

/// An ML-KEM-768 operation failed: a share of the wrong length or one the KEM refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KemError {
    /// An encapsulation key of the wrong length.
    #[error("ML-KEM-768 encapsulation key of {0} bytes (expected {ENCAPSULATION_KEY_LEN})")]
    EncapsulationKeyLength(usize),
    /// A ciphertext of the wrong length.
    #[error("ML-KEM-768 ciphertext of {0} bytes (expected {CIPHERTEXT_LEN})")]
    CiphertextLength(usize),
    /// The encapsulation key was refused by the KEM (not a valid FIPS 203 key).
    #[error("invalid ML-KEM-768 encapsulation key")]
    InvalidKey,
    /// The KEM failed (key generation, encapsulation or decapsulation).
    #[error("ML-KEM-768 operation failed")]
    Failed,
}

/// Whether a side insists on the post-quantum exchange: `[transfer] post_quantum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PqPolicy {
    /// Offer ML-KEM-768 and refuse a peer that does not take part (the default).
    #[default]
    Required,
    /// Offer ML-KEM-768, and accept a peer that does not take part (classical X25519
    /// only). A path cannot strip the share: that still fails authentication.
    Preferred,
    /// Never offer nor answer it (X25519 only). For tests against a peer without it; a
    /// peer on `required`, the default, refuses this side.
    Off,
}

impl PqPolicy {
    /// The name used in the configuration and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Preferred => "preferred",
            Self::Off => "off",
        }
    }

    /// True when this side sends (initiator) or answers (responder) a share.
    pub const fn takes_part(self) -> bool {
        !matches!(self, Self::Off)
    }
}

impl std::fmt::Display for PqPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A `post_quantum` value that is not one of `required`, `preferred`, `off`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown post_quantum setting {0:?} (expected required, preferred or off)")]
pub struct UnknownPqPolicy(pub String);

impl std::str::FromStr for PqPolicy {
    type Err = UnknownPqPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Required, Self::Preferred, Self::Off]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPqPolicy(s.to_string()))
    }
}

impl serde::Serialize for PqPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for PqPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An ephemeral ML-KEM-768 key pair, one per handshake. The decapsulation key lives in
/// AWS-LC (freed and cleansed with the pair).
pub struct KemKeyPair {
    dk: DecapsulationKey,
    ek: Vec<u8>,
}

impl KemKeyPair {
    /// A fresh key pair.
    pub fn generate() -> Result<Self, KemError> {
        let dk = DecapsulationKey::generate(&ML_KEM_768).map_err(|_| KemError::Failed)?;
        let ek = dk
            .encapsulation_key()
            .and_then(|ek| ek.key_bytes())
            .map_err(|_| KemError::Failed)?
            .as_ref()
            .to_vec();
        if ek.len() != ENCAPSULATION_KEY_LEN {
            return Err(KemError::Failed);
        }
        Ok(Self { dk, ek })
    }

    /// The encapsulation key ([`ENCAPSULATION_KEY_LEN`] bytes) to send.
    pub fn encapsulation_key(&self) -> &[u8] {
        &self.ek
    }

    /// The shared secret of `ciphertext`; its length is checked first. (ML-KEM rejects
    /// implicitly: a ciphertext altered on the way yields an unrelated secret, so the
    /// session keys differ and the first session message fails to open.)
    pub fn decapsulate(
        &self,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<[u8; SHARED_SECRET_LEN]>, KemError> {
        if ciphertext.len() != CIPHERTEXT_LEN {
            return Err(KemError::CiphertextLength(ciphertext.len()));
        }
        let ss = self
            .dk
            .decapsulate(Ciphertext::from(ciphertext))
            .map_err(|_| KemError::Failed)?;
        secret_array(ss.as_ref())
    }
}

impl std::fmt::Debug for KemKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KemKeyPair(ML-KEM-768, ..)")
    }
}

/// Encapsulates to the peer's `encapsulation_key` (length checked first): the
/// ciphertext to send back ([`CIPHERTEXT_LEN`] bytes) and the shared secret.
#[allow(clippy::type_complexity)]
pub fn encapsulate(
    encapsulation_key: &[u8],
) -> Result<(Vec<u8>, Zeroizing<[u8; SHARED_SECRET_LEN]>), KemError> {
    if encapsulation_key.len() != ENCAPSULATION_KEY_LEN {
        return Err(KemError::EncapsulationKeyLength(encapsulation_key.len()));
    }
    let ek =
        EncapsulationKey::new(&ML_KEM_768, encapsulation_key).map_err(|_| KemError::InvalidKey)?;
    let (ct, ss) = ek.encapsulate().map_err(|_| KemError::InvalidKey)?;
    if ct.as_ref().len() != CIPHERTEXT_LEN {
        return Err(KemError::Failed);
    }
    Ok((ct.as_ref().to_vec(), secret_array(ss.as_ref())?))
}

fn secret_array(ss: &[u8]) -> Result<Zeroizing<[u8; SHARED_SECRET_LEN]>, KemError> {
    let mut out = Zeroizing::new([0u8; SHARED_SECRET_LEN]);
    if ss.len() != SHARED_SECRET_LEN {
        return Err(KemError::Failed);
    }
    out.copy_from_slice(ss);
    Ok(out)
}

/// The keys of an established session (all zeroized on drop).
pub struct SessionKeys {
    /// Seals the initiator's session messages.
    pub initiator_to_responder: Zeroizing<[u8; KEY_LEN]>,
    /// Seals the responder's session messages.
    pub responder_to_initiator: Zeroizing<[u8; KEY_LEN]>,
    /// The salt of the STREAM file keys ([`crate::crypto::stream::TransferKey::derive`]).
    pub file_salt: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

/// The session key schedule (see the module documentation): `handshake_hash` is Noise's
/// `h` after the last handshake message, `split` Noise's `Split()` output (the two
/// 32-byte cipher keys, initiator-to-responder first), `kem_secret` the ML-KEM-768
/// shared secret, absent when the two sides did not run the exchange (then the input
/// key material is `k1 || k2` alone).
pub fn derive_session_keys(
    handshake_hash: &[u8; 32],
    split: (&[u8; 32], &[u8; 32]),
    kem_secret: Option<&[u8; SHARED_SECRET_LEN]>,
) -> SessionKeys {
    let mut ikm = Zeroizing::new(Vec::with_capacity(96));
    ikm.extend_from_slice(split.0);
    ikm.extend_from_slice(split.1);
    if let Some(ss) = kem_secret {
        ikm.extend_from_slice(ss);
    }
    let hk = Hkdf::<Sha256>::new(Some(handshake_hash), &ikm);
    let expand = |label: &[u8]| {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        // 32 bytes is far below HKDF-SHA256's 255 * 32 limit: expand cannot fail.
        if hk.expand(label, out.as_mut_slice()).is_err() {
            unreachable!("HKDF-Expand of 32 bytes");
        }
        out
    };
    SessionKeys {
        initiator_to_responder: expand(LABEL_I2R),
        responder_to_initiator: expand(LABEL_R2I),
        file_salt: expand(LABEL_FILE_SALT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_those_of_fips_203() {
        let pair = KemKeyPair::generate().unwrap();
        assert_eq!(pair.encapsulation_key().len(), ENCAPSULATION_KEY_LEN);
        let (ct, ss) = encapsulate(pair.encapsulation_key()).unwrap();
        assert_eq!(ct.len(), CIPHERTEXT_LEN);
        assert_eq!(*pair.decapsulate(&ct).unwrap(), *ss);
    }

    #[test]
    fn wrong_lengths_are_refused_before_the_kem() {
        let pair = KemKeyPair::generate().unwrap();
        let ek = pair.encapsulation_key();
        for n in [0, 1, ENCAPSULATION_KEY_LEN - 1, ENCAPSULATION_KEY_LEN + 1] {
            let mut v = ek.to_vec();
            v.resize(n, 0);
            assert_eq!(
                encapsulate(&v).unwrap_err(),
                KemError::EncapsulationKeyLength(n)
            );
        }
        let (ct, _) = encapsulate(ek).unwrap();
        for n in [0, 1, CIPHERTEXT_LEN - 1, CIPHERTEXT_LEN + 1] {
            let mut v = ct.clone();
            v.resize(n, 0);
            assert_eq!(
                pair.decapsulate(&v).unwrap_err(),
                KemError::CiphertextLength(n)
            );
        }
    }

    #[test]
    fn every_run_is_fresh() {
        let (a, b) = (
            KemKeyPair::generate().unwrap(),
            KemKeyPair::generate().unwrap(),
        );
        assert_ne!(a.encapsulation_key(), b.encapsulation_key());
        // The same (replayed) key encapsulated twice: two ciphertexts, two secrets.
        let (c1, s1) = encapsulate(a.encapsulation_key()).unwrap();
        let (c2, s2) = encapsulate(a.encapsulation_key()).unwrap();
        assert!(c1 != c2 && *s1 != *s2);
    }

    #[test]
    fn an_altered_ciphertext_gives_another_secret() {
        let pair = KemKeyPair::generate().unwrap();
        let (mut ct, ss) = encapsulate(pair.encapsulation_key()).unwrap();
        ct[17] ^= 1;
        assert_ne!(*pair.decapsulate(&ct).unwrap(), *ss);
    }

    #[test]
    fn every_input_changes_every_key() {
        let (h, k1, k2, ss) = ([1u8; 32], [2u8; 32], [3u8; 32], [4u8; 32]);
        let base = derive_session_keys(&h, (&k1, &k2), Some(&ss));
        let outs = |k: &SessionKeys| {
            [
                *k.initiator_to_responder,
                *k.responder_to_initiator,
                *k.file_salt,
            ]
        };
        let b = outs(&base);
        assert!(b[0] != b[1] && b[1] != b[2] && b[0] != b[2]);
        let mut flipped = [0u8; 32];
        flipped[0] = 1;
        for other in [
            derive_session_keys(&flipped, (&k1, &k2), Some(&ss)),
            derive_session_keys(&h, (&flipped, &k2), Some(&ss)),
            derive_session_keys(&h, (&k1, &flipped), Some(&ss)),
            derive_session_keys(&h, (&k1, &k2), Some(&flipped)),
            derive_session_keys(&h, (&k1, &k2), None),
        ] {
            let o = outs(&other);
            for i in 0..3 {
                assert_ne!(o[i], b[i], "output {i} did not change");
            }
        }
    }

    #[test]
    fn policy_names_round_trip() {
        for p in [PqPolicy::Required, PqPolicy::Preferred, PqPolicy::Off] {
            assert_eq!(p.name().parse::<PqPolicy>(), Ok(p));
        }
        assert_eq!(PqPolicy::default(), PqPolicy::Required);
        assert!("on".parse::<PqPolicy>().is_err());
    }
}
