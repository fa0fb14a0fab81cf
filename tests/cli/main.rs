//! The command line with the real binary: the hand-written checks here, and the case files
//! under tests/cmd/ (usage, help and error output with exit codes) run by `cmd_cases`.

#[path = "../common/mod.rs"]
mod common;

mod cli_bench;
mod cli_code;
mod cli_config;
mod cli_demo;
mod cli_fips;
mod cli_first_run;
mod cli_identity;
mod cli_ops;
mod cmd_cases;
