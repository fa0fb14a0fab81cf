//! What `send` and `receive` print for people (issue #20, defects 8, 10, 11): sizes in
//! binary units, plurals, no rate for a tiny transfer, nothing with `--quiet`, the
//! destination checked before anyone connects, errors with their next step.

use crate::common;

use std::path::Path;
use std::process::Output;

use common::{Pair, conduit, mount_tmpfs, pair_knowing, text, umount};

/// A receiver for people (no --json) listening directly, its stdout after the first line
/// read on a thread.
struct Rx {
    child: std::process::Child,
    rest: std::thread::JoinHandle<String>,
}

/// Starts an [`Rx`]; returns it and its address (from its first line).
fn receiver(p: &Pair, out: &Path, extra: &[&str]) -> (Rx, String) {
    use std::io::{BufRead, Read};
    let mut child = conduit(&p.receiver)
        .args(["receive", "--listen", "127.0.0.1:0", "--out"])
        .arg(out)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_string();
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    (Rx { child, rest }, addr)
}

/// Waits for a receiver: its status, the rest of its stdout, its stderr.
fn finish(rx: Rx) -> (std::process::ExitStatus, String, String) {
    let out = rx.child.wait_with_output().unwrap();
    let rest = rx.rest.join().unwrap();
    let err = text(&out.stderr);
    common::assert_no_rust_names("the receiver's stdout", &rest);
    common::assert_no_rust_names("the receiver's stderr", &err);
    (out.status, rest, err)
}

fn send(p: &Pair, addr: &str, paths: &[&Path], extra: &[&str]) -> Output {
    let out = conduit(&p.sender)
        .arg("send")
        .args(paths)
        .args(["--to", "lab", "--direct", addr])
        .args(extra)
        .output()
        .unwrap();
    common::assert_no_rust_names("the sender's stdout", &text(&out.stdout));
    common::assert_no_rust_names("the sender's stderr", &text(&out.stderr));
    out
}

