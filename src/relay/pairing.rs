//! The rendezvous table: which clients wait on which rendezvous id, and who pairs with
//! whom. Sans-IO and synchronous (the server holds it under a mutex for microseconds);
//! generic over what a waiter carries, so it is tested without sockets. Every operation
//! is O(1) in the number of waiting clients (a slot holds at most
//! `max_per_rendezvous` waiters) and the burned table is bounded ([`Expiring`]).
//!
//! Rules (docs/PROTOCOL.md, "Relay"):
//! - a listener waits on its rendezvous id; a connector pairs with the newest listener
//!   waiting there, and is refused ([`Refusal::NoListener`]) if none is: a pairing is one
//!   listener and one connector, and a third party finds no one to join;
//! - a listener on a key's rendezvous id (not single-use) reaches the table only after
//!   proving it holds the key ([`crate::relay::proof`]), so every waiter there is the key
//!   holder: when the id is at its cap of waiters, a newcomer takes the place of the
//!   oldest waiter ([`Arrival::Replaced`]), and a connector takes the newest: a receiver
//!   restarted after a crash is served at once, not after its stale registration times
//!   out;
//! - single-use ids and the others are separate namespaces: a client only ever meets
//!   clients that gave the same single-use flag, so a single-use listener on a
//!   receiver's key id (which needs no proof) neither blocks nor meets that receiver's
//!   listeners and connectors;
//! - a single-use rendezvous (a code phrase's nameplate) admits one waiter and one
//!   pairing: once paired it is burned for [`BURN_TTL`], and any other client on it is
//!   refused, so a third party can neither join nor guess again. At most [`MAX_BURNED`]
//!   ids are burned at once; when full, the oldest burn is forgotten first;
//! - waiters per rendezvous id and per client source (IPv4 address, IPv6 /64) are
//!   capped.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::relay::expiring::Expiring;
use crate::relay::hello::{Hello, Refusal, Role};
use crate::relay::ratelimit::source_of;

/// How long a paired single-use rendezvous id stays burned: three default pairing
/// timeouts, past which the code's sender has given up anyway.
pub const BURN_TTL: Duration = Duration::from_secs(900);
/// Burned ids remembered at most (about 7 MiB). docs/SECURITY.md shows that 1,000
/// attacking sources within their strike budget keep at most about 23,000 burned.
pub const MAX_BURNED: usize = 65_536;

/// Identifies one waiting client, to take it out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    n: u64,
    single_use: bool,
}

/// What an arriving client gets.
#[derive(Debug)]
pub enum Arrival<T> {
    /// Paired: the waiter (now out of the table), and the arriving client's own payload
    /// given back.
    Paired(T, T),
    /// Queued: wait, and call [`Table::leave`] with the ticket when giving up.
    Wait(Ticket),
    /// Queued in the place of the oldest waiter on the same key's rendezvous id, which
    /// is handed back (out of the table) to be sent away with [`Refusal::Replaced`].
    Replaced(Ticket, T),
    /// Refused: why, and the arriving client's payload given back (so that the caller
    /// can close the client's connection with the refusal before dropping the rest).
    Refused(Refusal, T),
}

struct Waiter<T> {
    ticket: Ticket,
    source: IpAddr,
    payload: T,
}

struct Slot<T> {
    waiters: VecDeque<Waiter<T>>,
}

/// Where a client waits: its rendezvous id in the namespace of its single-use flag.
type Key = ([u8; 32], bool);

fn key(hello: &Hello) -> Key {
    (hello.rendezvous, hello.single_use)
}

/// The table.
pub struct Table<T> {
    slots: HashMap<Key, Slot<T>>,
    burned: Expiring<[u8; 32], ()>,
    waiting_per_source: HashMap<IpAddr, usize>,
    waiting: usize,
    next: u64,
    max_per_ip: usize,
    max_per_rendezvous: usize,
}

impl<T> Table<T> {
    /// An empty table with the given caps (per source, per rendezvous id).
    pub fn new(max_per_ip: usize, max_per_rendezvous: usize) -> Self {
        Table {
            slots: HashMap::new(),
            burned: Expiring::new(BURN_TTL, MAX_BURNED),
            waiting_per_source: HashMap::new(),
            waiting: 0,
            next: 0,
            max_per_ip,
            max_per_rendezvous,
        }
    }

