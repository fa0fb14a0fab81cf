//! Offers of any size and refusals that are answered: `conduit send` and `conduit
//! receive` as two real processes on loopback (issue 17, items 5, 6 and 7).

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{Pair, conduit, direct_receiver, pair_knowing, text};

fn send(p: &Pair, addr: &str, paths: &[&Path], extra: &[&str]) -> Output {
    conduit(&p.sender)
        .arg("send")
        .args(paths)
        .args(["--to", "lab", "--direct", addr])
        .args(extra)
        .output()
        .unwrap()
}

/// `n` files of 0 to 2 KiB under `root`, 10 per directory, three levels deep.
fn write_many(root: &Path, n: usize) {
    for i in 0..n {
        let dir = root.join(format!(
            "p{}/s{}/d{}",
            i / 10_000,
            i / 1_000 % 10,
            i / 10 % 100
        ));
        if i % 10 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let size = (i * 7919) % 2049;
        let body: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
        std::fs::write(dir.join(format!("f{i}.dcm")), body).unwrap();
    }
}

/// Every regular file under `p`.
fn files_under(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

fn same_tree(a: &Path, b: &Path) {
    let ours = files_under(a);
    for f in &ours {
        let rel = f.strip_prefix(a).unwrap();
        assert_eq!(
            std::fs::read(f).unwrap(),
            std::fs::read(b.join(rel)).unwrap_or_default(),
            "{}",
            rel.display()
        );
    }
    assert_eq!(ours.len(), files_under(b).len());
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The raw records of the audit log in `home` (each line with its `mac`).
fn audit_records(home: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(home.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| json_lines(&std::fs::read_to_string(f).unwrap()))
        .collect()
}

fn last_event<'a>(records: &'a [serde_json::Value], event: &str) -> &'a serde_json::Value {
    records
        .iter()
        .rev()
        .find(|r| r["event"] == event)
        .unwrap_or_else(|| panic!("no {event} record"))
}

/// Peak resident memory (VmHWM) of a running process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Sends `n` files in nested directories (and two empty directories) in one offer and
/// checks that all arrive, that the sender's `file_done` lines are the receipt's, and
/// that each side's receipt record holds the other side's chain head. Returns the
/// receiver's peak RSS in KiB.
fn many_files_arrive(n: usize) -> u64 {
    let p = pair_knowing(true, true);
    let src = p.root.join("study");
    write_many(&src, n);
    std::fs::create_dir_all(src.join("empty/inner")).unwrap();
    std::fs::create_dir_all(src.join("also-empty")).unwrap();
    let inbox = p.root.join("inbox");
    let (mut rx, addr) = direct_receiver(&p, &inbox, &[]);
    let pid = rx.child.id();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let watcher = std::thread::spawn(move || {
        let mut peak = 0;
        while stopped
            .recv_timeout(std::time::Duration::from_millis(50))
            .is_err()
        {
            match vm_hwm_kib(pid) {
                Some(k) => peak = peak.max(k),
                None => break,
            }
        }
        peak
    });
    let out = send(&p, &addr, &[&src], &["--json"]);
    let (status, rout, rerr) = rx.finish();
    let _ = stop.send(());
    let peak = watcher.join().unwrap();
    assert!(out.status.success(), "sender: {}", text(&out.stderr));
    assert!(status.success(), "receiver: {rerr}");
    same_tree(&src, &inbox.join("study"));
    for d in ["empty/inner", "also-empty"] {
        let m = std::fs::symlink_metadata(inbox.join("study").join(d)).unwrap();
        assert!(m.is_dir(), "{d} not recreated");
        assert_eq!(m.permissions().mode() & 0o077, 0, "{d} not private");
    }
    let sent = json_lines(&text(&out.stdout));
    assert_eq!(sent.iter().filter(|e| e["event"] == "file_done").count(), n);
    let offer = json_lines(&rout)
        .into_iter()
        .find(|e| e["event"] == "offer")
        .unwrap();
    assert_eq!(offer["files"], n as u64);
    assert_eq!(offer["dirs"], 2);
    assert_eq!(offer["top_level"], serde_json::json!(["study"]));
    // Each log can be checked against the other.
    let (s_log, r_log) = (audit_records(&p.sender), audit_records(&p.receiver));
    let (s_receipt, r_receipt) = (last_event(&s_log, "receipt"), last_event(&r_log, "receipt"));
    assert_eq!(s_receipt["files"], n as u64);
    assert_eq!(
        s_receipt["peer_head"], r_receipt["mac"],
        "the sender's receipt record holds the receiver's head"
    );
    assert_eq!(
        r_receipt["peer_head"],
        last_event(&s_log, "session_opened")["mac"],
        "the receiver's receipt record holds the sender's head at its offer"
    );
    peak
}

#[test]
fn an_offer_of_2500_files_and_empty_directories_arrives_complete() {
    // 2,500 files: the receipt alone used to be a session message of 80 KiB.
    many_files_arrive(2_500);
}

#[test]
#[ignore = "100,000 files take minutes (about 4 with the release binary on ext4, more in debug) on a shared CI machine; run with --release -- --ignored (figures in the CHANGELOG)"]
fn an_offer_of_100000_tiny_files_arrives_with_the_receivers_memory_bounded() {
    let peak_kib = many_files_arrive(100_000);
    eprintln!("receiver peak RSS (VmHWM): {} MiB", peak_kib / 1024);
    assert!(peak_kib > 0, "the receiver's memory was not measured");
    assert!(peak_kib < 256 * 1024, "receiver peak RSS {peak_kib} KiB");
}

