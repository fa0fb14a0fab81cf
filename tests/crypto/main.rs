//! Cryptography and wire formats against published and independent vectors: the STREAM
//! layer (KATs, negative cases), the AEAD backends (RFC 8439, Wycheproof), the Noise
//! handshake and its session key schedule, the data path, and mutation of every
//! decoder. `.ci/run` also runs `aead_vectors::` and `stream_kat::` with the
//! `rustcrypto-aead` and `ring-aead` backends.

mod aead_vectors;
mod data_path;
mod decoder_mutation;
#[cfg(feature = "fips")]
mod fips_indicator;
mod handshake;
mod noise_vectors;
mod session_kdf;
mod stream_kat;
mod stream_negative;
