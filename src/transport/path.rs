//! A client's path through the relay's datagram switch (docs/PROTOCOL.md, "Wrapped
//! packets"): the [`Divert`] of the client's [`super::demux::DemuxSocket`] that carries
//! the end-to-end QUIC connection wrapped.
//!
//! quinn sees the peer at one stable address, [`mapped_for`] (a reserved address that
//! never reaches the network); the socket sends what quinn sends there to the relay,
//! wrapped for the client's channel, and hands the wrapped packets that come from the
//! relay to quinn as coming from that address, without their headers. The relay's own
//! QUIC (the control connection) passes by untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::demux::{Divert, Verdict};
use crate::wire::wrap::{self, Kind};

/// The address quinn sees the peer at through the relay, for a socket of `local`'s
/// family: `240.0.0.1:1` (reserved, RFC 1112 section 4) or `[fd70:6869:636f:6e64::1]:1`
/// (a unique local address). The socket never sends anything there.
pub fn mapped_for(local: SocketAddr) -> SocketAddr {
    let ip = if local.is_ipv4() {
        IpAddr::V4(Ipv4Addr::new(240, 0, 0, 1))
    } else {
        IpAddr::V6(Ipv6Addr::new(0xfd70, 0x6869, 0x636f, 0x6e64, 0, 0, 0, 1))
    };
    SocketAddr::new(ip, 1)
}

/// Which path a connection takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Straight to the peer's address.
    Direct,
    /// Through a relay (its datagram switch, or a splice).
    Relayed,
}

impl PathKind {
    /// `direct` or `relayed`, as events and summaries say it.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Relayed => "relayed",
        }
    }
}

/// The path `conn` takes: relayed when quinn sees its peer at the address mapped to the
/// relay path ([`mapped_for`]) or when it is a connection to a relay itself (the relay's
/// ALPN: a splice), direct otherwise.
pub fn path_of(conn: &quinn::Connection) -> PathKind {
    let remote = conn.remote_address();
    let to_relay = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|alpn| alpn == super::RELAY_ALPN);
    if to_relay || remote == mapped_for(remote) {
        PathKind::Relayed
    } else {
        PathKind::Direct
    }
}

/// Channel value before the relay granted one (a granted id is random and never 0 in
/// practice; the grant sets [`RelayPath::granted`] anyway).
const UNGRANTED: u64 = 0;

/// The relay path of one client socket.
#[derive(Debug)]
pub struct RelayPath {
    relay: SocketAddr,
    mapped: SocketAddr,
    channel: AtomicU64,
    granted: std::sync::atomic::AtomicBool,
    /// Wrapped packets handed to quinn, and datagrams dropped (not ours, or a send that
    /// could not be made).
    delivered: AtomicU64,
    dropped: AtomicU64,
}

