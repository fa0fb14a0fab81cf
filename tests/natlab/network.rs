//! The lab's network itself, with plain UDP sockets inside its namespaces: each NAT type
//! maps as it should, a hole punched through endpoint-independent NATs carries packets (and
//! the counters see them), a random-port NAT defeats it, the cut and the relay block drop.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::natlab::{Clinic, LabConfig, Nat, NatLab, Site};

const ANY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
const WAIT: Duration = Duration::from_millis(300);

/// A UDP reflector in `inet` on the relay's address: answers each datagram with the
/// address it came from (as text). Stops (and closes its socket) when dropped.
struct Reflector {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn reflector(lab: &NatLab) -> Reflector {
    let sock = lab.udp_socket(Site::Internet, SocketAddrV4::new(lab.relay_ip(), 0));
    let addr = sock.local_addr().unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stopped.load(Ordering::Relaxed) {
            if let Ok((_, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(from.to_string().as_bytes(), from);
            }
        }
    });
    Reflector { addr, stop }
}

/// The public address `sock` is seen from by `reflector`, or `None` without an answer.
fn mapped(sock: &UdpSocket, reflector: SocketAddr) -> Option<SocketAddr> {
    sock.set_read_timeout(Some(WAIT)).unwrap();
    for _ in 0..3 {
        sock.send_to(b"?", reflector).unwrap();
        let mut buf = [0u8; 64];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return std::str::from_utf8(&buf[..n]).ok()?.parse().ok();
        }
    }
    None
}

/// A host's socket and its mapping towards two reflectors.
fn host_socket(
    lab: &NatLab,
    c: Clinic,
    r1: SocketAddr,
    r2: SocketAddr,
) -> (UdpSocket, SocketAddr, SocketAddr) {
    let sock = lab.udp_socket(Site::Host(c), ANY);
    let m1 = mapped(&sock, r1).expect("no answer from the reflector");
    let m2 = mapped(&sock, r2).expect("no answer from the reflector");
    assert_eq!(
        m1.ip(),
        std::net::IpAddr::V4(lab.public_ip(c)),
        "not NATed to the public address"
    );
    (sock, m1, m2)
}

