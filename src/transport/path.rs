//! A client's path through the relay's datagram switch (docs/PROTOCOL.md, "Wrapped
//! packets"): the [`Divert`] of the client's [`super::demux::DemuxSocket`] that carries
//! the end-to-end QUIC connection wrapped.
//!
//! quinn sees the peer at one stable address, [`mapped_for`] (a reserved address that
//! never reaches the network); the socket sends what quinn sends there to the relay,
//! wrapped for the client's channel, and hands the wrapped packets that come from the
//! relay to quinn as coming from that address, without their headers. The relay's own
//! QUIC (the control connection) passes by untouched.
//!
//! Once a probe's round trip to one of the peer's addresses succeeded
//! ([`crate::wire::probe`], driven by [`super::punch`]), what quinn sends to the mapped
//! address goes there instead, as it is, and QUIC from the addresses that proved the
//! session's probe key reaches quinn as from the mapped address: quinn keeps one peer
//! address and one connection whichever path carries it. [`RelayPath::fall_back`]
//! returns to the relay.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Instant;

use super::demux::{Divert, Route, Verdict};
use crate::wire::probe::{self, Role};
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

/// The path `conn` takes: for a connection on a switching path ([`attach`]) the path
/// it takes now; otherwise relayed when quinn sees its peer at the address mapped to the
/// relay path ([`mapped_for`]) or when it is a connection to a relay itself (the relay's
/// ALPN: a splice), direct otherwise.
pub fn path_of(conn: &quinn::Connection) -> PathKind {
    if let Some(p) = attached(conn) {
        return p.state().kind;
    }
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

/// Which paths an endpoint lets its transfers take: `[transfer] path` and `--path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathPolicy {
    /// Through the relay, moving to a direct path under the same connection when the
    /// probes find one (and back when it fails).
    #[default]
    Auto,
    /// Every packet through the relay: no candidates told, no probes sent.
    Relay,
    /// Never through a relay: only `--direct` / `--listen` transfers.
    Direct,
}

impl PathPolicy {
    /// `auto`, `relay` or `direct`.
    pub fn name(self) -> &'static str {
        match self {
            PathPolicy::Auto => "auto",
            PathPolicy::Relay => "relay",
            PathPolicy::Direct => "direct",
        }
    }
}

impl std::fmt::Display for PathPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A path policy that is not `auto`, `relay` or `direct`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a path policy (auto, relay or direct)")]
pub struct UnknownPathPolicy(String);

impl std::str::FromStr for PathPolicy {
    type Err = UnknownPathPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(PathPolicy::Auto),
            "relay" => Ok(PathPolicy::Relay),
            "direct" => Ok(PathPolicy::Direct),
            other => Err(UnknownPathPolicy(other.to_string())),
        }
    }
}

impl serde::Serialize for PathPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for PathPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Channel value before the relay granted one (a granted id is random and never 0 in
/// practice; the grant sets [`RelayPath::granted`] anyway).
const UNGRANTED: u64 = 0;

/// Most addresses remembered as the peer's (they answered one of our probes: QUIC from
/// them is the peer's), and most addresses learned from the peer's probes; the least
/// recently confirmed is forgotten first.
const MAX_HEARD: usize = 8;
/// Most probes awaiting their reply (the oldest is forgotten first).
const MAX_OUTSTANDING: usize = 256;
/// How long a probe waits for its reply; a later one is not taken.
pub const PROBE_TTL: std::time::Duration = std::time::Duration::from_secs(3);

/// Where the end-to-end connection's packets go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathState {
    /// Direct or through the relay.
    pub kind: PathKind,
    /// The peer's direct address, or the relay's.
    pub via: SocketAddr,
}

/// What the probes have established so far.
#[derive(Debug)]
struct Probing {
    /// The session's probe key ([`probe::PROBE_KEY_LABEL`]); nothing is probed or
    /// answered before it is armed.
    key: Option<zeroize::Zeroizing<[u8; 32]>>,
    /// Our end of the end-to-end connection.
    role: Role,
    /// Probes sent and not answered: txid, the address each went to, when.
    outstanding: std::collections::VecDeque<(u64, SocketAddr, Instant)>,
    /// Addresses whose probes reached us (the peer behind its NAT: probed back), least
    /// recently seen first.
    learned: std::collections::VecDeque<SocketAddr>,
    /// When the direct address last answered a probe.
    last_reply: Option<Instant>,
    /// Replies through the relay (its path answers).
    relay_replies: u64,
}

