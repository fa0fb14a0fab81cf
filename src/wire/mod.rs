//! Wire codecs, sans-IO, with every length checked before allocation.
//!
//! - [`frame`]: the length-prefixed frames of the control stream and of the relay Hello,
//!   read through one decoder ([`frame::FrameDecoder`]) with a per-format limit;
//! - [`stream_header`]: the fixed 16-byte header of a file stream;
//! - [`wrap`]: the header of a wrapped packet through the relay's datagram switch;
//! - [`probe`]: path probes between the endpoints and their candidate lists.
//!
//! The other formats a peer or a file controls have their codecs next to their types:
//! the relay Hello ([`crate::relay::hello`]) and the listener proof
//! ([`crate::relay::proof`]), the handshake messages ([`crate::crypto::handshake`]), the
//! session messages of a transfer (postcard, [`crate::transfer::protocol`], decoded by
//! [`crate::crypto::handshake::Established::open_message`]), resume sidecars
//! ([`crate::transfer::resume::Sidecar::parse`]) and audit records
//! ([`crate::audit::record::parse`]). docs/ARCHITECTURE.md lists them with their limits
//! and fuzz targets.

pub mod frame;
pub mod probe;
pub mod stream_header;
pub mod wrap;
