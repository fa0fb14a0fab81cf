//! Moving files: one [`Sender`] and one [`Receiver`] per side, each configured once
//! (identity, peers, policy, audit trail, event sink) and run over a QUIC connection
//! with a cancellation future.
//!
//! - [`sender`]: the sending side ([`Sender`], [`Recipient`]).
//! - [`receiver`]: the receiving side ([`Receiver`], [`ReceivePolicy`]) and the offer it
//!   hands its caller ([`IncomingOffer`]: accept into a destination, or refuse).
//! - [`manifest`]: the offer's checks as pure functions ([`Offer::validate`]).
//! - [`error`]: [`TransferError`], its [`ErrorKind`] and the connection close codes.
//! - [`events`]: what a transfer reports while it runs ([`Event`]) and at its end
//!   ([`Summary`]).
//! - [`source`]: the sender's files, collected from the command line's paths.
//! - [`protocol`]: the control messages of a transfer (offer, reply, receipt).
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
pub mod error;
pub mod events;
pub mod manifest;
pub mod paths;
pub mod protocol;
mod receive_files;
pub mod receiver;
pub mod reserve;
pub mod resume;
pub mod sender;
pub mod sentences;
pub mod source;
mod teardown;

pub use crate::audit::{AuthMethod, Side};
pub use error::{
    CLOSE_BUSY, CLOSE_CANCELLED, CLOSE_DONE, CLOSE_ERROR, CLOSE_TIMEOUT, ErrorKind, TransferError,
    Violation,
};
pub use events::{Event, Events, Summary};
pub use manifest::{Offer, OfferError, Policy, ValidOffer};
pub use receiver::{IncomingOffer, ReceivePolicy, Receiver};
pub use sender::{ItemSent, Recipient, Sender, rendezvous_for, rendezvous_for_code};
pub use teardown::{ABORT_DELIVERY_WAIT, SENDER_CLOSE_WAIT};