/// The paths of one client socket: through the relay, and direct once a probe's round
/// trip to the peer succeeded.
#[derive(Debug)]
pub struct RelayPath {
    relay: SocketAddr,
    mapped: SocketAddr,
    channel: AtomicU64,
    granted: AtomicBool,
    /// Wrapped packets handed to quinn, and datagrams dropped (not ours, or a send that
    /// could not be made).
    delivered: AtomicU64,
    dropped: AtomicU64,
    probing: Mutex<Probing>,
    /// The peer's direct address quinn's packets go to now, if any (`direct_on` is the
    /// cheap check of the send path).
    direct: RwLock<Option<SocketAddr>>,
    direct_on: AtomicBool,
    /// Addresses that answered one of our probes: QUIC from them is the peer's (least
    /// recently confirmed first).
    heard: RwLock<std::collections::VecDeque<SocketAddr>>,
    heard_any: AtomicBool,
    /// QUIC datagrams (or GRO batches) from the direct address handed to quinn: the
    /// direct path carries the connection, not only the probes.
    direct_quic: AtomicU64,
    changes: tokio::sync::watch::Sender<PathState>,
    authenticated: tokio::sync::Notify,
    /// A probe came from an address not probed yet (the agent probes it back at once).
    learned_new: tokio::sync::Notify,
    /// Whether an agent looks for a direct path ([`super::punch::spawn`]).
    punching: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RelayPath {
    /// The path through the relay at `relay` of a socket bound to `local`.
    pub fn new(relay: SocketAddr, local: SocketAddr) -> Self {
        RelayPath {
            relay,
            mapped: mapped_for(local),
            channel: AtomicU64::new(UNGRANTED),
            granted: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            probing: Mutex::new(Probing {
                key: None,
                role: Role::Client,
                outstanding: std::collections::VecDeque::new(),
                learned: std::collections::VecDeque::new(),
                last_reply: None,
                relay_replies: 0,
            }),
            direct: RwLock::new(None),
            direct_on: AtomicBool::new(false),
            heard: RwLock::new(std::collections::VecDeque::new()),
            heard_any: AtomicBool::new(false),
            direct_quic: AtomicU64::new(0),
            changes: tokio::sync::watch::Sender::new(PathState {
                kind: PathKind::Relayed,
                via: relay,
            }),
            authenticated: tokio::sync::Notify::new(),
            learned_new: tokio::sync::Notify::new(),
            punching: AtomicBool::new(false),
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
        self.granted.store(true, Release);
    }

    /// Wrapped packets delivered to quinn so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Relaxed)
    }

    /// Datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Arms the probes with the session's probe key, `role` being our end of the
    /// end-to-end connection: from now on probes are made and answered.
    pub fn arm(&self, key: [u8; 32], role: Role) {
        let mut p = lock(&self.probing);
        p.key = Some(zeroize::Zeroizing::new(key));
        p.role = role;
    }

    /// A probe for `to`, remembered until its reply (`None` before [`Self::arm`] or
    /// without randomness).
    pub fn probe_for(&self, to: SocketAddr) -> Option<[u8; probe::LEN]> {
        let mut id = [0u8; 8];
        getrandom::getrandom(&mut id).ok()?;
        let txid = u64::from_be_bytes(id);
        let mut p = lock(&self.probing);
        let packet = probe::encode(p.key.as_deref()?, probe::PROBE, p.role, txid);
        let now = Instant::now();
        while p
            .outstanding
            .front()
            .is_some_and(|&(_, _, at)| now.duration_since(at) > PROBE_TTL)
            || p.outstanding.len() >= MAX_OUTSTANDING
        {
            p.outstanding.pop_front();
        }
        p.outstanding.push_back((txid, to, now));
        Some(packet)
    }

    /// A probe wrapped for our channel, to send to the relay (it keeps the allocations
    /// alive while the packets go direct; the peer answers through the relay).
    pub fn relay_probe(&self) -> Option<Vec<u8>> {
        let mut id = [0u8; 8];
        getrandom::getrandom(&mut id).ok()?;
        let p = lock(&self.probing);
        let inner = probe::encode(
            p.key.as_deref()?,
            probe::RELAY_PROBE,
            p.role,
            u64::from_be_bytes(id),
        );
        let mut out = wrap::header(self.channel.load(Relaxed)).to_vec();
        out.extend_from_slice(&inner);
        Some(out)
    }

    /// Addresses the peer's probes came from (its mapping towards us).
    pub fn learned(&self) -> Vec<SocketAddr> {
        lock(&self.probing).learned.iter().copied().collect()
    }

    /// Says an agent looks for a direct path on this path.
    pub fn start_punching(&self) {
        self.punching.store(true, Release);
    }

    /// Whether an agent looks for a direct path.
    pub fn punching(&self) -> bool {
        self.punching.load(Acquire)
    }

    /// Waits until a probe comes from an address not learned before.
    pub async fn wait_learned(&self) {
        self.learned_new.notified().await;
    }

    /// Replies that came back through the relay.
    pub fn relay_replies(&self) -> u64 {
        lock(&self.probing).relay_replies
    }

    /// The direct address packets go to now, if any.
    pub fn direct(&self) -> Option<SocketAddr> {
        *self.direct.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends through the relay again (the direct path stopped carrying the connection).
    pub fn fall_back(&self) {
        let _p = lock(&self.probing);
        self.set_direct(None);
    }

    /// Falls back to the relay if the direct path's last reply is older than `silence`
    /// (checked and cleared under the probes' lock, so a reply that arrives meanwhile is
    /// not lost); `true` if it did.
    pub fn fall_back_if_silent(&self, silence: std::time::Duration) -> bool {
        let p = lock(&self.probing);
        if self.direct().is_none() || p.last_reply.is_some_and(|t| t.elapsed() <= silence) {
            return false;
        }
        self.set_direct(None);
        true
    }

    /// QUIC datagrams from the direct address handed to quinn so far.
    pub fn direct_quic(&self) -> u64 {
        self.direct_quic.load(Relaxed)
    }

    fn set_direct(&self, to: Option<SocketAddr>) {
        *self.direct.write().unwrap_or_else(PoisonError::into_inner) = to;
        self.direct_on.store(to.is_some(), Release);
        let state = match to {
            Some(via) => PathState {
                kind: PathKind::Direct,
                via,
            },
            None => PathState {
                kind: PathKind::Relayed,
                via: self.relay,
            },
        };
        self.changes.send_replace(state);
    }

    /// The path now.
    pub fn state(&self) -> PathState {
        *self.changes.borrow()
    }

    /// Follows the path's changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<PathState> {
        self.changes.subscribe()
    }

    /// Says the end-to-end session on this path is authenticated (its Noise handshake,
    /// bound to the connection, completed): candidates may be told now.
    pub fn authenticated(&self) {
        self.authenticated.notify_one();
    }

    /// Waits for [`Self::authenticated`].
    pub async fn wait_authenticated(&self) {
        self.authenticated.notified().await;
    }

    /// Remembers `from` as the peer's: it answered one of our probes.
    fn hear(&self, from: SocketAddr) {
        let mut heard = self.heard.write().unwrap_or_else(PoisonError::into_inner);
        heard.retain(|a| *a != from);
        if heard.len() >= MAX_HEARD {
            heard.pop_front();
        }
        heard.push_back(from);
        self.heard_any.store(true, Release);
    }

    /// A probe or reply that came from `from` (through the relay when `relayed`):
    /// answers a probe in place, takes a reply. Anything that does not verify, or is of
    /// the other path's type, is dropped.
    fn on_probe(&self, from: SocketAddr, relayed: bool, packet: &mut [u8]) -> Verdict {
        let mut p = lock(&self.probing);
        let Some(key) = p.key.as_deref() else {
            return Verdict::Drop;
        };
        let Some(got) = probe::verify(key, packet) else {
            return Verdict::Drop;
        };
        let through_relay = matches!(got.kind, probe::RELAY_PROBE | probe::RELAY_REPLY);
        if got.role != p.role.peer() || through_relay != relayed {
            return Verdict::Drop;
        }
        if let Some(kind) = probe::reply_to(got.kind) {
            let reply = probe::encode(key, kind, p.role, got.txid);
            packet.copy_from_slice(&reply);
            if !relayed {
                // Probed back (its address may be the peer's NAT mapping towards us); only
                // a reply to our own probe makes it the peer's for QUIC.
                let new = !p.learned.contains(&from);
                p.learned.retain(|a| *a != from);
                if p.learned.len() >= MAX_HEARD {
                    p.learned.pop_front();
                }
                p.learned.push_back(from);
                if new {
                    self.learned_new.notify_one();
                }
            }
            return Verdict::Send(from);
        }
        if relayed {
            p.relay_replies += 1;
            return Verdict::Drop;
        }
        let now = Instant::now();
        let Some(at) = p.outstanding.iter().position(|&(txid, to, sent)| {
            txid == got.txid && to == from && now.duration_since(sent) <= PROBE_TTL
        }) else {
            return Verdict::Drop;
        };
        p.outstanding.remove(at);
        self.hear(from);
        match self.direct() {
            None => {
                p.last_reply = Some(now);
                self.set_direct(Some(from));
            }
            Some(d) if d == from => p.last_reply = Some(now),
            Some(_) => {}
        }
        Verdict::Drop
    }
}

impl Divert for RelayPath {
    fn datagram(&self, from: SocketAddr, kind: Kind, datagram: &mut [u8]) -> Verdict {
        if kind == Kind::Reserved && from != self.relay && probe::is_probe(datagram) {
            return self.on_probe(from, false, datagram);
        }
        // Before the grant is read, the peer's first packets may already arrive (the
        // relay tells both sides at once): the relay forwards to this address only what
        // came from the peer it paired us with, so they are ours whatever their id.
        let ours = match wrap::parse(datagram) {
            Some((id, _)) if kind == Kind::Wrapped && from == self.relay => {
                !self.granted.load(Acquire) || id == self.channel.load(Relaxed)
            }
            _ => false,
        };
        if !ours {
            self.dropped.fetch_add(1, Relaxed);
            return Verdict::Drop;
        }
        if let Some(inner) = datagram.get_mut(wrap::HEADER_LEN..)
            && probe::is_probe(inner)
        {
            // The peer's probe through the relay: answered the same way (the header
            // already carries our channel, as the switch rewrote it).
            return self.on_probe(from, true, inner);
        }
        self.delivered.fetch_add(1, Relaxed);
        Verdict::Deliver(self.mapped)
    }

