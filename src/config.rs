//! `conduit.toml` in the endpoint's home: defaults for transfers (relay list, relay
//! verification, output folder, accept policy), the audit trail and the relay's limits.
//!
//! Precedence, highest first: command-line flags, environment variables, this file,
//! built-in defaults, applied once, by [`Resolved::resolve`]: the binary reads the flags
//! and the environment ([`Environment`]) and passes them in, every command takes its
//! settings from the [`Resolved`] value, and `conduit config show` prints it (each value
//! and where it came from). An unknown key or a value of the wrong type is an error that
//! names the line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::audit::NameMode;
use crate::home::Home;
use crate::relay::config::{FileLimits, Limits};

pub mod edit;

/// The file's name in the home.
pub const FILE_NAME: &str = "conduit.toml";
/// Default of `relay_wait_secs` (`--relay-wait`).
pub const DEFAULT_RELAY_WAIT_SECS: u64 = 10;
/// Default of `code_wait_secs` (`--code-wait`): how long a code phrase stays valid, the
/// side that starts first waiting this long for the other.
pub const DEFAULT_CODE_WAIT_SECS: u64 = 600;
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
    /// An environment variable that sets a configuration value does not parse.
    #[error("environment variable {var}: {value:?} is not {expected}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
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
    /// Seconds a code phrase stays valid: the side of a code-phrase transfer that starts
    /// first waits this long for the other (`--code-wait`).
    pub code_wait_secs: Option<u64>,
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
    /// STREAM cipher suite: `auto`, `aes-256-gcm` or `chacha20-poly1305` (`--suite`).
    pub suite: Option<crate::crypto::suite::SuitePolicy>,
    /// The post-quantum (ML-KEM-768) part of the handshake: `required`, `preferred` or
    /// `off` (`--post-quantum`).
    pub post_quantum: Option<crate::crypto::hybrid::PqPolicy>,
    /// Which paths transfers take: `auto`, `relay` or `direct` (`--path`).
    pub path: Option<crate::transport::path::PathPolicy>,
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
    /// `[agent]`: settings of `conduit agent` (docs/AGENT.md).
    #[serde(
        default,
        skip_serializing_if = "crate::agent::config::AgentFile::is_empty"
    )]
    pub agent: crate::agent::config::AgentFile,
    /// `[[outbox]]`: the folders `conduit agent` sends from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<crate::agent::config::OutboxFile>,
    /// `[[inbox]]`: where `conduit agent` puts what each sender sends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbox: Vec<crate::agent::config::InboxFile>,
    /// `[console]`: the agent's local web console (docs/CONSOLE.md).
    #[serde(default, skip_serializing_if = "crate::console::ConsoleFile::is_empty")]
    pub console: crate::console::ConsoleFile,
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

/// A value and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub source: Source,
}

/// The first value set among the layers, highest first, else `default`.
fn pick<T>(flag: Option<T>, env: Option<T>, file: Option<T>, default: T) -> Sourced<T> {
    let layers = [
        (flag, Source::Flag),
        (env, Source::Env),
        (file, Source::File),
    ];
    for (value, source) in layers {
        if let Some(value) = value {
            return Sourced { value, source };
        }
    }
    Sourced {
        value: default,
        source: Source::Default,
    }
}

/// [`pick`] for a key without a default (unset: `None`).
fn pick_opt<T>(flag: Option<T>, env: Option<T>, file: Option<T>) -> Sourced<Option<T>> {
    pick(flag.map(Some), env.map(Some), file.map(Some), None)
}

