//! Transfers between the two NATed clinics through the relay on the lab's internet (the
//! product relays everything today): the file arrives whole, each clinic reached the relay
//! from its NAT's public address, and no packet went directly from one clinic to the other.

use std::time::{Duration, Instant};

use crate::common::natlab::{Clinic, LabConfig, Nat, NatLab};
use crate::common::{Running, blake3_file, events, pair_knowing, wait_for_durable, write_large};

/// Sends `size` bytes from a host in clinic A to one in clinic B through a relay in `inet`
/// (cutting UDP between the clinics once `cut_at` bytes are durable at the receiver); checks
/// the hash and the lab's counters; returns the transfer's wall time.
fn relayed_transfer(lab: &NatLab, size: u64, cut_at: Option<u64>) -> Duration {
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
    rx_cmd.arg("--out").arg(&out);
    let mut rx = Running::spawn(rx_cmd);
    assert_eq!(rx.first["event"], "joining", "{}", rx.first);
    let mut tx_cmd = lab.relay_cmd(Clinic::A, &relay, &p.sender, "send");
    tx_cmd.arg(&src).args(["--to", "lab"]);
    let mut tx = Running::spawn(tx_cmd);
    if let Some(at) = cut_at {
        wait_for_durable(&out, "scan.bin", at);
        lab.cut_udp_between_clinics();
        assert!(
            rx.child.try_wait().unwrap().is_none(),
            "the transfer was over before the cut"
        );
    }
    let (status, _, tx_err) = tx.finish();
    assert!(status.success(), "sender: {tx_err}");
    let (status, rx_out, rx_err) = rx.finish();
    let took = started.elapsed();
    assert!(status.success(), "receiver: {rx_err}");
    let done = events(&rx_out)
        .into_iter()
        .find(|e| e["event"] == "done")
        .unwrap_or_else(|| panic!("no done event: {rx_out}"));
    assert_eq!(done["bytes"], size);
    assert_eq!(blake3_file(&src), blake3_file(&out.join("scan.bin")));

    let c = lab.counters();
    // Both clinics reached the relay, each from its NAT's public address, never from a
    // private one.
    assert!(c.relay_from_a.0 > 0 && c.relay_from_b.0 > 0, "{c:?}");
    assert!(
        c.relay_from_a.1 > size,
        "the file's bytes left A for the relay: {c:?}"
    );
    assert_eq!(
        c.from_private.0, 0,
        "a private address reached the internet: {c:?}"
    );
    // Nothing went (or even tried to go) directly between the clinics' networks.
    assert_eq!(c.direct_seen(), 0, "{c:?}");
    assert_eq!(c.direct_passed(), 0, "{c:?}");
    assert_eq!(c.direct_delivered(), 0, "{c:?}");

    let (status, _, err) = relay.stop();
    assert!(status.success(), "relay: {err}");
    took
}

#[test]
fn a_file_crosses_two_endpoint_independent_nats_through_the_relay() {
    let Some(lab) = NatLab::start(LabConfig::both(Nat::EndpointIndependent)) else {
        return;
    };
    relayed_transfer(&lab, 4 << 20, None);
    lab.close();
}

#[test]
fn a_file_crosses_two_random_port_nats_through_the_relay() {
    let Some(lab) = NatLab::start(LabConfig::both(Nat::RandomPort)) else {
        return;
    };
    relayed_transfer(&lab, 4 << 20, None);
    lab.close();
}

#[test]
fn a_large_file_crosses_mixed_nats_and_a_cut_between_the_clinics_mid_transfer() {
    let config = LabConfig::each(Nat::EndpointIndependent, Nat::RandomPort);
    let Some(lab) = NatLab::start(config) else {
        return;
    };
    let took = relayed_transfer(&lab, 64 << 20, Some(16 << 20));
    eprintln!("natlab: 64 MiB relayed between NATed clinics in {took:?}");
    lab.close();
}
