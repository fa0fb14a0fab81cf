//! `conduit bench relay`: the relay's datagram switch on its own, with no endpoints. A
//! relay process is started; two clients are granted a pair of allocations on it; one
//! pushes wrapped packets of a QUIC-sized datagram (GSO batches where the kernel has
//! them) as fast as its socket takes them, the other counts what arrives. Reported: what
//! was forwarded, how fast, and the relay's CPU per GiB, that is its ceiling per core.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::BenchError;
use crate::bench::proc::{cpu_seconds, peak_rss_bytes};
use crate::relay::hello::{Grant, Hello, PAIRED, Role};
use crate::transport::demux::{DemuxSocket, Divert, Verdict};
use crate::transport::{RelayTrust, relay_client_diverting};
use phi_conduit::wire::wrap::{self, Kind};

/// Default bytes pushed through the switch.
pub const DEFAULT_RELAY_BYTES: u64 = 1 << 30;
/// The datagram size pushed, header included: the largest UDP payload on a 1500-byte
/// IPv6 path (1500 - 40 - 8), the size quinn's path MTU discovery settles on there.
pub const DATAGRAM: usize = 1452;

/// What `bench relay` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    /// Bytes of wrapped datagrams the sender got into its socket.
    pub sent_bytes: u64,
    /// Datagrams sent.
    pub sent_packets: u64,
    /// Datagrams that arrived at the other client.
    pub forwarded_packets: u64,
    /// Bytes that arrived.
    pub forwarded_bytes: u64,
    /// Datagram size, header included.
    pub datagram_bytes: usize,
    /// Seconds from the first send to the last arrival.
    pub seconds: f64,
    /// Forwarded GiB per second of wall time.
    pub gib_per_s: f64,
    /// Forwarded datagrams per second of wall time.
    pub packets_per_s: f64,
    /// The relay's CPU seconds over the run.
    pub relay_cpu_s: f64,
    /// The relay's CPU seconds per forwarded GiB.
    pub relay_cpu_s_per_gib: f64,
    /// Forwarded GiB per relay CPU second: the switch's ceiling on one core.
    pub gib_per_core_s: f64,
    /// Forwarded datagrams per relay CPU second.
    pub packets_per_core_s: f64,
    /// The relay's peak resident memory.
    pub relay_peak_rss_bytes: u64,
}

fn err(msg: impl Into<String>) -> BenchError {
    BenchError::Transfer(format!("relay: {}", msg.into()))
}

/// Counts what arrives.
#[derive(Debug, Default)]
struct Counter {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl Divert for Counter {
    fn datagram(&self, _from: SocketAddr, kind: Kind, datagram: &mut [u8]) -> Verdict {
        if kind == Kind::Wrapped {
            self.packets.fetch_add(1, Relaxed);
            self.bytes
                .fetch_add(u64::try_from(datagram.len()).unwrap_or(0), Relaxed);
        }
        Verdict::Drop
    }
}

/// Starts `exe relay` on loopback (as `bench transfer` does, its output read on to the
/// end): the relay, its address and its pin.
fn start_relay(exe: &Path) -> Result<(super::transfer::Party, SocketAddr, [u8; 32]), BenchError> {
    let (relay, addr, pin) = super::transfer::start_relay(exe)?;
    let addr = addr.parse().map_err(|_| err("no address"))?;
    let pin = crate::relay::tokens::parse_sha256(&pin).ok_or_else(|| err("no pin"))?;
    Ok((relay, addr, pin))
}

/// One client granted an allocation (what stays alive for the run).
struct Granted {
    _endpoint: quinn::Endpoint,
    socket: Arc<DemuxSocket>,
    _conn: quinn::Connection,
    grant: Grant,
    _streams: (quinn::SendStream, quinn::RecvStream),
}

async fn join(
    relay: SocketAddr,
    pin: [u8; 32],
    role: Role,
    rendezvous: [u8; 32],
    divert: Arc<dyn Divert>,
) -> Result<Granted, BenchError> {
    let e = |x: &dyn std::fmt::Display| err(x.to_string());
    let (endpoint, socket) =
        relay_client_diverting(([127, 0, 0, 1], 0).into(), &RelayTrust::Pin(pin), divert)
            .map_err(|x| e(&x))?;
    let conn = endpoint
        .connect(relay, "localhost")
        .map_err(|x| e(&x))?
        .await
        .map_err(|x| e(&x))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|x| e(&x))?;
    let hello = Hello {
        role,
        single_use: true,
        switch: true,
        rendezvous,
        token: vec![],
    };
    let body = hello.encode().map_err(|x| e(&x))?;
    let frame = phi_conduit::wire::frame::to_frame(&body).map_err(|x| e(&x))?;
    send.write_all(&frame).await.map_err(|x| e(&x))?;
    // PAIRED and an IPv4 grant.
    let mut answer = [0u8; 17];
    recv.read_exact(&mut answer).await.map_err(|x| e(&x))?;
    if answer[0] != PAIRED {
        return Err(err("not paired"));
    }
    let grant = Grant::decode(&answer[1..])
        .map_err(|x| e(&x))?
        .ok_or_else(|| err("short grant"))?
        .0;
    Ok(Granted {
        _endpoint: endpoint,
        socket,
        _conn: conn,
        grant,
        _streams: (send, recv),
    })
}

