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
            let b = bar.get_or_init(|| progress_bar(total));
            b.set_position(bytes);
            if bytes >= total {
                b.finish_and_clear();
            }
        }
        (Output::Json, Event::FileDone { path, size, blake3 }) => {
            println!(
                "{}",
                json!({"event": "file_done", "path": shown.show(&path), "size": size, "blake3": blake3.to_hex().to_string()})
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
        (Output::Human, Event::FileDone { path, .. }) => {
            if let Some(b) = bar.get() {
                b.set_message(shown.tag(&path));
            }
        }
        _ => {}
    })
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

/// A progress bar on stderr (drawn only when stderr is a terminal).
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}",
    ) {
        b.set_style(style);
    }
    b
}

/// "offer from NAME (fingerprint): 100000 files and 2 empty folders, 1.2 GiB (1234 bytes)
/// in a, b, c and 4 more" (names escaped by the receiver; a big offer stays one line).
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
    let plural = |n: u64, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let folders = match dirs {
        0 => String::new(),
        &n => format!(" and {}", plural(n, "empty folder", "empty folders")),
    };
    format!(
        "offer from {who}: {}{folders}, {} ({total} bytes) in {}{more}",
        plural(*files, "file", "files"),
        indicatif::BinaryBytes(*total),
        shown.join(", ")
    )
}

/// Asks at the terminal whether to accept an offer (the offer itself was just printed).
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

/// Prints the summary of a transfer; file names are shown by `names`.
pub(crate) fn report(what: &str, s: &Summary, json: bool, names: &Names) {
    // The rate counts the bytes that crossed the network in this run.
    let mbps = s.bytes.saturating_sub(s.resumed) as f64 / s.seconds.max(1e-9) / 1e6;
    if json {
        // Written file by file: a summary of 100,000 files as one JSON value would take
        // more memory than the whole transfer.
        let head = json!({"event": "done", "bytes": s.bytes, "resumed_bytes": s.resumed, "seconds": s.seconds, "suite": s.suite.name(), "mbps": mbps, "cpu_s": crate::bench::proc::cpu_seconds(None), "peer": s.peer.fingerprint().to_string(), "names": names_mode(names)});
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
                let one = json!({"path": names.show(&p.to_string()), "size": size, "blake3": h.to_hex().to_string()});
                serde_json::to_writer(&mut w, &one)?;
            }
            w.write_all(b"]}\n")?;
            w.flush()
        })();
        if let Err(e) = written {
            eprintln!("warning: summary not written: {e}");
        }
    } else {
        println!(
            "{what} {} files, {} bytes in {:.2} s ({mbps:.1} MB/s), peer {}",
            s.files.len(),
            s.bytes,
            s.seconds,
            s.peer.fingerprint()
        );
        if s.resumed > 0 {
            println!(
                "  resumed: {} bytes were already at the receiver",
                s.resumed
            );
        }
        for (p, size, h) in &s.files {
            println!(
                "  {}  {size} bytes  blake3 {}",
                names.tag(&p.to_string()),
                h.to_hex()
            );
        }
    }
}