    /// A client with `hello` from `ip` arrives at `now`. A listener that is not
    /// single-use must have proven its key before.
    pub fn arrive(&mut self, hello: &Hello, ip: IpAddr, now: Instant, payload: T) -> Arrival<T> {
        let key = key(hello);
        if hello.single_use && self.burned.get(&hello.rendezvous, now).is_some() {
            return Arrival::Refused(Refusal::RendezvousTaken, payload);
        }
        if hello.role == Role::Connect {
            let Some(slot) = self.slots.get_mut(&key) else {
                return Arrival::Refused(Refusal::NoListener, payload);
            };
            let Some(w) = slot.waiters.pop_back() else {
                self.slots.remove(&key);
                return Arrival::Refused(Refusal::NoListener, payload);
            };
            if slot.waiters.is_empty() {
                self.slots.remove(&key);
            }
            self.release(w.source);
            if hello.single_use {
                let _ = self.burned.insert(hello.rendezvous, (), now);
            }
            return Arrival::Paired(w.payload, payload);
        }
        let source = source_of(ip);
        let mut evict = false;
        if let Some(slot) = self.slots.get(&key) {
            if hello.single_use {
                return Arrival::Refused(Refusal::RendezvousTaken, payload);
            }
            evict = slot.waiters.len() >= self.max_per_rendezvous;
        }
        if self.waiting_per_source.get(&source).copied().unwrap_or(0) >= self.max_per_ip {
            return Arrival::Refused(Refusal::TooManyWaiting, payload);
        }
        let old = if evict {
            let old = self
                .slots
                .get_mut(&key)
                .and_then(|slot| slot.waiters.pop_front());
            if let Some(w) = &old {
                self.release(w.source);
            }
            old
        } else {
            None
        };
        let ticket = self.enqueue(hello, source, payload);
        match old {
            Some(w) => Arrival::Replaced(ticket, w.payload),
            None => Arrival::Wait(ticket),
        }
    }

    /// The waiter a connector with `hello` arriving at `now` would pair with, left in
    /// the table (the caller checks that a session can start before it calls
    /// [`Table::arrive`]). `None` for a listener, or when the connector would be refused.
    pub fn partner(&self, hello: &Hello, now: Instant) -> Option<&T> {
        if hello.role != Role::Connect
            || (hello.single_use && self.burned.get(&hello.rendezvous, now).is_some())
        {
            return None;
        }
        self.slots
            .get(&key(hello))
            .and_then(|slot| slot.waiters.back())
            .map(|w| &w.payload)
    }

    fn enqueue(&mut self, hello: &Hello, source: IpAddr, payload: T) -> Ticket {
        *self.waiting_per_source.entry(source).or_insert(0) += 1;
        self.waiting += 1;
        self.next += 1;
        let ticket = Ticket {
            n: self.next,
            single_use: hello.single_use,
        };
        self.slots
            .entry(key(hello))
            .or_insert_with(|| Slot {
                waiters: VecDeque::new(),
            })
            .waiters
            .push_back(Waiter {
                ticket,
                source,
                payload,
            });
        ticket
    }

