//! The NAT lab (`tests/common/natlab.rs`): two clinics behind NAT routers and a relay on an
//! "internet", in network namespaces with nftables. Root only: elsewhere each test prints
//! why it skips (and fails under CI). See docs/TESTING.md, "The NAT lab".

#[path = "../common/mod.rs"]
mod common;

mod lifecycle;
mod network;
mod relayed;
