//! Summarised relay logs: refusals are counted and logged as one `summary` event per
//! period (a minute in `conduit relay`) with a count per reason, instead of one line per
//! client attempt. A connector retries four times a second while its listener is not
//! there yet, and a daemon's listener comes back every pairing timeout: logged one by one
//! they drown the events that matter (sessions opened and closed).
//!
//! [`Summary`] wraps a [`Logger`]: every event but `refused` passes straight through; a
//! `refused` event is counted under its reason and passed through too only when the
//! summary is verbose (the debug level). [`Summary::flush`] logs the counts gathered
//! since the last one, if any; [`Summary::every`] does so each period, and the `stopped`
//! event flushes first, so no count is lost at shutdown. The summary holds reasons and
//! counts only: no address, no rendezvous id (the relay's events never carry them).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::relay::server::Logger;

/// The period of `conduit relay`'s summaries.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(60);

/// The event that is counted, not logged one by one (unless verbose).
const COUNTED: &str = "refused";

/// Counts of repeated relay events between two summaries, in front of a [`Logger`].
pub struct Summary {
    inner: Logger,
    verbose: bool,
    state: Mutex<Counts>,
}

struct Counts {
    by_reason: BTreeMap<String, u64>,
    since: Instant,
}

impl Summary {
    /// A summary in front of `inner`. `verbose`: pass every `refused` event on as well
    /// (the per-attempt lines of the debug level); the summaries come either way.
    pub fn new(inner: Logger, verbose: bool) -> Arc<Self> {
        Arc::new(Summary {
            inner,
            verbose,
            state: Mutex::new(Counts {
                by_reason: BTreeMap::new(),
                since: Instant::now(),
            }),
        })
    }

    /// The logger to give the relay ([`Relay::bind`](crate::relay::server::Relay::bind)).
    pub fn logger(self: &Arc<Self>) -> Logger {
        let me = Arc::clone(self);
        Arc::new(move |event: Value| me.log(event))
    }

    fn log(&self, event: Value) {
        match event.get("event").and_then(Value::as_str) {
            Some(COUNTED) => {
                let reason = event
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("other")
                    .to_string();
                {
                    let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                    let n = s.by_reason.entry(reason).or_insert(0);
                    *n = n.saturating_add(1);
                }
                if self.verbose {
                    (self.inner)(event);
                }
            }
            Some("stopped") => {
                self.flush();
                (self.inner)(event);
            }
            _ => (self.inner)(event),
        }
    }

    /// Logs the counts gathered since the last summary as one event, `{"event":
    /// "summary", "seconds": S, "refused": {"REASON": N, ...}, "total": N}`; nothing when
    /// there are none.
    pub fn flush(&self) {
        let event = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let seconds = now.duration_since(s.since).as_secs();
            s.since = now;
            if s.by_reason.is_empty() {
                return;
            }
            let counts = std::mem::take(&mut s.by_reason);
            let total = counts.values().fold(0u64, |a, n| a.saturating_add(*n));
            json!({"event": "summary", "seconds": seconds, "refused": counts, "total": total})
        };
        (self.inner)(event);
    }

    /// Flushes every `period` (at least one second), forever: spawn it beside the relay.
    pub async fn every(self: Arc<Self>, period: Duration) {
        let period = period.max(Duration::from_secs(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collecting() -> (Logger, Arc<Mutex<Vec<Value>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        (Arc::new(move |v| s.lock().unwrap().push(v)), seen)
    }

    #[test]
    fn refusals_are_counted_by_reason_and_other_events_pass() {
        let (inner, seen) = collecting();
        let summary = Summary::new(inner, false);
        let log = summary.logger();
        for _ in 0..41 {
            log(json!({"event": "refused", "reason": "no_listener"}));
        }
        log(json!({"event": "refused", "reason": "pairing_timeout"}));
        log(json!({"event": "session_open", "session": "ab"}));
        assert_eq!(seen.lock().unwrap().len(), 1, "only the session passed");
        summary.flush();
        summary.flush();
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.len(),
            2,
            "one summary, and none when there is nothing new"
        );
        let s = &seen[1];
        assert_eq!(s["event"], "summary");
        assert_eq!(s["refused"]["no_listener"], 41);
        assert_eq!(s["refused"]["pairing_timeout"], 1);
        assert_eq!(s["total"], 42);
    }

    #[test]
    fn verbose_passes_each_refusal_and_stopping_flushes_first() {
        let (inner, seen) = collecting();
        let summary = Summary::new(inner, true);
        let log = summary.logger();
        log(json!({"event": "refused", "reason": "busy"}));
        log(json!({"event": "stopped", "sessions_cut": 0}));
        let seen = seen.lock().unwrap();
        let kinds: Vec<_> = seen.iter().map(|e| e["event"].clone()).collect();
        assert_eq!(kinds, ["refused", "summary", "stopped"]);
        assert_eq!(seen[1]["refused"]["busy"], 1);
    }
}
