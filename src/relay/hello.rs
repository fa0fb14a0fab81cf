//! The relay Hello and its answer: sans-IO codecs (docs/PROTOCOL.md, "Relay").
//!
//! A client opens the first bidirectional stream of its connection to the relay and
//! writes one frame (2-byte big-endian length, then the body):
//!
//! ```text
//! magic "PCRH" | version u8 = 2 | role u8 (1 listen, 2 connect) | flags u8
//! | rendezvous id [32] | token length u8 | token (0..=128 bytes)
//! ```
//!
//! Flag bit 0 marks a single-use rendezvous (code phrases: the nameplate is burned once
//! paired). Other flag bits must be zero. A listener on a rendezvous id that is not
//! single-use (a receiver's key) then proves it holds that key: the relay writes a
//! challenge on the same stream and the listener answers with its proof
//! ([`crate::relay::proof`]). The relay answers with the one byte [`PAIRED`] once it has
//! paired the client, or closes the connection with one of the [`Refusal`] codes.
//!
//! Version 2 (this one) added the listener proof; a version 1 Hello is refused with
//! [`Refusal::BadHello`].

use thiserror::Error;

/// Magic bytes opening a Hello.
pub const MAGIC: &[u8; 4] = b"PCRH";
/// The relay protocol version this build speaks.
pub const VERSION: u8 = 2;
/// Largest token in a Hello.
pub const MAX_TOKEN: usize = 128;
/// Largest Hello body: the relay refuses a length field above this before reading.
pub const MAX_HELLO: usize = 4 + 1 + 1 + 1 + 32 + 1 + MAX_TOKEN;
/// The relay's answer once paired.
pub const PAIRED: u8 = 0x50;
/// Flag: the rendezvous id may be paired once only.
pub const FLAG_SINGLE_USE: u8 = 0x01;
/// Flag: the client asks for an allocation on the relay's datagram switch instead of a
/// splice ([`Grant`]). Both clients of a pairing must ask alike.
pub const FLAG_SWITCH: u8 = 0x02;

/// Which side of a pairing a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Waits for a connector (a receiver; a code-phrase sender).
    Listen,
    /// Joins a waiting listener.
    Connect,
}

impl Role {
    /// The other role.
    pub fn other(self) -> Self {
        match self {
            Role::Listen => Role::Connect,
            Role::Connect => Role::Listen,
        }
    }
}

/// A decoded Hello.
#[derive(Clone, PartialEq, Eq)]
pub struct Hello {
    /// Listen or connect.
    pub role: Role,
    /// Paired once only (code phrases).
    pub single_use: bool,
    /// Wants an allocation on the datagram switch ([`FLAG_SWITCH`]), not a splice.
    pub switch: bool,
    /// Which pairing this client wants.
    pub rendezvous: [u8; 32],
    /// Access token (empty: none).
    pub token: Vec<u8>,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("role", &self.role)
            .field("single_use", &self.single_use)
            .field("switch", &self.switch)
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .finish_non_exhaustive()
    }
}

/// Why a Hello is malformed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HelloError {
    /// Not a relay Hello.
    #[error("not a relay hello (bad magic)")]
    Magic,
    /// Another protocol version.
    #[error("relay protocol version {0} is not supported (this relay speaks {VERSION})")]
    Version(u8),
    /// Wrong length, role, flags or token length.
    #[error("malformed relay hello: {0}")]
    Malformed(&'static str),
}

impl Hello {
    /// The Hello body (without the length prefix). Fails on a token above [`MAX_TOKEN`].
    pub fn encode(&self) -> Result<Vec<u8>, HelloError> {
        let token_len = u8::try_from(self.token.len())
            .ok()
            .filter(|&n| usize::from(n) <= MAX_TOKEN)
            .ok_or(HelloError::Malformed("token longer than 128 bytes"))?;
        let mut out = Vec::with_capacity(MAX_HELLO);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(match self.role {
            Role::Listen => 1,
            Role::Connect => 2,
        });
        let mut flags = 0;
        if self.single_use {
            flags |= FLAG_SINGLE_USE;
        }
        if self.switch {
            flags |= FLAG_SWITCH;
        }
        out.push(flags);
        out.extend_from_slice(&self.rendezvous);
        out.push(token_len);
        out.extend_from_slice(&self.token);
        Ok(out)
    }

