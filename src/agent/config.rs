//! The agent's rules in `conduit.toml`: `[agent]`, `[[outbox]]` and `[[inbox]]` as
//! written ([`AgentFile`], [`OutboxFile`], [`InboxFile`]), and checked against the address
//! book and the `[transfer]` settings into an [`AgentConfig`] (docs/AGENT.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::FileConfig;
use crate::crypto::identity::PublicKey;
use crate::peers::AddressBook;

/// Default of `stable_for_secs`: a file is sent once its size and mtime have not changed
/// for this long.
pub const DEFAULT_STABLE_FOR_SECS: u64 = 5;
/// Longest `stable_for_secs` accepted (a day).
pub const MAX_STABLE_FOR_SECS: u64 = 86_400;
/// Default of `[agent] rescan_secs`: every outbox is scanned this often, besides the
/// file-system events (network file systems and missed events).
pub const DEFAULT_RESCAN_SECS: u64 = 30;
/// Default of `on_receive_timeout_secs`.
pub const DEFAULT_HOOK_TIMEOUT_SECS: u64 = 60;
/// Default of `[agent] max_attempts`: a delivery that failed this many times for a
/// passing reason is given up (moved to `failed/`); 0 never gives up.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 0;
/// Default of `[agent] retry_max_secs`: the longest wait between two attempts.
pub const DEFAULT_RETRY_MAX_SECS: u64 = 300;
/// Default of `[agent] sending`: deliveries at once.
pub const DEFAULT_SENDING: u16 = 4;
/// Default of `[agent] receiving`: transfers received at once.
pub const DEFAULT_RECEIVING: u16 = 4;
/// The folder inside an outbox that delivered files move to (`after = "move"`).
pub const SENT_DIR: &str = "sent";
/// The folder inside an outbox that files that cannot be delivered move to.
pub const FAILED_DIR: &str = "failed";

/// `[agent]` as written.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// Receive directly on this UDP address instead of waiting at the relay.
    pub listen: Option<SocketAddr>,
    /// Seconds between two scans of every outbox.
    pub rescan_secs: Option<u64>,
    /// Attempts before a delivery is given up (0: never).
    pub max_attempts: Option<u32>,
    /// Longest wait between two attempts, in seconds.
    pub retry_max_secs: Option<u64>,
    /// Deliveries at once.
    pub sending: Option<u16>,
    /// Transfers received at once.
    pub receiving: Option<u16>,
    /// Serve Prometheus metrics on this local TCP address (`/metrics`, `/healthz`).
    pub metrics: Option<SocketAddr>,
}

impl AgentFile {
    /// Whether nothing is set (then `config show` leaves the table out).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What happens to a source file once every recipient's receipt is in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum After {
    /// Move it into `sent/` inside the outbox.
    #[default]
    Move,
    /// Delete it.
    Delete,
    /// Leave it where it is (it is not sent again while it stays unchanged).
    Keep,
}

impl After {
    /// The name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            After::Move => "move",
            After::Delete => "delete",
            After::Keep => "keep",
        }
    }
}

/// What happens when a received file's name is taken in the inbox.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// Give the new file a free name: `report (1).pdf`, `report (2).pdf`, ...
    #[default]
    Rename,
    /// Refuse the offer (the sender moves the file to its `failed/`).
    Refuse,
    /// Replace the existing file.
    Overwrite,
}

impl OnConflict {
    /// The name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            OnConflict::Rename => "rename",
            OnConflict::Refuse => "refuse",
            OnConflict::Overwrite => "overwrite",
        }
    }
}

/// One `[[outbox]]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxFile {
    /// The folder watched (absolute).
    pub path: PathBuf,
    /// The recipients: peer names of the address book; each gets every file.
    pub to: Vec<String>,
    /// `move` (default), `delete` or `keep`.
    pub after: Option<After>,
    /// Seconds a file's size and mtime must stay unchanged before it is sent.
    pub stable_for_secs: Option<u64>,
    /// Only file names matching one of these globs are sent (default: all).
    pub include: Option<Vec<String>>,
    /// File names matching one of these globs are not sent.
    pub exclude: Option<Vec<String>>,
    /// Send directly to this address (`HOST:PORT`, UDP: a name, an IPv4 address or
    /// `[IPv6]`) instead of through the relay; a name is resolved at each attempt.
    pub direct: Option<String>,
}

