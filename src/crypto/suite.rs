//! STREAM cipher suites: which AEAD seals the file chunks, how the two sides agree on
//! it, and how much one key may seal.
//!
//! Three suites share the STREAM construction of [`crate::crypto::stream`] (per-file
//! keys, every chunk bound to its position and to being last or not); the AEAD, and for
//! one of them where the position goes, differ:
//!
//! - [`Suite::Aes256Gcm`]: AES-256-GCM (NIST SP 800-38D), the default when both sides
//!   have hardware AES (x86: AES-NI and PCLMULQDQ; aarch64: the AES and PMULL
//!   instructions), where it is several times faster per core.
//! - [`Suite::ChaCha20Poly1305`]: ChaCha20-Poly1305 (RFC 8439), the default otherwise.
//! - [`Suite::Aes256GcmRandomIv`]: AES-256-GCM with a 96-bit IV the cryptographic module
//!   generates for every chunk (SP 800-38D section 8.2.2), sent after the tag; the
//!   position and the last flag go in the associated data instead of the nonce. A
//!   caller-chosen nonce is not an approved AES-GCM encryption service under FIPS 140-3
//!   (its implementation guidance on GCM IVs); a module-generated IV is. The only suite of
//!   a FIPS build ([`crate::crypto::fips`]); a default build offers it only when asked.
//!
//! Negotiation (normative text in `docs/PROTOCOL.md`, "Cipher suites"): the initiator
//! lists the suites it accepts, most preferred first, in the payload of its first Noise
//! message; the responder picks one with [`choose`] and names it in the payload of its
//! reply. Both payloads are hashed into the Noise transcript, so a path that rewrites the
//! list or the choice makes the handshake fail with an authentication error, and the
//! handshake hash (the salt of every file key) commits to both.
//!
//! ```
//! use phi_conduit::crypto::suite::{Suite, SuitePolicy, choose};
//!
//! // A sender that insists on ChaCha20-Poly1305 meets an automatic receiver.
//! let offer = SuitePolicy::Only(Suite::ChaCha20Poly1305).offer();
//! assert_eq!(choose(&offer, SuitePolicy::Auto), Some(Suite::ChaCha20Poly1305));
//! // Forced to different suites, the two sides have nothing in common.
//! let offer = SuitePolicy::Only(Suite::Aes256Gcm).offer();
//! assert_eq!(choose(&offer, SuitePolicy::Only(Suite::ChaCha20Poly1305)), None);
//! ```

use serde::{Deserialize, Serialize};

/// A STREAM cipher suite. The discriminant is the suite's code on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Suite {
    /// ChaCha20-Poly1305 (RFC 8439).
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305 = 1,
    /// AES-256-GCM with 96-bit nonces (NIST SP 800-38D).
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm = 2,
    /// AES-256-GCM with a module-generated random 96-bit IV per chunk, sent with it.
    #[serde(rename = "aes-256-gcm-random-iv")]
    Aes256GcmRandomIv = 3,
}

/// Every suite this build implements, in code order.
pub const ALL: [Suite; 3] = [
    Suite::ChaCha20Poly1305,
    Suite::Aes256Gcm,
    Suite::Aes256GcmRandomIv,
];

/// Most suites a peer may list (longer lists are a protocol error).
pub const MAX_OFFERED: usize = 8;

impl Suite {
    /// The suite's code on the wire.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The suite with wire code `code`, if this build implements it.
    pub fn from_code(code: u8) -> Option<Self> {
        ALL.into_iter().find(|s| s.code() == code)
    }

