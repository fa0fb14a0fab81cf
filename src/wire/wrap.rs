//! The wrapped-packet header: how an end-to-end QUIC packet travels through the relay's
//! datagram switch (docs/PROTOCOL.md, "Wrapped packets"). Sans-IO.
//!
//! ```text
//! type u8 = 0x10 | channel id u64 (big-endian) | the end-to-end QUIC packet
//! ```
//!
//! The first byte tells the packet apart from QUIC on the same UDP port: every QUIC v1
//! packet has its fixed bit (0x40) set unless the peer allowed greasing it (RFC 9287),
//! and every endpoint of phi-conduit turns that off (quinn
//! `EndpointConfig::grease_quic_bit(false)`, [`crate::transport`]). So a first byte with
//! both of its top bits clear (`0x00..=0x3f`) is never QUIC from us: [`classify`] calls
//! it [`Kind::Wrapped`] when it is [`WRAPPED`], [`Kind::Reserved`] otherwise (reserved for
//! the path probes of later versions; dropped today). A Version Negotiation packet sets
//! the form bit (0x80), so it is QUIC here whatever its other bits.
//!
//! The channel id is the sender's own allocation at the relay; the relay rewrites it in
//! place to the receiver's allocation, so each client only ever sees its own ids, and
//! the packet leaves the relay exactly as long as it came in.

/// First byte of a wrapped packet.
pub const WRAPPED: u8 = 0x10;
/// Bytes of the header before the end-to-end packet: the type byte and the channel id.
pub const HEADER_LEN: usize = 9;
/// The top two bits of a first byte that QUIC v1 never sends without greasing: the
/// long-header form bit and the fixed bit, both clear.
const QUIC_BITS: u8 = 0xc0;

/// What the first byte of a datagram says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A QUIC packet (fixed bit or form bit set), or an empty datagram QUIC will drop.
    Quic,
    /// A wrapped packet ([`WRAPPED`]).
    Wrapped,
    /// Another first byte with both top bits clear: not QUIC, not known to this version.
    Reserved,
}

/// Classifies a datagram by its first byte.
pub fn classify(datagram: &[u8]) -> Kind {
    match datagram.first() {
        None => Kind::Quic,
        Some(&b) if b & QUIC_BITS != 0 => Kind::Quic,
        Some(&WRAPPED) => Kind::Wrapped,
        Some(_) => Kind::Reserved,
    }
}

/// The header of a wrapped packet for channel `id`.
pub fn header(id: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = WRAPPED;
    h[1..].copy_from_slice(&id.to_be_bytes());
    h
}

/// A wrapped packet split into its channel id and the end-to-end packet, or `None` if the
/// datagram is not a wrapped packet or has no packet after the header.
pub fn parse(datagram: &[u8]) -> Option<(u64, &[u8])> {
    let (&[kind, a, b, c, d, e, f, g, h], inner) = datagram.split_first_chunk::<HEADER_LEN>()?;
    if kind != WRAPPED || inner.is_empty() {
        return None;
    }
    Some((u64::from_be_bytes([a, b, c, d, e, f, g, h]), inner))
}

/// Replaces the channel id of a wrapped packet in place (what the switch does on the way
/// through). `false`, and nothing written, if `datagram` is not a wrapped packet.
pub fn rewrite(datagram: &mut [u8], id: u64) -> bool {
    if parse(datagram).is_none() {
        return false;
    }
    match datagram.get_mut(1..HEADER_LEN) {
        Some(field) => {
            field.copy_from_slice(&id.to_be_bytes());
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_v1_first_bytes_are_never_taken_for_wrapped_packets() {
        // Every first byte quinn sends without greasing: long headers (Initial, 0-RTT,
        // Handshake, Retry) with any low bits, short headers with any spin, key phase
        // and packet number length, version negotiation with any random bits.
        for low in 0..=0x0fu8 {
            for kind in [0xc0, 0xd0, 0xe0, 0xf0] {
                assert_eq!(classify(&[kind | low]), Kind::Quic);
            }
        }
        for b in 0x40..=0x7fu8 {
            assert_eq!(classify(&[b]), Kind::Quic, "short header {b:#04x}");
        }
        for b in 0x80..=0xffu8 {
            assert_eq!(classify(&[b]), Kind::Quic, "version negotiation {b:#04x}");
        }
        for b in 0x00..=0x3fu8 {
            let want = if b == WRAPPED {
                Kind::Wrapped
            } else {
                Kind::Reserved
            };
            assert_eq!(classify(&[b]), want);
        }
        assert_eq!(classify(&[]), Kind::Quic);
    }

    #[test]
    fn header_parse_and_rewrite_round_trip() {
        let mut p = header(0x0102_0304_0506_0708).to_vec();
        p.extend_from_slice(b"\x40quic");
        assert_eq!(p[0], WRAPPED);
        assert_eq!(parse(&p), Some((0x0102_0304_0506_0708, &b"\x40quic"[..])));
        let len = p.len();
        assert!(rewrite(&mut p, u64::MAX));
        assert_eq!(p.len(), len);
        assert_eq!(parse(&p), Some((u64::MAX, &b"\x40quic"[..])));
    }

    #[test]
    fn short_empty_and_foreign_datagrams_do_not_parse() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&header(7)), None, "no packet after the header");
        assert_eq!(parse(&header(7)[..8]), None);
        let mut quic = header(7).to_vec();
        quic.push(0);
        quic[0] = 0x40;
        assert_eq!(parse(&quic), None);
        assert!(!rewrite(&mut quic, 9));
        assert_eq!(&quic[1..9], &7u64.to_be_bytes(), "untouched");
    }
}