/// One `[[inbox]]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InboxFile {
    /// The senders: peer names of the address book, or `"*"` for any peer in it.
    pub from: Vec<String>,
    /// The folder files land in (absolute).
    pub path: PathBuf,
    /// `rename` (default), `refuse` or `overwrite`.
    pub on_conflict: Option<OnConflict>,
    /// A program run after each verified file: its absolute path, then its arguments (the
    /// received file's path is added as the last one). Never run through a shell.
    pub on_receive: Option<Vec<String>>,
    /// Seconds `on_receive` may run before it is killed.
    pub on_receive_timeout_secs: Option<u64>,
}

/// A configuration the agent cannot run with.
#[derive(Debug, Error)]
pub enum AgentConfigError {
    /// A rule is wrong; the message says which and why.
    #[error("{rule}: {message}")]
    Rule {
        /// `[[outbox]] #1 (/srv/out)`, `[agent]`...
        rule: String,
        /// What is wrong.
        message: String,
    },
    /// No rule at all.
    #[error("no [[outbox]], no [[inbox]] rule and no [console]: nothing for the agent to do")]
    Empty,
}

/// A checked outbox rule.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The folder.
    pub path: PathBuf,
    /// The recipients, by name, with their keys.
    pub to: Vec<(String, PublicKey)>,
    /// What happens after delivery.
    pub after: After,
    /// How long a file must be unchanged.
    pub stable_for: Duration,
    /// Names sent (none: all).
    pub include: Option<GlobSet>,
    /// Names not sent.
    pub exclude: Option<GlobSet>,
    /// The include and exclude globs as written (for `agent check`).
    pub globs: (Vec<String>, Vec<String>),
    /// A direct address (`HOST:PORT`, checked), or `None` for the relay.
    pub direct: Option<String>,
    /// Whether the scanner queues what it finds in the folder: false only for the web
    /// console's send folder, whose files the console queues itself, each for the
    /// recipients chosen on its Send page.
    pub scanned: bool,
}

impl Outbox {
    /// Whether a file named `name` (its name in the outbox, no directory) is one to send:
    /// not hidden or temporary (`.*`, `*.part`, `*.tmp`, `~$*`), matching an include glob
    /// if there are any, and no exclude glob.
    pub fn wants(&self, name: &str) -> bool {
        if is_ignored_name(name) {
            return false;
        }
        if self.include.as_ref().is_some_and(|g| !g.is_match(name)) {
            return false;
        }
        !self.exclude.as_ref().is_some_and(|g| g.is_match(name))
    }

    /// The `sent/` folder.
    pub fn sent_dir(&self) -> PathBuf {
        self.path.join(SENT_DIR)
    }

    /// The `failed/` folder.
    pub fn failed_dir(&self) -> PathBuf {
        self.path.join(FAILED_DIR)
    }
}

/// Whether a name is hidden or temporary and never sent: `.*`, `*.part`, `*.tmp`, `~$*`.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.starts_with("~$")
        || name.ends_with(".part")
        || name.ends_with(".tmp")
        || name.is_empty()
}

/// Which senders an inbox takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Senders {
    /// Any peer of the address book (`"*"`).
    Any,
    /// These peers, by name, with their keys.
    Named(Vec<(String, PublicKey)>),
}

/// A checked inbox rule.
#[derive(Debug, Clone)]
pub struct Inbox {
    /// The senders.
    pub from: Senders,
    /// The folder.
    pub path: PathBuf,
    /// Name conflicts.
    pub on_conflict: OnConflict,
    /// The program and its arguments.
    pub on_receive: Option<Vec<String>>,
    /// Its timeout.
    pub hook_timeout: Duration,
}

/// How the agent meets its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Through the relay of `[transfer]`.
    Relay,
    /// Directly on this address (receiving).
    Listen(SocketAddr),
}

