//! `conduit agent` in the foreground: the configuration resolved once, the agent run
//! until SIGTERM or Ctrl-C, its events printed (human lines, or JSON lines with --json).

use std::sync::Arc;

use serde_json::json;

use crate::agent::run::{Agent, AgentEvent};
use crate::audit::Audit;
use crate::cli::transfer::{RelayFlags, runtime, shutdown_signal, timeouts};
use crate::config::FileConfig;
use crate::crypto::identity::Identity;
use crate::home::Home;

pub(crate) fn run(home: &Home, json: bool, token: Option<String>) -> anyhow::Result<()> {
    let identity = Identity::load(home)?;
    let (_file, book, config) = crate::cli::agent::checked(home)?;
    let resolved = crate::cli::resolve(home, &FileConfig::default())?;
    let relay = if config.relay {
        RelayFlags::token_only(token).options(&resolved)?
    } else {
        None
    };
    // A daemon: names hashed in the audit trail and the queue unless set otherwise.
    let audit = Audit::open(home, &identity, &book, resolved.audit_options(true));
    let events: crate::agent::run::AgentEvents = Arc::new(move |e: AgentEvent| {
        if json {
            println!("{}", json!(e));
        } else {
            println!("{}", human(&e));
        }
    });
    let agent = Agent {
        identity,
        book,
        config,
        relay,
        timeouts: timeouts(&resolved)?,
        audit,
        queue_path: {
            crate::fsutil::private_dir(home.path())?;
            home.path().join(crate::agent::queue::FILE_NAME)
        },
        events,
    };
    let rt = runtime()?;
    rt.block_on(async { agent.run(shutdown_signal()).await })?;
    Ok(())
}

/// One event for a person.
fn human(e: &AgentEvent) -> String {
    use crate::transfer::paths::escape;
    match e {
        AgentEvent::Started {
            outboxes,
            inboxes,
            listen,
            metrics,
        } => {
            let mut at = listen
                .as_ref()
                .map(|a| format!("; listening on {a}"))
                .unwrap_or_default();
            if let Some(m) = metrics {
                at.push_str(&format!("; metrics on http://{m}/metrics"));
            }
            format!(
                "agent running: {outboxes} outbox(es), {inboxes} inbox(es){at}; SIGTERM or Ctrl-C to stop"
            )
        }
        AgentEvent::Queued { item, name, to } => {
            format!("queued {} for {to} (item {item})", escape(name))
        }
        AgentEvent::Delivered {
            name, to, repeat, ..
        } => {
            let again = if *repeat { " (it had it already)" } else { "" };
            format!("delivered {} to {to}{again}", escape(name))
        }
        AgentEvent::Retry {
            to,
            reason,
            in_secs,
            ..
        } => format!("{to}: {}; retrying in {in_secs:.0} s", escape(reason)),
        AgentEvent::Failed {
            name, to, reason, ..
        } => {
            format!("gave up on {} for {to}: {}", escape(name), escape(reason))
        }
        AgentEvent::FileDone { name, outcome } => format!("{}: {outcome}", escape(name)),
        AgentEvent::Received {
            from, name, repeat, ..
        } => {
            if *repeat {
                format!(
                    "{from} sent {} again: answered with the original receipt",
                    escape(name)
                )
            } else {
                format!("received {} from {from}", escape(name))
            }
        }
        AgentEvent::Hook {
            name,
            status,
            millis,
        } => format!("on_receive for {}: {status} ({millis} ms)", escape(name)),
        AgentEvent::Warning { message } => format!("warning: {}", escape(message)),
        AgentEvent::Stopped => "agent stopped; every queued item resumes at the next start".into(),
    }
}
