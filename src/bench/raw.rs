//! The raw-QUIC baseline of `bench transfer`: plain bytes on one unidirectional stream,
//! with the product's transport configuration and no end-to-end layer, directly or
//! through a relay's splice. Each side runs as its own process (`conduit bench
//! raw-peer`), so its CPU time is its own.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use crate::relay::client::{self, JoinError, RelayOptions};
use crate::relay::hello::Role;
use crate::transport;

/// Bytes written per call by the raw sender (one shared buffer, never copied).
const WRITE: usize = 1 << 20;

/// What one raw peer measured.
#[derive(Debug, Clone, Serialize)]
pub struct RawReport {
    /// Payload bytes moved.
    pub bytes: u64,
    /// Sender: from opening the stream to the receiver's close after the FIN.
    /// Receiver: from the first byte to the FIN.
    pub seconds: f64,
    /// The process's CPU seconds so far.
    pub cpu_s: Option<f64>,
}

/// Errors of the raw peers.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// Transport setup.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// Joining the relay.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The connection.
    #[error("raw peer: {0}")]
    Connection(String),
}

fn conn_err(e: impl std::fmt::Display) -> RawError {
    RawError::Connection(e.to_string())
}

/// A raw receiver's connection: accepted directly, or paired at a relay.
pub async fn receive(conn: quinn::Connection) -> Result<RawReport, RawError> {
    let mut s = conn.accept_uni().await.map_err(conn_err)?;
    let mut bytes = 0u64;
    let mut start = None;
    while let Some(c) = s.read_chunk(usize::MAX, true).await.map_err(conn_err)? {
        start.get_or_insert_with(Instant::now);
        bytes += c.bytes.len() as u64;
    }
    let seconds = start.map_or(0.0, |t| t.elapsed().as_secs_f64());
    conn.close(0u32.into(), b"done");
    Ok(RawReport {
        bytes,
        seconds,
        cpu_s: super::proc::cpu_seconds(None),
    })
}

/// Sends `size` bytes on one stream and waits for the receiver's close.
pub async fn send(conn: quinn::Connection, size: u64) -> Result<RawReport, RawError> {
    let buf = Bytes::from(vec![0x5a; WRITE]);
    let start = Instant::now();
    let mut s = conn.open_uni().await.map_err(conn_err)?;
    let mut left = size;
    while left > 0 {
        let n = left.min(WRITE as u64);
        s.write_chunk(buf.slice(..usize::try_from(n).unwrap_or(WRITE)))
            .await
            .map_err(conn_err)?;
        left -= n;
    }
    s.finish().map_err(conn_err)?;
    let _ = conn.closed().await;
    Ok(RawReport {
        bytes: size,
        seconds: start.elapsed().as_secs_f64(),
        cpu_s: super::proc::cpu_seconds(None),
    })
}

/// Connects directly to a raw receiver.
pub async fn connect_direct(
    addr: SocketAddr,
) -> Result<(quinn::Endpoint, quinn::Connection), RawError> {
    let ep = transport::direct_client(addr)?;
    let conn = ep
        .connect(addr, "phi-conduit")
        .map_err(conn_err)?
        .await
        .map_err(conn_err)?;
    Ok((ep, conn))
}

/// Joins a relay for a raw run.
pub async fn join_relay(
    opts: &RelayOptions,
    role: Role,
    rendezvous: [u8; 32],
) -> Result<(quinn::Endpoint, quinn::Connection), RawError> {
    let j = client::join(opts, role, false, rendezvous).await?;
    Ok((j.endpoint, j.connection))
}
