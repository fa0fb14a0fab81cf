//! Transfers between the two NATed clinics with a relay on the lab's internet, under each
//! path policy: endpoint-independent NATs go direct under the one end-to-end connection
//! (the relay forwards almost none of the file), a random-port NAT stays on the relay, a
//! direct path cut mid-transfer finishes on the relay in the same connection, and with
//! `--path relay` nothing passes between the clinics at all.
//!
//! The bars of issue #26 ask for 20 transfers of 256 MiB where this suite runs a few of
//! 16-64 MiB: `NATLAB_RUNS` and `NATLAB_SIZE` (bytes) raise them by hand
//! (docs/TESTING.md, "The NAT lab").

use std::time::{Duration, Instant};

use crate::common::natlab::{Clinic, Counters, LabConfig, Nat, NatLab};
use crate::common::{
    Running, audit_text, blake3_file, events, pair_knowing, wait_for_durable, write_large,
};

/// What one transfer through the lab showed.
struct Outcome {
    took: Duration,
    /// The sender's and the receiver's JSON events.
    tx: Vec<serde_json::Value>,
    rx: Vec<serde_json::Value>,
    /// The lab's counters after it.
    counters: Counters,
    /// The relay's log.
    relay_log: Vec<serde_json::Value>,
    /// The sender's and the receiver's audit logs.
    audit: [String; 2],
}