    /// Decodes a Hello body, checking every field.
    pub fn decode(body: &[u8]) -> Result<Self, HelloError> {
        let (magic, rest) = body
            .split_first_chunk::<4>()
            .ok_or(HelloError::Malformed("too short"))?;
        if magic != MAGIC {
            return Err(HelloError::Magic);
        }
        let (&[version, role, flags], rest) = rest
            .split_first_chunk::<3>()
            .ok_or(HelloError::Malformed("too short"))?;
        if version != VERSION {
            return Err(HelloError::Version(version));
        }
        let role = match role {
            1 => Role::Listen,
            2 => Role::Connect,
            _ => return Err(HelloError::Malformed("unknown role")),
        };
        if flags & !(FLAG_SINGLE_USE | FLAG_SWITCH) != 0 {
            return Err(HelloError::Malformed("unknown flags"));
        }
        let (rendezvous, rest) = rest
            .split_first_chunk::<32>()
            .ok_or(HelloError::Malformed("too short"))?;
        let (&token_len, token) = rest
            .split_first()
            .ok_or(HelloError::Malformed("too short"))?;
        if usize::from(token_len) > MAX_TOKEN {
            return Err(HelloError::Malformed("token longer than 128 bytes"));
        }
        if token.len() != usize::from(token_len) {
            return Err(HelloError::Malformed("length does not match the token"));
        }
        Ok(Hello {
            role,
            single_use: flags & FLAG_SINGLE_USE != 0,
            switch: flags & FLAG_SWITCH != 0,
            rendezvous: *rendezvous,
            token: token.to_vec(),
        })
    }
}

/// What the relay tells a client that asked for the switch ([`FLAG_SWITCH`]), right after
/// [`PAIRED`] on the Hello stream:
///
/// ```text
/// channel id u64 | family u8 (4 or 6) | reflexive IP [4 or 16] | port u16 | peer u8 (1)
/// ```
///
/// The channel id is the client's own allocation: it wraps its packets for the peer with
/// it ([`crate::wire::wrap`]) and receives the peer's with it. The reflexive address is
/// the address the relay sees the client's control connection come from (its wrapped
/// packets must come from there too). `peer` says the peer's allocation exists. When the
/// client's address changes (its NAT rebinds and the control connection migrates), the
/// relay rebinds the allocation and writes another grant with the new address on the same
/// stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The client's channel id.
    pub channel: u64,
    /// The address the relay sees for the client.
    pub reflexive: std::net::SocketAddr,
    /// The peer's allocation exists.
    pub peer: bool,
}

/// Longest encoded [`Grant`].
pub const MAX_GRANT: usize = 8 + 1 + 16 + 2 + 1;

impl Grant {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_GRANT);
        out.extend_from_slice(&self.channel.to_be_bytes());
        match self.reflexive.ip() {
            std::net::IpAddr::V4(ip) => {
                out.push(4);
                out.extend_from_slice(&ip.octets());
            }
            std::net::IpAddr::V6(ip) => {
                out.push(6);
                out.extend_from_slice(&ip.octets());
            }
        }
        out.extend_from_slice(&self.reflexive.port().to_be_bytes());
        out.push(u8::from(self.peer));
        out
    }

    /// Decodes a grant from the front of `buf`: the grant and the bytes it took, `Ok(None)`
    /// if `buf` holds only part of one.
    pub fn decode(buf: &[u8]) -> Result<Option<(Grant, usize)>, HelloError> {
        let Some((channel, rest)) = buf.split_first_chunk::<8>() else {
            return Ok(None);
        };
        let Some((&family, rest)) = rest.split_first() else {
            return Ok(None);
        };
        let ip_len = match family {
            4 => 4,
            6 => 16,
            _ => return Err(HelloError::Malformed("grant: unknown address family")),
        };
        let Some(tail) = rest.get(ip_len..ip_len + 3) else {
            return Ok(None);
        };
        let ip = match rest.get(..ip_len) {
            Some(&[a, b, c, d]) => std::net::IpAddr::from([a, b, c, d]),
            Some(b) => match <[u8; 16]>::try_from(b) {
                Ok(b) => std::net::IpAddr::from(b),
                Err(_) => return Ok(None),
            },
            None => return Ok(None),
        };
        let [p0, p1, peer] = [tail[0], tail[1], tail[2]];
        let peer = match peer {
            0 => false,
            1 => true,
            _ => return Err(HelloError::Malformed("grant: bad peer flag")),
        };
        let grant = Grant {
            channel: u64::from_be_bytes(*channel),
            reflexive: (ip, u16::from_be_bytes([p0, p1])).into(),
            peer,
        };
        Ok(Some((grant, 8 + 1 + ip_len + 3)))
    }
}

