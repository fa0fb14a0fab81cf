//! The audit log (append, verify, rotation, failure) and where PHI may and may not appear
//! in the outputs.

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod group_commit;
mod phi_outputs;
