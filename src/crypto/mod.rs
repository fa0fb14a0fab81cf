//! Cryptographic core.
//!
//! - [`aead`]: ChaCha20-Poly1305 behind one small interface, with `ring` as the default
//!   backend and RustCrypto's `chacha20poly1305` behind the `rustcrypto-aead` feature.
//! - [`stream`]: the STREAM construction (per-file keys, chunk nonces, in-place seal and
//!   open, the parallel pipeline).

pub mod aead;
pub mod pipeline;
pub mod stream;
