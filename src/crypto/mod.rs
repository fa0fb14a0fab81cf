//! Cryptographic core.
//!
//! - [`aead`]: ChaCha20-Poly1305 behind one small interface, with `ring` as the default
//!   backend and RustCrypto's `chacha20poly1305` behind the `rustcrypto-aead` feature.
//! - [`stream`]: the STREAM construction (per-file keys, chunk nonces, in-place seal and
//!   open as sans-IO state machines).
//! - [`pipeline`]: the same seal and open on N worker threads, in order, over a fixed pool
//!   of reused buffers handed out as `bytes::Bytes`.
//! - [`chunk_hash`]: the whole-file BLAKE3, computed per chunk on the workers.

pub mod aead;
pub mod chunk_hash;
mod cipher_pool;
pub mod handshake;
pub mod identity;
pub mod pake;
pub mod pipeline;
pub mod stream;