/// The effective configuration of one command: the value of each key and where it came
/// from. The precedence, highest first (command-line flags, environment variables,
/// `conduit.toml`, built-in defaults), is applied here and nowhere else; every command
/// takes its settings from a `Resolved`, and `conduit config show` prints one.
///
/// ```
/// use phi_conduit::config::{Config, Environment, FileConfig, Resolved, Source, env};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("conduit.toml");
/// std::fs::write(&path, "[transfer]\nout = \"/srv/inbox\"\nrelay_wait_secs = 30\n").unwrap();
/// let config = Config::load_from(&path).unwrap();
/// let environment = Environment::capture(|name| (name == env::RELAY_WAIT).then(|| "60".into()));
/// let mut flags = FileConfig::default();
/// flags.transfer.overwrite = Some(true);
/// let r = Resolved::resolve(&config, &environment, &flags).unwrap();
/// assert_eq!(r.out.value, std::path::Path::new("/srv/inbox"));
/// assert_eq!(r.out.source, Source::File);
/// assert_eq!((r.relay_wait_secs.value, r.relay_wait_secs.source), (60, Source::Env));
/// assert_eq!((r.overwrite.value, r.overwrite.source), (true, Source::Flag));
/// assert_eq!((r.keep_modes.value, r.keep_modes.source), (false, Source::Default));
/// ```
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Where conduit.toml is (or would be).
    pub file: PathBuf,
    /// Whether it exists.
    pub file_present: bool,
    /// `transfer.relay`: relay address or comma-separated fleet.
    pub relay: Sourced<Option<String>>,
    /// `transfer.relay_pin`: relay certificate pin. The pin and the CA come as a pair from
    /// the highest layer that sets either (one given there replaces both below).
    pub relay_pin: Sourced<Option<String>>,
    /// `transfer.relay_ca`: relay CA file (see `relay_pin`).
    pub relay_ca: Sourced<Option<PathBuf>>,
    /// `transfer.relay_wait_secs`.
    pub relay_wait_secs: Sourced<u64>,
    /// `transfer.code_wait_secs`: how long a code phrase stays valid.
    pub code_wait_secs: Sourced<u64>,
    /// `transfer.out`: the receiver's destination folder.
    pub out: Sourced<PathBuf>,
    /// `transfer.accept_unknown`.
    pub accept_unknown: Sourced<bool>,
    /// `transfer.auto_accept`.
    pub auto_accept: Sourced<bool>,
    /// `transfer.overwrite`.
    pub overwrite: Sourced<bool>,
    /// `transfer.handshake_timeout_secs`.
    pub handshake_timeout_secs: Sourced<u64>,
    /// `transfer.offer_timeout_secs`.
    pub offer_timeout_secs: Sourced<u64>,
    /// `transfer.answer_timeout_secs`.
    pub answer_timeout_secs: Sourced<u64>,
    /// `transfer.header_timeout_secs`.
    pub header_timeout_secs: Sourced<u64>,
    /// `transfer.idle_timeout_secs`.
    pub idle_timeout_secs: Sourced<u64>,
    /// `transfer.max_sessions`: a receiving daemon's transfers at once.
    pub max_sessions: Sourced<u16>,
    /// `transfer.max_sessions_per_ip`: a direct receiver's connections per IP address.
    pub max_sessions_per_ip: Sourced<u16>,
    /// `transfer.keep_modes`.
    pub keep_modes: Sourced<bool>,
    /// `transfer.suite`: the STREAM cipher suites this side accepts.
    pub suite: Sourced<crate::crypto::suite::SuitePolicy>,
    /// `transfer.path`: which paths transfers take.
    pub path: Sourced<crate::transport::path::PathPolicy>,
    /// `transfer.post_quantum`: whether a peer without ML-KEM-768 is accepted.
    pub post_quantum: Sourced<crate::crypto::hybrid::PqPolicy>,
    /// `transfer.part_max_age_days`.
    pub part_max_age_days: Sourced<u32>,
    /// `transfer.max_entries`.
    pub max_entries: Sourced<u64>,
    /// `audit.names` (the default is `plain`; see [`Resolved::audit_options`]).
    pub audit_names: Sourced<NameMode>,
    /// `audit.rotate_bytes`.
    pub audit_rotate_bytes: Sourced<u64>,
    /// `[relay.limits]` as the file (or the relay's own file) gives them.
    relay_limits_file: FileLimits,
    /// `[relay.limits]` as the flags give them.
    relay_limits_flags: FileLimits,
}

/// The parsed value of environment variable `var`, if set.
fn from_env<T>(
    environment: &Environment,
    var: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
    expected: &'static str,
) -> Result<Option<T>, ConfigError> {
    match environment.get(var) {
        None => Ok(None),
        Some(text) => parse(text).map(Some).ok_or_else(|| ConfigError::Env {
            var,
            value: text.to_string(),
            expected,
        }),
    }
}

/// A [`NameMode`] from its name in the file.
fn parse_name_mode(text: &str) -> Option<NameMode> {
    match text {
        "plain" => Some(NameMode::Plain),
        "hash" => Some(NameMode::Hash),
        _ => None,
    }
}

