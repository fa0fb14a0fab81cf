//! Cryptographic core.
//!
//! - [`aead`]: ChaCha20-Poly1305 and AES-256-GCM behind one small interface.
//! - [`handshake`]: the end-to-end handshake (Noise IK or SPAKE2 + XXpsk0), sans-IO.
//! - [`hybrid`]: its post-quantum part (ML-KEM-768) and the session key schedule.
//! - [`suite`]: the STREAM cipher suites, their negotiation and per-key usage limits.
//! - [`stream`]: the STREAM construction (per-file keys, chunk nonces, in-place seal and
//!   open as sans-IO state machines).
//! - [`pipeline`]: the same seal and open on N worker threads, in order, over a fixed pool
//!   of reused buffers handed out as `bytes::Bytes`.
//! - [`chunk_hash`]: the whole-file BLAKE3, computed per chunk on the workers.
//! - [`file_hash`]: the whole-file hash of a session (BLAKE3, or SHA-256 in FIPS mode).
//! - [`fips`]: FIPS mode (cargo feature `fips`): the module's status and start-up checks.
//! - [`fips_identity`]: FIPS mode's P-256 identity, its certificate and its pin.
//! - [`fips_session`]: FIPS mode's session over the connection's TLS 1.3, sans IO.

pub mod aead;
pub mod chunk_hash;
mod cipher_pool;
pub mod file_hash;
pub mod fips;
pub mod fips_identity;
pub mod fips_session;
pub mod handshake;
pub mod hybrid;
pub mod identity;
pub mod pake;
pub mod pipeline;
pub mod stream;
pub mod suite;
