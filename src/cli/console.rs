//! `conduit console url`: a one-time login link to the agent's web console
//! (docs/CONSOLE.md).

use clap::Subcommand;

use crate::cli::Usage;
use crate::config::Config;
use crate::home::Home;

/// `conduit console`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum ConsoleCommand {
    /// Print a login link with a fresh one-time token (valid 5 minutes, one use) for the
    /// console of `[console] listen`; open it in a browser on this machine.
    Url,
}

pub(crate) fn run(home: &Home, cmd: ConsoleCommand) -> anyhow::Result<()> {
    match cmd {
        ConsoleCommand::Url => url(home),
    }
}

fn url(home: &Home) -> anyhow::Result<()> {
    let config = Config::load(home).map_err(|e| Usage(e.to_string()))?;
    let listen = crate::console::check(&config.file.console)
        .map_err(|e| Usage(format!("{}: [console] {e}", config.path.display())))?
        .ok_or_else(|| {
            Usage(format!(
                "{}: no [console] listen: the console is off (docs/CONSOLE.md)",
                config.path.display()
            ))
        })?;
    let token = crate::console::login::issue_token(home.path())?;
    println!("{}", crate::console::login_url(listen, &token));
    Ok(())
}
