//! The `conduit` binary: parse the command line, run the command, map errors to exit codes.
//!
//! The command line ([`cli`]), the benchmark driver ([`bench`]) and the demo ([`demo`])
//! are modules of this binary, not of the library: `phi_conduit` has no clap types and
//! reads no environment variables; the binary reads them and passes the values in.

#![deny(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::process::ExitCode;

// The library's modules, at this crate's root, so the binary's modules reach them as
// `crate::audit`, `crate::transfer`, ... as they did when they were part of the library.
use phi_conduit::{
    agent, audit, config, console, crypto, fsutil, home, peers, relay, session, transfer, transport,
};

mod bench;
mod cli;
mod demo;

fn main() -> ExitCode {
    // A FIPS build runs nothing unless its module is in FIPS mode and passes its
    // self-tests (docs/FIPS.md); a default build has nothing to check.
    if let Err(e) = crypto::fips::check() {
        eprintln!("conduit: {e}");
        return ExitCode::from(cli::code::FIPS);
    }
    from_environment();
    cli::main()
}

/// The process-wide settings the library takes from its caller, read from the
/// environment here (the library reads none).
fn from_environment() {
    transport::use_quinn_defaults(std::env::var_os(transport::QUINN_DEFAULTS_ENV).is_some());
    if let Some((after, dir)) = std::env::var(transfer::data::test_hook::ENV)
        .ok()
        .and_then(|v| transfer::data::test_hook::parse(&v))
    {
        transfer::data::test_hook::pause_sender(after, dir);
    }
}
