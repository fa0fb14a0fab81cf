//! Writing `conduit.toml`: the commented file `conduit config init` and `conduit init`
//! write ([`template`]), one key changed in place by `conduit config set` ([`set`]),
//! keeping the comments, the order and the other keys (with `toml_edit`, the editing
//! half of the `toml` crate the file is read with), and the values as TOML
//! ([`Setting::toml_value`], what `conduit config show` prints).
//!
//! Every key is checked against the schema (the keys `conduit config show` lists) and
//! every new value against the types and rules the file is read with: a file that `set`
//! writes always loads.

use thiserror::Error;
use toml_edit::{DocumentMut, Item, Table, Value};

use super::{Config, ConfigError, Environment, FileConfig, Resolved, Setting};

/// The type of a key's value in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string (an address, a path, a name).
    Text,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Bool,
}

/// The keys whose value is `true` or `false`.
const BOOL_KEYS: [&str; 4] = [
    "transfer.accept_unknown",
    "transfer.auto_accept",
    "transfer.overwrite",
    "transfer.keep_modes",
];

/// The keys whose value is a string.
const TEXT_KEYS: [&str; 8] = [
    "transfer.relay",
    "transfer.relay_pin",
    "transfer.relay_ca",
    "transfer.out",
    "transfer.suite",
    "transfer.post_quantum",
    "transfer.path",
    "audit.names",
];

/// A key or a value that `conduit config get/set` cannot take.
#[derive(Debug, Error)]
pub enum EditError {
    /// Not a key of the file.
    #[error("{0:?} is not a configuration key (`conduit config show` lists them)")]
    UnknownKey(String),
    /// The value does not fit the key.
    #[error("{key}: {value:?} is not {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What it should be.
        expected: String,
    },
    /// The file as it would be written does not load (a value out of range, two keys
    /// that exclude each other); nothing was written.
    #[error("{key} = {value}: {message}")]
    Invalid {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// Why the file would not load.
        message: String,
    },
    /// The file is not valid TOML.
    #[error(transparent)]
    File(#[from] ConfigError),
}

/// Every key of the file, `section.key` (`relay.limits.key`), in `config show`'s order.
pub fn keys() -> Vec<String> {
    default_settings().into_iter().map(|s| s.key).collect()
}

/// The built-in defaults, as `config show` lists them (resolving the empty
/// configuration cannot fail: only an environment value can, and none is given).
fn default_settings() -> Vec<Setting> {
    Resolved::resolve(
        &Config::default(),
        &Environment::default(),
        &FileConfig::default(),
    )
    .map(|r| r.settings())
    .unwrap_or_default()
}

/// The type of `key`'s value, if it is a key of the file.
pub fn kind_of(key: &str) -> Option<Kind> {
    if BOOL_KEYS.contains(&key) {
        Some(Kind::Bool)
    } else if TEXT_KEYS.contains(&key) {
        Some(Kind::Text)
    } else if keys().iter().any(|k| k == key) {
        Some(Kind::Integer)
    } else {
        None
    }
}

impl Setting {
    /// The value as TOML (a quoted string, a bare number or boolean); `None`: unset.
    pub fn toml_value(&self) -> Option<String> {
        let v = self.value.as_deref()?;
        Some(match kind_of(&self.key) {
            Some(Kind::Text) | None => Value::from(v).to_string(),
            Some(Kind::Integer | Kind::Bool) => v.to_string(),
        })
    }
}

/// `value` as a TOML value of `key`'s type.
fn typed(key: &str, kind: Kind, value: &str) -> Result<Value, EditError> {
    let bad = |expected: &str| EditError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    };
    match kind {
        Kind::Text => Ok(Value::from(value)),
        Kind::Bool => match value {
            "true" => Ok(Value::from(true)),
            "false" => Ok(Value::from(false)),
            _ => Err(bad("true or false")),
        },
        Kind::Integer => value
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Value::from)
            .ok_or_else(|| bad("a whole number (0 or more)")),
    }
}

