//! Group commit of audit records under a crash: a receiver killed (`SIGKILL`) in the middle
//! of a burst of small files, whose records are committed in groups, leaves a log that
//! verifies (after `conduit audit repair` at most cuts a torn last record), and every file
//! it reported received has its record in it.

use crate::common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{conduit, pair_knowing, text};
use serde_json::Value;

#[test]
fn a_receiver_killed_during_a_burst_leaves_a_verifiable_log_with_every_reported_file() {
    let p = pair_knowing(true, true);
    let src = p.root.join("burst");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3000 {
        std::fs::write(src.join(format!("f{i:04}.txt")), format!("file {i}")).unwrap();
    }
    let out = p.root.join("out");
    let mut rx = conduit(&p.receiver)
        .args(["receive", "--json", "--listen", "127.0.0.1:0", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(rx.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let addr = first["addr"].as_str().unwrap().to_string();
    let mut tx = conduit(&p.sender)
        .arg("send")
        .arg(&src)
        .args(["--to", "lab", "--direct", &addr, "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The files the receiver reported received: each is on record before it is reported.
    let mut reported = BTreeSet::new();
    let mut killed = false;
    for line in lines.by_ref() {
        let Ok(v) = serde_json::from_str::<Value>(&line.unwrap()) else {
            continue;
        };
        if v["event"] == "file_done" {
            reported.insert(v["path"].as_str().unwrap().to_string());
        }
        if reported.len() == 500 {
            // In the middle of the burst: more files are being received and recorded.
            rx.kill().unwrap();
            killed = true;
            break;
        }
    }
    assert!(
        killed,
        "the transfer ended before 500 files: {}",
        reported.len()
    );
    // What it printed before it died.
    for line in lines {
        let Ok(line) = line else { break };
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["event"] == "file_done" {
                reported.insert(v["path"].as_str().unwrap().to_string());
            }
        }
    }
    rx.wait().unwrap();
    let _ = tx.kill();
    tx.wait().unwrap();
    assert!(reported.len() < 3000, "killed after the end");

    let verify = || {
        conduit(&p.receiver)
            .args(["audit", "verify", "--json"])
            .output()
            .unwrap()
    };
    let mut v = verify();
    if !v.status.success() {
        // Killed in the middle of a group's write: only a torn last record may be cut.
        let repair = conduit(&p.receiver)
            .args(["audit", "repair", "--json"])
            .output()
            .unwrap();
        assert!(repair.status.success(), "{}", text(&repair.stderr));
        v = verify();
    }
    assert!(
        v.status.success(),
        "{} {}",
        text(&v.stdout),
        text(&v.stderr)
    );
    let show = conduit(&p.receiver)
        .args(["audit", "show", "--json"])
        .output()
        .unwrap();
    assert!(show.status.success(), "{}", text(&show.stderr));
    let recorded: BTreeSet<String> = common::events(&text(&show.stdout))
        .iter()
        .filter(|r| r["event"] == "file_completed")
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<_> = reported.difference(&recorded).collect();
    assert!(
        missing.is_empty(),
        "reported but not on record: {missing:?}"
    );
    // And each recorded file has its final name (named durably before its record).
    for path in &recorded {
        assert!(out.join(path).is_file(), "{path} on record, not in place");
    }
}
