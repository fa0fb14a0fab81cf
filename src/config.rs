//! `conduit.toml` in the endpoint's home: defaults for transfers (relay list, relay
//! verification, output folder, accept policy), the audit trail and the relay's limits.
//!
//! Precedence, highest first: command-line flags, environment variables, this file,
//! built-in defaults. An unknown key or a value of the wrong type is an error that names
//! the line. `conduit config show` prints the effective values and where each came from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::audit::NameMode;
use crate::home::Home;
use crate::relay::config::FileLimits;

/// The file's name in the home.
pub const FILE_NAME: &str = "conduit.toml";
/// Default of `relay_wait_secs` (`--relay-wait`).
pub const DEFAULT_RELAY_WAIT_SECS: u64 = 10;
/// Default of `out` (`receive --out`).
pub const DEFAULT_OUT: &str = ".";
/// Default of `part_max_age_days` (`receive --part-max-age-days`).
pub const DEFAULT_PART_MAX_AGE_DAYS: u32 = 7;

/// Errors reading the file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a wrong type (the message gives the line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file, or a directory above it, could have been written by someone else.
    #[error(transparent)]
    NotOurs(#[from] crate::home::NotOurs),
    /// Two settings that exclude each other.
    #[error("{path}: {message}")]
    Conflict {
        /// The file.
        path: String,
        /// What conflicts.
        message: String,
    },
}

/// `[transfer]`: defaults of `send` and `receive`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransferFile {
    /// Relay address or comma-separated fleet (`--relay`).
    pub relay: Option<String>,
    /// Relay certificate pin (`--relay-pin`).
    pub relay_pin: Option<String>,
    /// Relay CA file (`--relay-ca`).
    pub relay_ca: Option<PathBuf>,
    /// Seconds to wait for the peer at the relay (`--relay-wait`).
    pub relay_wait_secs: Option<u64>,
    /// The receiver's destination folder (`--out`).
    pub out: Option<PathBuf>,
    /// Let unknown senders complete the handshake (`--accept-unknown`).
    pub accept_unknown: Option<bool>,
    /// Accept offers without asking (`--yes`).
    pub auto_accept: Option<bool>,
    /// Replace existing files (`--overwrite`).
    pub overwrite: Option<bool>,
    /// Keep the owner's execute bit of received files (`--keep-modes`).
    pub keep_modes: Option<bool>,
    /// Days after which the receiver removes a leftover partial file
    /// (`--part-max-age-days`; 0 keeps them).
    pub part_max_age_days: Option<u32>,
    /// Most entries accepted in one offer (`--max-entries`).
    pub max_entries: Option<u64>,
    /// Seconds from connecting to an authenticated session (`--handshake-timeout`).
    pub handshake_timeout_secs: Option<u64>,
    /// Seconds for the whole offer, at the receiver (`--offer-timeout`).
    pub offer_timeout_secs: Option<u64>,
    /// Seconds the sender waits for the answer and the receipt (`--answer-timeout`).
    pub answer_timeout_secs: Option<u64>,
    /// Seconds for a file stream's header, at the receiver (`--header-timeout`).
    pub header_timeout_secs: Option<u64>,
    /// Seconds of silence from the peer before the connection is closed
    /// (`--idle-timeout`).
    pub idle_timeout_secs: Option<u64>,
    /// A receiving daemon's transfers at once (`receive --daemon --concurrent`).
    pub max_sessions: Option<u16>,
    /// A direct receiver's connections at once from one IP address (`--max-per-ip`).
    pub max_sessions_per_ip: Option<u16>,
}

/// Default of `max_sessions` (`receive --daemon --concurrent`).
pub const DEFAULT_MAX_SESSIONS: u16 = 1;
/// Default of `max_sessions_per_ip` (`receive --max-per-ip`).
pub const DEFAULT_MAX_PER_IP: u16 = 4;

/// `[audit]`: the audit trail.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// `plain` or `hash` (`--audit-names`); unset: `plain`, and `hash` for
    /// `receive --daemon`.
    pub names: Option<NameMode>,
    /// Rotate a log file at this size.
    pub rotate_bytes: Option<u64>,
}

/// `[relay]`: `conduit relay` run with this home and without `--config`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    /// The relay's limits, as in a relay `--config` file's `[limits]`.
    pub limits: Option<FileLimits>,
}

/// The file's contents.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[transfer]`.
    #[serde(default)]
    pub transfer: TransferFile,
    /// `[audit]`.
    #[serde(default)]
    pub audit: AuditFile,
    /// `[relay]`.
    #[serde(default)]
    pub relay: RelayFile,
}

/// The configuration file of a home (empty when there is none).
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where it is (or would be).
    pub path: PathBuf,
    /// Whether the file exists.
    pub present: bool,
    /// Its values.
    pub file: FileConfig,
}

