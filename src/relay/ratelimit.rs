//! Per-address strikes: refusals that look like guessing (a burned code nameplate, a
//! wrong access token, a malformed Hello) count against the client's address; past
//! [`MAX_STRIKES`] within [`WINDOW`] the relay refuses that address's connections
//! outright until the window ends. Sans-IO; bounded (old entries are dropped).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Strikes an address may collect per window.
pub const MAX_STRIKES: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (the oldest windows go first).
const MAX_ADDRESSES: usize = 65_536;

/// The strike table.
#[derive(Debug, Default)]
pub struct Strikes {
    by_ip: HashMap<IpAddr, (Instant, u32)>,
}

impl Strikes {
    /// Counts a strike against `ip` at `now`.
    pub fn strike(&mut self, ip: IpAddr, now: Instant) {
        if self.by_ip.len() >= MAX_ADDRESSES {
            self.by_ip
                .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if self.by_ip.len() >= MAX_ADDRESSES {
                self.by_ip.clear();
            }
        }
        let e = self.by_ip.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= WINDOW {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }

    /// Whether `ip` is over its strikes at `now`.
    pub fn banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.by_ip
            .get(&ip)
            .is_some_and(|(start, n)| *n >= MAX_STRIKES && now.duration_since(*start) < WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_banned_after_its_strikes_until_the_window_ends() {
        let ip: IpAddr = [10, 0, 0, 7].into();
        let other: IpAddr = [10, 0, 0, 8].into();
        let t = Instant::now();
        let mut s = Strikes::default();
        for _ in 0..MAX_STRIKES - 1 {
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
}
