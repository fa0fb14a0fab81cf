//! The lab's own life: every name it made is gone after it, also after a panicking test,
//! and a killed run's leftovers are deleted by the next run (not a live run's labs).

use std::process::Command;

use crate::common::natlab::{self, LabConfig, NatLab, PREFIX, Site, TABLE};

#[test]
fn a_panicking_test_leaves_no_lab_behind() {
    if natlab::available().is_err() {
        // Let start() print the reason (or fail under CI).
        assert!(NatLab::start(LabConfig::default()).is_none());
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let lab = NatLab::start(LabConfig::default()).unwrap();
        tx.send(lab.names()).unwrap();
        panic!("a test failed with the lab up (expected by this test)");
    })
    .join();
    assert!(panicked.is_err());
    let names = rx.recv().unwrap();
    assert_eq!(names.namespaces.len(), 5, "{names:?}");
    let left = names.left();
    assert!(left.is_empty(), "left behind by a panicking test: {left:?}");
}

#[test]
fn a_killed_runs_leftovers_are_deleted_and_live_labs_are_kept() {
    let Some(live) = NatLab::start(LabConfig::default()) else {
        return;
    };
    // A namespace as a killed run leaves it: its process (a child we reaped) is gone; a
    // veth pair and an nftables table inside it.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let name = format!("{PREFIX}{dead}-0-inet");
    assert!(
        Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success()
    );
    // Not asserted: a lab test of another process running now may clean this leftover
    // first, which is right too.
    let quiet = |c: &mut Command| {
        let _ = c.stderr(std::process::Stdio::null()).status();
    };
    quiet(Command::new("ip").args([
        "-n", &name, "link", "add", "wan", "type", "veth", "peer", "name", "lan",
    ]));
    quiet(Command::new("ip").args(["netns", "exec", &name, "nft", "add", "table", "ip", TABLE]));

    natlab::clean_leftovers();
    let list = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!list.contains(&name), "the leftover is still there: {list}");
    assert!(
        list.contains(&live.ns(Site::Internet)),
        "a live lab was deleted: {list}"
    );
    live.close();
}