impl Config {
    /// The path of the file in `home`.
    pub fn path_in(home: &Home) -> PathBuf {
        home.path().join(FILE_NAME)
    }

    /// Loads `home`'s file; a missing file is an empty configuration. The file and the
    /// directories up to the home must be ours ([`crate::home::check_ours`]).
    pub fn load(home: &Home) -> Result<Self, ConfigError> {
        Self::load_checked(&Self::path_in(home), Some(home.check_top()))
    }

    /// Loads the file at `path`; a missing file is an empty configuration. The file and
    /// its directory must be ours ([`crate::home::check_ours`]).
    ///
    /// ```
    /// use phi_conduit::config::Config;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("conduit.toml");
    /// std::fs::write(&path, "[transfer]\nout = \"/srv/inbox\"\n[audit]\nnames = \"hash\"\n").unwrap();
    /// let config = Config::load_from(&path).unwrap();
    /// assert_eq!(config.file.transfer.out.as_deref(), Some(std::path::Path::new("/srv/inbox")));
    ///
    /// std::fs::write(&path, "[transfer]\nout = \"x\"\nouts = 1\n").unwrap();
    /// let err = Config::load_from(&path).unwrap_err().to_string();
    /// assert!(err.contains("line 3") && err.contains("outs"));
    /// ```
    pub fn load_from(path: &Path) -> Result<Self, ConfigError> {
        Self::load_checked(path, None)
    }

    /// Loads the file at `path`, refusing it unless it and the directories above it up to
    /// `home` (just its own directory without one) are ours.
    fn load_checked(path: &Path, home: Option<&Path>) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        match crate::home::check_ours(path, home) {
            Err(crate::home::NotOurs::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            r => r?,
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    path: path.to_path_buf(),
                    ..Self::default()
                });
            }
            Err(source) => {
                return Err(ConfigError::Io {
                    path: shown,
                    source,
                });
            }
        };
        let file: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if file.transfer.relay_pin.is_some() && file.transfer.relay_ca.is_some() {
            return Err(ConfigError::Conflict {
                path: shown,
                message: "set relay_pin or relay_ca, not both".into(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            present: true,
            file,
        })
    }
}

/// Where an effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable.
    Env,
    /// `conduit.toml`.
    File,
    /// The built-in default.
    Default,
}

/// Environment variables that set configuration values.
pub mod env {
    /// `--relay`.
    pub const RELAY: &str = "CONDUIT_RELAY";
    /// `--relay-pin`.
    pub const RELAY_PIN: &str = "CONDUIT_RELAY_PIN";
    /// `--relay-ca`.
    pub const RELAY_CA: &str = "CONDUIT_RELAY_CA";
    /// `--relay-wait`.
    pub const RELAY_WAIT: &str = "CONDUIT_RELAY_WAIT";
    /// `receive --out`.
    pub const OUT: &str = "CONDUIT_OUT";
    /// `--audit-names`.
    pub const AUDIT_NAMES: &str = "CONDUIT_AUDIT_NAMES";
    /// The audit log's rotation size.
    pub const AUDIT_ROTATE_BYTES: &str = crate::audit::log::ROTATE_ENV;

    /// Every variable above.
    pub const ALL: [&str; 7] = [
        RELAY,
        RELAY_PIN,
        RELAY_CA,
        RELAY_WAIT,
        OUT,
        AUDIT_NAMES,
        AUDIT_ROTATE_BYTES,
    ];
}

/// The values of the environment variables that set configuration values ([`env::ALL`]),
/// as the caller read them: the library reads no environment variable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    vars: Vec<(&'static str, String)>,
}

impl Environment {
    /// Reads each variable of [`env::ALL`] with `lookup` (the binary looks them up in
    /// its process environment); an empty value counts as unset.
    ///
    /// ```
    /// use phi_conduit::config::{Environment, env};
    ///
    /// let e = Environment::capture(|name| (name == env::OUT).then(|| "/srv/inbox".to_string()));
    /// assert_eq!(e.get(env::OUT), Some("/srv/inbox"));
    /// assert_eq!(e.get(env::RELAY), None);
    /// ```
    pub fn capture(mut lookup: impl FnMut(&str) -> Option<String>) -> Self {
        let vars = env::ALL
            .iter()
            .filter_map(|&name| Some((name, lookup(name).filter(|v| !v.is_empty())?)))
            .collect();
        Self { vars }
    }

    /// The value of `name`, if set (and one of [`env::ALL`]).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One effective setting, for `conduit config show`.
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    /// `section.key`.
    pub key: String,
    /// The value as text (`None`: unset).
    pub value: Option<String>,
    /// Where it came from.
    pub source: Source,
    /// The environment variable that sets it, if any.
    pub env: Option<&'static str>,
}

