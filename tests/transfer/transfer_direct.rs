//! `conduit send` and `conduit receive` as two real processes on loopback.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{Pair, conduit, direct_receiver, key_of, pair_knowing, text};

/// Two endpoints; the sender knows the receiver as "lab"; the receiver knows the sender
/// as "clinic" when `mutual`.
fn pair(mutual: bool) -> Pair {
    pair_knowing(true, mutual)
}

fn send(p: &Pair, addr: &str, paths: &[&Path]) -> Output {
    conduit(&p.sender)
        .arg("send")
        .args(paths)
        .args(["--to", "lab", "--direct", addr, "--json"])
        .output()
        .unwrap()
}

fn write_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("a.txt"), b"alpha").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(
        root.join("sub/Ünïcødé 名前.txt"),
        "unicode name".repeat(100),
    )
    .unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("sub/deeper/big.bin"), big).unwrap();
}

fn same_tree(a: &Path, b: &Path) {
    for e in walk(a) {
        let rel = e.strip_prefix(a).unwrap();
        assert_eq!(
            std::fs::read(&e).unwrap(),
            std::fs::read(b.join(rel)).unwrap(),
            "{}",
            rel.display()
        );
    }
    assert_eq!(walk(a).len(), walk(b).len());
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            out.extend(walk(&e))
        } else {
            out.push(e)
        }
    }
    out
}

#[test]
fn a_tree_with_an_empty_file_and_unicode_names_arrives_identical() {
    let p = pair(true);
    let src = p.root.join("records");
    write_tree(&src);
    let inbox = p.root.join("inbox");
    let (mut rx, addr) = direct_receiver(&p, &inbox, &[]);
    let out = send(&p, &addr, &[&src]);
    assert!(out.status.success(), "sender: {}", text(&out.stderr));
    let (status, rout, rerr) = rx.finish();
    assert!(status.success(), "receiver: {rerr}");
    same_tree(&src, &inbox.join("records"));
    // The receiver's JSON lines: the offer (with what lands where), each file, done.
    let events: Vec<serde_json::Value> = rout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let offer = events.iter().find(|e| e["event"] == "offer").unwrap();
    assert_eq!(offer["files"], 4);
    assert_eq!(offer["top_level"], serde_json::json!(["records"]));
    assert_eq!(
        events.iter().filter(|e| e["event"] == "file_done").count(),
        4
    );
    let progress: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| e["bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(
        progress.last().copied(),
        Some(offer["bytes"].as_u64().unwrap()),
        "final progress is the total"
    );
    assert_eq!(events.last().unwrap()["event"], "done");
    // The sender's progress counts plaintext too (not the sealed chunks' bytes): it ends
    // at the total, never beyond.
    let sent: Vec<u64> = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "progress")
        .map(|e| e["bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sent.last().copied(),
        Some(offer["bytes"].as_u64().unwrap()),
        "the sender's final progress is the total: {sent:?}"
    );
    let done: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["path"], "direct");
    for home in [&p.sender, &p.receiver] {
        common::wait_for_audit(home, "\"network_path\":\"direct\"");
    }
    assert!(done["mbps"].as_f64().unwrap() > 0.0);
    assert_eq!(done["files"].as_array().unwrap().len(), 4);
    let big = std::fs::read(src.join("sub/deeper/big.bin")).unwrap();
    let entry = done["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "records/sub/deeper/big.bin")
        .unwrap();
    assert_eq!(entry["blake3"], blake3::hash(&big).to_hex().as_str());
    // No temporary files are left.
    assert!(
        walk(&inbox)
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".part"))
    );
}

#[test]
fn an_unknown_sender_is_refused_the_receiver_failing_authentication() {
    let p = pair(false);
    let f = p.root.join("x.txt");
    std::fs::write(&f, b"secret").unwrap();
    let inbox = p.root.join("inbox");
    let (mut rx, addr) = direct_receiver(&p, &inbox, &[]);
    let out = send(&p, &addr, &[&f]);
    // The sender was refused (5, with the next step).
    assert_eq!(out.status.code(), Some(5), "sender: {}", text(&out.stderr));
    // The one-shot receiver is not used up by a sender that fails to authenticate: it
    // reports the connection and keeps waiting (tests/adversarial/hostile_peer.rs has the rest).
    common::wait_for_audit(&p.receiver, "unknown sender");
    assert!(
        rx.child.try_wait().unwrap().is_none(),
        "the receiver gave up"
    );
    rx.signal(libc::SIGTERM);
    let (status, rout, _) = rx.finish();
    assert_eq!(status.code(), Some(130));
    let failed: Vec<_> = common::events(&rout)
        .into_iter()
        .filter(|e| e["event"] == "error")
        .collect();
    assert_eq!(failed.len(), 1, "{rout}");
    assert_eq!(failed[0]["kind"], "auth_failed");
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("unknown sender"),
        "{rout}"
    );
    // With what to do about it.
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("conduit peers add NAME KEY"),
        "{rout}"
    );
    assert!(!inbox.join("x.txt").exists());
}

