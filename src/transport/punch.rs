//! Hole punching under one end-to-end connection (docs/PROTOCOL.md, "Candidates and
//! probes"): once the session through the relay is authenticated, the two endpoints tell
//! each other their candidate addresses inside the connection and probe them from the
//! connection's own socket; the first probe whose reply comes back moves the connection's
//! packets to that address ([`RelayPath`]), and a direct path that stops answering hands
//! them back to the relay. quinn sees none of it: no new handshake, no migration.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::demux::DemuxSocket;
use super::path::RelayPath;
use crate::wire::probe::{self, Role};

/// How often probes go out while no direct path is known, for the first
/// [`FAST_PHASE`] of the session (every candidate each time).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// How long probing runs at [`PROBE_INTERVAL`]; after it, one round every
/// [`SLOW_INTERVAL`] (a NAT that lets nothing through costs a few datagrams a second).
pub const FAST_PHASE: Duration = Duration::from_secs(10);
/// The pace of probing after [`FAST_PHASE`], and after a fall back to the relay.
pub const SLOW_INTERVAL: Duration = Duration::from_secs(2);
/// How often the direct path is probed while it carries the connection.
pub const KEEPALIVE: Duration = Duration::from_millis(500);
/// A direct path with no reply for this long is given up: the packets go through the
/// relay again, in the same connection.
pub const DIRECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A direct path that answers probes but over which no QUIC came for this long (a path
/// that passes small datagrams and not the connection's) is given up too. Longer than
/// QUIC's keep-alive, so that an idle connection keeps its path.
pub const QUIC_SILENCE: Duration = Duration::from_secs(7);
/// How often a probe goes through the relay while the packets go direct (the first as the
/// connection goes direct), so that the relay keeps both allocations (its idle limit is
/// 30 s by default; a few seconds at least) and counts the allocation as gone direct.
pub const RELAY_KEEPALIVE: Duration = super::KEEP_ALIVE;
/// Most probes sent to one address that never answered: after them the address is left
/// alone (a peer cannot make us probe a third party for the whole session).
pub const MAX_UNANSWERED: u32 = 100;
/// How long a sender whose offer was accepted waits for a direct path before the data
/// moves ([`super::path::settle`]): long enough for the probes of two endpoints whose
/// NATs let them through (a few round trips), short beside a transfer that stays on the
/// relay.
pub const SETTLE: Duration = Duration::from_millis(500);
/// How many times our candidate list is sent (one a second: a QUIC datagram may be
/// lost).
pub const CANDIDATE_SENDS: u32 = 5;

/// Starts punching for `conn`, an end-to-end connection on `path` (whose socket is
/// `socket`), `role` being our end of it and `reflexive` our address as the relay sees
/// it. The task waits until [`super::path::session_up`] is called for `conn` and ends
/// with the connection.
pub fn spawn(
    conn: quinn::Connection,
    path: Arc<RelayPath>,
    socket: Arc<DemuxSocket>,
    reflexive: SocketAddr,
    role: Role,
) {
    path.start_punching();
    tokio::spawn(async move {
        tokio::select! {
            () = run(&conn, &path, &socket, reflexive, role) => {}
            _ = conn.closed() => {}
        }
    });
}

async fn run(
    conn: &quinn::Connection,
    path: &RelayPath,
    socket: &DemuxSocket,
    reflexive: SocketAddr,
    role: Role,
) {
    path.wait_authenticated().await;
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    if conn
        .export_keying_material(key.as_mut(), probe::PROBE_KEY_LABEL, b"")
        .is_err()
    {
        return;
    }
    path.arm(*key, role);
    let Ok(local) = quinn::AsyncUdpSocket::local_addr(socket) else {
        return;
    };
    let ours = candidates(local, reflexive, path.relay());
    let list = bytes::Bytes::from(probe::encode_candidates(&ours));
    let mut theirs: Vec<SocketAddr> = Vec::new();
    let start = Instant::now();
    let mut sent_lists = 0u32;
    let mut last_list: Option<Instant> = None;
    let mut last_round: Option<Instant> = None;
    let mut last_relay: Option<Instant> = None;
    let mut changes = path.subscribe();
    // Probes sent to each address since it last carried the connection.
    let mut unanswered: std::collections::HashMap<SocketAddr, u32> =
        std::collections::HashMap::new();
    // The last count of QUIC from the direct address, and when it last grew.
    let mut quic_seen = (path.direct_quic(), Instant::now());
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let datagram = tokio::select! {
            d = conn.read_datagram() => match d {
                Ok(d) => Some(d),
                Err(_) => return,
            },
            _ = tick.tick() => None,
            // The peer's probe from a new address: probe it back now.
            () = path.wait_learned() => {
                last_round = None;
                None
            }
            // The path changed: going direct, tell the relay at once (below), and give
            // the QUIC on it its full time.
            _ = changes.changed() => {
                quic_seen = (path.direct_quic(), Instant::now());
                None
            }
        };
        if let Some(d) = datagram {
            let mut new = false;
            for c in probe::decode_candidates(&d).unwrap_or_default() {
                if usable(c, local, path.relay())
                    && !theirs.contains(&c)
                    && theirs.len() < probe::MAX_CANDIDATES
                {
                    theirs.push(c);
                    new = true;
                }
            }
            if !new {
                continue;
            }
            // New candidates: probe them now.
            last_round = None;
        }
        let now = Instant::now();
        if sent_lists < CANDIDATE_SENDS
            && last_list.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            let _ = conn.send_datagram(list.clone());
            sent_lists += 1;
            last_list = Some(now);
        }
        match path.direct() {
            None => {
                let pace = if now.duration_since(start) < FAST_PHASE {
                    PROBE_INTERVAL
                } else {
                    SLOW_INTERVAL
                };
                if last_round.is_some_and(|t| now.duration_since(t) < pace) {
                    continue;
                }
                last_round = Some(now);
                let mut targets = theirs.clone();
                for l in path.learned() {
                    if usable(l, local, path.relay()) && !targets.contains(&l) {
                        targets.push(l);
                    }
                }
                for to in targets {
                    let sent = unanswered.entry(to).or_insert(0);
                    if *sent >= MAX_UNANSWERED {
                        continue;
                    }
                    if let Some(p) = path.probe_for(to) {
                        *sent += 1;
                        // A full socket drops the probe; the next round sends another.
                        let _ = socket.send_to(to, &p);
                    }
                }
            }
            Some(direct) => {
                unanswered.remove(&direct);
                let quic = path.direct_quic();
                if quic != quic_seen.0 {
                    quic_seen = (quic, now);
                }
                let quic_silent = now.duration_since(quic_seen.1) > QUIC_SILENCE;
                if quic_silent {
                    path.fall_back();
                }
                if quic_silent || path.fall_back_if_silent(DIRECT_TIMEOUT) {
                    // Back to the slow pace: the direct path may come back.
                    last_round = Some(now);
                    continue;
                }
                if last_round.is_none_or(|t| now.duration_since(t) >= KEEPALIVE) {
                    last_round = Some(now);
                    if let Some(p) = path.probe_for(direct) {
                        let _ = socket.send_to(direct, &p);
                    }
                }
                if last_relay.is_none_or(|t| now.duration_since(t) >= RELAY_KEEPALIVE) {
                    last_relay = Some(now);
                    if let Some(p) = path.relay_probe() {
                        let _ = socket.send_to(path.relay(), &p);
                    }
                }
            }
        }
    }
}

