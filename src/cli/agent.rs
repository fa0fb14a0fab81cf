//! `conduit agent` (run the outbox and inbox rules; `check`, `status`) and `conduit queue`
//! (`list`, `retry`, `cancel`): see docs/AGENT.md.

use std::io::Write;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::agent::config::{AgentConfig, Reach, Senders};
use crate::agent::queue::{Item, Queue};
use crate::cli::Usage;
use crate::config::{Config, FileConfig};
use crate::home::Home;
use crate::peers::AddressBook;

/// `conduit agent`: without a subcommand, runs in the foreground until SIGTERM.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// What to do instead of running.
    #[command(subcommand)]
    command: Option<AgentCommand>,
    /// Print JSON lines (one event per line) while running.
    #[arg(long)]
    json: bool,
    /// Access token the relay asks for.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CONDUIT_RELAY_TOKEN",
        hide_env_values = true
    )]
    relay_token: Option<String>,
}

/// The agent's subcommands.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Validate the [[outbox]] and [[inbox]] rules of conduit.toml and say what the agent
    /// would do (exit code 2 when they are wrong).
    Check(JsonFlag),
    /// Show the queue's counts and its items.
    Status(JsonFlag),
}

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `conduit queue`: the agent's durable queue.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List the delivery items, newest first.
    List(ListArgs),
    /// Attempt a queued item now, or again a failed one whose file is still in the outbox.
    Retry(ItemArgs),
    /// Cancel a queued item (its file goes to failed/ once no recipient waits for it).
    Cancel(ItemArgs),
}

/// Options of `queue list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Most items listed.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

/// An item, by its id or the start of it.
#[derive(Debug, Args)]
pub struct ItemArgs {
    /// The item id (or enough of its start to be unique).
    id: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The checked configuration of `home`; a wrong one is a usage error (exit code 2).
pub(crate) fn checked(home: &Home) -> anyhow::Result<(FileConfig, AddressBook, AgentConfig)> {
    let config = Config::load(home).map_err(|e| Usage(e.to_string()))?;
    let book = AddressBook::load(home)?;
    let agent = AgentConfig::check(&config.file, &book)
        .map_err(|e| Usage(format!("{}: {e}", config.path.display())))?;
    Ok((config.file, book, agent))
}

pub(crate) fn run(home: &Home, args: AgentArgs) -> anyhow::Result<()> {
    match args.command {
        Some(AgentCommand::Check(f)) => check(home, f.json),
        Some(AgentCommand::Status(f)) => status(home, f.json),
        None => crate::cli::agent_run::run(home, args.json, args.relay_token),
    }
}

fn check(home: &Home, json: bool) -> anyhow::Result<()> {
    let (file, _book, agent) = checked(home)?;
    let relay = file.transfer.relay.clone().unwrap_or_default();
    let db = home.path().join(crate::agent::queue::FILE_NAME);
    let mut out = std::io::stdout().lock();
    if json {
        let outboxes: Vec<_> = agent
            .outboxes
            .iter()
            .map(|o| {
                json!({
                    "path": o.path,
                    "exists": o.path.is_dir(),
                    "to": o.to.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                    "via": o.direct.map_or_else(|| format!("relay {relay}"), |a| format!("direct {a}")),
                    "after": o.after.as_str(),
                    "stable_for_secs": o.stable_for.as_secs(),
                    "include": o.globs.0,
                    "exclude": o.globs.1,
                })
            })
            .collect();
        let inboxes: Vec<_> = agent
            .inboxes
            .iter()
            .map(|b| {
                json!({
                    "path": b.path,
                    "exists": b.path.is_dir(),
                    "from": senders(&b.from),
                    "on_conflict": b.on_conflict.as_str(),
                    "on_receive": b.on_receive,
                })
            })
            .collect();
        let receive = match &agent.receive {
            None => None,
            Some(Reach::Relay) => Some(format!("relay {relay}")),
            Some(Reach::Listen(a)) => Some(format!("listen {a}")),
        };
        writeln!(
            out,
            "{}",
            json!({"ok": true, "outboxes": outboxes, "inboxes": inboxes, "receive": receive,
                   "queue": db, "rescan_secs": agent.rescan.as_secs()})
        )?;
        return Ok(());
    }
    writeln!(out, "the configuration is valid; the agent would:")?;
    for o in &agent.outboxes {
        let names: Vec<&str> = o.to.iter().map(|(n, _)| n.as_str()).collect();
        let via = o
            .direct
            .map_or_else(|| format!("relay {relay}"), |a| format!("{a} directly"));
        let missing = if o.path.is_dir() {
            ""
        } else {
            " (does not exist yet: it will be created)"
        };
        writeln!(out, "- watch {}{missing}", o.path.display())?;
        writeln!(
            out,
            "  send each file once it is unchanged for {} s to {} (via {via})",
            o.stable_for.as_secs(),
            names.join(", ")
        )?;
        if !o.globs.0.is_empty() {
            writeln!(out, "  only names matching {}", o.globs.0.join(" "))?;
        }
        if !o.globs.1.is_empty() {
            writeln!(out, "  not names matching {}", o.globs.1.join(" "))?;
        }
        let after = match o.after {
            crate::agent::config::After::Move => "move it into sent/".to_string(),
            crate::agent::config::After::Delete => "delete it".to_string(),
            crate::agent::config::After::Keep => "leave it in place".to_string(),
        };
        writeln!(
            out,
            "  after every recipient's receipt: {after}; a file that cannot be delivered goes to failed/"
        )?;
    }
    for b in &agent.inboxes {
        let missing = if b.path.is_dir() {
            ""
        } else {
            " (does not exist yet: it will be created)"
        };
        writeln!(
            out,
            "- receive from {} into {}{missing}",
            senders(&b.from).join(", "),
            b.path.display()
        )?;
        writeln!(out, "  name conflicts: {}", b.on_conflict.as_str())?;
        if let Some(argv) = &b.on_receive {
            writeln!(
                out,
                "  then run {} (no shell; at most {} s)",
                argv.join(" "),
                b.hook_timeout.as_secs()
            )?;
        }
    }
    match &agent.receive {
        Some(Reach::Relay) => writeln!(out, "- wait for senders at relay {relay}")?,
        Some(Reach::Listen(a)) => writeln!(out, "- listen for senders on {a}")?,
        None => {}
    }
    writeln!(out, "- keep its queue in {}", db.display())?;
    Ok(())
}

fn senders(s: &Senders) -> Vec<String> {
    match s {
        Senders::Any => vec!["any peer in the address book".into()],
        Senders::Named(n) => n.iter().map(|(name, _)| name.clone()).collect(),
    }
}

fn open_queue(home: &Home) -> anyhow::Result<Queue> {
    Queue::open_in(home).context("opening the agent's queue")
}

fn status(home: &Home, json: bool) -> anyhow::Result<()> {
    let q = open_queue(home)?;
    let counts = q.counts()?;
    let items = q.list(1000)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", json!({"counts": counts, "items": items}))?;
        return Ok(());
    }
    writeln!(
        out,
        "queued {}, sending {}, delivered {}, failed {}, cancelled {}; received {}",
        counts.queued,
        counts.sending,
        counts.delivered,
        counts.failed,
        counts.cancelled,
        counts.received
    )?;
    if let Some(age) = counts.oldest_pending_secs {
        writeln!(out, "oldest item waiting: {age} s")?;
    }
    for i in items.iter().filter(|i| !i.state.is_final()) {
        writeln!(out, "{}", line(i))?;
    }
    Ok(())
}

