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
    crate::cli::init::install_fips_identity(home)?;
    let (_file, book, config) = crate::cli::agent::checked(home)?;
    let resolved = crate::cli::resolve(home, &FileConfig::default())?;
    let direct_only = resolved.path.value == crate::transport::path::PathPolicy::Direct;
    if config.relay && direct_only {
        eprintln!(
            "warning: transfer.path is direct: the agent uses no relay (only outboxes with an address send, and it receives only on its listen address)"
        );
    }
    let relay = if config.relay && !direct_only {
        RelayFlags::token_only(token).options(&resolved)?
    } else {
        None
    };
    // A daemon: names hashed in the audit trail and the queue unless set otherwise.
    let options = resolved.audit_options(true);
    let hashed = options.names == crate::audit::NameMode::Hash;
    let audit = Audit::open(home, &identity, &book, options);
    let events: crate::agent::run::AgentEvents = Arc::new(move |e: AgentEvent| {
        if json {
            println!("{}", json!(e));
        } else {
            println!("{}", human(&e, hashed));
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

/// One event for a person. In names mode hash a name is its keyed hash, shown as `#`
/// and its first 16 hex digits (as `conduit audit show` does).
fn human(e: &AgentEvent, hashed: bool) -> String {
    use crate::transfer::paths::escape;
    let shown = |name: &str| {
        if hashed {
            format!("#{}", name.get(..16).unwrap_or(name))
        } else {
            escape(name)
        }
    };
    match e {
        AgentEvent::Started {
            outboxes,
            inboxes,
            listen,
            metrics,
            console,
        } => {
            let mut at = listen
                .as_ref()
                .map(|a| format!("; listening on {a}"))
                .unwrap_or_default();
            if let Some(m) = metrics {
                at.push_str(&format!("; metrics on http://{m}/metrics"));
            }
            if let Some(c) = console {
                at.push_str(&format!(
                    "; console on http://{c} (`conduit console url` to log in)"
                ));
            }
            format!(
                "agent running: {outboxes} outbox(es), {inboxes} inbox(es){at}; SIGTERM or Ctrl-C to stop"
            )
        }
        AgentEvent::Queued { item, name, to } => {
            format!("queued {} for {to} (item {item})", shown(name))
        }
        AgentEvent::Delivered {
            name, to, repeat, ..
        } => {
            let again = if *repeat { " (it had it already)" } else { "" };
            format!("delivered {} to {to}{again}", shown(name))
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
            format!("gave up on {} for {to}: {}", shown(name), escape(reason))
        }
        AgentEvent::FileDone { name, outcome } => format!("{}: {outcome}", shown(name)),
        AgentEvent::Received {
            from, name, repeat, ..
        } => {
            if *repeat {
                format!(
                    "{from} sent {} again: answered with the original receipt",
                    shown(name)
                )
            } else {
                format!("received {} from {from}", shown(name))
            }
        }
        AgentEvent::Hook {
            name,
            status,
            millis,
        } => format!("on_receive for {}: {status} ({millis} ms)", shown(name)),
        AgentEvent::Warning { message } => format!("warning: {}", escape(message)),
        AgentEvent::Stopped => "agent stopped; every queued item resumes at the next start".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_person_sees_a_short_hash_in_names_mode_hash_and_an_escaped_name_otherwise() {
        let e = AgentEvent::Delivered {
            item: "00".into(),
            name: "ab".repeat(32),
            to: "clinic-a".into(),
            hash: phi_conduit::crypto::file_hash::FileHash::blake3(b"cd"),
            repeat: true,
        };
        assert_eq!(
            human(&e, true),
            format!(
                "delivered #{} to clinic-a (it had it already)",
                "ab".repeat(8)
            )
        );
        let e = AgentEvent::FileDone {
            name: "Doe\u{1b}[31m.pdf".into(),
            outcome: "sent",
        };
        let line = human(&e, false);
        assert!(
            !line.contains('\u{1b}') && line.starts_with("Doe"),
            "{line}"
        );
    }
}