/// The whole agent configuration, checked.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The outboxes.
    pub outboxes: Vec<Outbox>,
    /// The inboxes.
    pub inboxes: Vec<Inbox>,
    /// How inboxes receive (`None` without inboxes).
    pub receive: Option<Reach>,
    /// Whether a relay is configured (`[transfer] relay`).
    pub relay: bool,
    /// Rescan interval.
    pub rescan: Duration,
    /// Attempts before giving up (0: never).
    pub max_attempts: u32,
    /// Longest wait between attempts.
    pub retry_max: Duration,
    /// Deliveries at once.
    pub sending: usize,
    /// Transfers received at once.
    pub receiving: usize,
    /// The metrics address, if any.
    pub metrics: Option<SocketAddr>,
    /// The web console's address (`[console] listen`, loopback only), if any.
    pub console: Option<SocketAddr>,
}

impl AgentConfig {
    /// Checks the agent's part of `file` against `book`: every rule names existing peers,
    /// absolute and distinct folders, valid globs, a way to reach its peers.
    pub fn check(file: &FileConfig, book: &AddressBook) -> Result<Self, AgentConfigError> {
        // The console's Send page is an outbox of its own: a console is enough.
        if file.outbox.is_empty() && file.inbox.is_empty() && file.console.listen.is_none() {
            return Err(AgentConfigError::Empty);
        }
        let relay = file
            .transfer
            .relay
            .as_deref()
            .is_some_and(|r| !r.is_empty());
        let agent = &file.agent;
        let agent_rule = |message: String| AgentConfigError::Rule {
            rule: "[agent]".into(),
            message,
        };
        let rescan = agent.rescan_secs.unwrap_or(DEFAULT_RESCAN_SECS);
        if rescan == 0 {
            return Err(agent_rule("rescan_secs must be at least 1".into()));
        }
        let sending = agent.sending.unwrap_or(DEFAULT_SENDING);
        let receiving = agent.receiving.unwrap_or(DEFAULT_RECEIVING);
        if sending == 0 || receiving == 0 {
            return Err(agent_rule(
                "sending and receiving must be at least 1".into(),
            ));
        }
        let retry_max = agent.retry_max_secs.unwrap_or(DEFAULT_RETRY_MAX_SECS);
        if retry_max == 0 {
            return Err(agent_rule("retry_max_secs must be at least 1".into()));
        }
        let mut folders: HashMap<PathBuf, String> = HashMap::new();
        let mut outboxes = Vec::new();
        for (i, o) in file.outbox.iter().enumerate() {
            let rule = format!("[[outbox]] #{} ({})", i + 1, o.path.display());
            let err = |message: String| AgentConfigError::Rule {
                rule: rule.clone(),
                message,
            };
            let path = folder(&o.path).map_err(&err)?;
            if let Some(other) = folders.insert(path.clone(), rule.clone()) {
                return Err(err(format!("the same folder as {other}")));
            }
            if o.to.is_empty() {
                return Err(err("`to` names no recipient".into()));
            }
            let mut to: Vec<(String, PublicKey)> = Vec::new();
            for name in &o.to {
                let peer = book.find_by_name(name).ok_or_else(|| {
                    err(format!(
                        "recipient {name:?} is not in the address book (conduit peers add {name} KEY)"
                    ))
                })?;
                if to.iter().any(|(n, _)| n == name) {
                    return Err(err(format!("recipient {name:?} is named twice")));
                }
                to.push((name.clone(), peer.key));
            }
            let stable = o.stable_for_secs.unwrap_or(DEFAULT_STABLE_FOR_SECS);
            if stable > MAX_STABLE_FOR_SECS {
                return Err(err(format!(
                    "stable_for_secs: at most {MAX_STABLE_FOR_SECS}"
                )));
            }
            let include_text = o.include.clone().unwrap_or_default();
            let exclude_text = o.exclude.clone().unwrap_or_default();
            let include = globs(o.include.as_deref(), "include").map_err(&err)?;
            let exclude = globs(o.exclude.as_deref(), "exclude").map_err(&err)?;
            if let Some(direct) = &o.direct {
                crate::transport::addr::check(direct).map_err(|e| err(format!("direct: {e}")))?;
            }
            if o.direct.is_none() && !relay {
                return Err(err(
                    "no way to reach the recipients: set `direct` here, or `relay` in [transfer]"
                        .into(),
                ));
            }
            outboxes.push(Outbox {
                path,
                to,
                after: o.after.unwrap_or_default(),
                stable_for: Duration::from_secs(stable),
                include,
                exclude,
                globs: (include_text, exclude_text),
                direct: o.direct.clone(),
                scanned: true,
            });
        }
        let mut inboxes = Vec::new();
        let mut taken: HashMap<String, String> = HashMap::new();
        for (i, b) in file.inbox.iter().enumerate() {
            let rule = format!("[[inbox]] #{} ({})", i + 1, b.path.display());
            let err = |message: String| AgentConfigError::Rule {
                rule: rule.clone(),
                message,
            };
            let path = folder(&b.path).map_err(&err)?;
            if let Some(other) = folders.insert(path.clone(), rule.clone()) {
                return Err(err(format!("the same folder as {other}")));
            }
            if b.from.is_empty() {
                return Err(err(
                    "`from` names no sender (use [\"*\"] for any peer)".into()
                ));
            }
            let from = if b.from.iter().any(|n| n == "*") {
                if b.from.len() > 1 {
                    return Err(err("\"*\" stands alone in `from`".into()));
                }
                Senders::Any
            } else {
                let mut named = Vec::new();
                for name in &b.from {
                    let peer = book.find_by_name(name).ok_or_else(|| {
                        err(format!(
                            "sender {name:?} is not in the address book (conduit peers add {name} KEY)"
                        ))
                    })?;
                    named.push((name.clone(), peer.key));
                }
                Senders::Named(named)
            };
            let keys: Vec<String> = match &from {
                Senders::Any => vec!["*".into()],
                Senders::Named(n) => n.iter().map(|(name, _)| name.clone()).collect(),
            };
            for k in keys {
                if let Some(other) = taken.insert(k.clone(), rule.clone()) {
                    return Err(err(format!("sender {k:?} already has an inbox: {other}")));
                }
            }
            if let Some(argv) = &b.on_receive {
                check_hook_argv(argv).map_err(&err)?;
            }
            let timeout = b
                .on_receive_timeout_secs
                .unwrap_or(DEFAULT_HOOK_TIMEOUT_SECS);
            if timeout == 0 {
                return Err(err("on_receive_timeout_secs must be at least 1".into()));
            }
            inboxes.push(Inbox {
                from,
                path,
                on_conflict: b.on_conflict.unwrap_or_default(),
                on_receive: b.on_receive.clone(),
                hook_timeout: Duration::from_secs(timeout),
            });
        }
        let receive = match (inboxes.is_empty(), agent.listen) {
            (true, _) => None,
            (false, Some(addr)) => Some(Reach::Listen(addr)),
            (false, None) if relay => Some(Reach::Relay),
            (false, None) => {
                return Err(agent_rule(
                    "the inboxes need a way to be reached: `listen` here, or `relay` in [transfer]"
                        .into(),
                ));
            }
        };
        let console =
            crate::console::check(&file.console).map_err(|message| AgentConfigError::Rule {
                rule: "[console]".into(),
                message,
            })?;
        Ok(AgentConfig {
            outboxes,
            inboxes,
            receive,
            relay,
            rescan: Duration::from_secs(rescan),
            max_attempts: agent.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            retry_max: Duration::from_secs(retry_max),
            sending: usize::from(sending),
            receiving: usize::from(receiving),
            metrics: agent.metrics,
            console,
        })
    }