/// The settings the environment gives, in the file's shape.
fn env_layer(environment: &Environment) -> Result<FileConfig, ConfigError> {
    let text = |var| environment.get(var).map(str::to_string);
    let mut layer = FileConfig::default();
    let t = &mut layer.transfer;
    t.relay = text(env::RELAY);
    t.relay_pin = text(env::RELAY_PIN);
    t.relay_ca = text(env::RELAY_CA).map(PathBuf::from);
    t.relay_wait_secs = from_env(
        environment,
        env::RELAY_WAIT,
        |v| v.parse().ok(),
        "a number of seconds",
    )?;
    t.out = text(env::OUT).map(PathBuf::from);
    let a = &mut layer.audit;
    a.names = from_env(
        environment,
        env::AUDIT_NAMES,
        parse_name_mode,
        "plain or hash",
    )?;
    a.rotate_bytes = from_env(
        environment,
        env::AUDIT_ROTATE_BYTES,
        |v| v.parse().ok(),
        "a number of bytes",
    )?;
    Ok(layer)
}

impl Resolved {
    /// Resolves each key: `flags` (the values given on the command line, in the file's
    /// shape: `None` where no flag was given), else `environment`, else `config`, else
    /// the default. An environment variable that does not parse is an error.
    pub fn resolve(
        config: &Config,
        environment: &Environment,
        flags: &FileConfig,
    ) -> Result<Self, ConfigError> {
        let envs = env_layer(environment)?;
        let (f, e, c) = (&flags.transfer, &envs.transfer, &config.file.transfer);
        let (fa, ea, ca) = (&flags.audit, &envs.audit, &config.file.audit);
        // The pin and the CA as a pair, from the highest layer that sets either.
        let (pin, ca_file) = [(f, Source::Flag), (e, Source::Env), (c, Source::File)]
            .into_iter()
            .find(|(l, _)| l.relay_pin.is_some() || l.relay_ca.is_some())
            .map_or(
                (
                    Sourced {
                        value: None,
                        source: Source::Default,
                    },
                    Sourced {
                        value: None,
                        source: Source::Default,
                    },
                ),
                |(l, source)| {
                    let from = |set: bool| if set { source } else { Source::Default };
                    (
                        Sourced {
                            value: l.relay_pin.clone(),
                            source: from(l.relay_pin.is_some()),
                        },
                        Sourced {
                            value: l.relay_ca.clone(),
                            source: from(l.relay_ca.is_some()),
                        },
                    )
                },
            );
        let d = crate::session::Timeouts::default();
        let secs = |f: Option<u64>, e: Option<u64>, c: Option<u64>, d: std::time::Duration| {
            pick(f, e, c, d.as_secs())
        };
        macro_rules! key {
            ($name:ident, $default:expr) => {
                pick(f.$name.clone(), e.$name.clone(), c.$name.clone(), $default)
            };
        }
        Ok(Self {
            file: config.path.clone(),
            file_present: config.present,
            relay: pick_opt(f.relay.clone(), e.relay.clone(), c.relay.clone()),
            relay_pin: pin,
            relay_ca: ca_file,
            relay_wait_secs: key!(relay_wait_secs, DEFAULT_RELAY_WAIT_SECS),
            code_wait_secs: key!(code_wait_secs, DEFAULT_CODE_WAIT_SECS),
            out: key!(out, PathBuf::from(DEFAULT_OUT)),
            accept_unknown: key!(accept_unknown, false),
            auto_accept: key!(auto_accept, false),
            overwrite: key!(overwrite, false),
            handshake_timeout_secs: secs(
                f.handshake_timeout_secs,
                e.handshake_timeout_secs,
                c.handshake_timeout_secs,
                d.handshake,
            ),
            offer_timeout_secs: secs(
                f.offer_timeout_secs,
                e.offer_timeout_secs,
                c.offer_timeout_secs,
                d.offer,
            ),
            answer_timeout_secs: secs(
                f.answer_timeout_secs,
                e.answer_timeout_secs,
                c.answer_timeout_secs,
                d.answer,
            ),
            header_timeout_secs: secs(
                f.header_timeout_secs,
                e.header_timeout_secs,
                c.header_timeout_secs,
                d.header,
            ),
            idle_timeout_secs: secs(
                f.idle_timeout_secs,
                e.idle_timeout_secs,
                c.idle_timeout_secs,
                d.idle,
            ),
            max_sessions: key!(max_sessions, DEFAULT_MAX_SESSIONS),
            max_sessions_per_ip: key!(max_sessions_per_ip, DEFAULT_MAX_PER_IP),
            keep_modes: key!(keep_modes, false),
            suite: key!(suite, crate::crypto::suite::SuitePolicy::Auto),
            path: key!(path, crate::transport::path::PathPolicy::Auto),
            post_quantum: key!(post_quantum, crate::crypto::hybrid::PqPolicy::Required),
            part_max_age_days: key!(part_max_age_days, DEFAULT_PART_MAX_AGE_DAYS),
            max_entries: key!(max_entries, crate::transfer::protocol::DEFAULT_MAX_ENTRIES),
            audit_names: pick(fa.names, ea.names, ca.names, NameMode::default()),
            audit_rotate_bytes: pick(
                fa.rotate_bytes,
                ea.rotate_bytes,
                ca.rotate_bytes,
                crate::audit::log::DEFAULT_ROTATE_BYTES,
            ),
            relay_limits_file: config.file.relay.limits.clone().unwrap_or_default(),
            relay_limits_flags: flags.relay.limits.clone().unwrap_or_default(),
        })
    }

