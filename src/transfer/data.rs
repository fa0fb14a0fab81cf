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
//! blocking thread; the sender's async half only moves `Bytes` into quinn.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use crate::crypto::chunk_hash::TreeHash;
use crate::crypto::pipeline::{ChunkSource, CipherPool, OpenPipeline, PipelineError, SealPipeline};
use crate::crypto::stream::{
    ChunkLayout, ChunkSize, FileKey, FileKeyContext, StreamError, TRANSFER_ID_LEN, TransferKey,
};

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
    #[error("sending file data: {0}")]
    Send(#[from] quinn::WriteError),
    /// Reading the QUIC stream failed after the last chunk.
    #[error("receiving file data: {0}")]
    Receive(#[from] quinn::ReadError),
    /// The stream was already finished.
    #[error("stream already closed")]
    Closed(#[from] quinn::ClosedStream),
    /// Writing to the destination failed.
    #[error("writing the received file: {0}")]
    Sink(#[source] io::Error),
    /// A blocking task of the data path died.
    #[error("data path task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl DataError {
    /// The STREAM error inside, if this is an integrity failure.
    pub fn stream_error(&self) -> Option<&StreamError> {
        match self {
            Self::Pipeline(PipelineError::Stream(e)) => Some(e),
            _ => None,
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
    /// The hash state holding the digests of chunks `0..first`.
    pub tree: TreeHash,
    /// Pool buffers for the pipeline (see [`buffers_for_window`]).
    pub buffers: usize,
}

impl FileData {
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
            TreeHash::new(&layout),
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
        tree: TreeHash,
        sizing: (u64, usize),
    ) -> Self {
        let layout = ChunkLayout::new(size, ctx.chunk_size);
        Self {
            key: Arc::new(keys.file_key(ctx)),
            layout,
            first: ctx.resume_from,
            tree,
            buffers: buffers_for_window(sizing.0, &layout, sizing.1),
        }
    }
}

/// Pool buffers a pipeline needs so that it never waits for quinn while a full send
/// window of chunks is unacknowledged: one window of chunks plus two per worker.
pub fn buffers_for_window(window_bytes: u64, layout: &ChunkLayout, workers: usize) -> usize {
    let per_window = window_bytes.div_ceil(u64::from(layout.chunk_size().get()));
    (per_window as usize)
        .saturating_add(2 * workers)
        .clamp(4, 1024)
}

/// Seals and sends one file's chunks `first..` on `send`, then finishes the stream.
/// Returns the whole file's BLAKE3 hash.
pub async fn send_file(
    send: &mut quinn::SendStream,
    pool: &Arc<CipherPool>,
    file: FileData,
    source: Arc<dyn ChunkSource>,
    progress: Progress,
) -> Result<blake3::Hash, DataError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, PipelineError>>(4);
    let pool = Arc::clone(pool);
    let sealer = tokio::task::spawn_blocking(move || {
        let mut p = SealPipeline::new(
            pool,
            file.key,
            file.layout,
            file.first,
            file.buffers,
            source,
        )
        .with_file_hash(file.tree);
        for item in p.by_ref() {
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return None;
            }
        }
        p.file_hash()
    });
    while let Some(item) = rx.recv().await {
        let chunk = item?;
        let n = chunk.len();
        send.write_chunk(chunk).await?;
        progress(n as u64);
    }
    let hash = sealer.await?.ok_or(PipelineError::HashShape)?;
    send.finish()?;
    Ok(hash)
}

/// Receives one file's chunks `first..` from `recv`, opens them and writes the plaintext
/// through `sink`; fails if anything follows the last chunk. Returns the whole file's
/// BLAKE3 hash (including the chunks before `first` that `file.tree` holds).
pub async fn receive_file(
    recv: quinn::RecvStream,
    pool: &Arc<CipherPool>,
    file: FileData,
    mut sink: Sink,
    progress: Progress,
) -> Result<blake3::Hash, DataError> {
    let rt = tokio::runtime::Handle::current();
    let pool = Arc::clone(pool);
    tokio::task::spawn_blocking(move || {
        let mut recv = recv;
        let layout = file.layout;
        let read = |_: u64, buf: &mut [u8]| -> io::Result<()> {
            rt.block_on(recv.read_exact(buf)).map_err(|e| match e {
                quinn::ReadExactError::FinishedEarly(_) => io::ErrorKind::UnexpectedEof.into(),
                quinn::ReadExactError::ReadError(e) => io::Error::other(e),
            })
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
