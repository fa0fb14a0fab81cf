//! The AEADs of the STREAM suites behind one small interface: ChaCha20-Poly1305
//! (RFC 8439) and AES-256-GCM (NIST SP 800-38D), both with 32-byte keys, 12-byte nonces
//! and 16-byte tags ([`AeadKey`]); and AES-256-GCM whose IV the module generates for each
//! seal ([`RandomIvKey`], the suite [`Suite::Aes256GcmRandomIv`], always on aws-lc-rs:
//! in a FIPS build, the module's approved AES-GCM encryption service).
//!
//! Backends (each computes the same function, the same bytes on the wire):
//!
//! - aws-lc-rs (default, both suites): AWS-LC's assembly, the fastest measured here
//!   (AES-256-GCM with VAES/VPCLMULQDQ about 4x ring's, ChaCha20-Poly1305 level with it;
//!   docs/BENCHMARKS.md, "AEAD backends"), and the crypto provider of the QUIC hop too,
//!   so the build carries one crypto library.
//! - ring (cargo feature `ring-aead`, both suites).
//! - RustCrypto `chacha20poly1305` (cargo feature `rustcrypto-aead`, ChaCha20-Poly1305
//!   only): pure Rust, zeroizes its key schedule on drop.
//!
//! All pass the same RFC 8439, NIST CAVP and Wycheproof vectors
//! (`tests/crypto/aead_vectors.rs`). aws-lc-rs and ring keep their own copy of the key
//! inside their opaque key types (aws-lc-rs frees it with AWS-LC, which cleanses key
//! schedules; ring does not zeroize on drop); the project's own copies of key material
//! are zeroized (see [`crate::crypto::stream`]).

use thiserror::Error;

use crate::crypto::suite::Suite;

/// Key length in bytes.
pub const KEY_LEN: usize = 32;
/// Nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// Authentication tag length in bytes.
pub const TAG_LEN: usize = 16;

/// The ciphertext or its tag did not authenticate.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("authentication failed")]
pub struct AuthError;

/// Name of the ChaCha20-Poly1305 backend compiled in, as reported by `conduit bench cipher`.
pub const BACKEND: &str = chacha::NAME;
/// Name of the AES-256-GCM backend compiled in.
pub const AES_BACKEND: &str = aes::NAME;

/// The backend that runs `suite` in this build.
pub fn backend_name(suite: Suite) -> &'static str {
    match suite {
        Suite::ChaCha20Poly1305 => chacha::NAME,
        Suite::Aes256Gcm => aes::NAME,
        Suite::Aes256GcmRandomIv => RANDOM_IV_BACKEND,
    }
}

/// Name of the backend of [`RandomIvKey`] (always aws-lc-rs).
pub const RANDOM_IV_BACKEND: &str = "aws-lc-rs";

/// The module could not generate an IV (its random generator failed): nothing was sealed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("the cryptographic module could not generate an IV")]
pub struct IvError;

/// AES-256-GCM whose 96-bit IV the module generates at random for every seal (NIST SP
/// 800-38D section 8.2.2; aws-lc-rs's `RandomizedNonceKey`), returned with the tag for
/// the caller to send. Opening takes the IV that came with the ciphertext.
pub struct RandomIvKey(aws_lc_rs::aead::RandomizedNonceKey);

impl RandomIvKey {
    /// A key from 32 bytes. The caller keeps (and zeroizes) its own copy.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        match aws_lc_rs::aead::RandomizedNonceKey::new(&aws_lc_rs::aead::AES_256_GCM, key) {
            Ok(k) => Self(k),
            Err(_) => unreachable!("the key is 32 bytes"),
        }
    }

    /// Encrypts `buf` in place under a fresh IV; returns the IV and the tag.
    #[inline]
    pub fn seal_in_place(
        &self,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<([u8; NONCE_LEN], [u8; TAG_LEN]), IvError> {
        let (nonce, tag) = self
            .0
            .seal_in_place_separate_tag(aws_lc_rs::aead::Aad::from(aad), buf)
            .map_err(|_| IvError)?;
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_ref());
        Ok((*nonce.as_ref(), t))
    }

    /// Checks the tag at the end of `ct_and_tag` and decrypts the rest in place under
    /// `iv`. On failure the buffer holds unspecified bytes that must not be used.
    #[inline]
    pub fn open_in_place(
        &self,
        iv: &[u8; NONCE_LEN],
        aad: &[u8],
        ct_and_tag: &mut [u8],
    ) -> Result<(), AuthError> {
        let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(*iv);
        self.0
            .open_in_place(nonce, aws_lc_rs::aead::Aad::from(aad), ct_and_tag)
            .map(|_| ())
            .map_err(|_| AuthError)
    }
}

