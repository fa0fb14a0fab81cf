//! The address book: known peers by name, with their pinned public keys.
//!
//! Stored as TOML in `<home>/peers.toml`:
//!
//! ```toml
//! [[peer]]
//! name = "lab"
//! key = "cpk1..."
//! fips = "cfp1..."   # optional: its FIPS pin (docs/FIPS.md)
//! ```
//!
//! Every edit rewrites the file atomically (temporary file, fsync, rename).

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::crypto::fips_identity::FipsPin;
use crate::crypto::identity::{IdentityError, PublicKey};
use crate::fsutil;
use crate::home::Home;
use crate::transport::path::PathPolicy;

/// Longest peer name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Largest address book file read.
const MAX_FILE_LEN: u64 = 4 << 20;

/// Errors of the address book.
#[derive(Debug, Error)]
pub enum PeersError {
    /// A peer of that name exists.
    #[error("a peer named {0:?} already exists")]
    DuplicateName(String),
    /// The key is already in the book under another name.
    #[error("that key is already in the address book as {0:?}")]
    DuplicateKey(String),
    /// No peer of that name.
    #[error("no peer named {0:?}")]
    NotFound(String),
    /// A name that is empty, too long, or has characters other than letters, digits,
    /// `-`, `_` and `.`.
    #[error("invalid peer name {0:?}: use 1-64 characters from a-z A-Z 0-9 - _ .")]
    BadName(String),
    /// A key in the file or on the command line is invalid.
    #[error("peer {name:?}: {source}")]
    BadKey {
        /// The peer.
        name: String,
        /// Why the key is invalid.
        #[source]
        source: IdentityError,
    },
    /// The file is not valid TOML of the expected shape, or too large.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file, or a directory above it, could have been written by someone else.
    #[error(transparent)]
    NotOurs(#[from] crate::home::NotOurs),
    /// IO on the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// One known peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Local name of the peer.
    pub name: String,
    /// Its pinned public key.
    pub key: PublicKey,
    /// The paths transfers with this peer may take, when it differs from the endpoint's
    /// (`[transfer] path`); `None`: the endpoint's.
    pub path: Option<PathPolicy>,
    /// The pin of its FIPS identity (its P-256 key), for the FIPS session; `None`: not
    /// known, and a FIPS build will not transfer with it.
    pub fips: Option<FipsPin>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    peer: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fips: Option<String>,
}

/// The address book of one home.
#[derive(Debug, Clone)]
pub struct AddressBook {
    path: PathBuf,
    peers: Vec<Peer>,
}

impl AddressBook {
    /// Path of the address book in `home`.
    pub fn path_in(home: &Home) -> PathBuf {
        home.path().join("peers.toml")
    }

