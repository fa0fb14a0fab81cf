//! Moving files: the per-file data path over QUIC streams.
//!
//! - [`data`]: one file's STREAM chunks on a QUIC unidirectional stream, sealed, hashed
//!   and opened on the cipher workers.

pub mod data;