/// `text` (the file, possibly empty) with `key` set to `value`, comments and other keys
/// kept. The key must be in the schema, the value of its type, and the whole file must
/// then load as [`Config`] does (ranges, `relay_pin` or `relay_ca`, the relay limits).
///
/// ```
/// use phi_conduit::config::edit::{set, template};
///
/// let text = set(&template(), "transfer.relay_wait_secs", "30").unwrap();
/// assert!(text.contains("relay_wait_secs = 30"));
/// assert!(text.starts_with(&template()[..20])); // the comments stay
/// assert!(set(&text, "transfer.relay_wait", "30").is_err()); // not a key
/// assert!(set(&text, "transfer.overwrite", "yes").is_err()); // not a boolean
/// ```
pub fn set(text: &str, key: &str, value: &str) -> Result<String, EditError> {
    let kind = kind_of(key).ok_or_else(|| EditError::UnknownKey(key.to_string()))?;
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        EditError::File(ConfigError::Parse {
            path: super::FILE_NAME.into(),
            message: e.to_string().trim_end().to_string(),
        })
    })?;
    let new = typed(key, kind, value)?;
    let parts: Vec<&str> = key.split('.').collect();
    let Some((last, tables)) = parts.split_last() else {
        return Err(EditError::UnknownKey(key.to_string()));
    };
    let mut table: &mut Table = doc.as_table_mut();
    for name in tables {
        let item = table
            .entry(name)
            .or_insert_with(|| Item::Table(Table::new()));
        table = match item.as_table_mut() {
            Some(t) => t,
            None => {
                return Err(EditError::Invalid {
                    key: key.to_string(),
                    value: value.to_string(),
                    message: format!("{name} is not a table in the file"),
                });
            }
        };
    }
    match table.get_mut(last).and_then(Item::as_value_mut) {
        // Keep the comment after the old value, and the spacing before it.
        Some(old) => {
            let decor = old.decor().clone();
            *old = new;
            *old.decor_mut() = decor;
        }
        None => {
            table.insert(last, Item::Value(new));
        }
    }
    let out = doc.to_string();
    check(&out).map_err(|message| EditError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        message,
    })?;
    Ok(out)
}

/// Whether `text` loads as `conduit.toml` (its types, its rules, the relay limits and
/// the relay list); the reason when it does not.
fn check(text: &str) -> Result<(), String> {
    let file: FileConfig = toml::from_str(text).map_err(|e| plain_words(e.message()))?;
    if file.transfer.relay_pin.is_some() && file.transfer.relay_ca.is_some() {
        return Err("set relay_pin or relay_ca, not both".into());
    }
    if let Some(list) = &file.transfer.relay {
        crate::relay::client::RelayOptions::parse_list(list).map_err(|e| e.to_string())?;
    }
    if let Some(pin) = &file.transfer.relay_pin {
        crate::relay::tokens::parse_sha256(pin)
            .ok_or("the relay pin is a SHA-256 in hex (64 digits), as the relay prints it")?;
    }
    let mut limits = crate::relay::config::Limits::default();
    if let Some(l) = &file.relay.limits {
        l.apply(&mut limits);
    }
    limits.check().map_err(|e| e.to_string())
}

/// The parser's message without the Rust type it names ("expected u16"): the range.
fn plain_words(message: &str) -> String {
    for (ty, max) in [
        ("u16", u64::from(u16::MAX)),
        ("u32", u64::from(u32::MAX)),
        ("usize", u64::MAX),
        ("u64", u64::MAX),
    ] {
        if let Some(head) = message.strip_suffix(&format!(", expected {ty}")) {
            let head = head.strip_prefix("invalid value: ").unwrap_or(head);
            return format!("{head} is out of range (at most {max})").replace('`', "");
        }
    }
    message.to_string()
}

/// The commented file that `conduit config init` and `conduit init` write: every key of
/// `[transfer]` and `[audit]` with its default, commented out, and what it does.
pub fn template() -> String {
    TEMPLATE.to_string()
}

const TEMPLATE: &str = r#"# conduit.toml: this endpoint's settings.
#
# Command-line flags override these, and CONDUIT_* environment variables override this
# file. `conduit config show` prints every effective value and where it comes from (its
# output can be pasted here); `conduit config set KEY VALUE` changes one key and keeps
# these comments. A line starting with # is a default, shown for reference.

[transfer]
# The relay to meet peers at, HOST:PORT (UDP), or a comma-separated fleet.
# relay = "relay.example.org:7471"
# How to check the relay's certificate: its SHA-256 as the relay prints it, or a CA
# file (one or the other; neither: the system's certificate authorities).
# relay_pin = "<64 hex digits>"
# relay_ca = "/etc/conduit/relay-ca.pem"
# Seconds to keep trying while the peer is not at the relay yet.
# relay_wait_secs = 10
# Where `conduit receive` puts what it receives.
# out = "."
# Let senders that are not in the address book in (`--accept-unknown`).
# accept_unknown = false
# Accept offers without asking (`--yes`).
# auto_accept = false
# Replace files that already exist (`--overwrite`).
# overwrite = false
# Keep the owner's execute bit of received files (`--keep-modes`).
# keep_modes = false
# STREAM cipher suite: auto (AES-256-GCM when both sides have hardware AES, else
# ChaCha20-Poly1305), aes-256-gcm or chacha20-poly1305 (`--suite`).
# suite = "auto"
# The hybrid post-quantum key exchange (ML-KEM-768 beside X25519) of the end-to-end
# session: required (refuse a peer without it), preferred (accept one, X25519 only) or
# off (never offer it; for tests) (`--post-quantum`).
# post_quantum = "required"
# Which paths transfers take: auto (through the relay, moving to a direct path between
# the endpoints when their NATs allow one), relay (every packet through the relay) or
# direct (never through a relay: --direct and --listen only) (`--path`).
# path = "auto"
# Remove leftover partial files older than this many days (0 keeps them).
# part_max_age_days = 7
# Most entries (files and empty directories) accepted in one offer.
# max_entries = 250000
# A receiving daemon's transfers at once; a direct receiver's connections per IP.
# max_sessions = 1
# max_sessions_per_ip = 4
# Timeouts, in seconds (docs/PROTOCOL.md, "Timeouts").
# handshake_timeout_secs = 10
# offer_timeout_secs = 30
# answer_timeout_secs = 120
# header_timeout_secs = 10
# idle_timeout_secs = 10

