//! Code phrases and the SPAKE2 exchange that turns one into a Noise PSK.
//!
//! A code reads `482913-crystal-harbor-orbit`: a nameplate number (which rendezvous to
//! use, public) and three words from the BIP-39 English list (2,048 words, MIT licence,
//! `src/crypto/wordlist.txt`), so the secret part carries 3 × 11 = 33 bits. An attacker
//! gets one online guess per run: SPAKE2 leaks nothing an offline search could use, and
//! a pairing burns the nameplate at the relay.
//!
//! Nameplates are drawn from 1..=[`MAX_NAMEPLATE`] (a million): wide enough that the
//! nameplates attackers can burn or hold within the relay's per-source limits are a small
//! fraction of the space (docs/SECURITY.md, "Relay: code rendezvous under attack").
//! Codes with shorter numbers (`7-crystal-harbor-orbit`) still parse.
//!
//! `psk = HKDF-SHA256(ikm = SPAKE2 key, salt = rendezvous id, info = "phi-conduit v1 noise-psk")`.

use hkdf::Hkdf;
use sha2::Sha256;
use spake2::{Ed25519Group, Identity as SpakeIdentity, Password, Spake2};
use thiserror::Error;
use zeroize::Zeroizing;

/// Words in a code after the nameplate.
pub const CODE_WORDS: usize = 3;
/// Bits of secret in a code.
pub const CODE_BITS: u32 = 33;
/// Largest nameplate number generated (they are drawn uniformly from 1..=this).
pub const MAX_NAMEPLATE: u32 = 999_999;
const PSK_INFO: &[u8] = b"phi-conduit v1 noise-psk";
const SPAKE_ID: &[u8] = b"phi-conduit v1 code";

static WORDS_TEXT: &str = include_str!("wordlist.txt");

/// Errors of codes and the PAKE.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PakeError {
    /// The code is not `NUMBER-word-word-word` with words from the list.
    #[error("malformed code (expected NUMBER-word-word-word, e.g. 7-crystal-harbor-orbit)")]
    MalformedCode,
    /// The peer's SPAKE2 message is invalid.
    #[error("invalid PAKE message from peer")]
    BadMessage,
    /// No randomness.
    #[error("no random numbers available")]
    Random,
}

fn words() -> impl Iterator<Item = &'static str> {
    WORDS_TEXT.lines().map(str::trim).filter(|w| !w.is_empty())
}

fn word_at(i: usize) -> Option<&'static str> {
    words().nth(i)
}

/// A code phrase: nameplate and secret words.
#[derive(Clone, PartialEq, Eq)]
pub struct Code {
    nameplate: u32,
    words: [&'static str; CODE_WORDS],
}

impl Code {
    /// A fresh random code.
    pub fn generate() -> Result<Self, PakeError> {
        let mut r = [0u8; 4 + 2 * CODE_WORDS];
        getrandom::getrandom(&mut r).map_err(|_| PakeError::Random)?;
        // The modulo bias of 2^32 mod 999,999 is below 2^-12 per value: irrelevant for a
        // public routing number.
        let nameplate = 1 + u32::from_le_bytes([r[0], r[1], r[2], r[3]]) % MAX_NAMEPLATE;
        let mut ws = [""; CODE_WORDS];
        for (i, w) in ws.iter_mut().enumerate() {
            let idx = usize::from(u16::from_le_bytes([r[4 + 2 * i], r[5 + 2 * i]])) % 2048;
            *w = word_at(idx).ok_or(PakeError::Random)?;
        }
        Ok(Self {
            nameplate,
            words: ws,
        })
    }

    /// Parses `NUMBER-word-word-word` (case-insensitive, surrounding space ignored).
    pub fn parse(text: &str) -> Result<Self, PakeError> {
        let lower = text.trim().to_ascii_lowercase();
        let mut parts = lower.split('-');
        let nameplate: u32 = parts
            .next()
            .filter(|n| !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .ok_or(PakeError::MalformedCode)?;
        let mut ws = [""; CODE_WORDS];
        for w in ws.iter_mut() {
            let part = parts.next().ok_or(PakeError::MalformedCode)?;
            *w = words()
                .find(|x| *x == part)
                .ok_or(PakeError::MalformedCode)?;
        }
        if parts.next().is_some() {
            return Err(PakeError::MalformedCode);
        }
        Ok(Self {
            nameplate,
            words: ws,
        })
    }

    /// The nameplate number (public: it picks the rendezvous).
    pub fn nameplate(&self) -> u32 {
        self.nameplate
    }

    fn secret(&self) -> Zeroizing<String> {
        Zeroizing::new(self.words.join("-"))
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.nameplate, self.words.join("-"))
    }
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Code({}-...)", self.nameplate)
    }
}

