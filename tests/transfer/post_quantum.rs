//! The post-quantum setting between two real processes on loopback: a sender without
//! ML-KEM-768 (`--post-quantum off`) is refused by a default receiver on both sides, and
//! accepted by a receiver set to `preferred` in conduit.toml.

use crate::common;

use std::path::Path;
use std::process::Output;

use common::{Pair, conduit, direct_receiver, pair_knowing, text};

fn send(p: &Pair, addr: &str, file: &Path, extra: &[&str]) -> Output {
    conduit(&p.sender)
        .arg("send")
        .arg(file)
        .args(["--to", "lab", "--direct", addr, "--json"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_sender_without_ml_kem_is_refused_by_a_default_receiver_on_both_sides() {
    let p = pair_knowing(true, true);
    let f = p.root.join("x.txt");
    std::fs::write(&f, b"secret").unwrap();
    let inbox = p.root.join("inbox");
    let (mut rx, addr) = direct_receiver(&p, &inbox, &[]);
    let out = send(&p, &addr, &f, &["--post-quantum", "off"]);
    let err = text(&out.stderr);
    // The sender is refused (exit 5) and told why, with the next step.
    assert_eq!(out.status.code(), Some(5), "sender: {err}");
    assert!(err.contains("post-quantum key exchange required"), "{err}");
    assert!(
        err.contains("--post-quantum required or preferred"),
        "{err}"
    );
    // The receiver records the refusal and keeps waiting.
    common::wait_for_audit(&p.receiver, "post-quantum key exchange required");
    assert!(
        rx.child.try_wait().unwrap().is_none(),
        "the receiver gave up"
    );
    rx.signal(libc::SIGTERM);
    let (_, rout, _) = rx.finish();
    assert!(
        common::events(&rout)
            .into_iter()
            .any(|e| e["event"] == "error"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("post-quantum key exchange required: the peer did not take part")),
        "{rout}"
    );
    assert!(!inbox.join("x.txt").exists());
}

#[test]
fn a_receiver_set_to_preferred_accepts_a_sender_without_ml_kem() {
    let p = pair_knowing(true, true);
    std::fs::write(
        p.receiver.join("conduit.toml"),
        "[transfer]\npost_quantum = \"preferred\"\n",
    )
    .unwrap();
    let f = p.root.join("scan.bin");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&f, &data).unwrap();
    let inbox = p.root.join("inbox");
    let (mut rx, addr) = direct_receiver(&p, &inbox, &[]);
    let out = send(&p, &addr, &f, &["--post-quantum", "off"]);
    assert!(out.status.success(), "sender: {}", text(&out.stderr));
    let (status, _, rerr) = rx.finish();
    assert!(status.success(), "receiver: {rerr}");
    assert_eq!(std::fs::read(inbox.join("scan.bin")).unwrap(), data);
}

#[test]
fn an_unknown_post_quantum_value_is_a_usage_error() {
    let p = pair_knowing(true, true);
    let f = p.root.join("x.txt");
    std::fs::write(&f, b"x").unwrap();
    let out = send(&p, "127.0.0.1:9", &f, &["--post-quantum", "on"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("unknown post_quantum setting"));
}
