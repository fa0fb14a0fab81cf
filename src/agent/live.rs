//! What the agent is doing at this moment, for the console's live updates: the bytes of
//! every delivery in flight and of every file arriving, and a signal whenever the queue changed (an item queued,
//! claimed, delivered, retried or failed, a file received). Nothing here is durable: the
//! queue ([`crate::agent::queue`]) is the record; this only says when to read it again.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

/// Updates a subscriber may fall behind by before it is told to read everything again.
const BACKLOG: usize = 256;

/// One live update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A delivery in flight moved `bytes` of `total`.
    Progress {
        /// The item.
        item: String,
        /// Plaintext bytes sent so far.
        bytes: u64,
        /// The file's size.
        total: u64,
    },
    /// The queue changed: what shows it should be read again.
    Changed,
}

/// A file arriving (the offer was read; it may still be refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arriving {
    /// The sender's key.
    pub from: crate::crypto::identity::PublicKey,
    /// The offered name (escaped), or `None` when names are hidden (names mode hash).
    pub name: Option<String>,
    /// Its size.
    pub total: u64,
}

/// What the agent last heard from its relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayState {
    /// Whether the relay answered.
    pub reachable: bool,
    /// When (milliseconds since the epoch).
    pub at_ms: i64,
    /// What happened: listening there, a delivery through it, or the error.
    pub detail: String,
}

/// The agent's live state, shared with the console.
#[derive(Debug)]
pub struct Live {
    sending: Mutex<HashMap<String, (u64, u64)>>,
    arriving: Mutex<HashMap<String, Arriving>>,
    arrivals: std::sync::atomic::AtomicU64,
    relay: Mutex<Option<RelayState>>,
    updates: broadcast::Sender<Update>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            sending: Mutex::new(HashMap::new()),
            arriving: Mutex::new(HashMap::new()),
            arrivals: std::sync::atomic::AtomicU64::new(0),
            relay: Mutex::new(None),
            updates: broadcast::channel(BACKLOG).0,
        }
    }
}

/// A lock of `m`, also after a panic elsewhere held it (the state stays usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Live {
    fn sending(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64)>> {
        lock(&self.sending)
    }

    /// A delivery of `item` (or the incoming transfer of that name) of `total` bytes
    /// starts: its progress is followed until [`Live::ended`].
    pub fn begin(&self, item: &str, total: u64) {
        self.sending().insert(item.to_string(), (0, total));
    }

    /// The delivery of `item` (or the incoming transfer of that name) moved `bytes` of
    /// `total`. Ignored for a transfer that has not begun or has ended (a cipher thread
    /// may report a moment after its transfer was given up).
    pub fn progress(&self, item: &str, bytes: u64, total: u64) {
        match self.sending().get_mut(item) {
            Some(p) => *p = (bytes, total),
            None => return,
        }
        let _ = self.updates.send(Update::Progress {
            item: item.to_string(),
            bytes,
            total,
        });
    }

    /// The attempt to deliver `item` ended (its outcome is in the queue).
    pub fn ended(&self, item: &str) {
        self.sending().remove(item);
    }

    /// How far the delivery of `item` is, if it is in flight: bytes and total.
    pub fn progress_of(&self, item: &str) -> Option<(u64, u64)> {
        self.sending().get(item).copied()
    }

    /// What the agent just heard from its relay (it answered, or not, and why); a change
    /// between reachable and not counts as a change.
    pub fn relay(&self, reachable: bool, detail: String) {
        let flipped = {
            let mut r = lock(&self.relay);
            let flipped = r.as_ref().is_none_or(|r| r.reachable != reachable);
            *r = Some(RelayState {
                reachable,
                at_ms: crate::agent::queue::now_ms(),
                detail,
            });
            flipped
        };
        if flipped {
            self.changed();
        }
    }

    /// What the agent last heard from its relay, if it tried it since it started.
    pub fn relay_state(&self) -> Option<RelayState> {
        lock(&self.relay).clone()
    }

    fn arriving(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arriving>> {
        lock(&self.arriving)
    }

    /// A name for the next incoming transfer's progress (`in-N`: never an item id, which
    /// is hex).
    pub fn next_arrival(&self) -> String {
        let n = self
            .arrivals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("in-{n}")
    }

    /// The incoming transfer `id` offers a file.
    pub fn arrival(&self, id: &str, a: Arriving) {
        if let Some(p) = self.sending().get_mut(id) {
            p.1 = a.total;
        }
        self.arriving().insert(id.to_string(), a);
        self.changed();
    }

    /// The incoming transfer `id` ended (received, refused or broken).
    pub fn arrival_ended(&self, id: &str) {
        let was = self.arriving().remove(id).is_some();
        self.ended(id);
        if was {
            self.changed();
        }
    }

    /// The files arriving now, with their names for [`Live::progress_of`], oldest first.
    pub fn arrivals(&self) -> Vec<(String, Arriving)> {
        let mut all: Vec<(String, Arriving)> = self
            .arriving()
            .iter()
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        all.sort_by_key(|(k, _)| {
            k.strip_prefix("in-")
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        });
        all
    }

    /// The queue changed.
    pub fn changed(&self) {
        let _ = self.updates.send(Update::Changed);
    }

    /// The updates from now on. A subscriber that falls more than a few hundred behind
    /// gets [`broadcast::error::RecvError::Lagged`]: it should read everything again.
    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.updates.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_kept_while_in_flight_and_every_subscriber_hears_it() {
        let live = Live::default();
        let mut rx = live.subscribe();
        // Progress of a transfer that has not begun is not kept, nor sent.
        live.progress("ab", 5, 100);
        assert_eq!(live.progress_of("ab"), None);
        live.begin("ab", 100);
        assert_eq!(live.progress_of("ab"), Some((0, 100)));
        live.progress("ab", 10, 100);
        live.changed();
        assert_eq!(live.progress_of("ab"), Some((10, 100)));
        assert_eq!(
            rx.try_recv().unwrap(),
            Update::Progress {
                item: "ab".into(),
                bytes: 10,
                total: 100
            }
        );
        assert_eq!(rx.try_recv().unwrap(), Update::Changed);
        live.ended("ab");
        assert_eq!(live.progress_of("ab"), None);
        live.progress("ab", 20, 100);
        assert_eq!(live.progress_of("ab"), None, "a late report after the end");
        // The relay: a change between reachable and not is a change, a repeat is not.
        live.relay(false, "unreachable".into());
        live.relay(false, "still".into());
        live.relay(true, "listening".into());
        assert_eq!(rx.try_recv().unwrap(), Update::Changed);
        assert_eq!(rx.try_recv().unwrap(), Update::Changed);
        assert!(rx.try_recv().is_err());
        assert_eq!(live.relay_state().unwrap().detail, "listening");
        for _ in 0..BACKLOG + 1 {
            live.changed();
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