    /// Loads the address book (empty if the file does not exist), refusing a file others
    /// could have written ([`crate::home::check_ours`]).
    pub fn load(home: &Home) -> Result<Self, PeersError> {
        let path = Self::path_in(home);
        let io_err = |source| PeersError::Io {
            path: path.clone(),
            source,
        };
        let text = match fs::metadata(&path) {
            Ok(m) if m.len() > MAX_FILE_LEN => {
                return Err(PeersError::Corrupt {
                    path,
                    reason: "file too large".into(),
                });
            }
            Ok(_) => {
                // Whom we trust comes from this file: it must be ours alone.
                crate::home::check_ours(&path, Some(home.check_top()))?;
                fs::read_to_string(&path).map_err(io_err)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(e)),
        };
        let file: File = toml::from_str(&text).map_err(|e| PeersError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut book = Self {
            path,
            peers: Vec::with_capacity(file.peer.len()),
        };
        for e in file.peer {
            let key = PublicKey::parse(&e.key).map_err(|source| PeersError::BadKey {
                name: e.name.clone(),
                source,
            })?;
            book.add(&e.name, key)?;
            book.set_path(&e.name, e.path)?;
            if let Some(text) = &e.fips {
                let pin = FipsPin::parse(text).map_err(|source| PeersError::BadKey {
                    name: e.name.clone(),
                    source,
                })?;
                book.set_fips(&e.name, Some(pin))?;
            }
        }
        Ok(book)
    }

    /// All peers, in the order they were added.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The peer with `key`.
    pub fn find_by_key(&self, key: &PublicKey) -> Option<&Peer> {
        self.peers.iter().find(|p| p.key == *key)
    }

    /// The peer whose FIPS pin is `pin` (constant-time comparison of each).
    pub fn find_by_fips(&self, pin: &FipsPin) -> Option<&Peer> {
        self.peers
            .iter()
            .find(|p| p.fips.as_ref().is_some_and(|f| f.matches(pin)))
    }

    /// The peer named `name`.
    pub fn find_by_name(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// Adds a peer (in memory; [`AddressBook::save`] writes it).
    pub fn add(&mut self, name: &str, key: PublicKey) -> Result<(), PeersError> {
        validate_name(name)?;
        if self.find_by_name(name).is_some() {
            return Err(PeersError::DuplicateName(name.into()));
        }
        if let Some(p) = self.find_by_key(&key) {
            return Err(PeersError::DuplicateKey(p.name.clone()));
        }
        self.peers.push(Peer {
            name: name.into(),
            key,
            path: None,
            fips: None,
        });
        Ok(())
    }

    /// Sets the FIPS pin of the peer named `name` (`None`: forget it). A pin is one
    /// peer's: one already given to another peer is refused.
    pub fn set_fips(&mut self, name: &str, pin: Option<FipsPin>) -> Result<(), PeersError> {
        if let Some(pin) = &pin
            && let Some(other) = self.find_by_fips(pin).filter(|p| p.name != name)
        {
            return Err(PeersError::DuplicateKey(other.name.clone()));
        }
        let p = self
            .peers
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| PeersError::NotFound(name.into()))?;
        p.fips = pin;
        Ok(())
    }

    /// Sets the path policy of the peer named `name` (`None`: the endpoint's).
    pub fn set_path(&mut self, name: &str, path: Option<PathPolicy>) -> Result<(), PeersError> {
        let p = self
            .peers
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| PeersError::NotFound(name.into()))?;
        p.path = path;
        Ok(())
    }

    /// Removes the peer named `name`.
    pub fn remove(&mut self, name: &str) -> Result<Peer, PeersError> {
        let at = self
            .peers
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| PeersError::NotFound(name.into()))?;
        Ok(self.peers.remove(at))
    }

    /// Writes the address book atomically.
    pub fn save(&self) -> Result<(), PeersError> {
        let file = File {
            peer: self
                .peers
                .iter()
                .map(|p| Entry {
                    name: p.name.clone(),
                    key: p.key.to_string(),
                    path: p.path,
                    fips: p.fips.map(|f| f.to_string()),
                })
                .collect(),
        };
        let text = toml::to_string(&file).map_err(|e| PeersError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let io_err = |source| PeersError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            fsutil::private_dir(dir).map_err(io_err)?;
        }
        fsutil::write_atomic(&self.path, text.as_bytes(), 0o600).map_err(io_err)
    }
}

fn validate_name(name: &str) -> Result<(), PeersError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(PeersError::BadName(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::Identity;

    #[test]
    fn add_save_load_remove() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let (a, b) = (
            Identity::generate().unwrap().public(),
            Identity::generate().unwrap().public(),
        );
        let mut book = AddressBook::load(&home).unwrap();
        book.add("lab", a).unwrap();
        book.add("clinic-2", b).unwrap();
        assert!(matches!(
            book.add("lab", b),
            Err(PeersError::DuplicateName(_))
        ));
        assert!(matches!(book.add("other", a), Err(PeersError::DuplicateKey(n)) if n == "lab"));
        assert!(matches!(
            book.add("bad name", a),
            Err(PeersError::BadName(_))
        ));
        book.set_path("clinic-2", Some(PathPolicy::Relay)).unwrap();
        assert!(matches!(
            book.set_path("nobody", None),
            Err(PeersError::NotFound(_))
        ));
        book.save().unwrap();
        let text = std::fs::read_to_string(AddressBook::path_in(&home)).unwrap();
        assert_eq!(text.matches("path = ").count(), 1, "{text}");
        let mut again = AddressBook::load(&home).unwrap();
        assert_eq!(again.find_by_key(&b).unwrap().name, "clinic-2");
        assert_eq!(again.find_by_key(&b).unwrap().path, Some(PathPolicy::Relay));
        assert_eq!(again.find_by_key(&a).unwrap().path, None);
        again.remove("lab").unwrap();
        again.save().unwrap();
        assert!(
            AddressBook::load(&home)
                .unwrap()
                .find_by_name("lab")
                .is_none()
        );
    }
}
