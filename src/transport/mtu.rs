//! Path MTU ceilings: how large a UDP payload quinn's path MTU discovery may probe for,
//! per peer (issue #23, deliverable 4).
//!
//! QUIC pays per packet (header protection, an AEAD call, ACK bookkeeping, a syscall
//! share), so larger packets cost less per byte. quinn starts at 1,200 bytes and probes
//! up to its default ceiling of 1,452 (Ethernet with IPv6). Where the interface towards
//! the peer carries more (loopback, jumbo-frame LANs) the ceiling is raised to what that
//! interface carries, capped at [`LOCAL_CEILING`]; towards anything else (a peer behind a
//! router: the internet) it stays [`INTERNET_CEILING`]. Discovery itself stays quinn's:
//! probes are sent with "don't fragment", a lost probe lowers the bound, and a black hole
//! drops back to 1,200. docs/BENCHMARKS.md has the measurements behind the cap.

use std::net::IpAddr;

/// The ceiling towards a peer not on a directly attached network (quinn's default:
/// a 1,500-byte Ethernet MTU less the IPv6 and UDP headers).
pub const INTERNET_CEILING: u16 = 1452;

/// The highest ceiling used, towards a peer on loopback or on an attached network whose
/// interface carries larger frames. Measured on Linux loopback (docs/BENCHMARKS.md):
/// 4,000-byte packets halve quinn's CPU per byte against 1,452, while from about 7,900
/// bytes bursts of loss made quinn's black-hole detection fall back to 1,200.
pub const LOCAL_CEILING: u16 = 4000;

/// The largest UDP payload an endpoint accepts (quinn's `max_udp_payload_size`, sent to
/// the peer as a transport parameter, so no peer probes above it).
pub const MAX_UDP_PAYLOAD: u16 = LOCAL_CEILING;

/// An attached network: one address of this host, its prefix length and the MTU of its
/// interface (`None` where it cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// This host's address on the network.
    pub ip: IpAddr,
    /// The network's prefix length.
    pub prefix: u8,
    /// The interface's MTU in bytes.
    pub mtu: Option<u32>,
}

/// The networks this host is attached to, with their interfaces' MTUs (read from
/// `/sys/class/net/NAME/mtu` on Linux; unknown elsewhere).
pub fn attached() -> Vec<Attached> {
    attached_where(|_, _| true)
}

/// The attached networks whose address and prefix pass `keep`; only their interfaces'
/// MTUs are read.
fn attached_where(keep: impl Fn(IpAddr, u8) -> bool) -> Vec<Attached> {
    let Ok(list) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|i| {
            let (ip, prefix) = match &i.addr {
                if_addrs::IfAddr::V4(a) => (IpAddr::V4(a.ip), a.prefixlen),
                if_addrs::IfAddr::V6(a) => (IpAddr::V6(a.ip), a.prefixlen),
            };
            keep(ip, prefix).then(|| Attached {
                ip,
                prefix,
                mtu: interface_mtu(&i.name),
            })
        })
        .collect()
}

