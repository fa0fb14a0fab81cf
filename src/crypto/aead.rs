//! ChaCha20-Poly1305 (RFC 8439) behind one small interface.
//!
//! Two backends compute the same function with the same bytes on the wire:
//!
//! - `ring` (default): assembly-optimised, already in the dependency tree through
//!   quinn/rustls, and the fastest measured on the reference machine.
//! - RustCrypto `chacha20poly1305` (cargo feature `rustcrypto-aead`): pure Rust, zeroizes
//!   its key schedule on drop.
//!
//! Both pass the same RFC 8439 and Wycheproof vectors (`tests/crypto/aead_vectors.rs`).
//! `ring` keeps its own copy of the key inside its opaque key type and does not zeroize
//! it on drop; the project's own copies of key material are zeroized (see
//! [`crate::crypto::stream`]).

use thiserror::Error;

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

/// Name of the backend compiled in, as reported by `conduit bench cipher`.
pub const BACKEND: &str = backend::NAME;

/// A ChaCha20-Poly1305 key ready for sealing and opening in place.
pub struct AeadKey(backend::Key);

impl AeadKey {
    /// Builds a key from 32 bytes. The caller keeps (and zeroizes) its own copy.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self(backend::Key::new(key))
    }

    /// Encrypts `buf` in place and returns the tag.
    #[inline]
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        self.0.seal(nonce, aad, buf)
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
        self.0.open(nonce, aad, buf, tag)
    }
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey(..)")
    }
}

#[cfg(not(feature = "rustcrypto-aead"))]
mod backend {
    use super::{AuthError, KEY_LEN, NONCE_LEN, TAG_LEN};
    use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};

    pub(super) const NAME: &str = "ring";

    pub(super) struct Key(LessSafeKey);

    impl Key {
        pub(super) fn new(key: &[u8; KEY_LEN]) -> Self {
            // `UnboundKey::new` fails only on a wrong key length, which the type rules out.
            match UnboundKey::new(&CHACHA20_POLY1305, key) {
                Ok(k) => Self(LessSafeKey::new(k)),
                Err(_) => unreachable!("ChaCha20-Poly1305 key is 32 bytes"),
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
                // ring refuses only inputs over 2^38 bytes (RFC 8439's limit); chunk
                // sizes are bounded far below that by the allowed set.
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
            let nonce = Nonce::assume_unique_for_key(*nonce);
            self.0
                .open_in_place_separate_tag(nonce, Aad::from(aad), Tag::from(*tag), buf, 0..)
                .map(|_| ())
                .map_err(|_| AuthError)
        }
    }
}

#[cfg(feature = "rustcrypto-aead")]
mod backend {
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