impl std::fmt::Debug for RandomIvKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RandomIvKey(..)")
    }
}

/// An AEAD key of one [`Suite`], ready for sealing and opening in place.
pub struct AeadKey(Inner);

// One key per file: the size of the largest backend's key (ring's ChaCha20-Poly1305
// schedule) does not matter, and a box would add an indirection per chunk.
#[allow(clippy::large_enum_variant)]
enum Inner {
    ChaCha(chacha::Key),
    Aes(aes::Key),
}

impl AeadKey {
    /// A ChaCha20-Poly1305 key from 32 bytes. The caller keeps (and zeroizes) its own copy.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self::with_suite(Suite::ChaCha20Poly1305, key)
    }

    /// A key of `suite` from 32 bytes, for caller-chosen nonces. The caller keeps (and
    /// zeroizes) its own copy. [`Suite::Aes256GcmRandomIv`] gives plain AES-256-GCM
    /// (the same function with the IV chosen by the caller: known-answer tests and
    /// opening); its chunks are sealed through [`RandomIvKey`].
    pub fn with_suite(suite: Suite, key: &[u8; KEY_LEN]) -> Self {
        Self(match suite {
            Suite::ChaCha20Poly1305 => Inner::ChaCha(chacha::Key::new(key)),
            Suite::Aes256Gcm | Suite::Aes256GcmRandomIv => Inner::Aes(aes::Key::new(key)),
        })
    }

    /// The key's AEAD as a suite with caller-chosen nonces.
    pub fn suite(&self) -> Suite {
        match self.0 {
            Inner::ChaCha(_) => Suite::ChaCha20Poly1305,
            Inner::Aes(_) => Suite::Aes256Gcm,
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    #[inline]
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        match &self.0 {
            Inner::ChaCha(k) => k.seal(nonce, aad, buf),
            Inner::Aes(k) => k.seal(nonce, aad, buf),
        }
    }

    /// Checks `tag` and decrypts `buf` in place. On failure `buf` holds unspecified
    /// bytes that must not be used.
    #[inline]
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        match &self.0 {
            Inner::ChaCha(k) => k.open(nonce, aad, buf, tag),
            Inner::Aes(k) => k.open(nonce, aad, buf, tag),
        }
    }
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey(..)")
    }
}

/// A key over a ring-style `LessSafeKey` API (aws-lc-rs or ring), in place, detached tag.
macro_rules! less_safe_key_backend {
    ($lib:ident, $alg:ident, $name:expr, $open:expr) => {
        use super::{AuthError, KEY_LEN, NONCE_LEN, TAG_LEN};
        use $lib::aead::{Aad, LessSafeKey, Nonce, UnboundKey, $alg};

        pub(super) const NAME: &str = $name;

        pub(super) struct Key(LessSafeKey);

        impl Key {
            pub(super) fn new(key: &[u8; KEY_LEN]) -> Self {
                // Fails only on a wrong key length, which the type rules out.
                match UnboundKey::new(&$alg, key) {
                    Ok(k) => Self(LessSafeKey::new(k)),
                    Err(_) => unreachable!("the key is 32 bytes"),
                }
            }

            #[inline]
            pub(super) fn seal(
                &self,
                nonce: &[u8; NONCE_LEN],
                aad: &[u8],
                buf: &mut [u8],
            ) -> [u8; TAG_LEN] {
                let nonce = Nonce::assume_unique_for_key(*nonce);
                match self
                    .0
                    .seal_in_place_separate_tag(nonce, Aad::from(aad), buf)
                {
                    Ok(tag) => {
                        let mut out = [0u8; TAG_LEN];
                        out.copy_from_slice(tag.as_ref());
                        out
                    }
                    // Refused only above the AEAD's per-message limit (2^38 bytes for
                    // ChaCha20-Poly1305, 2^36 - 32 for AES-GCM); chunks are at most 4 MiB.
                    Err(_) => unreachable!("chunk larger than the AEAD's message limit"),
                }
            }

            #[inline]
            pub(super) fn open(
                &self,
                nonce: &[u8; NONCE_LEN],
                aad: &[u8],
                buf: &mut [u8],
                tag: &[u8; TAG_LEN],
            ) -> Result<(), AuthError> {
                let nonce = Nonce::assume_unique_for_key(*nonce);
                let open: fn(&LessSafeKey, Nonce, Aad<&[u8]>, &[u8; TAG_LEN], &mut [u8]) -> bool =
                    $open;
                if open(&self.0, nonce, Aad::from(aad), tag, buf) {
                    Ok(())
                } else {
                    Err(AuthError)
                }
            }
        }
    };
}

