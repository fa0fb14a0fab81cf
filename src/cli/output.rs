//! What `send` and `receive` print: events (JSON lines, or the offer and a progress bar
//! for people), the summary, the question at the terminal; file names shown as the
//! names mode says.

use std::sync::Arc;

use serde_json::json;

use crate::audit::names::Names;
use crate::peers::AddressBook;
use crate::transfer::source;
use crate::transfer::{Event, Events, Summary};

/// How a command shows what happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// JSON lines on stdout.
    Json,
    /// For people: the offer on stderr, a progress bar when stderr is a terminal.
    Human,
    /// Only errors and the summary.
    Quiet,
}

impl Output {
    pub(crate) fn of(json: bool, quiet: bool) -> Self {
        match (json, quiet) {
            (true, _) => Output::Json,
            (false, true) => Output::Quiet,
            (false, false) => Output::Human,
        }
    }
}

/// Prints transfer events: JSON lines with `--json`; otherwise the offer (what will land
/// where, from whom) on stderr and, on a terminal, a progress bar with rate and ETA.
/// Names are shown by `names` (hashed in names mode `hash`).
pub(crate) fn events(out: Output, book: &AddressBook) -> Events {
    let peer_names: std::collections::HashMap<String, String> = book
        .peers()
        .iter()
        .map(|p| (p.key.to_string(), p.name.clone()))
        .collect();
    let bar: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();
    // `shown` shows file names (the transfer's); `names` stays the peers' names.
    let names = peer_names;
    Arc::new(move |shown: &Names, e| match (out, e) {
        (
            Output::Json,
            Event::Offer {
                peer,
                files,
                dirs,
                total,
                top_level,
                top_level_count,
            },
        ) => {
            let top_level: Vec<String> = top_level.iter().map(|n| shown.show(n)).collect();
            println!(
                "{}",
                json!({"event": "offer", "peer": peer.fingerprint().to_string(), "peer_name": names.get(&peer.to_string()), "files": files, "dirs": dirs, "bytes": total, "top_level": top_level, "top_level_count": top_level_count, "names": names_mode(shown)})
            );
        }
        (
            Output::Human,
            Event::Offer {
                peer,
                files,
                dirs,
                total,
                top_level,
                top_level_count,
            },
        ) => {
            let top_level: Vec<String> = top_level.iter().map(|n| shown.tag(n)).collect();
            let offer = Event::Offer {
                peer,
                files,
                dirs,
                total,
                top_level,
                top_level_count,
            };
            eprintln!("{}", describe_offer(&names, &offer));
        }
        (Output::Json, Event::Progress { bytes, total }) => {
            println!(
                "{}",
                json!({"event": "progress", "bytes": bytes, "total": total})
            );
        }
        (Output::Human, Event::Progress { bytes, total }) => {
            // A resumed transfer (or the first event, some way in) starts part way: its
            // rate and ETA count from there.
            let b = bar.get_or_init(|| progress_bar(total, bytes));
            b.set_position(bytes);
            if bytes >= total {
                b.finish_and_clear();
            }
        }
        (Output::Json, Event::FileDone { path, size, hash }) => {
            println!(
                "{}",
                json!({"event": "file_done", "path": shown.show(&path), "size": size, hash.alg().name(): hash.to_hex()})
            );
        }
        (Output::Json, Event::Warning { path, message }) => {
            // The path as the other events show it; the message redacted as well, should
            // a name have found its way into it.
            let path = path.map(|p| shown.show(&p));
            let message = shown.redact(&message);
            println!(
                "{}",
                json!({"event": "warning", "path": path, "message": message})
            );
        }
        (Output::Human | Output::Quiet, Event::Warning { path, message }) => {
            let message = shown.redact(&message);
            match path {
                Some(p) => eprintln!("warning: {}: {message}", shown.tag(&p)),
                None => eprintln!("warning: {message}"),
            }
        }
        (Output::Json, Event::Path { path, via, at }) => {
            println!(
                "{}",
                json!({"event": "path", "path": path.name(), "address": via.to_string(), "at": rfc3339(at)})
            );
        }
        (Output::Human, Event::Path { path, via, .. }) => {
            let line = match path {
                crate::transport::path::PathKind::Direct => format!("path: direct to {via}"),
                crate::transport::path::PathKind::Relayed => {
                    format!("path: through the relay {via}")
                }
            };
            match bar.get() {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            }
        }
        (Output::Human, Event::FileDone { path, .. }) => {
            if let Some(b) = bar.get() {
                b.set_message(shown.tag(&path));
            }
        }
        _ => {}
    })
}

