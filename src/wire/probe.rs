//! Path probes and candidate lists (docs/PROTOCOL.md, "Candidates and probes"). Sans-IO.
//!
//! A probe travels as a plain UDP datagram from the socket that carries the end-to-end
//! connection to one of the peer's candidate addresses; the peer answers from the same
//! socket to where the probe came from. Both use the reserved first bytes of
//! [`crate::wire::wrap`] (never QUIC from us, never a wrapped packet):
//!
//! ```text
//! type u8 (0x11 probe, 0x12 reply; 0x13, 0x14 the same through the relay)
//!   | role u8 (0 QUIC client, 1 server) | txid u64 | mac [32]
//! mac = BLAKE3 keyed by the connection's probe key over type | role | txid
//! ```
//!
//! The probe key comes from the end-to-end connection's TLS exporter (label
//! [`PROBE_KEY_LABEL`]), which the Noise handshake's channel binding has tied to the
//! authenticated session: only the two endpoints of the session can make a probe or a
//! reply that verifies. The role keeps one side's probe from passing as the other's; the
//! txid ties a reply to the probe it answers (and the address that probe went to).
//!
//! A candidate list travels inside the end-to-end connection (a QUIC datagram, so it is
//! encrypted and authenticated by that connection):
//!
//! ```text
//! 0x01 | count u8 (<= MAX_CANDIDATES) | count x (family u8 4|6, IP [4|16], port u16)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// First byte of a probe.
pub const PROBE: u8 = 0x11;
/// First byte of a probe's reply.
pub const REPLY: u8 = 0x12;
/// First byte of a probe through the relay (inside a wrapped packet: it keeps the
/// allocations alive while the connection goes direct). Its own type, so that one seen
/// on the relay's leg cannot be replayed as a direct probe.
pub const RELAY_PROBE: u8 = 0x13;
/// First byte of the reply to a [`RELAY_PROBE`].
pub const RELAY_REPLY: u8 = 0x14;
/// Bytes of a probe or a reply.
pub const LEN: usize = 1 + 1 + 8 + 32;
/// The TLS exporter label of the probe key.
pub const PROBE_KEY_LABEL: &[u8] = b"EXPORTER-phi-conduit path probe";
/// Most candidates a list carries (more are not read).
pub const MAX_CANDIDATES: usize = 8;
/// First byte of a candidate list.
const CANDIDATES: u8 = 0x01;

/// Which end of the end-to-end connection made a probe or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The QUIC client (the side that connected).
    Client = 0,
    /// The QUIC server.
    Server = 1,
}

impl Role {
    /// The other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

/// A verified probe or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// [`PROBE`] or [`REPLY`].
    pub kind: u8,
    /// Who made it.
    pub role: Role,
    /// The probe's transaction id (a reply carries its probe's).
    pub txid: u64,
}

fn mac(key: &[u8; 32], kind: u8, role: Role, txid: u64) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&[kind, role as u8]);
    h.update(&txid.to_be_bytes());
    h.finalize()
}

/// A probe or reply (`kind`) made by `role` under `key`.
pub fn encode(key: &[u8; 32], kind: u8, role: Role, txid: u64) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    out[0] = kind;
    out[1] = role as u8;
    out[2..10].copy_from_slice(&txid.to_be_bytes());
    out[10..].copy_from_slice(mac(key, kind, role, txid).as_bytes());
    out
}

/// The probe or reply in `datagram` if it is one and its MAC verifies under `key`
/// (compared in constant time); `None` for anything else.
pub fn verify(key: &[u8; 32], datagram: &[u8]) -> Option<Probe> {
    let bytes: &[u8; LEN] = datagram.try_into().ok()?;
    let kind = bytes[0];
    if !matches!(kind, PROBE | REPLY | RELAY_PROBE | RELAY_REPLY) {
        return None;
    }
    let role = match bytes[1] {
        0 => Role::Client,
        1 => Role::Server,
        _ => return None,
    };
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[2..10]);
    let txid = u64::from_be_bytes(id);
    let mut got = [0u8; 32];
    got.copy_from_slice(&bytes[10..]);
    // blake3::Hash compares in constant time.
    (mac(key, kind, role, txid) == blake3::Hash::from_bytes(got)).then_some(Probe {
        kind,
        role,
        txid,
    })
}

/// Whether `datagram` looks like a probe or reply, direct or through the relay (its
/// first byte), before any check.
pub fn is_probe(datagram: &[u8]) -> bool {
    matches!(
        datagram.first(),
        Some(&PROBE | &REPLY | &RELAY_PROBE | &RELAY_REPLY)
    )
}

