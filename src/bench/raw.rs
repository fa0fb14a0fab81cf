//! The raw-QUIC baselines of `bench transfer`: plain bytes on one unidirectional stream,
//! with the product's transport configuration and no end-to-end layer, directly or
//! through a relay's datagram switch. Each side runs as its own process (`conduit bench
//! raw-peer`), so its CPU time is its own.
//!
//! The bytes come from memory (one shared buffer: the transport's ceiling), or from files
//! ([`send_files`] / [`receive_to_file`]: what moving a file costs without the E2E layer,
//! positional reads from the page cache at the sender, positional writes of whole chunks
//! and an fsync at the receiver, as the product does).

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use crate::crypto::stream::{ChunkLayout, DEFAULT_CHUNK_SIZE};
use crate::relay::client::{self, JoinError, RelayOptions};
use crate::relay::hello::Role;
use crate::transfer::data::{Lead, buffers_for_window};
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
    Ok(received(&conn, bytes, start))
}

/// Closes a receiver's connection and reports `bytes` received since `start`.
fn received(conn: &quinn::Connection, bytes: u64, start: Option<Instant>) -> RawReport {
    let seconds = start.map_or(0.0, |t| t.elapsed().as_secs_f64());
    conn.close(0u32.into(), b"done");
    RawReport {
        bytes,
        seconds,
        cpu_s: super::proc::cpu_seconds(None),
    }
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

/// Chunk of the file runs: the product's default chunk size.
const FILE_CHUNK: usize = DEFAULT_CHUNK_SIZE.get() as usize;

/// Sends the contents of `files` (a directory stands for its files, by name), one after
/// the other, on one stream (read in chunks
/// with positional reads into a pool of buffers that quinn holds until acknowledged, no
/// further ahead than the product's sender goes ([`Lead`]): what the product's sender
/// does, minus sealing and hashing), then waits for the receiver's close.
pub async fn send_files(conn: quinn::Connection, files: &[PathBuf]) -> Result<RawReport, RawError> {
    let start = Instant::now();
    let mut s = conn.open_uni().await.map_err(conn_err)?;
    // As many buffers as the product's sender may hold (a send window, plus two per
    // cipher thread), as far ahead as it goes.
    // The product's sender has a cipher thread per core (`CipherPool::with_all_cores`).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let layout = ChunkLayout::new(0, DEFAULT_CHUNK_SIZE);
    let max = buffers_for_window(crate::transport::SEND_WINDOW, &layout, workers);
    let mut lead = Lead::new(FILE_CHUNK as u64, max, workers);
    let mut pool: Vec<BytesMut> = Vec::new();
    let mut lent: Vec<Bytes> = Vec::new();
    let mut bytes = 0u64;
    let mut paths = Vec::with_capacity(files.len());
    for path in files {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .and_then(|d| d.map(|e| e.map(|e| e.path())).collect())
                .map_err(conn_err)?;
            inside.sort();
            paths.extend(inside);
        } else {
            paths.push(path.clone());
        }
    }
    for path in &paths {
        let file = File::open(path).map_err(conn_err)?;
        let size = file.metadata().map_err(conn_err)?.len();
        let mut at = 0u64;
        while at < size {
            let n = usize::try_from((size - at).min(FILE_CHUNK as u64)).unwrap_or(FILE_CHUNK);
            let mut buf = loop {
                // Reclaim what quinn has released; make a new buffer up to the limit.
                let mut i = 0;
                while i < lent.len() {
                    if lent[i].is_unique() {
                        if let Ok(b) = lent.swap_remove(i).try_into_mut() {
                            pool.push(b);
                        }
                    } else {
                        i += 1;
                    }
                }
                if lent.len() < lead.buffers() {
                    break pool.pop().unwrap_or_else(|| BytesMut::zeroed(FILE_CHUNK));
                }
                // A closed connection keeps its chunks: do not wait for them.
                if let Some(e) = conn.close_reason() {
                    return Err(conn_err(e));
                }
                tokio::time::sleep(std::time::Duration::from_micros(200)).await;
            };
            buf.resize(n, 0);
            file.read_exact_at(&mut buf, at).map_err(conn_err)?;
            let chunk = buf.freeze();
            lent.push(chunk.clone());
            s.write_chunk(chunk).await.map_err(conn_err)?;
            lead.sent(n as u64, || conn.rtt());
            at += n as u64;
        }
        bytes += size;
    }
    s.finish().map_err(conn_err)?;
    let _ = conn.closed().await;
    Ok(RawReport {
        bytes,
        seconds: start.elapsed().as_secs_f64(),
        cpu_s: super::proc::cpu_seconds(None),
    })
}

/// Receives one stream into a new file at `out` (chunks gathered into one buffer and
/// written with positional writes, then fsynced).
pub async fn receive_to_file(conn: quinn::Connection, out: &Path) -> Result<RawReport, RawError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(conn_err)?;
    let mut s = conn.accept_uni().await.map_err(conn_err)?;
    let mut buf = vec![0u8; FILE_CHUNK];
    let (mut bytes, mut filled) = (0u64, 0usize);
    let mut start = None;
    loop {
        let got = s.read(&mut buf[filled..]).await.map_err(conn_err)?;
        start.get_or_insert_with(Instant::now);
        if let Some(n) = got {
            filled += n;
        }
        if filled == buf.len() || (got.is_none() && filled > 0) {
            file.write_all_at(&buf[..filled], bytes).map_err(conn_err)?;
            bytes += filled as u64;
            filled = 0;
        }
        if got.is_none() {
            break;
        }
    }
    file.sync_all().map_err(conn_err)?;
    Ok(received(&conn, bytes, start))
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
    // One pairing per run on a fresh random id: single-use, like a code's nameplate (a
    // listener on a key's id would have to prove the key).
    let j = client::join(opts, role, true, rendezvous).await?;
    Ok((j.endpoint, j.connection))
}
