//! Per-source strikes: what looks like guessing or like spending code nameplates counts
//! against the client's source; past `max` strikes within the window the relay refuses
//! that source's connections outright (before the QUIC handshake) until its window ends.
//! Sans-IO, bounded and O(1) per operation ([`Expiring`]).
//!
//! A source is an IPv4 address, or an IPv6 /64 (one subscriber's usual allocation: an
//! attacker with one /64 has 2^64 addresses, and they count as one). See
//! docs/SECURITY.md, "Relay: code rendezvous under attack", for what counts and the
//! arithmetic.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::relay::expiring::Expiring;

/// Default: strikes a source may collect per window.
pub const MAX_STRIKES: u32 = 30;
/// Default: the window, from a source's first strike.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Sources remembered at most. When full, the source whose window started first is
/// forgotten (its strikes start again from zero): under a flood from more sources than
/// this, the oldest ones get a fresh budget early. 65,536 entries take about 6 MiB.
pub const MAX_SOURCES: usize = 65_536;

/// The source a client address counts as: the address for IPv4 (also IPv4-mapped IPv6),
/// the /64 prefix for IPv6.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// What a source did in its current window.
#[derive(Debug, Clone, Copy)]
struct Record {
    strikes: u32,
    /// The last single-use rendezvous id this source found no listener on (its first
    /// 8 bytes): a receiver retrying its own code costs one strike, a scan of
    /// nameplates one per nameplate.
    last_miss: Option<[u8; 8]>,
}

/// The strike table.
pub struct Strikes {
    by_source: Expiring<IpAddr, Record>,
    max: u32,
}

impl std::fmt::Debug for Strikes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Strikes")
            .field("sources", &self.by_source.len())
            .field("max", &self.max)
            .finish()
    }
}

impl Default for Strikes {
    fn default() -> Self {
        Self::new(MAX_STRIKES, WINDOW, MAX_SOURCES)
    }
}

impl Strikes {
    /// A table banning a source at `max` strikes within `window`, remembering at most
    /// `sources` sources.
    pub fn new(max: u32, window: Duration, sources: usize) -> Self {
        Strikes {
            by_source: Expiring::new(window, sources),
            max: max.max(1),
        }
    }

    /// Counts a strike against the source of `ip` at `now`.
    pub fn strike(&mut self, ip: IpAddr, now: Instant) {
        self.add(ip, now, None);
    }

    /// A single-use connector from `ip` found no listener on `rendezvous`: a strike
    /// unless it is the same rendezvous id as this source's last miss (a receiver
    /// retrying while the sender is still on its way).
    pub fn missed(&mut self, ip: IpAddr, rendezvous: &[u8; 32], now: Instant) {
        let mut id = [0u8; 8];
        id.copy_from_slice(&rendezvous[..8]);
        self.add(ip, now, Some(id));
    }

    fn add(&mut self, ip: IpAddr, now: Instant, miss: Option<[u8; 8]>) {
        let source = source_of(ip);
        if let Some(r) = self.by_source.get_mut(&source, now) {
            if miss.is_some() && r.last_miss == miss {
                return;
            }
            r.strikes = r.strikes.saturating_add(1);
            if miss.is_some() {
                r.last_miss = miss;
            }
            return;
        }
        let _ = self.by_source.insert(
            source,
            Record {
                strikes: 1,
                last_miss: miss,
            },
            now,
        );
    }

    /// Whether the source of `ip` is over its strikes at `now`.
    pub fn banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.by_source
            .get(&source_of(ip), now)
            .is_some_and(|r| r.strikes >= self.max)
    }

    /// Sources remembered now.
    pub fn sources(&self) -> usize {
        self.by_source.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_banned_after_its_strikes_until_the_window_ends() {
        let ip: IpAddr = [10, 0, 0, 7].into();
        let other: IpAddr = [10, 0, 0, 8].into();
        let t = Instant::now();
        let mut s = Strikes::new(10, WINDOW, 100);
        for _ in 0..9 {
            s.strike(ip, t);
        }
        assert!(!s.banned(ip, t));
        s.strike(ip, t);
        assert!(s.banned(ip, t));
        assert!(!s.banned(other, t));
        assert!(!s.banned(ip, t + WINDOW));
        s.strike(ip, t + WINDOW);
        assert!(!s.banned(ip, t + WINDOW));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1234:5678:9abc".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(source_of(mapped), IpAddr::from([10, 0, 0, 7]));
        let t = Instant::now();
        let mut s = Strikes::new(2, WINDOW, 100);
        s.strike(a, t);
        s.strike(b, t);
        assert!(s.banned(a, t) && s.banned(b, t));
        assert!(!s.banned(c, t));
    }

    #[test]
    fn retrying_one_nameplate_costs_one_strike_and_a_scan_costs_one_per_nameplate() {
        let ip: IpAddr = [10, 0, 0, 9].into();
        let t = Instant::now();
        let mut s = Strikes::new(3, WINDOW, 100);
        for _ in 0..100 {
            s.missed(ip, &[1; 32], t);
        }
        assert!(!s.banned(ip, t));
        s.missed(ip, &[2; 32], t);
        assert!(!s.banned(ip, t));
        s.missed(ip, &[3; 32], t);
        assert!(s.banned(ip, t));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_oldest_source_first() {
        let t = Instant::now();
        let mut s = Strikes::new(1, WINDOW, 4);
        let ip = |i: u8| IpAddr::from([10, 0, 1, i]);
        for i in 0..4 {
            s.strike(ip(i), t + Duration::from_secs(u64::from(i)));
        }
        assert!((0..4).all(|i| s.banned(ip(i), t + Duration::from_secs(4))));
        for i in 4..200 {
            s.strike(ip(i), t + Duration::from_secs(4));
            assert!(s.sources() <= 4);
        }
        assert!(!s.banned(ip(0), t + Duration::from_secs(4)));
        assert!(s.banned(ip(199), t + Duration::from_secs(4)));
    }
}