/// Sends and expects a refusal: the sender exits 5 with `sentence` on stderr, the
/// receiver's destination holds only `before`.
fn refused(p: &Pair, inbox: &Path, receiver_flags: &[&str], paths: &[&Path]) -> (String, String) {
    let before = files_under(inbox).len();
    let (mut rx, addr) = direct_receiver(p, inbox, receiver_flags);
    let out = send(p, &addr, paths, &[]);
    // A sender refused at the handshake never authenticated: a one-shot receiver keeps
    // waiting for its real sender (tests/adversarial/hostile_peer.rs), so it is stopped here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while rx.child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if rx.child.try_wait().unwrap().is_none() {
        rx.signal(libc::SIGTERM);
    }
    let (status, _, rerr) = rx.finish();
    assert_eq!(
        out.status.code(),
        Some(5),
        "sender: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(!status.success(), "the receiver accepted: {rerr}");
    assert_eq!(files_under(inbox).len(), before, "something was written");
    (text(&out.stderr), rerr)
}

#[test]
fn an_existing_file_is_refused_with_the_reason_and_the_next_step() {
    let p = pair_knowing(true, true);
    let inbox = p.root.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("report.pdf"), b"theirs").unwrap();
    let src = p.root.join("src");
    std::fs::create_dir_all(src.join("deep/er")).unwrap();
    std::fs::write(src.join("report.pdf"), b"ours").unwrap();
    let (err, _) = refused(&p, &inbox, &[], &[&src.join("report.pdf")]);
    assert!(
        err.contains(
            "lab refused: report.pdf already exists there; they can re-run with --overwrite"
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(inbox.join("report.pdf")).unwrap(), b"theirs");
    // A refused offer leaves no directories behind either.
    std::fs::write(src.join("deep/er/x.txt"), b"x").unwrap();
    let (err, _) = refused(
        &p,
        &inbox,
        &[],
        &[&src.join("deep"), &src.join("report.pdf")],
    );
    assert!(err.contains("report.pdf already exists there"), "{err}");
    assert!(!inbox.join("deep").exists(), "a directory was left behind");
}

#[test]
fn an_unknown_sender_is_refused_and_learns_nothing_about_the_destination() {
    let p = pair_knowing(true, false);
    let inbox = p.root.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("Doe, Jane.pdf"), b"theirs").unwrap();
    let file = p.root.join("Doe, Jane.pdf");
    std::fs::write(&file, b"ours").unwrap();
    // Refused at the handshake: the receiver does not let unknown keys in at all.
    let (err, _) = refused(&p, &inbox, &[], &[&file]);
    assert!(
        err.contains("lab refused: this sender is not in its address book"),
        "{err}"
    );
    assert!(err.contains("conduit peers add"), "{err}");
    // Let in, but its offer is not accepted without --yes: refused before its list is read.
    let (err, rerr) = refused(&p, &inbox, &["--accept-unknown"], &[&file]);
    assert!(
        err.contains("lab refused: this sender is not in its address book"),
        "{err}"
    );
    assert!(rerr.contains("unknown sender"), "{rerr}");
    // With --yes the offer is looked at; that the name exists is not told to a stranger.
    let (err, rerr) = refused(&p, &inbox, &["--accept-unknown", "--yes"], &[&file]);
    assert!(
        err.contains("lab refused: its policy does not allow this offer"),
        "{err}"
    );
    assert!(!err.contains("Doe") && !err.contains("exists"), "{err}");
    assert!(rerr.contains("Doe, Jane.pdf already exists"), "{rerr}");
}

#[test]
fn too_many_files_are_refused_before_the_list_is_read() {
    let p = pair_knowing(true, true);
    let inbox = p.root.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let src = p.root.join("eleven");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..11 {
        std::fs::write(src.join(format!("sub/{i}")), b"x").unwrap();
    }
    let (err, rerr) = refused(&p, &inbox, &["--max-entries", "10"], &[&src]);
    assert!(
        err.contains("lab refused: the offer has more entries than the 10 it accepts at once"),
        "{err}"
    );
    assert!(err.contains("--max-entries"), "{err}");
    assert!(rerr.contains("11 entries"), "{rerr}");
    assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 0);
    // The same limit from conduit.toml.
    std::fs::write(
        p.receiver.join("conduit.toml"),
        "[transfer]\nmax_entries = 10\n",
    )
    .unwrap();
    let (err, _) = refused(&p, &inbox, &[], &[&src]);
    assert!(err.contains("more entries than the 10"), "{err}");
}

#[test]
fn invisible_characters_in_names_are_shown_escaped_in_the_prompt_and_summary() {
    let p = pair_knowing(true, true);
    let inbox = p.root.join("inbox");
    let name = "report\u{200b}.pdf";
    let file = p.root.join(name);
    std::fs::write(&file, b"looks like report.pdf").unwrap();
    let mut child = conduit(&p.receiver)
        .args(["receive", "--listen", "127.0.0.1:0", "--out"])
        .arg(&inbox)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let out = send(&p, &addr, &[&file], &[]);
    assert!(out.status.success(), "sender: {}", text(&out.stderr));
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{err}");
    assert!(inbox.join(name).is_file());
    for (what, shown) in [
        ("prompt", &err),
        ("receiver summary", &rest),
        ("sender summary", &text(&out.stdout)),
    ] {
        assert!(shown.contains("report\\u{200b}.pdf"), "{what}: {shown}");
        assert!(!shown.contains('\u{200b}'), "{what} shows the raw name");
    }
    assert!(err.contains("offer from clinic"), "{err}");
    // A bidirectional override never travels: the sender refuses it, shown escaped.
    let bidi = p.root.join("invoice\u{202e}fdp.exe");
    std::fs::write(&bidi, b"x").unwrap();
    let out = send(&p, "127.0.0.1:9", &[&bidi], &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("invoice\\u{202e}fdp.exe"), "{err}");
    assert!(!err.contains('\u{202e}'), "{err}");
}