/// `at` as an RFC 3339 UTC timestamp (as the audit records write them).
fn rfc3339(at: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A [`SourceError`](source::SourceError) for the user. In names mode hash only the
/// command-line arguments were learnt, not the names found below them, so an error of
/// the walk is shown by its kind and the keyed-hash tag of the whole path it is about.
pub(crate) fn source_error_shown(
    names: &crate::audit::names::Names,
    e: source::SourceError,
) -> anyhow::Error {
    use source::SourceError;
    if !names.hides() {
        return e.into();
    }
    let (path, what) = match &e {
        SourceError::NotRegular(p) => (
            p,
            "is not a regular file or directory (devices, FIFOs and sockets are refused)"
                .to_string(),
        ),
        SourceError::BadName(p, _) => (p, "has a name the receiver would refuse".to_string()),
        SourceError::Io { path, source } => (path, format!("cannot be read ({})", source.kind())),
        SourceError::Empty => return e.into(),
    };
    let text = format!("{} {what}", names.tag(path));
    super::Redacted {
        text,
        inner: e.into(),
    }
    .into()
}

/// A progress bar on stderr (drawn only when stderr is a terminal), at `start` of
/// `total` bytes: "[bar] 12.0 MiB/256.0 MiB 98.3 MiB/s ETA 2s name". The rate counts the
/// bytes moved since the bar appeared, and only after half a second (before, one jump
/// of the position would read as TiB/s); the ETA follows from it.
fn progress_bar(total: u64, start: u64) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    b.set_position(start);
    let rate = move |s: &indicatif::ProgressState| {
        let secs = s.elapsed().as_secs_f64();
        let moved = s.pos().saturating_sub(start);
        (secs >= 0.5 && moved > 0).then(|| moved as f64 / secs)
    };
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {done}/{all} {rate}{eta} {wide_msg}")
    {
        let style = style
            .with_key(
                "done",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}", size(s.pos()));
                },
            )
            .with_key(
                "all",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}", size(s.len().unwrap_or(0)));
                },
            )
            .with_key(
                "rate",
                move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    if let Some(r) = rate(s) {
                        let _ = write!(w, "{}/s", size(r as u64));
                    }
                },
            )
            .with_key(
                "eta",
                move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    if let Some(r) = rate(s) {
                        let left = s.len().unwrap_or(0).saturating_sub(s.pos()) as f64 / r;
                        let left = std::time::Duration::from_secs(left.min(1e7) as u64);
                        let _ = write!(w, " ETA {}", indicatif::HumanDuration(left));
                    }
                },
            );
        b.set_style(style);
    }
    b
}

/// "offer from NAME (fingerprint): 100000 files and 2 empty folders, 1.2 GiB in a, b, c
/// and 4 more" (names escaped by the receiver; a big offer stays one line).
fn describe_offer(names: &std::collections::HashMap<String, String>, offer: &Event) -> String {
    let Event::Offer {
        peer,
        files,
        dirs,
        total,
        top_level,
        top_level_count,
    } = offer
    else {
        return String::new();
    };
    let who = match names.get(&peer.to_string()) {
        Some(n) => format!("{n} ({})", peer.fingerprint()),
        None => format!("UNKNOWN sender {}", peer.fingerprint()),
    };
    let shown: Vec<&str> = top_level.iter().take(10).map(String::as_str).collect();
    let more = match top_level_count.saturating_sub(shown.len() as u64) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let folders = match dirs {
        0 => String::new(),
        &n => format!(" and {}", count(n, "empty folder", "empty folders")),
    };
    format!(
        "offer from {who}: {}{folders}, {} in {}{more}",
        count(*files, "file", "files"),
        size(*total),
        shown.join(", ")
    )
}

