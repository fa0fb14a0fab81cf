//! The relay's counters, their Prometheus text rendering, and the small HTTP endpoint
//! serving `/metrics` and `/healthz` on `--metrics ADDR`. Nothing here names a file, a
//! peer or a size per file: only totals.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::relay::hello::Refusal;

/// Largest HTTP request head read.
const MAX_REQUEST: usize = 4096;
/// Time a metrics client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Metrics connections served at once; more are closed at once.
const MAX_METRICS_CLIENTS: usize = 16;

/// The relay's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Sessions being spliced now.
    pub sessions_active: AtomicU64,
    /// Sessions paired since start.
    pub sessions_total: AtomicU64,
    /// Clients waiting for a peer now.
    pub waiting: AtomicU64,
    /// Client connections open now.
    pub connections: AtomicU64,
    /// Bytes copied between paired clients (both directions).
    pub bytes_relayed: AtomicU64,
    /// Sum of pairing waits, in microseconds.
    pub pairing_wait_micros: AtomicU64,
    /// Number of pairing waits summed.
    pub pairings: AtomicU64,
    /// Single-use rendezvous ids burned, as of the last arrival (at most the burned
    /// table's cap).
    pub burned: AtomicU64,
    /// Sources remembered with strikes, as of the last strike (at most the strike
    /// table's cap).
    pub strike_sources: AtomicU64,
    /// Refusals, by [`Refusal`] in code order.
    rejections: [AtomicU64; Refusal::COUNT],
    /// Set when draining (health turns 503).
    pub draining: AtomicBool,
    /// The datagram switch, once the relay is bound (its counters are rendered too).
    pub switch: std::sync::OnceLock<Arc<crate::relay::switch::SharedSwitch>>,
}

impl Metrics {
    /// Counts one refusal.
    pub fn reject(&self, r: Refusal) {
        if let Some((c, _)) = self
            .rejections
            .iter()
            .zip(Refusal::all())
            .find(|(_, x)| *x == r)
        {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Refusals of one kind so far.
    pub fn rejections(&self, r: Refusal) -> u64 {
        self.rejections
            .iter()
            .zip(Refusal::all())
            .find(|(_, x)| *x == r)
            .map_or(0, |(c, _)| c.load(Relaxed))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "conduit_relay_sessions_active",
            "gauge",
            "Sessions being spliced.",
            self.sessions_active.load(Relaxed),
        );
        metric(
            "conduit_relay_sessions_total",
            "counter",
            "Sessions paired since start.",
            self.sessions_total.load(Relaxed),
        );
        metric(
            "conduit_relay_waiting",
            "gauge",
            "Clients waiting for a peer.",
            self.waiting.load(Relaxed),
        );
        metric(
            "conduit_relay_connections",
            "gauge",
            "Client connections open.",
            self.connections.load(Relaxed),
        );
        metric(
            "conduit_relay_bytes_relayed_total",
            "counter",
            "Ciphertext bytes copied between paired clients.",
            self.bytes_relayed.load(Relaxed),
        );
        metric(
            "conduit_relay_burned_rendezvous",
            "gauge",
            "Single-use rendezvous ids (code nameplates) burned, as of the last arrival.",
            self.burned.load(Relaxed),
        );
        metric(
            "conduit_relay_strike_sources",
            "gauge",
            "Sources (IPv4 addresses, IPv6 /64s) remembered with strikes, as of the last strike.",
            self.strike_sources.load(Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP conduit_relay_pairing_wait_seconds Time the first client of a pair waited.\n\
             # TYPE conduit_relay_pairing_wait_seconds summary\n\
             conduit_relay_pairing_wait_seconds_sum {:.6}\n\
             conduit_relay_pairing_wait_seconds_count {}",
            self.pairing_wait_micros.load(Relaxed) as f64 / 1e6,
            self.pairings.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP conduit_relay_rejections_total Clients refused or ended by the relay, by reason.\n\
             # TYPE conduit_relay_rejections_total counter"
        );
        for r in Refusal::all() {
            let _ = writeln!(
                s,
                "conduit_relay_rejections_total{{reason=\"{}\"}} {}",
                r.label(),
                self.rejections(r)
            );
        }
        if let Some(switch) = self.switch.get() {
            render_switch(&mut s, switch);
        }
        s
    }
}

/// The datagram switch's counters in Prometheus text.
fn render_switch(s: &mut String, switch: &crate::relay::switch::SharedSwitch) {
    use crate::relay::switch::DropReason;
    let (allocations, c) = switch.with(|w| (w.allocations(), w.counters().clone()));
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            s,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "conduit_relay_allocations",
        "gauge",
        "Allocations on the datagram switch.",
        u64::try_from(allocations).unwrap_or(u64::MAX),
    );
    metric(
        "conduit_relay_allocations_total",
        "counter",
        "Allocations granted since start.",
        c.granted,
    );
    metric(
        "conduit_relay_allocations_expired_total",
        "counter",
        "Allocations released for idleness.",
        c.expired,
    );
    metric(
        "conduit_relay_allocations_direct_total",
        "counter",
        "Allocations whose endpoints moved their connection to a direct path.",
        c.went_direct,
    );
    metric(
        "conduit_relay_switch_packets_total",
        "counter",
        "Wrapped packets forwarded by the switch.",
        c.packets,
    );
    metric(
        "conduit_relay_switch_bytes_total",
        "counter",
        "Bytes of wrapped packets forwarded by the switch (headers included).",
        c.bytes,
    );
    let _ = writeln!(
        s,
        "# HELP conduit_relay_switch_dropped_total Datagrams the switch did not forward, by reason.\n\
         # TYPE conduit_relay_switch_dropped_total counter"
    );
    for r in DropReason::all() {
        let _ = writeln!(
            s,
            "conduit_relay_switch_dropped_total{{reason=\"{}\"}} {}",
            r.label(),
            c.dropped(r)
        );
    }
}

/// What a `/metrics` endpoint serves: the relay's counters, or the transfer agent's.
pub trait Render: Send + Sync + 'static {
    /// The Prometheus text exposition.
    fn render(&self) -> String;
    /// Whether `/healthz` says draining (503).
    fn draining(&self) -> bool {
        false
    }
}

