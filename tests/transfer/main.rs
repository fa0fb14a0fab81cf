//! Transfers with the real `conduit` binary over loopback: direct, resumed, offers and
//! their refusal, the receiver's files on disk, and a source that changes mid-transfer.

#[path = "../common/mod.rs"]
mod common;

mod addresses;
mod code_wait;
#[cfg(feature = "fips")]
mod fips;
mod human_output;
mod offers;
mod post_quantum;
mod receiver_fs;
mod signals;
mod source_change;
mod suites;
mod transfer_direct;
mod transfer_resume;
