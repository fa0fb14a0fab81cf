//! `conduit peers add | list | remove`.

use clap::Subcommand;
use serde_json::json;

use crate::crypto::identity::PublicKey;
use crate::home::Home;
use crate::peers::AddressBook;

/// Address book commands.
#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// Pin a peer's public key under a local name.
    Add {
        /// Local name (letters, digits, - _ .).
        name: String,
        /// The peer's public key, as `conduit id` prints it (cpk1...).
        key: String,
    },
    /// List known peers.
    List {
        /// Print a JSON array of {name, public_key, fingerprint}.
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
        PeersCommand::Add { name, key } => {
            let key = PublicKey::parse(&key)?;
            book.add(&name, key)?;
            book.save()?;
            println!("added {} ({})", name, key.fingerprint());
        }
        PeersCommand::List { json } => {
            if json {
                let list: Vec<_> = book
                    .peers()
                    .iter()
                    .map(|p| json!({"name": p.name, "public_key": p.key.to_string(), "fingerprint": p.key.fingerprint().to_string()}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for p in book.peers() {
                    println!("{:<20} {}  {}", p.name, p.key.fingerprint(), p.key);
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
