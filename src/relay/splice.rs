//! Splicing two paired client connections: every stream one side opens is opened on the
//! other side in the same order, bytes are copied both ways as they come (ciphertext the
//! relay cannot read), FIN and resets are carried over, a STOP_SENDING travels back, and
//! a connection close is carried over with its code and reason.
//!
//! Memory: a copy holds at most one chunk of [`COPY_CHUNK`] bytes per stream; everything
//! else waits in quinn's flow-controlled windows. A slow reader slows the writer down
//! (backpressure); nothing is buffered without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use quinn::{Connection, ConnectionError, ReadError, RecvStream, SendStream, VarInt, WriteError};
use tokio::task::JoinSet;

use crate::relay::config::COPY_CHUNK;
use crate::relay::hello::Refusal;

/// How long a close is held back so that data already forwarded arrives first.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// How a spliced session ended.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Bytes copied from the first connection to the second.
    pub a_to_b: u64,
    /// Bytes copied from the second to the first.
    pub b_to_a: u64,
    /// The close: the application code (an endpoint's own, or a relay [`Refusal`] code).
    pub code: u64,
    /// A short description for logs (no payload, no names).
    pub reason: String,
}

/// Which way a chunk travels: from the first (listening) connection to the second, or
/// back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the first connection to the second.
    AToB,
    /// From the second connection to the first.
    BToA,
}

/// Sees each chunk a splice forwards and returns the bytes to write in its place.
///
/// For tests and diagnostics built on the library (a tap asserting that only ciphertext
/// crosses the relay, a tampering relay). `conduit relay` never installs one: the relay
/// binary has no way to look at or keep what it forwards.
pub trait Tap: Send + Sync + 'static {
    /// `chunk` was read from stream `stream` going `dir`; the returned chunks are written
    /// on instead, in order (by default, `chunk` itself).
    fn forward(
        &self,
        dir: Direction,
        stream: quinn::StreamId,
        chunk: bytes::Bytes,
    ) -> Vec<bytes::Bytes> {
        let _ = (dir, stream);
        vec![chunk]
    }

    /// Called once when a session starts, with the first (listening) and the second
    /// (connecting) client's connections: a tampering tap may open streams of its own.
    fn paired(&self, _a: &Connection, _b: &Connection) {}
}

/// Splices `a` and `b` until one of them closes; `total` counts every byte copied.
pub async fn splice(a: Connection, b: Connection, total: Arc<AtomicU64>) -> Ended {
    splice_with(a, b, total, None).await
}

/// [`splice`] with an optional [`Tap`] on every forwarded chunk.
pub async fn splice_with(
    a: Connection,
    b: Connection,
    total: Arc<AtomicU64>,
    tap: Option<Arc<dyn Tap>>,
) -> Ended {
    if let Some(t) = &tap {
        t.paired(&a, &b);
    }
    let ab = Arc::new(AtomicU64::new(0));
    let ba = Arc::new(AtomicU64::new(0));
    let leg = |count: &Arc<AtomicU64>, dir| Leg {
        count: Arc::clone(count),
        total: Arc::clone(&total),
        tap: tap.clone().map(|t| (t, dir)),
    };
    let mut tasks = JoinSet::new();
    tasks.spawn(forward(
        a.clone(),
        b.clone(),
        [leg(&ab, Direction::AToB), leg(&ba, Direction::BToA)],
    ));
    tasks.spawn(forward(
        b.clone(),
        a.clone(),
        [leg(&ba, Direction::BToA), leg(&ab, Direction::AToB)],
    ));
    let (err, other) = tokio::select! {
        e = a.closed() => (e, &b),
        e = b.closed() => (e, &a),
    };
    let (code, reason) = match &err {
        ConnectionError::ApplicationClosed(c) => {
            // What the closing side sent last (an abort frame, a refusal) may still sit in
            // the other side's send buffers: give it a moment to arrive before the close
            // overtakes it.
            tokio::select! {
                () = tokio::time::sleep(CLOSE_GRACE) => {}
                _ = other.closed() => {}
            }
            other.close(c.error_code, &c.reason);
            (c.error_code.into_inner(), "closed by a peer".to_string())
        }
        ConnectionError::LocallyClosed => {
            let r = Refusal::ShuttingDown;
            other.close(r.code().into(), r.label().as_bytes());
            (r.code().into(), r.label().to_string())
        }
        e => {
            let r = Refusal::PeerLost;
            other.close(r.code().into(), r.label().as_bytes());
            (r.code().into(), format!("peer lost: {}", kind(e)))
        }
    };
    tasks.shutdown().await;
    Ended {
        a_to_b: ab.load(Relaxed),
        b_to_a: ba.load(Relaxed),
        code,
        reason,
    }
}

