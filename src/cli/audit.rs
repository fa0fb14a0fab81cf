//! `conduit audit verify` and `conduit audit show`.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::audit::{self, AuditError, verify};
use crate::crypto::identity::Identity;
use crate::home::Home;

/// The audit subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every file of the chain; names the first bad record (exit code 4).
    Verify(VerifyArgs),
    /// Print records, for people (a table) or scripts (--json).
    Show(ShowArgs),
    /// Cut a torn record (left by a crash or a full disk) off the end of the log, and
    /// record the repair; refuses anything that is not a torn last record.
    Repair(VerifyArgs),
}

/// Options of `audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Options of `audit show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Only records at or after this date (2026-11-27, UTC) or RFC 3339 time.
    #[arg(long, value_name = "DATE", value_parser = verify::parse_since)]
    since: Option<time::OffsetDateTime>,
    /// Only records about this peer: its name in the address book, or the start of its
    /// fingerprint.
    #[arg(long, value_name = "NAME")]
    peer: Option<String>,
    /// Print the records as JSON lines.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(home: &Home, cmd: AuditCommand) -> anyhow::Result<()> {
    let dir = audit::dir(home);
    match cmd {
        AuditCommand::Verify(args) => {
            let identity = Identity::load(home)?;
            match verify::verify(&dir, &audit::chain_key(&identity))? {
                Ok(valid) => {
                    if args.json {
                        println!("{}", json!({"ok": true, "valid": valid}));
                    } else if valid.records == 0 {
                        println!("no audit records yet in {}", dir.display());
                    } else {
                        println!(
                            "audit chain valid: {} records in {} file(s), last at {}",
                            valid.records,
                            valid.files,
                            valid.last_ts.as_deref().unwrap_or("?")
                        );
                        println!("head {}", valid.head.as_deref().unwrap_or(""));
                    }
                    Ok(())
                }
                Err(broken) => {
                    if args.json {
                        println!("{}", json!({"ok": false, "broken": broken}));
                    }
                    Err(AuditError::Broken(broken).into())
                }
            }
        }
        AuditCommand::Repair(args) => {
            let identity = Identity::load(home)?;
            let done = audit::repair(home, &identity)?;
            if args.json {
                let (file, cut) = done.clone().unzip();
                println!(
                    "{}",
                    json!({"repaired": done.is_some(), "file": file, "bytes_cut": cut})
                );
            } else {
                match done {
                    Some((file, cut)) => println!(
                        "cut {cut} bytes of a partial record at the end of {file}; the repair is on record"
                    ),
                    None => println!("nothing to repair: the log ends with a complete record"),
                }
            }
            Ok(())
        }
        AuditCommand::Show(args) => {
            let filter = verify::Filter {
                since: args.since,
                peer: args.peer,
            };
            let records = verify::show(&dir, &filter)?;
            let mut out = std::io::stdout().lock();
            for r in &records {
                if args.json {
                    writeln!(out, "{}", serde_json::to_string(r)?)?;
                } else {
                    writeln!(out, "{}", describe(r))?;
                }
            }
            Ok(())
        }
    }
}

/// One line for people: time, number, event, peer, and what the record says.
fn describe(r: &audit::record::Record) -> String {
    let mut parts = vec![format!("{} #{:<5} {:<16}", r.ts, r.seq, r.event)];
    if let Some(role) = &r.role {
        parts.push(role.clone());
    }
    match (&r.peer_name, &r.peer) {
        (Some(n), Some(fp)) => parts.push(format!("peer {n} ({fp})")),
        (None, Some(fp)) => parts.push(format!("peer {fp}")),
        _ => {}
    }
    if let Some(p) = &r.path {
        parts.push(crate::transfer::paths::escape(p));
    }
    if let Some(p) = &r.path_hash {
        parts.push(format!(
            "name-hash {}",
            p.chars().take(16).collect::<String>()
        ));
    }
    if let Some(n) = r.files {
        parts.push(format!("{n} files"));
    }
    if let Some(n) = r.size.or(r.bytes) {
        parts.push(format!("{n} bytes"));
    }
    if let Some(n) = r.from_byte {
        parts.push(format!("from byte {n}"));
    }
    if let Some(h) = &r.blake3 {
        parts.push(format!("blake3 {h}"));
    }
    if let Some(why) = &r.reason {
        parts.push(format!("reason: {why}"));
    }
    parts.join("  ")
}
