//! The datagram switch's table and forwarding decision (sans-IO; docs/PROTOCOL.md,
//! "Allocations and the switch").
//!
//! The control plane ([`crate::relay::server`]) grants the two clients of a pairing one
//! allocation each: a random 64-bit channel id bound to the address the relay sees for
//! that client, and linked to the peer's allocation. A wrapped packet
//! ([`crate::wire::wrap`]) is then forwarded by [`Switch::forward`] when, and only when:
//!
//! - its channel id is in the table (an unknown id is dropped after one hash lookup:
//!   no memory is allocated for it, nothing is answered);
//! - it came from the address the allocation is bound to (a valid id from a third
//!   address, spoofed or copied on path, goes nowhere);
//! - the peer's allocation exists, and neither allocation is over its byte limit and the
//!   sender's within its rate;
//!
//! and it goes to the peer's bound address only, its channel id rewritten in place to
//! the peer's: one packet in, at most one out, never larger. Nothing is queued here or
//! in the socket under it; a packet that is not forwarded is counted by [`DropReason`].
//! The relay never decrypts: the end-to-end packet after the header is opaque.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::wire::{probe, wrap};

/// Allocations the switch holds at most (two per relayed pair).
pub const MAX_ALLOCATIONS: usize = 2 * crate::relay::config::MAX_SESSIONS;
/// Bytes one allocation may send through the switch in its life (1 TiB).
pub const MAX_BYTES: u64 = 1 << 40;
/// Sustained bytes per second one allocation may send (10 Gbit/s).
pub const RATE: u64 = 1_250_000_000;
/// Bytes one allocation may send at once above its rate (the token bucket's depth).
pub const BURST: u64 = 16 << 20;
/// An allocation that forwarded nothing for this long is released.
pub const IDLE: Duration = crate::relay::config::IDLE_TIMEOUT;
/// Largest wrapped packet forwarded: the largest UDP payload QUIC may use plus the
/// header. Anything larger is dropped.
pub const MAX_PACKET: usize = 65_527;

/// The switch's limits (defaults: the constants of this module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchLimits {
    /// Allocations held at most.
    pub max_allocations: usize,
    /// Bytes one allocation may send in its life.
    pub max_bytes: u64,
    /// Sustained bytes per second one allocation may send.
    pub rate: u64,
    /// Depth of each allocation's token bucket, in bytes.
    pub burst: u64,
    /// Idle time after which an allocation is released by [`Switch::expire`].
    pub idle: Duration,
}

impl Default for SwitchLimits {
    fn default() -> Self {
        SwitchLimits {
            max_allocations: MAX_ALLOCATIONS,
            max_bytes: MAX_BYTES,
            rate: RATE,
            burst: BURST,
            idle: IDLE,
        }
    }
}

/// Why a datagram was not forwarded. The order is the order of the checks and of the
/// counters ([`DropReason::all`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a wrapped packet (a reserved first byte, or nothing after the header).
    Malformed,
    /// Larger than [`MAX_PACKET`].
    TooLarge,
    /// No allocation has this channel id.
    UnknownId,
    /// The channel id is known, but the packet came from another address.
    WrongSource,
    /// The peer's allocation is gone (released or expired).
    NoPeer,
    /// The sender's allocation is over its rate.
    RateLimited,
    /// The sender's allocation has sent its byte limit.
    ByteLimit,
    /// The socket could not take the packet now (the switch queues nothing).
    SendFailed,
}

impl DropReason {
    /// Every reason, in counter order.
    pub fn all() -> [DropReason; 8] {
        use DropReason::*;
        [
            Malformed,
            TooLarge,
            UnknownId,
            WrongSource,
            NoPeer,
            RateLimited,
            ByteLimit,
            SendFailed,
        ]
    }

    /// The label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::TooLarge => "too_large",
            DropReason::UnknownId => "unknown_id",
            DropReason::WrongSource => "wrong_source",
            DropReason::NoPeer => "no_peer",
            DropReason::RateLimited => "rate_limited",
            DropReason::ByteLimit => "byte_limit",
            DropReason::SendFailed => "send_failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why an allocation could not be granted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SwitchError {
    /// The switch holds its maximum of allocations.
    #[error("the relay's switch is at its limit of allocations")]
    Full,
    /// The system's random number generator failed.
    #[error("no randomness for a channel id")]
    Random,
}