fn kind(e: &ConnectionError) -> &'static str {
    match e {
        ConnectionError::TimedOut => "idle timeout",
        ConnectionError::Reset => "reset",
        ConnectionError::ConnectionClosed(_) => "transport close",
        ConnectionError::TransportError(_) => "transport error",
        ConnectionError::VersionMismatch => "version mismatch",
        ConnectionError::CidsExhausted => "connection ids exhausted",
        _ => "closed",
    }
}

/// One direction's counters and tap.
#[derive(Clone)]
struct Leg {
    count: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    tap: Option<(Arc<dyn Tap>, Direction)>,
}

impl Leg {
    fn add(&self, n: u64) {
        self.count.fetch_add(n, Relaxed);
        self.total.fetch_add(n, Relaxed);
    }
}

/// Opens on `to` every stream `from` opens, in order, and copies each. `legs` are the
/// direction from→to and the way back (for bidirectional streams).
async fn forward(from: Connection, to: Connection, legs: [Leg; 2]) {
    let [fwd, back] = legs;
    let mut copies = JoinSet::new();
    loop {
        tokio::select! {
            s = from.accept_uni() => {
                let Ok(recv) = s else { break };
                let Ok(send) = to.open_uni().await else { break };
                copies.spawn(copy(recv, send, fwd.clone()));
            }
            s = from.accept_bi() => {
                let Ok((from_send, from_recv)) = s else { break };
                let Ok((to_send, to_recv)) = to.open_bi().await else { break };
                copies.spawn(copy(from_recv, to_send, fwd.clone()));
                copies.spawn(copy(to_recv, from_send, back.clone()));
            }
            // Reap finished copies so the set does not grow with the streams of a session.
            Some(_) = copies.join_next(), if !copies.is_empty() => {}
        }
    }
    copies.shutdown().await;
}

/// Copies one stream's bytes, carrying FIN, RESET_STREAM and STOP_SENDING over.
async fn copy(mut from: RecvStream, mut to: SendStream, leg: Leg) {
    let stopped = to.stopped();
    tokio::pin!(stopped);
    loop {
        let chunk = tokio::select! {
            r = from.read_chunk(COPY_CHUNK, true) => r,
            s = &mut stopped => {
                if let Ok(Some(code)) = s {
                    let _ = from.stop(code);
                }
                return;
            }
        };
        match chunk {
            Ok(Some(c)) => {
                let n = c.bytes.len() as u64;
                let written = match &leg.tap {
                    None => to.write_chunk(c.bytes).await,
                    Some((tap, dir)) => {
                        let mut out = tap.forward(*dir, from.id(), c.bytes);
                        to.write_all_chunks(&mut out).await
                    }
                };
                match written {
                    Ok(()) => leg.add(n),
                    Err(WriteError::Stopped(code)) => {
                        let _ = from.stop(code);
                        return;
                    }
                    Err(_) => return,
                }
            }
            Ok(None) => {
                let _ = to.finish();
                // Stay until the far side has everything (or stops), so a stop still
                // travels back.
                if let Ok(Some(code)) = stopped.await {
                    let _ = from.stop(code);
                }
                return;
            }
            Err(ReadError::Reset(code)) => {
                let _ = to.reset(code);
                return;
            }
            Err(_) => {
                let _ = to.reset(VarInt::from_u32(Refusal::PeerLost.code()));
                return;
            }
        }
    }
}