#[cfg(target_os = "linux")]
fn interface_mtu(name: &str) -> Option<u32> {
    // Interface names never hold '/', but a name is not ours to trust blindly.
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn interface_mtu(_name: &str) -> Option<u32> {
    None
}

/// The path MTU ceiling towards `peer` on this host ([`ceiling_among`] over the attached
/// networks). It runs for every connection attempt: loopback is answered without
/// listing the interfaces, and only the MTUs of the networks that hold `peer` are read.
pub fn ceiling_for(peer: IpAddr) -> u16 {
    let canonical = peer.to_canonical();
    if canonical.is_loopback() {
        return LOCAL_CEILING;
    }
    let networks = attached_where(|ip, prefix| same_network(canonical, ip.to_canonical(), prefix));
    ceiling_among(peer, &networks)
}

/// The path MTU ceiling towards `peer` given the networks this host is attached to:
/// [`LOCAL_CEILING`] for loopback; for a peer inside an attached network, what its
/// interface carries less the IP and UDP headers, between [`INTERNET_CEILING`] and
/// [`LOCAL_CEILING`]; [`INTERNET_CEILING`] for any other peer.
pub fn ceiling_among(peer: IpAddr, networks: &[Attached]) -> u16 {
    let peer = peer.to_canonical();
    if peer.is_loopback() {
        return LOCAL_CEILING;
    }
    let overhead: u32 = if peer.is_ipv4() { 20 + 8 } else { 40 + 8 };
    networks
        .iter()
        .filter(|n| same_network(peer, n.ip.to_canonical(), n.prefix))
        .filter_map(|n| n.mtu)
        .map(|mtu| mtu.saturating_sub(overhead))
        .max()
        .map_or(INTERNET_CEILING, |payload| {
            u16::try_from(payload.min(u32::from(LOCAL_CEILING)))
                .unwrap_or(LOCAL_CEILING)
                .max(INTERNET_CEILING)
        })
}

/// Whether `a` and `b` share their first `prefix` bits (same family only).
fn same_network(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    let (a, b, bits) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
        _ => return false,
    };
    let prefix = u32::from(prefix).min(bits);
    if prefix == 0 {
        // A default route is not an attached network.
        return false;
    }
    let shift = bits - prefix;
    (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(ip: &str, prefix: u8, mtu: Option<u32>) -> Attached {
        Attached {
            ip: ip.parse().unwrap(),
            prefix,
            mtu,
        }
    }

    #[test]
    fn loopback_peers_get_the_local_ceiling() {
        for peer in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(ceiling_among(peer.parse().unwrap(), &[]), LOCAL_CEILING);
        }
    }

    #[test]
    fn a_peer_on_a_jumbo_frame_network_gets_its_mtu_up_to_the_cap() {
        let nets = [
            net("192.168.7.10", 24, Some(9000)),
            net("10.0.0.2", 16, Some(1500)),
        ];
        assert_eq!(
            ceiling_among("192.168.7.99".parse().unwrap(), &nets),
            LOCAL_CEILING
        );
        // A 1,500-byte LAN: its own MTU less 28 bytes of IPv4 and UDP headers.
        assert_eq!(ceiling_among("10.0.200.1".parse().unwrap(), &nets), 1472);
        // A small jumbo MTU below the cap is used as it is.
        let nets = [net("fd00::1", 64, Some(3000))];
        assert_eq!(ceiling_among("fd00::2".parse().unwrap(), &nets), 3000 - 48);
    }

    #[test]
    fn peers_behind_a_router_or_on_unknown_interfaces_get_the_internet_ceiling() {
        let nets = [
            net("192.168.7.10", 24, Some(9000)),
            net("0.0.0.0", 0, Some(65536)),
            net("10.1.1.1", 8, None),
        ];
        for peer in ["192.168.8.1", "203.0.113.5", "2001:db8::1", "10.2.3.4"] {
            assert_eq!(
                ceiling_among(peer.parse().unwrap(), &nets),
                INTERNET_CEILING
            );
        }
        // An interface with a tiny MTU never lowers the ceiling below quinn's default.
        let nets = [net("192.168.7.10", 24, Some(1280))];
        assert_eq!(
            ceiling_among("192.168.7.1".parse().unwrap(), &nets),
            INTERNET_CEILING
        );
    }

    #[test]
    fn this_host_has_loopback_attached() {
        // Every test machine has a loopback interface; on Linux its MTU is readable.
        let nets = attached();
        assert!(nets.iter().any(|n| n.ip.is_loopback()), "{nets:?}");
        #[cfg(target_os = "linux")]
        assert!(
            nets.iter()
                .filter(|n| n.ip.is_loopback())
                .all(|n| n.mtu.is_some_and(|m| m >= 1280)),
            "{nets:?}"
        );
    }
}