    /// The audit options: `audit.names`, whose default is `hash` for a receiving daemon
    /// (a service's output goes to the journal, a second, unencrypted store) and `plain`
    /// otherwise; `audit.rotate_bytes`.
    pub fn audit_options(&self, daemon: bool) -> crate::audit::Options {
        let names = match self.audit_names.source {
            Source::Default if daemon => NameMode::Hash,
            _ => self.audit_names.value,
        };
        crate::audit::Options {
            names,
            rotate_bytes: Some(self.audit_rotate_bytes.value),
        }
    }

    /// The relay's limits: the defaults, then `[relay.limits]` (checked), then the
    /// flags (checked).
    pub fn relay_limits(&self) -> Result<Limits, crate::relay::config::ConfigError> {
        let mut limits = Limits::default();
        self.relay_limits_file.apply(&mut limits);
        limits.check()?;
        self.relay_limits_flags.apply(&mut limits);
        limits.check()?;
        Ok(limits)
    }

    /// Every key with its value as text and its source, in a fixed order (what
    /// `conduit config show` prints).
    pub fn settings(&self) -> Vec<Setting> {
        fn row<T: ToString>(key: &str, v: &Sourced<T>, env: Option<&'static str>) -> Setting {
            Setting {
                key: key.into(),
                value: Some(v.value.to_string()),
                source: v.source,
                env,
            }
        }
        fn row_opt(key: &str, v: &Sourced<Option<String>>, env: Option<&'static str>) -> Setting {
            Setting {
                key: key.into(),
                value: v.value.clone(),
                source: v.source,
                env,
            }
        }
        let path = |p: &Sourced<Option<PathBuf>>| Sourced {
            value: p.value.as_ref().map(|p| p.display().to_string()),
            source: p.source,
        };
        let out = Sourced {
            value: self.out.value.display().to_string(),
            source: self.out.source,
        };
        let names = Sourced {
            value: name_mode(self.audit_names.value),
            source: self.audit_names.source,
        };
        let mut rows = vec![
            row_opt("transfer.relay", &self.relay, Some(env::RELAY)),
            row_opt("transfer.relay_pin", &self.relay_pin, Some(env::RELAY_PIN)),
            row_opt(
                "transfer.relay_ca",
                &path(&self.relay_ca),
                Some(env::RELAY_CA),
            ),
            row(
                "transfer.relay_wait_secs",
                &self.relay_wait_secs,
                Some(env::RELAY_WAIT),
            ),
            row("transfer.code_wait_secs", &self.code_wait_secs, None),
            row("transfer.out", &out, Some(env::OUT)),
            row("transfer.accept_unknown", &self.accept_unknown, None),
            row("transfer.auto_accept", &self.auto_accept, None),
            row("transfer.overwrite", &self.overwrite, None),
            row(
                "transfer.handshake_timeout_secs",
                &self.handshake_timeout_secs,
                None,
            ),
            row(
                "transfer.offer_timeout_secs",
                &self.offer_timeout_secs,
                None,
            ),
            row(
                "transfer.answer_timeout_secs",
                &self.answer_timeout_secs,
                None,
            ),
            row(
                "transfer.header_timeout_secs",
                &self.header_timeout_secs,
                None,
            ),
            row("transfer.idle_timeout_secs", &self.idle_timeout_secs, None),
            row("transfer.max_sessions", &self.max_sessions, None),
            row(
                "transfer.max_sessions_per_ip",
                &self.max_sessions_per_ip,
                None,
            ),
            row("transfer.keep_modes", &self.keep_modes, None),
            row("transfer.suite", &self.suite, None),
            row("transfer.post_quantum", &self.post_quantum, None),
            row("transfer.path", &self.path, None),
            row("transfer.part_max_age_days", &self.part_max_age_days, None),
            row("transfer.max_entries", &self.max_entries, None),
            row("audit.names", &names, Some(env::AUDIT_NAMES)),
            row(
                "audit.rotate_bytes",
                &self.audit_rotate_bytes,
                Some(env::AUDIT_ROTATE_BYTES),
            ),
        ];
        let mut limits = Limits::default();
        self.relay_limits_file.apply(&mut limits);
        self.relay_limits_flags.apply(&mut limits);
        let by_flag = limits.describe(&self.relay_limits_flags);
        let by_file = limits.describe(&self.relay_limits_file);
        for ((key, value, flag), (_, _, file)) in by_flag.into_iter().zip(by_file) {
            rows.push(Setting {
                key: format!("relay.limits.{key}"),
                value: Some(value),
                source: match (flag, file) {
                    (true, _) => Source::Flag,
                    (false, true) => Source::File,
                    (false, false) => Source::Default,
                },
                env: None,
            });
        }
        rows
    }
}