/// One client's allocation.
#[derive(Debug, Clone)]
struct Allocation {
    /// The address the relay sees for the client: packets come only from here, and the
    /// peer's packets go only here.
    bound: SocketAddr,
    /// The peer's channel id.
    peer: u64,
    /// Bytes this allocation sent through the switch.
    sent: u64,
    /// Tokens (bytes) in the rate bucket, as of `refilled`.
    tokens: u64,
    refilled: Instant,
    /// Last packet forwarded from or to this allocation (or its grant).
    seen: Instant,
    /// It forwarded a path probe: its endpoints went direct (they probe through the
    /// relay only while their packets go direct, docs/PROTOCOL.md "Candidates and
    /// probes").
    direct: bool,
}

/// Totals of the switch, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (whole datagrams, header included).
    pub bytes: u64,
    /// Allocations granted since start.
    pub granted: u64,
    /// Allocations released for idleness.
    pub expired: u64,
    /// Allocations whose endpoint went direct (the first probe each sent through the
    /// relay).
    pub went_direct: u64,
    /// Datagrams dropped, by [`DropReason`] in [`DropReason::all`] order.
    pub dropped: [u64; 8],
}

impl Counters {
    /// Datagrams dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }
}

/// The table of allocations and the forwarding decision.
#[derive(Debug)]
pub struct Switch {
    table: HashMap<u64, Allocation>,
    limits: SwitchLimits,
    counters: Counters,
}

/// A granted pair: each client's channel id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// The first client's channel id.
    pub first: u64,
    /// The second client's channel id.
    pub second: u64,
}

