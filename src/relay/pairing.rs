//! The rendezvous table: which clients wait on which rendezvous id, and who pairs with
//! whom. Sans-IO and synchronous (the server holds it under a mutex for microseconds);
//! generic over what a waiter carries, so it is tested without sockets.
//!
//! Rules (docs/PROTOCOL.md, "Relay"):
//! - a listener waits on its rendezvous id; a connector pairs with the oldest listener
//!   waiting there, and is refused ([`Refusal::NoListener`]) if none is: a pairing is one
//!   listener and one connector, and a third party finds no one to join;
//! - a single-use rendezvous (a code phrase's nameplate) admits one waiter and one
//!   pairing: once paired it is burned for [`BURN_TTL`], and any other client on it is
//!   refused, so a third party can neither join nor guess again;
//! - waiters per rendezvous id and per client address are capped.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::relay::hello::{Hello, Refusal, Role};

/// How long a paired single-use rendezvous id stays burned.
pub const BURN_TTL: Duration = Duration::from_secs(3600);

/// Identifies one waiting client, to take it out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// What an arriving client gets.
#[derive(Debug)]
pub enum Arrival<T> {
    /// Paired: the waiter (now out of the table), and the arriving client's own payload
    /// given back.
    Paired(T, T),
    /// Queued: wait, and call [`Table::leave`] with the ticket when giving up.
    Wait(Ticket),
    /// Refused: why, and the arriving client's payload given back (so that the caller
    /// can close the client's connection with the refusal before dropping the rest).
    Refused(Refusal, T),
}

struct Waiter<T> {
    ticket: Ticket,
    ip: IpAddr,
    payload: T,
}

struct Slot<T> {
    single_use: bool,
    waiters: VecDeque<Waiter<T>>,
}

/// The table.
pub struct Table<T> {
    slots: HashMap<[u8; 32], Slot<T>>,
    burned: HashMap<[u8; 32], Instant>,
    waiting_per_ip: HashMap<IpAddr, usize>,
    next: u64,
    max_per_ip: usize,
    max_per_rendezvous: usize,
}

impl<T> Table<T> {
    /// An empty table with the given caps.
    pub fn new(max_per_ip: usize, max_per_rendezvous: usize) -> Self {
        Table {
            slots: HashMap::new(),
            burned: HashMap::new(),
            waiting_per_ip: HashMap::new(),
            next: 0,
            max_per_ip,
            max_per_rendezvous,
        }
    }

    /// A client with `hello` from `ip` arrives at `now`.
    pub fn arrive(&mut self, hello: &Hello, ip: IpAddr, now: Instant, payload: T) -> Arrival<T> {
        self.burned.retain(|_, until| *until > now);
        if self.burned.contains_key(&hello.rendezvous) {
            return Arrival::Refused(Refusal::RendezvousTaken, payload);
        }
        if hello.role == Role::Connect {
            let Some(slot) = self.slots.get_mut(&hello.rendezvous) else {
                return Arrival::Refused(Refusal::NoListener, payload);
            };
            let single_use = slot.single_use || hello.single_use;
            let Some(w) = slot.waiters.pop_front() else {
                self.slots.remove(&hello.rendezvous);
                return Arrival::Refused(Refusal::NoListener, payload);
            };
            if slot.waiters.is_empty() {
                self.slots.remove(&hello.rendezvous);
            }
            self.release_ip(w.ip);
            if single_use {
                self.burned.insert(hello.rendezvous, now + BURN_TTL);
            }
            return Arrival::Paired(w.payload, payload);
        }
        if let Some(slot) = self.slots.get(&hello.rendezvous) {
            if slot.single_use || hello.single_use {
                return Arrival::Refused(Refusal::RendezvousTaken, payload);
            }
            if slot.waiters.len() >= self.max_per_rendezvous {
                return Arrival::Refused(Refusal::TooManyWaiting, payload);
            }
        }
        self.enqueue(hello, ip, payload)
    }

    fn enqueue(&mut self, hello: &Hello, ip: IpAddr, payload: T) -> Arrival<T> {
        let count = self.waiting_per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return Arrival::Refused(Refusal::TooManyWaiting, payload);
        }
        *count += 1;
        self.next += 1;
        let ticket = Ticket(self.next);
        self.slots
            .entry(hello.rendezvous)
            .or_insert_with(|| Slot {
                single_use: hello.single_use,
                waiters: VecDeque::new(),
            })
            .waiters
            .push_back(Waiter {
                ticket,
                ip,
                payload,
            });
        Arrival::Wait(ticket)
    }

    fn release_ip(&mut self, ip: IpAddr) {
        if let Some(n) = self.waiting_per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.waiting_per_ip.remove(&ip);
            }
        }
    }

    /// Takes a waiter out (it timed out or went away). `None` if it was paired already.
    pub fn leave(&mut self, rendezvous: &[u8; 32], ticket: Ticket) -> Option<T> {
        let slot = self.slots.get_mut(rendezvous)?;
        let pos = slot.waiters.iter().position(|w| w.ticket == ticket)?;
        let w = slot.waiters.remove(pos)?;
        if slot.waiters.is_empty() {
            self.slots.remove(rendezvous);
        }
        self.release_ip(w.ip);
        Some(w.payload)
    }

    /// Takes every waiter out (shutdown).
    pub fn drain(&mut self) -> Vec<T> {
        self.waiting_per_ip.clear();
        self.slots
            .drain()
            .flat_map(|(_, s)| s.waiters.into_iter().map(|w| w.payload))
            .collect()
    }

    /// Number of waiting clients.
    pub fn waiting(&self) -> usize {
        self.slots.values().map(|s| s.waiters.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(role: Role, id: u8, single_use: bool) -> Hello {
        Hello {
            role,
            single_use,
            rendezvous: [id; 32],
            token: vec![],
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn listener_then_connector_pair_in_order() {
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
            Arrival::Paired("l1", _)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 2, false), B, now, "c-other"),
            Arrival::Refused(Refusal::NoListener, _)
        ));
        assert!(matches!(
            t.arrive(&hello(Role::Connect, 1, false), B, now, "c2"),
            Arrival::Paired("l2", _)
        ));
        assert_eq!(t.waiting(), 0);
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
            assert!(matches!(
                t.arrive(&hello(role, 9, false), B, now, 4),
                Arrival::Refused(Refusal::RendezvousTaken, _)
            ));
        }
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
        let mut t = Table::new(100, 3);
        for _ in 0..3 {
            assert!(matches!(
                t.arrive(&hello(Role::Listen, 1, false), B, now, ()),
                Arrival::Wait(_)
            ));
        }
        assert!(matches!(
            t.arrive(&hello(Role::Listen, 1, false), A, now, ()),
            Arrival::Refused(Refusal::TooManyWaiting, _)
        ));
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