/// One item on one line: id, state, recipient, attempts, name, reason.
fn line(i: &Item) -> String {
    let reason = i
        .reason
        .as_deref()
        .map(|r| format!(" ({})", crate::transfer::paths::escape(r)))
        .unwrap_or_default();
    format!(
        "{}  {:<9}  to {:<12}  attempts {:<3}  {}{reason}",
        i.id,
        i.state.as_str(),
        i.recipient,
        i.attempts,
        crate::transfer::paths::escape(&i.name)
    )
}

pub(crate) fn queue(home: &Home, cmd: QueueCommand) -> anyhow::Result<()> {
    let mut q = open_queue(home)?;
    let mut out = std::io::stdout().lock();
    let (item, json, verb) = match cmd {
        QueueCommand::List(a) => {
            let items = q.list(a.limit)?;
            if a.json {
                writeln!(out, "{}", json!({"items": items}))?;
            } else {
                for i in &items {
                    writeln!(out, "{}", line(i))?;
                }
            }
            return Ok(());
        }
        QueueCommand::Retry(a) => (q.retry_now(&a.id), a.json, "due now"),
        QueueCommand::Cancel(a) => (q.cancel(&a.id), a.json, "cancelled"),
    };
    let item = item.map_err(|e| Usage(e.to_string()))?;
    if item.state == crate::agent::queue::State::Cancelled {
        // On record, like every other fate of an item (the name as the queue holds it).
        if let Ok(identity) = crate::crypto::identity::Identity::load(home) {
            let book = AddressBook::load(home)?;
            let config = crate::cli::resolve(home, &FileConfig::default())?;
            let audit =
                crate::audit::Audit::open(home, &identity, &book, config.audit_options(true));
            let peer = crate::crypto::identity::PublicKey::parse(&item.peer_key).ok();
            // The queue holds the name's keyed hash in names mode hash.
            let name = if audit.names().hides() {
                format!("#{}", item.name)
            } else {
                item.name.clone()
            };
            audit.agent_item(
                crate::audit::record::event::ITEM_CANCELLED,
                &name,
                item.size,
                peer.as_ref(),
                &item.id,
                Some("cancelled by the operator"),
            )?;
        }
    }
    if json {
        writeln!(out, "{}", json!({"item": item}))?;
    } else {
        writeln!(out, "{}: {verb}", item.id)?;
    }
    Ok(())
}