    /// The name used in the configuration, on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ChaCha20Poly1305 => "chacha20-poly1305",
            Self::Aes256Gcm => "aes-256-gcm",
            Self::Aes256GcmRandomIv => "aes-256-gcm-random-iv",
        }
    }

    /// Bytes a sealed chunk adds to its plaintext: the 16-byte tag, and for
    /// [`Suite::Aes256GcmRandomIv`] the 12-byte IV after it.
    pub const fn chunk_overhead(self) -> usize {
        match self {
            Self::ChaCha20Poly1305 | Self::Aes256Gcm => crate::crypto::aead::TAG_LEN,
            Self::Aes256GcmRandomIv => {
                crate::crypto::aead::TAG_LEN + crate::crypto::aead::NONCE_LEN
            }
        }
    }

    /// True when FIPS mode allows this suite: only AES-256-GCM with module-generated
    /// IVs ([`crate::crypto::fips`]).
    pub const fn approved_in_fips_mode(self) -> bool {
        matches!(self, Self::Aes256GcmRandomIv)
    }

    /// The per-key usage limits of this suite (see [`UsageLimits`]).
    pub const fn limits(self) -> UsageLimits {
        match self {
            // draft-irtf-cfrg-aead-limits, AES-GCM: the confidentiality advantage is at
            // most (s + q + 1)^2 / 2^129 for s plaintext blocks in q messages. 2^39 bytes
            // is 2^35 blocks; with q <= 2^25 chunks (the 16 KiB minimum chunk size) the
            // bound is below 2^-58. The integrity limit does not bind: a receiver drops
            // the key at its first failed chunk (one forgery attempt per key).
            Self::Aes256Gcm => UsageLimits {
                max_bytes: 1 << 39,
                max_chunks: 1 << 32,
            },
            // The same confidentiality bound, and SP 800-38D section 8.3: with random
            // 96-bit IVs a key may be used for at most 2^32 encryptions (IV collision
            // probability below 2^-32). One file key seals one file's chunks.
            Self::Aes256GcmRandomIv => UsageLimits {
                max_bytes: 1 << 39,
                max_chunks: 1 << 32,
            },
            // ChaCha20-Poly1305 has no practical confidentiality limit per key; the
            // chunk counter (position, never wrapping) is the only bound. Integrity as
            // above: one forgery attempt per key.
            Self::ChaCha20Poly1305 => UsageLimits {
                max_bytes: u64::MAX,
                max_chunks: u64::MAX,
            },
        }
    }

    /// True when this machine runs the suite in hardware-accelerated form, so that the
    /// automatic policy prefers it.
    pub fn is_fast_here(self) -> bool {
        match self {
            Self::ChaCha20Poly1305 => true,
            Self::Aes256Gcm | Self::Aes256GcmRandomIv => hardware_aes(),
        }
    }
}

impl std::fmt::Display for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Suite {
    type Err = UnknownSuite;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL.into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| UnknownSuite(s.to_string()))
    }
}

/// A suite name that is not one of [`ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown cipher suite {0:?} (expected auto, aes-256-gcm, chacha20-poly1305 or \
     aes-256-gcm-random-iv)"
)]
pub struct UnknownSuite(pub String);

/// How much one key may seal before the STREAM layer refuses to go on.
///
/// The STREAM layer checks every chunk against these before it seals or opens it: a
/// chunk at position `i` of a file with chunk size `c` is refused unless `i <
/// max_chunks` and `(i + 1) * c <= max_bytes`, so no key ever seals more than
/// `max_bytes` bytes in more than `max_chunks` chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageLimits {
    /// Most plaintext bytes sealed under one key.
    pub max_bytes: u64,
    /// Most chunks sealed under one key.
    pub max_chunks: u64,
}

impl UsageLimits {
    /// The number of chunk positions of size `chunk_size` that stay within both limits.
    pub fn chunk_positions(&self, chunk_size: u64) -> u64 {
        let by_bytes = self.max_bytes / chunk_size.max(1);
        by_bytes.min(self.max_chunks)
    }
}

/// Which suites a side accepts: `[transfer] suite` and `--suite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SuitePolicy {
    /// AES-256-GCM when both sides have hardware AES, ChaCha20-Poly1305 otherwise; in
    /// a FIPS build, only AES-256-GCM with module-generated IVs.
    #[default]
    Auto,
    /// Only this suite; a peer that cannot use it is refused.
    Only(Suite),
}