/// Whether the peer's candidate `c` is worth a probe from our socket bound to `local`:
/// the same family, a unicast address of the internet or a LAN and a port, not the relay;
/// loopback only when the relay is on loopback too (both ends on one host), never
/// link-local, broadcast or an IPv4-mapped IPv6 address.
fn usable(c: SocketAddr, local: SocketAddr, relay: SocketAddr) -> bool {
    let odd = match c.ip() {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unicast_link_local() || v6.to_ipv4_mapped().is_some(),
    };
    c.is_ipv4() == local.is_ipv4()
        && c.port() != 0
        && c != relay
        && !c.ip().is_unspecified()
        && !c.ip().is_multicast()
        && !odd
        && (!c.ip().is_loopback() || relay.ip().is_loopback())
}

/// Our candidates: the relay's view of us (`reflexive`), then each address of this
/// host's interfaces of the socket's family with the socket's port (loopback only when
/// the relay itself is on loopback; never link-local).
pub fn candidates(local: SocketAddr, reflexive: SocketAddr, relay: SocketAddr) -> Vec<SocketAddr> {
    let mut out = vec![reflexive];
    let ips: Vec<IpAddr> = if local.ip().is_unspecified() {
        if_addrs::get_if_addrs()
            .map(|l| l.into_iter().map(|i| i.ip()).collect())
            .unwrap_or_default()
    } else {
        vec![local.ip()]
    };
    for ip in ips {
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        let c = SocketAddr::new(ip, local.port());
        if ip.is_ipv4() == local.is_ipv4()
            && !link_local
            && (!ip.is_loopback() || relay.ip().is_loopback())
            && !out.contains(&c)
        {
            out.push(c);
        }
    }
    out.truncate(probe::MAX_CANDIDATES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_start_with_the_reflexive_address_and_keep_the_family() {
        let local: SocketAddr = "0.0.0.0:4500".parse().unwrap();
        let reflexive: SocketAddr = "198.18.1.2:61000".parse().unwrap();
        let relay: SocketAddr = "198.19.1.1:7471".parse().unwrap();
        let c = candidates(local, reflexive, relay);
        assert_eq!(c[0], reflexive);
        assert!(c.iter().all(|a| a.is_ipv4()), "{c:?}");
        assert!(c.iter().skip(1).all(|a| a.port() == 4500), "{c:?}");
        assert!(!c.iter().any(|a| a.ip().is_loopback()), "{c:?}");
        let on_loopback = candidates(local, reflexive, "127.0.0.1:7471".parse().unwrap());
        assert!(
            on_loopback.contains(&"127.0.0.1:4500".parse().unwrap()),
            "{on_loopback:?}"
        );
        assert!(c.len() <= probe::MAX_CANDIDATES);
    }

    #[test]
    fn only_unicast_candidates_of_our_family_other_than_the_relay_are_probed() {
        let local: SocketAddr = "0.0.0.0:1".parse().unwrap();
        let relay: SocketAddr = "192.0.2.1:7471".parse().unwrap();
        assert!(usable("192.0.2.9:4000".parse().unwrap(), local, relay));
        assert!(!usable(relay, local, relay));
        assert!(!usable("[2001:db8::1]:4000".parse().unwrap(), local, relay));
        assert!(!usable("0.0.0.0:4000".parse().unwrap(), local, relay));
        assert!(!usable("224.0.0.1:4000".parse().unwrap(), local, relay));
        assert!(!usable("192.0.2.9:0".parse().unwrap(), local, relay));
        assert!(!usable("127.0.0.1:4000".parse().unwrap(), local, relay));
        assert!(usable(
            "127.0.0.1:4000".parse().unwrap(),
            local,
            "127.0.0.1:7471".parse().unwrap()
        ));
        assert!(!usable("169.254.1.1:4000".parse().unwrap(), local, relay));
        assert!(!usable(
            "255.255.255.255:4000".parse().unwrap(),
            local,
            relay
        ));
        let v6: SocketAddr = "[::]:1".parse().unwrap();
        let relay6: SocketAddr = "[2001:db8::1]:7471".parse().unwrap();
        assert!(usable("[2001:db8::9]:4000".parse().unwrap(), v6, relay6));
        assert!(!usable("[fe80::1]:4000".parse().unwrap(), v6, relay6));
        assert!(!usable(
            "[::ffff:192.0.2.9]:4000".parse().unwrap(),
            v6,
            relay6
        ));
    }
}