#[test]
fn an_existing_file_is_refused_without_overwrite() {
    let p = pair(true);
    let f = p.root.join("report.pdf");
    std::fs::write(&f, b"new content").unwrap();
    let inbox = p.root.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("report.pdf"), b"old content").unwrap();
    let (mut rx, addr) = direct_receiver(&p, &inbox, &[]);
    let out = send(&p, &addr, &[&f]);
    assert_eq!(out.status.code(), Some(5), "sender: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    let (status, _, rerr) = rx.finish();
    assert_eq!(status.code(), Some(5));
    // The receiver's error says what to do: the flag that replaces the file.
    assert!(rerr.contains("already exists"), "{rerr}");
    assert!(rerr.contains("--overwrite"), "{rerr}");
    assert_eq!(
        std::fs::read(inbox.join("report.pdf")).unwrap(),
        b"old content"
    );
    // With --overwrite it is replaced.
    let (mut rx, addr) = direct_receiver(&p, &inbox, &["--overwrite"]);
    assert!(send(&p, &addr, &[&f]).status.success());
    assert!(rx.finish().0.success());
    assert_eq!(
        std::fs::read(inbox.join("report.pdf")).unwrap(),
        b"new content"
    );
}

#[test]
fn a_thousand_small_files_arrive() {
    let p = pair(true);
    let src = p.root.join("many");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..1000 {
        std::fs::write(src.join(format!("f{i:04}.txt")), format!("file {i}\n")).unwrap();
    }
    let inbox = p.root.join("inbox");
    let (mut rx, addr) = direct_receiver(&p, &inbox, &[]);
    let out = send(&p, &addr, &[&src]);
    assert!(out.status.success(), "sender: {}", text(&out.stderr));
    assert!(rx.finish().0.success());
    same_tree(&src, &inbox.join("many"));
}

/// A code-phrase sender and the receiver's arguments, with the code the sender printed.
fn code_transfer(
    p: &Pair,
    port: u16,
    src: &Path,
    receiver_code: impl Fn(&str) -> String,
) -> (Output, Output) {
    let addr = format!("127.0.0.1:{port}");
    let mut sender = conduit(&p.sender)
        .arg("send")
        .arg(src)
        .args([
            "--code",
            "--direct",
            &addr,
            "--json",
            "--save-peer",
            "the-lab",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(sender.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["event"], "code");
    let code = v["code"].as_str().unwrap().to_string();
    let words: Vec<&str> = code.split('-').collect();
    assert_eq!(words.len(), 4, "{code}");
    let inbox = p.root.join("inbox");
    let recv = conduit(&p.receiver)
        .args(["receive", "--listen", &addr, "--out"])
        .arg(&inbox)
        .args(["--code", &receiver_code(&code), "--save-peer", "the-clinic"])
        .output()
        .unwrap();
    (sender.wait_with_output().unwrap(), recv)
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_code_phrase_transfer_works_between_strangers_and_saves_both_peers() {
    let p = pair_knowing(false, false);
    let f = p.root.join("scan.dcm");
    std::fs::write(&f, vec![42u8; 100_000]).unwrap();
    let (s, r) = code_transfer(&p, free_port(), &f, |c| c.to_string());
    assert!(s.status.success(), "sender: {}", text(&s.stderr));
    assert!(r.status.success(), "receiver: {}", text(&r.stderr));
    assert_eq!(
        std::fs::read(p.root.join("inbox/scan.dcm")).unwrap(),
        vec![42u8; 100_000]
    );
    // Each side saved the other's real key.
    let list = |h: &Path| -> serde_json::Value {
        serde_json::from_slice(
            &conduit(h)
                .args(["peers", "list", "--json"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    let s_list = list(&p.sender);
    let lab = s_list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "the-lab")
        .unwrap();
    assert_eq!(lab["public_key"], key_of(&p.receiver).as_str());
    let r_list = list(&p.receiver);
    let clinic = r_list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "the-clinic")
        .unwrap();
    assert_eq!(clinic["public_key"], key_of(&p.sender).as_str());
}

#[test]
fn a_wrong_code_fails_on_both_sides_with_the_auth_exit_code() {
    let p = pair_knowing(false, false);
    let f = p.root.join("scan.dcm");
    std::fs::write(&f, b"phi").unwrap();
    let (s, r) = code_transfer(&p, free_port(), &f, |c| {
        // Same nameplate, one word changed.
        let mut parts: Vec<String> = c.split('-').map(String::from).collect();
        parts[3] = if parts[3] == "zoo" {
            "abandon".into()
        } else {
            "zoo".into()
        };
        parts.join("-")
    });
    assert_eq!(s.status.code(), Some(3), "sender: {}", text(&s.stderr));
    assert_eq!(r.status.code(), Some(3), "receiver: {}", text(&r.stderr));
    assert!(
        text(&r.stderr).contains("code mismatch"),
        "{}",
        text(&r.stderr)
    );
    assert!(
        text(&s.stderr).contains("CodeMismatch") || text(&s.stderr).contains("code mismatch"),
        "{}",
        text(&s.stderr)
    );
    // Each side says what to do next (issue #20, defect 6).
    assert!(
        text(&r.stderr).contains("check the code word by word with the sender"),
        "{}",
        text(&r.stderr)
    );
    assert!(
        text(&s.stderr).contains("the receiver's code does not match this one"),
        "{}",
        text(&s.stderr)
    );
    assert!(!p.root.join("inbox/scan.dcm").exists());
}