impl Outcome {
    /// The `path` each side's `done` event reports.
    fn done_paths(&self) -> (String, String) {
        let done = |ev: &[serde_json::Value]| {
            ev.iter()
                .find(|e| e["event"] == "done")
                .map(|e| e["path"].as_str().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        (done(&self.tx), done(&self.rx))
    }

    /// The `path` events of one side, as (path, address).
    fn path_events(ev: &[serde_json::Value]) -> Vec<(String, String)> {
        ev.iter()
            .filter(|e| e["event"] == "path")
            .map(|e| {
                assert!(e["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
                (
                    e["path"].as_str().unwrap_or("").to_string(),
                    e["address"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Bytes the relay's switch forwarded for the session (its `session_closed` record),
    /// and how many sessions it opened.
    fn relay_forwarded(&self) -> (u64, usize) {
        let opened = self
            .relay_log
            .iter()
            .filter(|e| e["event"] == "session_open")
            .count();
        let bytes = self
            .relay_log
            .iter()
            .filter(|e| e["event"] == "session_closed")
            .map(|e| {
                e["bytes_listener_to_connector"].as_u64().unwrap_or(0)
                    + e["bytes_connector_to_listener"].as_u64().unwrap_or(0)
            })
            .sum();
        (bytes, opened)
    }
}

/// Sends `size` bytes from a host in clinic A to one in clinic B through a relay in `inet`
/// with path policy `path` on both sides (cutting UDP between the clinics once `cut_at`
/// bytes are durable at the receiver); checks the hash and that each clinic reached the
/// relay from its NAT's public address only.
fn transfer(lab: &NatLab, size: u64, path: &str, cut_at: Option<u64>) -> Outcome {
    let p = pair_knowing(true, true);
    let relay = lab.start_relay(&[]);
    assert!(
        relay.addr.starts_with(&format!("{}:", lab.relay_ip())),
        "{}",
        relay.addr
    );
    let src = p.root.join("scan.bin");
    write_large(&src, size);
    let out = p.root.join("out");

    let started = Instant::now();
    let mut rx_cmd = lab.relay_cmd(Clinic::B, &relay, &p.receiver, "receive");
    rx_cmd.arg("--out").arg(&out).args(["--path", path]);
    let mut rx = Running::spawn(rx_cmd);
    assert_eq!(rx.first["event"], "joining", "{}", rx.first);
    let mut tx_cmd = lab.relay_cmd(Clinic::A, &relay, &p.sender, "send");
    tx_cmd.arg(&src).args(["--to", "lab", "--path", path]);
    let mut tx = Running::spawn(tx_cmd);
    if let Some(at) = cut_at {
        wait_for_durable(&out, "scan.bin", at);
        lab.cut_udp_between_clinics();
        assert!(
            rx.child.try_wait().unwrap().is_none(),
            "the transfer was over before the cut"
        );
    }
    let (status, tx_out, tx_err) = tx.finish();
    assert!(status.success(), "sender: {tx_err}");
    let (status, rx_out, rx_err) = rx.finish();
    let took = started.elapsed();
    assert!(status.success(), "receiver: {rx_err}");
    // The first line of each is in `first` (the receiver's is `joining`).
    let rx_events: Vec<_> = std::iter::once(rx.first.clone())
        .chain(events(&rx_out))
        .collect();
    let tx_events: Vec<_> = std::iter::once(tx.first.clone())
        .chain(events(&tx_out))
        .collect();
    let done = rx_events
        .iter()
        .find(|e| e["event"] == "done")
        .unwrap_or_else(|| panic!("no done event: {rx_out}"));
    assert_eq!(done["bytes"], size);
    assert_eq!(blake3_file(&src), blake3_file(&out.join("scan.bin")));

    let counters = lab.counters();
    // Both clinics reached the relay, each from its NAT's public address, never from a
    // private one.
    assert!(
        counters.relay_from_a.0 > 0 && counters.relay_from_b.0 > 0,
        "{counters:?}"
    );
    assert_eq!(
        counters.from_private.0, 0,
        "a private address reached the internet: {counters:?}"
    );
    let (status, relay_log, err) = relay.stop();
    assert!(status.success(), "relay: {err}");
    lab.restore_udp_between_clinics();
    Outcome {
        took,
        tx: tx_events,
        rx: rx_events,
        counters,
        relay_log,
        audit: [audit_text(&p.sender), audit_text(&p.receiver)],
    }
}

/// `NATLAB_RUNS` and `NATLAB_SIZE`, or these defaults.
fn runs_and_size(runs: u32, size: u64) -> (u32, u64) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    (
        env("NATLAB_RUNS").map_or(runs, |r| r as u32),
        env("NATLAB_SIZE").unwrap_or(size),
    )
}

/// The relay may carry the handshake, the offer and a little more, not the file.
const RELAY_ALLOWANCE: u64 = 1 << 20;

#[test]
fn endpoint_independent_nats_go_direct_and_the_relay_forwards_almost_nothing() {
    let Some(lab) = NatLab::start(LabConfig::both(Nat::EndpointIndependent)) else {
        return;
    };
    let (runs, size) = runs_and_size(2, 32 << 20);
    for run in 0..runs {
        let before = lab.counters();
        let o = transfer(&lab, size, "auto", None);
        assert_eq!(
            o.done_paths(),
            ("direct".into(), "direct".into()),
            "run {run}"
        );
        for side in [&o.tx, &o.rx] {
            let paths = Outcome::path_events(side);
            assert_eq!(paths.len(), 1, "run {run}: {paths:?}");
            assert_eq!(paths[0].0, "direct");
            // The peer's NAT's public address, not a private one nor the relay.
            assert!(paths[0].1.starts_with("198.18."), "{paths:?}");
        }
        // Each side's audit: opened relayed, and the receipt says where it ended.
        for log in &o.audit {
            assert!(log.contains("\"network_path\":\"relayed\""), "{log}");
            let receipt = log
                .lines()
                .find(|l| l.contains("\"receipt\""))
                .unwrap_or_else(|| panic!("no receipt record: {log}"));
            assert!(receipt.contains("\"network_path\":\"direct\""), "{receipt}");
        }
        let (forwarded, sessions) = o.relay_forwarded();
        assert_eq!(
            sessions, 1,
            "one session, one connection: {:?}",
            o.relay_log
        );
        assert!(
            forwarded <= RELAY_ALLOWANCE,
            "run {run}: the relay forwarded {forwarded} bytes of a {size}-byte transfer"
        );
        let passed = o.counters.direct_passed_bytes() - before.direct_passed_bytes();
        assert!(
            passed > size,
            "the file went between the clinics: {:?}",
            o.counters
        );
        eprintln!(
            "natlab: run {run}: {size} bytes direct in {:?}, relay forwarded {forwarded} bytes",
            o.took
        );
    }
    lab.close();
}

#[test]
fn a_random_port_nat_stays_on_the_relay_within_seconds_of_a_relay_only_transfer() {
    let config = LabConfig::each(Nat::EndpointIndependent, Nat::RandomPort);
    let Some(lab) = NatLab::start(config) else {
        return;
    };
    let (runs, size) = runs_and_size(1, 16 << 20);
    for run in 0..runs {
        let only = transfer(&lab, size, "relay", None);
        let before = lab.counters();
        let auto = transfer(&lab, size, "auto", None);
        assert_eq!(
            auto.done_paths(),
            ("relayed".into(), "relayed".into()),
            "run {run}"
        );
        assert!(Outcome::path_events(&auto.tx).is_empty(), "{:?}", auto.tx);
        let (forwarded, _) = auto.relay_forwarded();
        assert!(forwarded > size, "the file went through the relay");
        // Probes tried the other clinic; none got into its network.
        assert_eq!(
            auto.counters.direct_delivered(),
            before.direct_delivered(),
            "{:?}",
            auto.counters
        );
        assert!(
            auto.took < only.took + Duration::from_secs(5),
            "run {run}: auto {:?}, relay only {:?}",
            auto.took,
            only.took
        );
        eprintln!(
            "natlab: run {run}: random-port NAT, auto {:?}, relay only {:?}",
            auto.took, only.took
        );
    }
    lab.close();
}

#[test]
fn a_direct_path_cut_mid_transfer_finishes_on_the_relay_in_the_same_connection() {
    let Some(lab) = NatLab::start(LabConfig::both(Nat::EndpointIndependent)) else {
        return;
    };
    let (_, size) = runs_and_size(1, 64 << 20);
    let o = transfer(&lab, size, "auto", Some(size / 8));
    for (side, ev) in [("sender", &o.tx), ("receiver", &o.rx)] {
        let paths: Vec<String> = Outcome::path_events(ev).into_iter().map(|p| p.0).collect();
        assert_eq!(
            paths.first().map(String::as_str),
            Some("direct"),
            "{side}: {paths:?}"
        );
        assert_eq!(
            paths.last().map(String::as_str),
            Some("relayed"),
            "{side}: {paths:?}"
        );
    }
    assert_eq!(o.done_paths(), ("relayed".into(), "relayed".into()));
    let (forwarded, sessions) = o.relay_forwarded();
    assert_eq!(
        sessions, 1,
        "one session, one connection: {:?}",
        o.relay_log
    );
    // One handshake on each side: one session opened in each audit log, one done event.
    for log in &o.audit {
        assert_eq!(log.matches("\"session_opened\"").count(), 1, "{log}");
    }
    for ev in [&o.tx, &o.rx] {
        assert_eq!(ev.iter().filter(|e| e["event"] == "done").count(), 1);
    }
    // What was still to send at the cut (durable bytes lag what crossed) went through
    // the relay: more than a transfer that stays direct leaves there.
    assert!(
        forwarded > RELAY_ALLOWANCE,
        "the rest of the file went through the relay: {forwarded}"
    );
    eprintln!(
        "natlab: {size} bytes, cut at an eighth, in {:?}, relay forwarded {forwarded} bytes",
        o.took
    );
    lab.close();
}

#[test]
fn with_path_relay_no_packet_passes_between_the_clinics() {
    let Some(lab) = NatLab::start(LabConfig::both(Nat::EndpointIndependent)) else {
        return;
    };
    let o = transfer(&lab, 4 << 20, "relay", None);
    assert_eq!(o.done_paths(), ("relayed".into(), "relayed".into()));
    let c = o.counters;
    assert_eq!(c.direct_seen(), 0, "{c:?}");
    assert_eq!(c.direct_passed(), 0, "{c:?}");
    assert_eq!(c.direct_delivered(), 0, "{c:?}");
    assert!(o.relay_forwarded().0 > 4 << 20);
    lab.close();
}
