//! `conduit config init | get | set | show`: the endpoint's `conduit.toml`, and the
//! effective configuration with where each value came from.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::Usage;
use crate::config::edit::{self, EditError};
use crate::config::{Config, FileConfig};
use crate::home::Home;

/// The config subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (environment, conduit.toml, defaults) with the
    /// source of each value, as TOML that can be pasted into conduit.toml; flags given
    /// to a command override these.
    Show(ShowArgs),
    /// Write a commented conduit.toml with every key at its default (refuses to replace
    /// an existing one).
    Init,
    /// Print one key's effective value (exit code 1 when it is not set).
    Get {
        /// The key, as `config show` prints it (e.g. transfer.relay).
        key: String,
    },
    /// Set one key in conduit.toml, keeping its comments and other keys; the key and the
    /// value are checked first (a bad one: exit code 2, the file unchanged).
    Set {
        /// The key, as `config show` prints it (e.g. transfer.relay).
        key: String,
        /// The value (true/false for a switch, a number, or text).
        value: String,
    },
}

/// Options of `config show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(home: &Home, cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Show(args) => show(home, &args),
        ConfigCommand::Init => init(home),
        ConfigCommand::Get { key } => get(home, &key),
        ConfigCommand::Set { key, value } => {
            let path = set(home, &key, &value)?;
            println!("{key} = {value} in {}", path.display());
            Ok(())
        }
    }
}

fn show(home: &Home, args: &ShowArgs) -> anyhow::Result<()> {
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
        let source = match (s.source, s.env) {
            (crate::config::Source::Env, Some(var)) => format!("env {var}"),
            (crate::config::Source::File, _) => "conduit.toml".into(),
            (crate::config::Source::Flag, _) => "flag".into(),
            _ => "default".into(),
        };
        // Typed TOML (numbers and booleans bare): the output loads as conduit.toml. An
        // unset key is a comment.
        match s.toml_value() {
            Some(value) => writeln!(out, "{:<42} = {value:<24} # {source}", s.key)?,
            None => writeln!(out, "# {:<40} = {:<24} # {source}", s.key, "(unset)")?,
        }
    }
    Ok(())
}

/// Writes the commented file into `home`; refuses to replace one.
fn init(home: &Home) -> anyhow::Result<()> {
    let path = Config::path_in(home);
    if std::fs::symlink_metadata(&path).is_ok() {
        anyhow::bail!(
            "{} already exists: change a key with `conduit config set KEY VALUE`, or move the file aside first",
            path.display()
        );
    }
    write(home, &edit::template())?;
    println!(
        "wrote {} (every key commented out at its default)",
        path.display()
    );
    Ok(())
}

/// Writes `text` as the home's conduit.toml (0600, atomically; the home made 0700 if new).
pub(crate) fn write(home: &Home, text: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = Config::path_in(home);
    crate::fsutil::private_dir(home.path())
        .map_err(|e| anyhow::anyhow!("{}: {e}", home.path().display()))?;
    crate::fsutil::write_atomic(&path, text.as_bytes(), 0o600)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(path)
}

fn get(home: &Home, key: &str) -> anyhow::Result<()> {
    if edit::kind_of(key).is_none() {
        return Err(Usage(EditError::UnknownKey(key.to_string()).to_string()).into());
    }
    let config = crate::cli::resolve(home, &FileConfig::default())?;
    let setting = config.settings().into_iter().find(|s| s.key == key);
    match setting.and_then(|s| s.value) {
        Some(value) => {
            println!("{value}");
            Ok(())
        }
        None => anyhow::bail!("{key} is not set (set it with `conduit config set {key} VALUE`)"),
    }
}

/// Sets `key` to `value` in the home's conduit.toml (made from the commented template
/// when there is none); a bad key or value is a usage error and leaves the file as it
/// was. Returns the file's path.
pub(crate) fn set(home: &Home, key: &str, value: &str) -> anyhow::Result<std::path::PathBuf> {
    // The file must load as it is (ours, valid) before it is changed.
    let loaded = Config::load(home)?;
    let text = if loaded.present {
        std::fs::read_to_string(&loaded.path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", loaded.path.display()))?
    } else {
        edit::template()
    };
    let new = match edit::set(&text, key, value) {
        Ok(t) => t,
        Err(EditError::File(e)) => return Err(e.into()),
        Err(e) => return Err(Usage(e.to_string()).into()),
    };
    write(home, &new)
}