impl Switch {
    /// An empty switch with `limits`. The table's memory is reserved up front, so
    /// granting never grows it.
    pub fn new(limits: SwitchLimits) -> Self {
        Switch {
            table: HashMap::with_capacity(limits.max_allocations),
            limits,
            counters: Counters::default(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &SwitchLimits {
        &self.limits
    }

    /// Allocations held now.
    pub fn allocations(&self) -> usize {
        self.table.len()
    }

    /// The totals so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counts a datagram the caller dropped (one the switch did not see, or one it
    /// decided to forward and the socket would not take).
    pub fn count_drop(&mut self, reason: DropReason) {
        let c = &mut self.counters.dropped[reason.index()];
        *c = c.saturating_add(1);
    }

    /// Grants two allocations linked to each other, bound to `first` and `second` (the
    /// addresses the relay sees for the two clients), with fresh random channel ids.
    pub fn grant(
        &mut self,
        first: SocketAddr,
        second: SocketAddr,
        now: Instant,
    ) -> Result<Pair, SwitchError> {
        self.grant_with(first, second, now, &mut |b| {
            getrandom::getrandom(b).map_err(|_| SwitchError::Random)
        })
    }

    /// [`grant`](Switch::grant) with the randomness from `fill` (tests).
    fn grant_with(
        &mut self,
        first: SocketAddr,
        second: SocketAddr,
        now: Instant,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<(), SwitchError>,
    ) -> Result<Pair, SwitchError> {
        if self.table.len().saturating_add(2) > self.limits.max_allocations {
            return Err(SwitchError::Full);
        }
        let a = self.fresh_id(fill, None)?;
        let b = self.fresh_id(fill, Some(a))?;
        let alloc = |bound, peer| Allocation {
            bound,
            peer,
            sent: 0,
            tokens: self.limits.burst,
            refilled: now,
            seen: now,
            direct: false,
        };
        let (x, y) = (alloc(first, b), alloc(second, a));
        self.table.insert(a, x);
        self.table.insert(b, y);
        self.counters.granted = self.counters.granted.saturating_add(2);
        Ok(Pair {
            first: a,
            second: b,
        })
    }

    /// A random channel id not in the table, not 0 and not `other`.
    fn fresh_id(
        &self,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<(), SwitchError>,
        other: Option<u64>,
    ) -> Result<u64, SwitchError> {
        // A collision among 2^64 ids is a broken generator; a few tries, then give up.
        for _ in 0..8 {
            let mut b = [0u8; 8];
            fill(&mut b)?;
            let id = u64::from_be_bytes(b);
            if id != 0 && Some(id) != other && !self.table.contains_key(&id) {
                return Ok(id);
            }
        }
        Err(SwitchError::Random)
    }

    /// Binds allocation `id` to a new address (the client re-registered on its control
    /// connection after its NAT rebound). `false` if there is no such allocation.
    pub fn rebind(&mut self, id: u64, to: SocketAddr) -> bool {
        match self.table.get_mut(&id) {
            Some(a) => {
                a.bound = to;
                true
            }
            None => false,
        }
    }

    /// Bytes allocation `id` sent through the switch (0 if unknown).
    pub fn sent(&self, id: u64) -> u64 {
        self.table.get(&id).map_or(0, |a| a.sent)
    }

    /// The address allocation `id` is bound to.
    pub fn bound(&self, id: u64) -> Option<SocketAddr> {
        self.table.get(&id).map(|a| a.bound)
    }

    /// Releases allocation `id` (its client's control connection ended). Its peer's
    /// packets are dropped from now on ([`DropReason::NoPeer`]). `false` if unknown.
    pub fn release(&mut self, id: u64) -> bool {
        self.table.remove(&id).is_some()
    }

    /// Releases every allocation idle for the limit's idle time or more; returns how
    /// many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let idle = self.limits.idle;
        let before = self.table.len();
        self.table
            .retain(|_, a| now.saturating_duration_since(a.seen) < idle);
        let n = before - self.table.len();
        self.counters.expired = self
            .counters
            .expired
            .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        n
    }

    /// Decides on one datagram that arrived from `from`: the address to send it to, its
    /// channel id already rewritten in place to the peer's (send `datagram` as it is,
    /// same length), or why it is dropped (counted). Never allocates.
    pub fn forward(
        &mut self,
        from: SocketAddr,
        datagram: &mut [u8],
        now: Instant,
    ) -> Result<SocketAddr, DropReason> {
        let decided = self.decide(from, datagram, now);
        match decided {
            Ok(_) => {
                let len = u64::try_from(datagram.len()).unwrap_or(u64::MAX);
                self.counters.packets = self.counters.packets.saturating_add(1);
                self.counters.bytes = self.counters.bytes.saturating_add(len);
            }
            Err(reason) => self.count_drop(reason),
        }
        decided
    }

    fn decide(
        &mut self,
        from: SocketAddr,
        datagram: &mut [u8],
        now: Instant,
    ) -> Result<SocketAddr, DropReason> {
        if datagram.len() > MAX_PACKET {
            return Err(DropReason::TooLarge);
        }
        let (id, inner) = wrap::parse(datagram).ok_or(DropReason::Malformed)?;
        // A path probe through the relay, as an endpoint sends only while its connection
        // goes direct (its first byte is never QUIC; nothing else of it is looked at).
        let probe = inner.len() == probe::LEN && inner.first() == Some(&probe::RELAY_PROBE);
        let len = u64::try_from(datagram.len()).unwrap_or(u64::MAX);
        let limits = &self.limits;
        let me = self.table.get_mut(&id).ok_or(DropReason::UnknownId)?;
        if me.bound != from {
            return Err(DropReason::WrongSource);
        }
        let peer = me.peer;
        // The sender's limits, before anything is spent on the peer.
        if me.sent.saturating_add(len) > limits.max_bytes {
            return Err(DropReason::ByteLimit);
        }
        refill(me, limits, now);
        if me.tokens < len {
            return Err(DropReason::RateLimited);
        }
        let Some(to) = self.table.get_mut(&peer) else {
            return Err(DropReason::NoPeer);
        };
        to.seen = now;
        let dest = to.bound;
        // The peer exists: spend, rewrite, go.
        if let Some(me) = self.table.get_mut(&id) {
            me.tokens -= len;
            me.sent = me.sent.saturating_add(len);
            me.seen = now;
            if probe && !me.direct {
                me.direct = true;
                self.counters.went_direct = self.counters.went_direct.saturating_add(1);
            }
        }
        if !wrap::rewrite(datagram, peer) {
            return Err(DropReason::Malformed);
        }
        Ok(dest)
    }
}

/// Adds the tokens earned since the last refill, up to the burst.
fn refill(a: &mut Allocation, limits: &SwitchLimits, now: Instant) {
    let elapsed = now.saturating_duration_since(a.refilled);
    let earned = elapsed
        .as_nanos()
        .saturating_mul(u128::from(limits.rate))
        .checked_div(1_000_000_000)
        .unwrap_or(0);
    let earned = u64::try_from(earned).unwrap_or(u64::MAX);
    if earned > 0 {
        a.tokens = a.tokens.saturating_add(earned).min(limits.burst);
        a.refilled = now;
    }
}

/// The switch as the relay's socket and control plane share it: a [`Switch`] behind a
/// mutex, the [`Divert`](crate::transport::demux::Divert) of the relay's UDP port.
pub struct SharedSwitch {
    inner: std::sync::Mutex<Switch>,
    tap: std::sync::OnceLock<Arc<dyn SwitchTap>>,
}

/// Sees each datagram the switch forwards, as it leaves (tests and diagnostics built on
/// the library: a tap asserting that only ciphertext crosses the relay). `conduit relay`
/// never installs one.
pub trait SwitchTap: Send + Sync + 'static {
    /// `datagram` (the wrapped packet, its channel id already the peer's) is forwarded.
    fn forwarded(&self, datagram: &[u8]);
}

impl std::fmt::Debug for SharedSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSwitch").finish_non_exhaustive()
    }
}