impl Config {
    /// The effective settings without command-line flags: environment (`environment`),
    /// then this file, then the defaults.
    pub fn effective(&self, environment: &Environment) -> Vec<Setting> {
        let t = &self.file.transfer;
        let a = &self.file.audit;
        let text =
            |v: Option<String>, env: Option<&'static str>, key: &str, default: Option<&str>| {
                let from_env = env.and_then(|e| environment.get(e)).map(str::to_string);
                let (value, source) = match (from_env, v) {
                    (Some(e), _) => (Some(e), Source::Env),
                    (None, Some(f)) => (Some(f), Source::File),
                    (None, None) => (default.map(str::to_string), Source::Default),
                };
                Setting {
                    key: key.into(),
                    value,
                    source,
                    env,
                }
            };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let mut out = vec![
            text(t.relay.clone(), Some(env::RELAY), "transfer.relay", None),
            text(
                t.relay_pin.clone(),
                Some(env::RELAY_PIN),
                "transfer.relay_pin",
                None,
            ),
            text(
                path(&t.relay_ca),
                Some(env::RELAY_CA),
                "transfer.relay_ca",
                None,
            ),
            text(
                t.relay_wait_secs.map(|v| v.to_string()),
                Some(env::RELAY_WAIT),
                "transfer.relay_wait_secs",
                Some(&DEFAULT_RELAY_WAIT_SECS.to_string()),
            ),
            text(
                path(&t.out),
                Some(env::OUT),
                "transfer.out",
                Some(DEFAULT_OUT),
            ),
            text(
                t.accept_unknown.map(|v| v.to_string()),
                None,
                "transfer.accept_unknown",
                Some("false"),
            ),
            text(
                t.auto_accept.map(|v| v.to_string()),
                None,
                "transfer.auto_accept",
                Some("false"),
            ),
            text(
                t.overwrite.map(|v| v.to_string()),
                None,
                "transfer.overwrite",
                Some("false"),
            ),
        ];
        let secs = |d: std::time::Duration| d.as_secs().to_string();
        let defaults = crate::session::Timeouts::default();
        for (key, value, default) in [
            (
                "transfer.handshake_timeout_secs",
                t.handshake_timeout_secs,
                defaults.handshake,
            ),
            (
                "transfer.offer_timeout_secs",
                t.offer_timeout_secs,
                defaults.offer,
            ),
            (
                "transfer.answer_timeout_secs",
                t.answer_timeout_secs,
                defaults.answer,
            ),
            (
                "transfer.header_timeout_secs",
                t.header_timeout_secs,
                defaults.header,
            ),
            (
                "transfer.idle_timeout_secs",
                t.idle_timeout_secs,
                defaults.idle,
            ),
        ] {
            out.push(text(
                value.map(|v| v.to_string()),
                None,
                key,
                Some(&secs(default)),
            ));
        }
        out.extend([
            text(
                t.max_sessions.map(|v| v.to_string()),
                None,
                "transfer.max_sessions",
                Some(&DEFAULT_MAX_SESSIONS.to_string()),
            ),
            text(
                t.max_sessions_per_ip.map(|v| v.to_string()),
                None,
                "transfer.max_sessions_per_ip",
                Some(&DEFAULT_MAX_PER_IP.to_string()),
            ),
            text(
                t.keep_modes.map(|v| v.to_string()),
                None,
                "transfer.keep_modes",
                Some("false"),
            ),
            text(
                t.part_max_age_days.map(|v| v.to_string()),
                None,
                "transfer.part_max_age_days",
                Some(&DEFAULT_PART_MAX_AGE_DAYS.to_string()),
            ),
            text(
                t.max_entries.map(|v| v.to_string()),
                None,
                "transfer.max_entries",
                Some(&crate::transfer::protocol::DEFAULT_MAX_ENTRIES.to_string()),
            ),
            text(
                a.names.map(|n| name_mode(n).to_string()),
                Some(env::AUDIT_NAMES),
                "audit.names",
                Some(name_mode(NameMode::default())),
            ),
            text(
                a.rotate_bytes.map(|v| v.to_string()),
                Some(env::AUDIT_ROTATE_BYTES),
                "audit.rotate_bytes",
                Some(&crate::audit::log::DEFAULT_ROTATE_BYTES.to_string()),
            ),
        ]);
        let mut limits = crate::relay::config::Limits::default();
        let from_file = self.file.relay.limits.clone().unwrap_or_default();
        from_file.apply(&mut limits);
        for (key, value, set) in limits.describe(&from_file) {
            out.push(Setting {
                key: format!("relay.limits.{key}"),
                value: Some(value),
                source: if set { Source::File } else { Source::Default },
                env: None,
            });
        }
        out
    }
}

/// The name of a [`NameMode`] as written in the file.
pub fn name_mode(n: NameMode) -> &'static str {
    match n {
        NameMode::Plain => "plain",
        NameMode::Hash => "hash",
    }
}
