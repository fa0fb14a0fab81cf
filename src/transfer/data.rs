//! The bulk data path of one file: STREAM chunks on a QUIC unidirectional stream.
//!
//! Sender: a [`SealPipeline`] on the cipher workers reads the file with positional reads,
//! hashes and seals each chunk in place; the sealed `Bytes` go to quinn without a copy.
//! Receiver: ciphertext is read from the stream straight into pool buffers, opened and
//! hashed on the workers, and handed to a sink that writes it with positional writes.
//! Both sides compute the whole-file BLAKE3 on the way (see
//! [`crate::crypto::chunk_hash`]).
//!
//! The pipelines are blocking (worker threads and channels), so each runs on a tokio
//! blocking thread; the sender's async half only moves `Bytes` into quinn. A file whose
//! rest is one chunk (every file up to the chunk size) skips them: its one chunk is
//! sealed or opened on the async task itself, since handing it to another thread costs
//! more than the cipher work (many small files are bound by that per-file cost).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::crypto::file_hash::{FileHash, FileHasher};
use crate::crypto::pipeline::{ChunkSource, CipherPool, OpenPipeline, PipelineError, SealPipeline};
use crate::crypto::stream::{
    ChunkLayout, ChunkSize, FileKey, FileKeyContext, StreamError, TRANSFER_ID_LEN, TransferKey,
};
use crate::transfer::source::Changed;

/// Reports bytes of plaintext moved, as they move.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Writes plaintext at a byte offset of the destination file.
pub type Sink = Box<dyn FnMut(u64, &[u8]) -> io::Result<()> + Send>;