/// Why the relay refused or ended a client: the QUIC application close code it uses.
/// Codes below 0x100 are the endpoints' own (they are carried across a splice unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Refusal {
    /// The Hello was malformed or of another version.
    #[error("the relay could not read the hello")]
    BadHello,
    /// No Hello within the Hello timeout.
    #[error("no hello in time")]
    HelloTimeout,
    /// Missing or unknown access token.
    #[error("access token refused")]
    Token,
    /// The relay is at its session or connection limit.
    #[error("the relay is at capacity")]
    Busy,
    /// Too many waiting clients from this address, or on this rendezvous id.
    #[error("too many waiting clients")]
    TooManyWaiting,
    /// The rendezvous id is single-use and already taken (a third party).
    #[error("rendezvous already in use")]
    RendezvousTaken,
    /// Nobody came within the pairing timeout.
    #[error("no peer came within the pairing timeout")]
    PairingTimeout,
    /// The relay is shutting down.
    #[error("the relay is shutting down")]
    ShuttingDown,
    /// The other side's connection ended without a close of its own.
    #[error("the peer's connection to the relay was lost")]
    PeerLost,
    /// A connector found no listener waiting on its rendezvous id.
    #[error("no peer is waiting at the relay for this transfer")]
    NoListener,
    /// Too many refusals that look like guessing came from this address lately.
    #[error("too many failed attempts from this address; try again later")]
    RateLimited,
    /// A listener on a receiver's key did not prove it holds that key.
    #[error("the relay refused the listener: it did not prove it holds the receiver's key")]
    BadProof,
    /// A newer proven listener for the same key took this waiting slot (the rendezvous
    /// id was at its limit of waiting listeners).
    #[error("replaced by a newer listener for the same key")]
    Replaced,
    /// The client asked for a splice (an older relay protocol): this relay only forwards
    /// end-to-end connections on its datagram switch.
    #[error(
        "the relay only forwards end-to-end connections on its switch and this client speaks an older relay protocol (update conduit)"
    )]
    OldProtocol,
}

impl Refusal {
    /// How many refusals there are.
    pub const COUNT: usize = 14;

    const ALL: [Refusal; Self::COUNT] = [
        Refusal::BadHello,
        Refusal::HelloTimeout,
        Refusal::Token,
        Refusal::Busy,
        Refusal::TooManyWaiting,
        Refusal::RendezvousTaken,
        Refusal::PairingTimeout,
        Refusal::ShuttingDown,
        Refusal::PeerLost,
        Refusal::NoListener,
        Refusal::RateLimited,
        Refusal::BadProof,
        Refusal::Replaced,
        Refusal::OldProtocol,
    ];

    /// The QUIC application close code.
    pub fn code(self) -> u32 {
        0x100
            + match self {
                Refusal::BadHello => 1,
                Refusal::HelloTimeout => 2,
                Refusal::Token => 3,
                Refusal::Busy => 4,
                Refusal::TooManyWaiting => 5,
                Refusal::RendezvousTaken => 6,
                Refusal::PairingTimeout => 7,
                Refusal::ShuttingDown => 8,
                Refusal::PeerLost => 9,
                Refusal::NoListener => 10,
                Refusal::RateLimited => 11,
                Refusal::BadProof => 12,
                Refusal::Replaced => 13,
                Refusal::OldProtocol => 14,
            }
    }