[audit]
# How file names appear in the audit log and in outputs: "plain", or "hash" (a keyed
# hash: no file name in logs; the default of `receive --daemon`).
# names = "plain"
# Rotate an audit log file at this size, in bytes.
# rotate_bytes = 16777216

# The limits of `conduit relay` run with this home (`conduit config show` lists them).
# [relay.limits]
# max_sessions = 256
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_loads_and_every_key_of_show_is_settable() {
        check(TEMPLATE).unwrap();
        let mut text = template();
        for key in keys() {
            let value = match kind_of(&key).unwrap() {
                Kind::Bool => "true",
                Kind::Integer if key.ends_with("_window") => "1048576",
                Kind::Integer => "3",
                Kind::Text if key == "transfer.relay" => "relay.example.org:7471",
                Kind::Text if key == "transfer.relay_pin" => continue,
                Kind::Text if key == "audit.names" => "hash",
                Kind::Text if key == "transfer.suite" => "aes-256-gcm",
                Kind::Text if key == "transfer.post_quantum" => "preferred",
                Kind::Text if key == "transfer.path" => "relay",
                Kind::Text => "/srv/x",
            };
            text = set(&text, &key, value).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        let file: FileConfig = toml::from_str(&text).unwrap();
        assert_eq!(file.transfer.max_sessions, Some(3));
        assert_eq!(file.transfer.keep_modes, Some(true));
        assert_eq!(
            file.transfer.suite,
            Some(crate::crypto::suite::SuitePolicy::Only(
                crate::crypto::suite::Suite::Aes256Gcm
            ))
        );
        assert_eq!(
            file.transfer.post_quantum,
            Some(crate::crypto::hybrid::PqPolicy::Preferred)
        );
        assert_eq!(
            file.transfer.path,
            Some(crate::transport::path::PathPolicy::Relay)
        );
        assert!(text.contains("# Where `conduit receive` puts what it receives."));
    }

    #[test]
    fn a_value_is_replaced_in_place_keeping_its_comment() {
        let text = "[transfer]\nout = \"a\" # the inbox\nkeep_modes = true\n";
        let out = set(text, "transfer.out", "/srv/inbox").unwrap();
        assert_eq!(
            out,
            "[transfer]\nout = \"/srv/inbox\" # the inbox\nkeep_modes = true\n"
        );
    }

    #[test]
    fn bad_keys_and_values_are_refused() {
        let t = template();
        for (key, value) in [
            ("transfer.nope", "1"),
            ("nope", "1"),
            ("transfer.max_sessions", "70000"),
            ("transfer.max_sessions", "-1"),
            ("transfer.overwrite", "1"),
            ("audit.names", "rot13"),
            ("transfer.relay", "no-port"),
            ("transfer.relay_pin", "abc"),
            ("relay.limits.max_sessions", "0"),
        ] {
            assert!(set(&t, key, value).is_err(), "{key} = {value}");
        }
        let with_ca = set(&t, "transfer.relay_ca", "/ca.pem").unwrap();
        let pin = "ab".repeat(32);
        let e = set(&t, "transfer.max_sessions", "70000").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("integer 70000 is out of range (at most 65535)"),
            "{e}"
        );
        let e = set(&with_ca, "transfer.relay_pin", &pin).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn show_values_are_typed() {
        let s = default_settings();
        let v = |k: &str| {
            s.iter()
                .find(|x| x.key == k)
                .and_then(Setting::toml_value)
                .unwrap()
        };
        assert_eq!(v("transfer.relay_wait_secs"), "10");
        assert_eq!(v("transfer.overwrite"), "false");
        assert_eq!(v("transfer.out"), "\".\"");
        assert_eq!(v("relay.limits.max_sessions"), "256");
    }
}