#[test]
fn summaries_use_binary_units_and_plurals_and_show_no_rate_for_a_tiny_transfer() {
    let p = pair_knowing(true, true);
    let (a, b) = (p.root.join("a.txt"), p.root.join("b.txt"));
    std::fs::write(&a, b"synthetic visit note").unwrap();
    std::fs::write(&b, vec![7u8; 1536]).unwrap();
    let inbox = p.root.join("inbox");

    let (rx, addr) = receiver(&p, &inbox, &[]);
    let sent = send(&p, &addr, &[&a], &[]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let (status, rout, rerr) = finish(rx);
    assert!(status.success(), "{rerr}");
    let sout = text(&sent.stdout);
    // "sent 1 file, 20 B in 0.01 s, peer ..." - no "1 files", no byte count, no rate.
    assert!(sout.starts_with("sent 1 file, 20 B in "), "{sout}");
    assert!(rout.contains("\nreceived 1 file, 20 B in "), "{rout}");
    assert!(rout.contains("  a.txt  20 B  blake3 "), "{rout}");
    for out in [&sout, &rout] {
        assert!(!out.contains("/s"), "a rate for 20 bytes: {out}");
        assert!(!out.contains("bytes"), "{out}");
    }
    // The offer, on the receiver's stderr.
    assert!(rerr.contains("1 file, 20 B in a.txt"), "{rerr}");

    let (rx, addr) = receiver(&p, &inbox, &["--overwrite"]);
    let sent = send(&p, &addr, &[&a, &b], &[]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let (_, rout, rerr) = finish(rx);
    assert!(rout.contains("\nreceived 2 files, 1.5 KiB in "), "{rout}");
    assert!(rout.contains("  b.txt  1.5 KiB  blake3 "), "{rout}");
    assert!(rerr.contains("2 files, 1.5 KiB in a.txt, b.txt"), "{rerr}");
}

#[test]
fn quiet_prints_nothing_on_success() {
    let p = pair_knowing(true, true);
    let a = p.root.join("a.txt");
    std::fs::write(&a, b"synthetic visit note").unwrap();
    let inbox = p.root.join("inbox");
    let (rx, addr) = receiver(&p, &inbox, &["--quiet"]);
    let sent = send(&p, &addr, &[&a], &["--quiet"]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let (status, rout, rerr) = finish(rx);
    assert!(status.success(), "{rerr}");
    assert_eq!(text(&sent.stdout), "");
    assert_eq!(text(&sent.stderr), "");
    // Only the address it listens on, printed at start: no advice, no summary.
    assert!(
        !rout.contains("received") && !rout.contains("blake3"),
        "{rout}"
    );
    assert!(!rout.contains("senders can reach"), "{rout}");
    assert!(!rerr.contains("blake3"), "{rerr}");
    assert!(inbox.join("a.txt").exists());
}

/// Runs `cmd` to its end; a receiver still running after 10 s (it waits for a sender
/// instead of failing at start) is killed and fails the test.
fn fails_at_start(mut cmd: std::process::Command) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("still waiting after 10 s: {}", text(&out.stdout));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_destination_that_is_not_a_directory_is_found_at_start() {
    let p = pair_knowing(true, true);
    let file = p.root.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let mut cmd = conduit(&p.receiver);
    cmd.args(["receive", "--listen", "127.0.0.1:0", "--out"])
        .arg(&file);
    let out = fails_at_start(cmd);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(text(&out.stdout), "", "it listened before failing");
    assert!(err.contains("not a directory"), "{err}");
    assert!(err.contains("--out DIR"), "{err}");
    common::assert_no_rust_names("stderr", &err);
}

/// Read-only at start: the receiver says so before it listens. Root writes anywhere, so
/// a read-only mount (a tmpfs) makes the fault; without root, a directory of mode 0500.
#[test]
fn a_read_only_destination_is_found_before_waiting_for_a_sender() {
    let p = pair_knowing(true, true);
    let ro = p.root.join("ro");
    let mounted = if rustix::process::geteuid().is_root() {
        if !mount_tmpfs(&ro, "1m", ",ro") {
            return;
        }
        true
    } else {
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o500)).unwrap();
        false
    };
    let mut cmd = conduit(&p.receiver);
    cmd.args(["receive", "--listen", "127.0.0.1:0", "--out"])
        .arg(&ro);
    let out = fails_at_start(cmd);
    if mounted {
        umount(&ro);
    }
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(text(&out.stdout), "", "it listened before failing");
    assert!(err.contains("cannot write into"), "{err}");
    assert!(
        err.contains("read-only file system") || err.contains("no permission"),
        "{err}"
    );
    assert!(
        err.contains("receive into another directory with --out DIR"),
        "{err}"
    );
    common::assert_no_rust_names("stderr", &err);
}

#[test]
fn nobody_at_a_direct_address_is_an_error_with_the_next_step() {
    let p = pair_knowing(true, true);
    let a = p.root.join("a.txt");
    std::fs::write(&a, b"x").unwrap();
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let nobody = free.local_addr().unwrap().to_string();
    drop(free);
    let out = send(&p, &nobody, &[&a], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("no answer from {nobody}")), "{err}");
    assert!(err.contains("conduit receive --listen"), "{err}");
    assert!(err.contains("UDP"), "{err}");
}

#[test]
fn an_unreachable_relay_is_an_error_with_the_next_step() {
    let p = pair_knowing(true, true);
    let a = p.root.join("a.txt");
    std::fs::write(&a, b"x").unwrap();
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let nobody = free.local_addr().unwrap().to_string();
    drop(free);
    let pin = "a".repeat(64);
    let out = conduit(&p.sender)
        .arg("send")
        .arg(&a)
        .args(["--to", "lab", "--relay", &nobody, "--relay-pin", &pin])
        .args(["--relay-wait", "1"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("relay {nobody}")), "{err}");
    assert!(err.contains("check the relay's address and port"), "{err}");
    assert!(err.contains("UDP"), "{err}");
    common::assert_no_rust_names("stderr", &err);
}
