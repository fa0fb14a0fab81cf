//! `conduit config show`: the effective configuration and where each value came from.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::config::FileConfig;
use crate::home::Home;

/// The config subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (environment, conduit.toml, defaults) with the
    /// source of each value; flags given to a command override these.
    Show(ShowArgs),
}

/// Options of `config show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(home: &Home, cmd: ConfigCommand) -> anyhow::Result<()> {
    let ConfigCommand::Show(args) = cmd;
    let config = crate::cli::resolve(home, &FileConfig::default())?;
    let settings = config.settings();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            json!({
                "file": config.file.display().to_string(),
                "file_present": config.file_present,
                "settings": settings,
            })
        )?;
        return Ok(());
    }
    let state = if config.file_present {
        ""
    } else {
        " (not present)"
    };
    writeln!(out, "# {}{state}", config.file.display())?;
    for s in &settings {
        let value = match &s.value {
            Some(v) => format!("{v:?}"),
            None => "(unset)".into(),
        };
        let source = match (s.source, s.env) {
            (crate::config::Source::Env, Some(var)) => format!("env {var}"),
            (crate::config::Source::File, _) => "conduit.toml".into(),
            (crate::config::Source::Flag, _) => "flag".into(),
            _ => "default".into(),
        };
        writeln!(out, "{:<42} = {value:<24} # {source}", s.key)?;
    }
    Ok(())
}