    /// The refusal a close code stands for.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|r| u64::from(r.code()) == code)
    }

    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::BadHello => "bad_hello",
            Refusal::HelloTimeout => "hello_timeout",
            Refusal::Token => "token",
            Refusal::Busy => "busy",
            Refusal::TooManyWaiting => "too_many_waiting",
            Refusal::RendezvousTaken => "rendezvous_taken",
            Refusal::PairingTimeout => "pairing_timeout",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::PeerLost => "peer_lost",
            Refusal::NoListener => "no_listener",
            Refusal::RateLimited => "rate_limited",
            Refusal::BadProof => "bad_proof",
            Refusal::Replaced => "replaced",
            Refusal::OldProtocol => "old_protocol",
        }
    }

    /// Every refusal, in code order.
    pub fn all() -> impl Iterator<Item = Refusal> {
        Self::ALL.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_switch_flag_round_trips_and_grants_decode_in_pieces() {
        let h = Hello {
            switch: true,
            ..hello()
        };
        let body = h.encode().unwrap();
        assert_eq!(body[6] & FLAG_SWITCH, FLAG_SWITCH);
        assert_eq!(Hello::decode(&body).unwrap(), h);
        for reflexive in ["192.0.2.1:4000", "[2001:db8::7]:65535"] {
            let g = Grant {
                channel: 0xdead_beef_0000_0001,
                reflexive: reflexive.parse().unwrap(),
                peer: true,
            };
            let bytes = g.encode();
            assert!(bytes.len() <= MAX_GRANT);
            for cut in 0..bytes.len() {
                assert_eq!(Grant::decode(&bytes[..cut]), Ok(None), "{cut}");
            }
            let mut more = bytes.clone();
            more.push(0xff);
            assert_eq!(Grant::decode(&more), Ok(Some((g, bytes.len()))));
        }
        let mut bad = Grant {
            channel: 1,
            reflexive: "192.0.2.1:1".parse().unwrap(),
            peer: false,
        }
        .encode();
        bad[8] = 5;
        assert!(Grant::decode(&bad).is_err());
    }

    fn hello() -> Hello {
        Hello {
            switch: false,
            role: Role::Listen,
            single_use: true,
            rendezvous: [7; 32],
            token: b"secret".to_vec(),
        }
    }

    #[test]
    fn round_trip() {
        let h = hello();
        let body = h.encode().unwrap();
        assert!(body.len() <= MAX_HELLO);
        assert_eq!(Hello::decode(&body).unwrap(), h);
        let h = Hello {
            switch: false,
            role: Role::Connect,
            single_use: false,
            token: vec![],
            ..h
        };
        assert_eq!(Hello::decode(&h.encode().unwrap()).unwrap(), h);
    }

    #[test]
    fn every_field_is_checked() {
        let body = hello().encode().unwrap();
        let mut b = body.clone();
        b[0] = b'X';
        assert_eq!(Hello::decode(&b), Err(HelloError::Magic));
        let mut b = body.clone();
        b[4] = 1;
        assert_eq!(Hello::decode(&b), Err(HelloError::Version(1)));
        let mut b = body.clone();
        b[5] = 3;
        assert!(matches!(Hello::decode(&b), Err(HelloError::Malformed(_))));
        let mut b = body.clone();
        // Bit 1 is the switch flag now; the next bit up is unknown.
        b[6] = 0x04;
        assert!(matches!(Hello::decode(&b), Err(HelloError::Malformed(_))));
        let mut b = body.clone();
        b.push(0);
        assert!(matches!(Hello::decode(&b), Err(HelloError::Malformed(_))));
        for n in 0..body.len() {
            assert!(Hello::decode(&body[..n]).is_err(), "prefix of {n} bytes");
        }
        let long = Hello {
            switch: false,
            token: vec![1; MAX_TOKEN + 1],
            ..hello()
        };
        assert!(long.encode().is_err());
    }

    #[test]
    fn refusal_codes_are_distinct_and_above_the_endpoints_codes() {
        let codes: std::collections::HashSet<u32> = Refusal::all().map(Refusal::code).collect();
        assert_eq!(codes.len(), Refusal::ALL.len());
        for r in Refusal::all() {
            assert!(r.code() >= 0x100);
            assert_eq!(Refusal::from_code(r.code().into()), Some(r));
        }
        assert_eq!(Refusal::from_code(0), None);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Hello::decode(&bytes);
        }

        #[test]
        fn mutated_hellos_decode_to_valid_hellos_or_errors(
            pos in 0usize..MAX_HELLO, byte in any::<u8>(), token in proptest::collection::vec(any::<u8>(), 0..=MAX_TOKEN)
        ) {
            let h = Hello { switch: false, token, ..hello() };
            let mut body = h.encode().unwrap();
            let pos = pos % body.len();
            body[pos] = byte;
            if let Ok(d) = Hello::decode(&body) {
                prop_assert_eq!(d.encode().unwrap(), body);
            }
        }
    }
}
