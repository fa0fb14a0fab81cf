//! STREAM cipher suite negotiation between two real processes on loopback: both
//! automatic, one side forced (by flag or by conduit.toml), and a mismatch refused on
//! both sides.

use crate::common;

use std::path::Path;
use std::process::Output;

use common::{Pair, conduit, direct_receiver, pair_knowing, text};
use phi_conduit::crypto::suite::hardware_aes;

fn send(p: &Pair, addr: &str, file: &Path, extra: &[&str]) -> Output {
    conduit(&p.sender)
        .arg("send")
        .arg(file)
        .args(["--to", "lab", "--direct", addr, "--json"])
        .args(extra)
        .output()
        .unwrap()
}

/// The `suite` of the `done` event in `out`.
fn done_suite(out: &str) -> String {
    common::events(out)
        .into_iter()
        .find(|e| e["event"] == "done")
        .and_then(|e| e["suite"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no done event with a suite: {out}"))
}

/// One transfer of a 300 kB file with the given extra flags; returns the suite each side
/// reports, after checking the file arrived intact.
fn transfer(tx_flags: &[&str], rx_flags: &[&str], rx_config: Option<&str>) -> (String, String) {
    let p = pair_knowing(true, true);
    if let Some(cfg) = rx_config {
        std::fs::write(p.receiver.join("conduit.toml"), cfg).unwrap();
    }
    let f = p.root.join("scan.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&f, &data).unwrap();
    let inbox = p.root.join("inbox");
    let (mut rx, addr) = direct_receiver(&p, &inbox, rx_flags);
    let out = send(&p, &addr, &f, tx_flags);
    assert!(out.status.success(), "sender: {}", text(&out.stderr));
    let (status, rout, rerr) = rx.finish();
    assert!(status.success(), "receiver: {rerr}");
    assert_eq!(std::fs::read(inbox.join("scan.bin")).unwrap(), data);
    (done_suite(&text(&out.stdout)), done_suite(&rout))
}

#[test]
fn both_automatic_sides_choose_aes_exactly_when_the_cpu_has_it() {
    let expected = if hardware_aes() {
        "aes-256-gcm"
    } else {
        "chacha20-poly1305"
    };
    let (tx, rx) = transfer(&[], &[], None);
    assert_eq!((tx.as_str(), rx.as_str()), (expected, expected));
}

#[test]
fn a_sender_forcing_chacha_gets_chacha_from_an_automatic_receiver() {
    let (tx, rx) = transfer(&["--suite", "chacha20-poly1305"], &[], None);
    assert_eq!(
        (tx.as_str(), rx.as_str()),
        ("chacha20-poly1305", "chacha20-poly1305")
    );
}

#[test]
fn a_receiver_forcing_aes_in_its_config_gets_aes_from_an_automatic_sender() {
    // The automatic sender lists both suites, so the receiver's setting decides.
    let (tx, rx) = transfer(&[], &[], Some("[transfer]\nsuite = \"aes-256-gcm\"\n"));
    assert_eq!((tx.as_str(), rx.as_str()), ("aes-256-gcm", "aes-256-gcm"));
    // And the receiver's flag does the same, over a config that says otherwise.
    let (tx, rx) = transfer(
        &[],
        &["--suite", "aes-256-gcm"],
        Some("[transfer]\nsuite = \"chacha20-poly1305\"\n"),
    );
    assert_eq!((tx.as_str(), rx.as_str()), ("aes-256-gcm", "aes-256-gcm"));
}

#[test]
fn forced_suites_that_differ_are_refused_on_both_sides() {
    let p = pair_knowing(true, true);
    let f = p.root.join("x.txt");
    std::fs::write(&f, b"secret").unwrap();
    let inbox = p.root.join("inbox");
    let (mut rx, addr) = direct_receiver(&p, &inbox, &["--suite", "chacha20-poly1305"]);
    let out = send(&p, &addr, &f, &["--suite", "aes-256-gcm"]);
    let err = text(&out.stderr);
    // The sender is refused (exit 5) and told why.
    assert_eq!(out.status.code(), Some(5), "sender: {err}");
    assert!(err.contains("no common cipher suite"), "{err}");
    // The binary adds the next step.
    assert!(err.contains("set the same --suite"), "{err}");
    // The receiver records the refusal and, like for any failed handshake, keeps waiting.
    common::wait_for_audit(&p.receiver, "no common cipher suite");
    assert!(
        rx.child.try_wait().unwrap().is_none(),
        "the receiver gave up"
    );
    rx.signal(libc::SIGTERM);
    let (_, rout, _) = rx.finish();
    let failed: Vec<_> = common::events(&rout)
        .into_iter()
        .filter(|e| e["event"] == "error")
        .collect();
    assert_eq!(failed.len(), 1, "{rout}");
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("no common cipher suite: the peer offers aes-256-gcm, this side accepts chacha20-poly1305"),
        "{rout}"
    );
    assert!(!inbox.join("x.txt").exists());
}

#[test]
fn an_unknown_suite_name_is_a_usage_error() {
    let p = pair_knowing(true, true);
    let f = p.root.join("x.txt");
    std::fs::write(&f, b"x").unwrap();
    let out = send(&p, "127.0.0.1:9", &f, &["--suite", "aes-128-gcm"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("unknown cipher suite"));
}

#[test]
fn the_random_iv_suite_moves_a_multi_chunk_file_when_both_sides_ask_for_it() {
    // 300 kB in 256 KiB chunks: a full chunk and a last one, each 28 bytes longer on the
    // wire (tag and module IV).
    let (tx, rx) = transfer(
        &["--suite", "aes-256-gcm-random-iv"],
        &["--suite", "aes-256-gcm-random-iv"],
        None,
    );
    assert_eq!(
        (tx.as_str(), rx.as_str()),
        ("aes-256-gcm-random-iv", "aes-256-gcm-random-iv")
    );
    // An automatic receiver takes it too when it is all the sender offers.
    let (tx, rx) = transfer(&["--suite", "aes-256-gcm-random-iv"], &[], None);
    assert_eq!(
        (tx.as_str(), rx.as_str()),
        ("aes-256-gcm-random-iv", "aes-256-gcm-random-iv")
    );
}