impl RelayPath {
    /// The path through the relay at `relay` of a socket bound to `local`.
    pub fn new(relay: SocketAddr, local: SocketAddr) -> Self {
        RelayPath {
            relay,
            mapped: mapped_for(local),
            channel: AtomicU64::new(UNGRANTED),
            granted: std::sync::atomic::AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Where quinn sees the peer.
    pub fn mapped(&self) -> SocketAddr {
        self.mapped
    }

    /// The relay's address.
    pub fn relay(&self) -> SocketAddr {
        self.relay
    }

    /// Takes the channel the relay granted: from now on quinn's packets to
    /// [`Self::mapped`] leave wrapped for it, and only wrapped packets for it are
    /// delivered.
    pub fn grant(&self, channel: u64) {
        self.channel.store(channel, Relaxed);
        self.granted
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Wrapped packets delivered to quinn so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Relaxed)
    }

    /// Datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

impl Divert for RelayPath {
    fn datagram(&self, from: SocketAddr, kind: Kind, datagram: &mut [u8]) -> Verdict {
        // Before the grant is read, the peer's first packets may already arrive (the
        // relay tells both sides at once): the relay forwards to this address only what
        // came from the peer it paired us with, so they are ours whatever their id.
        let ours = match wrap::parse(datagram) {
            Some((id, _)) if kind == Kind::Wrapped && from == self.relay => {
                !self.granted.load(std::sync::atomic::Ordering::Acquire)
                    || id == self.channel.load(Relaxed)
            }
            _ => false,
        };
        if ours {
            self.delivered.fetch_add(1, Relaxed);
            Verdict::Deliver(self.mapped)
        } else {
            self.dropped.fetch_add(1, Relaxed);
            Verdict::Drop
        }
    }

    fn send_failed(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    fn route(&self, to: SocketAddr) -> Option<(SocketAddr, u64)> {
        (to == self.mapped && self.granted.load(std::sync::atomic::Ordering::Acquire))
            .then(|| (self.relay, self.channel.load(Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn only_wrapped_packets_from_the_relay_for_our_channel_are_delivered() {
        let relay: SocketAddr = "192.0.2.7:7471".parse().unwrap();
        let p = RelayPath::new(relay, "0.0.0.0:0".parse().unwrap());
        let mut ours = wrap::header(42).to_vec();
        ours.extend_from_slice(b"quic");
        // Before the grant: anything wrapped from the relay.
        assert_eq!(
            p.datagram(relay, Kind::Wrapped, &mut ours.clone()),
            Verdict::Deliver(p.mapped())
        );
        assert_eq!(p.route(p.mapped()), None, "nothing leaves before the grant");
        p.grant(42);
        assert_eq!(
            p.datagram(relay, Kind::Wrapped, &mut ours.clone()),
            Verdict::Deliver(p.mapped())
        );
        let mut other = wrap::header(43).to_vec();
        other.extend_from_slice(b"quic");
        assert_eq!(p.datagram(relay, Kind::Wrapped, &mut other), Verdict::Drop);
        let stranger: SocketAddr = "192.0.2.8:7471".parse().unwrap();
        assert_eq!(
            p.datagram(stranger, Kind::Wrapped, &mut ours.clone()),
            Verdict::Drop
        );
        assert_eq!(
            p.datagram(relay, Kind::Reserved, &mut [0x11, 1]),
            Verdict::Drop
        );
        assert_eq!(p.route(p.mapped()), Some((relay, 42)));
        assert_eq!(p.route(relay), None);
        assert_eq!((p.delivered(), p.dropped()), (2, 3));
    }

    /// Over real loopback sockets: what quinn sends to the mapped address leaves to the
    /// relay wrapped, segment by segment (a GSO send of three), and wrapped packets from
    /// the relay come back to quinn unwrapped, from the mapped address; a stranger's are
    /// not delivered.
    #[tokio::test]
    async fn the_socket_wraps_towards_the_relay_and_unwraps_from_it() {
        use quinn::AsyncUdpSocket;
        use quinn::udp::{RecvMeta, Transmit};
        use std::io::IoSliceMut;

        let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = relay.local_addr().unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = udp.local_addr().unwrap();
        let path = Arc::new(RelayPath::new(at, local));
        let sock = super::super::demux::DemuxSocket::new(udp, path.clone()).unwrap();
        path.grant(0x0102_0304_0506_0708);

        // Out: three segments of 100 bytes and a last of 40, in one transmit.
        let contents: Vec<u8> = (0..340u32).map(|i| (i % 251) as u8).collect();
        let t = Transmit {
            destination: path.mapped(),
            ecn: None,
            contents: &contents,
            segment_size: Some(100),
            src_ip: None,
        };
        sock.writable().await.unwrap();
        sock.try_send(&t).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..4 {
            let (n, from) =
                tokio::time::timeout(std::time::Duration::from_secs(5), relay.recv_from(&mut buf))
                    .await
                    .expect("nothing reached the relay")
                    .unwrap();
            assert_eq!(from, local);
            let (id, inner) = wrap::parse(&buf[..n]).unwrap();
            assert_eq!(id, 0x0102_0304_0506_0708);
            got.extend_from_slice(inner);
        }
        assert_eq!(got, contents);

        // In: a stranger's wrapped packet, then the relay's, for our channel.
        let mut packet = wrap::header(0x0102_0304_0506_0708).to_vec();
        packet.extend_from_slice(b"\x40end-to-end");
        stranger.send_to(&packet, local).await.unwrap();
        relay.send_to(&packet, local).await.unwrap();
        let mut storage = vec![0u8; 65_536];
        let mut bufs = [IoSliceMut::new(&mut storage)];
        let mut meta = [RecvMeta::default()];
        let n = std::future::poll_fn(|cx| sock.poll_recv(cx, &mut bufs, &mut meta))
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(meta[0].addr, path.mapped());
        assert_eq!(&bufs[0][..meta[0].len], b"\x40end-to-end");
        assert_eq!((path.delivered(), path.dropped()), (1, 1));
    }

    #[test]
    fn the_mapped_address_has_the_socket_family() {
        assert!(mapped_for("0.0.0.0:0".parse().unwrap()).is_ipv4());
        assert!(mapped_for("[::]:0".parse().unwrap()).is_ipv6());
    }
}