/// One side of the symmetric SPAKE2 exchange.
pub struct Pake {
    state: Spake2<Ed25519Group>,
    rendezvous: [u8; 32],
}

impl Pake {
    /// Starts the exchange for `code` at `rendezvous`; returns the message to send.
    pub fn start(code: &Code, rendezvous: [u8; 32]) -> (Self, Vec<u8>) {
        let mut id = SPAKE_ID.to_vec();
        id.extend_from_slice(&rendezvous);
        let (state, msg) = Spake2::<Ed25519Group>::start_symmetric(
            &Password::new(code.secret().as_bytes()),
            &SpakeIdentity::new(&id),
        );
        (Self { state, rendezvous }, msg)
    }

    /// Finishes with the peer's message and derives the Noise PSK.
    pub fn finish(self, peer_msg: &[u8]) -> Result<Zeroizing<[u8; 32]>, PakeError> {
        let key = Zeroizing::new(
            self.state
                .finish(peer_msg)
                .map_err(|_| PakeError::BadMessage)?,
        );
        let hk = Hkdf::<Sha256>::new(Some(&self.rendezvous), &key);
        let mut psk = Zeroizing::new([0u8; 32]);
        hk.expand(PSK_INFO, psk.as_mut_slice())
            .map_err(|_| PakeError::BadMessage)?;
        Ok(psk)
    }
}

impl std::fmt::Debug for Pake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pake(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_list_has_2048_distinct_words() {
        let mut w: Vec<_> = words().collect();
        assert_eq!(w.len(), 2048);
        w.sort_unstable();
        w.dedup();
        assert_eq!(w.len(), 2048);
    }

    #[test]
    fn nameplates_spread_over_the_wide_space() {
        let plates: std::collections::HashSet<u32> = (0..200)
            .map(|_| Code::generate().unwrap().nameplate())
            .collect();
        assert!(plates.iter().all(|n| (1..=MAX_NAMEPLATE).contains(n)));
        // 200 draws from a million: collisions are rare, and most need 6 digits.
        assert!(plates.len() >= 195, "{}", plates.len());
        assert!(plates.iter().filter(|n| **n > 99_999).count() >= 150);
        assert_eq!(
            Code::parse("999999-crystal-harbor-orbit")
                .unwrap()
                .nameplate(),
            999_999
        );
        assert_eq!(CODE_BITS, 33);
    }

    #[test]
    fn codes_round_trip_and_reject_garbage() {
        let c = Code::generate().unwrap();
        assert_eq!(Code::parse(&c.to_string()).unwrap(), c);
        assert_eq!(Code::parse(&c.to_string().to_uppercase()).unwrap(), c);
        for bad in [
            "",
            "7",
            "7-abandon-ability",
            "x-abandon-ability-able",
            "7-abandon-ability-notaword",
            "7-abandon-ability-able-about",
        ] {
            assert_eq!(Code::parse(bad), Err(PakeError::MalformedCode), "{bad}");
        }
    }

    #[test]
    fn same_code_same_psk_and_different_code_different_psk() {
        let rv = [3u8; 32];
        let a = Code::parse("7-crystal-harbor-orbit").unwrap();
        let b = Code::parse("7-crystal-harbor-orbit").unwrap();
        let wrong = Code::parse("7-crystal-harbor-oven").unwrap();
        let (pa, ma) = Pake::start(&a, rv);
        let (pb, mb) = Pake::start(&b, rv);
        assert_eq!(*pa.finish(&mb).unwrap(), *pb.finish(&ma).unwrap());
        let (pa, ma) = Pake::start(&a, rv);
        let (pw, mw) = Pake::start(&wrong, rv);
        assert_ne!(*pa.finish(&mw).unwrap(), *pw.finish(&ma).unwrap());
    }
}
