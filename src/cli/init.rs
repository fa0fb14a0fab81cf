//! `conduit init`: the first run of an endpoint. It creates the identity (or keeps the one
//! there), writes a commented `conduit.toml` with the relay (given with `--relay`, or asked
//! for at a terminal), and prints the one line to give the other clinic: the command that
//! adds this endpoint to their address book, with its fingerprint.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use serde_json::json;

use crate::cli::Usage;
use crate::config::Config;
use crate::crypto::identity::{Identity, IdentityError};
use crate::home::Home;

/// Options of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The relay to meet other endpoints at, HOST:PORT (UDP) or a comma-separated fleet;
    /// asked for at a terminal when not given (none: leave it out, or set it later with
    /// `conduit config set transfer.relay HOST:PORT`).
    #[arg(long, value_name = "ADDRS")]
    relay: Option<String>,
    /// The relay certificate's SHA-256 (hex, as the relay prints it).
    #[arg(
        long,
        value_name = "SHA256",
        requires = "relay",
        conflicts_with = "relay_ca"
    )]
    relay_pin: Option<String>,
    /// Verify the relay's certificate against this CA (PEM) instead of the system roots.
    #[arg(long, value_name = "FILE", requires = "relay")]
    relay_ca: Option<std::path::PathBuf>,
    /// The name the other clinic gives this endpoint in the line printed for them
    /// [default: this host's name].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Replace an existing identity (the old key is lost; peers that pinned it must add
    /// the new one).
    #[arg(long)]
    force: bool,
    /// Print one JSON object: public_key, fingerprint, created, config, relay, peers_add.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(home: &Home, args: InitArgs) -> anyhow::Result<()> {
    // Check what was given before anything is written.
    if let Some(name) = &args.name {
        check_name(name)?;
    }
    let dry = |key: &str, value: &str| {
        crate::config::edit::set(&crate::config::edit::template(), key, value)
            .map(|_| ())
            .map_err(|e| Usage(e.to_string()))
    };
    if let Some(relay) = &args.relay {
        dry("transfer.relay", relay)?;
    }
    if let Some(pin) = &args.relay_pin {
        dry("transfer.relay_pin", pin)?;
    }
    let (identity, created) = identity(home, args.force)?;
    let key = identity.public();
    let fingerprint = key.fingerprint().to_string();
    let (what, how) = if created {
        ("created a new identity", "")
    } else {
        ("kept the identity", " (--force replaces it)")
    };
    if !args.json {
        println!(
            "{what} in {}{how}: fingerprint {fingerprint}",
            Identity::key_path(home).display()
        );
    }
    let interactive = !args.json && std::io::stdin().is_terminal();
    let (relay, pin) = match &args.relay {
        Some(r) => (Some(r.clone()), args.relay_pin.clone()),
        None if interactive => ask_relay()?,
        None => (None, None),
    };
    let path = Config::path_in(home);
    let existed = std::fs::symlink_metadata(&path).is_ok();
    if !existed {
        crate::cli::config::write(home, &crate::config::edit::template())?;
    }
    if let Some(relay) = &relay {
        crate::cli::config::set(home, "transfer.relay", relay)?;
        if let Some(pin) = &pin {
            crate::cli::config::set(home, "transfer.relay_pin", pin)?;
        }
        if let Some(ca) = &args.relay_ca {
            crate::cli::config::set(home, "transfer.relay_ca", &ca.display().to_string())?;
        }
    }
    let name = args.name.clone().unwrap_or_else(host_name);
    let add = format!("conduit peers add {name} {key}");
    if args.json {
        println!(
            "{}",
            json!({
                "public_key": key.to_string(),
                "fingerprint": fingerprint,
                "created": created,
                "config": path.display().to_string(),
                "relay": relay,
                "peers_add": add,
            })
        );
        return Ok(());
    }
    let wrote = if existed { "updated" } else { "wrote" };
    match &relay {
        Some(r) => println!("{wrote} {}: relay {r}", path.display()),
        None if existed => println!("kept {}", path.display()),
        None => println!(
            "wrote {}: no relay (direct only; set one with `conduit config set transfer.relay HOST:PORT`)",
            path.display()
        ),
    }
    println!("give the other clinic this line (and check the fingerprint with them by phone):");
    println!("{add}    # fingerprint {fingerprint}");
    Ok(())
}

/// The home's identity, made if there is none (or replaced with `force`); whether it is new.
fn identity(home: &Home, force: bool) -> anyhow::Result<(Identity, bool)> {
    match Identity::load(home) {
        Ok(id) if !force => return Ok((id, false)),
        Ok(_) | Err(IdentityError::Missing(_)) => {}
        // A key file that is there but unusable is not replaced without --force.
        Err(e) if !force => return Err(e.into()),
        Err(_) => {}
    }
    if force && !crate::audit::log::list(&crate::audit::dir(home))?.is_empty() {
        anyhow::bail!(
            "{} holds an audit log chained under the current identity; move it aside (and keep \
             the current key to verify it) before replacing the identity",
            crate::audit::dir(home).display()
        );
    }
    let id = Identity::generate()?;
    id.save(home, force)?;
    Ok((id, true))
}

/// Asks at the terminal for the relay and its pin (empty answers: none).
fn ask_relay() -> anyhow::Result<(Option<String>, Option<String>)> {
    let relay = ask("relay to meet other clinics at, HOST:PORT (empty: none, direct only): ")?;
    let Some(relay) = relay else {
        return Ok((None, None));
    };
    let pin = ask(
        "the relay certificate's SHA-256, as its operator gives it (empty: trust the system's CAs): ",
    )?;
    Ok((Some(relay), pin))
}

/// One line from standard input after `prompt` on stderr; `None` when empty.
fn ask(prompt: &str) -> anyhow::Result<Option<String>> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let line = line.trim();
    Ok((!line.is_empty()).then(|| line.to_string()))
}

/// A name is what `peers add` takes.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= crate::peers::MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(Usage(format!(
            "--name {name:?}: use 1-{} characters from a-z A-Z 0-9 - _ .",
            crate::peers::MAX_NAME_LEN
        ))
        .into());
    }
    Ok(())
}

/// This host's name, as a peer name (other characters dropped); `clinic` without one.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(crate::peers::MAX_NAME_LEN)
        .collect();
    if name.is_empty() {
        "clinic".into()
    } else {
        name
    }
}

/// The identity of `home` for `send` and `receive`: made on first use, which is said on
/// stderr in one line with the fingerprint.
pub(crate) fn identity_for_use(home: &Home) -> anyhow::Result<Identity> {
    install_fips_identity(home)?;
    match Identity::load(home) {
        Err(IdentityError::Missing(_)) => {
            let id = Identity::generate()?;
            id.save(home, false)?;
            eprintln!(
                "created a new identity for this endpoint in {} (fingerprint {}; `conduit id` shows its key)",
                Identity::key_path(home).display(),
                id.public().fingerprint()
            );
            Ok(id)
        }
        other => Ok(other?),
    }
}

/// In a FIPS build, the P-256 identity this process presents on its end-to-end
/// connections (made on first use; `conduit id` prints its pin); nothing in a default
/// build.
pub(crate) fn install_fips_identity(home: &Home) -> anyhow::Result<()> {
    if crate::crypto::fips::ENABLED {
        let id = crate::crypto::fips_identity::FipsIdentity::load_or_create(home)?;
        crate::transport::fips_tls::install(std::sync::Arc::new(id))?;
    }
    Ok(())
}