/// ChaCha20-Poly1305 through aws-lc-rs (the default).
#[cfg(not(any(feature = "rustcrypto-aead", feature = "ring-aead")))]
mod chacha {
    less_safe_key_backend!(
        aws_lc_rs,
        CHACHA20_POLY1305,
        "aws-lc-rs",
        |k, n, aad, tag, buf| k.open_in_place_separate_tag(n, aad, tag, buf).is_ok()
    );
}

/// ChaCha20-Poly1305 through ring (cargo feature `ring-aead`).
#[cfg(all(feature = "ring-aead", not(feature = "rustcrypto-aead")))]
mod chacha {
    less_safe_key_backend!(ring, CHACHA20_POLY1305, "ring", |k, n, aad, tag, buf| {
        k.open_in_place_separate_tag(n, aad, ring::aead::Tag::from(*tag), buf, 0..)
            .is_ok()
    });
}

/// ChaCha20-Poly1305 through RustCrypto (cargo feature `rustcrypto-aead`).
#[cfg(feature = "rustcrypto-aead")]
mod chacha {
    use super::{AuthError, KEY_LEN, NONCE_LEN, TAG_LEN};
    use chacha20poly1305::aead::AeadInPlace;
    use chacha20poly1305::{ChaCha20Poly1305, KeyInit};

    pub(super) const NAME: &str = "rustcrypto";

    pub(super) struct Key(ChaCha20Poly1305);

    impl Key {
        pub(super) fn new(key: &[u8; KEY_LEN]) -> Self {
            Self(ChaCha20Poly1305::new(key.into()))
        }

        #[inline]
        pub(super) fn seal(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            buf: &mut [u8],
        ) -> [u8; TAG_LEN] {
            match self.0.encrypt_in_place_detached(nonce.into(), aad, buf) {
                Ok(tag) => tag.into(),
                Err(_) => unreachable!("chunk larger than the ChaCha20-Poly1305 limit"),
            }
        }

        #[inline]
        pub(super) fn open(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            buf: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), AuthError> {
            self.0
                .decrypt_in_place_detached(nonce.into(), aad, buf, tag.into())
                .map_err(|_| AuthError)
        }
    }
}

/// AES-256-GCM through aws-lc-rs (the default; its assembly uses AES-NI/VAES and
/// CLMUL/VPCLMULQDQ on x86, the ARMv8 crypto extensions on aarch64).
#[cfg(not(feature = "ring-aead"))]
mod aes {
    less_safe_key_backend!(
        aws_lc_rs,
        AES_256_GCM,
        "aws-lc-rs",
        |k, n, aad, tag, buf| k.open_in_place_separate_tag(n, aad, tag, buf).is_ok()
    );
}

/// AES-256-GCM through ring (cargo feature `ring-aead`).
#[cfg(feature = "ring-aead")]
mod aes {
    less_safe_key_backend!(ring, AES_256_GCM, "ring", |k, n, aad, tag, buf| {
        k.open_in_place_separate_tag(n, aad, ring::aead::Tag::from(*tag), buf, 0..)
            .is_ok()
    });
}