impl SuitePolicy {
    /// The list a side offers, most preferred first.
    pub fn offer(self) -> Vec<Suite> {
        match self {
            Self::Only(s) => vec![s],
            Self::Auto if crate::crypto::fips::ENABLED => vec![Suite::Aes256GcmRandomIv],
            Self::Auto if Suite::Aes256Gcm.is_fast_here() => {
                vec![Suite::Aes256Gcm, Suite::ChaCha20Poly1305]
            }
            Self::Auto => vec![Suite::ChaCha20Poly1305, Suite::Aes256Gcm],
        }
    }

    /// The suite a transfer on this machine uses when the peer's policy is the same as
    /// this one (what `bench` measures by default).
    pub fn local_choice(self) -> Suite {
        match self {
            Self::Only(s) => s,
            Self::Auto if crate::crypto::fips::ENABLED => Suite::Aes256GcmRandomIv,
            Self::Auto if Suite::Aes256Gcm.is_fast_here() => Suite::Aes256Gcm,
            Self::Auto => Suite::ChaCha20Poly1305,
        }
    }
}

impl std::fmt::Display for SuitePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Only(s) => f.write_str(s.name()),
        }
    }
}

impl std::str::FromStr for SuitePolicy {
    type Err = UnknownSuite;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            Ok(Self::Auto)
        } else {
            s.parse().map(Self::Only)
        }
    }
}

impl Serialize for SuitePolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SuitePolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The responder's choice from the initiator's `offer` under its own `policy`, or `None`
/// when they have no suite in common.
///
/// - Policy `Only(s)`: `s` if the initiator offers it.
/// - Policy `Auto`: AES-256-GCM when the initiator prefers it (lists it first, which an
///   automatic initiator does only with hardware AES) and this machine has hardware AES;
///   otherwise ChaCha20-Poly1305 if offered; otherwise the initiator's first suite. In a
///   FIPS build, `Auto` takes only [`Suite::Aes256GcmRandomIv`].
pub fn choose(offer: &[Suite], policy: SuitePolicy) -> Option<Suite> {
    match policy {
        SuitePolicy::Only(s) => offer.contains(&s).then_some(s),
        SuitePolicy::Auto if crate::crypto::fips::ENABLED => offer
            .contains(&Suite::Aes256GcmRandomIv)
            .then_some(Suite::Aes256GcmRandomIv),
        SuitePolicy::Auto => {
            let first = *offer.first()?;
            if first == Suite::Aes256Gcm && Suite::Aes256Gcm.is_fast_here() {
                Some(Suite::Aes256Gcm)
            } else if offer.contains(&Suite::ChaCha20Poly1305) {
                Some(Suite::ChaCha20Poly1305)
            } else {
                Some(first)
            }
        }
    }
}

/// Encodes an offer: a count byte, then one code byte per suite.
pub fn encode_offer(offer: &[Suite]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + offer.len());
    out.push(offer.len() as u8);
    out.extend(offer.iter().map(|s| s.code()));
    out
}