/// "1 file", "2 files", "0 files".
pub(crate) fn count(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// A size for people (see [`crate::transfer::sentences::size`]).
pub(crate) fn size(bytes: u64) -> String {
    crate::transfer::sentences::size(bytes)
}

/// Shortest transfer whose rate is shown: below it (or below [`MIN_RATE_BYTES`]) the
/// clock says more about the start-up than about the network, and a rate like
/// "173 GiB/s" for a tiny file would mislead.
const MIN_RATE_SECONDS: f64 = 0.1;
/// Fewest bytes whose rate is shown (see [`MIN_RATE_SECONDS`]).
const MIN_RATE_BYTES: u64 = 64 * 1024;

/// `bytes` in `seconds` as a rate for people ("12.3 MiB/s"), or `None` when the
/// transfer was too short or too small for the figure to mean anything.
pub(crate) fn rate(bytes: u64, seconds: f64) -> Option<String> {
    if seconds.is_nan() || seconds < MIN_RATE_SECONDS || bytes < MIN_RATE_BYTES {
        return None;
    }
    let per_second = (bytes as f64 / seconds).min(u64::MAX as f64) as u64;
    Some(format!("{}/s", size(per_second)))
}

/// Asks at the terminal whether to accept an offer (the offer itself, with the sender,
/// the count, the size and the top-level names, was just printed) into `dest` (shown as
/// given: the caller passes the absolute path).
pub(crate) fn ask_at_terminal(dest: &std::path::Path) -> bool {
    let dest = dest.display().to_string();
    eprint!(
        "accept into {}? [y/N] ",
        crate::transfer::paths::escape(&dest)
    );
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
}

/// `plain` or `hash`: how the names in an event are shown.
fn names_mode(names: &Names) -> &'static str {
    if names.hides() { "hash" } else { "plain" }
}

/// Prints the summary of a transfer (nothing with `--quiet`: success is the exit code);
/// file names are shown by `names`.
pub(crate) fn report(what: &str, s: &Summary, out: Output, names: &Names) {
    // The rate counts the bytes that crossed the network in this run.
    let crossed = s.bytes.saturating_sub(s.resumed);
    let mbps = crossed as f64 / s.seconds.max(1e-9) / 1e6;
    if out == Output::Quiet {
        return;
    }
    if out == Output::Json {
        // Written file by file: a summary of 100,000 files as one JSON value would take
        // more memory than the whole transfer.
        let head = json!({"event": "done", "bytes": s.bytes, "resumed_bytes": s.resumed, "seconds": s.seconds, "suite": s.suite.name(), "path": s.path.name(), "mbps": mbps, "cpu_s": crate::bench::proc::cpu_seconds(None), "peer": s.peer.fingerprint().to_string(), "names": names_mode(names)});
        let head = head.to_string();
        let mut w = std::io::BufWriter::new(std::io::stdout().lock());
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            w.write_all(head.strip_suffix('}').unwrap_or(&head).as_bytes())?;
            w.write_all(b",\"files\":[")?;
            for (i, (p, size, h)) in s.files.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                let one = json!({"path": names.show(&p.to_string()), "size": size, h.alg().name(): h.to_hex()});
                serde_json::to_writer(&mut w, &one)?;
            }
            w.write_all(b"]}\n")?;
            w.flush()
        })();
        if let Err(e) = written {
            eprintln!("warning: summary not written: {e}");
        }
    } else {
        let shown_rate = rate(crossed, s.seconds)
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        println!(
            "{what} {}, {} in {:.2} s{shown_rate}, peer {}, {}",
            count(s.files.len() as u64, "file", "files"),
            size(s.bytes),
            s.seconds,
            s.peer.fingerprint(),
            s.path.name()
        );
        if s.resumed > 0 {
            println!(
                "  resumed: {} were already at the receiver; {} crossed the network{}",
                size(s.resumed),
                size(crossed),
                if shown_rate.is_empty() {
                    ""
                } else {
                    " (the rate counts these)"
                }
            );
        }
        for (p, bytes, h) in &s.files {
            println!("  {}  {}  {h}", names.tag(&p.to_string()), size(*bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_in_binary_units_with_one_decimal() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1), "1 byte");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(size(12 * 1024 * 1024 + 100_000), "12.1 MiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
        assert_eq!(size(3 << 40), "3.0 TiB");
        assert_eq!(size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn counts_have_their_plural() {
        assert_eq!(count(0, "file", "files"), "0 files");
        assert_eq!(count(1, "file", "files"), "1 file");
        assert_eq!(count(2, "file", "files"), "2 files");
    }

    #[test]
    fn no_rate_for_a_tiny_or_instant_transfer() {
        // 12 bytes in 70 ns would be "160 MiB/s"; 10 MiB in 1 ms "9.8 GiB/s".
        assert_eq!(rate(12, 0.000_000_07), None);
        assert_eq!(rate(10 << 20, 0.001), None);
        assert_eq!(rate(1000, 5.0), None);
        assert_eq!(rate(10 << 20, f64::NAN), None);
        assert_eq!(rate(10 << 20, 2.0).as_deref(), Some("5.0 MiB/s"));
        assert_eq!(rate(3 << 30, 1.5).as_deref(), Some("2.0 GiB/s"));
    }
}
