//! The listener's proof of key possession (docs/PROTOCOL.md, "Listener proof"). Sans-IO.
//!
//! A listener on a known-key rendezvous id (`rendezvous_for(key)`, not single-use) must
//! show the relay that it holds that key's private half, or anyone who knows a
//! receiver's public key could wait in its place. After the Hello the relay sends a
//! challenge, the listener answers:
//!
//! ```text
//! challenge = 0x43 | relay ephemeral X25519 public key [32] | nonce [32]
//! proof     = listener static public key [32] | mac [32]
//! dh        = X25519(listener static, relay ephemeral)
//! mac       = BLAKE3-keyed(key = BLAKE3-derive_key(CONTEXT, dh),
//!                          nonce | rendezvous id | relay ephemeral | listener static
//!                          | SHA-256 of the relay's certificate)
//! ```
//!
//! The relay accepts when `rendezvous_for(listener static) == rendezvous id` and the MAC
//! matches (both compared in constant time). What it learns is the listener's public
//! key, which it could already confirm against the rendezvous id; the MAC is keyed by a
//! value the relay computes itself (its own ephemeral), so it reveals nothing about the
//! private key and cannot be replayed: the nonce and the ephemeral are fresh per
//! connection, and the relay's certificate in the transcript stops one relay from
//! passing a proof made for it on to another.

use subtle::ConstantTimeEq;
use thiserror::Error;
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::crypto::identity::Identity;

/// First byte of the challenge.
pub const CHALLENGE: u8 = 0x43;
/// Length of the challenge on the wire.
pub const CHALLENGE_LEN: usize = 1 + 32 + 32;
/// Length of the proof on the wire.
pub const PROOF_LEN: usize = 32 + 32;
/// The BLAKE3 key-derivation context of the MAC key.
const CONTEXT: &str = "phi-conduit v2 relay listener proof";

/// Why a proof was not made or not accepted.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ProofError {
    /// No randomness for the challenge.
    #[error("no random numbers available")]
    Random,
    /// The challenge is malformed or its key is a low-order point.
    #[error("malformed listener challenge")]
    BadChallenge,
    /// The key does not belong to the rendezvous id, or the MAC is wrong.
    #[error("the listener did not prove it holds the key of its rendezvous id")]
    Refused,
}

/// The rendezvous id of a receiver's public key (as
/// [`crate::transfer::rendezvous_for`] computes it).
pub fn key_rendezvous(public: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("phi-conduit v1 rendezvous", public)
}

fn mac(
    dh: &[u8; 32],
    nonce: &[u8; 32],
    rendezvous: &[u8; 32],
    relay_ephemeral: &[u8; 32],
    listener: &[u8; 32],
    relay_cert: &[u8; 32],
) -> [u8; 32] {
    let key = Zeroizing::new(blake3::derive_key(CONTEXT, dh));
    let mut h = blake3::Hasher::new_keyed(&key);
    for part in [nonce, rendezvous, relay_ephemeral, listener, relay_cert] {
        h.update(part);
    }
    h.finalize().into()
}

/// X25519, refusing a non-contributory result (a low-order peer point).
fn dh(secret: &StaticSecret, public: [u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&DalekPublic::from(public));
    shared
        .was_contributory()
        .then(|| Zeroizing::new(*shared.as_bytes()))
}

/// The relay's side: one challenge for one connection.
pub struct Challenge {
    secret: StaticSecret,
    public: [u8; 32],
    nonce: [u8; 32],
    rendezvous: [u8; 32],
    relay_cert: [u8; 32],
}

impl std::fmt::Debug for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenge(..)")
    }
}

impl Challenge {
    /// A fresh challenge for a listener on `rendezvous`, at the relay whose certificate
    /// has the SHA-256 `relay_cert`.
    pub fn new(rendezvous: [u8; 32], relay_cert: [u8; 32]) -> Result<Self, ProofError> {
        let mut seed = Zeroizing::new([0u8; 64]);
        getrandom::getrandom(seed.as_mut_slice()).map_err(|_| ProofError::Random)?;
        let mut scalar = Zeroizing::new([0u8; 32]);
        scalar.copy_from_slice(&seed[..32]);
        let secret = StaticSecret::from(*scalar);
        let mut nonce = [0u8; 32];
        nonce.copy_from_slice(&seed[32..]);
        Ok(Challenge {
            public: DalekPublic::from(&secret).to_bytes(),
            secret,
            nonce,
            rendezvous,
            relay_cert,
        })
    }

    /// The challenge as sent.
    pub fn encode(&self) -> [u8; CHALLENGE_LEN] {
        let mut out = [0u8; CHALLENGE_LEN];
        out[0] = CHALLENGE;
        out[1..33].copy_from_slice(&self.public);
        out[33..].copy_from_slice(&self.nonce);
        out
    }

