//! The agent's Prometheus metrics on `[agent] metrics = "ADDR"` (`/metrics`,
//! `/healthz`, served like the relay's): queue depth by state, the age of the oldest item
//! waiting, deliveries, repeats, retries, failures, files received, bytes. Totals only:
//! nothing here names a file or a peer.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::agent::queue::Queue;

/// The agent's counters since it started; the queue's gauges are read from the database
/// at each scrape.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// The queue's database.
    pub queue_path: PathBuf,
    /// Items delivered (receipts in), repeats included.
    pub deliveries: AtomicU64,
    /// Deliveries answered with the receiver's original receipt (no data sent).
    pub repeats: AtomicU64,
    /// Attempts that failed for a passing reason.
    pub retries: AtomicU64,
    /// Items given up.
    pub failures: AtomicU64,
    /// Bytes of files delivered (repeats excluded).
    pub bytes_sent: AtomicU64,
    /// Files placed into inboxes.
    pub received: AtomicU64,
    /// Bytes of files placed into inboxes.
    pub bytes_received: AtomicU64,
    /// Set while stopping (health turns 503).
    pub draining: AtomicBool,
}

impl AgentMetrics {
    /// Counters at zero for the queue at `queue_path`.
    pub fn new(queue_path: PathBuf) -> Self {
        Self {
            queue_path,
            ..Self::default()
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let counters = [
            (
                "deliveries_total",
                "Items delivered (receipt in)",
                &self.deliveries,
            ),
            (
                "repeats_total",
                "Deliveries answered with the original receipt",
                &self.repeats,
            ),
            (
                "retries_total",
                "Attempts failed for a passing reason",
                &self.retries,
            ),
            ("failures_total", "Items given up", &self.failures),
            (
                "bytes_sent_total",
                "Bytes of files delivered",
                &self.bytes_sent,
            ),
            (
                "received_total",
                "Files placed into inboxes",
                &self.received,
            ),
            (
                "bytes_received_total",
                "Bytes of files placed into inboxes",
                &self.bytes_received,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP conduit_agent_{name} {help}.");
            let _ = writeln!(s, "# TYPE conduit_agent_{name} counter");
            let _ = writeln!(s, "conduit_agent_{name} {}", v.load(Relaxed));
        }
        match Queue::open(&self.queue_path).and_then(|q| q.counts()) {
            Ok(c) => {
                let _ = writeln!(
                    s,
                    "# HELP conduit_agent_queue_items Delivery items by state."
                );
                let _ = writeln!(s, "# TYPE conduit_agent_queue_items gauge");
                for (state, n) in [
                    ("queued", c.queued),
                    ("sending", c.sending),
                    ("delivered", c.delivered),
                    ("failed", c.failed),
                    ("cancelled", c.cancelled),
                ] {
                    let _ = writeln!(s, "conduit_agent_queue_items{{state=\"{state}\"}} {n}");
                }
                let _ = writeln!(
                    s,
                    "# HELP conduit_agent_queue_depth Items waiting or being sent."
                );
                let _ = writeln!(s, "# TYPE conduit_agent_queue_depth gauge");
                let _ = writeln!(s, "conduit_agent_queue_depth {}", c.queued + c.sending);
                let _ = writeln!(
                    s,
                    "# HELP conduit_agent_oldest_item_age_seconds Age of the oldest item waiting (0: none)."
                );
                let _ = writeln!(s, "# TYPE conduit_agent_oldest_item_age_seconds gauge");
                let _ = writeln!(
                    s,
                    "conduit_agent_oldest_item_age_seconds {}",
                    c.oldest_pending_secs.unwrap_or(0)
                );
                let _ = writeln!(s, "conduit_agent_queue_up 1");
            }
            Err(_) => {
                let _ = writeln!(s, "conduit_agent_queue_up 0");
            }
        }
        s
    }
}

impl crate::relay::metrics::Render for AgentMetrics {
    fn render(&self) -> String {
        AgentMetrics::render(self)
    }

    fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_the_queue_are_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let mut q = Queue::open(&path).unwrap();
        let to = vec![("a".to_string(), "k".to_string())];
        q.enqueue(&crate::agent::queue::NewFile {
            outbox: "/o",
            name: "n",
            size: 1,
            mtime_ns: 1,
            to: &to,
        })
        .unwrap();
        let m = AgentMetrics::new(path);
        m.deliveries.fetch_add(3, Relaxed);
        let text = m.render();
        assert!(text.contains("conduit_agent_deliveries_total 3"), "{text}");
        assert!(text.contains("conduit_agent_queue_depth 1"), "{text}");
        assert!(
            text.contains("conduit_agent_queue_items{state=\"queued\"} 1"),
            "{text}"
        );
        assert!(text.contains("conduit_agent_queue_up 1"));
        assert!(!text.contains("\"n\""));
    }
}
