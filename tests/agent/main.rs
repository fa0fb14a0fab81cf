//! The transfer agent with real processes: agents over a local relay or direct over
//! loopback, real folders, real queue databases (docs/AGENT.md).

#[path = "../common/mod.rs"]
mod common;

mod agent_cli;
#[cfg(feature = "fips")]
mod agent_fips;
mod agent_flow;
mod console;
