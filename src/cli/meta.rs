//! `conduit completions SHELL` and `conduit man`: shell completions and the man page,
//! generated from the same clap definitions as the parser.

use clap::{Args, CommandFactory};

use crate::cli::Cli;

/// Options of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

pub(crate) fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "conduit", &mut std::io::stdout());
    Ok(())
}

pub(crate) fn man() -> anyhow::Result<()> {
    let cmd = Cli::command();
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
    Ok(())
}
