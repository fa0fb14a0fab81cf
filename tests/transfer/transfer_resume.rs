//! Interrupted transfers resume: real `conduit send` / `conduit receive` processes on
//! loopback, one of them killed mid-transfer, then the same two commands run again.

use crate::common;

use std::path::Path;

use common::{
    Pair, Running, blake3_file, conduit, events, pair_knowing, text, wait_for_durable, write_large,
};

const SIZE: u64 = 192 << 20;

fn receiver(p: &Pair, out: &Path) -> (Running, String) {
    let mut cmd = conduit(&p.receiver);
    cmd.args(["receive", "--json", "--listen", "127.0.0.1:0", "--out"])
        .arg(out);
    let r = Running::spawn(cmd);
    let addr = r.first["addr"].as_str().unwrap().to_string();
    (r, addr)
}

fn sender(home: &Path, src: &Path, to: &str, addr: &str) -> Running {
    let mut cmd = conduit(home);
    cmd.arg("send")
        .arg(src)
        .args(["--json", "--to", to, "--direct", addr]);
    Running::spawn(cmd)
}

/// Runs the transfer again to completion; returns the receiver's `done` event.
fn rerun(p: &Pair, src: &Path, out: &Path) -> serde_json::Value {
    let (mut rx, addr) = receiver(p, out);
    let out_tx = conduit(&p.sender)
        .arg("send")
        .arg(src)
        .args(["--json", "--to", "lab", "--direct", &addr])
        .output()
        .unwrap();
    assert!(out_tx.status.success(), "{}", text(&out_tx.stderr));
    let tx_done = events(&text(&out_tx.stdout))
        .into_iter()
        .find(|e| e["event"] == "done")
        .unwrap();
    let (status, stdout, err) = rx.finish();
    assert!(status.success(), "{err}");
    let rx_done = events(&stdout)
        .into_iter()
        .find(|e| e["event"] == "done")
        .unwrap();
    assert_eq!(tx_done["resumed_bytes"], rx_done["resumed_bytes"]);
    rx_done
}

/// A transfer of a `SIZE`-byte `big.bin` interrupted once `min` bytes are durable at the
/// receiver: `stop` gets the receiver and the sender, in that order, to end them.
fn interrupted(
    min: u64,
    stop: impl FnOnce(&mut Running, &mut Running),
) -> (Pair, std::path::PathBuf, std::path::PathBuf) {
    let p = pair_knowing(true, true);
    let src = p.root.join("big.bin");
    write_large(&src, SIZE);
    let out = p.root.join("out");
    let (mut rx, addr) = receiver(&p, &out);
    let mut tx = sender(&p.sender, &src, "lab", &addr);
    wait_for_durable(&out, "big.bin", min);
    stop(&mut rx, &mut tx);
    let _ = (rx.finish(), tx.finish());
    assert!(
        !out.join("big.bin").exists(),
        "a partial file got its final name"
    );
    (p, src, out)
}

/// Kills the receiver, then the sender (which would notice only at its idle timeout).
fn kill_both(rx: &mut Running, tx: &mut Running) {
    rx.signal(libc::SIGKILL);
    tx.signal(libc::SIGKILL);
}

#[test]
fn the_receiver_killed_mid_transfer_resumes_to_an_identical_file() {
    let (p, src, out) = interrupted(24 << 20, kill_both);
    assert_eq!(
        common::parts(&out).len(),
        1,
        "the partial file was not kept"
    );

    let done = rerun(&p, &src, &out);
    let resumed = done["resumed_bytes"].as_u64().unwrap();
    assert!(resumed >= 24 << 20, "resumed only {resumed} bytes");
    assert!(resumed < SIZE);
    assert_eq!(blake3_file(&src), blake3_file(&out.join("big.bin")));
    assert_eq!(
        done["files"][0]["blake3"].as_str().unwrap(),
        blake3_file(&src).to_hex().as_str()
    );
    assert!(common::parts(&out).is_empty());
    assert!(common::sidecars(&out).is_empty());
}

#[test]
fn the_sender_killed_mid_transfer_resumes_to_an_identical_file() {
    let (p, src, out) = interrupted(24 << 20, |rx, tx| {
        tx.signal(libc::SIGKILL);
        let _ = tx.finish();
        // The receiver would notice at its idle timeout; its user stops it instead.
        rx.signal(libc::SIGTERM);
        let (status, _, err) = rx.finish();
        assert_eq!(status.code(), Some(130), "{err}");
        assert!(err.contains("interrupted"), "{err}");
    });
    assert_eq!(common::sidecars(&out).len(), 1);

    let done = rerun(&p, &src, &out);
    assert!(done["resumed_bytes"].as_u64().unwrap() >= 24 << 20);
    assert_eq!(blake3_file(&src), blake3_file(&out.join("big.bin")));
}

#[test]
fn a_partial_file_from_another_sender_is_started_over() {
    let (p, _, out) = interrupted(8 << 20, kill_both);

    // A second sender, also known to the receiver, sends a file of the same name.
    let other = p.root.join("home-other");
    assert!(
        conduit(&other)
            .arg("keygen")
            .output()
            .unwrap()
            .status
            .success()
    );
    let key = common::key_of(&p.receiver);
    assert!(
        conduit(&other)
            .args(["peers", "add", "lab", &key])
            .output()
            .unwrap()
            .status
            .success()
    );
    let okey = common::key_of(&other);
    assert!(
        conduit(&p.receiver)
            .args(["peers", "add", "other", &okey])
            .output()
            .unwrap()
            .status
            .success()
    );
    let src2 = p.root.join("elsewhere");
    std::fs::create_dir_all(&src2).unwrap();
    let src2 = src2.join("big.bin");
    std::fs::write(&src2, b"a different file under the same name").unwrap();
    let (mut rx, addr) = receiver(&p, &out);
    let sent = conduit(&other)
        .arg("send")
        .arg(&src2)
        .args(["--json", "--to", "lab", "--direct", &addr])
        .output()
        .unwrap();
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let (status, stdout, _) = rx.finish();
    assert!(status.success());
    let done = events(&stdout)
        .into_iter()
        .find(|e| e["event"] == "done")
        .unwrap();
    assert_eq!(done["resumed_bytes"], 0);
    assert_eq!(
        std::fs::read(out.join("big.bin")).unwrap(),
        std::fs::read(&src2).unwrap()
    );
}

#[test]
fn a_changed_source_file_is_sent_again_in_full() {
    let (p, src, out) = interrupted(8 << 20, kill_both);
    // Same size, same mtime, different first bytes: the prefix hashes differ and the
    // sender starts over.
    let mtime = std::fs::metadata(&src).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(b"changed", 0).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let done = rerun(&p, &src, &out);
    assert_eq!(done["resumed_bytes"], 0);
    assert_eq!(blake3_file(&src), blake3_file(&out.join("big.bin")));
    // The superseded partial file went with its resume record.
    assert!(common::parts(&out).is_empty(), "{:?}", common::parts(&out));
    assert!(common::sidecars(&out).is_empty());
}