/// Both hosts send to each other's mapped address a few times; returns how many datagrams
/// each received from the other (A's count, B's count).
fn punch(
    a: &UdpSocket,
    a_mapped: SocketAddr,
    b: &UdpSocket,
    b_mapped: SocketAddr,
) -> (usize, usize) {
    for _ in 0..5 {
        a.send_to(b"from a", b_mapped).unwrap();
        b.send_to(b"from b", a_mapped).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let drain = |s: &UdpSocket, want: &[u8]| {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut n = 0;
        let mut buf = [0u8; 64];
        while let Ok((k, _)) = s.recv_from(&mut buf) {
            if &buf[..k] == want {
                n += 1;
            }
        }
        n
    };
    (drain(a, b"from b"), drain(b, b"from a"))
}

#[test]
fn endpoint_independent_nats_keep_one_mapping_and_a_punched_hole_carries_packets() {
    let Some(lab) = NatLab::start(LabConfig::both(Nat::EndpointIndependent)) else {
        return;
    };
    let (ref1, ref2) = (reflector(&lab), reflector(&lab));
    let (r1, r2) = (ref1.addr, ref2.addr);
    let (a, a1, a2) = host_socket(&lab, Clinic::A, r1, r2);
    let (b, b1, b2) = host_socket(&lab, Clinic::B, r1, r2);
    assert_eq!(a1, a2, "one mapping for every destination");
    assert_eq!(b1, b2, "one mapping for every destination");
    assert_eq!(lab.counters().direct_seen(), 0);

    let (to_a, to_b) = punch(&a, a1, &b, b1);
    assert!(
        to_a > 0 && to_b > 0,
        "the hole was not punched: {to_a} {to_b}"
    );
    let c = lab.counters();
    assert!(c.direct_passed() >= (to_a + to_b) as u64, "{c:?}");
    assert!(
        c.delivered_to_a.0 >= to_a as u64 && c.delivered_to_b.0 >= to_b as u64,
        "{c:?}"
    );
    assert_eq!(
        c.from_private.0, 0,
        "a private address reached the internet: {c:?}"
    );
    lab.close();
}

#[test]
fn a_random_port_nat_maps_per_destination_and_defeats_the_punch() {
    let config = LabConfig::each(Nat::EndpointIndependent, Nat::RandomPort);
    let Some(lab) = NatLab::start(config) else {
        return;
    };
    let (ref1, ref2, ref3) = (reflector(&lab), reflector(&lab), reflector(&lab));
    let (r1, r2, r3) = (ref1.addr, ref2.addr, ref3.addr);
    let (a, a1, _) = host_socket(&lab, Clinic::A, r1, r2);
    let (b, b1, b2) = host_socket(&lab, Clinic::B, r1, r2);
    let b3 = mapped(&b, r3).unwrap();
    assert!(
        b1 != b2 || b2 != b3,
        "a random-port NAT kept one port: {b1} {b2} {b3}"
    );

    let (to_a, to_b) = punch(&a, a1, &b, b1);
    assert_eq!((to_a, to_b), (0, 0), "a hole through a random-port NAT");
    let c = lab.counters();
    assert!(c.direct_seen() > 0, "{c:?}");
    assert_eq!(c.direct_delivered(), 0, "{c:?}");
    lab.close();
}

#[test]
fn the_cut_drops_udp_between_the_clinics_and_restoring_lets_it_through_again() {
    let Some(lab) = NatLab::start(LabConfig::both(Nat::EndpointIndependent)) else {
        return;
    };
    let (ref1, ref2) = (reflector(&lab), reflector(&lab));
    let (r1, r2) = (ref1.addr, ref2.addr);
    let (a, a1, _) = host_socket(&lab, Clinic::A, r1, r2);
    let (b, b1, _) = host_socket(&lab, Clinic::B, r1, r2);
    let (to_a, to_b) = punch(&a, a1, &b, b1);
    assert!(to_a > 0 && to_b > 0);

    lab.cut_udp_between_clinics();
    let before = lab.counters();
    assert_eq!(punch(&a, a1, &b, b1), (0, 0), "the cut let UDP through");
    let after = lab.counters();
    assert!(after.direct_seen() > before.direct_seen());
    assert_eq!(after.direct_passed(), before.direct_passed(), "{after:?}");
    // The relay's address is still reachable while the clinics are cut apart.
    assert!(mapped(&a, r1).is_some());

    lab.restore_udp_between_clinics();
    let (to_a, to_b) = punch(&a, a1, &b, b1);
    assert!(to_a > 0 && to_b > 0, "restoring did not: {to_a} {to_b}");
    lab.close();
}

#[test]
fn udp_blocked_from_the_start_and_a_blocked_relay() {
    let config = LabConfig {
        block_udp_between_clinics: true,
        ..LabConfig::default()
    };
    let Some(lab) = NatLab::start(config) else {
        return;
    };
    let (ref1, ref2) = (reflector(&lab), reflector(&lab));
    let (r1, r2) = (ref1.addr, ref2.addr);
    let (a, a1, _) = host_socket(&lab, Clinic::A, r1, r2);
    let (b, b1, _) = host_socket(&lab, Clinic::B, r1, r2);
    assert_eq!(punch(&a, a1, &b, b1), (0, 0));
    assert_eq!(lab.counters().direct_passed(), 0);

    lab.block_relay();
    assert_eq!(
        mapped(&a, r1),
        None,
        "the relay's address answered while blocked"
    );
    lab.unblock_relay();
    assert_eq!(mapped(&a, r1), Some(a1));
    lab.close();
}