/// The reply type to a probe type (`None` for a reply).
pub fn reply_to(kind: u8) -> Option<u8> {
    match kind {
        PROBE => Some(REPLY),
        RELAY_PROBE => Some(RELAY_REPLY),
        _ => None,
    }
}

/// A candidate list of at most [`MAX_CANDIDATES`] addresses (the rest are left out).
pub fn encode_candidates(candidates: &[SocketAddr]) -> Vec<u8> {
    let list = &candidates[..candidates.len().min(MAX_CANDIDATES)];
    let mut out = Vec::with_capacity(2 + list.len() * 19);
    out.push(CANDIDATES);
    out.push(list.len() as u8);
    for c in list {
        match c.ip() {
            IpAddr::V4(ip) => {
                out.push(4);
                out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.push(6);
                out.extend_from_slice(&ip.octets());
            }
        }
        out.extend_from_slice(&c.port().to_be_bytes());
    }
    out
}

/// The addresses of a candidate list, or `None` if `bytes` is not exactly one.
pub fn decode_candidates(bytes: &[u8]) -> Option<Vec<SocketAddr>> {
    let (&[kind, count], mut rest) = bytes.split_first_chunk::<2>()?;
    if kind != CANDIDATES || usize::from(count) > MAX_CANDIDATES {
        return None;
    }
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (&family, tail) = rest.split_first()?;
        let (ip, tail) = match family {
            4 => {
                let (ip, tail) = tail.split_first_chunk::<4>()?;
                (IpAddr::V4(Ipv4Addr::from(*ip)), tail)
            }
            6 => {
                let (ip, tail) = tail.split_first_chunk::<16>()?;
                (IpAddr::V6(Ipv6Addr::from(*ip)), tail)
            }
            _ => return None,
        };
        let (port, tail) = tail.split_first_chunk::<2>()?;
        out.push(SocketAddr::new(ip, u16::from_be_bytes(*port)));
        rest = tail;
    }
    rest.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_verifies_only_under_its_key_and_unchanged() {
        let key = [7u8; 32];
        let p = encode(&key, PROBE, Role::Client, 0x0102_0304_0506_0708);
        assert_eq!(
            verify(&key, &p),
            Some(Probe {
                kind: PROBE,
                role: Role::Client,
                txid: 0x0102_0304_0506_0708
            })
        );
        assert_eq!(verify(&[8u8; 32], &p), None, "another session's key");
        for i in 0..LEN {
            let mut bad = p;
            bad[i] ^= 1;
            assert_eq!(verify(&key, &bad), None, "byte {i} changed");
        }
        assert_eq!(verify(&key, &p[..LEN - 1]), None);
        let r = encode(&key, REPLY, Role::Server, 9);
        assert_eq!(
            verify(&key, &r).map(|p| (p.kind, p.role)),
            Some((REPLY, Role::Server))
        );
        assert!(is_probe(&p) && is_probe(&r) && !is_probe(&[0x10]));
        // A probe through the relay is another type: its MAC does not pass as a direct
        // probe's.
        let mut relayed = encode(&key, RELAY_PROBE, Role::Client, 0x0102_0304_0506_0708);
        assert_eq!(verify(&key, &relayed).map(|p| p.kind), Some(RELAY_PROBE));
        relayed[0] = PROBE;
        assert_eq!(verify(&key, &relayed), None);
        assert_eq!(reply_to(PROBE), Some(REPLY));
        assert_eq!(reply_to(RELAY_PROBE), Some(RELAY_REPLY));
        assert_eq!(reply_to(REPLY), None);
    }

    #[test]
    fn candidate_lists_round_trip_and_bad_ones_are_refused() {
        let list: Vec<SocketAddr> = ["198.18.1.2:4000", "[2001:db8::1]:65535", "10.0.0.2:1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let bytes = encode_candidates(&list);
        assert_eq!(decode_candidates(&bytes), Some(list.clone()));
        assert_eq!(decode_candidates(&bytes[..bytes.len() - 1]), None);
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode_candidates(&long), None);
        let mut family = bytes.clone();
        family[2] = 5;
        assert_eq!(decode_candidates(&family), None);
        assert_eq!(decode_candidates(&[CANDIDATES, 9]), None);
        let many: Vec<SocketAddr> = (0..20)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 1)))
            .collect();
        assert_eq!(
            decode_candidates(&encode_candidates(&many)).map(|l| l.len()),
            Some(MAX_CANDIDATES)
        );
    }
}