/// Decodes an offer; unknown codes are skipped (a newer peer may list more), an empty,
/// over-long or truncated list is an error (`None`).
pub fn decode_offer(bytes: &[u8]) -> Option<Vec<Suite>> {
    let (&n, rest) = bytes.split_first()?;
    let n = usize::from(n);
    if n == 0 || n > MAX_OFFERED || rest.len() != n {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for s in rest.iter().filter_map(|&c| Suite::from_code(c)) {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Some(out)
}

/// True when this CPU has the instructions AES-256-GCM needs to run fast and in
/// constant time: AES-NI and PCLMULQDQ on x86, AES and PMULL on aarch64.
pub fn hardware_aes() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for s in ALL {
            assert_eq!(s.name().parse::<Suite>(), Ok(s));
            assert_eq!(Suite::from_code(s.code()), Some(s));
        }
        assert_eq!("auto".parse::<SuitePolicy>(), Ok(SuitePolicy::Auto));
        assert!("aes-128-gcm".parse::<SuitePolicy>().is_err());
        assert_eq!(Suite::from_code(0), None);
    }

    #[test]
    fn choice_rules() {
        use Suite::*;
        if crate::crypto::fips::ENABLED {
            // FIPS mode's automatic choice is its own (the test below).
            assert_eq!(
                choose(&[ChaCha20Poly1305, Aes256Gcm], SuitePolicy::Only(Aes256Gcm)),
                Some(Aes256Gcm)
            );
            return;
        }
        assert_eq!(
            choose(&[ChaCha20Poly1305], SuitePolicy::Auto),
            Some(ChaCha20Poly1305)
        );
        assert_eq!(
            choose(&[Aes256Gcm], SuitePolicy::Only(ChaCha20Poly1305)),
            None
        );
        assert_eq!(
            choose(&[ChaCha20Poly1305, Aes256Gcm], SuitePolicy::Only(Aes256Gcm)),
            Some(Aes256Gcm)
        );
        // An initiator without hardware AES lists ChaCha first: the choice is ChaCha.
        assert_eq!(
            choose(&[ChaCha20Poly1305, Aes256Gcm], SuitePolicy::Auto),
            Some(ChaCha20Poly1305)
        );
        let both = choose(&[Aes256Gcm, ChaCha20Poly1305], SuitePolicy::Auto);
        let expect = if hardware_aes() {
            Aes256Gcm
        } else {
            ChaCha20Poly1305
        };
        assert_eq!(both, Some(expect));
        assert_eq!(choose(&[], SuitePolicy::Auto), None);
    }

    #[test]
    fn offer_codec() {
        let o = vec![Suite::Aes256Gcm, Suite::ChaCha20Poly1305];
        assert_eq!(decode_offer(&encode_offer(&o)), Some(o));
        assert_eq!(decode_offer(&[]), None);
        assert_eq!(decode_offer(&[0]), None);
        assert_eq!(decode_offer(&[2, 1]), None);
        assert_eq!(decode_offer(&[1, 1, 2]), None);
        assert_eq!(
            decode_offer(&[2, 9, 1]),
            Some(vec![Suite::ChaCha20Poly1305])
        );
        assert_eq!(decode_offer(&[9; 10]), None);
    }

    #[test]
    fn the_random_iv_suite_carries_its_iv_and_is_the_only_one_fips_mode_allows() {
        assert_eq!(Suite::ChaCha20Poly1305.chunk_overhead(), 16);
        assert_eq!(Suite::Aes256Gcm.chunk_overhead(), 16);
        assert_eq!(Suite::Aes256GcmRandomIv.chunk_overhead(), 28);
        let approved: Vec<_> = ALL
            .into_iter()
            .filter(|s| s.approved_in_fips_mode())
            .collect();
        assert_eq!(approved, [Suite::Aes256GcmRandomIv]);
        // A default build never offers it unasked, and takes it when it is all a peer offers.
        if !crate::crypto::fips::ENABLED {
            assert!(
                !SuitePolicy::Auto
                    .offer()
                    .contains(&Suite::Aes256GcmRandomIv)
            );
        }
        assert_eq!(
            choose(&[Suite::Aes256GcmRandomIv], SuitePolicy::Auto),
            Some(Suite::Aes256GcmRandomIv)
        );
        if crate::crypto::fips::ENABLED {
            assert_eq!(SuitePolicy::Auto.offer(), [Suite::Aes256GcmRandomIv]);
            assert_eq!(choose(&[Suite::Aes256Gcm], SuitePolicy::Auto), None);
        }
    }

    #[test]
    fn limit_positions() {
        let l = Suite::Aes256Gcm.limits();
        assert_eq!(l.chunk_positions(16 << 10), 1 << 25);
        assert_eq!(l.chunk_positions(4 << 20), 1 << 17);
        assert_eq!(
            Suite::ChaCha20Poly1305.limits().chunk_positions(16 << 10),
            u64::MAX / (16 << 10)
        );
    }
}
