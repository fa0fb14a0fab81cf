//! The audit trail (45 CFR 164.312(b)): real transfers between `conduit` processes leave a
//! chain that `conduit audit verify` accepts on both sides, and every kind of tampering
//! (an edited field, a deleted record, two records swapped, a truncated tail, a record
//! forged without the key, a file of the rotation removed) is detected and named.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Pair, conduit, direct_receiver, mount_tmpfs, pair_knowing, text, umount};
use serde_json::Value;

fn audit_dir(home: &Path) -> PathBuf {
    home.join("audit")
}

/// `conduit audit verify --json` in `home`: the exit code and the JSON result.
fn verify(home: &Path) -> (i32, Value) {
    let out = conduit(home)
        .args(["audit", "verify", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "stdout {:?} stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out.status.code().unwrap(), v)
}

/// The records of `home`, from `conduit audit show --json`.
fn records(home: &Path, extra: &[&str]) -> Vec<Value> {
    let out = conduit(home)
        .args(["audit", "show", "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    common::events(&text(&out.stdout))
}

fn send(p: &Pair, addr: &str, paths: &[&Path], extra: &[&str]) -> Output {
    conduit(&p.sender)
        .arg("send")
        .args(paths)
        .args(["--to", "lab", "--direct", addr, "--json"])
        .args(extra)
        .output()
        .unwrap()
}

/// One direct transfer of `files` (name, bytes) from a fresh source folder; returns the
/// output folder.
fn transfer(p: &Pair, tag: &str, files: &[(&str, &[u8])], rx_extra: &[&str]) -> PathBuf {
    let src = p.root.join(format!("src-{tag}"));
    std::fs::create_dir_all(&src).unwrap();
    let paths: Vec<PathBuf> = files
        .iter()
        .map(|(name, data)| {
            let f = src.join(name);
            std::fs::write(&f, data).unwrap();
            f
        })
        .collect();
    let out = p.root.join(format!("out-{tag}"));
    std::fs::create_dir_all(&out).unwrap();
    let (mut rx, addr) = direct_receiver(p, &out, rx_extra);
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let s = send(p, &addr, &refs, &[]);
    assert!(s.status.success(), "{}", text(&s.stderr));
    let (status, _, err) = rx.finish();
    assert!(status.success(), "{err}");
    out
}

/// The log's lines, all files in order, as (file, lines).
fn log_files(home: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(audit_dir(home))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let t = std::fs::read_to_string(&f).unwrap();
            let lines = t.lines().map(str::to_string).collect();
            (f, lines)
        })
        .collect()
}

fn write_lines(file: &Path, lines: &[String]) {
    let mut t = lines.join("\n");
    t.push('\n');
    std::fs::write(file, t).unwrap();
}

/// Asserts that verification fails with exit code 4 and names record `seq`.
fn assert_broken_at(home: &Path, seq: u64, what: &str) -> String {
    let (code, v) = verify(home);
    assert_eq!(code, 4, "{what}: {v}");
    assert_eq!(v["ok"], false, "{what}");
    assert_eq!(v["broken"]["record"], seq, "{what}: {v}");
    let out = conduit(home).args(["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let msg = text(&out.stderr);
    assert!(msg.contains(&format!("record {seq} ")), "{what}: {msg}");
    v["broken"]["reason"].as_str().unwrap().to_string()
}

/// A copy of a home (identity, address book, audit log) to tamper with.
fn copy_home(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_direct_transfer_leaves_valid_chains_and_one_changed_character_is_named() {
    let p = pair_knowing(true, true);
    let out = transfer(
        &p,
        "a",
        &[("referral.pdf", b"referral"), ("labs.csv", b"a,b\n1,2\n")],
        &[],
    );
    assert!(out.join("referral.pdf").exists());
    for home in [&p.sender, &p.receiver] {
        let (code, v) = verify(home);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["ok"], true);
    }
    let sent = records(&p.sender, &[]);
    let got = records(&p.receiver, &[]);
    let events = |r: &[Value]| -> Vec<String> {
        r.iter()
            .map(|x| x["event"].as_str().unwrap().to_string())
            .collect()
    };
    for (side, r) in [("send", &sent), ("receive", &got)] {
        let e = events(r);
        assert_eq!(e[0], "log_created");
        assert_eq!(e[1], "session_opened", "{side}");
        assert_eq!(e[2], "offer_accepted", "{side}");
        assert_eq!(e.iter().filter(|x| *x == "file_completed").count(), 2);
        assert_eq!(e.last().unwrap(), "receipt", "{side}");
        for x in &r[1..] {
            assert_eq!(x["role"], side);
        }
    }
    // Both ends name each other, agree on the transfer id and on each file's hash.
    assert_eq!(got[1]["peer_name"], "clinic");
    assert_eq!(sent[1]["peer_name"], "lab");
    assert_eq!(got[1]["auth"], "known_key");
    assert_eq!(sent[2]["transfer"], got[2]["transfer"]);
    let file = |r: &[Value], name: &str| {
        r.iter()
            .find(|x| x["event"] == "file_completed" && x["path"] == name)
            .cloned()
            .unwrap()
    };
    let (a, b) = (file(&sent, "labs.csv"), file(&got, "labs.csv"));
    assert_eq!(a["blake3"], b["blake3"]);
    assert_eq!(
        b["blake3"],
        blake3::hash(b"a,b\n1,2\n").to_hex().to_string()
    );
    assert_eq!(b["size"], 8);
    assert_eq!(
        sent.last().unwrap()["receipt"],
        got.last().unwrap()["receipt"]
    );
    // Each record carries this endpoint's fingerprint.
    let id: Value = serde_json::from_slice(
        &conduit(&p.receiver)
            .args(["id", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(got.iter().all(|x| x["local"] == id["fingerprint"]), "{id}");

    // One character of one record changed: the size of labs.csv, 8 -> 9.
    let seq = b["seq"].as_u64().unwrap();
    let (f, mut lines) = log_files(&p.receiver).remove(0);
    let i = seq as usize;
    assert!(lines[i].contains("\"size\":8"));
    lines[i] = lines[i].replacen("\"size\":8", "\"size\":9", 1);
    write_lines(&f, &lines);
    let why = assert_broken_at(&p.receiver, seq, "edited size");
    assert!(why.contains("MAC"), "{why}");
    // The sender's chain is untouched.
    assert_eq!(verify(&p.sender).0, 0);
}

/// A receiving home with a few transfers' records, to tamper with.
fn home_with_records() -> Pair {
    let p = pair_knowing(true, true);
    for i in 0..2 {
        transfer(&p, &format!("t{i}"), &[("note.txt", b"visit note")], &[]);
    }
    assert_eq!(verify(&p.receiver).0, 0);
    p
}

#[test]
fn deletion_swap_truncation_and_forged_append_are_each_detected_and_named() {
    let p = home_with_records();
    let (file, lines) = log_files(&p.receiver).remove(0);
    let n = lines.len();
    assert!(n >= 9, "{n} records");
    let name = file.file_name().unwrap().to_owned();
    let case = |tag: &str, edit: &dyn Fn(&mut Vec<String>), seq: u64| {
        let home = p.root.join(format!("tamper-{tag}"));
        copy_home(&p.receiver, &home);
        let mut l = lines.clone();
        edit(&mut l);
        write_lines(&home.join("audit").join(&name), &l);
        assert_broken_at(&home, seq, tag)
    };
    // A record deleted: the next one is found where it belonged.
    let why = case("deleted", &|l| drop(l.remove(4)), 4);
    assert!(why.contains("missing"), "{why}");
    // Two records swapped.
    let why = case("swapped", &|l| l.swap(5, 6), 5);
    assert!(
        why.contains("records 5 to 5 are missing") || why.contains("reordered"),
        "{why}"
    );
    // The last record cut in the middle (no newline at the end).
    let home = p.root.join("tamper-truncated");
    copy_home(&p.receiver, &home);
    let mut t = lines.join("\n");
    t.truncate(t.len() - 30);
    std::fs::write(home.join("audit").join(&name), t).unwrap();
    let why = assert_broken_at(&home, n as u64 - 1, "truncated");
    assert!(why.contains("truncated"), "{why}");
    // A record appended by someone without the key: the last line's bytes, renumbered and
    // chained to it, with a well-formed MAC made without the key.
    let forged = {
        let last = &lines[n - 1];
        let v: Value = serde_json::from_str(last).unwrap();
        let body = &last[..last.rfind(",\"mac\":\"").unwrap()];
        let body = body
            .replacen(&format!("\"seq\":{}", n - 1), &format!("\"seq\":{n}"), 1)
            .replacen(
                &format!("\"prev\":{}", v["prev"]),
                &format!("\"prev\":{}", v["mac"]),
                1,
            );
        assert_ne!(&body, &last[..body.len().min(last.len())]);
        format!(
            "{body},\"mac\":\"{}\"}}",
            blake3::keyed_hash(&[7u8; 32], body.as_bytes()).to_hex()
        )
    };
    let why = case("forged", &|l| l.push(forged.clone()), n as u64);
    assert!(why.contains("MAC mismatch"), "{why}");
    // The MAC of a genuine record spelled in upper case: an edit, detected.
    let why = case(
        "mac-case",
        &|l| {
            let at = l[3].rfind(",\"mac\":\"").unwrap();
            l[3] = format!(
                "{}{}",
                &l[3][..at],
                l[3][at..].to_uppercase().replace("\"MAC\"", "\"mac\"")
            );
        },
        3,
    );
    assert!(why.contains("not a record") || why.contains("MAC"), "{why}");
    // Lines that are not records at all: each reported, no panic.
    for (tag, junk) in [
        ("empty", String::new()),
        ("crlf", format!("{}\r", lines[2])),
        ("huge", "x".repeat(70_000)),
    ] {
        case(tag, &|l| l[2] = junk.clone(), 2);
    }
    let home = p.root.join("tamper-binary");
    copy_home(&p.receiver, &home);
    let mut bytes = lines[..2].join("\n").into_bytes();
    bytes.extend_from_slice(b"\n\xff\xfe\x00garbage\n");
    std::fs::write(home.join("audit").join(&name), bytes).unwrap();
    let why = assert_broken_at(&home, 2, "binary");
    assert!(why.contains("UTF-8"), "{why}");
    // The untouched log still verifies.
    assert_eq!(verify(&p.receiver).0, 0);
}

#[test]
fn repair_cuts_only_a_torn_last_record_and_transfers_continue() {
    let p = home_with_records();
    let (file, lines) = log_files(&p.receiver).remove(0);
    let n = lines.len();
    let repair = |home: &Path| {
        let out = conduit(home)
            .args(["audit", "repair", "--json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), v, text(&out.stderr))
    };
    // Nothing to repair in a sound log.
    let (code, v, _) = repair(&p.receiver);
    assert_eq!(code, Some(0));
    assert_eq!(v["repaired"], false);
    // A torn last record (a crash mid-write): transfers stop, repair cuts it.
    let mut t = lines.join("\n");
    t.push('\n');
    t.push_str(&lines[n - 1][..40]);
    std::fs::write(&file, &t).unwrap();
    assert_broken_at(&p.receiver, n as u64, "torn");
    let (code, v, err) = repair(&p.receiver);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["bytes_cut"], 40);
    let (code, valid) = verify(&p.receiver);
    assert_eq!(code, 0, "{valid}");
    let got = records(&p.receiver, &[]);
    let last = got.last().unwrap();
    assert_eq!(last["event"], "log_repaired");
    assert!(last["reason"].as_str().unwrap().contains("cut 40 bytes"));
    transfer(&p, "after-repair", &[("n.txt", b"note")], &[]);
    assert_eq!(verify(&p.receiver).0, 0);
    // An altered record before a torn end is not a torn write: refused, nothing cut.
    let (file, mut lines) = log_files(&p.receiver).remove(0);
    let k = lines.len() - 1;
    lines[k] = lines[k].replacen("\"v\":1", "\"v\":1 ", 1);
    let mut t = lines.join("\n");
    t.push_str("\n{\"v\":1,\"seq\"");
    std::fs::write(&file, &t).unwrap();
    let (code, _, err) = repair(&p.receiver);
    assert_ne!(code, Some(0));
    assert!(err.contains("does not verify"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), t);
}

#[test]
fn rotation_continues_the_chain_and_a_removed_file_is_detected() {
    let p = pair_knowing(true, true);
    let src = p.root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("x.txt"), b"x").unwrap();
    let out = p.root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    for i in 0..4 {
        let mut cmd = conduit(&p.receiver);
        cmd.env("CONDUIT_AUDIT_ROTATE_BYTES", "1500")
            .args([
                "receive",
                "--json",
                "--overwrite",
                "--listen",
                "127.0.0.1:0",
                "--out",
            ])
            .arg(&out);
        let mut rx = common::Running::spawn(cmd);
        let addr = rx.first["addr"].as_str().unwrap().to_string();
        let s = send(&p, &addr, &[&src.join("x.txt")], &[]);
        assert!(s.status.success(), "transfer {i}: {}", text(&s.stderr));
        assert!(rx.finish().0.success());
    }
    let files = log_files(&p.receiver);
    assert!(files.len() >= 3, "{} files", files.len());
    let (code, v) = verify(&p.receiver);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["valid"]["files"], files.len());
    // The middle file removed: its first record is named.
    let first_of_second = files[0].1.len() as u64;
    let home = p.root.join("removed-middle");
    copy_home(&p.receiver, &home);
    std::fs::remove_file(home.join("audit").join(files[1].0.file_name().unwrap())).unwrap();
    let why = assert_broken_at(&home, first_of_second, "middle file removed");
    assert!(why.contains("missing"), "{why}");
    // The first file removed: record 0 is missing.
    let home = p.root.join("removed-first");
    copy_home(&p.receiver, &home);
    std::fs::remove_file(home.join("audit").join(files[0].0.file_name().unwrap())).unwrap();
    assert_broken_at(&home, 0, "first file removed");
}

#[test]
fn concurrent_transfers_from_two_processes_keep_one_valid_chain() {
    // One sender home, two receivers: two sender processes append to the same log.
    let p = pair_knowing(true, true);
    let second = p.root.join("home-r2");
    assert!(
        conduit(&second)
            .arg("keygen")
            .output()
            .unwrap()
            .status
            .success()
    );
    let sender_key = common::key_of(&p.sender);
    let r2_key = common::key_of(&second);
    for (home, name, key) in [
        (&second, "clinic", &sender_key),
        (&p.sender, "lab2", &r2_key),
    ] {
        let out = conduit(home)
            .args(["peers", "add", name, key])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let src = p.root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let names: Vec<String> = (0..40).map(|i| format!("f{i:02}.txt")).collect();
    for n in &names {
        std::fs::write(src.join(n), n.as_bytes()).unwrap();
    }
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (home, to) in [(&p.receiver, "lab"), (&second, "lab2")] {
        let out = p.root.join(format!("out-{to}"));
        std::fs::create_dir_all(&out).unwrap();
        let mut cmd = conduit(home);
        cmd.args(["receive", "--json", "--listen", "127.0.0.1:0", "--out"])
            .arg(&out);
        let rx = common::Running::spawn(cmd);
        let addr = rx.first["addr"].as_str().unwrap().to_string();
        receivers.push(rx);
        senders.push(
            conduit(&p.sender)
                .arg("send")
                .arg(&src)
                .args(["--to", to, "--direct", &addr, "--json"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for s in senders {
        let o = s.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    for mut r in receivers {
        assert!(r.finish().0.success());
    }
    let (code, v) = verify(&p.sender);
    assert_eq!(code, 0, "{v}");
    let r = records(&p.sender, &[]);
    let done = r.iter().filter(|x| x["event"] == "file_completed").count();
    assert_eq!(done, 80);
    assert_eq!(v["valid"]["records"], r.len());
    // The two sessions' records are interleaved in one chain, each session complete.
    let sessions: std::collections::BTreeSet<String> = r
        .iter()
        .filter_map(|x| x["session"].as_str().map(str::to_string))
        .collect();
    assert_eq!(sessions.len(), 2);
    // --peer selects one of them.
    let lab2 = records(&p.sender, &["--peer", "lab2"]);
    assert!(!lab2.is_empty());
    assert!(lab2.iter().all(|x| x["peer_name"] == "lab2"));
    assert_eq!(
        lab2.iter()
            .filter(|x| x["event"] == "file_completed")
            .count(),
        40
    );
}

#[test]
fn hashed_names_keep_file_names_out_of_the_log() {
    let p = pair_knowing(true, true);
    let name = "Jane Doe MRN 12345.pdf";
    transfer(&p, "h", &[(name, b"chart")], &["--audit-names", "hash"]);
    let text_of_log: String = log_files(&p.receiver)
        .into_iter()
        .flat_map(|(_, l)| l)
        .collect();
    assert!(!text_of_log.contains("Jane"), "{text_of_log}");
    let got = records(&p.receiver, &[]);
    let f = got.iter().find(|x| x["event"] == "file_completed").unwrap();
    assert!(f.get("path").is_none());
    assert_eq!(f["path_hash"].as_str().unwrap().len(), 64);
    assert_eq!(verify(&p.receiver).0, 0);
    // The sender (plain names, the default) records the name.
    let sent = records(&p.sender, &[]);
    assert!(sent.iter().any(|x| x["path"] == name));
}

#[test]
fn show_filters_by_date_and_rejects_a_bad_one() {
    let p = pair_knowing(true, true);
    transfer(&p, "s", &[("a.txt", b"a")], &[]);
    let all = records(&p.receiver, &[]);
    assert!(all.len() >= 5);
    assert_eq!(
        records(&p.receiver, &["--since", "2000-01-01"]).len(),
        all.len()
    );
    assert!(records(&p.receiver, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    let out = conduit(&p.receiver)
        .args(["audit", "show", "--since", "yesterday"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // For people: one line per record.
    let out = conduit(&p.receiver)
        .args(["audit", "show"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown = text(&out.stdout);
    assert_eq!(shown.lines().count(), all.len());
    assert!(
        shown.contains("file_completed") && shown.contains("a.txt"),
        "{shown}"
    );
}

#[test]
fn an_interrupted_receive_is_on_record_and_keygen_will_not_orphan_the_log() {
    let p = pair_knowing(true, true);
    let out = p.root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let big = p.root.join("big.bin");
    common::write_large(&big, 256 << 20);
    let (rx, addr) = direct_receiver(&p, &out, &[]);
    let mut tx = conduit(&p.sender);
    tx.arg("send")
        .arg(&big)
        .args(["--to", "lab", "--direct", &addr, "--json"]);
    let mut tx = common::Running::spawn(tx);
    common::wait_for_durable(&out, "big.bin", 8 << 20);
    rx.signal(libc::SIGINT);
    let mut rx = rx;
    let (status, _, err) = rx.finish();
    assert_eq!(status.code(), Some(130), "{err}");
    let _ = tx.finish();
    let got = records(&p.receiver, &[]);
    let last = got.last().unwrap();
    assert_eq!(last["event"], "transfer_failed", "{got:?}");
    assert!(last["reason"].as_str().unwrap().contains("interrupted"));
    assert_eq!(last["session"], got[1]["session"]);
    assert_eq!(verify(&p.receiver).0, 0);
    // A new identity could neither extend nor verify this log: keygen --force refuses.
    let out = conduit(&p.receiver)
        .args(["keygen", "--force"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("audit log"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(verify(&p.receiver).0, 0);
}

#[test]
fn a_failed_authentication_is_on_record() {
    // The receiver does not know the sender and does not accept unknown senders.
    let p = pair_knowing(true, false);
    let out = p.root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(p.root.join("a.txt"), b"a").unwrap();
    let (mut rx, addr) = direct_receiver(&p, &out, &[]);
    let s = send(&p, &addr, &[&p.root.join("a.txt")], &[]);
    assert!(!s.status.success());
    // The one-shot receiver keeps waiting for its real sender; stop it.
    common::wait_for_audit(&p.receiver, "unknown sender");
    rx.signal(libc::SIGTERM);
    assert!(!rx.finish().0.success());
    let got = records(&p.receiver, &[]);
    let failed = got.iter().find(|x| x["event"] == "auth_failed").unwrap();
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("unknown sender"),
        "{failed}"
    );
    assert_eq!(verify(&p.receiver).0, 0);
}

#[test]
fn a_full_disk_under_the_audit_log_fails_the_transfer() {
    let p = pair_knowing(true, true);
    let dir = audit_dir(&p.receiver);
    if !mount_tmpfs(&dir, "64k", "") {
        return;
    }
    // Fill it.
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    drop(filler);
    let out = p.root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(p.root.join("chart.pdf"), b"chart").unwrap();
    let (mut rx, addr) = direct_receiver(&p, &out, &[]);
    let s = send(&p, &addr, &[&p.root.join("chart.pdf")], &[]);
    let (status, _, err) = rx.finish();
    umount(&dir);
    assert!(!status.success());
    assert!(err.contains("audit"), "{err}");
    assert_eq!(s.status.code(), Some(5), "{}", text(&s.stderr));
    assert!(
        text(&s.stderr).contains("audit record"),
        "{}",
        text(&s.stderr)
    );
    assert!(!out.join("chart.pdf").exists());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}
