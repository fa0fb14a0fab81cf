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
    /// Check every file of the chain; names the first bad record (exit code 4). With
    /// --expect-head or --expect-records, also that the log still reaches a head kept
    /// elsewhere (exit code 6 when records were cut off its end).
    Verify(VerifyArgs),
    /// Print records, for people (a table) or scripts (--json).
    Show(ShowArgs),
    /// Cut a torn record (left by a crash or a full disk) off the end of the log, and
    /// record the repair; refuses anything that is not a torn last record.
    Repair(RepairArgs),
}

/// Options of `audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// A chain head kept outside the log (printed by `audit verify` and by the daemon at
    /// each start and stop): the log must still hold the record with this MAC.
    #[arg(long, value_name = "HASH", value_parser = verify::parse_head)]
    expect_head: Option<[u8; 32]>,
    /// The log must hold at least this many records.
    #[arg(long, value_name = "N")]
    expect_records: Option<u64>,
}

/// Options of `audit repair`.
#[derive(Debug, Args)]
pub struct RepairArgs {
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
            let expect = verify::Expect {
                head: args.expect_head,
                records: args.expect_records,
            };
            let key = audit::chain_key(&identity);
            match verify::verify_reaching(&dir, &key, expect.head.as_ref())? {
                Ok((valid, head_at)) => {
                    if let Err(why) = verify::check_expected(&valid, head_at, &expect) {
                        if args.json {
                            println!("{}", json!({"ok": false, "valid": valid, "cut_short": why}));
                        }
                        return Err(AuditError::CutShort(why).into());
                    }
                    if args.json {
                        println!(
                            "{}",
                            json!({"ok": true, "valid": valid, "expected_head_at": head_at})
                        );
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
                        if let Some(at) = head_at {
                            println!("the expected head is record {at}");
                        }
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
            if records.is_empty() {
                return nothing_to_show(&dir, &filter);
            }
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

/// `audit show` found no record: says so on stderr (stdout stays empty for scripts),
/// naming the filters that matched nothing, or that the log is empty. Exit code 0: an
/// empty answer is not a failure (a `--since` window may well hold no record).
fn nothing_to_show(dir: &std::path::Path, filter: &verify::Filter) -> anyhow::Result<()> {
    let mut given = Vec::new();
    if let Some(peer) = &filter.peer {
        given.push(format!("--peer {peer}"));
    }
    if let Some(since) = filter.since {
        let at = since
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| since.to_string());
        given.push(format!("--since {at}"));
    }
    if given.is_empty() {
        eprintln!("no audit records yet in {}", dir.display());
    } else {
        eprintln!(
            "no audit record matches {} (`conduit audit show` without filters lists every \
             record; `conduit peers list` the peers' names)",
            given.join(" ")
        );
    }
    Ok(())
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
    if let Some(h) = &r.sha256 {
        parts.push(format!("sha256 {h}"));
    }
    if let Some(why) = &r.reason {
        parts.push(format!("reason: {why}"));
    }
    parts.join("  ")
}