    fn release(&mut self, source: IpAddr) {
        self.waiting = self.waiting.saturating_sub(1);
        if let Some(n) = self.waiting_per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.waiting_per_source.remove(&source);
            }
        }
    }

    /// Takes a waiter out (it timed out or went away). `None` if it was paired or
    /// replaced already. O(waiters on this id), at most `max_per_rendezvous`.
    pub fn leave(&mut self, rendezvous: &[u8; 32], ticket: Ticket) -> Option<T> {
        let key = (*rendezvous, ticket.single_use);
        let slot = self.slots.get_mut(&key)?;
        let pos = slot.waiters.iter().position(|w| w.ticket == ticket)?;
        let w = slot.waiters.remove(pos)?;
        if slot.waiters.is_empty() {
            self.slots.remove(&key);
        }
        self.release(w.source);
        Some(w.payload)
    }

    /// Takes every waiter out (shutdown).
    pub fn drain(&mut self) -> Vec<T> {
        self.waiting_per_source.clear();
        self.waiting = 0;
        self.slots
            .drain()
            .flat_map(|(_, s)| s.waiters.into_iter().map(|w| w.payload))
            .collect()
    }

    /// Number of waiting clients.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Number of burned rendezvous ids held (at most [`MAX_BURNED`]).
    pub fn burned(&self) -> usize {
        self.burned.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(role: Role, id: u8, single_use: bool) -> Hello {
        Hello {
            switch: false,
            role,
            single_use,
            rendezvous: [id; 32],
            token: vec![],
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn a_connector_pairs_with_the_newest_listener() {
        let mut t = Table::new(8, 8);
        let now = Instant::now();
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 1, false), A, now, "l1"),
            Arrival::Wait(_)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 1, false), A, now, "l2"),
            Arrival::Wait(_)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 1, false), B, now, "c1"),
            Arrival::Paired("l2", _)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 2, false), B, now, "c-other"),
            Arrival::Refused(Refusal::NoListener, _)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 1, false), B, now, "c2"),
            Arrival::Paired("l1", _)
        ));
        assert_eq!(t.waiting(), 0);
    }

    #[test]
    fn the_partner_is_the_waiter_a_connector_would_pair_with() {
        let mut t = Table::new(8, 8);
        let now = Instant::now();
        let connect = hello(Role::Connect, 1, false);
        assert_eq!(t.partner(&connect, now), None);
        t.arrive(&hello(Role::Listen, 1, false), A, now, "l1");
        t.arrive(&hello(Role::Listen, 1, false), A, now, "l2");
        assert_eq!(t.partner(&connect, now), Some(&"l2"));
        assert_eq!(t.partner(&hello(Role::Listen, 1, false), now), None);
        assert_eq!(t.partner(&hello(Role::Connect, 1, true), now), None);
        // Looking does not take it.
        assert_eq!(t.waiting(), 2);
        assert!(matches!(
            t.arrive(&connect, B, now, "c"),
            Arrival::Paired("l2", _)
        ));
        // A burned single-use id has no partner.
        t.arrive(&hello(Role::Listen, 7, true), A, now, "code");
        let code = hello(Role::Connect, 7, true);
        assert_eq!(t.partner(&code, now), Some(&"code"));
        assert!(matches!(t.arrive(&code, B, now, "c"), Arrival::Paired(..)));
        assert_eq!(t.partner(&code, now), None);
    }

    #[test]
    fn a_connector_with_no_listener_is_refused_and_a_third_party_finds_no_one() {
        let mut t = Table::new(8, 8);
        let now = Instant::now();
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 1, false), B, now, "c"),
            Arrival::Refused(Refusal::NoListener, _)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 1, false), A, now, "l"),
            Arrival::Wait(_)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 1, false), B, now, "c1"),
            Arrival::Paired("l", _)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 1, false), B, now, "c2"),
            Arrival::Refused(Refusal::NoListener, _)
        ));
        assert_eq!(t.waiting(), 0);
    }

    #[test]
    fn single_use_rendezvous_refuses_a_third_party_and_is_burned() {
        let mut t = Table::new(8, 8);
        let now = Instant::now();
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 9, true), A, now, 1),
            Arrival::Wait(_)
        ));
        // A second listener on a code's nameplate is a third party.
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 9, true), B, now, 2),
            Arrival::Refused(Refusal::RendezvousTaken, _)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 9, true), B, now, 3),
            Arrival::Paired(1, _)
        ));
        // Burned: neither role may use it again (one guess per code).
        for role in [Role::Listen, Role::Connect] {
            assert!(matches!(
                t.arrive(&hello(role, 9, true), B, now, 4),
                Arrival::Refused(Refusal::RendezvousTaken, _)
            ));
        }
        // The same id without the flag is another namespace: nobody waits there (and a
        // listener there would have to prove a key whose id this is).
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 9, false), B, now, 4),
            Arrival::Refused(Refusal::NoListener, _)
        ));
        // ...until the burn expires.
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 9, true), A, now + BURN_TTL, 5),
            Arrival::Wait(_)
        ));
    }

    #[test]
    fn caps_per_address_and_per_rendezvous() {
        let mut t = Table::new(2, 3);
        let now = Instant::now();
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 1, false), A, now, ()),
            Arrival::Wait(_)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 2, false), A, now, ()),
            Arrival::Wait(_)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 3, false), A, now, ()),
            Arrival::Refused(Refusal::TooManyWaiting, _)
        ));
        // IPv6: one /64 is one source.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut t = Table::new(1, 8);
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 1, false), v6("2001:db8::1"), now, ()),
            Arrival::Wait(_)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 2, false), v6("2001:db8::2:3"), now, ()),
            Arrival::Refused(Refusal::TooManyWaiting, _)
        ));
        assert!(matches!(
            t.arrive(
                &hello(Role::Listen, 2, false),
                v6("2001:db8:0:1::1"),
                now,
                ()
            ),
            Arrival::Wait(_)
        ));
    }

    #[test]
    fn a_full_key_rendezvous_gives_the_oldest_place_to_a_newcomer() {
        let mut t = Table::new(100, 3);
        let now = Instant::now();
        for n in 0..3 {
            assert!(matches!(
                t.arrive(&hello(Role::Listen, 1, false), B, now, n),
                Arrival::Wait(_)
            ));
        }
        let Arrival::Replaced(_, old) = t.arrive(&hello(Role::Listen, 1, false), A, now, 3) else {
            panic!("expected a replacement")
        };
        assert_eq!(old, 0);
        assert_eq!(t.waiting(), 3);
        for want in [3, 2, 1] {
            let Arrival::Paired(got, _) = t.arrive(&hello(Role::Connect, 1, false), B, now, 9)
            else {
                panic!("expected a pairing")
            };
            assert_eq!(got, want);
        }
        assert_eq!(t.waiting(), 0);
        // A code's nameplate is never taken over.
        let mut t = Table::new(100, 1);
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 2, true), B, now, 0),
            Arrival::Wait(_)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 2, true), A, now, 1),
            Arrival::Refused(Refusal::RendezvousTaken, _)
        ));
    }

    #[test]
    fn a_single_use_squatter_on_a_key_id_neither_blocks_nor_meets_its_owner() {
        let mut t = Table::new(100, 16);
        let now = Instant::now();
        // The attacker waits single-use on the receiver's key id (no proof asked)...
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 1, true), B, now, "squatter"),
            Arrival::Wait(_)
        ));
        // ...and a sender who comes before the receiver does not meet it.
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 1, false), A, now, "early sender"),
            Arrival::Refused(Refusal::NoListener, _)
        ));
        // The receiver still waits there, and its sender finds it, not the squatter.
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 1, false), A, now, "receiver"),
            Arrival::Wait(_)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 1, false), A, now, "sender"),
            Arrival::Paired("receiver", _)
        ));
        // Nor can the attacker burn the key id for its owner.
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 1, true), B, now, "accomplice"),
            Arrival::Paired("squatter", _)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 1, false), A, now, "receiver again"),
            Arrival::Wait(_)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 1, false), A, now, "sender again"),
            Arrival::Paired("receiver again", _)
        ));
    }

    #[test]
    fn the_burned_table_is_bounded() {
        let mut t = Table::new(100, 1);
        let now = Instant::now();
        for i in 0..(MAX_BURNED as u32 + 1000) {
            let mut h = hello(Role::Listen, 0, true);
            h.rendezvous[..4].copy_from_slice(&i.to_be_bytes());
            assert!(matches!(t.arrive(&h, A, now, ()), Arrival::Wait(_)));
            h.role = Role::Connect;
            assert!(matches!(t.arrive(&h, B, now, ()), Arrival::Paired(..)));
        }
        assert_eq!(t.burned(), MAX_BURNED);
        assert_eq!(t.waiting(), 0);
        // The newest burns are kept, the oldest were forgotten first.
        let mut newest = hello(Role::Listen, 0, true);
        newest.rendezvous[..4].copy_from_slice(&(MAX_BURNED as u32 + 999).to_be_bytes());
        assert!(matches!(
            t.arrive(&newest, A, now, ()),
            Arrival::Refused(Refusal::RendezvousTaken, _)
        ));
        let oldest = hello(Role::Listen, 0, true);
        assert!(matches!(t.arrive(&oldest, A, now, ()), Arrival::Wait(_)));
    }

    #[test]
    fn leaving_frees_the_slot_and_the_address_count() {
        let mut t = Table::new(1, 8);
        let now = Instant::now();
        let Arrival::Wait(ticket) = t.arrive(&hello(Role::Listen, 1, false), A, now, "x") else {
            panic!("expected to wait")
        };
        assert_eq!(t.leave(&[1; 32], ticket), Some("x"));
        assert_eq!(t.leave(&[1; 32], ticket), None);
        assert_eq!(t.waiting(), 0);
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 1, false), A, now, "y"),
            Arrival::Wait(_)
        ));
        // Paired waiters cannot leave any more.
        let Arrival::Wait(_) = t.arrive(&hello(Role::Listen, 5, false), B, now, "z") else {
            panic!("expected to wait")
        };
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 1, false), B, now, "c"),
            Arrival::Paired("y", _)
        ));
        assert_eq!(t.drain(), vec!["z"]);
        assert_eq!(t.waiting(), 0);
    }
}
