//! Moving files.
//!
//! - [`source`]: the sender's files, collected from the command line's paths.
//! - [`protocol`]: the control messages of a transfer (offer, reply, receipt).
//! - [`run`]: one transfer over a QUIC connection, the sender's and the receiver's side.
//! - [`data`]: one file's STREAM chunks on a QUIC unidirectional stream, sealed, hashed
//!   and opened on the cipher workers.
//! - [`paths`]: validation of the relative paths a peer sends (untrusted until parsed).
//! - [`dirs`]: the receiver's directories of an offer: empty ones recreated, those a
//!   failed offer created removed.
//! - [`dest`]: the receiver's writes, all relative to directory descriptors with no link
//!   followed: short random `.part` names, private modes, no-replace finalize, accept-time
//!   checks, free space, removal of old partial files.
//! - [`reserve`]: reserving a received file's space ahead of its writes.
//! - [`resume`]: continuing interrupted transfers: the receiver's sidecar, the prefix
//!   hash, checkpoints.

pub mod data;
pub mod dest;
pub mod dirs;
pub mod paths;
pub mod protocol;
pub mod reserve;
pub mod resume;
pub mod run;
pub mod source;
