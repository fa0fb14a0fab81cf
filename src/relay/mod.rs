//! The relay in conduit mode, and the client side of joining one.
//!
//! The relay pairs two QUIC connections by rendezvous id and splices their streams. It
//! sees only end-to-end ciphertext and stream boundaries, holds no key, writes nothing
//! to disk, and bounds its memory by flow-control windows × sessions plus small windows
//! × waiting connections (docs/ARCHITECTURE.md, "The relay's conduit rules";
//! docs/PROTOCOL.md, "Relay").
//!
//! | module | job |
//! |---|---|
//! | [`hello`] | the Hello a client sends and the relay's answer, grant and close codes (sans-IO) |
//! | [`proof`] | a listener's proof that it holds its rendezvous id's key (sans-IO) |
//! | [`pairing`] | the rendezvous table: who waits, who pairs, single-use ids (sans-IO) |
//! | [`ratelimit`] | strikes per source for guessing and spending nameplates (sans-IO) |
//! | [`expiring`] | the bounded, O(1) expiring map under the burned and strike tables |
//! | [`splice`] | copying streams, FIN, resets and closes between two connections |
//! | [`switch`] | the datagram switch: allocations, the forwarding decision, its limits and drop counters (sans-IO) |
//! | [`server`] | accept loop, Hello timeout, tokens, sessions, drain on shutdown |
//! | [`config`] | limits with documented defaults, the TOML file, the memory bound |
//! | [`tokens`] | access tokens, stored as hashes, checked in constant time |
//! | [`metrics`] | counters, Prometheus text, `/metrics` and `/healthz` |
//! | [`fleet`] | choosing a relay by rendezvous hashing |
//! | [`summary`] | refusals counted and logged once per period, each one only when verbose |
//! | [`client`] | joining a relay as a listener or connector |

pub mod client;
pub mod config;
pub mod expiring;
pub mod fleet;
pub mod hello;
pub mod metrics;
pub mod pairing;
pub mod proof;
pub mod ratelimit;
pub mod server;
pub mod splice;
pub mod summary;
pub mod switch;
pub mod tokens;
