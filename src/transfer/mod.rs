//! Moving files: the per-file data path over QUIC streams.
//!
//! - [`data`]: one file's STREAM chunks on a QUIC unidirectional stream, sealed, hashed
//!   and opened on the cipher workers.
//! - [`paths`]: validation of the relative paths a peer sends (untrusted until parsed).

pub mod data;
pub mod dest;
pub mod paths;
pub mod protocol;
pub mod run;
pub mod source;