impl SharedSwitch {
    /// A shared switch with `limits`.
    pub fn new(limits: SwitchLimits) -> Self {
        SharedSwitch {
            inner: std::sync::Mutex::new(Switch::new(limits)),
            tap: std::sync::OnceLock::new(),
        }
    }

    /// Installs `tap` (once; a second call changes nothing).
    pub fn set_tap(&self, tap: Arc<dyn SwitchTap>) {
        let _ = self.tap.set(tap);
    }

    /// Runs `f` on the switch (under its lock: keep it short).
    pub fn with<T>(&self, f: impl FnOnce(&mut Switch) -> T) -> T {
        f(&mut self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl crate::transport::demux::Divert for SharedSwitch {
    fn datagram(
        &self,
        from: SocketAddr,
        kind: wrap::Kind,
        datagram: &mut [u8],
    ) -> crate::transport::demux::Verdict {
        use crate::transport::demux::Verdict;
        let now = Instant::now();
        let verdict = self.with(|s| {
            if kind != wrap::Kind::Wrapped {
                s.count_drop(DropReason::Malformed);
                return Verdict::Drop;
            }
            s.forward(from, datagram, now)
                .map_or(Verdict::Drop, Verdict::Send)
        });
        if let (Verdict::Send(_), Some(tap)) = (verdict, self.tap.get()) {
            tap.forwarded(datagram);
        }
        verdict
    }

    fn send_failed(&self) {
        self.with(|s| {
            s.count_drop(DropReason::SendFailed);
            // It was counted as forwarded when decided; it was not.
            s.counters.packets = s.counters.packets.saturating_sub(1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn packet(id: u64, len: usize) -> Vec<u8> {
        let mut p = wrap::header(id).to_vec();
        p.resize(len, 0x5a);
        p
    }

    fn counting() -> impl FnMut(&mut [u8]) -> Result<(), SwitchError> {
        let mut n = 0u64;
        move |b: &mut [u8]| {
            n += 1;
            b.copy_from_slice(&n.to_be_bytes());
            Ok(())
        }
    }

    const A: &str = "192.0.2.1:4000";
    const B: &str = "198.51.100.7:5000";

    #[test]
    fn a_packet_from_the_bound_address_goes_to_the_peer_with_the_peer_s_id_same_length() {
        let now = Instant::now();
        let mut s = Switch::new(SwitchLimits::default());
        let pair = s.grant(addr(A), addr(B), now).unwrap();
        assert_ne!(pair.first, pair.second);
        let mut p = packet(pair.first, 1200);
        assert_eq!(s.forward(addr(A), &mut p, now), Ok(addr(B)));
        assert_eq!(p.len(), 1200, "never larger");
        assert_eq!(wrap::parse(&p).map(|x| x.0), Some(pair.second));
        assert!(
            p[wrap::HEADER_LEN..].iter().all(|&b| b == 0x5a),
            "payload untouched"
        );
        let mut back = packet(pair.second, 100);
        assert_eq!(s.forward(addr(B), &mut back, now), Ok(addr(A)));
        assert_eq!(wrap::parse(&back).map(|x| x.0), Some(pair.first));
        assert_eq!(s.counters().packets, 2);
        assert_eq!(s.counters().bytes, 1300);
    }

    /// An allocation that sends a probe through the switch (an endpoint does only while
    /// its connection goes direct) counts once as gone direct; its peer's replies, and
    /// QUIC that merely starts like a probe but is longer, do not.
    #[test]
    fn allocations_that_forward_a_probe_are_counted_as_gone_direct() {
        let now = Instant::now();
        let mut s = Switch::new(SwitchLimits::default());
        let pair = s.grant(addr(A), addr(B), now).unwrap();
        let mut quic = packet(pair.first, wrap::HEADER_LEN + 1200);
        quic[wrap::HEADER_LEN] = probe::RELAY_PROBE;
        assert_eq!(s.forward(addr(A), &mut quic, now), Ok(addr(B)));
        assert_eq!(s.counters().went_direct, 0);
        let mut p = wrap::header(pair.first).to_vec();
        p.extend_from_slice(&probe::encode(
            &[1; 32],
            probe::RELAY_PROBE,
            probe::Role::Client,
            0,
        ));
        for _ in 0..3 {
            assert_eq!(s.forward(addr(A), &mut p.clone(), now), Ok(addr(B)));
        }
        assert_eq!(s.counters().went_direct, 1);
        let mut r = wrap::header(pair.second).to_vec();
        r.extend_from_slice(&probe::encode(
            &[1; 32],
            probe::RELAY_REPLY,
            probe::Role::Server,
            0,
        ));
        assert_eq!(s.forward(addr(B), &mut r, now), Ok(addr(A)));
        assert_eq!(s.counters().went_direct, 1, "a reply does not count");
        let mut theirs = wrap::header(pair.second).to_vec();
        theirs.extend_from_slice(&probe::encode(
            &[1; 32],
            probe::RELAY_PROBE,
            probe::Role::Server,
            5,
        ));
        assert_eq!(s.forward(addr(B), &mut theirs, now), Ok(addr(A)));
        assert_eq!(s.counters().went_direct, 2);
    }

    #[test]
    fn unknown_ids_wrong_sources_and_junk_are_dropped_and_counted() {
        let now = Instant::now();
        let mut s = Switch::new(SwitchLimits::default());
        let pair = s
            .grant_with(addr(A), addr(B), now, &mut counting())
            .unwrap();
        assert_eq!((pair.first, pair.second), (1, 2));
        let third = addr("203.0.113.9:4000");
        let cases = [
            (addr(A), packet(3, 100), DropReason::UnknownId),
            (addr(A), packet(0, 100), DropReason::UnknownId),
            (third, packet(1, 100), DropReason::WrongSource),
            // Same IP, another port: another address.
            (
                addr("192.0.2.1:4001"),
                packet(1, 100),
                DropReason::WrongSource,
            ),
            // The peer's id from the other client's address.
            (addr(A), packet(2, 100), DropReason::WrongSource),
            (addr(A), packet(1, wrap::HEADER_LEN), DropReason::Malformed),
            (addr(A), vec![0x40; 100], DropReason::Malformed),
            (addr(A), vec![0x11; 100], DropReason::Malformed),
            (addr(A), packet(1, MAX_PACKET + 1), DropReason::TooLarge),
        ];
        for (from, mut p, want) in cases {
            let before = p.clone();
            assert_eq!(s.forward(from, &mut p, now), Err(want));
            assert_eq!(p, before, "a dropped packet is not rewritten");
            assert!(s.counters().dropped(want) > 0);
        }
        assert_eq!(s.counters().packets, 0);
        assert_eq!(s.counters().dropped(DropReason::WrongSource), 3);
    }

    #[test]
    fn a_million_random_ids_forward_nothing_and_grow_nothing() {
        let now = Instant::now();
        let mut s = Switch::new(SwitchLimits::default());
        let pair = s.grant(addr(A), addr(B), now).unwrap();
        let cap = s.table.capacity();
        let mut p = packet(0, 64);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1_000_000 {
            // xorshift: cheap distinct ids
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if state == pair.first || state == pair.second {
                continue;
            }
            p[1..9].copy_from_slice(&state.to_be_bytes());
            assert_eq!(s.forward(addr(A), &mut p, now), Err(DropReason::UnknownId));
        }
        assert_eq!(s.counters().packets, 0);
        assert_eq!(s.allocations(), 2);
        assert_eq!(s.table.capacity(), cap);
    }

    #[test]
    fn a_released_peer_drops_and_rebinding_moves_the_bound_address() {
        let now = Instant::now();
        let mut s = Switch::new(SwitchLimits::default());
        let pair = s.grant(addr(A), addr(B), now).unwrap();
        let moved = addr("192.0.2.1:4999");
        assert!(s.rebind(pair.first, moved));
        assert_eq!(s.bound(pair.first), Some(moved));
        assert_eq!(
            s.forward(addr(A), &mut packet(pair.first, 50), now),
            Err(DropReason::WrongSource)
        );
        assert_eq!(
            s.forward(moved, &mut packet(pair.first, 50), now),
            Ok(addr(B))
        );
        assert_eq!(
            s.forward(addr(B), &mut packet(pair.second, 50), now),
            Ok(moved)
        );
        assert!(s.release(pair.second));
        assert!(!s.release(pair.second));
        assert!(!s.rebind(pair.second, moved));
        assert_eq!(
            s.forward(moved, &mut packet(pair.first, 50), now),
            Err(DropReason::NoPeer)
        );
    }

    #[test]
    fn rate_bytes_and_idle_limits_hold_per_allocation() {
        let t0 = Instant::now();
        let limits = SwitchLimits {
            max_allocations: 4,
            max_bytes: 10_000,
            rate: 1_000,
            burst: 3_000,
            idle: Duration::from_secs(30),
        };
        let mut s = Switch::new(limits);
        let pair = s.grant(addr(A), addr(B), t0).unwrap();
        // The burst: three packets of 1000, then the fourth is over the rate.
        for _ in 0..3 {
            assert!(
                s.forward(addr(A), &mut packet(pair.first, 1000), t0)
                    .is_ok()
            );
        }
        assert_eq!(
            s.forward(addr(A), &mut packet(pair.first, 1000), t0),
            Err(DropReason::RateLimited)
        );
        // The peer's own bucket is untouched.
        assert!(
            s.forward(addr(B), &mut packet(pair.second, 1000), t0)
                .is_ok()
        );
        // One second later, 1000 bytes more.
        let t1 = t0 + Duration::from_secs(1);
        assert!(
            s.forward(addr(A), &mut packet(pair.first, 1000), t1)
                .is_ok()
        );
        assert_eq!(
            s.forward(addr(A), &mut packet(pair.first, 1000), t1),
            Err(DropReason::RateLimited)
        );
        // The lifetime byte limit: 4000 sent; at 10 s the bucket is full again but
        // 10,000 bytes is the most this allocation ever sends.
        let mut t = t1;
        let mut sent = 4_000;
        let mut last_ok = t;
        loop {
            t += Duration::from_secs(3);
            match s.forward(addr(A), &mut packet(pair.first, 1000), t) {
                Ok(_) => (sent, last_ok) = (sent + 1000, t),
                Err(DropReason::ByteLimit) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(sent, 10_000);
        // Idle: 30 s after the last packet forwarded, both go.
        assert_eq!(s.expire(last_ok + Duration::from_secs(29)), 0);
        assert_eq!(s.expire(last_ok + Duration::from_secs(30)), 2);
        assert_eq!(s.allocations(), 0);
        assert_eq!(s.counters().expired, 2);
    }

    #[test]
    fn the_table_is_bounded() {
        let now = Instant::now();
        let mut s = Switch::new(SwitchLimits {
            max_allocations: 4,
            ..SwitchLimits::default()
        });
        assert!(s.grant(addr(A), addr(B), now).is_ok());
        assert!(s.grant(addr(A), addr(B), now).is_ok());
        assert_eq!(s.grant(addr(A), addr(B), now), Err(SwitchError::Full));
        assert_eq!(s.allocations(), 4);
        let mut zero = |b: &mut [u8]| {
            b.fill(0);
            Ok(())
        };
        let mut t = Switch::new(SwitchLimits::default());
        assert_eq!(
            t.grant_with(addr(A), addr(B), now, &mut zero),
            Err(SwitchError::Random),
            "id 0 is never granted"
        );
    }
}
