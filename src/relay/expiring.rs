//! A bounded map whose entries expire a fixed time after they were inserted: the relay's
//! burned-nameplate and strike tables. Sans-IO.
//!
//! Every operation is O(1) (amortized): a `HashMap` holds the entries and a `VecDeque`
//! holds their keys in insertion order, which is also expiry order because every entry
//! of one table lives for the same time. Expired entries are dropped from the front of
//! the queue as operations pass by; nothing ever scans the whole table or clears it.
//!
//! When the table is full, inserting a new key evicts the oldest entry (the one closest
//! to expiry): the table never grows past its cap, and what it forgets first is what it
//! would have forgotten first anyway. Each table documents what that means for it.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// `now + d`, or the latest instant past `now` that can be represented if that is not
/// (a `Duration` can be longer than any `Instant` reaches): never panics. Halving `d`
/// ends, at the latest, at `now` itself.
pub fn saturating_add(now: Instant, d: Duration) -> Instant {
    let mut d = d;
    loop {
        if let Some(t) = now.checked_add(d) {
            return t;
        }
        d /= 2;
    }
}

struct Entry<V> {
    value: V,
    expires: Instant,
}

/// The map. `K` is cloned once per insertion (into the queue).
pub struct Expiring<K, V> {
    map: HashMap<K, Entry<V>>,
    order: VecDeque<(Instant, K)>,
    ttl: Duration,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Expiring<K, V> {
    /// An empty table whose entries live `ttl` and which holds at most `cap` of them
    /// (at least 1).
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Expiring {
            map: HashMap::new(),
            order: VecDeque::new(),
            ttl,
            cap: cap.max(1),
        }
    }

    /// Drops the entries expired at `now` (from the front of the queue only).
    fn purge(&mut self, now: Instant) {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.map.remove(&key);
            }
        }
    }

    /// The live entry of `key` at `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<&V> {
        self.map
            .get(key)
            .filter(|e| e.expires > now)
            .map(|e| &e.value)
    }

    /// The live entry of `key` at `now`, to change it (its expiry stays).
    pub fn get_mut(&mut self, key: &K, now: Instant) -> Option<&mut V> {
        self.purge(now);
        self.map.get_mut(key).map(|e| &mut e.value)
    }

    /// Inserts `key` at `now`, to expire at `now + ttl`. A live entry of the same key is
    /// overwritten and keeps its expiry. Returns the key evicted to make room, if the
    /// table was full.
    pub fn insert(&mut self, key: K, value: V, now: Instant) -> Option<K> {
        self.purge(now);
        if let Some(e) = self.map.get_mut(&key) {
            e.value = value;
            return None;
        }
        let mut evicted = None;
        if self.map.len() >= self.cap {
            if let Some((_, old)) = self.order.pop_front() {
                self.map.remove(&old);
                evicted = Some(old);
            }
        }
        let expires = saturating_add(now, self.ttl);
        self.order.push_back((expires, key.clone()));
        self.map.insert(key, Entry { value, expires });
        evicted
    }

    /// Entries held (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The most entries the table holds.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn entries_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut m = Expiring::new(TTL, 8);
        assert_eq!(m.insert(1, "a", t0), None);
        assert_eq!(m.get(&1, t0), Some(&"a"));
        assert_eq!(m.get(&1, t0 + TTL - Duration::from_millis(1)), Some(&"a"));
        assert_eq!(m.get(&1, t0 + TTL), None);
        // The next operation drops it.
        m.insert(2, "b", t0 + TTL);
        assert_eq!(m.len(), 1);
        assert!(m.get_mut(&1, t0 + TTL).is_none());
    }

    #[test]
    fn overwriting_keeps_the_expiry() {
        let t0 = Instant::now();
        let mut m = Expiring::new(TTL, 8);
        m.insert(1, 1, t0);
        m.insert(1, 2, t0 + Duration::from_secs(5));
        assert_eq!(m.get(&1, t0 + Duration::from_secs(9)), Some(&2));
        assert_eq!(m.get(&1, t0 + TTL), None);
        if let Some(v) = m.get_mut(&1, t0 + Duration::from_secs(1)) {
            *v = 3;
        }
        assert_eq!(m.get(&1, t0 + Duration::from_secs(1)), Some(&3));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_full_table_evicts_its_oldest_entry_and_never_grows() {
        let t0 = Instant::now();
        let mut m = Expiring::new(TTL, 3);
        for k in 0..3 {
            assert_eq!(m.insert(k, (), t0 + Duration::from_millis(k)), None);
        }
        assert_eq!(m.insert(3, (), t0 + Duration::from_millis(3)), Some(0));
        assert_eq!(m.get(&0, t0 + Duration::from_millis(3)), None);
        for k in 1..4 {
            assert!(m.get(&k, t0 + Duration::from_millis(3)).is_some());
        }
        for k in 4..10_000u64 {
            m.insert(k, (), t0 + Duration::from_millis(4));
            assert!(m.len() <= 3);
            assert!(m.order.len() <= 3);
        }
        assert_eq!(m.cap(), 3);
    }

    #[test]
    fn the_queue_and_the_map_stay_the_same_size() {
        let t0 = Instant::now();
        let mut m = Expiring::new(TTL, 100);
        for i in 0..1_000u64 {
            let now = t0 + Duration::from_millis(i * 37);
            m.insert(i % 150, i, now);
            let _ = m.get_mut(&(i % 7), now);
            assert_eq!(m.map.len(), m.order.len());
            assert!(m.len() <= 100);
        }
    }

    #[test]
    fn a_ttl_past_what_an_instant_holds_does_not_panic() {
        // The strike window once reached here unchecked: `now + ttl` overflowed.
        let t0 = Instant::now();
        let mut m = Expiring::new(Duration::MAX, 8);
        assert_eq!(m.insert(1, "a", t0), None);
        assert_eq!(
            m.get(&1, t0 + Duration::from_secs(86_400 * 365)),
            Some(&"a")
        );
        assert!(m.get_mut(&1, t0 + Duration::from_secs(1)).is_some());
        assert_eq!(saturating_add(t0, Duration::ZERO), t0);
        assert_eq!(
            saturating_add(t0, Duration::from_secs(5)),
            t0 + Duration::from_secs(5)
        );
        assert!(saturating_add(t0, Duration::MAX) > t0 + Duration::from_secs(86_400 * 365));
    }
}
