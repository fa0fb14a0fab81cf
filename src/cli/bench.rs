//! `conduit bench ...` handlers.

use clap::Subcommand;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {}

pub(crate) fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {}
}
