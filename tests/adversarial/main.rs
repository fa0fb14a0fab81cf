//! Peers and networks that misbehave: hostile and malicious peers, a tampering relay,
//! and faults (lossy paths, full or read-only disks, floods).

#[path = "../common/mod.rs"]
mod common;

mod faults;
mod hostile_peer;
mod malicious_peer;
mod quic_kx;
mod tamper;