/// Runs the benchmark: `size` bytes of wrapped datagrams through a relay started from
/// `exe`.
pub fn relay(exe: &Path, size: u64) -> Result<RelayReport, BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(exe, size))
}

async fn run(exe: &Path, size: u64) -> Result<RelayReport, BenchError> {
    let (child, relay, pin) = start_relay(exe)?;
    let pid = child.pid();
    let mut rendezvous = [0u8; 32];
    getrandom::getrandom(&mut rendezvous).map_err(|e| err(e.to_string()))?;
    let counter = Arc::new(Counter::default());
    let listener = tokio::spawn(join(
        relay,
        pin,
        Role::Listen,
        rendezvous,
        Arc::clone(&counter) as Arc<dyn Divert>,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sender = join(
        relay,
        pin,
        Role::Connect,
        rendezvous,
        Arc::new(Counter::default()),
    )
    .await?;
    let _receiver = listener.await.map_err(|e| err(e.to_string()))??;

    use quinn::AsyncUdpSocket;
    // One GSO send carries at most 64 KiB of UDP payload.
    let segments = sender
        .socket
        .max_transmit_segments()
        .clamp(1, 65_000 / DATAGRAM);
    let mut one = wrap::header(sender.grant.channel).to_vec();
    one.resize(DATAGRAM, 0x5a);
    one[wrap::HEADER_LEN] = 0x40;
    let batch: Vec<u8> = one.repeat(segments);
    let per_batch = u64::try_from(batch.len()).unwrap_or(u64::MAX);
    let cpu0 = cpu_seconds(Some(pid)).unwrap_or(0.0);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < size {
        match sender.socket.send_segments(relay, &batch, DATAGRAM) {
            Ok(()) => sent += per_batch,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                sender.socket.writable().await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Until nothing more arrives for a while.
    let mut last = (counter.packets.load(Relaxed), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = counter.packets.load(Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(300) {
            break;
        }
    }
    let seconds = last.1.duration_since(start).as_secs_f64().max(1e-9);
    let relay_cpu_s = cpu_seconds(Some(pid)).unwrap_or(0.0) - cpu0;
    let relay_peak_rss_bytes = peak_rss_bytes(Some(pid)).unwrap_or(0);
    let forwarded_packets = counter.packets.load(Relaxed);
    let forwarded_bytes = counter.bytes.load(Relaxed);
    let gib = forwarded_bytes as f64 / f64::from(1u32 << 30);
    drop(child);
    Ok(RelayReport {
        sent_bytes: sent,
        sent_packets: sent / DATAGRAM as u64,
        forwarded_packets,
        forwarded_bytes,
        datagram_bytes: DATAGRAM,
        seconds,
        gib_per_s: gib / seconds,
        packets_per_s: forwarded_packets as f64 / seconds,
        relay_cpu_s,
        relay_cpu_s_per_gib: if gib > 0.0 { relay_cpu_s / gib } else { 0.0 },
        gib_per_core_s: if relay_cpu_s > 0.0 {
            gib / relay_cpu_s
        } else {
            0.0
        },
        packets_per_core_s: if relay_cpu_s > 0.0 {
            forwarded_packets as f64 / relay_cpu_s
        } else {
            0.0
        },
        relay_peak_rss_bytes,
    })
}