/// The name of a [`NameMode`] as written in the file.
pub fn name_mode(n: NameMode) -> &'static str {
    match n {
        NameMode::Plain => "plain",
        NameMode::Hash => "hash",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(file: FileConfig, vars: &[(&'static str, &str)], flags: FileConfig) -> Resolved {
        let config = Config {
            file,
            ..Config::default()
        };
        let environment = Environment::capture(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        });
        Resolved::resolve(&config, &environment, &flags).unwrap()
    }

    #[test]
    fn each_level_beats_the_ones_below_it() {
        let mut file = FileConfig::default();
        file.transfer.out = Some("file".into());
        file.transfer.relay_wait_secs = Some(1);
        file.audit.names = Some(NameMode::Hash);
        let mut flags = FileConfig::default();
        flags.transfer.out = Some("flag".into());
        let r = resolve(
            file,
            &[(env::OUT, "env"), (env::RELAY_WAIT, "2"), (env::RELAY, "")],
            flags,
        );
        assert_eq!(
            (r.out.value.as_path(), r.out.source),
            (Path::new("flag"), Source::Flag)
        );
        assert_eq!(
            (r.relay_wait_secs.value, r.relay_wait_secs.source),
            (2, Source::Env)
        );
        assert_eq!(
            (r.audit_names.value, r.audit_names.source),
            (NameMode::Hash, Source::File)
        );
        // An empty variable is unset.
        assert_eq!(
            (r.relay.value.clone(), r.relay.source),
            (None, Source::Default)
        );
        // A daemon's default names mode is hash; a set one stays.
        assert_eq!(r.audit_options(true).names, NameMode::Hash);
        let plain = resolve(FileConfig::default(), &[], FileConfig::default());
        assert_eq!(plain.audit_options(false).names, NameMode::Plain);
        assert_eq!(plain.audit_options(true).names, NameMode::Hash);
        let settings = r.settings();
        let out = settings.iter().find(|s| s.key == "transfer.out").unwrap();
        assert_eq!(
            (out.value.as_deref(), out.source),
            (Some("flag"), Source::Flag)
        );
    }

    #[test]
    fn a_variable_that_does_not_parse_is_an_error_naming_it() {
        let environment =
            Environment::capture(|name| (name == env::RELAY_WAIT).then(|| "soon".into()));
        let err = Resolved::resolve(&Config::default(), &environment, &FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CONDUIT_RELAY_WAIT") && err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn relay_limits_flags_beat_the_file_and_show_their_source() {
        let mut file = FileConfig::default();
        file.relay.limits = Some(FileLimits {
            max_sessions: Some(7),
            max_connections: Some(100),
            ..FileLimits::default()
        });
        let mut flags = FileConfig::default();
        flags.relay.limits = Some(FileLimits {
            max_sessions: Some(9),
            ..FileLimits::default()
        });
        let r = resolve(file, &[], flags);
        let l = r.relay_limits().unwrap();
        assert_eq!((l.max_sessions, l.max_connections), (9, 100));
        let settings = r.settings();
        let source = |key: &str| settings.iter().find(|s| s.key == key).unwrap().source;
        assert_eq!(source("relay.limits.max_sessions"), Source::Flag);
        assert_eq!(source("relay.limits.max_connections"), Source::File);
        assert_eq!(source("relay.limits.max_waiting_per_ip"), Source::Default);
    }
}