    /// Checks the listener's answer; on success, the listener's public key.
    pub fn verify(&self, proof: &[u8; PROOF_LEN]) -> Result<[u8; 32], ProofError> {
        let mut listener = [0u8; 32];
        listener.copy_from_slice(&proof[..32]);
        let owns_id = key_rendezvous(&listener).ct_eq(&self.rendezvous);
        let shared = dh(&self.secret, listener).ok_or(ProofError::Refused)?;
        let expected = mac(
            &shared,
            &self.nonce,
            &self.rendezvous,
            &self.public,
            &listener,
            &self.relay_cert,
        );
        let mac_ok = expected.ct_eq(&proof[32..]);
        if bool::from(owns_id & mac_ok) {
            Ok(listener)
        } else {
            Err(ProofError::Refused)
        }
    }
}

/// The listener's side: the proof that `identity` holds the key of `rendezvous`, for the
/// relay whose certificate has the SHA-256 `relay_cert`.
pub fn answer(
    identity: &Identity,
    rendezvous: &[u8; 32],
    relay_cert: &[u8; 32],
    challenge: &[u8; CHALLENGE_LEN],
) -> Result<[u8; PROOF_LEN], ProofError> {
    if challenge[0] != CHALLENGE {
        return Err(ProofError::BadChallenge);
    }
    let mut relay_ephemeral = [0u8; 32];
    relay_ephemeral.copy_from_slice(&challenge[1..33]);
    let mut nonce = [0u8; 32];
    nonce.copy_from_slice(&challenge[33..]);
    let secret = StaticSecret::from(*identity.secret_bytes());
    let shared = dh(&secret, relay_ephemeral).ok_or(ProofError::BadChallenge)?;
    let listener = *identity.public().as_bytes();
    let tag = mac(
        &shared,
        &nonce,
        rendezvous,
        &relay_ephemeral,
        &listener,
        relay_cert,
    );
    let mut out = [0u8; PROOF_LEN];
    out[..32].copy_from_slice(&listener);
    out[32..].copy_from_slice(&tag);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: [u8; 32] = [9; 32];

    #[test]
    fn the_key_holder_proves_and_the_relay_learns_its_public_key() {
        let id = Identity::generate().unwrap();
        let rv = key_rendezvous(id.public().as_bytes());
        assert_eq!(rv, crate::transfer::rendezvous_for(&id.public()));
        let c = Challenge::new(rv, CERT).unwrap();
        let proof = answer(&id, &rv, &CERT, &c.encode()).unwrap();
        assert_eq!(c.verify(&proof), Ok(*id.public().as_bytes()));
    }

    #[test]
    fn someone_who_knows_only_the_public_key_cannot_prove() {
        let victim = Identity::generate().unwrap();
        let attacker = Identity::generate().unwrap();
        let rv = key_rendezvous(victim.public().as_bytes());
        let c = Challenge::new(rv, CERT).unwrap();
        // Their own key: not the rendezvous id's key.
        let own = answer(&attacker, &rv, &CERT, &c.encode()).unwrap();
        assert_eq!(c.verify(&own), Err(ProofError::Refused));
        // The victim's public key with a MAC under their own secret.
        let mut forged = own;
        forged[..32].copy_from_slice(victim.public().as_bytes());
        assert_eq!(c.verify(&forged), Err(ProofError::Refused));
        // Every single bit of a good proof matters.
        let good = answer(&victim, &rv, &CERT, &c.encode()).unwrap();
        for bit in 0..PROOF_LEN * 8 {
            let mut p = good;
            p[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(c.verify(&p), Err(ProofError::Refused), "bit {bit}");
        }
    }

    #[test]
    fn a_proof_is_bound_to_its_challenge_and_its_relay() {
        let id = Identity::generate().unwrap();
        let rv = key_rendezvous(id.public().as_bytes());
        let first = Challenge::new(rv, CERT).unwrap();
        let proof = answer(&id, &rv, &CERT, &first.encode()).unwrap();
        let second = Challenge::new(rv, CERT).unwrap();
        assert_eq!(second.verify(&proof), Err(ProofError::Refused));
        // Made for another relay's certificate.
        let other = answer(&id, &rv, &[8; 32], &first.encode()).unwrap();
        assert_eq!(first.verify(&other), Err(ProofError::Refused));
    }

    #[test]
    fn low_order_points_and_bad_challenges_are_refused() {
        let id = Identity::generate().unwrap();
        let rv = key_rendezvous(id.public().as_bytes());
        let c = Challenge::new(rv, CERT).unwrap();
        let mut zero = c.encode();
        zero[1..33].fill(0);
        assert_eq!(
            answer(&id, &rv, &CERT, &zero),
            Err(ProofError::BadChallenge)
        );
        let mut tag = c.encode();
        tag[0] = 0;
        assert_eq!(answer(&id, &rv, &CERT, &tag), Err(ProofError::BadChallenge));
        // A zero listener key whose rendezvous id was precomputed.
        let c0 = Challenge::new(key_rendezvous(&[0; 32]), CERT).unwrap();
        assert_eq!(c0.verify(&[0; PROOF_LEN]), Err(ProofError::Refused));
    }
}
