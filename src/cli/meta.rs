//! `conduit completions SHELL` and `conduit man`: shell completions and the man pages,
//! generated from the same clap definitions as the parser.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};

use crate::cli::{Cli, Usage};

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

/// Options of `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write a page per command into DIR (created if missing): conduit.1,
    /// conduit-send.1, conduit-peers-add.1, ...; prints the files written.
    #[arg(long, value_name = "DIR", conflicts_with = "command")]
    dir: Option<PathBuf>,
    /// Print this subcommand's page instead of the top level's (`conduit man peers add`).
    #[arg(value_name = "COMMAND")]
    command: Vec<String>,
}

pub(crate) fn man(args: ManArgs) -> anyhow::Result<()> {
    let mut top = Cli::command().disable_help_subcommand(true);
    // Builds every subcommand too: names like `conduit-peers-add`, global flags in place.
    top.build();
    if let Some(dir) = &args.dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let mut out = std::io::stdout().lock();
        for page in write_pages(&top, dir)? {
            writeln!(out, "{}", page.display())?;
        }
        return Ok(());
    }
    let mut cmd = &top;
    for (i, word) in args.command.iter().enumerate() {
        cmd = cmd
            .get_subcommands()
            .find(|c| !c.is_hide_set() && c.get_name() == word)
            .ok_or_else(|| {
                let parent = std::iter::once("conduit")
                    .chain(args.command[..i].iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(" ");
                Usage(format!(
                    "`{parent}` has no subcommand {word:?} (see `{parent} --help`)"
                ))
            })?;
    }
    page(cmd).render(&mut std::io::stdout())?;
    Ok(())
}

/// The page of `cmd`, its footer naming conduit and its version (a subcommand has none
/// of its own).
fn page(cmd: &clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd.clone()).source(format!("conduit {}", env!("CARGO_PKG_VERSION")))
}

/// Writes the page of `cmd` and of each of its visible subcommands, depth first, into
/// `dir`; returns the files written, the top level's first.
fn write_pages(cmd: &clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let man = page(cmd);
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    std::fs::write(&path, page).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    let mut written = vec![path];
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        written.extend(write_pages(sub, dir)?);
    }
    Ok(written)
}
