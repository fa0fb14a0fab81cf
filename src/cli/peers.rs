//! `conduit peers add | path | fips | list | remove`.

use clap::Subcommand;
use serde_json::json;

use crate::crypto::fips_identity::FipsPin;
use crate::crypto::identity::PublicKey;
use crate::home::Home;
use crate::peers::AddressBook;
use crate::transport::path::PathPolicy;

/// Address book commands.
#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// Pin a peer's public key under a local name.
    Add {
        /// Local name (letters, digits, - _ .).
        name: String,
        /// The peer's public key, as `conduit id` prints it (cpk1...).
        key: String,
        /// The paths transfers with this peer may take, if not the endpoint's `[transfer]
        /// path`: auto, relay or direct (`conduit peers path` changes it later).
        #[arg(long, value_name = "POLICY")]
        path: Option<PathPolicy>,
        /// The peer's FIPS pin, as a FIPS build's `conduit id` prints it (cfp1...): needed
        /// to transfer with it in FIPS mode (docs/FIPS.md).
        #[arg(long, value_name = "PIN")]
        fips: Option<String>,
    },
    /// Set (or, with `none`, forget) the FIPS pin of a peer, as its FIPS build's `conduit
    /// id` prints it (cfp1...).
    Fips {
        /// The peer's local name.
        name: String,
        /// The pin, or none.
        pin: String,
    },
    /// Set the paths transfers with a peer may take: auto, relay (every packet through
    /// the relay), direct (never through a relay: its transfers through one are refused),
    /// or default (the endpoint's `[transfer] path`).
    Path {
        /// The peer's local name.
        name: String,
        /// auto, relay, direct or default.
        policy: String,
    },
    /// List known peers.
    List {
        /// Print a JSON array of {name, public_key, fingerprint, path, fips}.
        #[arg(long)]
        json: bool,
    },
    /// Forget a peer.
    Remove {
        /// The peer's local name.
        name: String,
    },
}

pub(crate) fn run(home: &Home, cmd: PeersCommand) -> anyhow::Result<()> {
    let mut book = AddressBook::load(home)?;
    match cmd {
        PeersCommand::Add {
            name,
            key,
            path,
            fips,
        } => {
            let key = PublicKey::parse(&key)?;
            let fips = fips.map(|f| FipsPin::parse(&f)).transpose()?;
            book.add(&name, key)?;
            book.set_path(&name, path)?;
            book.set_fips(&name, fips)?;
            book.save()?;
            println!("added {} ({})", name, key.fingerprint());
        }
        PeersCommand::Fips { name, pin } => {
            let pin = match pin.as_str() {
                "none" => None,
                text => Some(FipsPin::parse(text)?),
            };
            book.set_fips(&name, pin)?;
            book.save()?;
            match pin {
                Some(p) => println!("{name}: FIPS pin {p}"),
                None => println!("{name}: no FIPS pin"),
            }
        }
        PeersCommand::Path { name, policy } => {
            let path = match policy.as_str() {
                "default" => None,
                other => Some(
                    other
                        .parse::<PathPolicy>()
                        .map_err(|e| crate::cli::Usage(format!("{e}, or default")))?,
                ),
            };
            book.set_path(&name, path)?;
            book.save()?;
            match path {
                Some(p) => println!("{name}: path {p}"),
                None => println!("{name}: path as [transfer] path says"),
            }
        }
        PeersCommand::List { json } => {
            if json {
                let list: Vec<_> = book
                    .peers()
                    .iter()
                    .map(|p| json!({"name": p.name, "public_key": p.key.to_string(), "fingerprint": p.key.fingerprint().to_string(), "path": p.path.map(|x| x.name()), "fips": p.fips.map(|f| f.to_string())}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for p in book.peers() {
                    match p.path {
                        Some(path) => println!(
                            "{:<20} {}  {}  path={path}",
                            p.name,
                            p.key.fingerprint(),
                            p.key
                        ),
                        None => println!("{:<20} {}  {}", p.name, p.key.fingerprint(), p.key),
                    }
                }
            }
        }
        PeersCommand::Remove { name } => {
            let p = book.remove(&name)?;
            book.save()?;
            println!("removed {} ({})", p.name, p.key.fingerprint());
        }
    }
    Ok(())
}