    /// The inbox of a sender: the rule naming it, else the `"*"` rule.
    pub fn inbox_for(&self, sender: &PublicKey) -> Option<&Inbox> {
        let named = self.inboxes.iter().find(|b| match &b.from {
            Senders::Named(n) => n.iter().any(|(_, k)| k == sender),
            Senders::Any => false,
        });
        named.or_else(|| self.inboxes.iter().find(|b| b.from == Senders::Any))
    }
}

/// An absolute folder path without `..`, as given (not resolved: it may not exist yet).
fn folder(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err("`path` must be absolute".into());
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err("`path` must not contain `..`".into());
    }
    Ok(path.components().collect())
}

/// A set of name globs (`*` does not cross `/`), or `None` when there are none.
fn globs(list: Option<&[String]>, what: &str) -> Result<Option<GlobSet>, String> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let mut b = GlobSetBuilder::new();
    for g in list {
        let glob = globset::GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("{what} glob {g:?}: {e}"))?;
        b.add(glob);
    }
    b.build().map(Some).map_err(|e| format!("{what}: {e}"))
}

/// An `on_receive` command: an absolute path to a program, then its arguments.
fn check_hook_argv(argv: &[String]) -> Result<(), String> {
    let Some(program) = argv.first() else {
        return Err("on_receive names no program".into());
    };
    if !Path::new(program).is_absolute() {
        return Err(format!(
            "on_receive: {program:?} must be an absolute path (it is never run through a shell)"
        ));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err("on_receive: an argument holds a NUL byte".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::Identity;
    use crate::home::Home;

    fn book() -> (tempfile::TempDir, AddressBook) {
        let dir = tempfile::tempdir().unwrap();
        let mut book = AddressBook::load(&Home::at(dir.path())).unwrap();
        for name in ["clinic-a", "clinic-b", "lab"] {
            book.add(name, Identity::generate().unwrap().public())
                .unwrap();
        }
        (dir, book)
    }

    fn parse(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    const SHAPE: &str = r#"
[transfer]
relay = "relay.example.org:7470"
relay_pin = "00"

[[outbox]]
path = "/srv/conduit/outbox/results"
to = ["clinic-a", "clinic-b"]
after = "move"
stable_for_secs = 5

[[inbox]]
from = ["lab"]
path = "/srv/conduit/inbox/lab"
on_conflict = "rename"
"#;

    #[test]
    fn the_issue_shape_is_accepted() {
        let (_d, book) = book();
        let c = AgentConfig::check(&parse(SHAPE), &book).unwrap();
        assert_eq!(c.outboxes.len(), 1);
        assert_eq!(c.outboxes[0].to.len(), 2);
        assert_eq!(c.outboxes[0].after, After::Move);
        assert_eq!(c.outboxes[0].stable_for, Duration::from_secs(5));
        assert_eq!(c.inboxes[0].on_conflict, OnConflict::Rename);
        assert_eq!(c.receive, Some(Reach::Relay));
        let lab = book.find_by_name("lab").unwrap().key;
        assert!(c.inbox_for(&lab).is_some());
        let a = book.find_by_name("clinic-a").unwrap().key;
        assert!(c.inbox_for(&a).is_none());
    }

    #[test]
    fn hidden_and_temporary_names_are_never_sent() {
        let (_d, book) = book();
        let text = SHAPE.replace(
            "stable_for_secs = 5",
            "stable_for_secs = 5\ninclude = [\"*.pdf\", \"*.hl7\"]\nexclude = [\"draft-*\"]",
        );
        let c = AgentConfig::check(&parse(&text), &book).unwrap();
        let o = &c.outboxes[0];
        for name in [
            ".x.pdf",
            "a.pdf.part",
            "a.tmp",
            "~$a.pdf",
            "a.doc",
            "draft-1.pdf",
        ] {
            assert!(!o.wants(name), "{name}");
        }
        for name in ["a.pdf", "b.hl7", "r draft-1.pdf"] {
            assert!(o.wants(name), "{name}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let (_d, book) = book();
        let cases = [
            (SHAPE.replace("\"clinic-b\"", "\"clinic-z\""), "clinic-z"),
            (
                SHAPE.replace("/srv/conduit/outbox/results", "rel/out"),
                "absolute",
            ),
            (SHAPE.replace("[\"lab\"]", "[\"nobody\"]"), "nobody"),
            (
                SHAPE.replace("[\"lab\"]", "[\"*\", \"lab\"]"),
                "stands alone",
            ),
            (
                SHAPE.replace("/srv/conduit/inbox/lab", "/srv/conduit/outbox/results"),
                "same folder",
            ),
            (
                SHAPE.replace("relay = \"relay.example.org:7470\"\n", ""),
                "set `direct` here",
            ),
            (
                SHAPE.replace(
                    "stable_for_secs = 5",
                    "stable_for_secs = 5\ninclude = [\"[\"]",
                ),
                "include glob",
            ),
            (
                SHAPE.replace("on_conflict = \"rename\"", "on_receive = [\"hook.sh\"]"),
                "absolute",
            ),
        ];
        for (text, needle) in cases {
            let e = AgentConfig::check(&parse(&text), &book)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let e = AgentConfig::check(&parse("[transfer]\n"), &book).unwrap_err();
        assert!(matches!(e, AgentConfigError::Empty));
        assert!(
            toml::from_str::<FileConfig>(&SHAPE.replace("after = \"move\"", "after = \"copy\""))
                .is_err()
        );
    }
}
