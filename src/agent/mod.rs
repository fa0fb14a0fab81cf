//! The transfer agent (DESIGN.md section 10, docs/AGENT.md): one long-running process per
//! endpoint that runs the `[[outbox]]` and `[[inbox]]` rules of `conduit.toml`.
//!
//! - [`config`]: the rules as written and as checked against the address book.
//! - [`queue`]: the durable queue (SQLite, WAL, 0600): every file, one delivery item per
//!   recipient with its state, attempts and receipt; what the inboxes received.
//! - [`run`]: the agent at run time ([`run::Agent`]): outbox scanner, dispatcher with
//!   retries and backoff, inbox receivers with exactly-once delivery.
//! - [`inbox`]: staging folders, conflict-free placing, the `on_receive` program.
//! - [`metrics`]: the optional Prometheus endpoint (`[agent] metrics`).
//! - [`live`]: what is in flight right now (bytes of each delivery, a signal on every
//!   queue change), for the console's live updates.
//!
//! Store-and-forward happens here, at the endpoints, never at the relay: a sender's queue
//! waits and retries with backoff while a receiver is offline.

pub mod config;
pub mod inbox;
pub mod live;
pub mod metrics;
pub mod queue;
pub mod run;