    fn send_failed(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    fn route(&self, to: SocketAddr) -> Route {
        if to != self.mapped {
            return Route::AsIs;
        }
        if self.direct_on.load(Acquire)
            && let Some(direct) = self.direct()
        {
            return Route::To(direct);
        }
        if self.granted.load(Acquire) {
            Route::Wrapped(self.relay, self.channel.load(Relaxed))
        } else {
            Route::AsIs
        }
    }

    fn quic_source(&self, from: SocketAddr) -> SocketAddr {
        if self.direct_on.load(Acquire) && self.direct() == Some(from) {
            self.direct_quic.fetch_add(1, Relaxed);
            return self.mapped;
        }
        if self.heard_any.load(Acquire)
            && self
                .heard
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&from)
        {
            self.mapped
        } else {
            from
        }
    }
}

/// The switching paths of live end-to-end connections, by [`quinn::Connection::stable_id`].
static ATTACHED: Mutex<Vec<(usize, Weak<RelayPath>)>> = Mutex::new(Vec::new());

/// Records that `conn` runs over `path` (for [`path_of`], [`session_up`] and
/// [`follow`]).
pub fn attach(conn: &quinn::Connection, path: &Arc<RelayPath>) {
    let id = conn.stable_id();
    let mut all = lock(&ATTACHED);
    // A connection's id is its memory's address, which a later one may reuse: an entry
    // with this id belongs to an older connection.
    all.retain(|(i, p)| p.strong_count() > 0 && *i != id);
    all.push((id, Arc::downgrade(path)));
}

/// The path `conn` was attached to. The id alone could be an older connection's (reused
/// memory): the peer must also be at that path's mapped address, where only a
/// connection through the switch ever sees it.
fn attached(conn: &quinn::Connection) -> Option<Arc<RelayPath>> {
    let id = conn.stable_id();
    let remote = conn.remote_address();
    lock(&ATTACHED)
        .iter()
        .rev()
        .filter(|(i, _)| *i == id)
        .find_map(|(_, p)| p.upgrade())
        .filter(|p| p.mapped() == remote)
}

/// Tells `conn`'s path (if it switches) that the end-to-end session on it is
/// authenticated: the endpoints may now exchange candidates and probe. The transfer
/// calls this once its Noise handshake, bound to `conn`, has completed.
pub fn session_up(conn: &quinn::Connection) {
    if let Some(p) = attached(conn) {
        p.authenticated();
    }
}

/// Waits until `conn`'s packets go direct, at most `grace`; at once when its path does
/// not look for a direct one (a direct connection, `path = relay`).
pub async fn settle(conn: &quinn::Connection, grace: std::time::Duration) {
    let Some(p) = attached(conn).filter(|p| p.punching()) else {
        return;
    };
    let mut changes = p.subscribe();
    let _ = tokio::time::timeout(grace, changes.wait_for(|s| s.kind == PathKind::Direct)).await;
}

/// Follows the path of `conn` if it can change (a connection through the relay's
/// switch); `None` for a path that stays as it is.
pub fn follow(conn: &quinn::Connection) -> Option<tokio::sync::watch::Receiver<PathState>> {
    attached(conn).map(|p| p.subscribe())
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
        assert_eq!(
            p.route(p.mapped()),
            Route::AsIs,
            "nothing is wrapped before the grant"
        );
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
        assert_eq!(p.route(p.mapped()), Route::Wrapped(relay, 42));
        assert_eq!(p.route(relay), Route::AsIs);
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

    /// The probe rules: nothing before the key; a probe is answered in place to where it
    /// came from; only a reply from the address its probe went to, with the peer's role,
    /// moves the packets there; QUIC from an address that proved the key is the peer's;
    /// falling back wraps for the relay again.
    #[test]
    fn probes_move_the_connection_only_on_a_reply_from_the_probed_address() {
        let relay: SocketAddr = "192.0.2.7:7471".parse().unwrap();
        let peer: SocketAddr = "198.18.1.6:40000".parse().unwrap();
        let other: SocketAddr = "198.18.1.9:40000".parse().unwrap();
        let key = [5u8; 32];
        let p = RelayPath::new(relay, "0.0.0.0:0".parse().unwrap());
        p.grant(42);
        let mut from_peer = probe::encode(&key, probe::PROBE, Role::Server, 7);
        assert_eq!(
            p.datagram(peer, Kind::Reserved, &mut from_peer.clone()),
            Verdict::Drop,
            "not armed yet"
        );
        assert_eq!(p.probe_for(peer), None);
        p.arm(key, Role::Client);

        // The peer's probe: answered in place, its address learned and heard.
        assert_eq!(
            p.datagram(peer, Kind::Reserved, &mut from_peer),
            Verdict::Send(peer)
        );
        assert_eq!(
            probe::verify(&key, &from_peer),
            Some(probe::Probe {
                kind: probe::REPLY,
                role: Role::Client,
                txid: 7
            })
        );
        // Learned (to probe back), not yet the peer's for QUIC: a probe can be replayed
        // from anywhere.
        assert_eq!(p.learned(), vec![peer]);
        assert_eq!(p.quic_source(peer), peer);
        assert_eq!(p.quic_source(other), other);
        // A probe of the relay's type sent directly is not answered.
        let mut relay_type = probe::encode(&key, probe::RELAY_PROBE, Role::Server, 9);
        assert_eq!(
            p.datagram(peer, Kind::Reserved, &mut relay_type),
            Verdict::Drop
        );
        // Our own probe reflected back (our role) is not answered.
        let mut ours = probe::encode(&key, probe::PROBE, Role::Client, 8);
        assert_eq!(p.datagram(other, Kind::Reserved, &mut ours), Verdict::Drop);
        assert_eq!(p.route(p.mapped()), Route::Wrapped(relay, 42));

        // Our probe to the peer; its reply from another address, or for another txid,
        // or under another key, moves nothing.
        let sent = p.probe_for(peer).unwrap();
        let txid = probe::verify(&key, &sent).unwrap().txid;
        let reply = probe::encode(&key, probe::REPLY, Role::Server, txid);
        assert_eq!(
            p.datagram(other, Kind::Reserved, &mut reply.clone()),
            Verdict::Drop
        );
        let wrong_txid = probe::encode(&key, probe::REPLY, Role::Server, txid ^ 1);
        assert_eq!(
            p.datagram(peer, Kind::Reserved, &mut wrong_txid.clone()),
            Verdict::Drop
        );
        let wrong_key = probe::encode(&[6u8; 32], probe::REPLY, Role::Server, txid);
        assert_eq!(
            p.datagram(peer, Kind::Reserved, &mut wrong_key.clone()),
            Verdict::Drop
        );
        assert_eq!(p.direct(), None);
        assert_eq!(p.state().kind, PathKind::Relayed);

        // The right reply: the packets go to the peer as they are, and its QUIC is the
        // peer's.
        assert_eq!(
            p.datagram(peer, Kind::Reserved, &mut reply.clone()),
            Verdict::Drop
        );
        assert_eq!(p.direct(), Some(peer));
        assert_eq!(p.quic_source(peer), p.mapped());
        assert_eq!(p.direct_quic(), 1);
        assert_eq!(p.route(p.mapped()), Route::To(peer));
        assert_eq!(p.route(relay), Route::AsIs);
        assert_eq!(
            p.state(),
            PathState {
                kind: PathKind::Direct,
                via: peer
            }
        );
        // Its reply is recent: not silent for a minute, silent for no time at all.
        assert!(!p.fall_back_if_silent(std::time::Duration::from_secs(60)));
        assert!(p.fall_back_if_silent(std::time::Duration::ZERO));
        assert_eq!(p.route(p.mapped()), Route::Wrapped(relay, 42));
        // A replayed reply is not taken twice (its probe was answered).
        assert_eq!(
            p.datagram(peer, Kind::Reserved, &mut reply.clone()),
            Verdict::Drop
        );
        assert_eq!(p.direct(), None);
        let again = p.probe_for(peer).unwrap();
        let txid = probe::verify(&key, &again).unwrap().txid;
        let mut reply = probe::encode(&key, probe::REPLY, Role::Server, txid);
        assert_eq!(p.datagram(peer, Kind::Reserved, &mut reply), Verdict::Drop);
        assert_eq!(p.direct(), Some(peer));

        p.fall_back();
        assert_eq!(p.route(p.mapped()), Route::Wrapped(relay, 42));
        assert_eq!(p.state().kind, PathKind::Relayed);
    }

    /// The peer's probe through the relay is answered through the relay, its header kept.
    #[test]
    fn a_probe_through_the_relay_is_answered_through_the_relay() {
        let relay: SocketAddr = "192.0.2.7:7471".parse().unwrap();
        let key = [5u8; 32];
        let p = RelayPath::new(relay, "0.0.0.0:0".parse().unwrap());
        p.grant(42);
        p.arm(key, Role::Server);
        // A direct probe's type inside a wrapped packet is not answered.
        let mut direct_type = wrap::header(42).to_vec();
        direct_type.extend_from_slice(&probe::encode(&key, probe::PROBE, Role::Client, 0));
        assert_eq!(
            p.datagram(relay, Kind::Wrapped, &mut direct_type),
            Verdict::Drop
        );
        let mut wrapped = wrap::header(42).to_vec();
        wrapped.extend_from_slice(&probe::encode(&key, probe::RELAY_PROBE, Role::Client, 0));
        assert_eq!(
            p.datagram(relay, Kind::Wrapped, &mut wrapped),
            Verdict::Send(relay)
        );
        assert_eq!(wrap::parse(&wrapped).map(|(id, _)| id), Some(42));
        let inner = &wrapped[wrap::HEADER_LEN..];
        assert_eq!(
            probe::verify(&key, inner).map(|r| r.kind),
            Some(probe::RELAY_REPLY)
        );
        assert_eq!(p.delivered(), 0, "not handed to quinn");
        // Our own relay probe, answered by the peer, comes back and is counted.
        let mut back = wrap::header(42).to_vec();
        back.extend_from_slice(&probe::encode(&key, probe::RELAY_REPLY, Role::Client, 0));
        assert_eq!(p.datagram(relay, Kind::Wrapped, &mut back), Verdict::Drop);
        assert_eq!(p.relay_replies(), 1);
        assert_eq!(p.direct(), None);
    }

    #[test]
    fn the_mapped_address_has_the_socket_family() {
        assert!(mapped_for("0.0.0.0:0".parse().unwrap()).is_ipv4());
        assert!(mapped_for("[::]:0".parse().unwrap()).is_ipv6());
    }
}
