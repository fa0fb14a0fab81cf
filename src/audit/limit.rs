//! A bound on the records that parties who never authenticated can cause.
//!
//! Anyone who can reach a receiver (through the relay, knowing only its public key) can
//! fail a handshake or abort before authenticating, as often as they like; each failure
//! used to be one fsynced record, so they could grow the log (and wear the disk) without
//! bound. Those records now pass a token bucket shared by the process: a burst of
//! [`BURST`] records, then one every [`REFILL`] (10 a minute). What the bucket drops is
//! counted, and the count is written as one `unauthenticated_suppressed` record (with
//! `count`, and the time of the first dropped record in `reason`) before the next record
//! the bucket lets through, or when the daemon stops. The log grows by at most about ten
//! records a minute however fast the attempts come, and still says how many there were.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The events limited when the session's peer has not authenticated: what a stranger can
/// cause (an event of a pre-authentication abort belongs here too).
pub const LIMITED_EVENTS: &[&str] = &[
    crate::audit::record::event::AUTH_FAILED,
    crate::audit::record::event::TRANSFER_FAILED,
];

/// Records let through at once.
pub const BURST: u32 = 10;
/// One more record is let through after each of these.
pub const REFILL: Duration = Duration::from_secs(6);

/// What the bucket says about one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Write it; first write a summary of the `suppressed` records dropped before it (with
    /// the time of the first of them), if any.
    Write {
        /// Records dropped since the last summary.
        suppressed: u64,
        /// Time (RFC 3339) of the first of them.
        since: Option<String>,
    },
    /// Drop it (counted).
    Drop,
}

/// The token bucket (one per process and log).
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: u32,
    /// When the last token was added (or the bucket started).
    refilled: Instant,
    suppressed: u64,
    since: Option<String>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Limiter {
    /// A full bucket at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            state: Mutex::new(State {
                tokens: BURST,
                refilled: now,
                suppressed: 0,
                since: None,
            }),
        }
    }

    /// Whether a record of an unauthenticated party at `now` (at wall time `ts`) is
    /// written.
    pub fn admit(&self, now: Instant, ts: &str) -> Admit {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(s.refilled);
        let periods = elapsed.as_nanos() / REFILL.as_nanos();
        if periods > 0 {
            let add = u32::try_from(periods).unwrap_or(u32::MAX);
            s.tokens = s.tokens.saturating_add(add).min(BURST);
            // Keep the fraction of a period already waited.
            s.refilled += REFILL * add.min(BURST);
            if s.tokens == BURST {
                s.refilled = now;
            }
        }
        if s.tokens == 0 {
            s.suppressed += 1;
            if s.since.is_none() {
                s.since = Some(ts.to_string());
            }
            return Admit::Drop;
        }
        s.tokens -= 1;
        Admit::Write {
            suppressed: std::mem::take(&mut s.suppressed),
            since: s.since.take(),
        }
    }

    /// The count (and first time) of records dropped since the last summary, resetting
    /// it: for the summary written when the process stops.
    pub fn take(&self) -> Option<(u64, Option<String>)> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (s.suppressed > 0).then(|| (std::mem::take(&mut s.suppressed), s.since.take()))
    }

    /// Puts back a count taken for a summary that could not be written.
    pub fn restore(&self, suppressed: u64, since: Option<String>) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.suppressed += suppressed;
        if since.is_some() {
            s.since = since;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_then_the_rate_and_counted() {
        let t0 = Instant::now();
        let l = Limiter::new(t0);
        let mut written = 0;
        for i in 0..1000u32 {
            if let Admit::Write { suppressed, .. } =
                l.admit(t0 + Duration::from_millis(i.into()), "t")
            {
                assert_eq!(suppressed, 0);
                written += 1;
            }
        }
        assert_eq!(written, BURST);
        // One period later one more goes through, carrying the count of the dropped.
        match l.admit(t0 + REFILL + Duration::from_secs(1), "later") {
            Admit::Write { suppressed, since } => {
                assert_eq!(suppressed, 1000 - u64::from(BURST));
                assert_eq!(since.as_deref(), Some("t"));
            }
            Admit::Drop => panic!("the refill did not come"),
        }
        assert_eq!(
            l.admit(t0 + REFILL + Duration::from_secs(1), "x"),
            Admit::Drop
        );
        assert_eq!(l.take(), Some((1, Some("x".into()))));
        assert_eq!(l.take(), None);
        // An hour of quiet refills the burst, not more.
        let later = t0 + Duration::from_secs(3600);
        let through = (0..100)
            .filter(|_| matches!(l.admit(later, "y"), Admit::Write { .. }))
            .count();
        assert_eq!(through, BURST as usize);
    }
}