/// Errors of the data path.
#[derive(Debug, Error)]
pub enum DataError {
    /// The STREAM layer or the pipeline failed (tampering, truncation, reading the source).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Writing to the QUIC stream failed (peer gone, stream stopped).
    #[error("sending file data: {}", crate::transfer::sentences::write(.0))]
    Send(#[from] quinn::WriteError),
    /// Reading the QUIC stream failed after the last chunk.
    #[error("receiving file data: {}", crate::transfer::sentences::read(.0))]
    Receive(#[from] quinn::ReadError),
    /// The stream was already finished.
    #[error("stream already closed")]
    Closed(#[from] quinn::ClosedStream),
    /// Writing to the destination failed.
    #[error("writing the received file: {}", crate::transfer::sentences::io(.0))]
    Sink(#[source] io::Error),
    /// A blocking task of the data path died.
    #[error("data path task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The source file changed while it was being sent: it is not delivered.
    #[error(transparent)]
    SourceChanged(#[from] Changed),
}

impl DataError {
    /// The STREAM error inside, if this is an integrity failure.
    pub fn stream_error(&self) -> Option<&StreamError> {
        match self {
            Self::Pipeline(PipelineError::Stream(e)) => Some(e),
            _ => None,
        }
    }

    /// A pipeline error, as [`DataError::SourceChanged`] where the source reported that
    /// the file changed (see [`crate::transfer::source::OpenSource`]).
    fn from_pipeline(e: PipelineError) -> Self {
        match e {
            PipelineError::Io { source, .. } if Changed::from_io(&source).is_some() => {
                match source.into_inner().map(|b| b.downcast::<Changed>()) {
                    Some(Ok(c)) => Self::SourceChanged(*c),
                    _ => Self::SourceChanged(Changed {
                        what: "unknown".into(),
                    }),
                }
            }
            e => Self::Pipeline(e),
        }
    }
}

/// What both sides agree on for one file's data.
#[derive(Debug, Clone)]
pub struct FileData {
    /// The file's STREAM key.
    pub key: Arc<FileKey>,
    /// The file's chunk layout.
    pub layout: ChunkLayout,
    /// The first chunk sent (the resume point).
    pub first: u64,
    /// The file-hash state holding chunks `0..first`.
    pub tree: FileHasher,
    /// Pool buffers for the pipeline (see [`buffers_for_window`]).
    pub buffers: usize,
}

impl FileData {
    /// Whether what is left to move of the file is its one last chunk (every file up to
    /// the chunk size, or a file resumed at its last chunk): then both sides seal and open
    /// it on the async task ([`send_single`], [`receive_single`]) instead of the pipeline.
    fn rest_is_one_chunk(&self) -> bool {
        self.layout.count().saturating_sub(self.first) == 1
    }

    /// File `index` of a fresh transfer (from chunk 0), sized for `window` bytes in flight
    /// and `workers` cipher threads.
    pub fn fresh(
        keys: &TransferKey,
        transfer_id: [u8; TRANSFER_ID_LEN],
        index: u64,
        size: u64,
        chunk: ChunkSize,
        window: u64,
        workers: usize,
    ) -> Self {
        let layout = ChunkLayout::new(size, chunk);
        Self::new(
            keys,
            &FileKeyContext::fresh(transfer_id, index, chunk),
            size,
            FileHasher::new(keys.file_hash(), &layout),
            (window, workers),
        )
    }

    /// A file from `ctx.resume_from` on: `tree` holds the digests of the chunks before
    /// it, and `ctx` binds the resume point and the prefix hash into the key. `sizing` is
    /// the bytes in flight and the cipher threads.
    pub fn new(
        keys: &TransferKey,
        ctx: &FileKeyContext,
        size: u64,
        tree: FileHasher,
        sizing: (u64, usize),
    ) -> Self {
        let layout = ChunkLayout::for_suite(size, ctx.chunk_size, keys.suite());
        Self {
            key: Arc::new(keys.file_key(ctx)),
            layout,
            first: ctx.resume_from,
            tree,
            buffers: buffers_for_window(sizing.0, &layout, sizing.1),
        }
    }
}

/// Pool buffers a pipeline keeps on top of what is in flight, per cipher thread: one
/// being sealed or opened, one waiting to be delivered.
const SPARE_PER_WORKER: usize = 2;

/// Pool buffers a pipeline needs so that it never waits for quinn while a full send
/// window of chunks is unacknowledged: one window of chunks plus two per worker.
pub fn buffers_for_window(window_bytes: u64, layout: &ChunkLayout, workers: usize) -> usize {
    let per_window = window_bytes.div_ceil(u64::from(layout.chunk_size().get()));
    (per_window as usize)
        .saturating_add(SPARE_PER_WORKER * workers)
        .clamp(4, 1024)
}

/// The least a sender may have sealed and not yet acknowledged, whatever the path.
pub const LEAD_FLOOR: u64 = 4 << 20;
/// How often the sender's lead is recomputed.
const LEAD_PERIOD: Duration = Duration::from_millis(20);

/// How far a sender's pipeline may run ahead of the peer's acknowledgements: twice the
/// path's bandwidth-delay product (rate sent × round-trip time) plus [`LEAD_FLOOR`], in
/// pool buffers (plus the two per worker of [`buffers_for_window`]), never more than the
/// buffers a send window takes.
///
/// Sealing further ahead than the path needs gains nothing, and costs: a chunk sealed
/// tens of megabytes before quinn copies it into packets has left the cache by then
/// (seen here on loopback: sender CPU −5 to −12 % and throughput +4 to +14 % with a
/// 4 MiB lead against the whole 32 MiB send window, docs/BENCHMARKS.md). On a long path
/// the lead follows the rate up, doubling per round trip at most, as slow start does.
#[derive(Debug)]
pub struct Lead {
    limit: Arc<AtomicUsize>,
    chunk: u64,
    spare: usize,
    max: usize,
    since: Instant,
    bytes: u64,
}

impl Lead {
    /// A lead for chunks of `chunk` bytes, at most `max` buffers, for a pipeline of
    /// `workers` cipher threads.
    pub fn new(chunk: u64, max: usize, workers: usize) -> Self {
        let lead = Self {
            limit: Arc::new(AtomicUsize::new(max)),
            chunk: chunk.max(1),
            spare: SPARE_PER_WORKER * workers,
            max: max.max(1),
            since: Instant::now(),
            bytes: 0,
        };
        lead.set(LEAD_FLOOR);
        lead
    }

    /// The buffer limit the pipeline reads (see [`SealPipeline::with_lead_limit`]).
    pub fn limit(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.limit)
    }

    /// The current limit, in buffers.
    pub fn buffers(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// `n` more bytes were handed to the stream; `rtt` gives the path's round-trip time
    /// (asked once per period, not per chunk: quinn takes the connection's lock for it).
    pub fn sent(&mut self, n: u64, rtt: impl FnOnce() -> Duration) {
        self.bytes += n;
        let elapsed = self.since.elapsed();
        if elapsed >= LEAD_PERIOD {
            self.observe(elapsed, rtt());
        }
    }

    /// Sets the limit from the bytes sent over `elapsed`, and starts a new period.
    fn observe(&mut self, elapsed: Duration, rtt: Duration) {
        let rate = self.bytes as f64 / elapsed.as_secs_f64().max(1e-6);
        let bdp = rate * rtt.as_secs_f64();
        // Saturating float-to-int conversion: an absurd rate or RTT ends at the maximum.
        self.set(LEAD_FLOOR.saturating_add((2.0 * bdp) as u64));
        self.since = Instant::now();
        self.bytes = 0;
    }

    fn set(&self, bytes: u64) {
        let chunks = usize::try_from(bytes.div_ceil(self.chunk)).unwrap_or(usize::MAX);
        let buffers = chunks.saturating_add(self.spare).min(self.max);
        self.limit.store(buffers, Ordering::Relaxed);
    }
}

/// QUIC stream reset code of a file stream whose source changed while it was read (see
/// [`crate::transfer::source`]): the receiver never gets the last chunk, so never
/// completes the file.
pub const RESET_SOURCE_CHANGED: u32 = 0x10;
/// QUIC stream reset code of a file stream the sender stopped for another reason (the
/// source could not be read, the pipeline failed).
pub const RESET_SENDER_FAILED: u32 = 0x11;

/// Seals and sends one file's chunks `first..` on `send`, a stream of `conn`, then
/// finishes the stream. Returns the whole file's BLAKE3 hash, of the bytes read.
///
/// Once every chunk has been read and before the last one is written to the stream,
/// [`ChunkSource::after_last_read`] is asked; if it fails (the file changed as it was
/// read), or anything else fails, the stream is reset ([`RESET_SOURCE_CHANGED`],
/// [`RESET_SENDER_FAILED`]) and the last chunk never leaves: the receiver, which
/// completes a file only when its last chunk authenticates, cannot complete this one.
pub async fn send_file(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    pool: &Arc<CipherPool>,
    file: FileData,
    source: Arc<dyn ChunkSource>,
    progress: Progress,
) -> Result<FileHash, DataError> {
    match send_chunks(conn, send, pool, file, source, progress).await {
        Ok(hash) => {
            send.finish()?;
            Ok(hash)
        }
        Err(e) => {
            let code = match e {
                DataError::SourceChanged(_) => RESET_SOURCE_CHANGED,
                _ => RESET_SENDER_FAILED,
            };
            // Already reset or the connection is gone: nothing more to tell the peer.
            if send.reset(code.into()).is_ok() {
                reset_delivered(send).await;
            }
            Err(e)
        }
    }
}

/// Longest wait for the peer to acknowledge a stream reset.
const RESET_WAIT: Duration = Duration::from_secs(2);

/// Waits until the peer acknowledged the reset of `send` (quinn then forgets the
/// stream), stopped the stream, or the connection ended; at most [`RESET_WAIT`].
///
/// The caller closes the connection right after, and a lost CONNECTION_CLOSE is not
/// sent again: without this wait the receiver could learn nothing until its idle
/// timeout. A reset is retransmitted until acknowledged, so once it is, the receiver
/// has seen this file fail.
async fn reset_delivered(send: &quinn::SendStream) {
    let deadline = Instant::now() + RESET_WAIT;
    while Instant::now() < deadline {
        // quinn wakes `stopped` on a STOP_SENDING or the connection's end, not on the
        // reset's acknowledgement: ask again every few milliseconds.
        if tokio::time::timeout(Duration::from_millis(5), send.stopped())
            .await
            .is_ok()
        {
            return;
        }
    }
}

/// [`send_file`] but for finishing or resetting the stream.
async fn send_chunks(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    pool: &Arc<CipherPool>,
    file: FileData,
    source: Arc<dyn ChunkSource>,
    progress: Progress,
) -> Result<FileHash, DataError> {
    if file.rest_is_one_chunk() {
        return send_single(send, file, source.as_ref(), progress).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, PipelineError>>(4);
    let mut lead = Lead::new(
        u64::from(file.layout.chunk_size().get()),
        file.buffers,
        pool.threads(),
    );
    let to_send = file.layout.count().saturating_sub(file.first);
    // Progress counts plaintext, as the receiver's does: a chunk's bytes without its tag.
    let (layout, first) = (file.layout, file.first);
    let pool = Arc::clone(pool);
    let limit = lead.limit();
    // However this function ends, the sealer must not wait on for buffers that quinn may
    // hold until the connection is dropped.
    let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    let stop = Arc::clone(&cancel.0);
    let reader = Arc::clone(&source);
    let sealer = tokio::task::spawn_blocking(move || {
        let mut p = SealPipeline::new(
            pool,
            file.key,
            file.layout,
            file.first,
            file.buffers,
            reader,
        )
        .with_file_hash(file.tree)
        .with_lead_limit(limit)
        .with_cancel(stop);
        for item in p.by_ref() {
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return None;
            }
        }
        p.file_hash()
    });
    let mut written = 0u64;
    loop {
        // The next chunk, or the end of the connection: the sealer may be waiting for
        // buffers the closed connection still holds.
        let item = tokio::select! {
            item = rx.recv() => item,
            e = conn.closed() => return Err(quinn::WriteError::ConnectionLost(e).into()),
        };
        let Some(item) = item else { break };
        let chunk = item.map_err(DataError::from_pipeline)?;
        if written + 1 == to_send {
            // The last chunk: every chunk is read (they come in order), none of the last
            // one's bytes has left. The receiver completes the file only with this chunk,
            // so it goes only if the source is still what was collected.
            let check = Arc::clone(&source);
            tokio::task::spawn_blocking(move || check.after_last_read())
                .await?
                .map_err(|e| {
                    DataError::from_pipeline(PipelineError::Io {
                        index: written,
                        source: e,
                    })
                })?;
        }
        let n = chunk.len();
        let plain = layout.plaintext_len(first + written);
        send.write_chunk(chunk).await?;
        written += 1;
        lead.sent(n as u64, || conn.rtt());
        progress(plain as u64);
        test_hook::after_chunks(written).await;
    }
    let hash = sealer.await?.ok_or(PipelineError::HashShape)?;
    drop(cancel);
    Ok(hash)
}

/// [`send_chunks`] of a file whose rest is one chunk (every file up to the chunk size):
/// read, hashed and sealed right here, with no blocking task and no cipher worker. A
/// hand-off to those costs several thread wake-ups, more than sealing a small chunk; a
/// large file keeps the parallel, zero-copy pipeline. The checks are the pipeline's: the
/// source is asked [`ChunkSource::after_last_read`] before the chunk (the last) leaves.
async fn send_single(
    send: &mut quinn::SendStream,
    file: FileData,
    source: &dyn ChunkSource,
    progress: Progress,
) -> Result<FileHash, DataError> {
    let (layout, index) = (file.layout, file.first);
    let io = |source: io::Error| DataError::from_pipeline(PipelineError::Io { index, source });
    let mut tree = file.tree;
    if tree.pushed() != index {
        return Err(PipelineError::HashShape.into());
    }
    let plain = layout.plaintext_len(index);
    let mut buf = BytesMut::zeroed(layout.sealed_len(index));
    source.read_chunk(index, &mut buf[..plain]).map_err(io)?;
    tree.push_chunk(&layout, index, &buf[..plain])
        .map_err(|_| PipelineError::HashShape)?;
    file.key
        .seal_chunk(index, true, &mut buf)
        .map_err(PipelineError::from)?;
    source.after_last_read().map_err(io)?;
    send.write_chunk(buf.freeze()).await?;
    progress(plain as u64);
    test_hook::after_chunks(1).await;
    Ok(tree.finalize().ok_or(PipelineError::HashShape)?)
}

/// A test-only pause of the sender, inert unless [`test_hook::pause_sender`] was called
/// (the `conduit` binary calls it when `CONDUIT_TEST_PAUSE_SENDER=N:DIR` is set): after
/// writing the `N`th chunk of each file to its stream the sender creates `DIR/paused` and
/// waits until `DIR/resume` exists. The tests of tests/transfer/source_change.rs change a file at
/// a known point of its transfer with it; it only ever delays a sender, and is not part
/// of the product's interface.
#[doc(hidden)]
pub mod test_hook {
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::Duration;

    /// The variable the binary reads (`N:DIR`).
    pub const ENV: &str = "CONDUIT_TEST_PAUSE_SENDER";

    static CONFIG: OnceLock<(u64, PathBuf)> = OnceLock::new();

    /// Makes this process's senders pause after the `after`th chunk of each file until
    /// `dir/resume` exists (once per process; later calls change nothing).
    pub fn pause_sender(after: u64, dir: PathBuf) {
        let _ = CONFIG.set((after, dir));
    }

    /// The hook's setting from the text of [`ENV`] (`N:DIR`); `None` if it is not that.
    pub fn parse(value: &str) -> Option<(u64, PathBuf)> {
        let (n, dir) = value.split_once(':')?;
        Some((n.parse().ok()?, PathBuf::from(dir)))
    }

    fn config() -> Option<&'static (u64, PathBuf)> {
        CONFIG.get()
    }

    /// Pauses here if the hook is set for `written` chunks.
    pub(super) async fn after_chunks(written: u64) {
        let Some((n, dir)) = config() else { return };
        if *n != written {
            return;
        }
        let _ = std::fs::write(dir.join("paused"), b"");
        while !dir.join("resume").exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Sets its flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Receives one file's chunks `first..` from `recv`, opens them and writes the plaintext
/// through `sink`; fails if anything follows the last chunk. Returns the whole file's
/// hash (including the chunks before `first` that `file.tree` holds).
pub async fn receive_file(
    recv: quinn::RecvStream,
    pool: &Arc<CipherPool>,
    file: FileData,
    mut sink: Sink,
    progress: Progress,
) -> Result<FileHash, DataError> {
    if file.rest_is_one_chunk() {
        return receive_single(recv, file, sink, progress).await;
    }
    let rt = tokio::runtime::Handle::current();
    let pool = Arc::clone(pool);
    tokio::task::spawn_blocking(move || {
        let mut recv = recv;
        let layout = file.layout;
        let read = |_: u64, buf: &mut [u8]| -> io::Result<()> {
            rt.block_on(recv.read_exact(buf)).map_err(read_error)
        };
        let mut p = OpenPipeline::new(pool, file.key, layout, file.first, file.buffers, read)
            .with_file_hash(file.tree);
        for (index, item) in (file.first..).zip(p.by_ref()) {
            let plain = item?;
            sink(layout.offset(index), &plain).map_err(DataError::Sink)?;
            progress(plain.len() as u64);
        }
        let hash = p.file_hash().ok_or(PipelineError::HashShape)?;
        drop(p);
        // Nothing may follow the last chunk.
        match rt.block_on(recv.read_chunk(1, true))? {
            None => Ok(hash),
            Some(_) => Err(PipelineError::Stream(StreamError::DataAfterLast).into()),
        }
    })
    .await?
}

/// A failed read of a file stream, as the pipeline's sequential source reports it.
fn read_error(e: quinn::ReadExactError) -> io::Error {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => io::ErrorKind::UnexpectedEof.into(),
        quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code))
            if code == RESET_SOURCE_CHANGED.into() =>
        {
            io::Error::other(
                "the sender stopped this file: it changed at the sender while being sent",
            )
        }
        quinn::ReadExactError::ReadError(e) => io::Error::other(e),
    }
}

/// [`receive_file`] of a file whose rest is one chunk: read, opened, hashed and written
/// right here, with no blocking task and no cipher worker (see [`send_single`]). Errors
/// and order are the pipeline's: a stream that ends early is
/// [`StreamError::Truncated`], the chunk opens only as the last one, the plaintext is
/// written only once it authenticated, and nothing may follow it.
async fn receive_single(
    mut recv: quinn::RecvStream,
    file: FileData,
    mut sink: Sink,
    progress: Progress,
) -> Result<FileHash, DataError> {
    let (layout, index) = (file.layout, file.first);
    let mut tree = file.tree;
    if tree.pushed() != index {
        return Err(PipelineError::HashShape.into());
    }
    // The sealed chunk, gathered from the stream's pieces as quinn hands them over (no
    // zero-filled buffer to read into: one allocation, one copy of each byte).
    let sealed = layout.sealed_len(index);
    let mut buf = BytesMut::with_capacity(sealed);
    while buf.len() < sealed {
        let piece = recv
            .read_chunk(sealed - buf.len(), true)
            .await
            .map_err(|e| read_error(quinn::ReadExactError::ReadError(e)))
            .map_err(|source| PipelineError::Io { index, source })?
            .ok_or(PipelineError::Stream(StreamError::Truncated {
                received: index,
                expected: layout.count(),
            }))?;
        buf.extend_from_slice(&piece.bytes);
    }
    file.key
        .open_chunk(index, true, &mut buf)
        .map_err(PipelineError::from)?;
    let plain = &buf[..layout.plaintext_len(index)];
    tree.push_chunk(&layout, index, plain)
        .map_err(|_| PipelineError::HashShape)?;
    sink(layout.offset(index), plain).map_err(DataError::Sink)?;
    progress(plain.len() as u64);
    let hash = tree.finalize().ok_or(PipelineError::HashShape)?;
    // Nothing may follow the last chunk.
    match recv.read_chunk(1, true).await? {
        None => Ok(hash),
        Some(_) => Err(PipelineError::Stream(StreamError::DataAfterLast).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = 256 << 10;

    #[test]
    fn the_lead_starts_at_the_floor_and_stays_near_it_on_loopback() {
        let mut lead = Lead::new(CHUNK, 132, 2);
        assert_eq!(lead.buffers(), 16 + 4);
        // 500 MB/s with 1 ms of round trip: 0.5 MB in flight.
        lead.bytes = 10_000_000;
        lead.observe(Duration::from_millis(20), Duration::from_millis(1));
        assert_eq!(lead.buffers(), 16 + 4 + 4);
    }

    #[test]
    fn on_a_long_path_the_lead_grows_to_the_whole_window_within_a_few_periods() {
        // 100 ms of round trip; the path carries whatever the lead allows (one lead per
        // round trip), up to the window.
        let mut lead = Lead::new(CHUNK, 132, 2);
        let rtt = Duration::from_millis(100);
        let mut periods = 0;
        while lead.buffers() < 132 {
            let in_flight = (lead.buffers() - 4) as u64 * CHUNK;
            lead.bytes = in_flight; // sent over one round trip
            lead.observe(rtt, rtt);
            periods += 1;
            assert!(periods <= 4, "still {} buffers", lead.buffers());
        }
    }

    #[test]
    fn an_absurd_rate_or_rtt_ends_at_the_maximum() {
        let mut lead = Lead::new(CHUNK, 50, 2);
        lead.bytes = u64::MAX;
        lead.observe(Duration::from_nanos(1), Duration::from_secs(3600));
        assert_eq!(lead.buffers(), 50);
    }
}