impl Render for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }

    fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is dropped.
pub async fn serve<M: Render>(listener: TcpListener, metrics: Arc<M>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CLIENTS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &*metrics)).await;
            drop(permit);
        });
    }
}

async fn answer<M: Render>(mut stream: tokio::net::TcpStream, metrics: &M) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        if n == buf.len() {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
        let got = stream.read(&mut buf[n..]).await?;
        if got == 0 {
            return Ok(());
        }
        n += got;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "").await;
    }
    match path {
        "/metrics" => respond(&mut stream, "200 OK", &metrics.render()).await,
        "/healthz" if metrics.draining() => {
            respond(&mut stream, "503 Service Unavailable", "draining\n").await
        }
        "/healthz" => respond(&mut stream, "200 OK", "ok\n").await,
        _ => respond(&mut stream, "404 Not Found", "").await,
    }
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_reason() {
        let m = Metrics::default();
        m.reject(Refusal::Token);
        m.reject(Refusal::Token);
        m.bytes_relayed.store(42, Relaxed);
        let text = m.render();
        assert!(text.contains("conduit_relay_rejections_total{reason=\"token\"} 2"));
        assert!(text.contains("conduit_relay_rejections_total{reason=\"busy\"} 0"));
        assert!(text.contains("conduit_relay_bytes_relayed_total 42"));
        for r in Refusal::all() {
            assert!(text.contains(r.label()));
        }
    }

    #[tokio::test]
    async fn http_endpoint_serves_metrics_and_health() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Arc::new(Metrics::default());
        tokio::spawn(serve(listener, Arc::clone(&m)));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(
            metrics.contains("conduit_relay_sessions_active 0"),
            "{metrics}"
        );
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        m.draining.store(true, Relaxed);
        assert!(get("/healthz").await.starts_with("HTTP/1.1 503"));
    }
}
