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

/// Splices `a` and `b` until one of them closes; `total` counts every byte copied.
pub async fn splice(a: Connection, b: Connection, total: Arc<AtomicU64>) -> Ended {
    let ab = Arc::new(AtomicU64::new(0));
    let ba = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    tasks.spawn(forward(
        a.clone(),
        b.clone(),
        [Arc::clone(&ab), Arc::clone(&ba)],
        Arc::clone(&total),
    ));
    tasks.spawn(forward(
        b.clone(),
        a.clone(),
        [Arc::clone(&ba), Arc::clone(&ab)],
        Arc::clone(&total),
    ));
    let (err, other) = tokio::select! {
        e = a.closed() => (e, &b),
        e = b.closed() => (e, &a),
    };
    let (code, reason) = match &err {
        ConnectionError::ApplicationClosed(c) => {
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

/// Opens on `to` every stream `from` opens, in order, and copies each. `counts` are the
/// byte counters of the direction from→to and of the way back.
async fn forward(
    from: Connection,
    to: Connection,
    counts: [Arc<AtomicU64>; 2],
    total: Arc<AtomicU64>,
) {
    let [count, back] = counts;
    let mut copies = JoinSet::new();
    loop {
        tokio::select! {
            s = from.accept_uni() => {
                let Ok(recv) = s else { break };
                let Ok(send) = to.open_uni().await else { break };
                copies.spawn(copy(recv, send, Arc::clone(&count), Arc::clone(&total)));
            }
            s = from.accept_bi() => {
                let Ok((from_send, from_recv)) = s else { break };
                let Ok((to_send, to_recv)) = to.open_bi().await else { break };
                copies.spawn(copy(from_recv, to_send, Arc::clone(&count), Arc::clone(&total)));
                copies.spawn(copy(to_recv, from_send, Arc::clone(&back), Arc::clone(&total)));
            }
            // Reap finished copies so the set does not grow with the streams of a session.
            Some(_) = copies.join_next(), if !copies.is_empty() => {}
        }
    }
    copies.shutdown().await;
}

/// Copies one stream's bytes, carrying FIN, RESET_STREAM and STOP_SENDING over.
async fn copy(
    mut from: RecvStream,
    mut to: SendStream,
    count: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
) {
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
                match to.write_chunk(c.bytes).await {
                    Ok(()) => {
                        count.fetch_add(n, Relaxed);
                        total.fetch_add(n, Relaxed);
                    }
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
